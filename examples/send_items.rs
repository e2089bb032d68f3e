//! Delivers items from your own program with the client library: tight liveness on the
//! client's side too, reconnects with backoff, and every item acknowledged (or resent).
//!
//! Start a server, then run the example (it sends 10,000 items and waits for every ack):
//!
//! ```text
//! cargo run --release -- serve --listen 127.0.0.1:7000 --sink file:/tmp/items.ndjson &
//! cargo run --example send_items -- 127.0.0.1:7000
//! ```
//!
//! Kill and restart the server while it runs: the client notices, reconnects and resends what
//! was not acknowledged.

use std::time::Duration;

use connwarden::client::{Client, ClientConfig, OutItem};
use connwarden::config::Keepalive;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:7000".into());
    let mut config = ClientConfig::new(addr);
    // A dead server is noticed within 5 s + 2 s × 3 = 11 s by the kernel, 3 s × 3 = 9 s by the
    // heartbeat: whichever comes first.
    config.keepalive = Keepalive {
        idle: Duration::from_secs(5),
        interval: Duration::from_secs(2),
        count: 3,
    };
    config.heartbeat_interval = Duration::from_secs(3);
    config.backoff.give_up = Some(Duration::from_secs(60));
    println!(
        "sending to {} (dead server noticed within {:?})",
        config.addr,
        config.liveness_bound()
    );

    let client = Client::start(config);
    for n in 0..10_000u32 {
        let object = format!(
            "{{\"ip\":\"198.51.100.{}\",\"seq\":{n},\"source\":\"example\"}}",
            n % 256
        );
        // Validated here with the server's own rules: a bad item is refused before it is sent.
        let item = OutItem::from_json(object.into())?;
        // Waits while the window of unacknowledged items is full.
        client.send(item).await?;
    }
    let summary = client.finish().await?;
    println!(
        "acknowledged {} items ({} resent) over {} connection(s)",
        summary.acknowledged, summary.resent, summary.connections
    );
    Ok(())
}
