//! Every way a connection ends has its one reason, and the registry is empty afterwards.
//! (Keep-alive and user timeouts need a dead link: see `keepalive_netns.rs`.)

use connwarden_test_common as common;

use std::time::Duration;

use common::{expect_close, test_config, wait_until, TestServer, PROMPT};
use connwarden::config::HeartbeatMode;
use connwarden::CloseReason;
use tokio::io::AsyncReadExt;

#[tokio::test]
async fn orderly_close_by_peer_is_peer_closed() {
    let mut server = TestServer::start(test_config()).await;
    let mut client = server.connect().await;
    client.send(b"{\"ip\":\"192.0.2.1\"}\n").await;
    server.next_record().await;
    drop(client);
    let closed = expect_close(&mut server, CloseReason::PeerClosed).await;
    assert_eq!(closed.items, 1);
    assert_eq!(closed.bytes_in, 19);
    server.shutdown().await;
}

#[tokio::test]
async fn abortive_close_by_peer_is_reset() {
    let mut server = TestServer::start(test_config()).await;
    let client = server.connect().await;
    server.wait_live(1).await;
    let stream = client.reader.into_inner().reunite(client.writer).unwrap();
    // Linger 0: close sends RST instead of FIN.
    socket2::SockRef::from(&stream)
        .set_linger(Some(Duration::ZERO))
        .unwrap();
    drop(stream);
    expect_close(&mut server, CloseReason::Reset).await;
    server.shutdown().await;
}

#[tokio::test]
async fn silent_client_after_hello_is_closed_as_heartbeat_timeout() {
    let mut config = test_config();
    config.heartbeat_interval = Duration::from_millis(200);
    config.heartbeat_misses = 3;
    let mut server = TestServer::start(config).await;
    let mut plain = server.connect().await;
    plain.send(b"{\"ip\":\"192.0.2.1\"}\n").await;
    server.next_record().await;
    let mut client = server.connect().await;
    client.send(b"{\"type\":\"hello\"}\n").await;
    assert_eq!(client.line().await["type"], "hello");
    let started = std::time::Instant::now();
    assert_eq!(client.line().await["type"], "ping");
    assert_eq!(client.line().await["type"], "ping");
    let closed = server.next_close().await;
    assert_eq!(closed.reason, CloseReason::HeartbeatTimeout);
    let elapsed = started.elapsed();
    assert!(
        elapsed >= Duration::from_millis(550),
        "closed too early: {elapsed:?}"
    );
    assert!(
        elapsed < Duration::from_millis(600) + Duration::from_secs(1),
        "closed too late: {elapsed:?}"
    );
    // Negotiated: the client that never sent hello is not held to the heartbeat.
    assert_eq!(server.registry.len(), 1);
    drop(plain);
    expect_close(&mut server, CloseReason::PeerClosed).await;
    server.shutdown().await;
}

#[tokio::test]
async fn client_answering_pings_stays_connected() {
    let mut config = test_config();
    config.heartbeat = HeartbeatMode::Required;
    config.heartbeat_interval = Duration::from_millis(100);
    config.heartbeat_misses = 2;
    let mut server = TestServer::start(config).await;
    let mut client = server.connect().await;
    for _ in 0..5 {
        assert_eq!(client.line().await["type"], "ping");
        client.send(b"{\"type\":\"pong\"}\n").await;
    }
    assert_eq!(
        server.registry.len(),
        1,
        "answering client still connected after 5 pings"
    );
    drop(client);
    expect_close(&mut server, CloseReason::PeerClosed).await;
    server.shutdown().await;
}

#[tokio::test]
async fn required_heartbeat_closes_a_client_that_never_sent_hello() {
    let mut config = test_config();
    config.heartbeat = HeartbeatMode::Required;
    config.heartbeat_interval = Duration::from_millis(100);
    config.heartbeat_misses = 2;
    let mut server = TestServer::start(config).await;
    let _client = server.connect().await;
    expect_close(&mut server, CloseReason::HeartbeatTimeout).await;
    server.shutdown().await;
}

#[tokio::test]
async fn silent_connection_is_closed_as_idle_timeout() {
    let mut config = test_config();
    config.heartbeat = HeartbeatMode::Off;
    config.idle_timeout = Some(Duration::from_millis(300));
    let mut server = TestServer::start(config).await;
    let mut client = server.connect().await;
    let started = std::time::Instant::now();
    expect_close(&mut server, CloseReason::IdleTimeout).await;
    assert!(started.elapsed() >= Duration::from_millis(290));
    assert_eq!(client.until_closed().await, "");
    server.shutdown().await;
}

