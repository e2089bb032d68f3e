//! One validated [`Config`], built from layers: embedded defaults < TOML file < `CONNWARDEN_*`
//! environment variables < command-line flags.
//!
//! Every key has one spelling in three forms: `keepalive_idle` in the file, `CONNWARDEN_KEEPALIVE_IDLE`
//! in the environment, `--keepalive-idle` on the command line. Values travel as text through the
//! layers and are parsed once, here, so that an error names the key, the value and where it came
//! from, before anything listens. Durations are written `30s`, `2m`, `1h`, `500ms`.
//!
//! # Defaults
//!
//! The defaults are production values; this table is the one place that documents them
//! (`connwarden serve --print-config` prints the effective values). Which keys a reload
//! (`SIGHUP`) changes while the server runs, and for which connections, is said in
//! [`crate::reload`].
//!
//! | key | default | meaning |
//! |---|---|---|
//! | `listen` | `["0.0.0.0:7000"]` | addresses to listen on (repeatable flag) |
//! | `reuse_port` | `false` | `SO_REUSEPORT`, so several processes can share one port |
//! | `backlog` | `1024` | accept queue length passed to `listen(2)` (the kernel caps it at `somaxconn`) |
//! | `recv_buffer`, `send_buffer` | `auto` | `SO_RCVBUF` / `SO_SNDBUF` in bytes (`64KiB`); `auto` keeps kernel autotuning |
//! | `keepalive_bound` | `off` | the dead-peer bound itself (whole seconds, 2 s or more): connwarden chooses idle = half the bound and the rest in up to 30 probes at least 1 s apart (`60s`: 30 s + 1 s × 30); then the three keys below may be left out, and if set must agree |
//! | `keepalive_idle` | `30s` | `TCP_KEEPIDLE`: silence before the first probe, under common NAT timeouts |
//! | `keepalive_interval` | `1s` | `TCP_KEEPINTVL`: time between probes; a lost probe is not retransmitted, so many short retries (30 × 1 s) survive loss that a few long ones (3 × 10 s) do not, for the same bound |
//! | `keepalive_count` | `30` | `TCP_KEEPCNT`: unanswered probes before the kernel gives up |
//! | `user_timeout` | `auto` | `TCP_USER_TIMEOUT`: `auto` = idle + interval × count, a duration, or `off` |
//! | `keepalive_spread` | `true` | each accepted connection's first keep-alive idle shortened by a phase spread evenly over the idle period, so that connections accepted together do not probe together; then the idle is put back (never later than `keepalive_idle`) |
//! | `nodelay` | `true` | `TCP_NODELAY`: acks and pings leave at once |
//! | `heartbeat` | `negotiated` | `negotiated` (clients that sent `hello`), `required` (every client) or `off` |
//! | `heartbeat_interval` | `15s` | inbound silence after which the server sends `ping` (a connection's first ping up to 90 % sooner, spread over connections so that those accepted together do not ping together; the close after `heartbeat_misses` intervals never comes sooner) |
//! | `heartbeat_misses` | `3` | silent intervals after which the connection is closed (1 to 1000) |
//! | `idle_timeout` | `off` | close a connection with no inbound byte for this long |
//! | `write_timeout` | `30s` | close a peer that accepts no byte of pending output for this long |
//! | `max_age` | `off` | send `max_age` to a connection this old, then close it after `max_age_grace` |
//! | `max_age_grace` | `30s` | time a connection past `max_age` has to finish |
//! | `max_connections` | `10000` | live connections; beyond it a new peer gets `server_full` |
//! | `max_connections_per_ip` | `off` | live connections from one IPv4 address or one IPv6 /64; beyond it a new peer from there gets `too_many_connections` (off by default: fleets behind one NAT address share it) |
//! | `frame_timeout` | `30s` | an object that has begun must end within this, or the connection closes (`frame_timeout`): a peer sending a byte at a time cannot hold it; or `off` |
//! | `max_buffered` | `256MiB` | bytes of partial objects held across all connections; beyond it the connections holding the most are closed (`memory_pressure`) until it fits; at least `max_frame`, or `off` |
//! | `max_frame` | `64KiB` | largest JSON object; a larger one closes the connection (`frame_too_large`) |
//! | `error_budget` | `100` | bad items a connection may send before it is closed (`protocol_error`) |
//! | `max_pending_replies` | `1024` | acks and errors waiting for one connection; when full, its reading pauses |
//! | `queue` | `65536` | items between the connections and the sink |
//! | `overflow` | `backpressure` | full queue: `backpressure`, `drop-newest` or `drop-oldest` |
//! | `sink` | `stdout` | `stdout` or `file:PATH` (NDJSON, appended) |
//! | `fsync` | `batch` | when a `file:` sink's acks wait for `fsync`: `batch` (group commit: one `fsync` covers every batch written while the previous one ran; writing goes on meanwhile), `always` (each batch is synced before the next is written) or `never` (ack once the kernel has the bytes; synced at shutdown) |
//! | `sink_rotate_size` | `off` | a `file:` sink is rotated at the first batch after it reaches this size: renamed to `PATH.<UTC time>`, a new `PATH` opened |
//! | `sink_rotate_interval` | `off` | … or at the first batch this long after it was opened |
//! | `sink_keep` | `off` | rotated files kept (the oldest beyond it are deleted), or `off` to keep them all |
//! | `shutdown_grace` | `10s` | time from SIGINT/SIGTERM to exit, queue drain included |
//! | `upgrade_timeout` | `30s` | at an upgrade (`SIGUSR2`), how long the new process has to take the listeners and report ready; past it, the old one goes on serving |
//! | `goaway_window` | `10s` | at an upgrade, the window in which connections that cannot move (TLS) are asked to reconnect, each client at a random moment inside it |
//! | `log_format` | `text` | `text` or `json` |
//! | `log_level` | `info` | least severe level logged: `error`, `warn`, `info`, `debug`, `trace` or `off` (`RUST_LOG`, when set, wins with its own directives) |
//! | `admin` | `127.0.0.1:9464` | address of the admin API and `/metrics` (never a data port), or `off` (the default without the `admin` feature) |
//! | `admin_token_file` | `off` | file holding the admin API's bearer token; without it the API is open to whoever reaches its address |
//! | `tls_cert` | `off` | PEM certificate chain of the data listener: with `tls_key`, clients must speak TLS (1.2 or 1.3). The files are read again at every reload; their paths need a restart |
//! | `tls_key` | `off` | PEM private key of `tls_cert` |
//! | `tls_client_ca` | `off` | PEM file of the CA whose certificates clients must present (mutual TLS); the subject of each client's certificate is its authenticated name |
//! | `auth_tokens` | `off` | file of client tokens, one per line, `token` or `name:token`; a `hello` carrying one authenticates its connection under that name. Read again at every reload |
//! | `auth` | `optional` | `required`: a connection must authenticate (client certificate or token) before its first item and within `auth_timeout`, or is closed (`unauthorized`); `optional`: names are recorded when given |
//! | `auth_timeout` | `10s` | with `auth = "required"`, time from accept to a valid `hello` |
//! | `handshake_timeout` | `10s` | a TLS handshake must finish within this from accept, or the connection closes (`handshake_timeout`) |
//! | `closed_history` | `10000` | closed connections kept for `GET /closed` (0 keeps none) |
//! | `gateway_name` | `auto` | this gateway's name in NATS subjects and the cluster-wide registry; `auto` is the host name and the first listen port (`host-7000`) |
//! | `nats_url` | none | NATS servers (repeatable, or comma-separated): needed by `sink = "jetstream"`, and enough on its own for the cluster-wide registry |
//! | `nats_stream` | `CONNWARDEN` | JetStream stream of the items, created if missing with the settings below |
//! | `nats_subject` | `connwarden.items.{gateway}` | subject of each record; `{gateway}` is replaced by `gateway_name` |
//! | `nats_replicas` | `1` | replicas of a stream created by connwarden (3 in a 3-node cluster) |
//! | `nats_duplicate_window` | `2m` | how long JetStream remembers message ids: a resend within it is stored once |
//! | `nats_max_age` | `7d` | oldest message a created stream keeps, or `off` |
//! | `nats_max_bytes` | `off` | largest size of a created stream; when full, publishes are refused and retried (nothing is evicted unread) |
//! | `nats_window` | `4096` | records the JetStream sink holds not yet stored, at most (half of it is the flow asked of the server); when full, the sink waits |
//! | `nats_publish_timeout` | `5s` | longest silence from JetStream while an answer is due; then the batch is published again |
//! | `nats_creds` | `off` | NATS credentials file (JWT and nkey seed) |
//! | `nats_token_file` | `off` | file holding a NATS token |
//! | `nats_user`, `nats_password_file` | `off` | NATS user and the file holding its password |
//! | `nats_tls_ca` | `off` | CA certificate for TLS to NATS (TLS is also used for `tls://` URLs) |
//! | `nats_tls_cert`, `nats_tls_key` | `off` | client certificate and key for TLS to NATS |
//! | `nats_registry` | `connwarden.registry` | subject prefix of the cluster-wide registry (its gateway list is the KV bucket named after it) |

