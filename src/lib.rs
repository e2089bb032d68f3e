//! connwarden: bounded, measured dead-peer detection for long-lived TCP services, with a JSON
//! item ingest that loses nothing.
//!
//! A map of the crate, one concern per module:
//!
//! | module | concern |
//! |---|---|
//! | [`config`] | one validated [`Config`] from defaults < file < environment < flags |
//! | [`sockopt`] | keep-alive idle/interval/count, `TCP_USER_TIMEOUT`, buffers: set and read back |
//! | [`protocol`] | the bounded JSON-object stream decoder, messages, error codes |
//! | `conn` | one connection's task: reads, heartbeat, deadlines, writes, one close reason |
//! | [`registry`] | live and recently closed connections; a guard that removes the entry and records the close |
//! | [`metrics`] | Prometheus metrics: detection delay by close reason, items, queue, sink |
//! | [`close_reason`] | the closed set of reasons a connection ends |
//! | [`queue`] | the bounded queue and its overflow policy |
//! | [`record`] | an item with its connection, peer and receive time, and its way back to the sender |
//! | [`sink`] | where records go (stdout, file, JetStream, your channel); acks after the write and `fsync`, or JetStream's ack |
//! | [`server`] | listeners, accept loop, limits, shutdown |
//! | [`reload`] | a new configuration put in force while connections stay open: which keys apply to whom |
//! | [`admin`] | the admin API: connections, kicks, closes, `/metrics`, health and readiness |
//! | [`nats`] | the NATS connection, and the cluster-wide registry over it (the JetStream sink is in [`sink`]) |
//! | [`client`] | the client: same liveness, reconnect with backoff, acked window, resend |
//! | [`doctor`] | options read back, kernel defaults, bounds, warnings; measured in namespaces |
//!
//! To embed the server, build a [`Server`] from a [`Config`], give it a [`sink::ChannelSink`]
//! to receive items in your own code, and run it on listeners from [`Server::bind`] (or your
//! own). To give your own `TcpStream` the same liveness, call [`sockopt::apply`] on it and check
//! [`sockopt::read_back`]. See `examples/embed_server.rs`. To deliver items with acks and
//! resends, start a [`client::Client`]; see `examples/send_items.rs`.
#![warn(clippy::unwrap_used)]
#![warn(missing_docs)]

pub mod admin;
pub mod auth;
pub mod client;
pub mod close_reason;
pub mod config;
mod conn;
pub mod doctor;
pub mod metrics;
pub mod nats;
mod pressure;
pub mod protocol;
pub mod queue;
pub mod record;
pub mod registry;
pub mod reload;
pub mod server;
pub mod sink;
pub mod sockopt;
pub mod tls;

pub use close_reason::CloseReason;
pub use config::Config;
pub use record::Record;
pub use registry::Registry;
pub use reload::Reloader;
pub use server::{Lifecycle, Server, ServerBuilder, ServerError};
