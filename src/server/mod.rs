//! The listener side: socket options, the accept loop, `max_connections`, spawning, and the
//! order and grace of shutdown.
//!
//! Shutdown runs in stages, all within `shutdown_grace`: stop accepting; stop reading (objects
//! already buffered are still queued); let the sink drain the queue, so queued items are stored
//! and acknowledged while their connections are still open; then close every connection with
//! reason `shutdown` after a brief flush of its last acks and a `shutting_down` notice.
//!
//! An upgrade ([`Upgrader`], `SIGUSR2` in `connwarden serve`) ends a run another way: once a
//! new process took the listeners ([`crate::upgrade`]), this one stops accepting, hands over
//! every connection that can move (`upgrade.rs` beside this file), tells the others `goaway`,
//! and then shuts down as above with what is left.
//!
//! With `admin` set, the admin API ([`crate::admin`]) serves on its own listener from before the
//! first accept to the end of shutdown; `/readyz` says "draining" from the first stage on.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use socket2::SockRef;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::admin::{self, AdminHandle, Readiness, Token, TokenError};
use crate::close_reason::CloseReason;
use crate::config::{Config, ConfigError};
use crate::conn::{self, Stage};
use crate::metrics::Metrics;
use crate::nats;
use crate::phase::Phases;
use crate::protocol::{ErrorCode, Outbound};
use crate::queue::{self, Consumer, Monitor, Producer};
use crate::record::Record;
use crate::registry::{ClosedConn, Registry};
use crate::reload::Reloader;
use crate::sink::{self, DrainReport, ReopenHandle, Sink, SinkError};
use crate::sockopt::{self, ListenError, ListenerOptions, SocketOptions};
use crate::tls::{ServerTls, TlsError};
#[cfg(target_os = "linux")]
use crate::upgrade::{Inherited, UpgradeError};

#[cfg(target_os = "linux")]
mod upgrade;
#[cfg(target_os = "linux")]
pub use upgrade::Upgrader;

/// First wait before retrying `accept` after it ran out of a resource (`EMFILE`, `ENFILE`,
/// `ENOBUFS`, `ENOMEM`): retrying at once would spin a core while descriptors are exhausted.
/// The wait doubles at each failure in a row, up to [`ACCEPT_BACKOFF_MAX`] (as Go's `net/http`).
const ACCEPT_BACKOFF_MIN: Duration = Duration::from_millis(5);
/// Longest wait between two `accept` attempts while resources stay exhausted.
const ACCEPT_BACKOFF_MAX: Duration = Duration::from_secs(1);
/// How often histogram samples are folded into buckets between scrapes, bounding their memory.
const METRICS_UPKEEP: Duration = Duration::from_secs(1);

