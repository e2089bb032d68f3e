//! Telling a service manager how `serve` is doing: systemd's `Type=notify` protocol through
//! `NOTIFY_SOCKET` (the `sd-notify` crate). `READY=1` once listening with the sink open,
//! `STOPPING=1` when shutdown begins, and `WATCHDOG=1` at half the unit's `WatchdogSec` from a
//! task of the server's own runtime, so a wedged runtime is restarted. Without
//! `NOTIFY_SOCKET`, or off Unix, nothing is sent. `SIGHUP` reloads the configuration
//! (`RELOADING=1`, then `READY=1` once done, as `Type=notify-reload` expects), and `SIGUSR1` (as
//! for nginx's logs) reopens a `file:` sink after `logrotate` moved it.

#[cfg(unix)]
use std::sync::Arc;

use connwarden::sink::ReopenHandle;
use connwarden::{Lifecycle, Reloader};

use super::config_flags::ConfigFlags;
use super::logging::LogLevel;

pub use notifier::Notifier;

/// The service manager's `NOTIFY_SOCKET`, written without ever waiting for it.
///
/// A datagram socket's queue is short (`net.unix.max_dgram_qlen`, 10 by default), and a manager
/// that is busy or wedged stops reading it: a blocking send would then hold a runtime worker
/// thread, and two such sends hold both workers of a 2-core machine (the whole server frozen,
/// `SIGTERM` ignored). So the socket is non-blocking, and a message that does not fit at once is
/// dropped, counted (`connwarden_service_notifications_dropped_total`) and logged once until a
/// send works again. A lost `READY=1` or `WATCHDOG=1` costs less than a frozen gateway: the
/// manager's own timeouts then say what is wrong, and the next message says it again.
#[cfg(unix)]
mod notifier {
    use std::io;
    use std::os::unix::net::{SocketAddr, UnixDatagram};
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    use std::sync::{Arc, OnceLock};

    use connwarden::metrics::Metrics;
    use sd_notify::NotifyState;

    /// Sends notifications to the service manager, if `NOTIFY_SOCKET` names one; cheap to clone.
    #[derive(Clone, Default)]
    pub struct Notifier(Option<Arc<Socket>>);

    struct Socket {
        socket: UnixDatagram,
        to: SocketAddr,
        /// Shown in logs.
        name: String,
        /// Where drops are counted once the server's metrics exist.
        metrics: OnceLock<Arc<Metrics>>,
        /// Drops not yet counted in `metrics` (before it was set).
        uncounted: AtomicU64,
        /// Drops since the last message that went through; logged at the first.
        dropping: AtomicU64,
        warned: AtomicBool,
    }

    impl Notifier {
        /// The socket `NOTIFY_SOCKET` names (a path, or `@name` in the abstract namespace), or
        /// a notifier that sends nothing when it is unset or unusable (logged).
        pub fn from_env() -> Notifier {
            let Some(name) = std::env::var_os("NOTIFY_SOCKET") else {
                return Notifier(None);
            };
            let name = name.to_string_lossy().into_owned();
            match Socket::open(&name) {
                Ok(socket) => Notifier(Some(Arc::new(socket))),
                Err(error) => {
                    tracing::warn!(socket = %name, error = %error, "cannot use NOTIFY_SOCKET; the service manager will not hear from this server");
                    Notifier(None)
                }
            }
        }

        /// Counts dropped notifications in the server's metrics from now on (and those dropped
        /// before).
        pub fn count_in(&self, metrics: Arc<Metrics>) {
            if let Some(socket) = &self.0 {
                let before = socket.uncounted.swap(0, Ordering::Relaxed);
                metrics.service_notifications_dropped(before);
                let _ = socket.metrics.set(metrics);
            }
        }

        /// Sends `states` as one datagram, at once or not at all.
        pub fn send(&self, states: &[NotifyState]) {
            if let Some(socket) = &self.0 {
                socket.send(states);
            }
        }
    }

