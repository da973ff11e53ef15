//! Logging: `[log] format` chooses text lines or one JSON object per line; `RUST_LOG` filters (by
//! default `info`). pingora's own `log` records are forwarded into the same output.
//!
//! What a stream logs when it ends (the access line, `stream ended`) is written by
//! [`crate::http`]; no line carries a URL's query, so a query token never reaches the log.

use crate::config::LogFormat;

/// Installs the process's logger (once; later calls do nothing).
pub fn init(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    // With its default `tracing-log` feature this also forwards pingora's `log` records.
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        // Fields under `fields`, the message among them; the span list is noise for sluice.
        LogFormat::Json => builder
            .json()
            .with_current_span(false)
            .with_span_list(false)
            .try_init(),
    };
}
