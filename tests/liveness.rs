//! A third protocol on the liveness layer, defined here through the public API alone:
//! netstrings (`5:hello,`), with a codec written inline. Each test makes one failure or request
//! happen and checks both sides: what the peer was told, in the protocol's own words, and the
//! one close reason the server recorded.
//!
//! Words, server to client: `pong`, `ping`, `goaway:<ms>`, `drain`, `bye:<reason>`; a request
//! `quit` ends the connection from the server's side (`completed`), `big` is answered with
//! 1 MiB (to fill a peer that does not read), anything else is echoed.

use connwarden_test_common as common;

use std::io;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::{Buf, BufMut, BytesMut};
use common::{next_close, test_config, PROMPT};
use connwarden::config::HeartbeatMode;
use connwarden::liveness::{BoxError, Connection, Life, Signal};
use connwarden::registry::ClosedConn;
use connwarden::{CloseReason, Config, Registry, Server};
use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{broadcast, oneshot};
use tokio_util::codec::{Decoder, Encoder, Framed};

/// Netstrings: `<decimal length>:<bytes>,`.
struct Netstrings {
    max: usize,
}

fn invalid(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what.to_owned())
}

impl Decoder for Netstrings {
    type Item = BytesMut;
    type Error = io::Error;

    fn decode(&mut self, src: &mut BytesMut) -> io::Result<Option<BytesMut>> {
        let Some(colon) = src.iter().position(|b| *b == b':') else {
            return match src.len() > 10 {
                true => Err(invalid("no length")),
                false => Ok(None),
            };
        };
        let len: usize = std::str::from_utf8(&src[..colon])
            .ok()
            .and_then(|digits| digits.parse().ok())
            .filter(|len| *len <= self.max)
            .ok_or_else(|| invalid("bad length"))?;
        if src.len() < colon + len + 2 {
            return Ok(None);
        }
        if src[colon + 1 + len] != b',' {
            return Err(invalid("no comma"));
        }
        let mut frame = src.split_to(colon + len + 2);
        frame.advance(colon + 1);
        frame.truncate(len);
        Ok(Some(frame))
    }
}

impl Encoder<Vec<u8>> for Netstrings {
    type Error = io::Error;

    fn encode(&mut self, item: Vec<u8>, dst: &mut BytesMut) -> io::Result<()> {
        dst.put_slice(format!("{}:", item.len()).as_bytes());
        dst.put_slice(&item);
        dst.put_u8(b',');
        Ok(())
    }
}

fn netstring(text: &[u8]) -> Vec<u8> {
    let mut out = format!("{}:", text.len()).into_bytes();
    out.extend_from_slice(text);
    out.push(b',');
    out
}

/// The server's side of the protocol.
async fn serve(conn: Connection) -> Result<(), BoxError> {
    let control = conn.control();
    let mut frames = Framed::new(conn, control.timed(Netstrings { max: 1 << 20 }));
    loop {
        tokio::select! {
            next = frames.next() => {
                let Some(request) = next.transpose()? else { return Ok(()) };
                control.alive();
                match &request[..] {
                    b"quit" => return Ok(()),
                    b"ping" => frames.send(b"pong".to_vec()).await?,
                    b"pong" => {}
                    b"big" => frames.send(vec![b'x'; 1 << 20]).await?,
                    _ => {
                        control.message();
                        frames.send(request.to_vec()).await?;
                    }
                }
            }
            signal = control.signal() => match signal {
                Signal::Ping => frames.send(b"ping".to_vec()).await?,
                Signal::GoAway { within } => {
                    frames.send(format!("goaway:{}", within.as_millis()).into_bytes()).await?
                }
                Signal::Drain => frames.send(b"drain".to_vec()).await?,
                Signal::Close(reason) => {
                    let _ = frames.send(format!("bye:{reason}").into_bytes()).await;
                    return Ok(());
                }
                _ => {}
            },
        }
    }
}

/// A server of the netstring protocol in this process, on port 0.
struct Netserver {
    addr: SocketAddr,
    registry: Registry,
    closes: broadcast::Receiver<ClosedConn>,
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<connwarden::server::ShutdownReport>,
}

