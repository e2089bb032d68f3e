//! The table of configuration keys: each key declared once, with its field, how its value is
//! read and written, its flag's value name, how a reload treats it and its documentation.
//!
//! Everything else is made from this table: the TOML key (`keepalive_idle`), the environment
//! variable (`CONNWARDEN_KEEPALIVE_IDLE`), the flag and its help (`--keepalive-idle`),
//! `--print-config`, what a reload may change ([`Reload`]) and the reference table of
//! docs/CONFIGURATION.md (checked against [`reference`] by a test). A new key is one row here,
//! plus its field in [`Config`] and its default.
//!
//! Written as a `macro_rules!` table rather than with a crate: a derive on [`Config`]
//! (`serde`, `clap`, `figment`) would need the struct's shape to be the file's shape, while
//! several keys live in nested parts (`keepalive.idle`, `sink_rotation.size`, `nats.urls`),
//! some read in their own words (`auth = "required"` is a `bool`), and every error must name
//! where its value came from, which the layers of [`super::Settings`] keep. The macro only
//! turns each row into match arms; the parsing and printing are ordinary functions
//! (`super::values`).

use std::fmt;
use std::str::FromStr;

use super::values::*;
use super::{nats, Config, ConfigError, Origin};

/// How a reload (`SIGHUP`, [`crate::reload`]) treats a key.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Reload {
    /// Put in force at once, for every open connection and for the server.
    EveryConnection,
    /// Put in force for the connections accepted after the reload: an open connection keeps
    /// what its `hello` answer announced.
    NewConnections,
    /// Needs a restart: a reload that changes it keeps the old value and logs the refusal.
    Restart,
}

impl Reload {
    /// Whether a reload puts a new value in force (for some connections at least).
    pub fn is_live(self) -> bool {
        self != Reload::Restart
    }

    /// How the reference table says it.
    pub fn as_str(self) -> &'static str {
        match self {
            Reload::EveryConnection => "every connection",
            Reload::NewConnections => "new connections",
            Reload::Restart => "restart",
        }
    }
}

/// Declares the keys: `Variant name [field.path] arity parse, show, "VALUE NAME", Reload;`
/// under the key's documentation. `arity` is `one` (a single value) or `many` (a list: the
/// flag repeats, the environment variable splits on commas, the file takes an array); `parse`
/// turns the text (or the texts, for `many`) into the field's value, `show` writes the field as
/// TOML.
macro_rules! keys {
    ($(
        $(#[doc = $doc:literal])+
        $variant:ident $name:ident [$($field:ident).+] $arity:ident
            $parse:path, $show:path, $value_name:literal, $reload:ident;
    )+) => {
        /// A configuration key, as the file spells it ([`Key::name`]); the table of every key
        /// is docs/CONFIGURATION.md.
        ///
        /// ```
        /// use connwarden::config::{Key, Reload};
        ///
        /// let key: Key = "keepalive_idle".parse().unwrap();
        /// assert_eq!(key, Key::KeepaliveIdle);
        /// assert_eq!(key.flag(), "--keepalive-idle");
        /// assert_eq!(key.env_var(), "CONNWARDEN_KEEPALIVE_IDLE");
        /// assert_eq!(key.reload(), Reload::EveryConnection);
        /// ```
        #[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
        #[non_exhaustive]
        pub enum Key {
            $( $(#[doc = $doc])+ $variant, )+
        }

        /// Every key's name, in the order `--print-config` prints them.
        pub const KEYS: &[&str] = &[$(stringify!($name)),+];

        impl Key {
            /// Every key, in the order `--print-config` prints them.
            pub const ALL: &'static [Key] = &[$(Key::$variant),+];

            /// The key as the file spells it: `keepalive_idle`.
            pub fn name(self) -> &'static str {
                match self { $(Key::$variant => stringify!($name),)+ }
            }

            /// The flag's value name in `--help`: `DURATION`, `N|off`.
            pub fn value_name(self) -> &'static str {
                match self { $(Key::$variant => $value_name,)+ }
            }

            /// How a reload treats the key.
            pub fn reload(self) -> Reload {
                match self { $(Key::$variant => Reload::$reload,)+ }
            }

            /// Whether the key takes several values.
            pub fn takes_list(self) -> bool {
                match self { $(Key::$variant => keys!(@list $arity),)+ }
            }

            fn doc_lines(self) -> &'static [&'static str] {
                match self { $(Key::$variant => &[$($doc),+],)+ }
            }
        }

        impl Config {
            /// Sets `key` from its textual value(s), naming the key, the value and `origin` if
            /// they do not parse.
            pub(super) fn set_key(
                &mut self,
                key: Key,
                values: &[String],
                origin: &Origin,
            ) -> Result<(), ConfigError> {
                match key {
                    $(Key::$variant => {
                        self.$($field).+ = keys!(@parse $arity $parse, key, values, origin)
                    })+
                }
                Ok(())
            }

            /// `key`'s value as the file writes it (TOML): what `--print-config` prints and
            /// what a reload compares.
            ///
            /// ```
            /// use connwarden::config::{Config, Key};
            ///
            /// assert_eq!(Config::default().value_of(Key::KeepaliveIdle), "\"30s\"");
            /// ```
            pub fn value_of(&self, key: Key) -> String {
                match key { $(Key::$variant => $show(&self.$($field).+),)+ }
            }

            /// Gives `key` the value it has in `other`.
            #[allow(clippy::clone_on_copy)]
            pub(crate) fn take_key(&mut self, other: &Config, key: Key) {
                match key {
                    $(Key::$variant => self.$($field).+ = other.$($field).+.clone(),)+
                }
            }
        }
    };
    (@list one) => { false };
    (@list many) => { true };
    (@parse one $parse:path, $key:ident, $values:ident, $origin:ident) => {{
        let value = single_value($key, $values, $origin)?;
        $parse(value).map_err(|reason: String| invalid($key, value, $origin, &reason))?
    }};
    (@parse many $parse:path, $key:ident, $values:ident, $origin:ident) => {
        $parse($values)
            .map_err(|reason: String| invalid($key, &$values.join(","), $origin, &reason))?
    };
}

