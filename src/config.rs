//! One validated [`Config`], built from layers: embedded defaults < TOML file < `CONNWARDEN_*`
//! environment variables < command-line flags.
//!
//! Every key has one spelling in three forms: `keepalive_idle` in the file, `CONNWARDEN_KEEPALIVE_IDLE`
//! in the environment, `--keepalive-idle` on the command line. Each key is declared once, in the
//! table of `keys.rs` ([`Key`]): the three spellings, the flag's help, `--print-config`, the
//! reload class ([`Reload`]) and the reference below all come from it. Values travel as text
//! through the layers ([`Settings`]) and are parsed once, here, so that an error names the key,
//! the value and where it came from ([`Origin`]), before anything listens. Durations are written
//! `30s`, `2m`, `1h`, `500ms`.
//!
//! The defaults are production values (`connwarden serve --print-config` prints the effective
//! values). Which keys a reload (`SIGHUP`) changes while the server runs is the `reload`
//! column: [`crate::reload`] says how.
//!
#![doc = include_str!("../docs/CONFIGURATION.md")]

mod keys;
mod nats;
mod settings;
mod validate;
mod values;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use tracing::level_filters::LevelFilter;

pub use keys::{reference, Key, Reload, UnknownKeyName, KEYS};
pub use nats::{parse_urls as parse_nats_urls, NatsConfig};
pub use settings::{Origin, Settings};
pub use values::{
    parse_bool, parse_buffer, parse_duration, parse_log_format, parse_log_level,
    parse_optional_duration, parse_size, parse_user_timeout,
};

/// TLS handshakes run at once by default (docs/BENCHMARKS.md, "A reconnect storm").
pub const DEFAULT_MAX_HANDSHAKES: usize = 1024;

/// Prefix of the environment variables read by [`Settings::from_env`].
pub const ENV_PREFIX: &str = "CONNWARDEN_";

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
pub(crate) const MAX_KEEPALIVE_SECS: u64 = 32_767;
/// Linux caps `TCP_KEEPCNT` at this many probes (`MAX_TCP_KEEPCNT`).
pub(crate) const MAX_KEEPALIVE_COUNT: u32 = 127;

/// A configuration error. Each names the key and, where it has one, where the value came from.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{key} = {value:?} ({origin}): {reason}")]
    /// A value that does not parse.
    InvalidValue {
        /// The key.
        key: Key,
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
    #[error("{key} = {value} ({origin}): {reason}")]
    /// Values that parse but break a rule (a range, or another key they contradict); `key` is
    /// the one to change.
    Contradiction {
        /// The key to change.
        key: Key,
        /// Its value, as the file writes it.
        value: String,
        /// Where the value came from.
        origin: Origin,
        /// The rule, and what contradicts what.
        reason: String,
    },
    #[error("{key}: {reason}")]
    /// A value that parses but names something that cannot be used (a certificate file).
    Unusable {
        /// The key.
        key: Key,
        /// Why.
        reason: String,
    },
    #[error("{key} ({origin}) needs connwarden built with the \"{feature}\" feature")]
    /// A value that needs a part this build leaves out (a Cargo feature: README, "Features").
    NotBuilt {
        /// The key.
        key: Key,
        /// The feature it needs: `admin`, `tls` or `nats`.
        feature: &'static str,
        /// Where the value came from.
        origin: Origin,
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
            | ConfigError::NotBuilt { key, .. } => Some(key.name()),
            ConfigError::UnknownKey { key, .. } => Some(key),
            ConfigError::ReadFile { .. } | ConfigError::ParseFile { .. } => None,
        }
    }
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

/// Which PROXY protocol header the data listener reads before anything else, as a load
/// balancer in front of it (HAProxy, AWS NLB, Envoy) sends it to tell the client's address.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ProxyProtocol {
    /// No header: the socket's peer is the client.
    #[default]
    Off,
    /// The text header (`PROXY TCP4 203.0.113.7 10.0.0.1 4567 7000\r\n`).
    V1,
    /// The binary header.
    V2,
    /// Either, told apart by their first bytes.
    Any,
}

impl ProxyProtocol {
    /// The spelling in flags and files.
    pub fn as_str(self) -> &'static str {
        match self {
            ProxyProtocol::Off => "off",
            ProxyProtocol::V1 => "v1",
            ProxyProtocol::V2 => "v2",
            ProxyProtocol::Any => "any",
        }
    }
}

/// When a client counts as flapping: this many closes of its connections within this long.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FlapThreshold {
    /// Closes, at least 2.
    pub closes: u32,
    /// The window they fall in.
    pub within: Duration,
}

