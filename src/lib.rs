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
//! | `conn` | one connection's task: reads, heartbeat, deadlines, writes, one close reason; the hello and authentication |
//! | `buffer`, `pressure` | buffers held only while bytes are pending; the budget of partial objects (`max_buffered`) |
//! | `phase` | keep-alive phases: connections accepted together do not probe together |
//! | `storm` | probe storms noticed: keep-alive closes in a burst while the kernel drops received packets |
//! | [`registry`] | live and recently closed connections; a guard that removes the entry and records the close |
//! | [`metrics`] | Prometheus metrics: detection delay by close reason, items, queue, sink |
//! | [`close_reason`] | the closed set of reasons a connection ends |
//! | [`queue`] | the bounded queue and its overflow policy |
//! | [`record`] | an item with its connection, peer and receive time, and its way back to the sender |
//! | [`sink`] | where records go (stdout, file, JetStream, your channel); acks after the write and `fsync`, or JetStream's ack |
//! | [`server`] | listeners, accept loop, limits, shutdown |
//! | [`reload`] | a new configuration put in force while connections stay open: which keys apply to whom |
//! | `upgrade`, `handover` | the binary upgrade under live connections (Linux): the protocol between the old and the new process, over a channel that passes sockets; the server's side is in [`server`], what a connection carries in `conn` |
//! | [`view`] | connections as the surfaces show them: the JSON shapes, the queries, the kick |
//! | [`admin`] | the admin API: connections, kicks, closes, `/metrics`, health and readiness |
//! | [`nats`] | the NATS connection, and the cluster-wide registry over it (the JetStream sink is in [`sink`]) |
//! | [`client`] | the client: same liveness, reconnect with backoff, acked window, resend |
//! | [`doctor`] | options read back, kernel defaults, bounds, warnings; measured in namespaces |
//! | [`tls`] | certificates, and the TLS session a connection reads plaintext from and writes plaintext to |
//! | [`auth`] | client tokens and what they authenticate as |
//!
//! Dependencies point down. A module uses only modules of the layers below its own, and those
//! named before it in its own layer; an upper layer hears of a lower one's events through plain
//! values or a small trait (`pressure::Budgeted`), never by importing it. `tests/layering.rs`
//! reads these lines and every `crate::` path in `src/`, and fails on a use that goes up.
//!
//! 1. layer: `protocol`, `auth` (know no other module)
//! 2. layer: `config` (checks values against what the protocol can hold)
//! 3. layer: `sockopt`, `close_reason`, `queue`, `record`, `buffer`, `tls`, `storm`, `handover`
//! 4. layer: `metrics` (takes plain values: a reason, a duration, a [`metrics::Scrape`])
//! 5. layer: `registry`, `pressure`, `phase`, `sink`, `client`
//! 6. layer: `conn` (the loop and its close reasons)
//! 7. layer: `reload`
//! 8. layer: `view` (what `admin` and `nats` both show and do)
//! 9. layer: `admin`, `nats`, `upgrade` (the hand-over between two processes)
//! 10. layer: `server` (puts the pieces together, as mini-redis's does)
//! 11. layer: `doctor` (runs a server to time its bounds)
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
mod buffer;
pub mod client;
pub mod close_reason;
pub mod config;
mod conn;
pub mod doctor;
#[cfg(target_os = "linux")]
pub mod handover;
pub mod metrics;
pub mod nats;
mod phase;
mod pressure;
pub mod protocol;
pub mod queue;
pub mod record;
pub mod registry;
pub mod reload;
pub mod server;
pub mod sink;
pub mod sockopt;
mod storm;
pub mod tls;
#[cfg(target_os = "linux")]
pub mod upgrade;
pub mod view;

pub use close_reason::CloseReason;
pub use config::Config;
pub use record::{Origin, Record};
pub use registry::Registry;
pub use reload::Reloader;
pub use server::{Lifecycle, Server, ServerBuilder, ServerError};