impl Netserver {
    async fn start(config: Config, life: Life) -> Netserver {
        let server = Server::builder(config)
            .handler(serve)
            .life(life)
            .build()
            .expect("valid configuration");
        let registry = server.registry();
        let closes = registry.subscribe();
        let listeners = server.bind().expect("bind");
        let addr = listeners[0].local_addr().expect("local address");
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            let shutdown = async {
                let _ = stopped.await;
            };
            server.run(listeners, shutdown).await.expect("run")
        });
        Netserver {
            addr,
            registry,
            closes,
            stop: Some(stop),
            task,
        }
    }

    async fn next_close(&mut self, bound: Duration) -> ClosedConn {
        next_close(&mut self.closes, bound).await
    }

    async fn stop(mut self) -> connwarden::server::ShutdownReport {
        drop(self.stop.take());
        tokio::time::timeout(PROMPT, self.task)
            .await
            .expect("stops within the bound")
            .expect("server task")
    }
}

/// The client's side: raw bytes, and frames read back one by one.
struct Peer {
    stream: TcpStream,
    buf: BytesMut,
}

impl Peer {
    async fn connect(addr: SocketAddr) -> Peer {
        Peer {
            stream: TcpStream::connect(addr).await.expect("connect"),
            buf: BytesMut::new(),
        }
    }

    async fn send(&mut self, text: &[u8]) {
        self.stream.write_all(&netstring(text)).await.expect("send");
    }

    /// The next frame from the server, within `bound`; `None` at its close.
    async fn frame_within(&mut self, bound: Duration) -> Option<String> {
        let mut codec = Netstrings { max: 2 << 20 };
        tokio::time::timeout(bound, async {
            loop {
                if let Some(frame) = codec.decode(&mut self.buf).expect("a netstring") {
                    return Some(String::from_utf8_lossy(&frame).into_owned());
                }
                match self.stream.read_buf(&mut self.buf).await {
                    Ok(0) | Err(_) => return None,
                    Ok(_) => {}
                }
            }
        })
        .await
        .expect("a frame or the close within the bound")
    }

    async fn frame(&mut self) -> Option<String> {
        self.frame_within(PROMPT).await
    }
}

fn plain() -> Config {
    Config {
        heartbeat: HeartbeatMode::Off,
        ..test_config()
    }
}

#[tokio::test]
async fn requests_are_answered_and_the_connection_is_listed_with_its_counters() {
    let mut server = Netserver::start(plain(), Life::AnyByte).await;
    let mut peer = Peer::connect(server.addr).await;
    peer.send(b"hello").await;
    assert_eq!(peer.frame().await.as_deref(), Some("hello"));
    peer.send(b"ping").await;
    assert_eq!(peer.frame().await.as_deref(), Some("pong"));

    let listed = server.registry.snapshot();
    assert_eq!(listed.len(), 1);
    let entry = &listed[0];
    assert_eq!(entry.local, server.addr);
    assert_eq!(entry.items, 1, "one message counted by the handler");
    assert_eq!(entry.bytes_in, (netstring(b"hello").len() + 7) as u64);
    assert_eq!(entry.bytes_out, (netstring(b"hello").len() + 7) as u64);

    peer.send(b"quit").await;
    assert_eq!(peer.frame().await, None, "the server closed");
    let closed = server.next_close(PROMPT).await;
    assert_eq!(closed.reason, CloseReason::Completed);
    assert_eq!(closed.items, 1);

    let mut peer = Peer::connect(server.addr).await;
    peer.send(b"one").await;
    assert_eq!(peer.frame().await.as_deref(), Some("one"));
    drop(peer);
    assert_eq!(
        server.next_close(PROMPT).await.reason,
        CloseReason::PeerClosed
    );
    assert!(server.registry.is_empty());
    server.stop().await;
}

#[tokio::test]
async fn a_silent_peer_is_pinged_in_the_protocols_words_then_closed_as_heartbeat_timeout() {
    let config = Config {
        heartbeat: HeartbeatMode::Required,
        heartbeat_interval: Duration::from_millis(500),
        heartbeat_misses: 3,
        ..plain()
    };
    let mut server = Netserver::start(config, Life::AnyByte).await;
    let mut peer = Peer::connect(server.addr).await;
    peer.send(b"hello").await;
    assert_eq!(peer.frame().await.as_deref(), Some("hello"));
    let silent_since = Instant::now();
    // Answered pings keep it alive.
    for _ in 0..3 {
        assert_eq!(peer.frame().await.as_deref(), Some("ping"));
        peer.send(b"pong").await;
    }
    assert!(server.registry.len() == 1, "answered pings keep it open");
    // Then silence: pings until the misses run out.
    let mut pings = 0;
    let bye = loop {
        match peer.frame().await.as_deref() {
            Some("ping") => pings += 1,
            other => break other.map(str::to_owned),
        }
    };
    assert!(pings >= 1, "pinged before the close");
    assert_eq!(bye.as_deref(), Some("bye:heartbeat_timeout"));
    let closed = server.next_close(PROMPT).await;
    assert_eq!(closed.reason, CloseReason::HeartbeatTimeout);
    assert!(
        closed.detection_delay >= Duration::from_millis(1500)
            && closed.detection_delay < Duration::from_millis(3000),
        "detected {:?} after the last byte (bound 3 x 500 ms + the goodbye)",
        closed.detection_delay
    );
    assert!(silent_since.elapsed() < PROMPT);
    server.stop().await;
}

