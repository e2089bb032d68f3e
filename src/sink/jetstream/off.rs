//! The JetStream sink in a build without the `nats` feature: a NATS connection that never exists,
//! and a sink that is never opened (`Config::validate` refuses `sink = "jetstream"` first).

use std::convert::Infallible;
use std::sync::Arc;

use super::{Sink, SinkError};
use crate::config::Config;
use crate::metrics::Metrics;

/// A NATS connection, of which this build has none: an `Option` of it is always `None`.
#[derive(Clone, Debug)]
pub enum Client {}

impl Client {
    /// Unreachable: there is no connection to flush.
    pub async fn flush(&self) -> Result<(), Infallible> {
        match *self {}
    }
}

/// Refuses: this build has no JetStream sink.
pub(super) async fn open(
    _config: &Config,
    _nats: Option<&Client>,
    _metrics: &Arc<Metrics>,
) -> Result<Box<dyn Sink>, SinkError> {
    Err(SinkError::Setup {
        sink: "jetstream".into(),
        reason: "sink needs connwarden built with the \"nats\" feature".into(),
    })
}
