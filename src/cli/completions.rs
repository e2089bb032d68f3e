//! `connwarden completions SHELL` and `connwarden man`: shell completions and a man page,
//! generated from the same clap definitions that parse the command line, so they never drift.

use clap::{Args, CommandFactory};
use clap_complete::Shell;

/// Flags of `completions`.
#[derive(Debug, Args)]
pub struct CompletionsArgs {
    /// The shell: bash, zsh, fish, elvish or powershell.
    shell: Shell,
}

/// Prints the completion script of `args.shell` to standard output.
pub fn completions(args: CompletionsArgs) -> anyhow::Result<std::process::ExitCode> {
    let mut command = super::Cli::command();
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

/// Prints connwarden's man page (roff), or writes every page into `--dir`.
pub fn man(args: ManArgs) -> anyhow::Result<std::process::ExitCode> {
    let command = super::Cli::command();
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