mod nats;

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use tracing::level_filters::LevelFilter;

pub use nats::{parse_urls as parse_nats_urls, NatsConfig};

/// Prefix of the environment variables read by [`Settings::from_env`].
pub const ENV_PREFIX: &str = "CONNWARDEN_";

/// Every key, in the order `--print-config` prints them.
pub const KEYS: &[&str] = &[
    "listen",
    "reuse_port",
    "backlog",
    "recv_buffer",
    "send_buffer",
    "keepalive_bound",
    "keepalive_idle",
    "keepalive_interval",
    "keepalive_count",
    "user_timeout",
    "keepalive_spread",
    "nodelay",
    "heartbeat",
    "heartbeat_interval",
    "heartbeat_misses",
    "idle_timeout",
    "write_timeout",
    "max_age",
    "max_age_grace",
    "max_connections",
    "max_connections_per_ip",
    "max_frame",
    "frame_timeout",
    "max_buffered",
    "error_budget",
    "max_pending_replies",
    "queue",
    "overflow",
    "sink",
    "fsync",
    "sink_rotate_size",
    "sink_rotate_interval",
    "sink_keep",
    "shutdown_grace",
    "upgrade_timeout",
    "goaway_window",
    "log_format",
    "log_level",
    "admin",
    "admin_token_file",
    "tls_cert",
    "tls_key",
    "tls_client_ca",
    "auth_tokens",
    "auth",
    "auth_timeout",
    "handshake_timeout",
    "closed_history",
    "gateway_name",
    "nats_url",
    "nats_stream",
    "nats_subject",
    "nats_replicas",
    "nats_duplicate_window",
    "nats_max_age",
    "nats_max_bytes",
    "nats_window",
    "nats_publish_timeout",
    "nats_creds",
    "nats_token_file",
    "nats_user",
    "nats_password_file",
    "nats_tls_ca",
    "nats_tls_cert",
    "nats_tls_key",
    "nats_registry",
];

/// Keys that take several values: repeated flags add up, the environment splits on commas.
const LIST_KEYS: &[&str] = &["listen", "nats_url"];

/// Longest `frame_timeout`: a connection keeps the start of its pending object in 32 bits of
/// milliseconds.
pub const MAX_FRAME_TIMEOUT: Duration = Duration::from_secs(24 * 3600);
/// Most `heartbeat_misses`: far beyond any useful value, and it keeps a connection's count of
/// pings small.
pub const MAX_HEARTBEAT_MISSES: u32 = 1000;
/// Closed connections kept by default for the admin API's `/closed` (`closed_history`), as NATS
/// keeps for `/connz`; also what a registry keeps until it is told otherwise.
pub const DEFAULT_CLOSED_HISTORY: usize = 10_000;
/// Linux caps `TCP_KEEPIDLE` and `TCP_KEEPINTVL` at this many seconds (`MAX_TCP_KEEPIDLE`).
const MAX_KEEPALIVE_SECS: u64 = 32_767;
/// Linux caps `TCP_KEEPCNT` at this many probes (`MAX_TCP_KEEPCNT`).
const MAX_KEEPALIVE_COUNT: u32 = 127;

/// A configuration error. Each names the key and, where it has one, where the value came from.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{key} = {value:?} ({origin}): {reason}")]
    /// A value that does not parse.
    InvalidValue {
        /// The key, as spelled in the file.
        key: &'static str,
        /// The value as given.
        value: String,
        /// Where the value came from.
        origin: Origin,
        /// What was expected.
        reason: String,
    },
    #[error("unknown key {key:?} ({origin}); known keys: {}", KEYS.join(", "))]
    /// A key no setting has (a typo would otherwise leave a default in force).
    UnknownKey {
        /// The key as given.
        key: String,
        /// Where it was given.
        origin: Origin,
    },
    #[error("{key}: {reason}")]
    /// Values that parse but contradict each other; `key` is the one to change.
    Contradiction {
        /// The key to change.
        key: &'static str,
        /// What contradicts what.
        reason: String,
    },
    #[error("{key}: {reason}")]
    /// A value that parses but names something that cannot be used (a certificate file).
    Unusable {
        /// The key.
        key: &'static str,
        /// Why.
        reason: String,
    },
    #[error("{key} needs connwarden built with the \"{feature}\" feature")]
    /// A value that needs a part this build leaves out (a Cargo feature: README, "Features").
    NotBuilt {
        /// The key.
        key: &'static str,
        /// The feature it needs: `admin`, `tls` or `nats`.
        feature: &'static str,
    },
    #[error("cannot read config file {path}")]
    /// The configuration file cannot be read.
    ReadFile {
        /// The file named by `--config`.
        path: PathBuf,
        #[source]
        /// Why it cannot be read.
        source: std::io::Error,
    },
    #[error("config file {path} is not valid TOML")]
    /// The configuration file is not valid TOML.
    ParseFile {
        /// The file named by `--config`.
        path: PathBuf,
        #[source]
        /// Where and why parsing failed.
        source: toml::de::Error,
    },
}

impl ConfigError {
    /// The key this error is about, for callers and tests that act on it.
    pub fn key(&self) -> Option<&str> {
        match self {
            ConfigError::InvalidValue { key, .. }
            | ConfigError::Contradiction { key, .. }
            | ConfigError::Unusable { key, .. }
            | ConfigError::NotBuilt { key, .. } => Some(key),
            ConfigError::UnknownKey { key, .. } => Some(key),
            ConfigError::ReadFile { .. } | ConfigError::ParseFile { .. } => None,
        }
    }
}

/// Where a setting came from, so an error can point at it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Origin {
    /// The embedded default.
    Default,
    /// The TOML file at this path.
    File(PathBuf),
    /// This environment variable.
    Env(String),
    /// This command-line flag.
    Flag(String),
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Origin::Default => write!(f, "default"),
            Origin::File(path) => write!(f, "from {}", path.display()),
            Origin::Env(var) => write!(f, "from environment variable {var}"),
            Origin::Flag(flag) => write!(f, "from flag {flag}"),
        }
    }
}

/// One layer of raw settings: key to textual value(s), each with its origin.
#[derive(Clone, Debug, Default)]
pub struct Settings {
    entries: BTreeMap<String, (Vec<String>, Origin)>,
}

impl Settings {
    /// Reads a TOML file. Unknown keys are an error, so a typo cannot silently leave a default.
    pub fn from_toml_file(path: &Path) -> Result<Settings, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::ReadFile {
            path: path.to_owned(),
            source,
        })?;
        Settings::from_toml_str(&text, path)
    }

    /// Parses TOML text as if it had been read from `path`.
    pub fn from_toml_str(text: &str, path: &Path) -> Result<Settings, ConfigError> {
        let table: toml::Table = text.parse().map_err(|source| ConfigError::ParseFile {
            path: path.to_owned(),
            source,
        })?;
        let origin = Origin::File(path.to_owned());
        let mut settings = Settings::default();
        for (key, value) in table {
            let values = toml_values(&key, &value, &origin)?;
            settings.insert(key, values, origin.clone())?;
        }
        Ok(settings)
    }

    /// Reads `CONNWARDEN_<KEY>` variables from the process environment.
    pub fn from_env() -> Result<Settings, ConfigError> {
        Settings::from_vars(std::env::vars())
    }

    /// Reads `CONNWARDEN_<KEY>` variables from `vars`. `CONNWARDEN_LISTEN` takes a comma-separated list.
    pub fn from_vars(
        vars: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Settings, ConfigError> {
        let mut settings = Settings::default();
        for (var, value) in vars {
            let Some(key) = var.strip_prefix(ENV_PREFIX) else {
                continue;
            };
            let key = key.to_ascii_lowercase();
            let values = if LIST_KEYS.contains(&key.as_str()) {
                value.split(',').map(|s| s.trim().to_owned()).collect()
            } else {
                vec![value]
            };
            settings.insert(key, values, Origin::Env(var))?;
        }
        Ok(settings)
    }

    /// Sets `key` as given by a command-line flag. `listen` and `nats_url` may be set several
    /// times: values add up.
    pub fn set_flag(&mut self, key: &str, value: impl Into<String>) -> Result<(), ConfigError> {
        let flag = format!("--{}", key.replace('_', "-"));
        let value = value.into();
        if let Some((values, Origin::Flag(_))) = self.entries.get_mut(key) {
            if LIST_KEYS.contains(&key) {
                values.push(value);
                return Ok(());
            }
        }
        self.insert(key.to_owned(), vec![value], Origin::Flag(flag))
    }

    /// Reads command-line flags, one per configuration key, spelled as `serve` spells them:
    /// `--keepalive-idle 20s`, `--keepalive-idle=20s`, and a flag with no value
    /// (`--reuse-port`) for `true`. For a program of your own that takes the same flags as
    /// `serve` without a parser of its own (`examples/line_echo.rs`); `serve` itself parses with
    /// clap, for its help. An argument that is not a key's flag is an error.
    ///
    /// ```
    /// use connwarden::config::{Config, Settings};
    ///
    /// let args = ["--keepalive-idle", "20s", "--listen=127.0.0.1:7100", "--reuse-port"];
    /// let flags = Settings::from_args(args.map(String::from))?;
    /// let config = Config::from_settings(&flags)?;
    /// assert_eq!(config.keepalive.idle, std::time::Duration::from_secs(20));
    /// assert!(config.reuse_port);
    /// # Ok::<(), connwarden::config::ConfigError>(())
    /// ```
    pub fn from_args(args: impl IntoIterator<Item = String>) -> Result<Settings, ConfigError> {
        let mut settings = Settings::default();
        let mut args = args.into_iter().peekable();
        while let Some(arg) = args.next() {
            let Some(flag) = arg.strip_prefix("--") else {
                return Err(ConfigError::UnknownKey {
                    key: arg.clone(),
                    origin: Origin::Flag(arg),
                });
            };
            let (name, value) = match flag.split_once('=') {
                Some((name, value)) => (name, value.to_owned()),
                None => match args.next_if(|next| !next.starts_with("--")) {
                    Some(value) => (flag, value),
                    None => (flag, "true".to_owned()),
                },
            };
            let key = name.replace('-', "_");
            if !KEYS.contains(&key.as_str()) {
                return Err(ConfigError::UnknownKey {
                    key,
                    origin: Origin::Flag(format!("--{name}")),
                });
            }
            settings.set_flag(&key, value)?;
        }
        Ok(settings)
    }

    /// Overlays `higher`: each key it sets replaces this layer's value.
    pub fn merge(mut self, higher: Settings) -> Settings {
        self.entries.extend(higher.entries);
        self
    }

    fn insert(
        &mut self,
        key: String,
        values: Vec<String>,
        origin: Origin,
    ) -> Result<(), ConfigError> {
        if !KEYS.contains(&key.as_str()) {
            return Err(ConfigError::UnknownKey { key, origin });
        }
        self.entries.insert(key, (values, origin));
        Ok(())
    }
}

