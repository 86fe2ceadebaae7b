//! `log`: plugin messages go to the host's tracing, inside the request's span.

use crate::plugins::bindings::types::Level;

pub fn log(format: &str, level: Level, message: &str) {
    let message: String = message.chars().take(4096).collect();
    match level {
        Level::Trace => tracing::trace!(plugin = format, "{message}"),
        Level::Debug => tracing::debug!(plugin = format, "{message}"),
        Level::Info => tracing::info!(plugin = format, "{message}"),
        Level::Warn => tracing::warn!(plugin = format, "{message}"),
        Level::Error => tracing::error!(plugin = format, "{message}"),
    }
}
