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

/// Maps and sets keyed by digest that every blob read visits (GC references, eviction times).
/// Clients name digests, so the keys still go through a seeded hasher (foldhash, seeded per
/// process), several times quicker than std's SipHash on a 71-byte key.
pub type DigestMap<V> = std::collections::HashMap<crate::digest::Digest, V, foldhash::fast::RandomState>;
pub type DigestSet = std::collections::HashSet<crate::digest::Digest, foldhash::fast::RandomState>;

pub use blobs::{BlobStore, StagedBlob};
pub use layout::Layout;
pub use meta::MetaStore;
