//! Logs: `tracing` events to stderr, filtered with an `EnvFilter`.

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

use super::error::Error;

#[derive(clap::Args, Debug)]
pub struct LogArgs {
    /// Log filter, in tracing's EnvFilter syntax, like `debug` or
    /// `info,chall_manager=debug` [default: info for serve and janitor, warn
    /// for other commands]
    #[arg(long, env = "LOG_LEVEL", value_name = "FILTER", global = true, value_parser = parse_filter, help_heading = "Logging")]
    pub log_level: Option<String>,

    /// Log format
    #[arg(long, value_enum, default_value_t = LogFormat::Text, global = true, help_heading = "Logging")]
    pub log_format: LogFormat,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogFormat {
    /// Human-readable lines
    Text,
    /// One JSON object per line
    Json,
}

/// Checks the filter at parse time, so a typo is a usage error.
fn parse_filter(text: &str) -> Result<String, String> {
    EnvFilter::try_new(text).map(|_| text.to_owned()).map_err(|err| err.to_string())
}

/// Installs the global subscriber. `default_level` applies when neither
/// `--log-level` nor `LOG_LEVEL` is set.
pub fn init(args: &LogArgs, default_level: &str) -> Result<(), Error> {
    let filter = EnvFilter::try_new(args.log_level.as_deref().unwrap_or(default_level))
        .map_err(|err| Error::Logging(err.to_string()))?;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal());

    let installed = match args.log_format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
    installed.map_err(|err| Error::Logging(err.to_string()))
}
