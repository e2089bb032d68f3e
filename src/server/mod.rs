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
use std::sync::atomic::{AtomicBool, AtomicUsize};
use std::sync::Arc;
use std::time::Duration;

use socket2::SockRef;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::admin::{self, AdminHandle, Readiness, Token, TokenError};
use crate::config::{Config, ConfigError};
use crate::conn::Live;
use crate::liveness::{Handler, Life, Protocol};
use crate::metrics::Metrics;
use crate::nats;
use crate::phase::Phases;
use crate::queue::{self, Consumer, Monitor, Producer};
use crate::rebalance::Rebalancer;
use crate::record::Record;
use crate::registry::Registry;
use crate::reload::Reloader;
use crate::sink::{self, ReopenHandle, Sink, SinkError};
use crate::sockopt::{self, ListenError, ListenerOptions, SocketOptions};
use crate::tls::{ServerTls, TlsError};
#[cfg(target_os = "linux")]
use crate::upgrade::{Inherited, UpgradeError};

mod accept;
mod handshakes;
mod shutdown;
#[cfg(target_os = "linux")]
mod upgrade;
// Without upgrades, the same interface with nothing to do, so that `run` has no platform branch.
#[cfg(not(target_os = "linux"))]
#[path = "upgrade_off.rs"]
mod upgrade;