fn toml_values(
    key: &str,
    value: &toml::Value,
    origin: &Origin,
) -> Result<Vec<String>, ConfigError> {
    let scalar = |v: &toml::Value| match v {
        toml::Value::String(s) => Some(s.clone()),
        toml::Value::Integer(i) => Some(i.to_string()),
        toml::Value::Boolean(b) => Some(b.to_string()),
        _ => None,
    };
    let values = match value {
        toml::Value::Array(items) => items.iter().map(scalar).collect::<Option<Vec<_>>>(),
        other => scalar(other).map(|s| vec![s]),
    };
    values.ok_or_else(|| match KEYS.iter().find(|k| **k == key) {
        Some(key) => ConfigError::InvalidValue {
            key,
            value: value.to_string(),
            origin: origin.clone(),
            reason: "expected a string, an integer, a boolean or (for listen) an array".into(),
        },
        None => ConfigError::UnknownKey {
            key: key.to_owned(),
            origin: origin.clone(),
        },
    })
}

/// `TCP_USER_TIMEOUT`: how long transmitted data may stay unacknowledged before the kernel drops
/// the connection. Without it, Linux retransmits for about 15 minutes (`tcp_retries2 = 15`) and
/// keep-alive never runs while data is outstanding.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UserTimeout {
    /// idle + interval × count: the same bound as keep-alive, for connections with data in flight.
    Auto,
    /// No `TCP_USER_TIMEOUT`: the kernel retransmits for about 15 minutes (`tcp_retries2`).
    Off,
    /// This timeout.
    Fixed(Duration),
}

impl UserTimeout {
    /// The timeout to set with this keep-alive; `None` when off.
    pub fn resolve(self, keepalive: &Keepalive) -> Option<Duration> {
        match self {
            UserTimeout::Auto => Some(keepalive.bound()),
            UserTimeout::Off => None,
            UserTimeout::Fixed(d) => Some(d),
        }
    }
}

/// When the acks of a sink that can be synced (`file:`) wait for `fsync`.
///
/// An ack promises the item survives a crash of the server process in every mode; with
/// `always` and `batch` it also survives a crash of the machine.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FsyncMode {
    /// Each written batch is synced before the next one is written: the fewest items wait on
    /// any one `fsync`, and the slowest.
    Always,
    /// Group commit: while one `fsync` runs, writing goes on; the next `fsync` covers every batch
    /// written meanwhile, and each ack waits for the `fsync` that covers its item.
    Batch,
    /// Acks once the kernel has the bytes (`write` returned); the file is synced at shutdown.
    Never,
}

impl FsyncMode {
    /// The spelling in flags and files.
    pub fn as_str(self) -> &'static str {
        match self {
            FsyncMode::Always => "always",
            FsyncMode::Batch => "batch",
            FsyncMode::Never => "never",
        }
    }
}

/// When the application heartbeat applies.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HeartbeatMode {
    /// Only for clients that sent `hello`: plain item writers keep working.
    Negotiated,
    /// For every client: one that never answers `ping` is closed.
    Required,
    /// No heartbeat: only the kernel and the deadlines notice dead peers.
    Off,
}

/// What a connection does with an item when the queue is full.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Overflow {
    /// Stop reading from the socket until there is room: TCP flow control slows the client.
    Backpressure,
    /// Reject the new item (the sender gets `queue_full`).
    DropNewest,
    /// Evict the oldest queued item (its sender gets `queue_full`) and take the new one.
    DropOldest,
}

/// When a `file:` sink starts a new file: at the first batch after the file reaches `size`
/// bytes or is `interval` old (either, both or neither), keeping `keep` rotated files.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Rotation {
    /// Size that starts a new file; `None` is no limit.
    pub size: Option<u64>,
    /// Age that starts a new file; `None` is no limit.
    pub interval: Option<Duration>,
    /// Rotated files kept; `None` keeps them all.
    pub keep: Option<usize>,
}

impl Rotation {
    /// Whether the sink rotates by itself.
    pub fn enabled(&self) -> bool {
        self.size.is_some() || self.interval.is_some()
    }
}

/// Where items go.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SinkSpec {
    /// NDJSON on standard output.
    Stdout,
    /// NDJSON appended to a file.
    File(PathBuf),
    /// One message per record in a NATS JetStream stream ([`NatsConfig`]).
    JetStream,
}

/// Format of the log lines on standard error.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// Kernel keep-alive: the first probe after `idle` of silence, then one every `interval`,
/// and the connection is dropped after `count` unanswered probes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Keepalive {
    /// `TCP_KEEPIDLE`: silence before the first probe.
    pub idle: Duration,
    /// `TCP_KEEPINTVL`: time between probes.
    pub interval: Duration,
    /// `TCP_KEEPCNT`: unanswered probes before the kernel drops the connection.
    pub count: u32,
}

/// Most probes [`Keepalive::for_bound`] spends a bound on: enough that random loss cannot take
/// them all (at 10 % loss each way, 0.19³⁰ ≈ 10⁻²²), few enough that a dead peer costs little.
pub const SPLIT_PROBES: u64 = 30;

impl Keepalive {
    /// Worst case from the last byte heard to the kernel dropping a silent dead peer.
    pub fn bound(&self) -> Duration {
        self.idle + self.interval * self.count
    }

    /// The split of a dead-peer `bound` that random loss does not break: idle half the bound
    /// (one probe per idle period on a healthy link, whatever the count), the other half in up
    /// to [`SPLIT_PROBES`] probes at least 1 s apart. A lost probe is not retransmitted, so a
    /// healthy peer is closed only when every probe round trip fails: many short retries
    /// survive loss that a few long ones do not, for the same bound. `60s` gives 30 s + 1 s × 30.
    /// The bound must be whole seconds (the kernel counts them) and at least 2 s; the split's
    /// bound is never above it.
    pub fn for_bound(bound: Duration) -> Result<Keepalive, String> {
        let secs = bound.as_secs();
        if bound.subsec_nanos() != 0 || !(2..=2 * MAX_KEEPALIVE_SECS).contains(&secs) {
            return Err(format!(
                "must be whole seconds, 2s to {}s (the kernel counts keep-alive in seconds)",
                2 * MAX_KEEPALIVE_SECS
            ));
        }
        let idle = secs / 2;
        let rest = secs - idle;
        let interval = rest.div_ceil(SPLIT_PROBES);
        Ok(Keepalive {
            idle: Duration::from_secs(idle),
            interval: Duration::from_secs(interval),
            count: (rest / interval) as u32,
        })
    }
}

