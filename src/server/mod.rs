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
use crate::record::Record;
use crate::registry::Registry;
use crate::reload::Reloader;
use crate::sink::{self, ReopenHandle, Sink, SinkError};
use crate::sockopt::{self, ListenError, ListenerOptions, SocketOptions};
use crate::tls::{ServerTls, TlsError};
#[cfg(target_os = "linux")]
use crate::upgrade::{Inherited, UpgradeError};

mod accept;
mod shutdown;

use accept::Acceptor;
#[cfg(target_os = "linux")]
mod upgrade;
#[cfg(target_os = "linux")]
pub use upgrade::Upgrader;

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
    /// [`liveness::Connection`]), so `tls_cert` is refused here.
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
                key: "tls_cert",
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
            protocol: self.protocol,
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
    /// A protocol of the embedder's own; `None` serves the JSON item protocol.
    protocol: Option<Protocol>,
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
            protocol,
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
        // At an upgrade, the old process goes on appending to a file sink for a while.
        #[cfg(target_os = "linux")]
        let beside_another_writer = inherited.is_some();
        #[cfg(not(target_os = "linux"))]
        let beside_another_writer = false;
        let sink = match protocol {
            // A protocol of the embedder's own queues nothing.
            Some(_) => None,
            None => Some(
                open_sink(
                    sink,
                    &config,
                    nats.as_ref(),
                    &metrics,
                    &reopen,
                    beside_another_writer,
                )
                .await?,
            ),
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
        let sink_task = sink.map(|sink| {
            tokio::spawn(async move { sink::drain(consumer, sink, fsync, &drain_metrics).await })
        });
        let live = Arc::clone(reloader.live());
        let phases = Arc::new(Phases::default());
        let background = Background {
            upkeep: Background::upkeep(&metrics, &registry, &live, &phases, &stop_background),
            admin: admin_task,
            cluster_registry: registry_task,
            nats,
            stop: stop_background,
        };
        let stop_accepting = CancellationToken::new();
        let tracker = TaskTracker::new();
        let acceptor = Arc::new(Acceptor {
            phases,
            registry: registry.clone(),
            live_connections: Arc::new(AtomicUsize::new(0)),
            producer,
            protocol,
            metrics: Arc::clone(&metrics),
            reloader,
            tracker: tracker.clone(),
            checked_first: AtomicBool::new(false),
        });
        #[cfg(target_os = "linux")]
        let adopting = Arc::clone(&acceptor);
        #[cfg_attr(not(target_os = "linux"), allow(unused_mut))]
        let mut accept_tasks = accept::start(listeners, acceptor, &stop_accepting);
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
        let stopping = shutdown::Stopping {
            stop_accepting,
            accept_tasks,
            live: Arc::clone(&live),
            registry: registry.clone(),
            sink_task,
            tracker,
            monitor,
        };
        let report = stopping.run(handed_over).await;
        background.join().await;
        Ok(report)
    }
}

/// The tasks that run beside the connections for the whole of `run`, ended and joined last.
struct Background {
    /// Ends the admin API, the cluster-wide registry and the upkeep tasks.
    stop: CancellationToken,
    admin: Option<JoinHandle<()>>,
    cluster_registry: Option<JoinHandle<()>>,
    nats: Option<sink::NatsClient>,
    /// The metrics' upkeep, the memory-pressure log and the keep-alive phases' restorer.
    upkeep: [JoinHandle<()>; 3],
}

impl Background {
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