/// A frame begun and fed a byte every 100 ms, never finished: the close it gets, and when.
async fn trickled_frame_closes(config: Config, life: Life) -> (ClosedConn, Duration) {
    let mut server = Netserver::start(config, life).await;
    let mut peer = Peer::connect(server.addr).await;
    peer.stream.write_all(b"100000:").await.unwrap();
    let begun = Instant::now();
    let trickle = async {
        loop {
            tokio::time::sleep(Duration::from_millis(100)).await;
            if peer.stream.write_all(b"x").await.is_err() {
                return;
            }
        }
    };
    let closed = tokio::select! {
        closed = server.next_close(PROMPT) => closed,
        _ = trickle => server.next_close(PROMPT).await,
    };
    let after = begun.elapsed();
    server.stop().await;
    (closed, after)
}

#[tokio::test]
async fn with_marked_life_a_frame_trickling_forever_is_no_sign_of_life() {
    let config = Config {
        heartbeat: HeartbeatMode::Required,
        heartbeat_interval: Duration::from_millis(400),
        heartbeat_misses: 3,
        frame_timeout: Some(Duration::from_secs(3)),
        ..plain()
    };
    // Only whole frames are life: the heartbeat ends it after 3 x 400 ms.
    let (closed, after) = trickled_frame_closes(config.clone(), Life::Marked).await;
    assert_eq!(closed.reason, CloseReason::HeartbeatTimeout);
    assert!(after < Duration::from_secs(3), "{after:?}");
    // Every byte is life: the heartbeat never fires, the frame clock ends it at 3 s.
    let (closed, after) = trickled_frame_closes(config, Life::AnyByte).await;
    assert_eq!(closed.reason, CloseReason::FrameTimeout);
    assert!(after >= Duration::from_secs(3), "{after:?}");
}

#[tokio::test]
async fn a_kick_reaches_the_handler_as_a_close_with_its_reason() {
    let mut server = Netserver::start(plain(), Life::AnyByte).await;
    let mut peer = Peer::connect(server.addr).await;
    let mut other = Peer::connect(server.addr).await;
    peer.send(b"a").await;
    other.send(b"b").await;
    assert_eq!(peer.frame().await.as_deref(), Some("a"));
    assert_eq!(other.frame().await.as_deref(), Some("b"));
    let target = server.registry.snapshot()[0].clone();
    assert!(server.registry.kick(target.id));
    let kicked = match target.peer == peer.stream.local_addr().unwrap() {
        true => &mut peer,
        false => &mut other,
    };
    assert_eq!(kicked.frame().await.as_deref(), Some("bye:kicked"));
    assert_eq!(kicked.frame().await, None);
    let closed = server.next_close(PROMPT).await;
    assert_eq!((closed.id, closed.reason), (target.id, CloseReason::Kicked));
    assert_eq!(server.registry.len(), 1, "the other connection stays");
    server.stop().await;
}

#[tokio::test]
async fn a_peer_that_does_not_read_closes_as_write_timeout() {
    let config = Config {
        write_timeout: Duration::from_secs(1),
        send_buffer: Some(64 * 1024),
        ..plain()
    };
    let mut server = Netserver::start(config, Life::AnyByte).await;
    let mut peer = Peer::connect(server.addr).await;
    // Each `big` asks for 1 MiB; the peer reads none of it.
    for _ in 0..64 {
        if peer.stream.write_all(&netstring(b"big")).await.is_err() {
            break;
        }
    }
    let closed = server.next_close(Duration::from_secs(20)).await;
    assert_eq!(closed.reason, CloseReason::WriteTimeout);
    server.stop().await;
}

