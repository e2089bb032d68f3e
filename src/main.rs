//! The `connwarden` command. Policy lives in the library; this is clap, logging and exit codes.

mod cli;

fn main() -> std::process::ExitCode {
    cli::main()
}