keys! {
    /// addresses to listen on (repeatable flag)
    Listen listen [listen] many parse_listen, show_addresses, "ADDR", Restart;
    /// `SO_REUSEPORT`, so several processes can share one port
    ReusePort reuse_port [reuse_port] one parse_bool, show_bool, "BOOL", Restart;
    /// accept queue length passed to `listen(2)` (the kernel caps it at `somaxconn`)
    Backlog backlog [backlog] one parse_number, show_number, "N", Restart;
    /// `SO_RCVBUF` in bytes (`64KiB`); `auto` keeps kernel autotuning
    RecvBuffer recv_buffer [recv_buffer] one parse_buffer, show_buffer, "SIZE", Restart;
    /// `SO_SNDBUF` in bytes (`64KiB`); `auto` keeps kernel autotuning
    SendBuffer send_buffer [send_buffer] one parse_buffer, show_buffer, "SIZE", Restart;
    /// the dead-peer bound itself (whole seconds, 2 s or more): connwarden chooses idle = half the bound and the rest in up to 30 probes at least 1 s apart (`60s`: 30 s + 1 s × 30); then the three keys of the split (idle, interval, count) may be left out, and if set must agree
    KeepaliveBound keepalive_bound [keepalive_bound] one parse_optional_duration, show_optional_duration, "DURATION|off", EveryConnection;
    /// `TCP_KEEPIDLE`: silence before the first probe, under common NAT timeouts
    KeepaliveIdle keepalive_idle [keepalive.idle] one parse_duration, show_duration, "DURATION", EveryConnection;
    /// `TCP_KEEPINTVL`: time between probes; a lost probe is not retransmitted, so many short retries (30 × 1 s) survive loss that a few long ones (3 × 10 s) do not, for the same bound
    KeepaliveInterval keepalive_interval [keepalive.interval] one parse_duration, show_duration, "DURATION", EveryConnection;
    /// `TCP_KEEPCNT`: unanswered probes before the kernel gives up
    KeepaliveCount keepalive_count [keepalive.count] one parse_number, show_number, "N", EveryConnection;
    /// `TCP_USER_TIMEOUT`: `auto` = idle + interval × count, a duration, or `off`
    UserTimeout user_timeout [user_timeout] one parse_user_timeout, show_user_timeout, "auto|off|DURATION", EveryConnection;
    /// each accepted connection's first keep-alive idle shortened by a phase spread evenly over the idle period, so that connections accepted together do not probe together; then the idle is put back (never later than `keepalive_idle`)
    KeepaliveSpread keepalive_spread [keepalive_spread] one parse_bool, show_bool, "BOOL", NewConnections;
    /// `TCP_NODELAY`: acks and pings leave at once
    Nodelay nodelay [nodelay] one parse_bool, show_bool, "BOOL", EveryConnection;
    /// `negotiated` (clients that sent `hello`), `required` (every client) or `off`
    Heartbeat heartbeat [heartbeat] one parse_heartbeat, show_heartbeat, "MODE", NewConnections;
    /// inbound silence after which the server sends `ping` (a connection's first ping up to 90 % sooner, spread over connections so that those accepted together do not ping together; the close after `heartbeat_misses` intervals never comes sooner)
    HeartbeatInterval heartbeat_interval [heartbeat_interval] one parse_duration, show_duration, "DURATION", NewConnections;
    /// silent intervals after which the connection is closed (1 to 1000)
    HeartbeatMisses heartbeat_misses [heartbeat_misses] one parse_number, show_number, "N", NewConnections;
    /// close a connection with no inbound byte for this long
    IdleTimeout idle_timeout [idle_timeout] one parse_optional_duration, show_optional_duration, "DURATION", EveryConnection;
    /// a connection silent this long with nothing pending (no partial object, output or unanswered item) leaves its task and waits in a compact slot, watched by one epoll set per worker, until bytes, a deadline, a kick or a shutdown wake it (Linux, plain TCP; about a third of an idle connection's memory); `off` keeps every connection a task
    ParkAfter park_after [park_after] one parse_optional_duration, show_optional_duration, "DURATION|off", EveryConnection;
    /// close a peer that accepts no byte of pending output for this long
    WriteTimeout write_timeout [write_timeout] one parse_duration, show_duration, "DURATION", EveryConnection;
    /// send `max_age` to a connection this old, then close it after `max_age_grace`
    MaxAge max_age [max_age] one parse_optional_duration, show_optional_duration, "DURATION", EveryConnection;
    /// time a connection past `max_age` has to finish
    MaxAgeGrace max_age_grace [max_age_grace] one parse_duration, show_duration, "DURATION", EveryConnection;
    /// live connections; beyond it a new peer gets `server_full`
    MaxConnections max_connections [max_connections] one parse_number, show_number, "N", EveryConnection;
    /// live connections from one IPv4 address or one IPv6 /64; beyond it a new peer from there gets `too_many_connections` (off by default: fleets behind one NAT address share it)
    MaxConnectionsPerIp max_connections_per_ip [max_connections_per_ip] one parse_optional_count, show_optional_number, "N|off", EveryConnection;
    /// a `hello` whose `client_id` a live connection holds supersedes it: the old connection closes at once (`superseded`), as a client that reconnected while its old connection still looked alive needs; with client authentication only a connection authenticated under the same name may; `false` lets both live
    Takeover takeover [takeover] one parse_bool, show_bool, "BOOL", NewConnections;
    /// a client whose connections closed this many times within this window is listed as flapping (admin API `/flapping`, the live page, `connwarden_flapping_clients`): `N/DURATION` (`10/5m`), counted by `client_id`, by address for clients without one; or `off`
    FlapThreshold flap_threshold [flap_threshold] one parse_flap_threshold, show_flap_threshold, "N/DURATION|off", EveryConnection;
    /// read a PROXY protocol header (`v1`, `v2` or `any`) before anything else on the data listener, as a load balancer sends it: the address it carries is the peer everywhere (records, logs, limits, the admin API); `off` takes the socket's peer
    ProxyProtocol proxy_protocol [proxy_protocol] one parse_proxy_protocol, show_proxy_protocol, "off|v1|v2|any", NewConnections;
    /// networks allowed to send a PROXY protocol header (repeatable, or comma-separated: `10.0.0.0/8`); required while `proxy_protocol` is on, and a connection from elsewhere is closed (`proxy_untrusted`)
    ProxyTrusted proxy_trusted [proxy_trusted] many parse_networks, show_networks, "CIDR", NewConnections;
    /// largest JSON object; a larger one closes the connection (`frame_too_large`)
    MaxFrame max_frame [max_frame] one parse_size, show_number, "SIZE", NewConnections;
    /// an object that has begun must end within this, or the connection closes (`frame_timeout`): a peer sending a byte at a time cannot hold it; or `off`
    FrameTimeout frame_timeout [frame_timeout] one parse_optional_duration, show_optional_duration, "DURATION|off", EveryConnection;
    /// bytes of partial objects held across all connections; beyond it the connections holding the most are closed (`memory_pressure`) until it fits; at least `max_frame`, or `off`
    MaxBuffered max_buffered [max_buffered] one parse_optional_size, show_optional_number, "SIZE|off", EveryConnection;
    /// bad items a connection may send before it is closed (`protocol_error`)
    ErrorBudget error_budget [error_budget] one parse_number, show_number, "N", EveryConnection;
    /// acks and errors waiting for one connection; when full, its reading pauses
    MaxPendingReplies max_pending_replies [max_pending_replies] one parse_number, show_number, "N", NewConnections;
    /// items between the connections and the sink
    Queue queue [queue] one parse_number, show_number, "N", Restart;
    /// full queue: `backpressure`, `drop-newest` or `drop-oldest`
    Overflow overflow [overflow] one parse_overflow, show_overflow, "POLICY", Restart;
    /// `stdout` or `file:PATH` (NDJSON, appended)
    Sink sink [sink] one parse_sink, show_sink, "SINK", Restart;
    /// when a `file:` sink's acks wait for `fsync`: `batch` (group commit: one `fsync` covers every batch written while the previous one ran; writing goes on meanwhile), `always` (each batch is synced before the next is written) or `never` (ack once the kernel has the bytes; synced at shutdown)
    Fsync fsync [fsync] one parse_fsync, show_fsync, "MODE", Restart;
    /// a `file:` sink is rotated at the first batch after it reaches this size: renamed to `PATH.<UTC time>`, a new `PATH` opened
    SinkRotateSize sink_rotate_size [sink_rotation.size] one parse_optional_size, show_optional_number, "SIZE|off", Restart;
    /// a `file:` sink is rotated at the first batch this long after it was opened
    SinkRotateInterval sink_rotate_interval [sink_rotation.interval] one parse_optional_duration, show_optional_duration, "DURATION|off", Restart;
    /// rotated files kept (the oldest beyond it are deleted), or `off` to keep them all
    SinkKeep sink_keep [sink_rotation.keep] one parse_optional_count, show_optional_number, "N|off", Restart;
    /// time from SIGINT/SIGTERM to exit, queue drain included
    ShutdownGrace shutdown_grace [shutdown_grace] one parse_duration, show_duration, "DURATION", EveryConnection;
    /// at an upgrade (`SIGUSR2`), how long the new process has to take the listeners and report ready; past it, the old one goes on serving
    UpgradeTimeout upgrade_timeout [upgrade_timeout] one parse_duration, show_duration, "DURATION", EveryConnection;
    /// at an upgrade, the window in which connections that cannot move (TLS) are asked to reconnect, each client at a random moment inside it
    GoawayWindow goaway_window [goaway_window] one parse_duration, show_duration, "DURATION", EveryConnection;
    /// `text` or `json`
    LogFormat log_format [log_format] one parse_log_format, show_log_format, "FORMAT", Restart;
    /// least severe level logged: `error`, `warn`, `info`, `debug`, `trace` or `off` (`RUST_LOG`, when set, wins with its own directives)
    LogLevel log_level [log_level] one parse_log_level, show_log_level, "LEVEL", EveryConnection;
    /// address of the admin API and `/metrics` (never a data port), or `off` (the default without the `admin` feature)
    Admin admin [admin] one parse_admin, show_admin, "ADDR|off", Restart;
    /// file holding the admin API"s bearer token; without it the API is open to whoever reaches its address
    AdminTokenFile admin_token_file [admin_token_file] one parse_optional_path, show_optional_path, "PATH", Restart;
    /// PEM certificate chain of the data listener: with `tls_key`, clients must speak TLS (1.2 or 1.3). The files are read again at every reload; their paths need a restart
    TlsCert tls_cert [tls_cert] one parse_optional_path, show_optional_path, "FILE|off", Restart;
    /// PEM private key of `tls_cert`
    TlsKey tls_key [tls_key] one parse_optional_path, show_optional_path, "FILE|off", Restart;
    /// PEM file of the CA whose certificates clients must present (mutual TLS); the subject of each client's certificate is its authenticated name
    TlsClientCa tls_client_ca [tls_client_ca] one parse_optional_path, show_optional_path, "FILE|off", Restart;
    /// file of client tokens, one per line, `token` or `name:token`; a `hello` carrying one authenticates its connection under that name. Read again at every reload
    AuthTokens auth_tokens [auth_tokens] one parse_optional_path, show_optional_path, "FILE|off", Restart;
    /// `required`: a connection must authenticate (client certificate or token) before its first item and within `auth_timeout`, or is closed (`unauthorized`); `optional`: names are recorded when given
    Auth auth [auth_required] one parse_auth, show_auth, "required|optional", Restart;
    /// with `auth = "required"`, time from accept to a valid `hello`
    AuthTimeout auth_timeout [auth_timeout] one parse_duration, show_duration, "DURATION", EveryConnection;
    /// a TLS handshake must finish within this, or the connection closes (`handshake_timeout`): from accept, or, with `max_handshakes`, from the handshake's turn (a client that sends nothing is closed this long after accept either way)
    HandshakeTimeout handshake_timeout [handshake_timeout] one parse_duration, show_duration, "DURATION", EveryConnection;
    /// TLS handshakes run at once, in the order their clients' first bytes came; the others wait their turn (within `handshake_timeout`) without a key exchange made for them, so that a reconnect storm's handshakes end in turn instead of all late; or `off`
    MaxHandshakes max_handshakes [max_handshakes] one parse_optional_count, show_optional_number, "N|off", Restart;
    /// closed connections kept for `GET /closed` (0 keeps none)
    ClosedHistory closed_history [closed_history] one parse_number, show_number, "N", EveryConnection;
    /// this gateway's name in NATS subjects and the cluster-wide registry; `auto` is the host name and the first listen port (`host-7000`)
    GatewayName gateway_name [gateway_name] one parse_auto_name, show_auto_name, "NAME", Restart;
    /// NATS servers (repeatable, or comma-separated): needed by `sink = "jetstream"`, and enough on its own for the cluster-wide registry
    NatsUrl nats_url [nats.urls] many nats::parse_urls, show_texts, "URL", Restart;
    /// JetStream stream of the items, created if missing with the settings below
    NatsStream nats_stream [nats.stream] one nats::parse_stream_name, show_text, "NAME", Restart;
    /// subject of each record; `{gateway}` is replaced by `gateway_name`
    NatsSubject nats_subject [nats.subject] one nats::parse_subject_template, show_text, "SUBJECT", Restart;
    /// replicas of a stream created by connwarden (3 in a 3-node cluster)
    NatsReplicas nats_replicas [nats.replicas] one parse_number, show_number, "N", Restart;
    /// how long JetStream remembers message ids: a resend within it is stored once
    NatsDuplicateWindow nats_duplicate_window [nats.duplicate_window] one parse_duration, show_duration, "DURATION", Restart;
    /// oldest message a created stream keeps, or `off`
    NatsMaxAge nats_max_age [nats.max_age] one parse_optional_duration, show_optional_duration, "DURATION", Restart;
    /// largest size of a created stream; when full, publishes are refused and retried (nothing is evicted unread)
    NatsMaxBytes nats_max_bytes [nats.max_bytes] one parse_optional_size, show_optional_number, "SIZE", Restart;
    /// records the JetStream sink holds not yet stored, at most (half of it is the flow asked of the server); when full, the sink waits
    NatsWindow nats_window [nats.window] one parse_number, show_number, "N", Restart;
    /// longest silence from JetStream while an answer is due; then the batch is published again
    NatsPublishTimeout nats_publish_timeout [nats.publish_timeout] one parse_duration, show_duration, "DURATION", Restart;
    /// NATS credentials file (JWT and nkey seed)
    NatsCreds nats_creds [nats.creds] one parse_optional_path, show_optional_path, "PATH", Restart;
    /// file holding a NATS token
    NatsTokenFile nats_token_file [nats.token_file] one parse_optional_path, show_optional_path, "PATH", Restart;
    /// NATS user, with the file holding its password
    NatsUser nats_user [nats.user] one parse_optional_text, show_optional_text, "USER", Restart;
    /// file holding the password of the NATS user
    NatsPasswordFile nats_password_file [nats.password_file] one parse_optional_path, show_optional_path, "PATH", Restart;
    /// CA certificate for TLS to NATS (TLS is also used for `tls://` URLs)
    NatsTlsCa nats_tls_ca [nats.tls_ca] one parse_optional_path, show_optional_path, "PATH", Restart;
    /// client certificate for TLS to NATS, with its key
    NatsTlsCert nats_tls_cert [nats.tls_cert] one parse_optional_path, show_optional_path, "PATH", Restart;
    /// key of the client certificate for TLS to NATS
    NatsTlsKey nats_tls_key [nats.tls_key] one parse_optional_path, show_optional_path, "PATH", Restart;
    /// subject prefix of the cluster-wide registry (its gateway list is the KV bucket named after it)
    NatsRegistry nats_registry [nats.registry] one nats::parse_subject_prefix, show_text, "PREFIX", Restart;
}

