//! `log`: plugin messages go to the host's tracing, inside the request's span.

use crate::plugins::bindings::types::Level;

pub fn log(format: &str, level: Level, message: &str) {
    // Checked first: a plugin's debug lines (one per cached manifest GET) cost nothing more
    // than the call when debug logging is off.
    let enabled = match level {
        Level::Trace => tracing::enabled!(tracing::Level::TRACE),
        Level::Debug => tracing::enabled!(tracing::Level::DEBUG),
        Level::Info => tracing::enabled!(tracing::Level::INFO),
        Level::Warn => tracing::enabled!(tracing::Level::WARN),
        Level::Error => tracing::enabled!(tracing::Level::ERROR),
    };
    if !enabled {
        return;
    }
    let message: String = message.chars().take(4096).collect();
    match level {
        Level::Trace => tracing::trace!(plugin = format, "{message}"),
        Level::Debug => tracing::debug!(plugin = format, "{message}"),
        Level::Info => tracing::info!(plugin = format, "{message}"),
        Level::Warn => tracing::warn!(plugin = format, "{message}"),
        Level::Error => tracing::error!(plugin = format, "{message}"),
    }
}
