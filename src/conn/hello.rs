//! The hello path: a client's `hello` answered with the heartbeat and frame limit it gets, and
//! authentication, by the hello's token or the client certificate, with what a client that
//! must authenticate and did not is told.

use std::sync::Arc;

use super::{notice, Close, Connection, Flags};
use crate::close_reason::CloseReason;
use crate::config::HeartbeatMode;
use crate::protocol::{ErrorCode, Hello, Outbound};
use crate::registry::{Arrival, Claim};

/// What a client that sends anything but a valid `hello` first is told, under `auth = "required"`.
pub(super) const AUTHENTICATE_FIRST: &str = "authenticate first: send a hello with your token";

/// The close of a client that did not authenticate, with what it is told.
pub(super) fn unauthorized(message: &'static str) -> Close {
    Close {
        reason: CloseReason::Unauthorized,
        notice: notice(ErrorCode::Unauthorized, message),
    }
}

impl Connection {
    /// True while `auth = "required"` and the client has not authenticated yet.
    pub(super) fn awaits_authentication(&self) -> bool {
        self.shared.params.auth_required && !self.authenticated()
    }

    /// True once the client authenticated.
    fn authenticated(&self) -> bool {
        self.flags.contains(Flags::AUTHENTICATED)
    }

    /// Records that the client authenticated as `name` (`via` a client certificate or a token).
    pub(super) fn authenticate(&mut self, name: Arc<str>, via: &'static str) {
        tracing::info!(conn_id = self.info.id, peer = %self.info.peer(), auth_name = %name, via, "authenticated");
        self.shared
            .registry
            .set_auth_name(&self.info, Arc::clone(&name));
        self.extras.get_or_insert_default().auth_name = Some(name);
        self.flags.insert(Flags::AUTHENTICATED);
    }

    /// Answers a client's `hello`: checks its token, keeps its `client_id` (superseding a
    /// stale connection of the same client, with `takeover`), and tells it the heartbeat it
    /// gets and the frame limit.
    pub(super) fn hello(&mut self, hello: Hello) -> Result<(), Close> {
        let tokens = &self.shared.live.tokens;
        match hello.token {
            Some(token) if tokens.configured() => match tokens.check(&token) {
                Some(name) => self.authenticate(name, "token"),
                None => {
                    tracing::warn!(conn_id = self.info.id, peer = %self.info.peer(), "invalid token");
                    return Err(unauthorized("invalid token"));
                }
            },
            _ if self.awaits_authentication() => return Err(unauthorized(AUTHENTICATE_FIRST)),
            _ => {}
        }
        if let Some(client_id) = hello.client_id {
            let client_id: Arc<str> = client_id.into();
            self.give_client_id(Arc::clone(&client_id), Arrival::New);
            self.extras.get_or_insert_default().client_id = Some(client_id);
        }
        let params = &self.shared.params;
        if params.heartbeat != HeartbeatMode::Off {
            self.flags.insert(Flags::HEARTBEAT);
            self.info.heartbeat(true, self.pings_sent.into());
        }
        let heartbeat_ms = if self.flags.contains(Flags::HEARTBEAT) {
            params.heartbeat_interval.as_millis() as u64
        } else {
            0
        };
        let max_frame = params.max_frame;
        self.send(&Outbound::Hello {
            heartbeat_ms,
            max_frame,
        });
        Ok(())
    }

    /// Records the `client_id` this connection gave. With `takeover`, holds it too, closing
    /// the stale connection of the same client that held it (or this one, if it is the stale
    /// one); logged either way.
    pub(super) fn give_client_id(&self, client_id: Arc<str>, arrival: Arrival) {
        let registry = &self.shared.registry;
        if !self.shared.params.takeover {
            registry.give_client_id(&self.info, client_id);
            return;
        }
        let (conn_id, peer) = (self.info.id, self.info.peer());
        match registry.claim_client_id(&self.info, Arc::clone(&client_id), arrival) {
            Claim::Held => {}
            Claim::Superseding(old) => {
                tracing::info!(conn_id, peer = %peer, client_id = %client_id, superseded = old, "the client came back: its older connection is superseded");
            }
            Claim::Outdated(newer) => {
                tracing::info!(conn_id, peer = %peer, client_id = %client_id, newer, "the client connected to this process while its connection moved here: the moved one is superseded");
            }
            Claim::Refused { holder } => {
                tracing::warn!(conn_id, peer = %peer, client_id = %client_id, holder, "client_id held by a connection authenticated under another name: not superseded");
            }
        }
    }
}
