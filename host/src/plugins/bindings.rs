//! Generated bindings for the contract versions this host links, side by side: the current one
//! (`wit/plugin.wit`) and the older worlds it still serves (`wit/past/`). The rest of the host
//! speaks the current version's types; `compat` adapts older plugins to them.
//! Imports and exports are async so a plugin waiting on upstream I/O never blocks a thread.

/// `binaryrepo:plugin@0.3.0`: what the host implements.
pub mod v0_3 {
    wasmtime::component::bindgen!({
        world: "plugin",
        path: "../wit",
        imports: { default: async },
        exports: { default: async },
    });
}

/// `binaryrepo:plugin@0.2.1` (and 0.2.0): one `host` interface with every capability.
pub mod v0_2 {
    wasmtime::component::bindgen!({
        world: "plugin",
        path: "../wit/past/0.2.1",
        imports: { default: async },
        exports: { default: async },
    });
}

pub use self::v0_3::binaryrepo::plugin::types;
pub use self::v0_3::exports::binaryrepo::plugin::format::PluginInfo;

/// The contract version this host implements.
pub const CONTRACT: &str = "0.3.0";

/// Which world a plugin was built against. Plugins of a supported older version are linked
/// against that version's world and adapted (`compat`); the version a plugin reports in
/// `info()` must agree with the world it implements.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum World {
    V0_3,
    V0_2,
}

impl World {
    /// The world for a contract version string: same major.minor, any patch.
    pub fn of(contract: &str) -> Option<World> {
        let mut parts = contract.split('.');
        let (major, minor, patch) = (parts.next()?, parts.next()?, parts.next()?);
        if parts.next().is_some() || patch.parse::<u32>().is_err() {
            return None;
        }
        match (major, minor) {
            ("0", "3") => Some(World::V0_3),
            ("0", "2") => Some(World::V0_2),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            World::V0_3 => "0.3",
            World::V0_2 => "0.2",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::World;

    #[test]
    fn contract_versions() {
        assert_eq!(World::of("0.3.0"), Some(World::V0_3));
        assert_eq!(World::of("0.3.7"), Some(World::V0_3));
        assert_eq!(World::of("0.2.0"), Some(World::V0_2));
        assert_eq!(World::of("0.2.1"), Some(World::V0_2));
        assert_eq!(World::of("0.1.0"), None);
        assert_eq!(World::of("0.4.0"), None);
        assert_eq!(World::of("1.1.0"), None);
        assert_eq!(World::of("0.3"), None);
        assert_eq!(World::of("0.3.x"), None);
    }
}