/// As the file writes it: `10/5m`.
impl std::fmt::Display for FlapThreshold {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}/{}",
            self.closes,
            humantime::format_duration(self.within)
        )
    }
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
    /// Silence after which a connection with nothing pending is parked outside its task
    /// (`crate::conn`'s `park`); `None` is off.
    pub park_after: Option<Duration>,
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
    /// A `hello` whose `client_id` a live connection holds supersedes that connection.
    pub takeover: bool,
    /// When a client (by `client_id`, else by address) counts as flapping; `None` is off.
    pub flap_threshold: Option<FlapThreshold>,
    /// The PROXY protocol header read before anything else on the data listener.
    pub proxy_protocol: ProxyProtocol,
    /// The networks allowed to send a PROXY protocol header (the load balancers); a
    /// connection from elsewhere is refused while `proxy_protocol` is on.
    pub proxy_trusted: Vec<ipnet::IpNet>,
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
    /// Longest TLS handshake: from accept, or from its turn with `max_handshakes`.
    pub handshake_timeout: Duration,
    /// TLS handshakes run at once; the others wait their turn. `None` is no bound.
    pub max_handshakes: Option<usize>,
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
            park_after: Some(Duration::from_secs(5)),
            write_timeout: Duration::from_secs(30),
            max_age: None,
            max_age_grace: Duration::from_secs(30),
            max_connections: 10_000,
            max_connections_per_ip: None,
            takeover: true,
            flap_threshold: Some(FlapThreshold {
                closes: 10,
                within: Duration::from_secs(300),
            }),
            proxy_protocol: ProxyProtocol::Off,
            proxy_trusted: Vec::new(),
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
            max_handshakes: Some(DEFAULT_MAX_HANDSHAKES),
            closed_history: DEFAULT_CLOSED_HISTORY,
            gateway_name: None,
            nats: NatsConfig::default(),
        }
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

    /// Applies `settings` over the defaults and validates the result. An error names the key
    /// and where its value came from (the file, the variable, the flag, or the default).
    pub fn from_settings(settings: &Settings) -> Result<Config, ConfigError> {
        let mut config = Config::default();
        for (key, values, origin) in settings.iter() {
            config.set_key(key, values, origin)?;
        }
        config.split_the_bound(settings);
        validate::check(&config, |key| settings.origin(key))?;
        Ok(config)
    }

    /// A stated bound chooses the split; keys of the split set beside it must agree with it
    /// (checked by `validate`), so that nothing set is silently overridden.
    fn split_the_bound(&mut self, settings: &Settings) {
        let Some(split) = self
            .keepalive_bound
            .and_then(|bound| Keepalive::for_bound(bound).ok())
        else {
            return;
        };
        if !settings.is_set(Key::KeepaliveIdle) {
            self.keepalive.idle = split.idle;
        }
        if !settings.is_set(Key::KeepaliveInterval) {
            self.keepalive.interval = split.interval;
        }
        if !settings.is_set(Key::KeepaliveCount) {
            self.keepalive.count = split.count;
        }
    }

    /// The effective user timeout, `None` when off.
    pub fn effective_user_timeout(&self) -> Option<Duration> {
        self.user_timeout.resolve(&self.keepalive)
    }

    /// Checks the rules beyond each value parsing: ranges, and keys that contradict each other.
    /// A value that equals its default is named as the default's; any other as set by the
    /// program ([`Origin::Code`]), since a `Config` built in code does not record where its
    /// values came from ([`Config::from_settings`] names the file, variable or flag).
    pub fn validate(&self) -> Result<(), ConfigError> {
        validate::check(self, |key| validate::guessed_origin(self, key))
    }

    /// This gateway's name: `gateway_name`, or the host name and the first listen port, in the
    /// characters a NATS subject token allows (`web-1-7000`).
    pub fn gateway_name(&self) -> String {
        match &self.gateway_name {
            Some(name) => name.clone(),
            None => nats::default_gateway_name(self.listen.first().map_or(0, |a| a.port())),
        }
    }

    /// The effective configuration as TOML, in the form the file accepts.
    pub fn to_toml(&self) -> String {
        self.key_values()
            .iter()
            .map(|(k, v)| format!("{k} = {v}\n"))
            .collect()
    }

    /// Every key with its value as the file writes it (TOML), in the order of [`Key::ALL`]: what
    /// `--print-config` prints.
    pub fn key_values(&self) -> Vec<(Key, String)> {
        Key::ALL
            .iter()
            .map(|&key| (key, self.value_of(key)))
            .collect()
    }
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
    fn a_broken_rule_names_the_key_its_value_and_where_it_came_from() {
        let refusal =
            |settings: &Settings| Config::from_settings(settings).unwrap_err().to_string();
        let file = Settings::from_toml_str("queue = 0\n", Path::new("/etc/cw.toml")).unwrap();
        assert_eq!(
            refusal(&file),
            "queue = 0 (from /etc/cw.toml): must be at least 1: a queue of 0 could never take an item"
        );
        let env = Settings::from_vars([("CONNWARDEN_QUEUE".into(), "0".into())]).unwrap();
        assert!(
            refusal(&env).starts_with("queue = 0 (from environment variable CONNWARDEN_QUEUE): "),
            "{}",
            refusal(&env)
        );
        let flag = flags(&[("queue", "0")]);
        assert!(
            refusal(&flag).starts_with("queue = 0 (from flag --queue): "),
            "{}",
            refusal(&flag)
        );
        // The key to change may be one nobody set: its value is then the default's.
        let default = flags(&[("tls_cert", "/tmp/cert.pem")]);
        if cfg!(feature = "tls") {
            assert_eq!(
                refusal(&default),
                "tls_key = \"off\" (default): TLS needs both tls_cert and tls_key"
            );
        }
        // A configuration built in code: a value other than the default's is the program's.
        let coded = Config {
            queue: 0,
            ..Config::default()
        };
        let text = coded.validate().unwrap_err().to_string();
        assert!(
            text.starts_with("queue = 0 (set by the program): "),
            "{text}"
        );
    }

    /// The lines of one reference table missing from the other.
    #[cfg(feature = "admin")]
    fn missing_rows<'a>(documented: &str, declared: &'a str) -> Vec<&'a str> {
        declared
            .lines()
            .filter(|row| !documented.lines().any(|line| line == *row))
            .collect()
    }

    /// The reference documents the default build (without the `admin` feature, `admin`
    /// defaults to `off`).
    #[cfg(feature = "admin")]
    #[test]
    fn the_reference_in_the_docs_is_the_declaration_of_the_keys() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/CONFIGURATION.md");
        let doc = std::fs::read_to_string(&path).unwrap();
        let (begin, end) = ("<!-- keys:begin -->\n", "<!-- keys:end -->");
        let start = doc.find(begin).expect("the begin marker") + begin.len();
        let stop = doc.find(end).expect("the end marker");
        let declared = reference();
        if std::env::var_os("CW_BLESS").is_some() {
            let written = format!("{}{declared}{}", &doc[..start], &doc[stop..]);
            std::fs::write(&path, written).unwrap();
            return;
        }
        let documented = &doc[start..stop];
        assert_eq!(
            missing_rows(documented, &declared),
            Vec::<&str>::new(),
            "docs/CONFIGURATION.md lacks these rows: CW_BLESS=1 cargo test --lib config:: writes it anew"
        );
        assert_eq!(
            documented, declared,
            "docs/CONFIGURATION.md holds rows no key declares, or another order"
        );
        // And the check finds a key left out of the docs.
        let row = declared
            .lines()
            .find(|row| row.contains("`max_pending_replies`"))
            .unwrap();
        let without = declared.replace(&format!("{row}\n"), "");
        assert_eq!(missing_rows(&without, &declared), vec![row]);
    }

    #[test]
    fn every_key_has_its_three_spellings_its_help_and_its_reload_class() {
        assert_eq!(Key::ALL.len(), KEYS.len());
        for (&key, &name) in Key::ALL.iter().zip(KEYS) {
            assert_eq!(key.name(), name);
            assert_eq!(name.parse::<Key>(), Ok(key));
            assert_eq!(key.flag(), format!("--{}", name.replace('_', "-")));
            assert_eq!(key.env_var(), format!("CONNWARDEN_{}", name.to_uppercase()));
            assert!(
                !key.doc().is_empty() && !key.value_name().is_empty(),
                "{name}"
            );
            // Set through each layer, the key reads back as the same value.
            let printed = Config::default().value_of(key);
            let file =
                Settings::from_toml_str(&format!("{name} = {printed}\n"), Path::new("k.toml"))
                    .unwrap();
            let config = Config::from_settings(&file);
            assert!(
                config.is_ok() || matches!(config, Err(ConfigError::NotBuilt { .. })),
                "{name} = {printed}: {config:?}"
            );
        }
        assert!("keepalive_idel".parse::<Key>().is_err());
        let live: Vec<&str> = Key::ALL
            .iter()
            .filter(|key| key.reload() == Reload::NewConnections)
            .map(|key| key.name())
            .collect();
        assert_eq!(
            live,
            [
                "keepalive_spread",
                "heartbeat",
                "heartbeat_interval",
                "heartbeat_misses",
                "takeover",
                "proxy_protocol",
                "proxy_trusted",
                "max_frame",
                "max_pending_replies"
            ]
        );
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
            "admin (from flag --admin) needs connwarden built with the \"admin\" feature"
        );
        assert!(Config::from_settings(&flags(&[("admin", "off")])).is_ok());
    }

    #[cfg(not(feature = "tls"))]
    #[test]
    fn without_the_tls_feature_a_certificate_is_refused_by_name() {
        assert_eq!(
            refusal(&[("tls_cert", "/tmp/tls.crt"), ("tls_key", "/tmp/tls.key")]),
            "tls_cert (from flag --tls-cert) needs connwarden built with the \"tls\" feature"
        );
    }

    #[cfg(not(feature = "nats"))]
    #[test]
    fn without_the_nats_feature_nats_and_its_sink_are_refused_by_name() {
        assert_eq!(
            refusal(&[("nats_url", "nats://127.0.0.1:4222")]),
            "nats_url (from flag --nats-url) needs connwarden built with the \"nats\" feature"
        );
        assert_eq!(
            refusal(&[("sink", "jetstream")]),
            "sink (from flag --sink) needs connwarden built with the \"nats\" feature"
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