/// The validated configuration of a server.
#[derive(Clone, Debug, PartialEq)]
pub struct Config {
    /// Addresses to listen on.
    pub listen: Vec<SocketAddr>,
    /// `SO_REUSEPORT`, so several processes can share a port.
    pub reuse_port: bool,
    /// Accept queue length passed to `listen(2)`.
    pub backlog: u32,
    /// `SO_RCVBUF` in bytes; `None` keeps kernel autotuning.
    pub recv_buffer: Option<usize>,
    /// `SO_SNDBUF` in bytes; `None` keeps kernel autotuning.
    pub send_buffer: Option<usize>,
    /// Kernel keep-alive probing.
    pub keepalive: Keepalive,
    /// The dead-peer bound `keepalive` was chosen for ([`Keepalive::for_bound`]), if the
    /// operator stated the bound rather than the split.
    pub keepalive_bound: Option<Duration>,
    /// `TCP_USER_TIMEOUT`.
    pub user_timeout: UserTimeout,
    /// Spread the keep-alive phases of accepted connections (`crate::phase`).
    pub keepalive_spread: bool,
    /// `TCP_NODELAY`.
    pub nodelay: bool,
    /// When the application heartbeat applies.
    pub heartbeat: HeartbeatMode,
    /// Inbound silence after which the server sends `ping`.
    pub heartbeat_interval: Duration,
    /// Silent intervals after which the connection is closed.
    pub heartbeat_misses: u32,
    /// Close a connection with no inbound byte for this long; `None` is off.
    pub idle_timeout: Option<Duration>,
    /// Close a connection whose pending output makes no progress for this long.
    pub write_timeout: Duration,
    /// Age at which a connection is asked to reconnect; `None` is off.
    pub max_age: Option<Duration>,
    /// Time a connection past `max_age` has before it is closed.
    pub max_age_grace: Duration,
    /// Live connections; beyond it new peers get `server_full`.
    pub max_connections: usize,
    /// Live connections from one source ([`crate::registry::Source`]); `None` is off.
    pub max_connections_per_ip: Option<usize>,
    /// Largest JSON object in bytes.
    pub max_frame: usize,
    /// Longest time from an object's first byte to its last; `None` is off.
    pub frame_timeout: Option<Duration>,
    /// Bytes of read buffers holding partial objects, across all connections; `None` is off.
    pub max_buffered: Option<u64>,
    /// Refused items a connection may send before it is closed.
    pub error_budget: u32,
    /// Replies (acks, errors) waiting for one connection before its reading pauses.
    pub max_pending_replies: usize,
    /// Capacity of the queue between connections and sink, in items.
    pub queue: usize,
    /// What a full queue does.
    pub overflow: Overflow,
    /// Where items go.
    pub sink: SinkSpec,
    /// When acks of a file sink wait for `fsync`.
    pub fsync: FsyncMode,
    /// When a file sink is rotated, and how many rotated files are kept.
    pub sink_rotation: Rotation,
    /// Time from the shutdown signal to exit.
    pub shutdown_grace: Duration,
    /// At an upgrade, the time the new process has to report ready.
    pub upgrade_timeout: Duration,
    /// At an upgrade, the window the connections that cannot move are told to reconnect within.
    pub goaway_window: Duration,
    /// Format of the log lines.
    pub log_format: LogFormat,
    /// Least severe level logged (by `connwarden serve`; a library user logs as it likes).
    pub log_level: LevelFilter,
    /// Address of the admin API; `None` is off.
    pub admin: Option<SocketAddr>,
    /// File holding the admin API's bearer token; `None` leaves the API without one.
    pub admin_token_file: Option<PathBuf>,
    /// PEM certificate chain of the data listener; TLS is on when set (with `tls_key`).
    pub tls_cert: Option<PathBuf>,
    /// PEM private key of `tls_cert`.
    pub tls_key: Option<PathBuf>,
    /// PEM CA file of the client certificates to require (mutual TLS).
    pub tls_client_ca: Option<PathBuf>,
    /// File of client tokens (`token` or `name:token` per line).
    pub auth_tokens: Option<PathBuf>,
    /// Whether a connection must authenticate before its first item.
    pub auth_required: bool,
    /// With `auth_required`, time from accept to authentication.
    pub auth_timeout: Duration,
    /// Longest TLS handshake, from accept.
    pub handshake_timeout: Duration,
    /// Closed connections kept for the admin API's `/closed`.
    pub closed_history: usize,
    /// This gateway's name; `None` is the host name and the first listen port
    /// ([`Config::gateway_name`]).
    pub gateway_name: Option<String>,
    /// NATS: the JetStream sink and the cluster-wide registry.
    pub nats: NatsConfig,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: vec![SocketAddr::from(([0, 0, 0, 0], 7000))],
            reuse_port: false,
            backlog: 1024,
            recv_buffer: None,
            send_buffer: None,
            keepalive: Keepalive {
                idle: Duration::from_secs(30),
                interval: Duration::from_secs(1),
                count: 30,
            },
            keepalive_bound: None,
            user_timeout: UserTimeout::Auto,
            keepalive_spread: true,
            nodelay: true,
            heartbeat: HeartbeatMode::Negotiated,
            heartbeat_interval: Duration::from_secs(15),
            heartbeat_misses: 3,
            idle_timeout: None,
            write_timeout: Duration::from_secs(30),
            max_age: None,
            max_age_grace: Duration::from_secs(30),
            max_connections: 10_000,
            max_connections_per_ip: None,
            max_frame: 64 * 1024,
            frame_timeout: Some(Duration::from_secs(30)),
            max_buffered: Some(256 << 20),
            error_budget: 100,
            max_pending_replies: 1024,
            queue: 65_536,
            overflow: Overflow::Backpressure,
            sink: SinkSpec::Stdout,
            fsync: FsyncMode::Batch,
            sink_rotation: Rotation::default(),
            shutdown_grace: Duration::from_secs(10),
            upgrade_timeout: Duration::from_secs(30),
            goaway_window: Duration::from_secs(10),
            log_format: LogFormat::Text,
            log_level: LevelFilter::INFO,
            // Off in a build without the admin API, so that the defaults are valid in every build.
            admin: cfg!(feature = "admin").then_some(SocketAddr::from(([127, 0, 0, 1], 9464))),
            admin_token_file: None,
            tls_cert: None,
            tls_key: None,
            tls_client_ca: None,
            auth_tokens: None,
            auth_required: false,
            auth_timeout: Duration::from_secs(10),
            handshake_timeout: Duration::from_secs(10),
            closed_history: DEFAULT_CLOSED_HISTORY,
            gateway_name: None,
            nats: NatsConfig::default(),
        }
    }
}

impl Config {
    /// Builds the configuration from its layers: defaults < `file` < environment < `flags`.
    pub fn load(file: Option<&Path>, flags: Settings) -> Result<Config, ConfigError> {
        let file = match file {
            Some(path) => Settings::from_toml_file(path)?,
            None => Settings::default(),
        };
        let layered = file.merge(Settings::from_env()?).merge(flags);
        Config::from_settings(&layered)
    }

    /// Applies `settings` over the defaults and validates the result.
    pub fn from_settings(settings: &Settings) -> Result<Config, ConfigError> {
        let mut config = Config::default();
        for (key, (values, origin)) in &settings.entries {
            config.apply(key, values, origin)?;
        }
        // A stated bound chooses the split; keys of the split set beside it must agree with
        // it (`validate`), so that nothing set is silently overridden.
        if let Some(bound) = config.keepalive_bound {
            if let Ok(split) = Keepalive::for_bound(bound) {
                let set = |key: &str| settings.entries.contains_key(key);
                if !set("keepalive_idle") {
                    config.keepalive.idle = split.idle;
                }
                if !set("keepalive_interval") {
                    config.keepalive.interval = split.interval;
                }
                if !set("keepalive_count") {
                    config.keepalive.count = split.count;
                }
            }
        }
        config.validate()?;
        Ok(config)
    }

    /// The effective user timeout, `None` when off.
    pub fn effective_user_timeout(&self) -> Option<Duration> {
        self.user_timeout.resolve(&self.keepalive)
    }