/// Errors that stop a server from starting.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error(transparent)]
    /// The configuration is invalid.
    Config(#[from] ConfigError),
    #[error(transparent)]
    /// A listener could not be opened.
    Listen(#[from] ListenError),
    #[error(transparent)]
    /// The sink could not be opened.
    Sink(#[from] SinkError),
    #[error(transparent)]
    /// NATS could not be used.
    Nats(#[from] crate::nats::NatsError),
    #[error("no listener to accept on")]
    /// `run` was given no listener.
    NoListener,
    #[error(transparent)]
    /// The client tokens file cannot be used.
    Auth(#[from] crate::auth::AuthError),
    #[error(transparent)]
    /// The TLS certificate or key cannot be used.
    Tls(#[from] TlsError),
    #[error(transparent)]
    /// The admin token file cannot be used.
    AdminToken(#[from] TokenError),
    #[cfg(target_os = "linux")]
    #[error(transparent)]
    /// The listeners could not be taken from the process this one upgrades.
    Upgrade(#[from] UpgradeError),
    #[error("cannot listen on the admin address {addr}")]
    /// The admin listener could not be opened.
    AdminListen {
        /// The `admin` address.
        addr: SocketAddr,
        #[source]
        /// Why.
        source: std::io::Error,
    },
}

/// Builds a [`Server`].
///
/// ```no_run
/// # async fn example() -> Result<(), connwarden::server::ServerError> {
/// use connwarden::{Config, Server, sink::ChannelSink};
///
/// let (sink, mut records) = ChannelSink::new(1024);
/// let server = Server::builder(Config::default()).sink(sink).build()?;
/// let listeners = server.bind()?;
/// tokio::spawn(async move {
///     while let Some(record) = records.recv().await {
///         println!("{} sent {}", record.peer(), record.ip);
///     }
/// });
/// server.run(listeners, async { let _ = tokio::signal::ctrl_c().await; }).await?;
/// # Ok(()) }
/// ```
pub struct ServerBuilder {
    config: Config,
    sink: Option<Box<dyn Sink>>,
    registry: Option<Registry>,
    on_lifecycle: Option<LifecycleHook>,
    #[cfg(target_os = "linux")]
    inherited: Option<Inherited>,
}

/// A moment in a server's life that a service manager wants to hear of (`connwarden serve`
/// tells systemd through `NOTIFY_SOCKET`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Lifecycle {
    /// Listening, with the sink open: `/readyz` turns ready at the same moment.
    Ready,
    /// Shutdown began: no new connections; the live ones drain within `shutdown_grace`.
    Stopping,
    /// An upgrade: the new process (this pid) took the listeners and is ready; this one hands
    /// over its connections and exits (`serve` tells systemd `MAINPID=`).
    HandedOver(u32),
}

/// Called at each [`Lifecycle`] moment.
type LifecycleHook = Arc<dyn Fn(Lifecycle) + Send + Sync>;

impl ServerBuilder {
    /// Items go to `sink` instead of the one the configuration names.
    pub fn sink(mut self, sink: impl Sink) -> ServerBuilder {
        self.sink = Some(Box::new(sink));
        self
    }

    /// Uses an existing registry (to share it with other parts of a program).
    pub fn registry(mut self, registry: Registry) -> ServerBuilder {
        self.registry = Some(registry);
        self
    }

    /// Calls `hook` when the server becomes ready and when it begins to stop. It runs on a
    /// worker thread of the runtime, so it must not block (`serve` sends to `NOTIFY_SOCKET`
    /// without waiting).
    pub fn on_lifecycle(
        mut self,
        hook: impl Fn(Lifecycle) + Send + Sync + 'static,
    ) -> ServerBuilder {
        self.on_lifecycle = Some(Arc::new(hook));
        self
    }

    /// Takes over from the process that started this one for an upgrade: [`Server::bind`]
    /// returns its listeners, and [`Server::run`] adopts its connections once ready.
    #[cfg(target_os = "linux")]
    pub fn inherit(mut self, inherited: Inherited) -> ServerBuilder {
        self.inherited = Some(inherited);
        self
    }

    /// Validates the configuration, reads the admin token, creates the queue and the metrics.
    pub fn build(self) -> Result<Server, ServerError> {
        self.config.validate()?;
        let token = match &self.config.admin_token_file {
            Some(path) => Some(Token::from_file(path)?),
            None => None,
        };
        let (producer, consumer) = queue::bounded(self.config.queue, self.config.overflow);
        let registry = self.registry.unwrap_or_default();
        let metrics = Arc::new(Metrics::new(&self.config));
        registry.attach_metrics(Arc::clone(&metrics));
        registry.set_closed_history(self.config.closed_history);
        registry
            .storm_watch()
            .set_bound(self.config.keepalive.bound());
        let tls = ServerTls::new(&self.config)?;
        let reloader = Reloader::new(
            self.config.clone(),
            Arc::clone(&metrics),
            registry.clone(),
            tls,
        );
        reloader
            .live()
            .tokens
            .load(self.config.auth_tokens.as_deref())?;
        #[cfg(target_os = "linux")]
        let (upgrades, upgrade_requests) = tokio::sync::mpsc::unbounded_channel();
        Ok(Server {
            #[cfg(target_os = "linux")]
            upgrades,
            #[cfg(target_os = "linux")]
            upgrade_requests,
            #[cfg(target_os = "linux")]
            inherited: self.inherited,
            handed_admin: std::sync::Mutex::new(None),
            config: self.config,
            reloader,
            sink: self.sink,
            registry,
            producer,
            consumer,
            metrics,
            readiness: Arc::new(Readiness::default()),
            token,
            on_lifecycle: self.on_lifecycle,
            reopen: ReopenHandle::default(),
        })
    }
}

/// A configured server, ready to run on bound listeners.
pub struct Server {
    /// The configuration the server started with; [`Reloader`] holds the one in force.
    config: Config,
    reloader: Reloader,
    sink: Option<Box<dyn Sink>>,
    registry: Registry,
    producer: Producer<Record>,
    consumer: Consumer<Record>,
    metrics: Arc<Metrics>,
    readiness: Arc<Readiness>,
    token: Option<Token>,
    on_lifecycle: Option<LifecycleHook>,
    reopen: ReopenHandle,
    /// Where [`Upgrader`]s send their requests, and where `run` reads them.
    #[cfg(target_os = "linux")]
    upgrades: tokio::sync::mpsc::UnboundedSender<upgrade::Request>,
    #[cfg(target_os = "linux")]
    upgrade_requests: tokio::sync::mpsc::UnboundedReceiver<upgrade::Request>,
    /// The process this one takes over from, at an upgrade.
    #[cfg(target_os = "linux")]
    inherited: Option<Inherited>,
    /// The admin listener an upgrade handed over, until `run` serves on it.
    handed_admin: std::sync::Mutex<Option<std::net::TcpListener>>,
}

/// What shutdown achieved.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ShutdownReport {
    /// Records the sink stored over the server's life.
    pub written: u64,
    /// Records the sink failed to store (each reported to its sender).
    pub failed: u64,
    /// `fsync` calls made: with group commit, far fewer than records.
    pub syncs: u64,
    /// Records still queued when the grace period ran out.
    pub abandoned: usize,
    /// Connections still open when the grace period ran out.
    pub connections_left: usize,
    /// Connections handed over to a new process (an upgrade), which goes on serving them.
    pub handed_over: u64,
}

impl Server {
    /// Starts building a server with `config`.
    pub fn builder(config: Config) -> ServerBuilder {
        ServerBuilder {
            config,
            sink: None,
            registry: None,
            on_lifecycle: None,
            #[cfg(target_os = "linux")]
            inherited: None,
        }
    }

    /// Asks the running server to hand itself over to a new process (`serve` does it on
    /// `SIGUSR2`).
    #[cfg(target_os = "linux")]
    pub fn upgrader(&self) -> Upgrader {
        Upgrader::new(self.upgrades.clone())
    }

    /// The validated configuration the server starts with.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Puts a new configuration in force while the server runs (`serve` does it on `SIGHUP`);
    /// see [`crate::reload`] for which keys apply to whom.
    pub fn reloader(&self) -> Reloader {
        self.reloader.clone()
    }

    /// The registry of live connections.
    pub fn registry(&self) -> Registry {
        self.registry.clone()
    }

    /// Depth, pushes and drops of the queue, live.
    pub fn queue(&self) -> Monitor<Record> {
        self.consumer.monitor()
    }

    /// Asks the `file:` sink to reopen its path before its next batch (after `logrotate`
    /// moved the file; `serve` does it on `SIGUSR1`).
    pub fn sink_reopen(&self) -> ReopenHandle {
        self.reopen.clone()
    }

    /// The server's metrics.
    pub fn metrics(&self) -> Arc<Metrics> {
        Arc::clone(&self.metrics)
    }

    /// What the admin API needs, to mount [`admin::router`] on an application of one's own
    /// (then set `admin` to `None`, so that `run` does not serve it too).
    pub fn admin_handle(&self) -> AdminHandle {
        AdminHandle {
            registry: self.registry.clone(),
            metrics: Arc::clone(&self.metrics),
            queue: self.consumer.monitor(),
            readiness: Arc::clone(&self.readiness),
            token: self.token.clone(),
            reloader: self.reloader.clone(),
        }
    }

    /// Opens a listener on every configured address, with every socket option set before
    /// `listen`; or, for a server that [inherits](ServerBuilder::inherit), takes the old
    /// process's listeners (with their options as they were). Needs a Tokio runtime.
    pub fn bind(&self) -> Result<Vec<TcpListener>, ServerError> {
        #[cfg(target_os = "linux")]
        if let Some(inherited) = &self.inherited {
            let handed = inherited.take_listeners()?;
            *self.handed_admin.lock().unwrap_or_else(|e| e.into_inner()) = handed.admin;
            return handed
                .data
                .into_iter()
                .map(|listener| {
                    let addr = listener
                        .local_addr()
                        .unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0)));
                    with_runtime(listener, addr)
                })
                .collect();
        }
        let listener_options = ListenerOptions {
            reuse_port: self.config.reuse_port,
            backlog: self.config.backlog,
        };
        let options = SocketOptions::from_config(&self.config);
        self.config
            .listen
            .iter()
            .map(|addr| {
                let std_listener = sockopt::bind_listener(*addr, &listener_options, &options)?;
                with_runtime(std_listener, *addr)
            })
            .collect()
    }

    /// Serves until `shutdown` resolves, then shuts down within `shutdown_grace`.
    ///
    /// Listeners opened elsewhere (a test's port 0) get the liveness options on every accepted
    /// socket all the same.
    pub async fn run(
        self,
        listeners: Vec<TcpListener>,
        shutdown: impl Future<Output = ()>,
    ) -> Result<ShutdownReport, ServerError> {
        if listeners.is_empty() {
            return Err(ServerError::NoListener);
        }
        let admin_handle = self.admin_handle();
        let handed_admin = (self.handed_admin.lock().unwrap_or_else(|e| e.into_inner())).take();
        let Server {
            config,
            reloader,
            sink,
            registry,
            producer,
            consumer,
            metrics,
            readiness,
            token: _,
            on_lifecycle,
            reopen,
            #[cfg(target_os = "linux")]
                upgrades: keep_requests_open,
            #[cfg(target_os = "linux")]
            mut upgrade_requests,
            #[cfg(target_os = "linux")]
            inherited,
            handed_admin: _,
        } = self;
        let lifecycle = |moment| {
            if let Some(hook) = &on_lifecycle {
                hook(moment);
            }
        };
        // Ends the admin API and the metrics upkeep when `run` ends, on every path.
        let stop_background = CancellationToken::new();
        // Ends with the rest, or as soon as a new process took over the admin listener.
        let stop_admin = stop_background.child_token();
        let admin = match config.admin {
            Some(addr) => {
                Some(start_admin(addr, handed_admin, admin_handle, stop_admin.clone()).await?)
            }
            None => None,
        };
        #[cfg(target_os = "linux")]
        let copies = upgrade::ListenerCopies::of(&listeners, admin.as_ref().map(|a| &a.listener))?;
        let admin_task = admin.map(|admin| admin.task);
        let _stop_background_on_exit = stop_background.clone().drop_guard();
        // NATS first: the JetStream sink publishes through it, and the cluster-wide registry
        // answers on it. Until it answers, `/readyz` says "starting".
        let nats = match config.nats.enabled() {
            true => {
                let name = format!("connwarden {}", config.gateway_name());
                Some(nats::connect_patiently(&config.nats, &name, Arc::clone(&metrics)).await?)
            }
            false => None,
        };
        let sink = match sink {
            Some(sink) => sink,
            None => {
                // At an upgrade, the old process goes on appending to a file sink for a while.
                #[cfg(target_os = "linux")]
                let beside_another_writer = inherited.is_some();
                #[cfg(not(target_os = "linux"))]
                let beside_another_writer = false;
                sink::open(
                    &config,
                    nats.as_ref(),
                    &metrics,
                    &reopen,
                    beside_another_writer,
                )
                .await?
            }
        };
        let registry_task = nats.clone().map(|client| {
            let (config, registry, stop) =
                (config.clone(), registry.clone(), stop_background.clone());
            tokio::spawn(async move {
                if let Err(error) = nats::registry::serve(client, config, registry, stop).await {
                    tracing::error!(error = %error, "the cluster-wide registry is not available");
                }
            })
        });
        let options = SocketOptions::from_config(&config);
        report_start(&config, &options, &listeners);

        let monitor = consumer.monitor();
        let drain_metrics = Arc::clone(&metrics);
        let fsync = config.fsync;
        let sink_task =
            tokio::spawn(async move { sink::drain(consumer, sink, fsync, &drain_metrics).await });
        let upkeep = tokio::spawn(upkeep(
            Arc::clone(&metrics),
            registry.clone(),
            stop_background.clone(),
        ));
        let live = Arc::clone(reloader.live());
        let relief_log = tokio::spawn(crate::pressure::log_reliefs(
            Arc::clone(&live),
            stop_background.clone(),
        ));
        let phases = Arc::new(Phases::default());
        let restorer = {
            let live = Arc::clone(&live);
            tokio::spawn(crate::phase::restore(
                Arc::clone(&phases),
                registry.clone(),
                move || live.config().keepalive,
                stop_background.clone(),
            ))
        };
        let stop_accepting = CancellationToken::new();
        let tracker = TaskTracker::new();
        let acceptor = Arc::new(Acceptor {
            phases,
            registry: registry.clone(),
            live_connections: Arc::new(AtomicUsize::new(0)),
            producer,
            metrics: Arc::clone(&metrics),
            reloader,
            tracker: tracker.clone(),
            checked_first: AtomicBool::new(false),
        });
        #[cfg(target_os = "linux")]
        let adopting = Arc::clone(&acceptor);
        #[cfg_attr(not(target_os = "linux"), allow(unused_mut))]
        let mut accept_tasks: Vec<JoinHandle<()>> = listeners
            .into_iter()
            .map(|listener| {
                tokio::spawn(accept_loop(
                    listener,
                    Arc::clone(&acceptor),
                    stop_accepting.clone(),
                ))
            })
            .collect();
        drop(acceptor);
        readiness.set_ready();
        lifecycle(Lifecycle::Ready);
        #[cfg(target_os = "linux")]
        let adoption = inherited.map(|inherited| {
            tokio::spawn(upgrade::adopt_all(
                inherited,
                adopting,
                stop_accepting.clone(),
            ))
        });

        // `Some` with the count handed over once a new process took over; `None` at a shutdown.
        #[cfg(target_os = "linux")]
        let handed_over: Option<u64> = {
            let _keep_requests_open = keep_requests_open;
            let upgraded = upgrade::serve_until_upgraded(
                shutdown,
                &mut upgrade_requests,
                &copies,
                &live,
                &metrics,
            )
            .await;
            match upgraded {
                None => None,
                Some(successor) => {
                    lifecycle(Lifecycle::HandedOver(successor.pid()));
                    readiness.set_draining();
                    stop_admin.cancel();
                    stop_accepting.cancel();
                    for task in accept_tasks.drain(..) {
                        let _ = task.await;
                    }
                    Some(upgrade::hand_over(successor, &live, &registry).await)
                }
            }
        };
        #[cfg(not(target_os = "linux"))]
        let handed_over: Option<u64> = {
            shutdown.await;
            None
        };
        #[cfg(target_os = "linux")]
        if let Some(adoption) = adoption {
            adoption.abort();
        }
        readiness.set_draining();
        // After an upgrade the service goes on in the new process: the old one's end is not the
        // service's (a STOPPING=1 from it would stop the unit under NotifyAccess=all).
        if handed_over.is_none() {
            lifecycle(Lifecycle::Stopping);
        }
        let grace = live.config().shutdown_grace;
        let deadline = Instant::now() + grace;
        tracing::info!(
            live = registry.len(),
            queued = monitor.stats().depth,
            grace_ms = grace.as_millis() as u64,
            "shutting down"
        );
        stop_accepting.cancel();
        for task in accept_tasks {
            let _ = task.await;
        }
        live.enter(Stage::StopReading);
        registry.wake_all();
        // Keep a little of the grace for the connections' last flush.
        let reserve = (grace / 4).min(Duration::from_secs(1));
        let mut sink_task = sink_task;
        let mut drained = tokio::time::timeout_at(deadline - reserve, &mut sink_task)
            .await
            .ok();
        live.enter(Stage::Close);
        registry.wake_all();
        tracker.close();
        let closed = tokio::time::timeout_at(deadline, tracker.wait())
            .await
            .is_ok();
        if drained.is_none() {
            drained = tokio::time::timeout_at(deadline, &mut sink_task).await.ok();
        }
        let drain_report = match drained {
            Some(Ok(report)) => report,
            Some(Err(join_error)) => {
                tracing::error!(error = %join_error, "sink task failed");
                DrainReport::default()
            }
            None => {
                sink_task.abort();
                DrainReport::default()
            }
        };
        let report = ShutdownReport {
            written: drain_report.written,
            failed: drain_report.failed,
            syncs: drain_report.syncs,
            abandoned: monitor.stats().depth,
            connections_left: if closed { 0 } else { registry.len() },
            handed_over: handed_over.unwrap_or(0),
        };
        if report.abandoned > 0 || report.connections_left > 0 {
            tracing::error!(
                abandoned = report.abandoned,
                connections_left = report.connections_left,
                "shutdown grace ran out"
            );
        } else {
            tracing::info!(
                written = report.written,
                failed = report.failed,
                syncs = report.syncs,
                "shutdown complete"
            );
        }
        stop_background.cancel();
        if let Some(task) = admin_task {
            let _ = task.await;
        }
        if let Some(task) = registry_task {
            let _ = tokio::time::timeout(Duration::from_secs(2), task).await;
        }
        if let Some(client) = nats {
            let _ = tokio::time::timeout(Duration::from_secs(2), client.flush()).await;
        }
        let _ = upkeep.await;
        let _ = relief_log.await;
        let _ = restorer.await;
        Ok(report)
    }
}

/// The admin API's task, and a copy of its listener (for an upgrade to hand over).
struct AdminServing {
    task: JoinHandle<()>,
    #[cfg_attr(not(target_os = "linux"), allow(dead_code))]
    listener: socket2::Socket,
}

/// Registers a listener (bound here, or handed over by an upgrade) with the runtime.
fn with_runtime(
    listener: std::net::TcpListener,
    addr: SocketAddr,
) -> Result<TcpListener, ServerError> {
    TcpListener::from_std(listener).map_err(|source| {
        ServerError::Listen(ListenError {
            addr,
            stage: "register with the runtime",
            source,
        })
    })
}

/// Binds the admin listener (or takes the one an upgrade handed over) and serves the admin API
/// on it until `stop`.
async fn start_admin(
    addr: SocketAddr,
    handed: Option<std::net::TcpListener>,
    handle: AdminHandle,
    stop: CancellationToken,
) -> Result<AdminServing, ServerError> {
    let listener = match handed {
        Some(listener) => TcpListener::from_std(listener),
        None => TcpListener::bind(addr).await,
    }
    .map_err(|source| ServerError::AdminListen { addr, source })?;
    let copy = SockRef::from(&listener)
        .try_clone()
        .map_err(|source| ServerError::AdminListen { addr, source })?;
    let bound = listener.local_addr().unwrap_or(addr);
    admin::describe(bound, &handle.token);
    let task = tokio::spawn(async move {
        if let Err(error) = admin::serve(listener, handle, stop.cancelled_owned()).await {
            tracing::error!(error = %error, "admin API stopped");
        }
    });
    Ok(AdminServing {
        task,
        listener: copy,
    })
}

/// Folds histogram samples into buckets every [`METRICS_UPKEEP`], and samples the kernel's
/// receive drops for the probe-storm watch every [`crate::storm::SAMPLE_EVERY`], until `stop`.
async fn upkeep(metrics: Arc<Metrics>, registry: Registry, stop: CancellationToken) {
    let mut every = tokio::time::interval(METRICS_UPKEEP);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut sampled = tokio::time::Instant::now();
    registry.storm_watch().sample();
    loop {
        tokio::select! {
            _ = every.tick() => {
                metrics.run_upkeep();
                // A read of procfs, which never waits on a device.
                if sampled.elapsed() >= crate::storm::SAMPLE_EVERY {
                    sampled = tokio::time::Instant::now();
                    registry.storm_watch().sample();
                }
            }
            _ = stop.cancelled() => return,
        }
    }
}

/// Logs the listening addresses, the socket options in force and any the kernel changed, the
/// options this platform lacks, and whether `max_connections` fits the open-file limit and
/// the receive backlog.
fn report_start(config: &Config, options: &SocketOptions, listeners: &[TcpListener]) {
    for listener in listeners {
        let addr = listener
            .local_addr()
            .map_or_else(|e| format!("unknown ({e})"), |a| a.to_string());
        let effective = sockopt::read_back(SockRef::from(listener));
        tracing::info!(
            addr = %addr,
            keepalive_idle_s = effective.keepalive_idle.map(|d| d.as_secs()),
            keepalive_interval_s = effective.keepalive_interval.map(|d| d.as_secs()),
            keepalive_count = effective.keepalive_count,
            user_timeout_ms = effective.user_timeout.map(|d| d.as_millis() as u64),
            nodelay = effective.nodelay,
            recv_buffer = effective.recv_buffer,
            send_buffer = effective.send_buffer,
            "listening"
        );
        sockopt::warn_mismatches(&effective, options, "listener");
    }
    let missing = sockopt::SUPPORT.missing();
    if !missing.is_empty() {
        tracing::warn!(missing = ?missing, "this platform lacks some socket options; their bounds do not apply");
    }
    sockopt::check_open_files(config.max_connections, true);
    if let Some(backlog) = sockopt::netdev_max_backlog() {
        if let Some(message) = crate::phase::backlog_warning(
            backlog,
            config.max_connections as u64,
            config.keepalive.idle,
            config.keepalive_spread,
        ) {
            tracing::warn!(netdev_max_backlog = backlog, "{message}");
        }
    }
}

/// What the accept loops share.
struct Acceptor {
    registry: Registry,
    /// Connections holding a slot, against `max_connections` in force (a reload may lower it
    /// below this count: the live ones stay, new ones are refused until enough have closed).
    live_connections: Arc<AtomicUsize>,
    producer: Producer<Record>,
    metrics: Arc<Metrics>,
    /// The configuration and shared state of the connections accepted now.
    reloader: Reloader,
    tracker: TaskTracker,
    /// The first accepted socket's options are read back once, to catch a platform that does
    /// not inherit or accept them.
    checked_first: AtomicBool,
    /// Each accepted socket's keep-alive phase (its shortened first idle).
    phases: Arc<Phases>,
}

async fn accept_loop(listener: TcpListener, acceptor: Arc<Acceptor>, stop: CancellationToken) {
    let mut trouble: Option<AcceptTrouble> = None;
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = stop.cancelled() => return,
        };
        let error = match accepted {
            Ok((stream, peer)) => {
                if let Some(over) = trouble.take() {
                    over.log_recovery();
                }
                acceptor.admit(stream, peer);
                continue;
            }
            Err(error) => error,
        };
        let kind = AcceptError::of(&error);
        acceptor.metrics.accept_error(kind.as_str());
        if !kind.exhausted() {
            // One connection's trouble (reset before it was accepted): the next may be fine.
            tracing::debug!(error = %error, kind = kind.as_str(), "accept failed");
            continue;
        }
        let wait = trouble
            .get_or_insert_with(|| AcceptTrouble::begin(&error, kind))
            .next_wait();
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = stop.cancelled() => return,
        }
    }
}

