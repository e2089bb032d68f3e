//! NATS: the one connection a gateway keeps, shared by the JetStream sink
//! ([`crate::sink::JetStreamSink`]) and the cluster-wide registry ([`registry`]), and the
//! commands' side of that registry ([`cluster`]: `conns --nats`, `kick GATEWAY/ID --nats`).
//!
//! Everything here goes through `async-nats`, the official client: reconnects, the server list
//! a cluster announces, TLS and credentials are its work, not ours.

pub mod cluster;
pub mod registry;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use async_nats::{Client, ConnectOptions, Event};

use crate::config::{Key, NatsConfig};
use crate::metrics::Metrics;

/// Why NATS could not be used.
#[derive(Debug, thiserror::Error)]
pub enum NatsError {
    /// A credentials, token or password file cannot be read.
    #[error("cannot read {what} {path}")]
    ReadFile {
        /// Which setting.
        what: &'static str,
        /// The file.
        path: PathBuf,
        #[source]
        /// Why.
        source: std::io::Error,
    },
    /// No server answered.
    #[error("cannot connect to NATS at {urls}")]
    Connect {
        /// The servers tried.
        urls: String,
        #[source]
        /// The client's answer.
        source: async_nats::ConnectError,
    },
    /// A server URL does not parse.
    #[error("NATS server URL {url:?} is not valid: {reason}")]
    Url {
        /// The URL as given.
        url: String,
        /// Why.
        reason: String,
    },
    /// TLS to NATS is not in this build (macOS: see the README's platform table).
    #[error("TLS to NATS is not available on this platform's build (no crypto provider)")]
    NoTls,
    /// A JetStream request failed (stream or bucket set-up, a registry request).
    #[error("{what}: {detail}")]
    JetStream {
        /// What was being done.
        what: String,
        /// The server's or the client's answer.
        detail: String,
    },
}

/// The options every connection of ours uses: name, credentials, TLS, and reconnecting for
/// ever once connected (a gateway must outlive a NATS restart).
pub async fn options(config: &NatsConfig, name: &str) -> Result<ConnectOptions, NatsError> {
    let mut options = ConnectOptions::new()
        .name(name)
        .max_reconnects(None)
        .connection_timeout(Duration::from_secs(5))
        // Bounded waits between reconnects: a NATS restart is noticed within a second.
        .reconnect_delay_callback(|attempts| {
            Duration::from_millis((50u64 << attempts.min(4)).min(1000))
        });
    if let Some(path) = &config.creds {
        options = options
            .credentials_file(path)
            .await
            .map_err(|source| read_error(Key::NatsCreds.name(), path, source))?;
    }
    if let Some(path) = &config.token_file {
        options = options.token(read_secret(Key::NatsTokenFile.name(), path)?);
    }
    if let (Some(user), Some(path)) = (&config.user, &config.password_file) {
        options = options.user_and_password(
            user.clone(),
            read_secret(Key::NatsPasswordFile.name(), path)?,
        );
    }
    let tls_url = config.urls.iter().any(|u| u.starts_with("tls://"));
    if config.tls_ca.is_some() || config.tls_cert.is_some() || tls_url {
        if cfg!(target_vendor = "apple") {
            return Err(NatsError::NoTls);
        }
        options = options.require_tls(true);
        if let Some(ca) = &config.tls_ca {
            options = options.add_root_certificates(ca.clone());
        }
        if let (Some(cert), Some(key)) = (&config.tls_cert, &config.tls_key) {
            options = options.add_client_certificate(cert.clone(), key.clone());
        }
    }
    Ok(options)
}

/// Connects to `config.urls` as `name`. Connection changes are logged and, with `metrics`,
/// counted (`nats_connected`, `nats_reconnects_total`, and `/readyz`).
pub async fn connect(
    config: &NatsConfig,
    name: &str,
    metrics: Option<Arc<Metrics>>,
) -> Result<Client, NatsError> {
    let urls = config.urls.join(",");
    let servers = servers(config)?;
    let events = metrics.clone();
    let options = options(config, name).await?.event_callback(move |event| {
        let metrics = events.clone();
        async move { on_event(event, metrics.as_deref()) }
    });
    let client = options
        .connect(servers)
        .await
        .map_err(|source| NatsError::Connect {
            urls: urls.clone(),
            source,
        })?;
    if let Some(metrics) = metrics {
        metrics.nats_connection(true);
    }
    let info = client.server_info();
    tracing::info!(server = %info.server_name, version = %info.version, max_payload = info.max_payload, "connected to NATS");
    Ok(client)
}

/// Connects, retrying with backoff until a server answers: a gateway started before its NATS
/// cluster waits for it (not ready meanwhile) rather than exiting.
pub async fn connect_patiently(
    config: &NatsConfig,
    name: &str,
    metrics: Arc<Metrics>,
) -> Result<Client, NatsError> {
    let mut delay = Duration::from_millis(100);
    loop {
        match connect(config, name, Some(Arc::clone(&metrics))).await {
            Ok(client) => return Ok(client),
            Err(NatsError::Connect { urls, source }) => {
                metrics.nats_connection(false);
                tracing::warn!(urls = %urls, error = %source, retry_in_ms = delay.as_millis() as u64, "cannot reach NATS; retrying");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(5));
            }
            Err(other) => return Err(other),
        }
    }
}

/// The configured server URLs, parsed.
pub fn servers(config: &NatsConfig) -> Result<Vec<async_nats::ServerAddr>, NatsError> {
    config
        .urls
        .iter()
        .map(|url| {
            url.parse().map_err(|e: std::io::Error| NatsError::Url {
                url: url.clone(),
                reason: e.to_string(),
            })
        })
        .collect()
}

fn on_event(event: Event, metrics: Option<&Metrics>) {
    match event {
        Event::Connected => {
            tracing::info!("NATS connected");
            if let Some(metrics) = metrics {
                metrics.nats_connection(true);
            }
        }
        Event::Disconnected => {
            tracing::warn!("NATS connection lost; reconnecting");
            if let Some(metrics) = metrics {
                metrics.nats_connection(false);
            }
        }
        Event::LameDuckMode => tracing::warn!("the NATS server is entering lame duck mode"),
        Event::SlowConsumer(sid) => tracing::warn!(sid, "NATS slow consumer"),
        Event::ServerError(error) => tracing::warn!(error = %error, "NATS server error"),
        Event::ClientError(error) => tracing::warn!(error = %error, "NATS client error"),
        Event::Draining | Event::Closed => tracing::debug!(event = %event, "NATS connection"),
    }
}

fn read_error(what: &'static str, path: &Path, source: std::io::Error) -> NatsError {
    NatsError::ReadFile {
        what,
        path: path.to_owned(),
        source,
    }
}

/// The one line of a secret file, without surrounding whitespace.
fn read_secret(what: &'static str, path: &Path) -> Result<String, NatsError> {
    std::fs::read_to_string(path)
        .map(|text| text.trim().to_owned())
        .map_err(|source| read_error(what, path, source))
}