    /// Checks the rules that involve more than one key.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.check_features()?;
        let fail = |key, reason: String| Err(ConfigError::Contradiction { key, reason });
        if self.listen.is_empty() {
            return fail("listen", "at least one address is needed".into());
        }
        if self.queue == 0 {
            return fail(
                "queue",
                "must be at least 1: a queue of 0 could never take an item".into(),
            );
        }
        if self.max_connections == 0 {
            return fail("max_connections", "must be at least 1".into());
        }
        if self
            .frame_timeout
            .is_some_and(|t| t.is_zero() || t > MAX_FRAME_TIMEOUT)
        {
            return fail(
                "frame_timeout",
                "must be above 0 and at most 1 day, or off".into(),
            );
        }
        if self.max_connections_per_ip == Some(0) {
            return fail(
                "max_connections_per_ip",
                "must be at least 1, or off".into(),
            );
        }
        if self.max_frame < 16 || self.max_frame > crate::protocol::MAX_FRAME_LIMIT {
            return fail("max_frame", "must be between 16 bytes and 1 GiB".into());
        }
        if self
            .max_buffered
            .is_some_and(|budget| budget < self.max_frame as u64)
        {
            return fail(
                "max_buffered",
                format!(
                    "must be at least max_frame ({} bytes): one object may need that much, or off",
                    self.max_frame
                ),
            );
        }
        if self.tls_cert.is_some() != self.tls_key.is_some() {
            let missing = if self.tls_cert.is_some() {
                "tls_key"
            } else {
                "tls_cert"
            };
            return fail(missing, "TLS needs both tls_cert and tls_key".into());
        }
        if self.tls_client_ca.is_some() && self.tls_cert.is_none() {
            return fail(
                "tls_client_ca",
                "client certificates need TLS: set tls_cert and tls_key".into(),
            );
        }
        if self.auth_required && self.tls_client_ca.is_none() && self.auth_tokens.is_none() {
            return fail(
                "auth",
                "required authentication needs auth_tokens or tls_client_ca".into(),
            );
        }
        if self.auth_timeout.is_zero() {
            return fail("auth_timeout", "must be above 0".into());
        }
        if self.handshake_timeout.is_zero() {
            return fail("handshake_timeout", "must be above 0".into());
        }
        if self.max_pending_replies == 0 {
            return fail("max_pending_replies", "must be at least 1".into());
        }
        let rotation = &self.sink_rotation;
        if rotation.enabled() || rotation.keep.is_some() {
            if !matches!(self.sink, SinkSpec::File(_)) {
                let key = if rotation.size.is_some() {
                    "sink_rotate_size"
                } else if rotation.interval.is_some() {
                    "sink_rotate_interval"
                } else {
                    "sink_keep"
                };
                return fail(key, "applies to a file: sink only".into());
            }
            if rotation.size.is_some_and(|size| size < 1024) {
                return fail("sink_rotate_size", "must be at least 1KiB".into());
            }
            if rotation
                .interval
                .is_some_and(|i| i < Duration::from_secs(1))
            {
                return fail("sink_rotate_interval", "must be at least 1s".into());
            }
            if rotation.keep == Some(0) {
                return fail("sink_keep", "must be at least 1, or off".into());
            }
        }
        let ka = &self.keepalive;
        if let Some(bound) = self.keepalive_bound {
            let split = match Keepalive::for_bound(bound) {
                Ok(split) => split,
                Err(reason) => return fail("keepalive_bound", reason),
            };
            if split != *ka {
                return fail(
                    "keepalive_bound",
                    format!(
                        "{} chooses keepalive_idle {}, keepalive_interval {}, keepalive_count {}, but the keys set say {}, {}, {}: set the bound or the split, not both",
                        humantime::format_duration(bound),
                        humantime::format_duration(split.idle),
                        humantime::format_duration(split.interval),
                        split.count,
                        humantime::format_duration(ka.idle),
                        humantime::format_duration(ka.interval),
                        ka.count
                    ),
                );
            }
        }
        if ka.idle < Duration::from_secs(1) || ka.idle.as_secs() > MAX_KEEPALIVE_SECS {
            return fail(
                "keepalive_idle",
                format!("must be 1s to {MAX_KEEPALIVE_SECS}s (the kernel counts whole seconds)"),
            );
        }
        if ka.interval < Duration::from_secs(1) || ka.interval.as_secs() > MAX_KEEPALIVE_SECS {
            return fail(
                "keepalive_interval",
                format!("must be 1s to {MAX_KEEPALIVE_SECS}s (the kernel counts whole seconds)"),
            );
        }
        if ka.count == 0 || ka.count > MAX_KEEPALIVE_COUNT {
            return fail(
                "keepalive_count",
                format!("must be 1 to {MAX_KEEPALIVE_COUNT}"),
            );
        }
        if let UserTimeout::Fixed(d) = self.user_timeout {
            if d < ka.interval {
                return fail(
                    "user_timeout",
                    format!(
                        "{} is shorter than one keep-alive interval ({}): the kernel would drop a connection between two probes",
                        humantime::format_duration(d),
                        humantime::format_duration(ka.interval)
                    ),
                );
            }
        }
        if self.heartbeat != HeartbeatMode::Off {
            if self.heartbeat_interval.is_zero() {
                return fail("heartbeat_interval", "must be above 0".into());
            }
            if self.heartbeat_misses == 0 || self.heartbeat_misses > MAX_HEARTBEAT_MISSES {
                return fail(
                    "heartbeat_misses",
                    format!("must be between 1 and {MAX_HEARTBEAT_MISSES}"),
                );
            }
            if let Some(idle) = self.idle_timeout {
                if self.heartbeat_interval >= idle {
                    return fail(
                        "heartbeat_interval",
                        format!(
                            "{} is at or above idle_timeout ({}): the idle timeout would close connections before the first ping",
                            humantime::format_duration(self.heartbeat_interval),
                            humantime::format_duration(idle)
                        ),
                    );
                }
            }
        }
        if let Some(admin) = self.admin {
            let clash = self.listen.iter().any(|data| {
                data.port() == admin.port()
                    && admin.port() != 0
                    && (data.ip() == admin.ip()
                        || data.ip().is_unspecified()
                        || admin.ip().is_unspecified())
            });
            if clash {
                return fail(
                    "admin",
                    format!("{admin} is a data port (listen); the admin API needs an address of its own"),
                );
            }
        }
        if self.write_timeout.is_zero() {
            return fail("write_timeout", "must be above 0".into());
        }
        if self.idle_timeout.is_some_and(|d| d.is_zero()) {
            return fail("idle_timeout", "must be above 0, or off".into());
        }
        if self.max_age.is_some_and(|d| d.is_zero()) {
            return fail("max_age", "must be above 0, or off".into());
        }
        if let Some(name) = &self.gateway_name {
            nats::check_gateway_name(name).or_else(|reason| fail("gateway_name", reason))?;
        }
        if self.sink == SinkSpec::JetStream {
            if self.nats.urls.is_empty() {
                return fail(
                    "nats_url",
                    "sink = \"jetstream\" needs at least one NATS server".into(),
                );
            }
            if self.fsync == FsyncMode::Never {
                return fail(
                    "fsync",
                    "never would ack before JetStream has the item; the jetstream sink takes always or batch".into(),
                );
            }
        }
        self.nats.validate(&self.gateway_name())
    }

    /// Refuses a value that needs a Cargo feature this build was made without: the keys stay
    /// known in every build, so a file written for the daemon is refused by name, not as a typo.
    fn check_features(&self) -> Result<(), ConfigError> {
        let built = [
            ("admin", cfg!(feature = "admin")),
            ("tls", cfg!(feature = "tls")),
            ("nats", cfg!(feature = "nats")),
        ];
        let needs = [
            ("admin", "admin", self.admin.is_some()),
            ("admin_token_file", "admin", self.admin_token_file.is_some()),
            ("tls_cert", "tls", self.tls_cert.is_some()),
            ("tls_key", "tls", self.tls_key.is_some()),
            ("tls_client_ca", "tls", self.tls_client_ca.is_some()),
            ("nats_url", "nats", self.nats.enabled()),
            ("sink", "nats", self.sink == SinkSpec::JetStream),
        ];
        match needs
            .into_iter()
            .find(|&(_, feature, set)| set && !built.contains(&(feature, true)))
        {
            Some((key, feature, _)) => Err(ConfigError::NotBuilt { key, feature }),
            None => Ok(()),
        }
    }

    /// This gateway's name: `gateway_name`, or the host name and the first listen port, in the
    /// characters a NATS subject token allows (`web-1-7000`).
    pub fn gateway_name(&self) -> String {
        match &self.gateway_name {
            Some(name) => name.clone(),
            None => nats::default_gateway_name(self.listen.first().map_or(0, |a| a.port())),
        }
    }

    fn apply(&mut self, key: &str, values: &[String], origin: &Origin) -> Result<(), ConfigError> {
        let key: &'static str = KEYS
            .iter()
            .find(|k| **k == key)
            .expect("Settings only holds known keys");
        // Parses the key's single value with `$parse`, naming key, value and origin on failure.
        macro_rules! parse {
            ($parse:expr) => {{
                let value = single_value(key, values, origin)?;
                $parse(value).map_err(|reason: String| invalid(key, value, origin, &reason))?
            }};
        }
        match key {
            "listen" => {
                self.listen = values
                    .iter()
                    .map(|v| {
                        v.parse().map_err(|_| {
                            invalid(
                                key,
                                v,
                                origin,
                                "expected an address such as 0.0.0.0:7000 or [::]:7000",
                            )
                        })
                    })
                    .collect::<Result<_, _>>()?
            }
            "reuse_port" => self.reuse_port = parse!(parse_bool),
            "backlog" => self.backlog = parse!(parse_number),
            "recv_buffer" => self.recv_buffer = parse!(parse_buffer),
            "send_buffer" => self.send_buffer = parse!(parse_buffer),
            "keepalive_bound" => self.keepalive_bound = parse!(parse_optional_duration),
            "keepalive_idle" => self.keepalive.idle = parse!(parse_duration),
            "keepalive_interval" => self.keepalive.interval = parse!(parse_duration),
            "keepalive_count" => self.keepalive.count = parse!(parse_number),
            "user_timeout" => self.user_timeout = parse!(parse_user_timeout),
            "keepalive_spread" => self.keepalive_spread = parse!(parse_bool),
            "nodelay" => self.nodelay = parse!(parse_bool),
            "heartbeat" => self.heartbeat = parse!(parse_heartbeat),
            "heartbeat_interval" => self.heartbeat_interval = parse!(parse_duration),
            "heartbeat_misses" => self.heartbeat_misses = parse!(parse_number),
            "idle_timeout" => self.idle_timeout = parse!(parse_optional_duration),
            "write_timeout" => self.write_timeout = parse!(parse_duration),
            "max_age" => self.max_age = parse!(parse_optional_duration),
            "max_age_grace" => self.max_age_grace = parse!(parse_duration),
            "max_connections" => self.max_connections = parse!(parse_number),
            "max_connections_per_ip" => self.max_connections_per_ip = parse!(parse_optional_count),
            "max_frame" => self.max_frame = parse!(parse_size),
            "frame_timeout" => self.frame_timeout = parse!(parse_optional_duration),
            "max_buffered" => self.max_buffered = parse!(parse_optional_size),
            "error_budget" => self.error_budget = parse!(parse_number),
            "max_pending_replies" => self.max_pending_replies = parse!(parse_number),
            "queue" => self.queue = parse!(parse_number),
            "overflow" => self.overflow = parse!(parse_overflow),
            "sink" => self.sink = parse!(parse_sink),
            "fsync" => self.fsync = parse!(parse_fsync),
            "sink_rotate_size" => self.sink_rotation.size = parse!(parse_optional_size),
            "sink_rotate_interval" => self.sink_rotation.interval = parse!(parse_optional_duration),
            "sink_keep" => self.sink_rotation.keep = parse!(parse_optional_count),
            "shutdown_grace" => self.shutdown_grace = parse!(parse_duration),
            "upgrade_timeout" => self.upgrade_timeout = parse!(parse_duration),
            "goaway_window" => self.goaway_window = parse!(parse_duration),
            "log_format" => self.log_format = parse!(parse_log_format),
            "log_level" => self.log_level = parse!(parse_log_level),
            "admin" => self.admin = parse!(parse_admin),
            "admin_token_file" => self.admin_token_file = parse!(parse_optional_path),
            "tls_cert" => self.tls_cert = parse!(parse_optional_path),
            "tls_key" => self.tls_key = parse!(parse_optional_path),
            "tls_client_ca" => self.tls_client_ca = parse!(parse_optional_path),
            "auth_tokens" => self.auth_tokens = parse!(parse_optional_path),
            "auth" => self.auth_required = parse!(parse_auth),
            "auth_timeout" => self.auth_timeout = parse!(parse_duration),
            "handshake_timeout" => self.handshake_timeout = parse!(parse_duration),
            "closed_history" => self.closed_history = parse!(parse_number),
            "gateway_name" => self.gateway_name = parse!(parse_auto_name),
            "nats_url" => {
                self.nats.urls = nats::parse_urls(values)
                    .map_err(|reason| invalid(key, &values.join(","), origin, &reason))?
            }
            "nats_stream" => self.nats.stream = parse!(nats::parse_stream_name),
            "nats_subject" => self.nats.subject = parse!(nats::parse_subject_template),
            "nats_replicas" => self.nats.replicas = parse!(parse_number),
            "nats_duplicate_window" => self.nats.duplicate_window = parse!(parse_duration),
            "nats_max_age" => self.nats.max_age = parse!(parse_optional_duration),
            "nats_max_bytes" => self.nats.max_bytes = parse!(parse_optional_size),
            "nats_window" => self.nats.window = parse!(parse_number),
            "nats_publish_timeout" => self.nats.publish_timeout = parse!(parse_duration),
            "nats_creds" => self.nats.creds = parse!(parse_optional_path),
            "nats_token_file" => self.nats.token_file = parse!(parse_optional_path),
            "nats_user" => self.nats.user = parse!(parse_optional_text),
            "nats_password_file" => self.nats.password_file = parse!(parse_optional_path),
            "nats_tls_ca" => self.nats.tls_ca = parse!(parse_optional_path),
            "nats_tls_cert" => self.nats.tls_cert = parse!(parse_optional_path),
            "nats_tls_key" => self.nats.tls_key = parse!(parse_optional_path),
            "nats_registry" => self.nats.registry = parse!(nats::parse_subject_prefix),
            _ => unreachable!("every key in KEYS has an arm"),
        }
        Ok(())
    }

    /// The effective configuration as TOML, in the form the file accepts.
    pub fn to_toml(&self) -> String {
        self.key_values()
            .iter()
            .map(|(k, v)| format!("{k} = {v}\n"))
            .collect()
    }

    /// Every key with its value as the file writes it (TOML), in the order of [`KEYS`]: what
    /// `--print-config` prints and what a reload compares.
    pub fn key_values(&self) -> Vec<(&'static str, String)> {
        let dur = |d: Duration| format!("{:?}", humantime::format_duration(d).to_string());
        let opt_dur = |d: Option<Duration>| d.map_or_else(|| "\"off\"".to_owned(), dur);
        let opt_buf = |b: Option<usize>| b.map_or_else(|| "\"auto\"".to_owned(), |b| b.to_string());
        let quoted = |s: &str| format!("{s:?}");
        let opt_path = |p: &Option<PathBuf>| {
            quoted(
                &p.as_ref()
                    .map_or_else(|| "off".to_owned(), |p| p.display().to_string()),
            )
        };
        let listen: Vec<String> = self.listen.iter().map(|a| quoted(&a.to_string())).collect();
        let lines = [
            ("listen", format!("[{}]", listen.join(", "))),
            ("reuse_port", self.reuse_port.to_string()),
            ("backlog", self.backlog.to_string()),
            ("recv_buffer", opt_buf(self.recv_buffer)),
            ("send_buffer", opt_buf(self.send_buffer)),
            ("keepalive_bound", opt_dur(self.keepalive_bound)),
            ("keepalive_idle", dur(self.keepalive.idle)),
            ("keepalive_interval", dur(self.keepalive.interval)),
            ("keepalive_count", self.keepalive.count.to_string()),
            (
                "user_timeout",
                match self.user_timeout {
                    UserTimeout::Auto => quoted("auto"),
                    UserTimeout::Off => quoted("off"),
                    UserTimeout::Fixed(d) => dur(d),
                },
            ),
            ("keepalive_spread", self.keepalive_spread.to_string()),
            ("nodelay", self.nodelay.to_string()),
            ("heartbeat", quoted(heartbeat_name(self.heartbeat))),
            ("heartbeat_interval", dur(self.heartbeat_interval)),
            ("heartbeat_misses", self.heartbeat_misses.to_string()),
            ("idle_timeout", opt_dur(self.idle_timeout)),
            ("write_timeout", dur(self.write_timeout)),
            ("max_age", opt_dur(self.max_age)),
            ("max_age_grace", dur(self.max_age_grace)),
            ("max_connections", self.max_connections.to_string()),
            (
                "max_connections_per_ip",
                self.max_connections_per_ip
                    .map_or_else(|| quoted("off"), |n| n.to_string()),
            ),
            ("max_frame", self.max_frame.to_string()),
            ("frame_timeout", opt_dur(self.frame_timeout)),
            (
                "max_buffered",
                self.max_buffered
                    .map_or_else(|| quoted("off"), |n| n.to_string()),
            ),
            ("error_budget", self.error_budget.to_string()),
            ("max_pending_replies", self.max_pending_replies.to_string()),
            ("queue", self.queue.to_string()),
            ("overflow", quoted(self.overflow.as_str())),
            (
                "sink",
                quoted(&match &self.sink {
                    SinkSpec::Stdout => "stdout".to_owned(),
                    SinkSpec::File(p) => format!("file:{}", p.display()),
                    SinkSpec::JetStream => "jetstream".to_owned(),
                }),
            ),
            ("fsync", quoted(self.fsync.as_str())),
            (
                "sink_rotate_size",
                self.sink_rotation
                    .size
                    .map_or_else(|| quoted("off"), |n| n.to_string()),
            ),
            ("sink_rotate_interval", opt_dur(self.sink_rotation.interval)),
            (
                "sink_keep",
                self.sink_rotation
                    .keep
                    .map_or_else(|| quoted("off"), |n| n.to_string()),
            ),
            ("shutdown_grace", dur(self.shutdown_grace)),
            ("upgrade_timeout", dur(self.upgrade_timeout)),
            ("goaway_window", dur(self.goaway_window)),
            (
                "log_format",
                quoted(match self.log_format {
                    LogFormat::Text => "text",
                    LogFormat::Json => "json",
                }),
            ),
            (
                "log_level",
                quoted(&self.log_level.to_string().to_ascii_lowercase()),
            ),
            (
                "admin",
                quoted(
                    &self
                        .admin
                        .map_or_else(|| "off".to_owned(), |a| a.to_string()),
                ),
            ),
            (
                "admin_token_file",
                quoted(
                    &self
                        .admin_token_file
                        .as_ref()
                        .map_or_else(|| "off".to_owned(), |p| p.display().to_string()),
                ),
            ),
            ("tls_cert", opt_path(&self.tls_cert)),
            ("tls_key", opt_path(&self.tls_key)),
            ("tls_client_ca", opt_path(&self.tls_client_ca)),
            ("auth_tokens", opt_path(&self.auth_tokens)),
            (
                "auth",
                quoted(if self.auth_required {
                    "required"
                } else {
                    "optional"
                }),
            ),
            ("auth_timeout", dur(self.auth_timeout)),
            ("handshake_timeout", dur(self.handshake_timeout)),
            ("closed_history", self.closed_history.to_string()),
            (
                "gateway_name",
                quoted(self.gateway_name.as_deref().unwrap_or("auto")),
            ),
        ];
        let mut all: Vec<(&'static str, String)> = lines.into();
        all.extend(self.nats.toml_lines());
        debug_assert_eq!(
            all.iter().map(|(k, _)| *k).collect::<Vec<_>>(),
            KEYS,
            "key_values follows KEYS"
        );
        all
    }
}