/// Why `accept` failed, as counted in `connwarden_accept_errors_total{error}`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum AcceptError {
    /// `EMFILE`: the process's open-file limit.
    Emfile,
    /// `ENFILE`: the system's open-file limit.
    #[cfg_attr(not(unix), allow(dead_code))]
    Enfile,
    /// `ENOBUFS` or `ENOMEM`: kernel memory.
    Memory,
    /// Anything else, such as a peer that reset before it was accepted.
    Other,
}

impl AcceptError {
    fn of(error: &std::io::Error) -> AcceptError {
        #[cfg(unix)]
        match error.raw_os_error() {
            Some(libc::EMFILE) => return AcceptError::Emfile,
            Some(libc::ENFILE) => return AcceptError::Enfile,
            Some(libc::ENOBUFS | libc::ENOMEM) => return AcceptError::Memory,
            _ => {}
        }
        // Winsock's WSAEMFILE and WSAENOBUFS (it has no system-wide ENFILE).
        #[cfg(windows)]
        match error.raw_os_error() {
            Some(10024) => return AcceptError::Emfile,
            Some(10055) => return AcceptError::Memory,
            _ => {}
        }
        if error.kind() == std::io::ErrorKind::OutOfMemory {
            return AcceptError::Memory;
        }
        AcceptError::Other
    }

