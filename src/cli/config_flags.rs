//! The configuration flags shared by `serve` and `doctor`: one spelling per key, layered over
//! the environment and the `--config` file by [`connwarden::config::Config::load`].

use std::path::PathBuf;

use clap::Args;
use connwarden::config::{Config, ConfigError, Settings};

/// Exit status for a configuration error, so scripts can tell it from a runtime failure.
pub const EXIT_CONFIG: u8 = 2;

/// Help text on the layering, for the commands that take [`ConfigFlags`].
pub const LAYERS_HELP: &str = "Every flag can also be set as CONNWARDEN_<KEY> (for example CONNWARDEN_KEEPALIVE_IDLE=20s) or in the --config file (keepalive_idle = \"20s\"). Durations: 30s, 2m, 1h, 500ms.";

/// The configuration flags `serve` and `doctor` share. Each may also be set as `CONNWARDEN_<KEY>` in the environment or as
/// `<key>` in the `--config` file; flags win over the environment, the environment over the file.
#[derive(Debug, Args)]
pub struct ConfigFlags {
    /// TOML configuration file.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Address to listen on (repeatable) [default: 0.0.0.0:7000].
    #[arg(long, value_name = "ADDR")]
    listen: Vec<String>,
    /// Where items go: stdout, file:PATH or jetstream [default: stdout].
    #[arg(long, value_name = "SINK")]
    sink: Option<String>,
    /// Set SO_REUSEPORT so several processes can share the port.
    #[arg(long)]
    reuse_port: bool,
    /// Accept queue length for listen(2) [default: 1024].
    #[arg(long, value_name = "N")]
    backlog: Option<String>,
    /// SO_RCVBUF in bytes, or auto [default: auto].
    #[arg(long, value_name = "SIZE")]
    recv_buffer: Option<String>,
    /// SO_SNDBUF in bytes, or auto [default: auto].
    #[arg(long, value_name = "SIZE")]
    send_buffer: Option<String>,
    /// The dead-peer bound (whole seconds): chooses idle (half) and interval x count (the rest, up to 30 probes at least 1 s apart) [default: off].
    #[arg(long, value_name = "DURATION|off")]
    keepalive_bound: Option<String>,
    /// TCP_KEEPIDLE: silence before the first keep-alive probe [default: 30s].
    #[arg(long, value_name = "DURATION")]
    keepalive_idle: Option<String>,
    /// TCP_KEEPINTVL: time between probes [default: 1s].
    #[arg(long, value_name = "DURATION")]
    keepalive_interval: Option<String>,
    /// TCP_KEEPCNT: unanswered probes before the peer is dead [default: 30].
    #[arg(long, value_name = "N")]
    keepalive_count: Option<String>,
    /// TCP_USER_TIMEOUT: auto (idle + interval x count), a duration, or off [default: auto].
    #[arg(long, value_name = "auto|off|DURATION")]
    user_timeout: Option<String>,
    /// Spread the first keep-alive probe of accepted connections over the idle period, so that connections accepted together do not probe together [default: true].
    #[arg(long, value_name = "BOOL")]
    keepalive_spread: Option<String>,
    /// TCP_NODELAY [default: true].
    #[arg(long, value_name = "BOOL")]
    nodelay: Option<String>,
    /// Application heartbeat: negotiated (clients that sent hello), required, or off [default: negotiated].
    #[arg(long, value_name = "MODE")]
    heartbeat: Option<String>,
    /// Inbound silence after which the server sends ping [default: 15s].
    #[arg(long, value_name = "DURATION")]
    heartbeat_interval: Option<String>,
    /// Silent intervals after which the connection is closed [default: 3].
    #[arg(long, value_name = "N")]
    heartbeat_misses: Option<String>,
    /// Close connections silent this long, or off [default: off].
    #[arg(long, value_name = "DURATION")]
    idle_timeout: Option<String>,
    /// Close a peer that takes no pending output for this long [default: 30s].
    #[arg(long, value_name = "DURATION")]
    write_timeout: Option<String>,
    /// Ask connections this old to reconnect, or off [default: off].
    #[arg(long, value_name = "DURATION")]
    max_age: Option<String>,
    /// Time a connection past max-age has before it is closed [default: 30s].
    #[arg(long, value_name = "DURATION")]
    max_age_grace: Option<String>,
    /// Live connections; beyond, new peers get server_full [default: 10000].
    #[arg(long, value_name = "N")]
    max_connections: Option<String>,
    /// Largest JSON object in bytes [default: 64KiB].
    #[arg(long, value_name = "SIZE")]
    max_frame: Option<String>,
    /// Live connections from one IPv4 address or IPv6 /64, or off; beyond it too_many_connections [default: off].
    #[arg(long, value_name = "N|off")]
    max_connections_per_ip: Option<String>,
    /// An object that has begun must end within this, or off [default: 30s].
    #[arg(long, value_name = "DURATION|off")]
    frame_timeout: Option<String>,
    /// Bytes of partial objects held across all connections, or off; beyond it the largest holders close [default: 256MiB].
    #[arg(long, value_name = "SIZE|off")]
    max_buffered: Option<String>,
    /// Bad items a connection may send before it is closed [default: 100].
    #[arg(long, value_name = "N")]
    error_budget: Option<String>,
    /// Replies waiting for one connection before its reading pauses [default: 1024].
    #[arg(long, value_name = "N")]
    max_pending_replies: Option<String>,
    /// Items between connections and the sink [default: 65536].
    #[arg(long, value_name = "N")]
    queue: Option<String>,
    /// Full queue: backpressure, drop-newest or drop-oldest [default: backpressure].
    #[arg(long, value_name = "POLICY")]
    overflow: Option<String>,
    /// When a file sink's acks wait for fsync: batch (group commit), always or never [default: batch].
    #[arg(long, value_name = "MODE")]
    fsync: Option<String>,
    /// Time from SIGINT/SIGTERM to exit [default: 10s].
    #[arg(long, value_name = "DURATION")]
    shutdown_grace: Option<String>,
    /// At an upgrade (SIGUSR2), the time the new process has to report ready [default: 30s].
    #[arg(long, value_name = "DURATION")]
    upgrade_timeout: Option<String>,
    /// At an upgrade, the window TLS clients are told to reconnect within [default: 10s].
    #[arg(long, value_name = "DURATION")]
    goaway_window: Option<String>,
    /// Log format: text or json [default: text].
    #[arg(long, value_name = "FORMAT")]
    log_format: Option<String>,
    /// Least severe level logged: error, warn, info, debug, trace or off; RUST_LOG wins when set [default: info].
    #[arg(long, value_name = "LEVEL")]
    log_level: Option<String>,
    /// Address of the admin API and /metrics, or off [default: 127.0.0.1:9464].
    #[arg(long, value_name = "ADDR|off")]
    admin: Option<String>,
    /// File holding the admin API's bearer token (never the token itself on the command line) [default: off].
    #[arg(long, value_name = "PATH")]
    admin_token_file: Option<String>,
    /// PEM certificate chain of the data listener: with --tls-key, clients must speak TLS [default: off].
    #[arg(long, value_name = "FILE|off")]
    tls_cert: Option<String>,
    /// PEM private key of --tls-cert [default: off].
    #[arg(long, value_name = "FILE|off")]
    tls_key: Option<String>,
    /// PEM CA file: clients must present a certificate it signed (mutual TLS) [default: off].
    #[arg(long, value_name = "FILE|off")]
    tls_client_ca: Option<String>,
    /// File of client tokens, `token` or `name:token` per line, read again on SIGHUP [default: off].
    #[arg(long, value_name = "FILE|off")]
    auth_tokens: Option<String>,
    /// required: authenticate (client certificate or token in hello) before the first item [default: optional].
    #[arg(long, value_name = "required|optional")]
    auth: Option<String>,
    /// With --auth required, time from accept to a valid hello [default: 10s].
    #[arg(long, value_name = "DURATION")]
    auth_timeout: Option<String>,
    /// A TLS handshake must finish within this from accept [default: 10s].
    #[arg(long, value_name = "DURATION")]
    handshake_timeout: Option<String>,
    /// Rotate a file: sink at the first batch after it reaches this size, or off [default: off].
    #[arg(long, value_name = "SIZE|off")]
    sink_rotate_size: Option<String>,
    /// Rotate a file: sink at the first batch after it is this old, or off [default: off].
    #[arg(long, value_name = "DURATION|off")]
    sink_rotate_interval: Option<String>,
    /// Rotated files kept (the oldest beyond it deleted), or off to keep all [default: off].
    #[arg(long, value_name = "N|off")]
    sink_keep: Option<String>,
    /// Closed connections kept for GET /closed [default: 10000].
    #[arg(long, value_name = "N")]
    closed_history: Option<String>,
    /// This gateway's name in NATS subjects and the cluster-wide registry [default: auto: host-port].
    #[arg(long, value_name = "NAME")]
    gateway_name: Option<String>,
    /// NATS server (repeatable, or comma-separated): for --sink jetstream and the cluster-wide registry.
    #[arg(long, value_name = "URL")]
    nats_url: Vec<String>,
    /// JetStream stream of the items, created if missing [default: CONNWARDEN].
    #[arg(long, value_name = "NAME")]
    nats_stream: Option<String>,
    /// Subject of each record; {gateway} becomes the gateway name [default: connwarden.items.{gateway}].
    #[arg(long, value_name = "SUBJECT")]
    nats_subject: Option<String>,
    /// Replicas of a stream connwarden creates [default: 1].
    #[arg(long, value_name = "N")]
    nats_replicas: Option<String>,
    /// How long JetStream remembers message ids: a resend within it is stored once [default: 2m].
    #[arg(long, value_name = "DURATION")]
    nats_duplicate_window: Option<String>,
    /// Oldest message a created stream keeps, or off [default: 7d].
    #[arg(long, value_name = "DURATION")]
    nats_max_age: Option<String>,
    /// Largest size of a created stream, or off [default: off].
    #[arg(long, value_name = "SIZE")]
    nats_max_bytes: Option<String>,
    /// Records held not yet stored by JetStream, at most [default: 4096].
    #[arg(long, value_name = "N")]
    nats_window: Option<String>,
    /// Longest silence from JetStream while an answer is due, before the batch is published again [default: 5s].
    #[arg(long, value_name = "DURATION")]
    nats_publish_timeout: Option<String>,
    /// NATS credentials file [default: off].
    #[arg(long, value_name = "PATH")]
    nats_creds: Option<String>,
    /// File holding a NATS token [default: off].
    #[arg(long, value_name = "PATH")]
    nats_token_file: Option<String>,
    /// NATS user, with --nats-password-file [default: off].
    #[arg(long, value_name = "USER")]
    nats_user: Option<String>,
    /// File holding the NATS user's password [default: off].
    #[arg(long, value_name = "PATH")]
    nats_password_file: Option<String>,
    /// CA certificate for TLS to NATS [default: off].
    #[arg(long, value_name = "PATH")]
    nats_tls_ca: Option<String>,
    /// Client certificate for TLS to NATS [default: off].
    #[arg(long, value_name = "PATH")]
    nats_tls_cert: Option<String>,
    /// Key of --nats-tls-cert [default: off].
    #[arg(long, value_name = "PATH")]
    nats_tls_key: Option<String>,
    /// Subject prefix of the cluster-wide registry [default: connwarden.registry].
    #[arg(long, value_name = "PREFIX")]
    nats_registry: Option<String>,
}

