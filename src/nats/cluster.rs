//! The cluster-wide registry, asking side: the gateway list from the KV bucket, then one request
//! per gateway, in parallel, each answered within a timeout or reported missing.

use std::time::Duration;

use async_nats::jetstream::kv;
use async_nats::{Client, RequestErrorKind};
use bytes::Bytes;
use futures_util::{StreamExt, TryStreamExt};
use serde::de::DeserializeOwned;

use super::registry::{self, ClosedPage, ConnPage, GatewayInfo, MAX_PAGE};
use super::NatsError;
use crate::config::NatsConfig;
use crate::view::{Closed, Connection, ErrorBody, ErrorDetail};

/// Why a gateway gave no answer.
#[derive(Debug, thiserror::Error)]
pub enum AskError {
    /// No answer within the timeout, or nobody listening on its subjects: it is listed in the
    /// bucket (it announced itself within the last 30 s) but does not answer.
    #[error("missing: no answer within {}", humantime::format_duration(*.0))]
    Missing(Duration),
    /// It answered with an error.
    #[error("{}: {}", .0.code, .0.message)]
    Refused(ErrorDetail),
    /// The request could not be made, or the answer not read.
    #[error("{0}")]
    Failed(String),
}

/// A connection to the registry of a cluster of gateways.
pub struct Cluster {
    client: Client,
    store: kv::Store,
    prefix: String,
    timeout: Duration,
}

/// One gateway's part of a cluster-wide listing.
#[derive(Debug)]
pub struct GatewayListing<T> {
    /// The gateway as it announced itself.
    pub gateway: GatewayInfo,
    /// Its entries, or why there are none.
    pub entries: Result<Vec<T>, AskError>,
}

impl Cluster {
    /// Connects to NATS with `config`'s servers and credentials; each gateway then has `timeout`
    /// to answer a request.
    pub async fn connect(config: &NatsConfig, timeout: Duration) -> Result<Cluster, NatsError> {
        let urls = config.urls.join(",");
        let client = super::options(config, "connwarden-cli")
            .await?
            .max_reconnects(Some(0))
            .connect(super::servers(config)?)
            .await
            .map_err(|source| NatsError::Connect { urls, source })?;
        let bucket = registry::bucket_name(&config.registry);
        let store = async_nats::jetstream::new(client.clone())
            .get_key_value(&bucket)
            .await
            .map_err(|e| NatsError::JetStream {
                what: format!("open the gateway list (KV bucket {bucket}); has any gateway with nats_url run?"),
                detail: e.to_string(),
            })?;
        Ok(Cluster {
            client,
            store,
            prefix: config.registry.clone(),
            timeout,
        })
    }

    /// The gateways announced within the last [`registry::GATEWAY_TTL`], by name.
    pub async fn gateways(&self) -> Result<Vec<GatewayInfo>, NatsError> {
        let failed = |e: &dyn std::fmt::Display| NatsError::JetStream {
            what: "read the gateway list".into(),
            detail: e.to_string(),
        };
        let keys: Vec<String> = self
            .store
            .keys()
            .await
            .map_err(|e| failed(&e))?
            .try_collect()
            .await
            .map_err(|e| failed(&e))?;
        let mut gateways = Vec::with_capacity(keys.len());
        for key in keys {
            let Some(value) = self.store.get(&key).await.map_err(|e| failed(&e))? else {
                continue;
            };
            match serde_json::from_slice::<GatewayInfo>(&value) {
                Ok(info) => gateways.push(info),
                Err(error) => {
                    tracing::warn!(key = %key, error = %error, "unreadable gateway entry")
                }
            }
        }
        gateways.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(gateways)
    }

    /// Every gateway's live connections matching `query` (the `GET /connections` parameters
    /// without `limit` and `offset`), each gateway read page by page.
    pub async fn connections(
        &self,
        query: &[(String, String)],
    ) -> Result<Vec<GatewayListing<Connection>>, NatsError> {
        self.list(query, "conns", |page: ConnPage| (page.total, page.items))
            .await
    }

    /// Every gateway's recent closes matching `query`, each up to `limit`.
    pub async fn closed(
        &self,
        query: &[(String, String)],
    ) -> Result<Vec<GatewayListing<Closed>>, NatsError> {
        self.list(query, "closed", |page: ClosedPage| (page.total, page.items))
            .await
    }

    /// Kicks connection `id` of `gateway`; answers what it was.
    pub async fn kick(&self, gateway: &str, id: u64) -> Result<Connection, AskError> {
        self.ask(gateway, "kick", Bytes::from(id.to_string())).await
    }

    async fn list<P: DeserializeOwned, T>(
        &self,
        query: &[(String, String)],
        verb: &str,
        split: impl Fn(P) -> (usize, Vec<T>) + Copy,
    ) -> Result<Vec<GatewayListing<T>>, NatsError> {
        let gateways = self.gateways().await?;
        let listings = futures_util::stream::iter(gateways)
            .map(|gateway| async move {
                let entries = self.all_pages(&gateway.name, query, verb, split).await;
                GatewayListing { gateway, entries }
            })
            .buffered(16)
            .collect()
            .await;
        Ok(listings)
    }

    /// Follows the pages of one gateway's listing until `total` entries are read, or `limit`
    /// if the query has one.
    async fn all_pages<P: DeserializeOwned, T>(
        &self,
        gateway: &str,
        query: &[(String, String)],
        verb: &str,
        split: impl Fn(P) -> (usize, Vec<T>),
    ) -> Result<Vec<T>, AskError> {
        let wanted = query
            .iter()
            .find(|(k, _)| k == "limit")
            .and_then(|(_, v)| v.parse::<usize>().ok());
        let base: Vec<&(String, String)> = query
            .iter()
            .filter(|(k, _)| k != "limit" && k != "offset")
            .collect();
        let mut entries = Vec::new();
        loop {
            let want = wanted.map_or(MAX_PAGE, |w| (w - entries.len()).min(MAX_PAGE));
            let mut pairs: Vec<(String, String)> = base.iter().map(|p| (*p).clone()).collect();
            pairs.push(("limit".into(), want.to_string()));
            pairs.push(("offset".into(), entries.len().to_string()));
            let payload =
                serde_json::to_vec(&pairs).map_err(|e| AskError::Failed(e.to_string()))?;
            let page: P = self.ask(gateway, verb, Bytes::from(payload)).await?;
            let (total, items) = split(page);
            let got = items.len();
            entries.extend(items);
            let done =
                got == 0 || entries.len() >= total || wanted.is_some_and(|w| entries.len() >= w);
            if done {
                return Ok(entries);
            }
        }
    }

    async fn ask<T: DeserializeOwned>(
        &self,
        gateway: &str,
        verb: &str,
        payload: Bytes,
    ) -> Result<T, AskError> {
        let subject = registry::subject(&self.prefix, gateway, verb);
        let answer = tokio::time::timeout(self.timeout, self.client.request(subject, payload))
            .await
            .map_err(|_| AskError::Missing(self.timeout))?
            .map_err(|e| match e.kind() {
                RequestErrorKind::TimedOut | RequestErrorKind::NoResponders => {
                    AskError::Missing(self.timeout)
                }
                _ => AskError::Failed(e.to_string()),
            })?;
        if let Ok(error) = serde_json::from_slice::<ErrorBody>(&answer.payload) {
            return Err(AskError::Refused(error.error));
        }
        serde_json::from_slice(&answer.payload).map_err(|e| AskError::Failed(e.to_string()))
    }
}
