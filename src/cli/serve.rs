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
    super::init_logging(config.log_format);
    let runtime = tokio::runtime::Runtime::new().context("cannot start the Tokio runtime")?;
    runtime.block_on(async move {
        let shutdown = shutdown_signal()?;
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

/// A future that resolves on SIGINT or SIGTERM (Ctrl-C elsewhere). The handlers are installed
/// here, before the server listens, so a signal that arrives once clients can connect always
/// leads to an orderly shutdown rather than the default "terminate at once".
fn shutdown_signal() -> anyhow::Result<impl std::future::Future<Output = ()>> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let mut term = signal(SignalKind::terminate()).context("cannot handle SIGTERM")?;
        let mut interrupt = signal(SignalKind::interrupt()).context("cannot handle SIGINT")?;
        Ok(async move {
            tokio::select! {
                _ = term.recv() => {}
                _ = interrupt.recv() => {}
            }
        })
    }
    #[cfg(not(unix))]
    {
        Ok(async {
            let _ = tokio::signal::ctrl_c().await;
        })
    }
}
