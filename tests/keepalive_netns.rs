//! Dead peers on a real link: a veth pair between two network namespaces, the client's end
//! taken down. Needs root and iproute2 (CI installs it).

mod common;

use std::time::{Duration, Instant};

use common::{next_close, test_config, Client, NetnsPair, TestServer};
use connwarden::config::{HeartbeatMode, Keepalive, UserTimeout};
use connwarden::sink::ChannelSink;
use connwarden::CloseReason;

/// Slack on top of each bound: timer granularity and the kernel's probe scheduling.
const SLACK: Duration = Duration::from_secs(1);

#[tokio::test]
async fn idle_dead_peer_closes_as_keepalive_timeout_within_bound() {
    let net = NetnsPair::create();
    let mut config = test_config();
    config.keepalive = Keepalive {
        idle: Duration::from_secs(2),
        interval: Duration::from_secs(1),
        count: 3,
    };
    config.heartbeat = HeartbeatMode::Off;
    let bound = config.keepalive.bound() + SLACK;
    let (sink, mut records) = ChannelSink::new(16);
    let server = TestServer::start_on(config, sink, net.server_listener(7000)).await;
    let mut closes = server.registry.subscribe();
    let mut client = Client::from_stream(net.client_connect(7000));
    client.send(b"{\"ip\":\"10.231.0.2\"}\n").await;
    tokio::time::timeout(common::PROMPT, records.recv())
        .await
        .unwrap()
        .unwrap();

    let cut = Instant::now();
    net.client_link_down();
    let closed = next_close(&mut closes, bound + Duration::from_secs(10)).await;
    let detected = cut.elapsed();
    assert_eq!(closed.reason, CloseReason::KeepaliveTimeout);
    assert!(
        detected <= bound,
        "detected after {detected:?}, bound {bound:?}"
    );
    println!("keepalive_timeout detected {detected:?} after link down (bound {bound:?})");
    assert!(server.registry.is_empty());
    server.shutdown().await;
}

#[tokio::test]
async fn dead_peer_with_unacknowledged_data_closes_as_user_timeout_within_bound() {
    let net = NetnsPair::create();
    let mut config = test_config();
    // Keep-alive far away: with data in flight it would not run anyway; the user timeout must.
    config.keepalive = Keepalive {
        idle: Duration::from_secs(30),
        interval: Duration::from_secs(3),
        count: 3,
    };
    config.user_timeout = UserTimeout::Fixed(Duration::from_secs(3));
    // The server has something to send to the dead peer: a ping after each second of silence.
    config.heartbeat = HeartbeatMode::Required;
    config.heartbeat_interval = Duration::from_secs(1);
    config.heartbeat_misses = 60;
    let user_timeout = Duration::from_secs(3);
    let bound = config.heartbeat_interval + user_timeout + SLACK;
    let (sink, _records) = ChannelSink::new(16);
    let server = TestServer::start_on(config, sink, net.server_listener(7001)).await;
    let mut closes = server.registry.subscribe();
    let mut client = Client::from_stream(net.client_connect(7001));
    client.send(b"{\"type\":\"hello\"}\n").await;
    assert_eq!(client.line().await["type"], "hello");

    let cut = Instant::now();
    net.client_link_down();
    let closed = next_close(&mut closes, bound + Duration::from_secs(20)).await;
    let detected = cut.elapsed();
    assert_eq!(closed.reason, CloseReason::UserTimeout);
    assert!(
        detected <= bound,
        "detected after {detected:?}, bound {bound:?}"
    );
    println!("user_timeout detected {detected:?} after link down (bound {bound:?})");
    assert!(server.registry.is_empty());
    server.shutdown().await;
}
