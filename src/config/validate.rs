//! The rules a configuration must keep beyond each value parsing: ranges, and keys that
//! contradict each other. Each group of rules is one function; the first rule broken is the
//! refusal, naming the key to change.

use std::time::Duration;

use super::{
    nats, Config, ConfigError, FsyncMode, HeartbeatMode, Keepalive, Key, Origin, ProxyProtocol,
    SinkSpec, UserTimeout, MAX_FRAME_TIMEOUT, MAX_HEARTBEAT_MISSES, MAX_KEEPALIVE_COUNT,
    MAX_KEEPALIVE_SECS,
};

/// A broken rule: the key to change and why.
type Broken = (Key, String);

/// Checks every rule; the error names the key and its value, with where it came from as
/// `origin_of` says.
pub(super) fn check(config: &Config, origin_of: impl Fn(Key) -> Origin) -> Result<(), ConfigError> {
    let refused = |(key, reason): Broken| ConfigError::Contradiction {
        key,
        value: config.value_of(key),
        origin: origin_of(key),
        reason,
    };
    if let Some((key, feature)) = missing_feature(config) {
        return Err(ConfigError::NotBuilt {
            key,
            feature,
            origin: origin_of(key),
        });
    }
    limits(config)
        .and_then(|()| tls_and_auth(config))
        .and_then(|()| proxy_protocol(config))
        .and_then(|()| rotation(config))
        .and_then(|()| keepalive(config))
        .and_then(|()| heartbeat(config))
        .and_then(|()| deadlines_and_admin(config))
        .and_then(|()| sink_and_nats(config))
        .map_err(refused)
}

/// Where a value came from when nothing recorded it: the default when it is the default's,
/// else set by the program that built the [`Config`].
pub(super) fn guessed_origin(config: &Config, key: Key) -> Origin {
    if config.value_of(key) == super::keys::defaults().value_of(key) {
        Origin::Default
    } else {
        Origin::Code
    }
}

fn broken(key: Key, reason: impl Into<String>) -> Result<(), Broken> {
    Err((key, reason.into()))
}

/// A value that needs a Cargo feature this build was made without, and that feature: the keys
/// stay known in every build, so a file written for the daemon is refused by name, not as a
/// typo.
fn missing_feature(config: &Config) -> Option<(Key, &'static str)> {
    let built = [
        ("admin", cfg!(feature = "admin")),
        ("tls", cfg!(feature = "tls")),
        ("nats", cfg!(feature = "nats")),
    ];
    let needs = [
        (Key::Admin, "admin", config.admin.is_some()),
        (
            Key::AdminTokenFile,
            "admin",
            config.admin_token_file.is_some(),
        ),
        (Key::TlsCert, "tls", config.tls_cert.is_some()),
        (Key::TlsKey, "tls", config.tls_key.is_some()),
        (Key::TlsClientCa, "tls", config.tls_client_ca.is_some()),
        (Key::NatsUrl, "nats", config.nats.enabled()),
        (Key::Sink, "nats", config.sink == SinkSpec::JetStream),
    ];
    needs
        .into_iter()
        .find(|&(_, feature, set)| set && !built.contains(&(feature, true)))
        .map(|(key, feature, _)| (key, feature))
}

fn limits(config: &Config) -> Result<(), Broken> {
    if config.listen.is_empty() {
        return broken(Key::Listen, "at least one address is needed");
    }
    if config.queue == 0 {
        return broken(
            Key::Queue,
            "must be at least 1: a queue of 0 could never take an item",
        );
    }
    if config.max_connections == 0 {
        return broken(Key::MaxConnections, "must be at least 1");
    }
    if config
        .frame_timeout
        .is_some_and(|t| t.is_zero() || t > MAX_FRAME_TIMEOUT)
    {
        return broken(
            Key::FrameTimeout,
            "must be above 0 and at most 1 day, or off",
        );
    }
    if config.max_connections_per_ip == Some(0) {
        return broken(Key::MaxConnectionsPerIp, "must be at least 1, or off");
    }
    if config.max_frame < 16 || config.max_frame > crate::protocol::MAX_FRAME_LIMIT {
        return broken(Key::MaxFrame, "must be between 16 bytes and 1 GiB");
    }
    if config
        .max_buffered
        .is_some_and(|budget| budget < config.max_frame as u64)
    {
        return broken(
            Key::MaxBuffered,
            format!(
                "must be at least max_frame ({} bytes): one object may need that much, or off",
                config.max_frame
            ),
        );
    }
    if config.max_pending_replies == 0 {
        return broken(Key::MaxPendingReplies, "must be at least 1");
    }
    Ok(())
}

