//! Telling a service manager how `serve` is doing: systemd's `Type=notify` protocol through
//! `NOTIFY_SOCKET` (the `sd-notify` crate). `READY=1` once listening with the sink open,
//! `STOPPING=1` when shutdown begins, and `WATCHDOG=1` at half the unit's `WatchdogSec` from a
//! task of the server's own runtime, so a wedged runtime is restarted. Without
//! `NOTIFY_SOCKET`, or off Unix, nothing is sent.

use connwarden::Lifecycle;

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
