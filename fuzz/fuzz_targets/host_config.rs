//! The configuration file and `BINARYREPO_*` environment (`host/src/config.rs`), compiled
//! unchanged. The input is a TOML document, then after a line `#env`, `NAME=value` lines.
//! Checked on every input: reading, merging and resolving never panic (arithmetic on the values
//! included), what resolves keeps the limits' relations, and a variable that is not a key is
//! reported, never applied.
//!
//! `repositories` entries are parsed as tables here: their own checks are the repository API's
//! (`host/src/repos.rs`, which needs the whole server). Allowed upstream networks are parsed by
//! `host/src/upstream/allowed_network.rs`, compiled in unchanged too.
#![no_main]

use std::path::PathBuf;

use libfuzzer_sys::fuzz_target;

#[allow(dead_code)]
mod repos {
    #[derive(Debug, Clone, serde::Deserialize)]
    pub struct RepositoryInput {
        pub name: Option<String>,
        #[serde(flatten)]
        pub rest: toml::Table,
    }
}

// `[storage]` and the metadata store's URL: their own checks are the backends' (which need the
// S3 and PostgreSQL clients); here they are read as the file gives them.
#[allow(dead_code)]
mod storage {
    pub mod backend {
        #[derive(Debug, Clone, Default, serde::Deserialize)]
        pub struct StorageConfig {
            #[serde(flatten)]
            pub rest: toml::Table,
        }
    }
    pub mod postgres {
        #[derive(Debug, Clone)]
        pub struct DatabaseUrl(String);

        impl DatabaseUrl {
            pub fn new(url: String) -> DatabaseUrl {
                DatabaseUrl(url)
            }
        }
    }
}

// `crate::upstream::egress::AllowedNetwork` as in the host, from its own file (the rest of
// `egress.rs` is the resolver, which needs the HTTP client).
#[path = "../../host/src/upstream/allowed_network.rs"]
#[allow(dead_code)]
pub mod allowed_network;

mod upstream {
    pub mod egress {
        pub use crate::allowed_network::AllowedNetwork;
    }
}

// `crate::server::…` as in the host (the files are at the root: a `#[path]` inside an inline
// module would name a directory that does not exist).
#[path = "../../host/src/server/forwarded.rs"]
#[allow(dead_code, unused_imports)]
pub mod forwarded;

mod server {
    pub use super::forwarded;
}

#[path = "../../host/src/config.rs"]
#[allow(dead_code, unused_imports)]
mod config;

use config::{Config, ENV_PREFIX, Loaded, Overrides};

thread_local! {
    static FILE: PathBuf = std::env::temp_dir().join(format!("binaryrepo-fuzz-config-{}.toml", std::process::id()));
}

fuzz_target!(|input: &str| {
    let (toml_text, env_text) = input.split_once("\n#env\n").unwrap_or((input, ""));
    let env: Vec<(String, String)> =
        env_text.lines().filter_map(|l| l.split_once('=')).map(|(k, v)| (k.to_owned(), v.to_owned())).collect();
    let loaded = FILE.with(|path| {
        std::fs::write(path, toml_text).expect("the fuzzer's temporary file");
        Loaded::read_with(Some(path), env.clone())
    });
    let Ok(loaded) = loaded else { return };
    for name in &loaded.unknown_env {
        assert!(name.starts_with(ENV_PREFIX) && env.iter().any(|(k, _)| k == name), "{name:?}");
    }
    let Ok(file) = loaded.file_config() else { return };
    let config = Config::resolve(file, Overrides::default());
    let limits = &config.plugins;
    assert!(limits.instances >= 1 && (1..=limits.instances).contains(&limits.instances_per_repository));
    assert!(config.fills.per_repository >= 1 && config.fills.per_repository <= config.fills.total);
    // A variable's key is matched in any case (`BINARYREPO_LOG_LEVEl` sets `log_level`).
    assert!(!config.log_level.is_empty() || toml_text.contains("log_level") || env_text.to_ascii_uppercase().contains("LOG_LEVEL"));
});