#[tokio::test]
async fn client_that_stops_reading_is_closed_as_write_timeout_and_keeps_what_was_acknowledged() {
    let mut config = test_config();
    config.write_timeout = Duration::from_millis(500);
    config.send_buffer = Some(4096);
    let mut server = TestServer::start(config).await;
    // A small receive window and nobody reading: the acks back up on the server.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let stream = socket.connect(server.addr).await.unwrap();
    let (_unread, mut write) = stream.into_split();
    let writer = tokio::spawn(async move {
        use tokio::io::AsyncWriteExt;
        for chunk in 0..2000u64 {
            let mut text = String::new();
            for i in chunk * 100..(chunk + 1) * 100 {
                text.push_str(&format!("{{\"ip\":\"192.0.2.1\",\"id\":{i}}}\n"));
            }
            if write.write_all(text.as_bytes()).await.is_err() {
                break;
            }
        }
    });
    let closed = server.next_close().await;
    assert_eq!(closed.reason, CloseReason::WriteTimeout);
    writer.abort();
    wait_until(PROMPT, || server.registry.is_empty()).await;
    // Every item the server took from this client (each acknowledged once stored, whether or
    // not the client read the ack) is in the sink, in order, none missing.
    assert!(closed.items > 0);
    for expected in 0..closed.items {
        let record = server.next_record().await;
        assert_eq!(record.id.as_deref(), Some(expected.to_string().as_bytes()));
    }
    let report = server.shutdown().await;
    assert_eq!((report.written, report.failed), (closed.items, 0));
}

#[tokio::test]
async fn client_over_its_error_budget_is_closed_as_protocol_error() {
    let mut config = test_config();
    config.error_budget = 3;
    let mut server = TestServer::start(config).await;
    let mut client = server.connect().await;
    client
        .send(b"x\ny\nz\n{\"ip\":\"192.0.2.1\"}\nw\n{\"ip\":\"192.0.2.2\"}\n")
        .await;
    let rest = client.until_closed().await;
    let codes: Vec<String> = rest
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["code"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect();
    assert_eq!(
        codes,
        [
            "invalid_json",
            "invalid_json",
            "invalid_json",
            "invalid_json",
            "too_many_errors"
        ]
    );
    let closed = expect_close(&mut server, CloseReason::ProtocolError).await;
    assert_eq!(
        closed.items, 1,
        "the valid item before the fourth error was kept"
    );
    server.shutdown().await;
}

#[tokio::test]
async fn object_over_max_frame_is_closed_as_frame_too_large() {
    let mut config = test_config();
    config.max_frame = 64;
    let mut server = TestServer::start(config).await;
    let mut client = server.connect().await;
    client.send(b"{\"ip\":\"192.0.2.1\"}\n").await;
    let big = format!("{{\"ip\":\"192.0.2.2\",\"pad\":\"{}\"}}\n", "x".repeat(100));
    client.send(big.as_bytes()).await;
    let rest = client.until_closed().await;
    assert!(rest.contains("\"code\":\"frame_too_large\""), "{rest}");
    server.next_record().await;
    expect_close(&mut server, CloseReason::FrameTooLarge).await;
    server.shutdown().await;
}

#[tokio::test]
async fn old_connection_is_told_then_closed_as_max_age() {
    let mut config = test_config();
    config.max_age = Some(Duration::from_millis(200));
    config.max_age_grace = Duration::from_millis(300);
    let mut server = TestServer::start(config).await;
    let mut client = server.connect().await;
    let notice = client.line().await;
    assert_eq!(notice["code"], "max_age");
    // Items are still taken during the grace period.
    client.send(b"{\"ip\":\"192.0.2.1\",\"id\":1}\n").await;
    assert_eq!(client.line().await["type"], "ack");
    expect_close(&mut server, CloseReason::MaxAge).await;
    server.shutdown().await;
}

#[tokio::test]
async fn connection_over_max_connections_gets_server_full_and_others_are_untouched() {
    let mut config = test_config();
    config.max_connections = 1;
    let mut server = TestServer::start(config).await;
    let mut first = server.connect().await;
    server.wait_live(1).await;
    let mut second = server.connect().await;
    let refusal = second.until_closed().await;
    let refusal: serde_json::Value = serde_json::from_str(refusal.trim()).unwrap();
    assert_eq!(refusal["code"], "server_full");
    let closed = server.next_close().await;
    assert_eq!(closed.reason, CloseReason::ServerFull);
    first
        .send(b"{\"ip\":\"192.0.2.1\",\"id\":\"still-here\"}\n")
        .await;
    assert_eq!(first.line().await["id"], "still-here");
    assert_eq!(server.registry.len(), 1);
    drop(first);
    expect_close(&mut server, CloseReason::PeerClosed).await;
    server.shutdown().await;
}

#[tokio::test]
async fn kicked_connection_is_closed_as_kicked() {
    let mut server = TestServer::start(test_config()).await;
    let mut client = server.connect().await;
    server.wait_live(1).await;
    let id = server.registry.snapshot()[0].id;
    assert!(server.registry.kick(id));
    expect_close(&mut server, CloseReason::Kicked).await;
    assert_eq!(client.until_closed().await, "");
    server.shutdown().await;
}

#[tokio::test]
async fn shutdown_closes_connections_as_shutdown_with_a_notice() {
    let server = TestServer::start(test_config()).await;
    let mut closes = server.registry.subscribe();
    let mut client = server.connect().await;
    server.wait_live(1).await;
    let reader = tokio::spawn(async move {
        let mut all = String::new();
        let _ = client.reader.read_to_string(&mut all).await;
        all
    });
    server.shutdown().await;
    let closed = common::next_close(&mut closes, PROMPT).await;
    assert_eq!(closed.reason, CloseReason::Shutdown);
    let notice = tokio::time::timeout(PROMPT, reader).await.unwrap().unwrap();
    assert!(notice.contains("shutting_down"), "{notice}");
}