#[tokio::test]
async fn idle_timeout_and_max_age_are_the_layers() {
    let config = Config {
        idle_timeout: Some(Duration::from_millis(800)),
        ..plain()
    };
    let mut server = Netserver::start(config, Life::AnyByte).await;
    let mut peer = Peer::connect(server.addr).await;
    assert_eq!(peer.frame().await.as_deref(), Some("bye:idle_timeout"));
    let closed = server.next_close(PROMPT).await;
    assert_eq!(closed.reason, CloseReason::IdleTimeout);
    assert!(closed.detection_delay >= Duration::from_millis(800));
    server.stop().await;

    let config = Config {
        max_age: Some(Duration::from_millis(500)),
        max_age_grace: Duration::from_millis(700),
        ..plain()
    };
    let mut server = Netserver::start(config, Life::AnyByte).await;
    let mut peer = Peer::connect(server.addr).await;
    assert_eq!(peer.frame().await.as_deref(), Some("goaway:700"));
    assert_eq!(peer.frame().await.as_deref(), Some("bye:max_age"));
    assert_eq!(server.next_close(PROMPT).await.reason, CloseReason::MaxAge);
    server.stop().await;
}

#[tokio::test]
async fn a_request_the_codec_refuses_closes_as_protocol_error() {
    let mut server = Netserver::start(plain(), Life::AnyByte).await;
    let mut peer = Peer::connect(server.addr).await;
    peer.stream.write_all(b"3:abc;").await.unwrap();
    assert_eq!(peer.frame().await, None);
    assert_eq!(
        server.next_close(PROMPT).await.reason,
        CloseReason::ProtocolError
    );
    server.stop().await;
}

#[tokio::test]
async fn under_memory_pressure_the_largest_partial_frame_is_closed_first() {
    let config = Config {
        max_frame: 1024,
        max_buffered: Some(4096),
        ..plain()
    };
    let mut server = Netserver::start(config, Life::AnyByte).await;
    let mut large = Peer::connect(server.addr).await;
    let mut small = Peer::connect(server.addr).await;
    large.stream.write_all(b"9000:").await.unwrap();
    large.stream.write_all(&[b'x'; 2500]).await.unwrap();
    common::wait_until(PROMPT, || {
        server
            .registry
            .snapshot()
            .iter()
            .any(|c| c.buffered >= 2500)
    })
    .await;
    small.stream.write_all(b"9000:").await.unwrap();
    small.stream.write_all(&[b'y'; 2000]).await.unwrap();
    assert_eq!(large.frame().await.as_deref(), Some("bye:memory_pressure"));
    let closed = server.next_close(PROMPT).await;
    assert_eq!(closed.reason, CloseReason::MemoryPressure);
    assert_eq!(closed.peer, large.stream.local_addr().unwrap());
    assert_eq!(server.registry.len(), 1, "the smaller holder stays");
    server.stop().await;
}

#[tokio::test]
async fn shutdown_drains_then_closes_in_the_protocols_words() {
    let server = Netserver::start(plain(), Life::AnyByte).await;
    let mut peer = Peer::connect(server.addr).await;
    peer.send(b"a").await;
    assert_eq!(peer.frame().await.as_deref(), Some("a"));
    let mut closes = server.registry.subscribe();
    let registry = server.registry.clone();
    let stopping = tokio::spawn(server.stop());
    assert_eq!(peer.frame().await.as_deref(), Some("drain"));
    // Still served while it drains.
    peer.send(b"b").await;
    assert_eq!(peer.frame().await.as_deref(), Some("b"));
    assert_eq!(peer.frame().await.as_deref(), Some("bye:shutdown"));
    let closed = next_close(&mut closes, PROMPT).await;
    assert_eq!(closed.reason, CloseReason::Shutdown);
    let report = stopping.await.expect("stopped");
    assert_eq!(report.connections_left, 0);
    assert!(registry.is_empty());
}

#[tokio::test]
async fn a_peer_that_closes_after_its_requests_leaves_before_the_drain_ends() {
    let server = Netserver::start(plain(), Life::AnyByte).await;
    let mut peer = Peer::connect(server.addr).await;
    peer.send(b"a").await;
    assert_eq!(peer.frame().await.as_deref(), Some("a"));
    let started = Instant::now();
    let stopping = tokio::spawn(server.stop());
    assert_eq!(peer.frame().await.as_deref(), Some("drain"));
    drop(peer);
    let report = stopping.await.expect("stopped");
    assert_eq!(report.connections_left, 0);
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "the shutdown ended when the last connection did, not at its grace ({:?})",
        started.elapsed()
    );
}

