//! A length-prefixed binary protocol of your own with connwarden's liveness, on tokio-util's
//! `LengthDelimitedCodec`: each frame is a 4-byte big-endian length, then a kind byte and its
//! payload. `D` data (echoed back), `P` ping (answered `O` pong), `H` from the client to turn the
//! pings on (under `--heartbeat negotiated`, the default), `G` goaway (a 4-byte window in
//! milliseconds), `S` drain (stop sending new work), `B` bye (the close reason, as text).
//!
//! Only whole frames count as life (`Life::Marked`): a peer whose application froze in the
//! middle of a frame, while its kernel keeps delivering the bytes already sent, is still
//! closed as `heartbeat_timeout`. Same flags as `connwarden serve`:
//!
//! ```text
//! cargo run --release --example length_prefixed -- --listen 127.0.0.1:7300 --admin 127.0.0.1:7301 \
//!     --heartbeat required --heartbeat-interval 5s --max-frame 65536
//! ```

use bytes::{BufMut, Bytes, BytesMut};
use connwarden::config::{Config, Settings};
use connwarden::liveness::{BoxError, Connection, Life, Signal};
use connwarden::Server;
use futures_util::{SinkExt, StreamExt};
use tokio_util::codec::{Framed, LengthDelimitedCodec};

/// A frame of `kind` with `payload`.
fn frame(kind: u8, payload: &[u8]) -> Bytes {
    let mut out = BytesMut::with_capacity(1 + payload.len());
    out.put_u8(kind);
    out.put_slice(payload);
    out.freeze()
}

async fn frames(conn: Connection, max_frame: usize) -> Result<(), BoxError> {
    let control = conn.control();
    let codec = LengthDelimitedCodec::builder()
        .max_frame_length(max_frame)
        .new_codec();
    let mut frames = Framed::new(conn, control.timed(codec));
    loop {
        tokio::select! {
            next = frames.next() => {
                let Some(received) = next.transpose()? else { return Ok(()) };
                control.alive();
                match received.first() {
                    Some(b'D') => {
                        control.message();
                        frames.send(received.freeze()).await?;
                    }
                    Some(b'P') => frames.send(frame(b'O', &[])).await?,
                    Some(b'H') => control.enable_heartbeat(),
                    Some(b'O') => {}
                    _ => {
                        control.refused();
                        return Err("unknown frame kind".into());
                    }
                }
            }
            signal = control.signal() => match signal {
                Signal::Ping => frames.send(frame(b'P', &[])).await?,
                Signal::GoAway { within } => {
                    let ms = within.as_millis().min(u32::MAX.into()) as u32;
                    frames.send(frame(b'G', &ms.to_be_bytes())).await?
                }
                Signal::Drain => frames.send(frame(b'S', &[])).await?,
                Signal::Close(reason) => {
                    let _ = frames.send(frame(b'B', reason.as_str().as_bytes())).await;
                    return Ok(());
                }
                _ => {}
            },
        }
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let config = Config::load(None, Settings::from_args(std::env::args().skip(1))?)?;
    let max_frame = config.max_frame;
    let server = Server::builder(config)
        .handler(move |conn| frames(conn, max_frame))
        .life(Life::Marked)
        .build()?;
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
    server
        .run(listeners, async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await?;
    Ok(())
}
