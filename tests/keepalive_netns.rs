//! Dead peers on a real link: a veth pair between two network namespaces, the client's end
//! taken down. Needs root and iproute2 (CI installs it); skipped with a line saying so without
//! them, unless `CW_TEST_REQUIRE_NETNS=1` (as in CI).

use connwarden_test_common as common;

use std::time::{Duration, Instant};

use common::{next_close, test_config, Client, NetnsPair, TestServer};
use connwarden::config::{HeartbeatMode, Keepalive, UserTimeout};
use connwarden::sink::ChannelSink;
use connwarden::CloseReason;

/// Slack on top of each bound: timer granularity and the kernel's probe scheduling.
const SLACK: Duration = Duration::from_secs(1);

/// Takes the client's link down and expects the server to close the connection with `reason`
/// within `bound` (watching `bound + grace` for the close at all).
async fn cut_link_and_expect(
    net: &NetnsPair,
    closes: &mut tokio::sync::broadcast::Receiver<connwarden::registry::ClosedConn>,
    reason: CloseReason,
    bound: Duration,
    grace: Duration,
    transport: &str,
) {
    let cut = Instant::now();
    net.client_link_down();
    let closed = next_close(closes, bound + grace).await;
    let detected = cut.elapsed();
    assert_eq!(closed.reason, reason);
    assert!(
        detected <= bound,
        "detected after {detected:?}, bound {bound:?}"
    );
    println!("{transport}: {reason} detected {detected:?} after link down (bound {bound:?})");
}

/// `park_after` of the tests whose connections park before their link goes down.
const PARK_AFTER: Duration = Duration::from_millis(500);

/// Waits until `server` holds `n` parked connections (`park_after`).
async fn wait_parked(server: &TestServer, n: u64) {
    let metrics = std::sync::Arc::clone(&server.metrics);
    common::wait_until(common::PROMPT, || metrics.parked_connections() == n).await;
}

/// Once the server's one connection parked (when `parked`), takes the client's link down and
/// expects the close `reason` within `bound` (watching `grace` more), the entry gone and no
/// connection left parked.
async fn cut_once_parked(
    net: &NetnsPair,
    server: &TestServer,
    closes: &mut tokio::sync::broadcast::Receiver<connwarden::registry::ClosedConn>,
    (reason, bound, grace): (CloseReason, Duration, Duration),
    parked: bool,
) {
    if parked {
        wait_parked(server, 1).await;
    }
    let transport = if parked { "parked" } else { "plain" };
    cut_link_and_expect(net, closes, reason, bound, grace, transport).await;
    assert!(server.registry.is_empty());
    assert_eq!(server.metrics.parked_connections(), 0);
}

/// An idle client (no heartbeat, so only keep-alive can notice) whose link goes down is closed
/// as `keepalive_timeout` within the keep-alive bound; `parked`: once its connection parked.
async fn idle_dead_peer_closes_as_keepalive_timeout(net: &NetnsPair, port: u16, parked: bool) {
    let mut config = test_config();
    config.keepalive = Keepalive {
        idle: Duration::from_secs(2),
        interval: Duration::from_secs(1),
        count: 3,
    };
    config.heartbeat = HeartbeatMode::Off;
    if parked {
        config.park_after = Some(PARK_AFTER);
    }
    let bound = config.keepalive.bound() + SLACK;
    let (sink, mut records) = ChannelSink::new(16);
    let server = TestServer::start_on(config, sink, net.server_listener(port)).await;
    let mut closes = server.registry.subscribe();
    let mut client = Client::from_stream(net.client_connect(port));
    client.send(b"{\"ip\":\"10.231.0.2\"}\n").await;
    tokio::time::timeout(common::PROMPT, records.recv())
        .await
        .unwrap()
        .unwrap();
    let reason = CloseReason::KeepaliveTimeout;
    let grace = Duration::from_secs(10);
    cut_once_parked(net, &server, &mut closes, (reason, bound, grace), parked).await;
    server.shutdown().await;
}

