//! Errors as Helm users see them: plain text for repository reads (helm prints the body),
//! ChartMuseum's `{"error": "..."}` for the `/api/charts` API.

use crate::contract::Response;
pub use binaryrepo_plugin_sdk::error::HttpError as HelmError;

/// The response in the shape of the API the request used.
pub fn to_response(e: &HelmError, api: bool) -> Response {
    if api { e.json() } else { e.text() }
}
