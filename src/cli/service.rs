//! Telling a service manager how `serve` is doing: systemd's `Type=notify` protocol through
//! `NOTIFY_SOCKET` (the `sd-notify` crate). `READY=1` once listening with the sink open,
//! `STOPPING=1` when shutdown begins, and `WATCHDOG=1` at half the unit's `WatchdogSec` from a
//! task of the server's own runtime, so a wedged runtime is restarted. Without
//! `NOTIFY_SOCKET`, or off Unix, nothing is sent. `SIGHUP` reloads the configuration
//! (`RELOADING=1`, then `READY=1` once done, as `Type=notify-reload` expects), and `SIGUSR1` (as
//! for nginx's logs) reopens a `file:` sink after `logrotate` moved it.

use connwarden::sink::ReopenHandle;
use connwarden::{Lifecycle, Reloader};

use super::config_flags::ConfigFlags;
use super::LogLevel;

/// Tells the service manager of a moment in the server's life.
pub fn notify(moment: Lifecycle) {
    #[cfg(unix)]
    {
        use sd_notify::NotifyState;
        let states: &[NotifyState] = match moment {
            Lifecycle::Ready => &[NotifyState::Ready, NotifyState::Status("listening")],
            Lifecycle::Stopping => &[NotifyState::Stopping, NotifyState::Status("draining")],
        };
        if let Err(error) = sd_notify::notify(states) {
            tracing::warn!(error = %error, "cannot notify the service manager (NOTIFY_SOCKET)");
        }
    }
    #[cfg(not(unix))]
    let _ = moment;
}

/// Starts sending `WATCHDOG=1` if the service manager asked for it (`WATCHDOG_USEC`). Needs a
/// Tokio runtime; the task ends with it.
pub fn spawn_watchdog() {
    #[cfg(unix)]
    if let Some(period) = sd_notify::watchdog_enabled() {
        tracing::info!(
            watchdog_ms = period.as_millis() as u64,
            "systemd watchdog enabled"
        );
        tokio::spawn(async move {
            let mut every = tokio::time::interval(period / 2);
            loop {
                every.tick().await;
                if let Err(error) = sd_notify::notify(&[sd_notify::NotifyState::Watchdog]) {
                    tracing::warn!(error = %error, "cannot notify the systemd watchdog");
                }
            }
        });
    }
}

/// Reopens the file sink's path at each `SIGUSR1` (before its next batch). Needs a Tokio
/// runtime; off Unix there is no such signal and nothing is installed.
pub fn reopen_sink_on_sigusr1(reopen: ReopenHandle) -> anyhow::Result<()> {
    #[cfg(unix)]
    {
        use anyhow::Context;
        use tokio::signal::unix::{signal, SignalKind};
        let mut usr1 = signal(SignalKind::user_defined1()).context("cannot handle SIGUSR1")?;
        tokio::spawn(async move {
            while usr1.recv().await.is_some() {
                tracing::info!("SIGUSR1: the file sink reopens its path before its next batch");
                reopen.request();
            }
        });
    }
    #[cfg(not(unix))]
    let _ = reopen;
    Ok(())
}

/// Reloads the configuration at each `SIGHUP`: the `--config` file and the environment are read
/// again, the command-line flags stay ([`connwarden::reload`] says which keys apply to whom).
/// Needs a Tokio runtime; off Unix there is no such signal and nothing is installed.
pub fn reload_on_sighup(
    reloader: Reloader,
    flags: ConfigFlags,
    log_level: LogLevel,
) -> anyhow::Result<()> {
    #[cfg(unix)]
    {
        use anyhow::Context;
        use tokio::signal::unix::{signal, SignalKind};
        let mut hup = signal(SignalKind::hangup()).context("cannot handle SIGHUP")?;
        tokio::spawn(async move {
            while hup.recv().await.is_some() {
                tracing::info!(file = ?flags.config, "SIGHUP: reading the configuration again");
                notify_reloading(true);
                // Reading a file is quick, but it is blocking I/O: off the runtime's threads.
                let loaded = tokio::task::block_in_place(|| flags.load());
                if let Ok(report) = reloader.reload(loaded) {
                    if report.applied("log_level") {
                        log_level.set(reloader.config().log_level);
                    }
                }
                notify_reloading(false);
            }
        });
    }
    #[cfg(not(unix))]
    let _ = (reloader, flags, log_level);
    Ok(())
}

/// `RELOADING=1` with the monotonic time when a reload begins, `READY=1` when it is over.
#[cfg(unix)]
fn notify_reloading(begins: bool) {
    use sd_notify::NotifyState;
    let states: Vec<NotifyState> = match begins {
        true => std::iter::once(NotifyState::Reloading)
            .chain(NotifyState::monotonic_usec_now().ok())
            .collect(),
        false => vec![NotifyState::Ready, NotifyState::Status("listening")],
    };
    if let Err(error) = sd_notify::notify(&states) {
        tracing::warn!(error = %error, "cannot notify the service manager (NOTIFY_SOCKET)");
    }
}
