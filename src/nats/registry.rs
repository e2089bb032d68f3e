//! The cluster-wide registry, gateway side: each gateway announces itself in a KV bucket and
//! answers requests about its connections, so that `connwarden conns --nats` and `kick
//! GATEWAY/ID --nats` work from any machine.
//!
//! Why both: a KV entry per *gateway* (a heartbeat every [`HEARTBEAT`], expiring after
//! [`GATEWAY_TTL`]) tells which gateways exist, so one that does not answer is reported missing
//! rather than silently left out; the connection lists are asked for (scatter-gather, one
//! request per gateway), so they cost nothing until someone asks. A KV entry per *connection*
//! would cost one replicated write per connect and per close (thousands a second on a busy
//! gateway) and still be stale by the time it is read; docs/SCALE-OUT.md has the figures.
//!
//! | subject (prefix `connwarden.registry`) | request payload | reply |
//! |---|---|---|
//! | `PREFIX.GATEWAY.conns` | the `GET /connections` parameters, as a JSON array of `[name, value]` | a [`Page`] of [`Connection`]s |
//! | `PREFIX.GATEWAY.closed` | the `GET /closed` parameters, the same way | a [`Page`] of [`Closed`] |
//! | `PREFIX.GATEWAY.kick` | the connection id | the [`Connection`] kicked |
//!
//! An error is answered with the admin API's [`ErrorBody`]. A page holds at most
//! [`MAX_PAGE`] entries, so that a reply stays under NATS's `max_payload` (1 MiB by default).

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use async_nats::jetstream::{self, kv};
use async_nats::{Client, Message};
use bytes::Bytes;
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use super::NatsError;
use crate::config::Config;
use crate::registry::Registry;
use crate::view::listing::{ClosedQuery, ConnQuery};
use crate::view::{self, Closed, Connection, ErrorBody, ErrorDetail, Page};

/// Time between two announcements of a gateway.
pub const HEARTBEAT: Duration = Duration::from_secs(2);
/// Time after its last announcement that a gateway's entry expires: until then, a gateway that
/// does not answer is reported missing.
pub const GATEWAY_TTL: Duration = Duration::from_secs(30);
/// Most entries in one reply.
pub const MAX_PAGE: usize = 1000;

/// What a gateway announces of itself.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GatewayInfo {
    /// Its name (`gateway_name`).
    pub name: String,
    /// connwarden's version.
    pub version: String,
    /// Its data listeners.
    pub listen: Vec<String>,
    /// When it started (RFC 3339).
    pub started_at: String,
    /// Live connections at the last announcement.
    pub connections: usize,
}

/// The KV bucket of the gateway list: the prefix with `_` for `.`.
pub fn bucket_name(prefix: &str) -> String {
    prefix.replace('.', "_")
}

/// The subject of `verb` on `gateway`.
pub fn subject(prefix: &str, gateway: &str, verb: &str) -> String {
    format!("{prefix}.{gateway}.{verb}")
}

/// Announces this gateway and answers registry requests until `stop`; then withdraws it from
/// the gateway list (a gateway that stopped cleanly is gone, not missing).
pub async fn serve(
    client: Client,
    config: Config,
    registry: Registry,
    stop: CancellationToken,
) -> Result<(), NatsError> {
    let gateway = config.gateway_name();
    let prefix = config.nats.registry.clone();
    let store = gateway_bucket(&client, &config.nats.registry, config.nats.replicas).await?;
    let requests = client
        .subscribe(format!("{prefix}.{gateway}.*"))
        .await
        .map_err(|e| js_error("subscribe to the registry subjects", e))?;
    let started_at = view::timestamp(SystemTime::now());
    let listen: Vec<String> = config.listen.iter().map(|a| a.to_string()).collect();
    let max_payload = client.server_info().max_payload;
    tracing::info!(gateway = %gateway, prefix = %prefix, "answering cluster-wide registry requests");
    let announce = {
        let (store, registry, gateway) = (store.clone(), registry.clone(), gateway.clone());
        let stop = stop.clone();
        tokio::spawn(async move {
            let mut every = tokio::time::interval(HEARTBEAT);
            every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = every.tick() => {}
                    _ = stop.cancelled() => return,
                }
                let info = GatewayInfo {
                    name: gateway.clone(),
                    version: env!("CARGO_PKG_VERSION").into(),
                    listen: listen.clone(),
                    started_at: started_at.clone(),
                    connections: registry.len(),
                };
                let value = Bytes::from(serde_json::to_vec(&info).unwrap_or_default());
                if let Err(error) = store.put(&gateway, value).await {
                    tracing::warn!(error = %error, "cannot announce this gateway in the registry bucket");
                }
            }
        })
    };
    let answering = Arc::new(Answering {
        client: client.clone(),
        registry,
        max_payload,
    });
    let mut requests = std::pin::pin!(requests.take_until(stop.cancelled_owned()));
    while let Some(message) = requests.next().await {
        let answering = Arc::clone(&answering);
        tokio::spawn(async move { answering.answer(message).await });
    }
    let _ = announce.await;
    if let Err(error) = store.delete(&gateway).await {
        tracing::warn!(error = %error, "cannot withdraw this gateway from the registry bucket");
    }
    Ok(())
}

