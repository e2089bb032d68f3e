//! `connwarden serve`.

use anyhow::Context;
use clap::Args;
use connwarden::Server;

use super::config_flags::{ConfigFlags, LAYERS_HELP};

/// Flags of `serve`.
#[derive(Debug, Args)]
#[command(after_help = LAYERS_HELP)]
pub struct ServeArgs {
    #[command(flatten)]
    flags: ConfigFlags,
    /// Print the effective configuration as TOML and exit.
    #[arg(long)]
    print_config: bool,
}

pub fn run(args: ServeArgs) -> anyhow::Result<()> {
    let config = args.flags.load()?;
    if args.print_config {
        print!("{}", config.to_toml());
        return Ok(());
    }
    super::init_logging(config.log_format, "info", None);
    let runtime = tokio::runtime::Runtime::new().context("cannot start the Tokio runtime")?;
    runtime.block_on(async move {
        let shutdown = super::stop_signal()?;
        let server = Server::builder(config).build()?;
        let listeners = server.bind()?;
        let report = server.run(listeners, shutdown).await?;
        anyhow::ensure!(
            report.abandoned == 0,
            "{} queued items were not written before the shutdown grace ran out",
            report.abandoned
        );
        Ok(())
    })
}
