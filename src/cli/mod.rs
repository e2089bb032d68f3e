//! Command-line parsing and dispatch: one file per command (`serve`, `send`, `doctor`, `bench`,
//! `admin` for `conns`, `kick` and `closed`), beside what several share (`logging`, `signals`,
//! `config_flags`, `table`, `rows`). This file uses them all and none uses it.

mod admin;
mod bench;
mod cluster;
mod completions;
mod config_flags;
mod doctor;
mod logging;
mod rows;
mod send;
mod serve;
mod service;
mod signals;
mod table;

use std::process::ExitCode;

use clap::{CommandFactory, Parser, Subcommand};

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
    Serve(Box<serve::ServeArgs>),
    /// Deliver items (NDJSON or bare addresses) to a server, reconnecting and resending.
    Send(Box<send::SendArgs>),
    /// Show the socket options in force and the detection bounds; --measure times them for real.
    Doctor(Box<doctor::DoctorArgs>),
    /// Put load on a server: idle connections, floods, churn.
    Bench(bench::BenchArgs),
    /// List a running server's live connections (its admin API), or every gateway's (--nats).
    Conns(Box<admin::ConnsArgs>),
    /// Close connections of a running server, with reason kicked.
    Kick(admin::KickArgs),
    /// List a running server's most recently closed connections, with their reasons.
    Closed(admin::ClosedArgs),
    /// Move a share of a running server's connections elsewhere: tell them goaway at an even pace.
    Drain(admin::DrainArgs),
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell).
    Completions(completions::CompletionsArgs),
    /// Print the man page (roff: `connwarden man | man -l -`), or write every page (--dir).
    Man(completions::ManArgs),
}

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Serve(args) => serve::run(*args),
        Command::Send(args) => send::run(*args),
        Command::Doctor(args) => doctor::run(*args),
        Command::Bench(args) => bench::run(args),
        Command::Conns(args) => admin::conns(*args),
        Command::Kick(args) => admin::kick(args),
        Command::Closed(args) => admin::closed(args),
        Command::Drain(args) => admin::drain(args),
        Command::Completions(args) => completions::completions(args, Cli::command()),
        Command::Man(args) => completions::man(args, Cli::command()),
    };
    match result {
        Ok(code) => code,
        Err(error) => {
            eprintln!("connwarden: error: {error:#}");
            if error
                .downcast_ref::<connwarden::config::ConfigError>()
                .is_some()
            {
                ExitCode::from(config_flags::EXIT_CONFIG)
            } else {
                ExitCode::FAILURE
            }
        }
    }
}