fn tls_and_auth(config: &Config) -> Result<(), Broken> {
    if config.tls_cert.is_some() != config.tls_key.is_some() {
        let missing = if config.tls_cert.is_some() {
            Key::TlsKey
        } else {
            Key::TlsCert
        };
        return broken(missing, "TLS needs both tls_cert and tls_key");
    }
    if config.tls_client_ca.is_some() && config.tls_cert.is_none() {
        return broken(
            Key::TlsClientCa,
            "client certificates need TLS: set tls_cert and tls_key",
        );
    }
    if config.auth_required && config.tls_client_ca.is_none() && config.auth_tokens.is_none() {
        return broken(
            Key::Auth,
            "required authentication needs auth_tokens or tls_client_ca",
        );
    }
    if config.auth_timeout.is_zero() {
        return broken(Key::AuthTimeout, "must be above 0");
    }
    if config.max_handshakes == Some(0) {
        return broken(Key::MaxHandshakes, "must be at least 1, or off");
    }
    if config.handshake_timeout.is_zero() {
        return broken(Key::HandshakeTimeout, "must be above 0");
    }
    Ok(())
}

fn proxy_protocol(config: &Config) -> Result<(), Broken> {
    if config.proxy_protocol != ProxyProtocol::Off && config.proxy_trusted.is_empty() {
        return broken(
            Key::ProxyTrusted,
            format!(
                "proxy_protocol = \"{}\" needs the networks of the load balancers allowed to send the header (any peer could otherwise claim any address)",
                config.proxy_protocol.as_str()
            ),
        );
    }
    Ok(())
}

fn rotation(config: &Config) -> Result<(), Broken> {
    let rotation = &config.sink_rotation;
    if !rotation.enabled() && rotation.keep.is_none() {
        return Ok(());
    }
    if !matches!(config.sink, SinkSpec::File(_)) {
        let key = if rotation.size.is_some() {
            Key::SinkRotateSize
        } else if rotation.interval.is_some() {
            Key::SinkRotateInterval
        } else {
            Key::SinkKeep
        };
        return broken(key, "applies to a file: sink only");
    }
    if rotation.size.is_some_and(|size| size < 1024) {
        return broken(Key::SinkRotateSize, "must be at least 1KiB");
    }
    if rotation
        .interval
        .is_some_and(|i| i < Duration::from_secs(1))
    {
        return broken(Key::SinkRotateInterval, "must be at least 1s");
    }
    if rotation.keep == Some(0) {
        return broken(Key::SinkKeep, "must be at least 1, or off");
    }
    Ok(())
}

fn keepalive(config: &Config) -> Result<(), Broken> {
    let ka = &config.keepalive;
    if let Some(bound) = config.keepalive_bound {
        split_agrees(bound, ka)?;
    }
    let whole_seconds =
        format!("must be 1s to {MAX_KEEPALIVE_SECS}s (the kernel counts whole seconds)");
    let in_range = |d: Duration| d >= Duration::from_secs(1) && d.as_secs() <= MAX_KEEPALIVE_SECS;
    if !in_range(ka.idle) {
        return broken(Key::KeepaliveIdle, whole_seconds);
    }
    if !in_range(ka.interval) {
        return broken(Key::KeepaliveInterval, whole_seconds);
    }
    if ka.count == 0 || ka.count > MAX_KEEPALIVE_COUNT {
        return broken(
            Key::KeepaliveCount,
            format!("must be 1 to {MAX_KEEPALIVE_COUNT}"),
        );
    }
    match config.user_timeout {
        UserTimeout::Fixed(d) if d < ka.interval => broken(
            Key::UserTimeout,
            format!(
                "{} is shorter than one keep-alive interval ({}): the kernel would drop a connection between two probes",
                humantime::format_duration(d),
                humantime::format_duration(ka.interval)
            ),
        ),
        _ => Ok(()),
    }
}

/// A stated bound and the split set beside it must be the same keep-alive.
fn split_agrees(bound: Duration, ka: &Keepalive) -> Result<(), Broken> {
    let split = Keepalive::for_bound(bound).map_err(|reason| (Key::KeepaliveBound, reason))?;
    if split == *ka {
        return Ok(());
    }
    let d = |d: Duration| humantime::format_duration(d).to_string();
    broken(
        Key::KeepaliveBound,
        format!(
            "{} chooses {} {}, {} {}, {} {}, but the keys set say {}, {}, {}: set the bound or the split, not both",
            d(bound),
            Key::KeepaliveIdle,
            d(split.idle),
            Key::KeepaliveInterval,
            d(split.interval),
            Key::KeepaliveCount,
            split.count,
            d(ka.idle),
            d(ka.interval),
            ka.count
        ),
    )
}