fn single_value<'v>(
    key: &'static str,
    values: &'v [String],
    origin: &Origin,
) -> Result<&'v str, ConfigError> {
    match values {
        [value] => Ok(value.as_str()),
        _ => Err(invalid(
            key,
            &values.join(","),
            origin,
            "expected one value",
        )),
    }
}

fn invalid(key: &'static str, value: &str, origin: &Origin, reason: &str) -> ConfigError {
    ConfigError::InvalidValue {
        key,
        value: value.to_owned(),
        origin: origin.clone(),
        reason: reason.to_owned(),
    }
}

fn heartbeat_name(mode: HeartbeatMode) -> &'static str {
    match mode {
        HeartbeatMode::Negotiated => "negotiated",
        HeartbeatMode::Required => "required",
        HeartbeatMode::Off => "off",
    }
}

impl Overflow {
    /// The spelling in flags, files and the `policy` label of the metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Overflow::Backpressure => "backpressure",
            Overflow::DropNewest => "drop-newest",
            Overflow::DropOldest => "drop-oldest",
        }
    }
}

/// Parses `30s`, `2m`, `1h`, `500ms`, `1m 30s`. A bare number is refused: `30` could mean seconds
/// or milliseconds, and a wrong guess moves a timeout by a factor of a thousand.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    humantime::parse_duration(text.trim())
        .map_err(|e| format!("expected a duration such as 30s, 2m, 1h or 500ms ({e})"))
}

