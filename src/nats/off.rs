//! NATS in a build without the `nats` feature: what the server calls, with no connection ever
//! made. `Config::validate` refuses `nats_url` in such a build, so the server never asks.

use std::sync::Arc;

use crate::config::NatsConfig;
use crate::metrics::Metrics;
use crate::sink::NatsClient;

/// Why NATS cannot be used: this build has none.
#[derive(Debug, thiserror::Error)]
pub enum NatsError {
    /// NATS is configured, and this build cannot connect to it.
    #[error("nats_url needs connwarden built with the \"nats\" feature")]
    NotBuilt,
}

/// Refuses: this build has no NATS client.
pub async fn connect_patiently(
    _config: &NatsConfig,
    _name: &str,
    _metrics: Arc<Metrics>,
) -> Result<NatsClient, NatsError> {
    Err(NatsError::NotBuilt)
}

/// The cluster-wide registry, of which this build has none.
pub mod registry {
    use tokio_util::sync::CancellationToken;

    use super::NatsError;
    use crate::config::Config;
    use crate::registry::Registry;
    use crate::sink::NatsClient;

    /// Unreachable: there is no connection to serve the registry on.
    pub async fn serve(
        client: NatsClient,
        _config: Config,
        _registry: Registry,
        _stop: CancellationToken,
    ) -> Result<(), NatsError> {
        match client {}
    }
}