fn heartbeat(config: &Config) -> Result<(), Broken> {
    if config.heartbeat == HeartbeatMode::Off {
        return Ok(());
    }
    if config.heartbeat_interval.is_zero() {
        return broken(Key::HeartbeatInterval, "must be above 0");
    }
    if config.heartbeat_misses == 0 || config.heartbeat_misses > MAX_HEARTBEAT_MISSES {
        return broken(
            Key::HeartbeatMisses,
            format!("must be between 1 and {MAX_HEARTBEAT_MISSES}"),
        );
    }
    match config.idle_timeout {
        Some(idle) if config.heartbeat_interval >= idle => broken(
            Key::HeartbeatInterval,
            format!(
                "{} is at or above idle_timeout ({}): the idle timeout would close connections before the first ping",
                humantime::format_duration(config.heartbeat_interval),
                humantime::format_duration(idle)
            ),
        ),
        _ => Ok(()),
    }
}

fn deadlines_and_admin(config: &Config) -> Result<(), Broken> {
    if let Some(admin) = config.admin {
        let clash = config.listen.iter().any(|data| {
            data.port() == admin.port()
                && admin.port() != 0
                && (data.ip() == admin.ip()
                    || data.ip().is_unspecified()
                    || admin.ip().is_unspecified())
        });
        if clash {
            return broken(
                Key::Admin,
                format!(
                    "{admin} is a data port (listen); the admin API needs an address of its own"
                ),
            );
        }
    }
    if config.write_timeout.is_zero() {
        return broken(Key::WriteTimeout, "must be above 0");
    }
    if config.idle_timeout.is_some_and(|d| d.is_zero()) {
        return broken(Key::IdleTimeout, "must be above 0, or off");
    }
    if config.park_after.is_some_and(|d| d.is_zero()) {
        return broken(Key::ParkAfter, "must be above 0, or off");
    }
    if config.max_age.is_some_and(|d| d.is_zero()) {
        return broken(Key::MaxAge, "must be above 0, or off");
    }
    if let Some(name) = &config.gateway_name {
        nats::check_gateway_name(name).map_err(|reason| (Key::GatewayName, reason))?;
    }
    Ok(())
}

fn sink_and_nats(config: &Config) -> Result<(), Broken> {
    if config.sink == SinkSpec::JetStream {
        if config.nats.urls.is_empty() {
            return broken(
                Key::NatsUrl,
                "sink = \"jetstream\" needs at least one NATS server",
            );
        }
        if config.fsync == FsyncMode::Never {
            return broken(
                Key::Fsync,
                "never would ack before JetStream has the item; the jetstream sink takes always or batch",
            );
        }
    }
    nats_stream(config)?;
    nats_auth(config)?;
    let gateway = config.gateway_name();
    let subject = config.nats.subject_for(&gateway);
    nats::check_subject(&subject, false).map_err(|reason| {
        (
            Key::NatsSubject,
            format!("{subject:?} for gateway {gateway:?}: {reason}"),
        )
    })
}

fn nats_stream(config: &Config) -> Result<(), Broken> {
    let nats = &config.nats;
    if nats.replicas == 0 || nats.replicas > 5 {
        return broken(Key::NatsReplicas, "must be 1 to 5 (JetStream's limit)");
    }
    if nats.window == 0 {
        return broken(Key::NatsWindow, "must be at least 1");
    }
    if nats.publish_timeout.is_zero() {
        return broken(Key::NatsPublishTimeout, "must be above 0");
    }
    if nats.duplicate_window.is_zero() {
        return broken(
            Key::NatsDuplicateWindow,
            "must be above 0: without it a resend is stored twice",
        );
    }
    match nats.max_age {
        Some(max_age) if max_age < nats.duplicate_window => broken(
            Key::NatsDuplicateWindow,
            "must not be longer than nats_max_age",
        ),
        _ => Ok(()),
    }
}

fn nats_auth(config: &Config) -> Result<(), Broken> {
    let nats = &config.nats;
    let ways = [
        nats.creds.is_some(),
        nats.token_file.is_some(),
        nats.user.is_some(),
    ];
    if ways.iter().filter(|set| **set).count() > 1 {
        return broken(
            Key::NatsCreds,
            "nats_creds, nats_token_file and nats_user exclude each other: pick one way to authenticate",
        );
    }
    if nats.user.is_some() != nats.password_file.is_some() {
        return broken(
            Key::NatsPasswordFile,
            "nats_user and nats_password_file go together",
        );
    }
    if nats.tls_cert.is_some() != nats.tls_key.is_some() {
        return broken(
            Key::NatsTlsKey,
            "nats_tls_cert and nats_tls_key go together",
        );
    }
    Ok(())
}