    fn as_str(self) -> &'static str {
        match self {
            AcceptError::Emfile => "emfile",
            AcceptError::Enfile => "enfile",
            AcceptError::Memory => "nomem",
            AcceptError::Other => "other",
        }
    }

    /// A resource ran out: retrying at once would fail again.
    fn exhausted(self) -> bool {
        self != AcceptError::Other
    }
}

/// A burst of `accept` failures from exhaustion: logged once when it begins and once when
/// `accept` works again, not once per attempt, with the wait growing between attempts.
struct AcceptTrouble {
    since: Instant,
    failures: u64,
    wait: Duration,
}

impl AcceptTrouble {
    fn begin(error: &std::io::Error, kind: AcceptError) -> AcceptTrouble {
        tracing::error!(error = %error, kind = kind.as_str(), "accept is failing: new connections wait in the listen backlog; retrying with backoff (logged again when it works)");
        AcceptTrouble {
            since: Instant::now(),
            failures: 0,
            wait: ACCEPT_BACKOFF_MIN,
        }
    }

    /// Counts one more failure; how long to wait before the next attempt.
    fn next_wait(&mut self) -> Duration {
        self.failures += 1;
        let wait = self.wait;
        self.wait = (self.wait * 2).min(ACCEPT_BACKOFF_MAX);
        wait
    }

