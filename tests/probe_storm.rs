//! A probe storm made for real and named: connections accepted together, keep-alive phases
//! off, a split with one probe, so the probes of one timer-wheel bucket overflow the loopback
//! backlog (`net.core.netdev_max_backlog`, 1,000 here) and healthy peers are closed as
//! `keepalive_timeout`. The server must say why, once (a "probe storm" warning with the drops
//! it saw), and count it (`connwarden_keepalive_storms_total`). The peers are this test's own
//! sockets, open throughout: every close is a false one.

use connwarden_test_common as common;

use std::net::TcpStream;
use std::time::Duration;

use common::metric;

const PEERS: usize = 6000;
const STORM: &str =
    "probe storm: healthy peers closed by dropped keep-alive probes (counted in connwarden_keepalive_storms_total)";

#[test]
fn keepalive_closes_in_a_burst_while_the_kernel_drops_packets_are_named_and_counted() {
    let backlog: u64 = std::fs::read_to_string("/proc/sys/net/core/netdev_max_backlog")
        .expect("netdev_max_backlog")
        .trim()
        .parse()
        .expect("a number");
    assert!(
        backlog * 3 < PEERS as u64,
        "net.core.netdev_max_backlog {backlog} holds the burst of {PEERS} probes: this test needs the kernel default (1000)"
    );
    let max = (PEERS + 100).to_string();
    let (mut server, admin, addr) = common::serve()
        .args(&[
            "--keepalive-spread",
            "false",
            "--keepalive-idle",
            "20s",
            "--keepalive-interval",
            "1s",
            "--keepalive-count",
            "1",
            "--user-timeout",
            "off",
            "--max-connections",
            &max,
        ])
        .within(Duration::from_secs(10))
        .start();
    // As fast as one thread connects: a few hundred milliseconds, within one 2 s wheel bucket
    // of the 20 s timers (or two).
    let peers: Vec<TcpStream> = (0..PEERS)
        .map(|i| TcpStream::connect(&addr).unwrap_or_else(|e| panic!("peer {i}: {e}")))
        .collect();
    let storm = server
        .wait_log_within(STORM, Duration::from_secs(60))
        .expect("a probe storm named");
    eprintln!("{storm}");
    assert!(storm["softnet_dropped"].as_u64().unwrap() > 0, "{storm}");
    assert!(storm["keepalive_closes"].as_u64().unwrap() >= 10, "{storm}");
    let exposition = admin.metrics();
    let storms = metric(&exposition, "connwarden_keepalive_storms_total").unwrap_or(0.0);
    assert!(storms >= 1.0, "storms counted: {storms}");
    let closed = metric(
        &exposition,
        "connwarden_connections_closed_total{reason=\"keepalive_timeout\"}",
    )
    .unwrap_or(0.0);
    eprintln!("{closed} of {PEERS} healthy peers closed as keepalive_timeout; {storms} storms");
    drop(peers);
}
