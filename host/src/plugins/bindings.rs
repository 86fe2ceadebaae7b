//! Generated bindings for the contract in `wit/` (one `bindgen!` for the whole world).
//! Imports and exports are async so a plugin waiting on upstream I/O never blocks a thread.

wasmtime::component::bindgen!({
    world: "plugin",
    path: "../wit",
    imports: { default: async },
    exports: { default: async },
});

pub use self::binaryrepo::plugin::types;
pub use self::exports::binaryrepo::plugin::format::PluginInfo;

/// The contract version this host implements; plugins built against the same major.minor
/// (any patch) load.
pub const CONTRACT: &str = "0.2.1";