/// Opens the gateway list's bucket, creating it if missing.
pub async fn gateway_bucket(
    client: &Client,
    prefix: &str,
    replicas: usize,
) -> Result<kv::Store, NatsError> {
    let js = jetstream::new(client.clone());
    let bucket = bucket_name(prefix);
    let mut delay = Duration::from_millis(200);
    for attempt in 0.. {
        match js.get_key_value(&bucket).await {
            Ok(store) => return Ok(store),
            Err(error) if attempt >= 20 => {
                return Err(js_error(&format!("open KV bucket {bucket}"), error))
            }
            Err(_) => {}
        }
        let created = js
            .create_key_value(kv::Config {
                bucket: bucket.clone(),
                description: "connwarden gateways (cluster-wide registry)".into(),
                history: 1,
                max_age: GATEWAY_TTL,
                storage: jetstream::stream::StorageType::Memory,
                num_replicas: replicas,
                ..Default::default()
            })
            .await;
        match created {
            Ok(store) => return Ok(store),
            Err(error) => {
                tracing::debug!(bucket = %bucket, error = %error, "creating the registry bucket; retrying");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(3));
            }
        }
    }
    unreachable!("the loop returns")
}

struct Answering {
    client: Client,
    registry: Registry,
    max_payload: usize,
}

impl Answering {
    async fn answer(&self, message: Message) {
        let Some(reply) = message.reply.clone() else {
            return;
        };
        let verb = message
            .subject
            .rsplit('.')
            .next()
            .unwrap_or_default()
            .to_owned();
        let body = match self.handle(&verb, &message.payload).await {
            Ok(body) if body.len() > self.max_payload => error_body(
                "too_large",
                format!(
                    "the reply would be {} bytes, above max_payload ({}): ask for fewer entries (limit)",
                    body.len(),
                    self.max_payload
                ),
            ),
            Ok(body) => body,
            Err(detail) => serde_json::to_vec(&ErrorBody { error: detail }).unwrap_or_default(),
        };
        if let Err(error) = self.client.publish(reply, Bytes::from(body)).await {
            tracing::warn!(error = %error, "cannot answer a registry request");
        }
    }

    async fn handle(&self, verb: &str, payload: &[u8]) -> Result<Vec<u8>, ErrorDetail> {
        let registry = self.registry.clone();
        match verb {
            "conns" => {
                let query = ConnQuery::parse(pairs(payload)?).map_err(bad_request)?;
                page_limit(query.paging.limit)?;
                off_the_runtime(move || serde_json::to_vec(&query.run(&registry))).await
            }
            "closed" => {
                let query = ClosedQuery::parse(pairs(payload)?).map_err(bad_request)?;
                page_limit(query.paging.limit)?;
                off_the_runtime(move || serde_json::to_vec(&query.run(&registry))).await
            }
            "kick" => {
                let id: u64 = std::str::from_utf8(payload)
                    .ok()
                    .and_then(|t| t.trim().parse().ok())
                    .ok_or_else(|| detail("bad_request", "expected a connection id"))?;
                let kicked = crate::view::kick(&registry, id, "cluster-wide registry")
                    .await
                    .ok_or_else(|| {
                        detail(
                            "not_found",
                            format!("no live connection {id} on this gateway"),
                        )
                    })?;
                serde_json::to_vec(&kicked.view).map_err(internal)
            }
            other => Err(detail(
                "not_found",
                format!("no registry request {other:?}: conns, closed or kick"),
            )),
        }
    }
}

/// The query's `[name, value]` pairs.
fn pairs(payload: &[u8]) -> Result<Vec<(String, String)>, ErrorDetail> {
    if payload.is_empty() {
        return Ok(Vec::new());
    }
    serde_json::from_slice(payload).map_err(|e| {
        detail(
            "bad_request",
            format!("expected a JSON array of [name, value] pairs: {e}"),
        )
    })
}

fn page_limit(limit: usize) -> Result<(), ErrorDetail> {
    if limit > MAX_PAGE {
        return Err(detail(
            "bad_request",
            format!("limit={limit}: at most {MAX_PAGE} entries per reply; page with offset"),
        ));
    }
    Ok(())
}

async fn off_the_runtime(
    work: impl FnOnce() -> serde_json::Result<Vec<u8>> + Send + 'static,
) -> Result<Vec<u8>, ErrorDetail> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(internal)?
        .map_err(internal)
}

fn detail(code: &str, message: impl Into<String>) -> ErrorDetail {
    ErrorDetail {
        code: code.into(),
        message: message.into(),
    }
}

fn error_body(code: &str, message: String) -> Vec<u8> {
    serde_json::to_vec(&ErrorBody {
        error: detail(code, message),
    })
    .unwrap_or_default()
}

fn bad_request(error: crate::view::listing::BadParameter) -> ErrorDetail {
    detail("bad_request", error.0)
}

fn internal(error: impl std::fmt::Display) -> ErrorDetail {
    detail("internal", error.to_string())
}

fn js_error(what: &str, error: impl std::fmt::Display) -> NatsError {
    NatsError::JetStream {
        what: what.into(),
        detail: error.to_string(),
    }
}

/// Types of the replies, for the requesting side.
pub type ConnPage = Page<Connection>;
/// A page of closes.
pub type ClosedPage = Page<Closed>;