use accept::Acceptor;
#[cfg(target_os = "linux")]
pub use upgrade::Upgrader;
use upgrade::Upgrades;

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
    #[error(
        "a server with a handler of its own queues no items: a sink is for the JSON item protocol"
    )]
    /// The builder was given both a [`ServerBuilder::handler`] and a [`ServerBuilder::sink`].
    SinkWithHandler,
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
    protocol: Option<Protocol>,
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

    /// Serves each connection with `handler`, a protocol of your own, instead of the JSON item
    /// protocol: the connections keep every guarantee of the layer ([`crate::liveness`]), and
    /// no queue or sink is used (the item keys, `sink`, `queue`, `overflow`, `max_frame`,
    /// `error_budget`, do not apply). TLS is the handler's to do (`tokio-rustls` over the
    /// [`liveness::Connection`](crate::liveness::Connection)), so `tls_cert` is refused here.
    ///
    /// ```no_run
    /// # async fn example() -> Result<(), Box<dyn std::error::Error>> {
    /// use connwarden::liveness::Connection;
    /// use connwarden::{Config, Server};
    ///
    /// async fn discard(mut conn: Connection) -> std::io::Result<()> {
    ///     tokio::io::copy(&mut conn, &mut tokio::io::sink()).await.map(drop)
    /// }
    ///
    /// let server = Server::builder(Config::default()).handler(discard).build()?;
    /// let listeners = server.bind()?;
    /// server.run(listeners, std::future::pending()).await?;
    /// # Ok(()) }
    /// ```
    pub fn handler(mut self, handler: impl Handler) -> ServerBuilder {
        let life = self.protocol.as_ref().map_or(Life::AnyByte, |p| p.life);
        self.protocol = Some(Protocol {
            handler: Arc::new(handler),
            life,
        });
        self
    }

    /// Which inbound bytes are a sign of life for the [handler](ServerBuilder::handler)'s
    /// connections (every byte, unless said otherwise). Call after `handler`.
    pub fn life(mut self, life: Life) -> ServerBuilder {
        if let Some(protocol) = &mut self.protocol {
            protocol.life = life;
        }
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
        if self.protocol.is_some() && self.sink.is_some() {
            return Err(ServerError::SinkWithHandler);
        }
        if self.protocol.is_some() && self.config.tls_cert.is_some() {
            return Err(ServerError::Config(ConfigError::Unusable {
                key: crate::config::Key::TlsCert,
                reason: "a handler of your own reads and writes the socket: run TLS inside it (tokio-rustls over liveness::Connection)".into(),
            }));
        }
        let token = match &self.config.admin_token_file {
            Some(path) => Some(Token::from_file(path)?),
            None => None,
        };
        let (producer, consumer) = queue::bounded(self.config.queue, self.config.overflow);
        let registry = self.registry.unwrap_or_default();
        let metrics = Arc::new(Metrics::new(&self.config));
        registry.attach_metrics(Arc::clone(&metrics));
        registry.set_closed_history(self.config.closed_history);
        registry.set_flap_threshold(self.config.flap_threshold);
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
        let upgrades = Upgrades::new(self.inherited);
        #[cfg(not(target_os = "linux"))]
        let upgrades = Upgrades::new();
        let rebalancer = Arc::new(Rebalancer::new(registry.clone(), Arc::clone(&metrics)));
        Ok(Server {
            upgrades,
            handed_admin: std::sync::Mutex::new(None),
            config: self.config,
            reloader,
            sink: self.sink,
            protocol: self.protocol,
            registry,
            producer,
            consumer,
            metrics,
            readiness: Arc::new(Readiness::default()),
            rebalancer,
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
    /// A protocol of the embedder's own; `None` serves the JSON item protocol.
    protocol: Option<Protocol>,
    registry: Registry,
    producer: Producer<Record>,
    consumer: Consumer<Record>,
    metrics: Arc<Metrics>,
    readiness: Arc<Readiness>,
    /// Paced drains of this server's connections.
    rebalancer: Arc<Rebalancer>,
    token: Option<Token>,
    on_lifecycle: Option<LifecycleHook>,
    reopen: ReopenHandle,
    /// Upgrades asked for, and the process this one takes over from.
    upgrades: Upgrades,
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
            protocol: None,
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
        self.upgrades.upgrader()
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
            rebalancer: Arc::clone(&self.rebalancer),
        }
    }

    /// Opens a listener on every configured address, with every socket option set before
    /// `listen`; or, for a server that [inherits](ServerBuilder::inherit), takes the old
    /// process's listeners (with their options as they were). Needs a Tokio runtime.
    pub fn bind(&self) -> Result<Vec<TcpListener>, ServerError> {
        if let Some((data, admin)) = self.upgrades.take_listeners()? {
            *self.handed_admin.lock().unwrap_or_else(|e| e.into_inner()) = admin;
            return data
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
        let mut running = self.start(listeners).await?;
        let handed_over = running.serve_until_stopped(shutdown).await;
        Ok(running.stop(handed_over).await)
    }

    /// Starts the background work (admin API, NATS, the sink's drain, upkeep), then accepts on
    /// `listeners` and says the server is ready; a process that takes over adopts the old one's
    /// connections from then on.
    async fn start(self, listeners: Vec<TcpListener>) -> Result<Running, ServerError> {
        let admin_handle = self.admin_handle();
        let handed_admin = (self.handed_admin.lock().unwrap_or_else(|e| e.into_inner())).take();
        let phases = Arc::new(Phases::default());
        let live = Arc::clone(self.reloader.live());
        let parts = (&self.config, &self.metrics, &self.registry);
        let background =
            Background::start(parts, admin_handle, handed_admin, &live, &phases).await?;
        let copies =
            (self.upgrades).copy_listeners(&listeners, background.admin_listener.as_ref())?;
        let monitor = self.consumer.monitor();
        let sink_task = match self.protocol {
            // A protocol of the embedder's own queues nothing.
            Some(_) => None,
            None => {
                let (nats, inherits) = (background.nats.as_ref(), self.upgrades.inherits());
                let sink = open_sink(
                    self.sink,
                    &self.config,
                    nats,
                    &self.metrics,
                    &self.reopen,
                    inherits,
                )
                .await?;
                Some(start_drain(
                    self.consumer,
                    sink,
                    &self.config,
                    &self.metrics,
                ))
            }
        };
        report_start(
            &self.config,
            &SocketOptions::from_config(&self.config),
            &listeners,
        );
        let stop_accepting = CancellationToken::new();
        let tracker = TaskTracker::new();
        if self.protocol.is_none() {
            start_parking(&live, &self.metrics, &tracker);
        }
        let acceptor = Arc::new(Acceptor {
            phases,
            registry: self.registry.clone(),
            live_connections: Arc::new(AtomicUsize::new(0)),
            producer: self.producer,
            protocol: self.protocol,
            metrics: Arc::clone(&self.metrics),
            reloader: self.reloader,
            tracker: tracker.clone(),
            checked_first: AtomicBool::new(false),
            stop_accepting: stop_accepting.clone(),
            handshakes: self
                .config
                .max_handshakes
                .map(|at_once| Arc::new(handshakes::Handshakes::new(at_once))),
        });
        let accept_tasks = accept::start(listeners, Arc::clone(&acceptor), &stop_accepting);
        self.readiness.set_ready();
        let mut running = Running {
            adoption: None,
            upgrades: self.upgrades,
            copies,
            background,
            accept_tasks,
            stop_accepting,
            tracker,
            live,
            registry: self.registry,
            readiness: self.readiness,
            rebalancer: self.rebalancer,
            on_lifecycle: self.on_lifecycle,
            metrics: self.metrics,
            sink_task,
            monitor,
        };
        running.tell(Lifecycle::Ready);
        running.adoption = (running.upgrades).adopt(acceptor, running.stop_accepting.clone());
        Ok(running)
    }
}

/// Lets idle JSON connections park outside their task (`park_after`; Linux). A failure to
/// start leaves every connection a task.
fn start_parking(live: &Arc<Live>, metrics: &Arc<Metrics>, tracker: &TaskTracker) {
    #[cfg(target_os = "linux")]
    match crate::conn::Parking::start(live, metrics, tracker) {
        Ok(parking) => live.start_parking(parking),
        Err(error) => {
            tracing::warn!(error = %error, "cannot start parking idle connections; every connection stays a task")
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = (live, metrics, tracker);
}

/// A server between its start and its end: what serving and stopping need.
struct Running {
    background: Background,
    upgrades: Upgrades,
    copies: upgrade::ListenerCopies,
    /// In a process that took over: the adoption of the old one's connections.
    adoption: Option<JoinHandle<()>>,
    accept_tasks: Vec<JoinHandle<()>>,
    stop_accepting: CancellationToken,
    /// Every connection's task.
    tracker: TaskTracker,
    live: Arc<Live>,
    registry: Registry,
    readiness: Arc<Readiness>,
    rebalancer: Arc<Rebalancer>,
    on_lifecycle: Option<LifecycleHook>,
    metrics: Arc<Metrics>,
    sink_task: Option<JoinHandle<sink::DrainReport>>,
    monitor: Monitor<Record>,
}

impl Running {
    fn tell(&self, moment: Lifecycle) {
        if let Some(hook) = &self.on_lifecycle {
            hook(moment);
        }
    }

    /// Serves until `shutdown` resolves (then `None`) or a new process took over (then the
    /// count of connections handed over to it).
    async fn serve_until_stopped(&mut self, shutdown: impl Future<Output = ()>) -> Option<u64> {
        let upgraded =
            (self.upgrades).serve_until_upgraded(shutdown, &self.copies, &self.live, &self.metrics);
        let successor = upgraded.await?;
        self.tell(Lifecycle::HandedOver(successor.pid()));
        self.readiness.set_draining();
        self.background.stop_admin.cancel();
        self.stop_accepting.cancel();
        for task in self.accept_tasks.drain(..) {
            let _ = task.await;
        }
        Some(upgrade::hand_over(successor, &self.live, &self.registry).await)
    }

    /// The shutdown stages ([`shutdown::Stopping`]), then the background work's end.
    async fn stop(self, handed_over: Option<u64>) -> ShutdownReport {
        if let Some(adoption) = &self.adoption {
            adoption.abort();
        }
        self.readiness.set_draining();
        // The shutdown tells every connection itself.
        self.rebalancer.cancel();
        // After an upgrade the service goes on in the new process: the old one's end is not the
        // service's (a STOPPING=1 from it would stop the unit under NotifyAccess=all).
        if handed_over.is_none() {
            self.tell(Lifecycle::Stopping);
        }
        let stopping = shutdown::Stopping {
            stop_accepting: self.stop_accepting,
            accept_tasks: self.accept_tasks,
            live: self.live,
            registry: self.registry,
            sink_task: self.sink_task,
            tracker: self.tracker,
            monitor: self.monitor,
        };
        let report = stopping.run(handed_over).await;
        self.background.join().await;
        report
    }
}

/// The tasks that run beside the connections for the whole of `run`, ended and joined last.
struct Background {
    /// Ends the admin API, the cluster-wide registry and the upkeep tasks.
    stop: CancellationToken,
    /// Ends them when `run` ends on any path, an error included.
    _stop_on_exit: tokio_util::sync::DropGuard,
    /// Ends the admin API alone, as soon as a new process took over its listener.
    stop_admin: CancellationToken,
    admin: Option<JoinHandle<()>>,
    /// A copy of the admin listener, for an upgrade to hand over.
    admin_listener: Option<socket2::Socket>,
    cluster_registry: Option<JoinHandle<()>>,
    /// The NATS connection, first: the JetStream sink publishes through it, and the
    /// cluster-wide registry answers on it.
    nats: Option<sink::NatsClient>,
    /// The metrics' upkeep, the memory-pressure log and the keep-alive phases' restorer.
    upkeep: [JoinHandle<()>; 3],
}

impl Background {
    /// Starts the admin API, connects to NATS (until it answers, `/readyz` says "starting")
    /// and serves the cluster-wide registry on it, and starts the upkeep.
    async fn start(
        (config, metrics, registry): (&Config, &Arc<Metrics>, &Registry),
        admin_handle: AdminHandle,
        handed_admin: Option<std::net::TcpListener>,
        live: &Arc<Live>,
        phases: &Arc<Phases>,
    ) -> Result<Background, ServerError> {
        let stop = CancellationToken::new();
        let _stop_on_exit = stop.clone().drop_guard();
        let stop_admin = stop.child_token();
        let admin = match config.admin {
            Some(addr) => {
                Some(start_admin(addr, handed_admin, admin_handle, stop_admin.clone()).await?)
            }
            None => None,
        };
        let nats = match config.nats.enabled() {
            true => {
                let name = format!("connwarden {}", config.gateway_name());
                Some(nats::connect_patiently(&config.nats, &name, Arc::clone(metrics)).await?)
            }
            false => None,
        };
        let cluster_registry = nats.clone().map(|client| {
            let (config, registry, stop) = (config.clone(), registry.clone(), stop.clone());
            tokio::spawn(async move {
                if let Err(error) = nats::registry::serve(client, config, registry, stop).await {
                    tracing::error!(error = %error, "the cluster-wide registry is not available");
                }
            })
        });
        let (admin, admin_listener) =
            admin.map_or((None, None), |a| (Some(a.task), Some(a.listener)));
        Ok(Background {
            upkeep: Background::upkeep(metrics, registry, live, phases, &stop),
            stop,
            _stop_on_exit,
            stop_admin,
            admin,
            admin_listener,
            cluster_registry,
            nats,
        })
    }
    /// Starts the metrics' upkeep (with the probe-storm samples), the log of memory-pressure
    /// reliefs and the restorer of keep-alive phases, until `stop`.
    fn upkeep(
        metrics: &Arc<Metrics>,
        registry: &Registry,
        live: &Arc<Live>,
        phases: &Arc<Phases>,
        stop: &CancellationToken,
    ) -> [JoinHandle<()>; 3] {
        let keepalive = {
            let live = Arc::clone(live);
            move || live.config().keepalive
        };
        [
            tokio::spawn(upkeep(Arc::clone(metrics), registry.clone(), stop.clone())),
            tokio::spawn(crate::pressure::log_reliefs(Arc::clone(live), stop.clone())),
            tokio::spawn(crate::phase::restore(
                Arc::clone(phases),
                registry.clone(),
                keepalive,
                stop.clone(),
            )),
        ]
    }

    /// Ends the tasks and waits for them; the NATS connection flushes what it holds.
    async fn join(self) {
        self.stop.cancel();
        if let Some(task) = self.admin {
            let _ = task.await;
        }
        if let Some(task) = self.cluster_registry {
            let _ = tokio::time::timeout(Duration::from_secs(2), task).await;
        }
        if let Some(client) = self.nats {
            let _ = tokio::time::timeout(Duration::from_secs(2), client.flush()).await;
        }
        for task in self.upkeep {
            let _ = task.await;
        }
    }
}

/// The sink of the JSON item protocol: the one the builder was given, or the one the
/// configuration names.
async fn open_sink(
    given: Option<Box<dyn Sink>>,
    config: &Config,
    nats: Option<&sink::NatsClient>,
    metrics: &Arc<Metrics>,
    reopen: &ReopenHandle,
    beside_another_writer: bool,
) -> Result<Box<dyn Sink>, ServerError> {
    match given {
        Some(sink) => Ok(sink),
        None => Ok(sink::open(config, nats, metrics, reopen, beside_another_writer).await?),
    }
}

/// Starts the drain of the queue into `sink`.
fn start_drain(
    consumer: Consumer<Record>,
    sink: Box<dyn Sink>,
    config: &Config,
    metrics: &Arc<Metrics>,
) -> JoinHandle<sink::DrainReport> {
    let (fsync, metrics) = (config.fsync, Arc::clone(metrics));
    tokio::spawn(async move { sink::drain(consumer, sink, fsync, &metrics).await })
}

/// The admin API's task, and a copy of its listener (for an upgrade to hand over).
struct AdminServing {
    task: JoinHandle<()>,
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
