//! Logging set-up shared by both binaries.
//!
//! `--log-format` (or `DASH_LOG_FORMAT`) picks the format; `RUST_LOG` the
//! filter. Colour codes are written only to a terminal:
//! a redirected log or the journal gets plain text, and so does a terminal
//! with `NO_COLOR` set.

use std::io::IsTerminal;

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines; coloured only on a terminal.
    #[default]
    Text,
    /// One JSON object per line (timestamp, level, fields, message), for
    /// log shippers.
    Json,
}

/// The logging flag both binaries take on their long-running commands.
#[derive(Debug, Clone, clap::Args)]
pub struct LogArgs {
    /// Log format: text (coloured only on a terminal) or json (one object per line).
    #[arg(long, global = true, env = "DASH_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
}

/// Installs the global subscriber, filtered by `RUST_LOG` or else by
/// `default_filter` (such as `"info"`). Logs go to stderr.
pub fn init(format: LogFormat, default_filter: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| default_filter.into());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.with_ansi(colour()).init(),
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .init(),
    }
}

/// Colour only on a terminal, and never when `NO_COLOR` is set.
fn colour() -> bool {
    std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
}
