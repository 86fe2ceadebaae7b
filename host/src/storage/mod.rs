//! Storage: the content-addressed blob store and per-repository metadata, both under one data
//! directory whose layout is written down in `layout`.

pub mod access;
pub mod backend;
pub mod blobs;
pub mod durable;
pub mod health;
pub mod layout;
pub mod mapped;
pub mod meta;
pub mod postgres;
pub mod postgres_tls;
pub mod resumable;
pub mod shared_uploads;
pub mod small_cache;
pub mod touch;
pub mod uploads;

pub use blobs::{BlobStore, StagedBlob};
pub use layout::Layout;
pub use meta::MetaStore;
