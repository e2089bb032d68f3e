//! Embeds the connwarden server in your own program and receives its items in your own code:
//! the place where a hand-written Go server would have `rec chan<- string`.
//!
//! It also shows the socket-option helpers on a `TcpStream` of your own, and the admin API
//! mounted under `/admin` on an axum application of your own.
//!
//! Run it, then send items and look from another terminal:
//!
//! ```text
//! cargo run --example embed_server
//! printf '{"ip":"192.0.2.1","id":1}\n{"IP":"2001:db8::1"}\n' | nc -q1 127.0.0.1 7100
//! curl -s 127.0.0.1:7101/admin/connections; curl -s 127.0.0.1:7101/admin/metrics
//! ```
//!
//! Stop it with Ctrl-C: queued items are handed over before it exits.

use std::time::Duration;

use connwarden::config::{Config, Keepalive};
use connwarden::sink::ChannelSink;
use connwarden::sockopt::{self, SocketOptions};
use connwarden::Server;
use socket2::SockRef;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let config = Config {
        listen: vec!["127.0.0.1:7100".parse()?],
        keepalive: Keepalive {
            idle: Duration::from_secs(20),
            interval: Duration::from_secs(5),
            count: 3,
        },
        // The admin routes are mounted below on this program's own application instead.
        admin: None,
        ..Config::default()
    };

    // Items arrive here; each was acknowledged to its client once this channel took it.
    let (sink, mut records) = ChannelSink::new(1024);
    let server = Server::builder(config.clone()).sink(sink).build()?;
    let registry = server.registry();
    let listeners = server.bind()?;
    println!("listening on {}", listeners[0].local_addr()?);

    // Your own HTTP application, with connwarden's admin API under /admin.
    let app = axum::Router::new()
        .route("/", axum::routing::get(|| async { "my service" }))
        .nest("/admin", connwarden::admin::router(server.admin_handle()));
    let http = tokio::net::TcpListener::bind("127.0.0.1:7101").await?;
    println!("admin API on http://{}/admin/", http.local_addr()?);
    tokio::spawn(async move { axum::serve(http, app).await });

    tokio::spawn(async move {
        while let Some(record) = records.recv().await {
            println!(
                "conn {} from {} sent ip {}: {}",
                record.conn_id(),
                record.peer(),
                record.ip,
                String::from_utf8_lossy(&record.item)
            );
            println!("  live connections: {}", registry.len());
        }
    });

    // The same liveness on a connection your own code makes.
    let own = tokio::net::TcpStream::connect("127.0.0.1:7100").await;
    if let Ok(stream) = own {
        let asked = SocketOptions::from_config(&config);
        sockopt::apply(SockRef::from(&stream), &asked)?;
        let effective = sockopt::read_back(SockRef::from(&stream));
        println!(
            "own socket: {effective:?}; differs from asked: {:?}",
            effective.mismatches(&asked)
        );
    }

    let report = server
        .run(listeners, async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await?;
    println!("stored {} items", report.written);
    Ok(())
}
