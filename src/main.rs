//! The `connwarden` command. Policy lives in the library; this is clap, logging and exit codes.

mod cli;

/// jemalloc on Linux, glibc and musl: less memory per idle connection than either libc's
/// malloc (musl's: 1,251 bytes against 899 at 15,000 connections; README, "Platforms"). Built
/// with its background thread on (Cargo feature `background_threads`): memory freed while the
/// server is quiet (the tasks of connections that parked) goes back to the system after
/// jemalloc's decay time (10 s), instead of at the next allocation after it.
#[cfg(all(target_os = "linux", any(target_env = "gnu", target_env = "musl")))]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() -> std::process::ExitCode {
    cli::main()
}
