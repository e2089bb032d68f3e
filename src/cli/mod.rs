//! Command-line parsing, logging set-up and exit codes.

mod serve;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Bounded, measured dead-peer detection for long-lived TCP connections.
#[derive(Debug, Parser)]
#[command(name = "connwarden", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Accept connections, ingest JSON items into the sink, close dead peers within bounds.
    Serve(serve::ServeArgs),
}

/// Exit status for a configuration error, so scripts can tell it from a runtime failure.
const EXIT_CONFIG: u8 = 2;

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Serve(args) => serve::run(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("connwarden: error: {error:#}");
            if error
                .downcast_ref::<connwarden::config::ConfigError>()
                .is_some()
            {
                ExitCode::from(EXIT_CONFIG)
            } else {
                ExitCode::FAILURE
            }
        }
    }
}

/// Logs go to standard error (standard output may be the sink), as text or JSON lines.
/// `RUST_LOG` filters them (default `info`).
fn init_logging(format: connwarden::config::LogFormat) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        connwarden::config::LogFormat::Text => builder.with_ansi(false).init(),
        connwarden::config::LogFormat::Json => builder.json().flatten_event(true).init(),
    }
}
