//! A line protocol of your own with connwarden's liveness: lines echoed, `PING` answered
//! `PONG`, and `PING` from the server after `heartbeat_interval` of silence (any line back is
//! life). The layer does the rest (keep-alive read back, deadlines, one close reason per close,
//! kick, drain, admin API, `/metrics`). Every flag of `connwarden serve` works, through the
//! library's configuration layers (and `CONNWARDEN_*`):
//!
//! ```text
//! cargo run --release --example line_echo -- --listen 127.0.0.1:7200 --admin 127.0.0.1:7201 \
//!     --heartbeat required --heartbeat-interval 5s
//! nc 127.0.0.1 7200                          # type lines; stay silent to see PING
//! curl -s 127.0.0.1:7201/connections         # and DELETE /connections/ID to kick one
//! ```
//!
//! Server to client: `PING`, `GOAWAY <ms>`, `DRAIN`, `BYE <reason>` (the layer closes). A client
//! sends `HEARTBEAT` to turn the pings on under `--heartbeat negotiated` (the default).

use std::io::ErrorKind::WouldBlock;

use bytes::BytesMut;
use connwarden::config::{Config, Settings};
use connwarden::liveness::{BoxError, Connection, Control, Signal};
use connwarden::Server;
use tokio::io::AsyncWriteExt;

/// Longest line: a longer one is a protocol error, closing the connection.
const MAX_LINE: usize = 64 * 1024;

/// No buffer is held while the client is silent (`readable`, then `try_read_buf` into one that
/// lives while a line is incomplete); `examples/length_prefixed.rs` shows `Framed` instead.
async fn lines(mut conn: Connection) -> Result<(), BoxError> {
    let control = conn.control();
    let mut partial = BytesMut::new();
    loop {
        tokio::select! {
            ready = conn.readable() => {
                ready?;
                partial.reserve(4096);
                match conn.try_read_buf(&mut partial) {
                    Ok(0) => return Ok(()),
                    // Readiness may be a false alarm: the reservation is given back below.
                    Ok(_) => {}
                    Err(e) if e.kind() == WouldBlock => {}
                    Err(e) => return Err(e.into()),
                }
                while let Some(end) = partial.iter().position(|b| *b == b'\n') {
                    let line = partial.split_to(end + 1);
                    answer(&mut conn, &control, &line).await?;
                }
                if partial.len() > MAX_LINE {
                    return Err("line longer than 64 KiB".into());
                }
                // The frame clock and the memory budget see the incomplete line.
                control.pending(partial.len());
                if partial.is_empty() {
                    partial = BytesMut::new();
                }
            }
            signal = control.signal() => match signal {
                Signal::Ping => conn.write_all(b"PING\n").await?,
                Signal::GoAway { within } => {
                    let words = format!("GOAWAY {}\n", within.as_millis());
                    conn.write_all(words.as_bytes()).await?
                }
                Signal::Drain => conn.write_all(b"DRAIN\n").await?,
                Signal::Close(reason) => {
                    let _ = conn.write_all(format!("BYE {reason}\n").as_bytes()).await;
                    return Ok(());
                }
                _ => {}
            },
        }
    }
}

/// One line from the client (with its newline), answered.
async fn answer(conn: &mut Connection, control: &Control, line: &[u8]) -> std::io::Result<()> {
    match line.trim_ascii_end() {
        b"PING" => conn.write_all(b"PONG\n").await,
        b"PONG" => Ok(()),
        b"HEARTBEAT" => {
            control.enable_heartbeat();
            conn.write_all(b"OK\n").await
        }
        _ => {
            control.message();
            conn.write_all(line).await
        }
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    // Defaults < CONNWARDEN_* environment < flags, each error naming its key and source.
    let config = Config::load(None, Settings::from_args(std::env::args().skip(1))?)?;
    let server = Server::builder(config).handler(lines).build()?;
    let listeners = server.bind()?;
    for listener in &listeners {
        println!("listening on {}", listener.local_addr()?);
    }
    let mut closes = server.registry().subscribe();
    tokio::spawn(async move {
        while let Ok(closed) = closes.recv().await {
            println!("closed {closed}");
        }
    });
    let stop = async { drop(tokio::signal::ctrl_c().await) };
    server.run(listeners, stop).await?;
    Ok(())
}
