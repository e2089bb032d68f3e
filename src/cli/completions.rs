//! `connwarden completions SHELL` and `connwarden man`: shell completions and a man page,
//! generated from the same clap definitions that parse the command line, so they never drift.

use clap::Args;
use clap_complete::Shell;

/// Flags of `completions`.
#[derive(Debug, Args)]
pub struct CompletionsArgs {
    /// The shell: bash, zsh, fish, elvish or powershell.
    shell: Shell,
}

/// Prints the completion script of `args.shell` for `command` (the whole command line) to
/// standard output.
pub fn completions(
    args: CompletionsArgs,
    mut command: clap::Command,
) -> anyhow::Result<std::process::ExitCode> {
    let mut script = Vec::new();
    clap_complete::generate(args.shell, &mut command, "connwarden", &mut script);
    print_quietly(&script)
}

/// Flags of `man`.
#[derive(Debug, Args)]
pub struct ManArgs {
    /// Write a page for connwarden and one for each command (connwarden-serve.1, …) into this
    /// folder, instead of printing connwarden's page.
    #[arg(long, value_name = "DIR")]
    dir: Option<std::path::PathBuf>,
}

/// Prints the man page of `command` (the whole command line, roff), or writes every page into
/// `--dir`.
pub fn man(args: ManArgs, command: clap::Command) -> anyhow::Result<std::process::ExitCode> {
    match args.dir {
        Some(dir) => {
            std::fs::create_dir_all(&dir)?;
            clap_mangen::generate_to(command, &dir)?;
            Ok(std::process::ExitCode::SUCCESS)
        }
        None => {
            let mut page = Vec::new();
            clap_mangen::Man::new(command).render(&mut page)?;
            print_quietly(&page)
        }
    }
}

/// Writes `bytes` to standard output; a reader that stops early (`| head`) is not an error.
fn print_quietly(bytes: &[u8]) -> anyhow::Result<std::process::ExitCode> {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    match out.write_all(bytes).and_then(|()| out.flush()) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(e.into()),
        _ => Ok(std::process::ExitCode::SUCCESS),
    }
}
