//! The logs of every command: standard error, as text or JSON lines, written by a thread of
//! their own so that a reader that stalls never stalls the program; the level changed later (a
//! reload of `serve`).

use tracing::level_filters::LevelFilter;

/// Log lines held for standard error, at most, while it is not read: beyond them lines are
/// dropped and counted, never waited for.
const LOG_LINES_BUFFERED: usize = 16 * 1024;

/// Logs go to standard error (standard output may be the sink), as text or JSON lines.
/// `RUST_LOG` filters them; without it, `level` (`log_level` for `serve`, `info` for `send`,
/// `warn` for the tools whose output is their report). With a progress bar, each log line hides
/// the bar while it is written. The handle changes the level later (a reload of `serve`).
///
/// Lines are written by a thread of their own, never by the thread that logs: a standard error
/// nobody reads fast enough (a wedged journald, a full pipe) would otherwise block every worker
/// thread that logs, and freeze the server. A full buffer drops lines ([`Logging::count_drops_in`]).
/// Keep the returned value for as long as the program logs: dropping it flushes what is
/// buffered (waiting about a second at most).
pub(super) fn init_logging(
    format: connwarden::config::LogFormat,
    level: LevelFilter,
    bar: Option<indicatif::ProgressBar>,
) -> Logging {
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    use tracing_subscriber::{fmt, reload, EnvFilter};
    let from_env = EnvFilter::try_from_default_env().ok();
    let by_env = from_env.is_some();
    let filter = from_env.unwrap_or_else(|| EnvFilter::new(level.to_string()));
    let (filter, handle) = reload::Layer::new(filter);
    let (writer, flush_on_drop) = tracing_appender::non_blocking::NonBlockingBuilder::default()
        .lossy(true)
        .buffered_lines_limit(LOG_LINES_BUFFERED)
        .thread_name("connwarden-log")
        .finish(StderrBesideBar(bar));
    let dropped = writer.error_counter();
    let subscriber = tracing_subscriber::registry().with(filter);
    let layer = fmt::layer().with_writer(writer);
    match format {
        connwarden::config::LogFormat::Text => subscriber.with(layer.with_ansi(false)).init(),
        connwarden::config::LogFormat::Json => {
            subscriber.with(layer.json().flatten_event(true)).init()
        }
    }
    Logging {
        level: LogLevel { handle, by_env },
        dropped,
        _flush_on_drop: flush_on_drop,
    }
}

/// The logs of this process, from [`init_logging`].
#[must_use = "dropping it stops the logs"]
pub(super) struct Logging {
    #[cfg_attr(not(unix), allow(dead_code))]
    pub level: LogLevel,
    dropped: tracing_appender::non_blocking::ErrorCounter,
    _flush_on_drop: tracing_appender::non_blocking::WorkerGuard,
}

impl Logging {
    /// Counts the log lines dropped for a full buffer in `metrics`
    /// (`connwarden_log_lines_dropped_total`), and says so once in the log when drops begin
    /// (that line may be dropped too; the count is not). Call it inside the runtime.
    #[cfg_attr(not(unix), allow(dead_code))]
    pub fn count_drops_in(&self, metrics: std::sync::Arc<connwarden::metrics::Metrics>) {
        let dropped = self.dropped.clone();
        tokio::spawn(async move {
            let mut counted = 0;
            let mut tick = tokio::time::interval(std::time::Duration::from_secs(1));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let now = dropped.dropped_lines() as u64;
                if now > counted {
                    if counted == 0 {
                        tracing::warn!(dropped = now, "log lines dropped: standard error is not read as fast as the server logs; the server does not wait for it, and counts further drops (connwarden_log_lines_dropped_total)");
                    }
                    metrics.log_lines_dropped(now - counted);
                    counted = now;
                }
            }
        });
    }
}

/// Changes the level of the logs after they started (on `SIGHUP`: Unix only).
#[cfg_attr(not(unix), allow(dead_code))]
#[derive(Clone)]
pub(super) struct LogLevel {
    handle: tracing_subscriber::reload::Handle<
        tracing_subscriber::EnvFilter,
        tracing_subscriber::Registry,
    >,
    /// `RUST_LOG` chose the filter: it stays.
    by_env: bool,
}

#[cfg_attr(not(unix), allow(dead_code))]
impl LogLevel {
    /// Logs at `level` from now on, unless `RUST_LOG` is set.
    pub fn set(&self, level: LevelFilter) {
        if self.by_env {
            tracing::warn!(log_level = %level, "RUST_LOG is set and wins over log_level; the log filter stays");
            return;
        }
        let filter = tracing_subscriber::EnvFilter::new(level.to_string());
        match self.handle.reload(filter) {
            Ok(()) => tracing::info!(log_level = %level, "log level changed"),
            Err(error) => tracing::warn!(error = %error, "cannot change the log level"),
        }
    }
}

/// Standard error, written with the progress bar (if any) out of the way.
struct StderrBesideBar(Option<indicatif::ProgressBar>);

impl std::io::Write for StderrBesideBar {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match &self.0 {
            Some(bar) => bar.suspend(|| std::io::stderr().write(buf)),
            None => std::io::stderr().write(buf),
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        std::io::stderr().flush()
    }
}
