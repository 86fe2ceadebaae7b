//! The guest SDK for binaryrepo format plugins (`binaryrepo:plugin@0.3.0`).
//!
//! A plugin implements [`Format`] against the plain-Rust shapes of [`contract`] and the
//! [`Host`](contract::Host) trait, so its logic builds and is tested natively (with
//! [`fake_host`] under the `fake-host` feature); [`export_format!`] binds it to the WIT world
//! `plugin` when built for wasm32.

pub mod contract;
pub mod error;
pub mod format;
pub mod http;
pub mod live;
pub mod meta;
pub mod time;

#[cfg(feature = "fake-host")]
pub mod fake_host;

#[cfg(target_arch = "wasm32")]
pub mod guest;

pub use contract::Host;
pub use format::Format;

/// Exports `$format` (a type implementing [`Format`]) as the component's `format` interface.
/// Expands to nothing outside wasm32, so plugin crates call it unconditionally.
#[macro_export]
macro_rules! export_format {
    ($format:ty) => {
        #[cfg(target_arch = "wasm32")]
        const _: () = {
            use $crate::guest::exports::binaryrepo::plugin::format as fmt;
            use $crate::guest::wit;
            struct Component;
            impl fmt::Guest for Component {
                fn info() -> fmt::PluginInfo {
                    $crate::guest::info::<$format>()
                }
                fn handle(request: wit::Request) -> wit::Plan {
                    $crate::guest::handle::<$format>(request)
                }
                fn handle_body(request: wit::Request, body: Vec<u8>) -> wit::Plan {
                    $crate::guest::handle_body::<$format>(request, body)
                }
                fn upload_complete(
                    request: wit::Request,
                    id: String,
                    outcome: wit::UploadOutcome,
                ) -> wit::Response {
                    $crate::guest::upload_complete::<$format>(request, id, outcome)
                }
                fn merge(request: wit::Request, answers: Vec<wit::MemberAnswer>) -> wit::Plan {
                    $crate::guest::merge::<$format>(request, answers)
                }
                fn file_fetched(
                    request: wit::Request,
                    key: String,
                    file: wit::FetchedFile,
                ) -> Result<(), wit::HostError> {
                    $crate::guest::file_fetched::<$format>(request, key, file)
                }
                fn render_failure(request: wit::Request, failure: wit::Failure) -> wit::Response {
                    $crate::guest::render_failure::<$format>(request, failure)
                }
                fn live_blobs_page(
                    repository: wit::Repository,
                    cursor: Option<String>,
                ) -> Result<wit::LivePage, wit::HostError> {
                    $crate::guest::live_blobs_page::<$format>(repository, cursor)
                }
                fn cleanup(
                    repository: wit::Repository,
                    rules: wit::CleanupRules,
                    now: u64,
                ) -> Result<wit::CleanupReport, String> {
                    $crate::guest::cleanup::<$format>(repository, rules, now)
                }
            }
    $crate::guest::export!(Component with_types_in $crate::guest);
        };
    };
}
