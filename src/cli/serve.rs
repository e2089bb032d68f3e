//! `connwarden serve`.

use std::process::ExitCode;

use anyhow::Context;
use clap::Args;
use connwarden::Server;

use super::config_flags::{layers_help, ConfigFlags};
use super::service::Notifier;

/// Flags of `serve`.
#[derive(Debug, Args)]
#[command(after_help = layers_help())]
pub struct ServeArgs {
    #[command(flatten)]
    flags: ConfigFlags,
    /// Print the effective configuration as TOML and exit.
    #[arg(long)]
    print_config: bool,
    /// Check the configuration (file, environment, flags, the admin token file) and exit: 0
    /// when it is valid, 2 with the reason when not. Nothing is bound or opened.
    #[arg(long)]
    check_config: bool,
}

pub fn run(args: ServeArgs) -> anyhow::Result<ExitCode> {
    // Where `argv[0]` leads now, before anything could change the working directory.
    #[cfg(target_os = "linux")]
    let program = connwarden::upgrade::Program::of_this_process();
    let config = args.flags.load()?;
    if args.print_config {
        print!("{}", config.to_toml());
        return Ok(ExitCode::SUCCESS);
    }
    if args.check_config {
        return Ok(match Server::builder(config).build() {
            Ok(_) => {
                eprintln!("connwarden: configuration ok");
                ExitCode::SUCCESS
            }
            Err(error) => {
                eprintln!("connwarden: error: {:#}", anyhow::Error::from(error));
                ExitCode::from(super::config_flags::EXIT_CONFIG)
            }
        });
    }
    let logging = super::logging::init_logging(config.log_format, config.log_level, None);
    let runtime = tokio::runtime::Runtime::new().context("cannot start the Tokio runtime")?;
    // Borrowed: the logs outlive the runtime, so that its last lines are flushed.
    let logging = &logging;
    let outcome = runtime.block_on(async move {
        let shutdown = super::signals::stop_signal()?;
        let notifier = Notifier::from_env();
        super::service::spawn_watchdog(&notifier);
        let lifecycle = notifier.clone();
        #[cfg(target_os = "linux")]
        let inherited = connwarden::upgrade::Inherited::from_env()?;
        #[cfg(target_os = "linux")]
        let upgraded = inherited.is_some();
        #[cfg(not(target_os = "linux"))]
        let upgraded = false;
        let builder = Server::builder(config).on_lifecycle(move |moment| {
            if upgraded && moment == connwarden::server::Lifecycle::Ready {
                lifecycle.main_pid(std::process::id());
            }
            lifecycle.lifecycle(moment)
        });
        #[cfg(target_os = "linux")]
        let builder = match inherited {
            Some(inherited) => builder.inherit(inherited),
            None => builder,
        };
        let server = builder.build()?;
        notifier.count_in(server.metrics());
        logging.count_drops_in(server.metrics());
        super::service::reopen_sink_on_sigusr1(server.sink_reopen())?;
        #[cfg(target_os = "linux")]
        super::service::upgrade_on_sigusr2(server.upgrader(), program)?;
        super::service::reload_on_sighup(
            server.reloader(),
            args.flags,
            logging.level.clone(),
            notifier,
        )?;
        let listeners = server.bind()?;
        let report = server.run(listeners, shutdown).await?;
        anyhow::ensure!(
            report.abandoned == 0,
            "{} queued items were not written before the shutdown grace ran out",
            report.abandoned
        );
        Ok(ExitCode::SUCCESS)
    });
    // Everything the server waited for is done; what is left on the blocking pool (a read of
    // a reloaded file, an `fsync` of a dying disk) must not hold the exit beyond a moment.
    runtime.shutdown_timeout(SHUTDOWN_LEFTOVERS);
    outcome
}

/// Longest wait at exit for work left on the runtime's blocking pool.
const SHUTDOWN_LEFTOVERS: std::time::Duration = std::time::Duration::from_secs(1);