/// Parses a duration or `off`.
pub fn parse_optional_duration(text: &str) -> Result<Option<Duration>, String> {
    match text.trim() {
        "off" | "none" => Ok(None),
        other => parse_duration(other)
            .map(Some)
            .map_err(|e| format!("{e}, or off")),
    }
}

/// Parses `auto`, `off` or a duration.
pub fn parse_user_timeout(text: &str) -> Result<UserTimeout, String> {
    match text.trim() {
        "auto" => Ok(UserTimeout::Auto),
        "off" => Ok(UserTimeout::Off),
        other => parse_duration(other)
            .map(UserTimeout::Fixed)
            .map_err(|e| format!("{e}, or auto, or off")),
    }
}

/// Parses `true` or `false`.
pub fn parse_bool(text: &str) -> Result<bool, String> {
    match text.trim() {
        "true" | "yes" | "on" | "1" => Ok(true),
        "false" | "no" | "off" | "0" => Ok(false),
        _ => Err("expected true or false".into()),
    }
}

fn parse_number<T: FromStr>(text: &str) -> Result<T, String> {
    text.trim()
        .replace('_', "")
        .parse()
        .map_err(|_| "expected a whole number in range".into())
}

/// Parses a size in bytes: `65536`, `64KiB`, `64k`, `1MiB`, `1m`, `2GiB`.
pub fn parse_size(text: &str) -> Result<usize, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit() && c != '_')
        .unwrap_or(text.len());
    let (digits, unit) = text.split_at(split);
    let number: usize = parse_number(digits)
        .map_err(|_| "expected a size such as 65536, 64KiB or 1MiB".to_owned())?;
    let multiplier = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1024,
        "m" | "mb" | "mib" => 1024 * 1024,
        "g" | "gb" | "gib" => 1024 * 1024 * 1024,
        _ => return Err("expected a size such as 65536, 64KiB, 1MiB or 2GiB".into()),
    };
    number
        .checked_mul(multiplier)
        .ok_or_else(|| "size too large".to_owned())
}

/// Parses a size in bytes or `auto`.
pub fn parse_buffer(text: &str) -> Result<Option<usize>, String> {
    match text.trim() {
        "auto" => Ok(None),
        other => parse_size(other)
            .map(Some)
            .map_err(|e| format!("{e}, or auto")),
    }
}

fn parse_heartbeat(text: &str) -> Result<HeartbeatMode, String> {
    match text.trim() {
        "negotiated" => Ok(HeartbeatMode::Negotiated),
        "required" => Ok(HeartbeatMode::Required),
        "off" => Ok(HeartbeatMode::Off),
        _ => Err("expected negotiated, required or off".into()),
    }
}

fn parse_overflow(text: &str) -> Result<Overflow, String> {
    match text.trim() {
        "backpressure" => Ok(Overflow::Backpressure),
        "drop-newest" => Ok(Overflow::DropNewest),
        "drop-oldest" => Ok(Overflow::DropOldest),
        _ => Err("expected backpressure, drop-newest or drop-oldest".into()),
    }
}

fn parse_sink(text: &str) -> Result<SinkSpec, String> {
    match text.trim() {
        "stdout" => Ok(SinkSpec::Stdout),
        "jetstream" => Ok(SinkSpec::JetStream),
        other => match other.strip_prefix("file:") {
            Some(path) if !path.is_empty() => Ok(SinkSpec::File(PathBuf::from(path))),
            _ => Err("expected stdout, file:PATH or jetstream".into()),
        },
    }
}

fn parse_fsync(text: &str) -> Result<FsyncMode, String> {
    match text.trim() {
        "always" => Ok(FsyncMode::Always),
        "batch" => Ok(FsyncMode::Batch),
        "never" => Ok(FsyncMode::Never),
        _ => Err("expected always, batch or never".into()),
    }
}

/// Parses an address or `off`.
fn parse_admin(text: &str) -> Result<Option<SocketAddr>, String> {
    match text.trim() {
        "off" => Ok(None),
        other => other
            .parse()
            .map(Some)
            .map_err(|_| "expected an address such as 127.0.0.1:9464, or off".into()),
    }
}

/// Parses a path or `off`.
fn parse_optional_path(text: &str) -> Result<Option<PathBuf>, String> {
    match text.trim() {
        "off" | "" => Ok(None),
        other => Ok(Some(PathBuf::from(other))),
    }
}

/// Parses `auth`: `required` or `optional`.
fn parse_auth(text: &str) -> Result<bool, String> {
    match text.trim() {
        "required" => Ok(true),
        "optional" => Ok(false),
        _ => Err("expected required or optional".into()),
    }
}

/// Parses a size in bytes or `off`.
fn parse_optional_size(text: &str) -> Result<Option<u64>, String> {
    match text.trim() {
        "off" => Ok(None),
        other => parse_size(other)
            .map(|n| Some(n as u64))
            .map_err(|e| format!("{e}, or off")),
    }
}

/// Parses a count or `off`.
fn parse_optional_count(text: &str) -> Result<Option<usize>, String> {
    match text.trim() {
        "off" => Ok(None),
        other => parse_number(other)
            .map(Some)
            .map_err(|e| format!("{e}, or off")),
    }
}

/// Parses a text or `off`.
fn parse_optional_text(text: &str) -> Result<Option<String>, String> {
    match text.trim() {
        "off" | "" => Ok(None),
        other => Ok(Some(other.to_owned())),
    }
}

/// Parses a name or `auto`.
fn parse_auto_name(text: &str) -> Result<Option<String>, String> {
    match text.trim() {
        "auto" => Ok(None),
        other => nats::check_gateway_name(other).map(|()| Some(other.to_owned())),
    }
}

