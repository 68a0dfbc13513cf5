//! Logging: text or JSON lines on stderr, filtered by `log.filter`.

use crate::config::{LogFormat, LogSettings};
use tracing_subscriber::EnvFilter;

/// Installs the global subscriber. Call once, at startup.
pub fn init(settings: &LogSettings) {
    // The filter was validated with the settings; fall back to `info` rather than fail twice.
    let filter = EnvFilter::builder()
        .parse(&settings.filter)
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        // Colour codes only for a person at a terminal, never in collected logs.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    let result = match settings.format {
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
        LogFormat::Text => builder.try_init(),
    };
    if let Err(e) = result {
        eprintln!("logging already initialised: {e}");
    }
}
