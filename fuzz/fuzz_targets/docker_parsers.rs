// The Docker plugin's parsers, compiled in from the plugin's own source files. Included at the
// root of each target (`include!`), where their `crate::` paths resolve as in the plugin.

#[path = "../../plugins/docker/src/challenge.rs"]
#[allow(dead_code)]
pub mod challenge;
#[path = "../../plugins/docker/src/error.rs"]
#[allow(dead_code)]
pub mod error;
#[path = "../../plugins/docker/src/manifest.rs"]
#[allow(dead_code)]
pub mod manifest;
#[path = "../../plugins/docker/src/media_type.rs"]
#[allow(dead_code)]
pub mod media_type;
#[path = "../../plugins/docker/src/paging.rs"]
#[allow(dead_code)]
pub mod paging;
#[path = "../../plugins/docker/src/reference.rs"]
#[allow(dead_code)]
pub mod reference;
#[path = "../../plugins/docker/src/route.rs"]
#[allow(dead_code)]
pub mod route;
#[path = "../../plugins/docker/src/url.rs"]
#[allow(dead_code)]
pub mod url;

pub use binaryrepo_plugin_sdk::contract;