/// Parses `text` or `json`.
pub fn parse_log_format(text: &str) -> Result<LogFormat, String> {
    match text.trim() {
        "text" => Ok(LogFormat::Text),
        "json" => Ok(LogFormat::Json),
        _ => Err("expected text or json".into()),
    }
}

/// Parses `error`, `warn`, `info`, `debug`, `trace` or `off`.
pub fn parse_log_level(text: &str) -> Result<LevelFilter, String> {
    text.trim()
        .parse()
        .map_err(|_| "expected error, warn, info, debug, trace or off".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flags(pairs: &[(&str, &str)]) -> Settings {
        let mut s = Settings::default();
        for (k, v) in pairs {
            s.set_flag(k, *v).unwrap();
        }
        s
    }

    #[test]
    fn a_stated_bound_is_spent_as_half_idle_and_many_short_probes() {
        let split = |secs| Keepalive::for_bound(Duration::from_secs(secs)).unwrap();
        let s = Duration::from_secs;
        assert_eq!(
            split(60),
            Config::default().keepalive,
            "the default is the 60 s split"
        );
        assert_eq!(
            split(60),
            Keepalive {
                idle: s(30),
                interval: s(1),
                count: 30
            }
        );
        assert_eq!(
            split(2),
            Keepalive {
                idle: s(1),
                interval: s(1),
                count: 1
            }
        );
        assert_eq!(
            split(11),
            Keepalive {
                idle: s(5),
                interval: s(1),
                count: 6
            }
        );
        assert_eq!(
            split(600),
            Keepalive {
                idle: s(300),
                interval: s(10),
                count: 30
            }
        );
        // Never above the bound, whatever the rounding.
        for secs in 2..2000 {
            let ka = split(secs);
            assert!(ka.bound() <= s(secs), "{secs}: {ka:?}");
            assert!(
                ka.bound() + ka.interval > s(secs),
                "{secs}: {ka:?} wastes the bound"
            );
            assert!(ka.count >= 1 && u64::from(ka.count) <= SPLIT_PROBES);
        }
        for bad in ["1s", "1500ms", "0s"] {
            let err = Config::from_settings(&flags(&[("keepalive_bound", bad)])).unwrap_err();
            assert_eq!(err.key(), Some("keepalive_bound"), "{bad}: {err}");
        }
    }

    #[test]
    fn keepalive_bound_chooses_the_split_and_refuses_a_different_one_beside_it() {
        let config = Config::from_settings(&flags(&[("keepalive_bound", "20s")])).unwrap();
        assert_eq!(config.keepalive.bound(), Duration::from_secs(20));
        assert_eq!(config.keepalive.interval, Duration::from_secs(1));
        assert_eq!(
            config.effective_user_timeout(),
            Some(Duration::from_secs(20))
        );
        // What --print-config writes reads back as the same configuration.
        let again = Config::from_settings(
            &Settings::from_toml_str(&config.to_toml(), Path::new("x.toml")).unwrap(),
        )
        .unwrap();
        assert_eq!(again, config);
        let agreeing = flags(&[("keepalive_bound", "20s"), ("keepalive_idle", "10s")]);
        assert_eq!(Config::from_settings(&agreeing).unwrap(), config);
        let err = Config::from_settings(&flags(&[
            ("keepalive_bound", "20s"),
            ("keepalive_interval", "5s"),
        ]))
        .unwrap_err();
        assert_eq!(err.key(), Some("keepalive_bound"));
        assert!(err.to_string().contains("not both"), "{err}");
    }

    #[test]
    fn flags_win_over_env_and_env_over_file() {
        let file = Settings::from_toml_str(
            "keepalive_idle = \"40s\"\nkeepalive_interval = \"7s\"\nqueue = 10\n",
            Path::new("x.toml"),
        )
        .unwrap();
        let env = Settings::from_vars([
            ("CONNWARDEN_KEEPALIVE_IDLE".into(), "50s".into()),
            ("CONNWARDEN_QUEUE".into(), "20".into()),
            ("PATH".into(), "/bin".into()),
        ])
        .unwrap();
        let cli = flags(&[("queue", "30")]);
        let config = Config::from_settings(&file.merge(env).merge(cli)).unwrap();
        assert_eq!(config.keepalive.idle, Duration::from_secs(50));
        assert_eq!(config.keepalive.interval, Duration::from_secs(7));
        assert_eq!(config.queue, 30);
    }

    #[test]
    fn invalid_value_names_key_and_origin() {
        let err = Config::from_settings(&flags(&[("keepalive_idle", "soon")])).unwrap_err();
        let text = err.to_string();
        assert_eq!(err.key(), Some("keepalive_idle"));
        assert!(text.contains("--keepalive-idle"), "{text}");
        let env = Settings::from_vars([("CONNWARDEN_QUEUE".into(), "many".into())]).unwrap();
        let text = Config::from_settings(&env).unwrap_err().to_string();
        assert!(text.contains("CONNWARDEN_QUEUE"), "{text}");
    }

    #[test]
    fn contradictions_are_refused() {
        let cases: &[(&[(&str, &str)], &str)] = &[
            (&[("queue", "0")], "queue"),
            (
                &[("heartbeat_interval", "30s"), ("idle_timeout", "30s")],
                "heartbeat_interval",
            ),
            (
                &[("user_timeout", "5s"), ("keepalive_interval", "10s")],
                "user_timeout",
            ),
            (&[("keepalive_count", "0")], "keepalive_count"),
            (&[("max_connections", "0")], "max_connections"),
        ];
        for (pairs, key) in cases {
            let err = Config::from_settings(&flags(pairs)).unwrap_err();
            assert_eq!(err.key(), Some(*key), "{err}");
        }
    }

    #[test]
    fn unknown_file_key_is_an_error() {
        let err =
            Settings::from_toml_str("keepalive_idel = \"3s\"", Path::new("c.toml")).unwrap_err();
        assert_eq!(err.key(), Some("keepalive_idel"));
    }

    #[test]
    fn printed_config_parses_back_to_the_same() {
        let config = Config::from_settings(&flags(&[
            ("listen", "127.0.0.1:1"),
            ("listen", "[::1]:2"),
            ("sink", "file:/tmp/x.ndjson"),
            ("max_age", "1h"),
            ("user_timeout", "90s"),
            ("recv_buffer", "64KiB"),
        ]))
        .unwrap();
        assert_eq!(config.listen.len(), 2);
        let text = config.to_toml();
        let again =
            Config::from_settings(&Settings::from_toml_str(&text, Path::new("p.toml")).unwrap())
                .unwrap();
        assert_eq!(config, again);
        let defaults = Config::default().to_toml();
        let again = Config::from_settings(
            &Settings::from_toml_str(&defaults, Path::new("d.toml")).unwrap(),
        )
        .unwrap();
        assert_eq!(Config::default(), again);
    }

    #[test]
    fn auto_user_timeout_is_the_keepalive_bound() {
        let config = Config::default();
        assert_eq!(
            config.effective_user_timeout(),
            Some(Duration::from_secs(60))
        );
    }

    /// The refusal a build without the feature gives, for `pairs` set.
    #[cfg(any(not(feature = "admin"), not(feature = "tls"), not(feature = "nats")))]
    fn refusal(pairs: &[(&str, &str)]) -> String {
        Config::from_settings(&flags(pairs))
            .expect_err("a key of a missing feature is refused")
            .to_string()
    }

    #[cfg(not(feature = "admin"))]
    #[test]
    fn without_the_admin_feature_the_admin_api_is_off_and_cannot_be_set() {
        assert_eq!(Config::default().admin, None);
        assert_eq!(
            refusal(&[("admin", "127.0.0.1:9464")]),
            "admin needs connwarden built with the \"admin\" feature"
        );
        assert!(Config::from_settings(&flags(&[("admin", "off")])).is_ok());
    }

    #[cfg(not(feature = "tls"))]
    #[test]
    fn without_the_tls_feature_a_certificate_is_refused_by_name() {
        assert_eq!(
            refusal(&[("tls_cert", "/tmp/tls.crt"), ("tls_key", "/tmp/tls.key")]),
            "tls_cert needs connwarden built with the \"tls\" feature"
        );
    }

    #[cfg(not(feature = "nats"))]
    #[test]
    fn without_the_nats_feature_nats_and_its_sink_are_refused_by_name() {
        assert_eq!(
            refusal(&[("nats_url", "nats://127.0.0.1:4222")]),
            "nats_url needs connwarden built with the \"nats\" feature"
        );
        assert_eq!(
            refusal(&[("sink", "jetstream")]),
            "sink needs connwarden built with the \"nats\" feature"
        );
    }

    #[test]
    fn sizes_and_durations_parse() {
        assert_eq!(parse_size("64KiB"), Ok(65536));
        assert_eq!(parse_size("2m"), Ok(2 * 1024 * 1024));
        assert!(parse_size("12 parsecs").is_err());
        assert_eq!(parse_duration("1m 30s"), Ok(Duration::from_secs(90)));
        assert!(parse_duration("30").is_err());
    }
}