    fn log_recovery(self) {
        tracing::warn!(
            failures = self.failures,
            failing_ms = self.since.elapsed().as_millis() as u64,
            "accept works again"
        );
    }
}

impl Acceptor {
    fn admit(&self, stream: TcpStream, peer: SocketAddr) {
        let local = stream.local_addr().unwrap_or(peer);
        let shared = self.reloader.connections();
        let Some(slot) = Slot::take(&self.live_connections, shared.params.max_connections) else {
            let message = "the server is at max_connections; retry later";
            self.refuse(stream, peer, local, ErrorCode::ServerFull, message);
            return;
        };
        let mut options = SocketOptions::from_config(&shared.params);
        let first_idle = match shared.params.keepalive_spread {
            true => self.phases.next_first_idle(options.keepalive.idle),
            false => None,
        };
        if let Some(first) = first_idle {
            options.keepalive.idle = first;
        }
        if let Err(error) = sockopt::apply(SockRef::from(&stream), &options) {
            // Without its options the connection's liveness would not be bounded.
            tracing::error!(peer = %peer, option = error.option, error = %error.source, "cannot set socket option; closing");
            self.registry
                .record_close(refused(peer, local, CloseReason::InternalError));
            return;
        }
        if !self.checked_first.swap(true, Ordering::Relaxed) {
            sockopt::warn_mismatches(
                &sockopt::read_back(SockRef::from(&stream)),
                &options,
                "accepted",
            );
        }
        let per_source = shared.params.max_connections_per_ip;
        let Some(guard) = self.registry.insert_within(peer, local, per_source) else {
            let message = "max_connections_per_ip are live from your address; retry later";
            self.refuse(stream, peer, local, ErrorCode::TooManyConnections, message);
            return;
        };
        #[cfg(unix)]
        guard.set_socket(&stream);
        if first_idle.is_some() {
            guard.info().set_keepalive_first_idle(first_idle);
            self.phases.given();
        }
        let tls = match self.reloader.tls().accept() {
            None => None,
            Some(Ok(session)) => Some(session),
            Some(Err(error)) => {
                tracing::error!(peer = %peer, error = %error, "cannot start a TLS session; closing");
                let mut guard = guard;
                guard.close(CloseReason::InternalError);
                return;
            }
        };
        let producer = self.producer.clone();
        let task = conn::run(stream, guard, shared, producer, tls);
        self.tracker.spawn(WithSlot { task, _slot: slot });
    }