/// A client that said `hello`, whose link goes down: the heartbeat's ping stays
/// unacknowledged and the user timeout closes it within the ping's interval + the user timeout
/// (the heartbeat itself allows far more misses); `parked`: once its connection parked, so that
/// the ping is what wakes it.
async fn stuck_dead_peer_closes_as_user_timeout(net: &NetnsPair, port: u16, parked: bool) {
    let mut config = test_config();
    // Keep-alive far away: with data in flight it would not run anyway; the user timeout must.
    config.keepalive = Keepalive {
        idle: Duration::from_secs(30),
        interval: Duration::from_secs(3),
        count: 3,
    };
    let user_timeout = Duration::from_secs(3);
    config.user_timeout = UserTimeout::Fixed(user_timeout);
    // The server has something to send to the dead peer: a ping after each interval of
    // silence (past `park_after` when the connection parks first).
    config.heartbeat = HeartbeatMode::Required;
    config.heartbeat_interval = Duration::from_secs(if parked { 2 } else { 1 });
    config.heartbeat_misses = 60;
    if parked {
        config.park_after = Some(PARK_AFTER);
    }
    let bound = config.heartbeat_interval + user_timeout + SLACK;
    let (sink, _records) = ChannelSink::new(16);
    let server = TestServer::start_on(config, sink, net.server_listener(port)).await;
    let mut closes = server.registry.subscribe();
    let mut client = Client::from_stream(net.client_connect(port));
    client.send(b"{\"type\":\"hello\"}\n").await;
    assert_eq!(client.line().await["type"], "hello");
    let reason = CloseReason::UserTimeout;
    let grace = Duration::from_secs(20);
    cut_once_parked(net, &server, &mut closes, (reason, bound, grace), parked).await;
    server.shutdown().await;
}

#[tokio::test]
async fn idle_dead_peer_closes_as_keepalive_timeout_within_bound() {
    let Some(net) = NetnsPair::create("idle_dead_peer_closes_as_keepalive_timeout_within_bound")
    else {
        return;
    };
    idle_dead_peer_closes_as_keepalive_timeout(&net, 7000, false).await;
}

#[tokio::test]
async fn dead_peer_with_unacknowledged_data_closes_as_user_timeout_within_bound() {
    let Some(net) =
        NetnsPair::create("dead_peer_with_unacknowledged_data_closes_as_user_timeout_within_bound")
    else {
        return;
    };
    stuck_dead_peer_closes_as_user_timeout(&net, 7001, false).await;
}

/// A TLS session from the client namespace to a server whose certificate `ca` signed.
async fn tls_client(
    net: &NetnsPair,
    port: u16,
    ca: &common::certs::Ca,
) -> tokio_rustls::client::TlsStream<tokio::net::TcpStream> {
    let connector = tokio_rustls::TlsConnector::from(common::certs::client_config(ca, None));
    let name = rustls::pki_types::ServerName::try_from("localhost").expect("name");
    tokio::time::timeout(
        common::PROMPT,
        connector.connect(name, net.client_connect(port)),
    )
    .await
    .expect("handshake in time")
    .expect("handshake")
}