impl ConfigFlags {
    /// The flags that were given, as the top configuration layer.
    pub fn settings(&self) -> Result<Settings, connwarden::config::ConfigError> {
        let mut settings = Settings::default();
        for addr in &self.listen {
            settings.set_flag("listen", addr.as_str())?;
        }
        for url in &self.nats_url {
            settings.set_flag("nats_url", url.as_str())?;
        }
        if self.reuse_port {
            settings.set_flag("reuse_port", "true")?;
        }
        let valued = [
            ("sink", &self.sink),
            ("backlog", &self.backlog),
            ("recv_buffer", &self.recv_buffer),
            ("send_buffer", &self.send_buffer),
            ("keepalive_bound", &self.keepalive_bound),
            ("keepalive_idle", &self.keepalive_idle),
            ("keepalive_interval", &self.keepalive_interval),
            ("keepalive_count", &self.keepalive_count),
            ("user_timeout", &self.user_timeout),
            ("keepalive_spread", &self.keepalive_spread),
            ("nodelay", &self.nodelay),
            ("heartbeat", &self.heartbeat),
            ("heartbeat_interval", &self.heartbeat_interval),
            ("heartbeat_misses", &self.heartbeat_misses),
            ("idle_timeout", &self.idle_timeout),
            ("write_timeout", &self.write_timeout),
            ("max_age", &self.max_age),
            ("max_age_grace", &self.max_age_grace),
            ("max_connections", &self.max_connections),
            ("max_frame", &self.max_frame),
            ("max_connections_per_ip", &self.max_connections_per_ip),
            ("frame_timeout", &self.frame_timeout),
            ("max_buffered", &self.max_buffered),
            ("error_budget", &self.error_budget),
            ("max_pending_replies", &self.max_pending_replies),
            ("queue", &self.queue),
            ("overflow", &self.overflow),
            ("fsync", &self.fsync),
            ("shutdown_grace", &self.shutdown_grace),
            ("upgrade_timeout", &self.upgrade_timeout),
            ("goaway_window", &self.goaway_window),
            ("log_format", &self.log_format),
            ("log_level", &self.log_level),
            ("admin", &self.admin),
            ("admin_token_file", &self.admin_token_file),
            ("tls_cert", &self.tls_cert),
            ("tls_key", &self.tls_key),
            ("tls_client_ca", &self.tls_client_ca),
            ("auth_tokens", &self.auth_tokens),
            ("auth", &self.auth),
            ("auth_timeout", &self.auth_timeout),
            ("handshake_timeout", &self.handshake_timeout),
            ("sink_rotate_size", &self.sink_rotate_size),
            ("sink_rotate_interval", &self.sink_rotate_interval),
            ("sink_keep", &self.sink_keep),
            ("closed_history", &self.closed_history),
            ("gateway_name", &self.gateway_name),
            ("nats_stream", &self.nats_stream),
            ("nats_subject", &self.nats_subject),
            ("nats_replicas", &self.nats_replicas),
            ("nats_duplicate_window", &self.nats_duplicate_window),
            ("nats_max_age", &self.nats_max_age),
            ("nats_max_bytes", &self.nats_max_bytes),
            ("nats_window", &self.nats_window),
            ("nats_publish_timeout", &self.nats_publish_timeout),
            ("nats_creds", &self.nats_creds),
            ("nats_token_file", &self.nats_token_file),
            ("nats_user", &self.nats_user),
            ("nats_password_file", &self.nats_password_file),
            ("nats_tls_ca", &self.nats_tls_ca),
            ("nats_tls_cert", &self.nats_tls_cert),
            ("nats_tls_key", &self.nats_tls_key),
            ("nats_registry", &self.nats_registry),
        ];
        for (key, value) in valued {
            if let Some(value) = value {
                settings.set_flag(key, value.as_str())?;
            }
        }
        Ok(settings)
    }
}

impl ConfigFlags {
    /// The configuration: defaults < `--config` file < environment < these flags.
    pub fn load(&self) -> Result<Config, ConfigError> {
        Config::load(self.config.as_deref(), self.settings()?)
    }
}