impl Key {
    /// The key's documentation, as one line.
    pub fn doc(self) -> String {
        self.doc_lines()
            .iter()
            .map(|line| line.trim())
            .collect::<Vec<_>>()
            .join(" ")
    }

    /// The command-line flag: `--keepalive-idle`.
    pub fn flag(self) -> String {
        format!("--{}", self.name().replace('_', "-"))
    }

    /// The environment variable: `CONNWARDEN_KEEPALIVE_IDLE`.
    pub fn env_var(self) -> String {
        format!("{}{}", super::ENV_PREFIX, self.name().to_ascii_uppercase())
    }

    /// The key named `name` as the file spells it.
    pub fn from_name(name: &str) -> Option<Key> {
        Key::ALL.iter().copied().find(|key| key.name() == name)
    }

    /// The default as `--help` and the reference table show it: the TOML value without its
    /// quotes (`30s`, `off`, `["0.0.0.0:7000"]`).
    pub fn default_text(self) -> String {
        let value = defaults().value_of(self);
        match value.strip_prefix('"').and_then(|v| v.strip_suffix('"')) {
            Some(bare) => bare.to_owned(),
            None => value,
        }
    }
}

/// The defaults, built once: the help of every flag and every row of the reference print one
/// of them.
pub(super) fn defaults() -> &'static Config {
    static DEFAULTS: std::sync::OnceLock<Config> = std::sync::OnceLock::new();
    DEFAULTS.get_or_init(Config::default)
}

impl fmt::Display for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A name that is no configuration key.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("unknown configuration key {0:?}")]
pub struct UnknownKeyName(pub String);

impl FromStr for Key {
    type Err = UnknownKeyName;

    fn from_str(name: &str) -> Result<Key, UnknownKeyName> {
        Key::from_name(name).ok_or_else(|| UnknownKeyName(name.to_owned()))
    }
}

/// The reference table of every key (Markdown): its default in this build, how a reload
/// treats it, what it means. docs/CONFIGURATION.md holds it between two markers, and a test
/// checks that it is this.
pub fn reference() -> String {
    let mut table = String::from("| key | default | reload | meaning |\n|---|---|---|---|\n");
    for key in Key::ALL {
        table.push_str(&format!(
            "| `{}` | `{}` | {} | {} |\n",
            key.name(),
            key.default_text(),
            key.reload().as_str(),
            key.doc().replace('|', "\\|"),
        ));
    }
    table
}

fn single_value<'v>(
    key: Key,
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

fn invalid(key: Key, value: &str, origin: &Origin, reason: &str) -> ConfigError {
    ConfigError::InvalidValue {
        key,
        value: value.to_owned(),
        origin: origin.clone(),
        reason: reason.to_owned(),
    }
}