/// The same two failures under TLS: keep-alive and the user timeout act on the TCP socket under
/// the session, so the bounds are the same.
#[tokio::test]
async fn under_tls_idle_and_stuck_dead_peers_close_within_the_same_bounds() {
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
    const TEST: &str = "under_tls_idle_and_stuck_dead_peers_close_within_the_same_bounds";
    if !common::netns_or_skip(TEST) {
        return;
    }
    let dir = tempfile::tempdir().expect("temp dir");
    let ca = common::certs::Ca::new("netns CA");
    let (cert, key) = common::certs::write_pair(dir.path(), "server", &ca.issue("server", false));
    let mut config = test_config();
    config.tls_cert = Some(cert);
    config.tls_key = Some(key);
    config.keepalive = Keepalive {
        idle: Duration::from_secs(2),
        interval: Duration::from_secs(1),
        count: 3,
    };
    config.user_timeout = UserTimeout::Fixed(Duration::from_secs(3));
    config.heartbeat = HeartbeatMode::Negotiated;
    config.heartbeat_interval = Duration::from_secs(1);
    config.heartbeat_misses = 60;

    // Idle (no hello, no heartbeat): keep-alive.
    let net = NetnsPair::create(TEST).expect("checked above");
    let (sink, mut records) = ChannelSink::new(16);
    let server = TestServer::start_on(config.clone(), sink, net.server_listener(7002)).await;
    let mut closes = server.registry.subscribe();
    let mut idle = tls_client(&net, 7002, &ca).await;
    idle.write_all(b"{\"ip\":\"10.231.0.2\"}\n")
        .await
        .expect("send");
    idle.flush().await.expect("flush");
    tokio::time::timeout(common::PROMPT, records.recv())
        .await
        .expect("the item in time")
        .expect("a record");
    let bound = config.keepalive.bound() + SLACK;
    cut_link_and_expect(
        &net,
        &mut closes,
        CloseReason::KeepaliveTimeout,
        bound,
        Duration::from_secs(10),
        "TLS",
    )
    .await;
    server.shutdown().await;
    drop(net);

    // With a hello, the heartbeat's pings stay unacknowledged: the user timeout.
    let net = NetnsPair::create(TEST).expect("checked above");
    let (sink, _records) = ChannelSink::new(16);
    let server = TestServer::start_on(config.clone(), sink, net.server_listener(7003)).await;
    let mut closes = server.registry.subscribe();
    let mut stuck = BufReader::new(tls_client(&net, 7003, &ca).await);
    stuck
        .get_mut()
        .write_all(b"{\"type\":\"hello\"}\n")
        .await
        .expect("send");
    stuck.get_mut().flush().await.expect("flush");
    let mut line = String::new();
    tokio::time::timeout(common::PROMPT, stuck.read_line(&mut line))
        .await
        .expect("hello in time")
        .expect("hello");
    assert!(line.contains("\"hello\""), "{line}");
    let bound = config.heartbeat_interval + Duration::from_secs(3) + SLACK;
    cut_link_and_expect(
        &net,
        &mut closes,
        CloseReason::UserTimeout,
        bound,
        Duration::from_secs(20),
        "TLS",
    )
    .await;
    server.shutdown().await;
}

/// The same failures once the connections parked outside their tasks (`park_after`): the
/// kernel's keep-alive and user timeout run on a parked socket as on any, its error wakes the
/// connection, and a frozen peer's missed pings are counted across its parks. Each bound is
/// the unparked one.
#[tokio::test]
async fn parked_dead_and_frozen_peers_close_within_the_same_bounds() {
    const TEST: &str = "parked_dead_and_frozen_peers_close_within_the_same_bounds";
    if !common::netns_or_skip(TEST) {
        return;
    }
    let net = NetnsPair::create(TEST).expect("checked above");
    idle_dead_peer_closes_as_keepalive_timeout(&net, 7004, true).await;
    drop(net);
    let net = NetnsPair::create(TEST).expect("checked above");
    stuck_dead_peer_closes_as_user_timeout(&net, 7005, true).await;
    drop(net);

    // Frozen: its kernel acknowledges, it answers no ping. Between pings the connection parks.
    let net = NetnsPair::create(TEST).expect("checked above");
    let mut frozen = test_config();
    frozen.park_after = Some(PARK_AFTER);
    frozen.heartbeat = HeartbeatMode::Required;
    frozen.heartbeat_interval = Duration::from_secs(2);
    frozen.heartbeat_misses = 3;
    let (sink, _records) = ChannelSink::new(16);
    let server = TestServer::start_on(frozen.clone(), sink, net.server_listener(7006)).await;
    let mut closes = server.registry.subscribe();
    let mut client = Client::from_stream(net.client_connect(7006));
    client.send(b"{\"type\":\"hello\"}\n").await;
    assert_eq!(client.line().await["type"], "hello");
    let since = Instant::now();
    wait_parked(&server, 1).await;
    let closed = next_close(&mut closes, Duration::from_secs(20)).await;
    let detected = since.elapsed();
    let bound = frozen.heartbeat_interval * frozen.heartbeat_misses + SLACK;
    assert_eq!(closed.reason, CloseReason::HeartbeatTimeout);
    assert!(
        detected <= bound,
        "detected after {detected:?}, bound {bound:?}"
    );
    let parks = server.metrics.parked_connections();
    println!("parked: heartbeat_timeout detected {detected:?} after hello (bound {bound:?}; parked now {parks})");
    drop(client);
    server.shutdown().await;
}