#[tokio::test]
async fn limits_refuse_before_the_handler_runs() {
    let config = Config {
        max_connections: 1,
        ..plain()
    };
    let mut server = Netserver::start(config, Life::AnyByte).await;
    let mut first = Peer::connect(server.addr).await;
    first.send(b"a").await;
    assert_eq!(first.frame().await.as_deref(), Some("a"));
    let mut second = Peer::connect(server.addr).await;
    let closed = server.next_close(PROMPT).await;
    assert_eq!(closed.reason, CloseReason::ServerFull);
    assert_eq!(closed.id, 0, "refused, never registered");
    let mut rest = Vec::new();
    let _ = second.stream.read_to_end(&mut rest).await;
    assert!(
        rest.is_empty(),
        "no JSON line to a peer of another protocol"
    );
    assert_eq!(server.registry.len(), 1);
    server.stop().await;
}

/// An upgrade of a server with a protocol of its own: the new process (here `connwarden serve`,
/// as a library user's own command would be started) takes the listener; the old one's
/// connections are not moved (their state is the handler's) but told `goaway` in the
/// protocol's words, served on until their clients leave, and `run` returns then.
#[cfg(target_os = "linux")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_an_upgrade_the_handlers_connections_are_told_goaway_and_served_until_they_leave() {
    use connwarden::upgrade::Upgrade;
    use std::process::{Command, Stdio};

    /// The new process, killed when the test ends on every path.
    struct KillOnDrop(u32);
    impl Drop for KillOnDrop {
        fn drop(&mut self) {
            // SAFETY: kill(2) on the pid the upgrade reported; at worst it is gone already.
            unsafe { libc::kill(self.0 as i32, libc::SIGKILL) };
        }
    }

    let config = Config {
        goaway_window: Duration::from_secs(2),
        ..plain()
    };
    let server = Server::builder(config).handler(serve).build().unwrap();
    let upgrader = server.upgrader();
    let registry = server.registry();
    let listeners = server.bind().unwrap();
    let addr = listeners[0].local_addr().unwrap();
    let running = tokio::spawn(server.run(listeners, std::future::pending()));
    let mut peer = Peer::connect(addr).await;
    peer.send(b"before").await;
    assert_eq!(peer.frame().await.as_deref(), Some("before"));

    let mut command = Command::new(common::binary());
    command
        .args(["serve", "--listen", "127.0.0.1:0", "--admin", "off"])
        .args(["--sink", "stdout"])
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let pid = upgrader
        .upgrade(Upgrade::new(command))
        .await
        .expect("the new process takes over");
    let _new = KillOnDrop(pid);
    assert_eq!(peer.frame().await.as_deref(), Some("goaway:2000"));
    // Served here until it leaves.
    peer.send(b"after").await;
    assert_eq!(peer.frame().await.as_deref(), Some("after"));
    let mut closes = registry.subscribe();
    drop(peer);
    assert_eq!(
        next_close(&mut closes, PROMPT).await.reason,
        CloseReason::PeerClosed
    );
    let report = tokio::time::timeout(Duration::from_secs(20), running)
        .await
        .expect("run ends once its last connection left")
        .unwrap()
        .unwrap();
    assert_eq!(report.handed_over, 0, "{report:?}");

    // The port is the new process's now: it answers in its own protocol.
    let mut client = TcpStream::connect(addr)
        .await
        .expect("the new process listens");
    client
        .write_all(b"{\"ip\":\"192.0.2.1\",\"id\":1}\n")
        .await
        .unwrap();
    let mut answer = vec![0; 64];
    let n = tokio::time::timeout(PROMPT, client.read(&mut answer))
        .await
        .expect("an answer")
        .unwrap();
    assert!(
        String::from_utf8_lossy(&answer[..n]).contains("\"ack\""),
        "{}",
        String::from_utf8_lossy(&answer[..n])
    );
}

#[test]
fn a_handler_with_a_sink_or_the_gateways_tls_is_refused_by_name() {
    let (sink, _records) = connwarden::sink::ChannelSink::new(1);
    let both = Server::builder(plain()).handler(serve).sink(sink).build();
    assert!(
        matches!(both, Err(connwarden::ServerError::SinkWithHandler)),
        "{:?}",
        both.err()
    );
    let tls = Config {
        tls_cert: Some("cert.pem".into()),
        tls_key: Some("key.pem".into()),
        ..plain()
    };
    let error = Server::builder(tls)
        .handler(serve)
        .build()
        .err()
        .expect("refused");
    assert!(error.to_string().contains("tls_cert"), "{error}");
}