    /// Serves a connection another process handed over. It takes a `max_connections` slot
    /// even past the limit: refusing it would close a live connection. False when it could
    /// not go on (logged; its socket closes).
    #[cfg(target_os = "linux")]
    fn adopt(&self, departed: conn::Departed) -> bool {
        let slot = Slot::force(&self.live_connections);
        let shared = self.reloader.connections();
        // A keep-alive phase not yet put back: this process's restorer puts it back.
        let phased = departed.state.carried.keepalive_first_idle_s != 0;
        match conn::resume(departed, shared, self.producer.clone()) {
            Ok(task) => {
                self.tracker.spawn(WithSlot { task, _slot: slot });
                if phased {
                    self.phases.given();
                }
                true
            }
            Err(error) => {
                tracing::error!(error = %error, "cannot go on with a handed-over connection; it closes");
                false
            }
        }
    }

    /// Tells a peer over a limit why, without waiting (a fresh socket's send buffer always has
    /// room for one line), and records the refusal under the reason of the same name.
    fn refuse(
        &self,
        stream: TcpStream,
        peer: SocketAddr,
        local: SocketAddr,
        code: ErrorCode,
        message: &'static str,
    ) {
        let line = Outbound::Error {
            code,
            message: message.into(),
            id: None,
        }
        .to_line();
        // On a TLS listener the peer expects a handshake, not a line: it sees the close.
        if !self.reloader.tls().enabled() {
            let _ = stream.try_write(&line);
        }
        let reason = match code {
            ErrorCode::TooManyConnections => CloseReason::TooManyConnections,
            _ => CloseReason::ServerFull,
        };
        self.registry.record_close(refused(peer, local, reason));
    }
}

