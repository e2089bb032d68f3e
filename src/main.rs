//! The `connwarden` command. Policy lives in the library; this is clap, logging and exit codes.

mod cli;

/// jemalloc on Linux/glibc: less memory per idle connection than glibc's malloc, whose
/// per-allocation overhead and fragmentation showed in the per-connection figure.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() -> std::process::ExitCode {
    cli::main()
}