    impl Socket {
        fn open(name: &str) -> io::Result<Socket> {
            let to = match name.strip_prefix('@') {
                #[cfg(any(target_os = "linux", target_os = "android"))]
                Some(abstract_name) => {
                    use std::os::linux::net::SocketAddrExt;
                    SocketAddr::from_abstract_name(abstract_name)?
                }
                #[cfg(not(any(target_os = "linux", target_os = "android")))]
                Some(_) => {
                    return Err(io::Error::new(
                        io::ErrorKind::Unsupported,
                        "abstract socket names are Linux only",
                    ))
                }
                None => SocketAddr::from_pathname(name)?,
            };
            let socket = UnixDatagram::unbound()?;
            socket.set_nonblocking(true)?;
            Ok(Socket {
                socket,
                to,
                name: name.to_owned(),
                metrics: OnceLock::new(),
                uncounted: AtomicU64::new(0),
                dropping: AtomicU64::new(0),
                warned: AtomicBool::new(false),
            })
        }

        fn send(&self, states: &[NotifyState]) {
            let message: String = states.iter().map(|state| format!("{state}\n")).collect();
            match self.socket.send_to_addr(message.as_bytes(), &self.to) {
                Ok(_) => {
                    let dropped = self.dropping.swap(0, Ordering::Relaxed);
                    if dropped > 0 && self.warned.swap(false, Ordering::Relaxed) {
                        tracing::info!(socket = %self.name, dropped, "the service manager reads its notifications again");
                    }
                }
                Err(error) => {
                    self.dropping.fetch_add(1, Ordering::Relaxed);
                    match self.metrics.get() {
                        Some(metrics) => metrics.service_notifications_dropped(1),
                        None => {
                            self.uncounted.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    if !self.warned.swap(true, Ordering::Relaxed) {
                        let full = error.kind() == io::ErrorKind::WouldBlock;
                        tracing::warn!(socket = %self.name, error = %error, full, message = %message.trim_end().replace('\n', " "), "notification to the service manager dropped (its socket is full or gone); the server does not wait for it, and further drops are only counted until one goes through");
                    }
                }
            }
        }
    }
}

/// Off Unix there is no service manager socket: nothing is sent.
#[cfg(not(unix))]
mod notifier {
    use std::sync::Arc;

    use connwarden::metrics::Metrics;

    /// Sends nothing.
    #[derive(Clone, Default)]
    pub struct Notifier;

    impl Notifier {
        pub fn from_env() -> Notifier {
            Notifier
        }

        pub fn count_in(&self, _metrics: Arc<Metrics>) {}
    }
}

impl Notifier {
    /// Tells the service manager of a moment in the server's life.
    pub fn lifecycle(&self, moment: Lifecycle) {
        #[cfg(unix)]
        {
            use sd_notify::NotifyState;
            let states: Vec<NotifyState> = match moment {
                Lifecycle::Ready => vec![NotifyState::Ready, NotifyState::Status("listening")],
                Lifecycle::Stopping => {
                    vec![NotifyState::Stopping, NotifyState::Status("draining")]
                }
                // The new process is the service's main process from now on (this one exits
                // once its connections are handed over).
                Lifecycle::HandedOver(pid) => vec![
                    NotifyState::MainPid(pid),
                    NotifyState::Status("upgrading: handing the connections to the new process"),
                ],
            };
            self.send(&states);
        }
        #[cfg(not(unix))]
        let _ = moment;
    }

    /// `MAINPID=`: a process started by an upgrade says it is the main one (systemd takes it
    /// with `NotifyAccess=all`; the old process says so too, which `NotifyAccess=main` takes).
    pub fn main_pid(&self, pid: u32) {
        #[cfg(unix)]
        self.send(&[sd_notify::NotifyState::MainPid(pid)]);
        #[cfg(not(unix))]
        let _ = pid;
    }