/// One of the `max_connections` places, held by a connection's task until it ends.
struct Slot(Arc<AtomicUsize>);

impl Slot {
    /// A place when fewer than `limit` are taken.
    fn take(taken: &Arc<AtomicUsize>, limit: usize) -> Option<Slot> {
        taken
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < limit).then_some(n + 1)
            })
            .ok()
            .map(|_| Slot(Arc::clone(taken)))
    }
}

impl Slot {
    /// A place whatever the limit (a connection already live, handed over by an upgrade).
    #[cfg(target_os = "linux")]
    fn force(taken: &Arc<AtomicUsize>) -> Slot {
        taken.fetch_add(1, Ordering::AcqRel);
        Slot(Arc::clone(taken))
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A connection's task holding its `max_connections` slot until it ends.
struct WithSlot {
    task: conn::ConnTask,
    _slot: Slot,
}

impl Future for WithSlot {
    type Output = ();

    fn poll(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<()> {
        std::pin::Pin::new(&mut self.task).poll(cx)
    }
}

fn refused(peer: SocketAddr, local: SocketAddr, reason: CloseReason) -> ClosedConn {
    let now = std::time::SystemTime::now();
    ClosedConn {
        id: 0,
        peer,
        local,
        reason,
        started_at: now,
        closed_at: now,
        duration: Duration::ZERO,
        detection_delay: Duration::ZERO,
        bytes_in: 0,
        bytes_out: 0,
        items: 0,
        errors: 0,
        auth_name: None,
    }
}
