//! Where there are no upgrades (every platform but Linux): the interface of `upgrade.rs`, with
//! nothing to take over and no upgrade ever asked for, so that `Server::run` has no platform
//! branch of its own.

use std::sync::Arc;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use super::{Acceptor, ServerError};
use crate::conn::Live;
use crate::metrics::Metrics;
use crate::registry::Registry;

/// The listeners an old process hands over: the data listeners, and the admin listener.
pub(super) type HandedListeners = (Vec<std::net::TcpListener>, Option<std::net::TcpListener>);

/// No upgrades.
pub(super) struct Upgrades;

/// No copies are needed.
pub(super) struct ListenerCopies;

/// An upgrade that succeeded: none ever does here.
pub(super) enum Upgraded {}

impl Upgraded {
    pub(super) fn pid(&self) -> u32 {
        match *self {}
    }
}

impl Upgrades {
    pub(super) fn new() -> Upgrades {
        Upgrades
    }

    pub(super) fn inherits(&self) -> bool {
        false
    }

    pub(super) fn take_listeners(&self) -> Result<Option<HandedListeners>, ServerError> {
        Ok(None)
    }

    pub(super) fn copy_listeners(
        &self,
        _listeners: &[TcpListener],
        _admin: Option<&socket2::Socket>,
    ) -> Result<ListenerCopies, ServerError> {
        Ok(ListenerCopies)
    }

    pub(super) fn adopt(
        &mut self,
        _acceptor: Arc<Acceptor>,
        _stop: CancellationToken,
    ) -> Option<tokio::task::JoinHandle<()>> {
        None
    }

    /// Waits for `shutdown`: nothing else ends a run here.
    pub(super) async fn serve_until_upgraded(
        &mut self,
        shutdown: impl std::future::Future<Output = ()>,
        _copies: &ListenerCopies,
        _live: &Live,
        _metrics: &Metrics,
    ) -> Option<Upgraded> {
        shutdown.await;
        None
    }
}

pub(super) async fn hand_over(upgraded: Upgraded, _live: &Live, _registry: &Registry) -> u64 {
    match upgraded {}
}