    /// `RELOADING=1` with the monotonic time when a reload begins, `READY=1` when it is over.
    #[cfg(unix)]
    fn reloading(&self, begins: bool) {
        use sd_notify::NotifyState;
        let states: Vec<NotifyState> = match begins {
            true => std::iter::once(NotifyState::Reloading)
                .chain(NotifyState::monotonic_usec_now().ok())
                .collect(),
            false => vec![NotifyState::Ready, NotifyState::Status("listening")],
        };
        self.send(&states);
    }
}

/// Starts sending `WATCHDOG=1` if the service manager asked for it (`WATCHDOG_USEC`). Needs a
/// Tokio runtime; the task ends with it.
pub fn spawn_watchdog(notifier: &Notifier) {
    #[cfg(unix)]
    if let Some(period) = sd_notify::watchdog_enabled() {
        tracing::info!(
            watchdog_ms = period.as_millis() as u64,
            "systemd watchdog enabled"
        );
        let notifier = notifier.clone();
        tokio::spawn(async move {
            let mut every = tokio::time::interval(period / 2);
            loop {
                every.tick().await;
                notifier.send(&[sd_notify::NotifyState::Watchdog]);
            }
        });
    }
    #[cfg(not(unix))]
    let _ = notifier;
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

/// Upgrades at each `SIGUSR2`: starts the executable found at `program`'s path (a file
/// replaced there is what starts) with this process's arguments and environment, and hands it
/// the listeners and the connections ([`connwarden::upgrade`]). A failure is logged and counted
/// by the server, which goes on serving. Linux only.
#[cfg(target_os = "linux")]
pub fn upgrade_on_sigusr2(
    upgrader: connwarden::server::Upgrader,
    program: connwarden::upgrade::Program,
) -> anyhow::Result<()> {
    use anyhow::Context;
    use tokio::signal::unix::{signal, SignalKind};
    let mut usr2 = signal(SignalKind::user_defined2()).context("cannot handle SIGUSR2")?;
    tokio::spawn(async move {
        while usr2.recv().await.is_some() {
            tracing::info!(program = %program.path.display(), "SIGUSR2: upgrading to the executable at this path");
            let upgrade = connwarden::upgrade::Upgrade::same_program(&program);
            if let Ok(pid) = upgrader.upgrade(upgrade).await {
                tracing::info!(pid, "upgrade: the new process serves; this one exits once its connections are handed over");
            }
        }
    });
    Ok(())
}

/// Reloads the configuration at each `SIGHUP`: the `--config` file and the environment are read
/// again, the command-line flags stay ([`connwarden::reload`] says which keys apply to whom).
/// Needs a Tokio runtime; off Unix there is no such signal and nothing is installed.
pub fn reload_on_sighup(
    reloader: Reloader,
    flags: ConfigFlags,
    log_level: LogLevel,
    notifier: Notifier,
) -> anyhow::Result<()> {
    #[cfg(unix)]
    {
        use anyhow::Context;
        use tokio::signal::unix::{signal, SignalKind};
        let mut hup = signal(SignalKind::hangup()).context("cannot handle SIGHUP")?;
        let flags = Arc::new(flags);
        tokio::spawn(async move {
            while hup.recv().await.is_some() {
                tracing::info!(file = ?flags.config, "SIGHUP: reading the configuration again");
                notifier.reloading(true);
                // The configuration, TLS and token files are read with blocking calls: on the
                // blocking pool, never on a worker thread.
                let (flags, reloader) = (Arc::clone(&flags), reloader.clone());
                let reloaded = tokio::task::spawn_blocking(move || {
                    let report = reloader.reload(flags.load()).ok()?;
                    Some(
                        report
                            .applied(connwarden::config::Key::LogLevel)
                            .then(|| reloader.config().log_level),
                    )
                })
                .await;
                if let Ok(Some(Some(level))) = reloaded {
                    log_level.set(level);
                }
                notifier.reloading(false);
            }
        });
    }
    #[cfg(not(unix))]
    let _ = (reloader, flags, log_level, notifier);
    Ok(())
}
