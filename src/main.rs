//! The `connwarden` command. Policy lives in the library; this is clap, logging and exit codes.

mod cli;

/// jemalloc on Linux, glibc and musl: less memory per idle connection than either libc's
/// malloc (musl's: 1,251 bytes against 899 at 15,000 connections; README, "Platforms").
#[cfg(all(target_os = "linux", any(target_env = "gnu", target_env = "musl")))]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() -> std::process::ExitCode {
    cli::main()
}
