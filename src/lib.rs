//! connwarden: bounded, measured dead-peer detection for long-lived TCP services, with a JSON
//! item ingest that loses nothing.
//!
//! A map of the crate, one concern per module:
//!
//! | module | concern |
//! |---|---|
//! | [`config`] | one validated [`Config`] from defaults < file < environment < flags; each key declared once ([`config::Key`]) |
//! | [`sockopt`] | keep-alive idle/interval/count, `TCP_USER_TIMEOUT`, buffers: set and read back |
//! | [`protocol`] | the bounded JSON-object stream decoder, messages, error codes |
//! | [`liveness`] | liveness for any protocol: your handler over a [`liveness::Connection`], with the deadlines, heartbeat, close reasons, kick, drain and registry of the gateway |
//! | `conn` | one connection's task: reads, heartbeat, deadlines, writes, one close reason; the hello and authentication; idle connections parked outside their task (`park_after`) |
//! | `buffer`, `pressure` | buffers held only while bytes are pending; the budget of partial objects (`max_buffered`) |
//! | `schedule` | the liveness schedule any protocol's connection asks at each turn: deadlines passed, pings due, the next deadline |
//! | `phase` | keep-alive phases: connections accepted together do not probe together |
//! | `storm` | probe storms noticed: keep-alive closes in a burst while the kernel drops received packets |
//! | [`registry`] | live and recently closed connections; a guard that removes the entry and records the close (the entry, its packed addresses, the guard, the closes, `TCP_INFO` and the copies handed out each in a file of `registry/`) |
//! | [`metrics`] | Prometheus metrics: detection delay by close reason, items, queue, sink |
//! | [`close_reason`] | the closed set of reasons a connection ends |
//! | [`queue`] | the bounded queue and its overflow policy |
//! | [`record`] | an item with its connection, peer and receive time, and its way back to the sender |
//! | [`sink`] | where records go (stdout, file, JetStream, your channel); acks after the write and `fsync`, or JetStream's ack |
//! | [`server`] | listeners, accept loop, limits, shutdown |
//! | `proxy_protocol` | the PROXY protocol header a load balancer sends first, read byte-exact: the client's address |
//! | [`rebalance`] | paced drains: a share of the connections, oldest first, told `goaway` at an even pace |
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
//! 3. layer: `sockopt`, `close_reason`, `queue`, `record`, `buffer`, `tls`, `storm`, `handover`, `schedule`, `proxy_protocol`
//! 4. layer: `metrics` (takes plain values: a reason, a duration, a [`metrics::Scrape`])
//! 5. layer: `registry`, `pressure`, `phase`, `sink`, `client`
//! 6. layer: `conn`, `liveness` (the JSON connection's loop; any protocol's connection under the same watch)
//! 7. layer: `reload`
//! 8. layer: `view`, `rebalance` (what `admin` and `nats` both show and do; paced drains)
//! 9. layer: `admin`, `nats`, `upgrade` (the hand-over between two processes)
//! 10. layer: `server` (puts the pieces together, as mini-redis's does)
//! 11. layer: `doctor` (runs a server to time its bounds)
//!
//! To serve a protocol of your own with the gateway's liveness (keep-alive read back, deadlines,
//! heartbeat in your words, one close reason per close, kick, drain, admin API), give
//! [`ServerBuilder::handler`] an async function over a [`liveness::Connection`]: see
//! [`liveness`], `examples/line_echo.rs` and `examples/length_prefixed.rs`. To embed the JSON
//! item gateway, build a [`Server`] from a [`Config`], give it a [`sink::ChannelSink`] to
//! receive items in your own code, and run it on listeners from [`Server::bind`] (or your
//! own); see `examples/embed_server.rs`. To deliver items with acks and
//! resends, start a [`client::Client`]; see `examples/send_items.rs`.
//!
//! Heavy parts are Cargo features, all on by default through `cli` (the binary): `admin` (the
//! HTTP admin API, axum), `tls` (rustls), `nats` (async-nats); with `default-features = false`
//! an embedder builds none of them, and a configuration that asks for one is refused by name.
//! The table is in README.md, "Features".
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
pub mod liveness;
pub mod metrics;
#[cfg(feature = "nats")]
pub mod nats;
// Without the feature, what the server calls: a `nats_url` is refused before it would connect.
#[cfg(not(feature = "nats"))]
#[path = "nats/off.rs"]
mod nats;
mod phase;
mod pressure;
pub mod protocol;
mod proxy_protocol;
pub mod queue;
pub mod rebalance;
pub mod record;
pub mod registry;
pub mod reload;
mod schedule;
pub mod server;
pub mod sink;
pub mod sockopt;
mod storm;
#[cfg(feature = "tls")]
pub mod tls;
// Without the feature, sessions that never exist: `tls_cert` is refused before a listener opens.
#[cfg(not(feature = "tls"))]
#[path = "tls/off.rs"]
mod tls;
#[cfg(target_os = "linux")]
pub mod upgrade;
pub mod view;

pub use close_reason::CloseReason;
pub use config::Config;
pub use record::{Origin, Record};
pub use registry::Registry;
pub use reload::Reloader;
pub use server::{Lifecycle, Server, ServerBuilder, ServerError};
