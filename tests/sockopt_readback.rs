//! The options the server sets are the options in force on the socket it accepted, read back
//! with getsockopt from that very socket (found among this process's descriptors).

use connwarden_test_common as common;

use std::net::SocketAddr;
use std::os::fd::BorrowedFd;
use std::time::Duration;

use common::{test_config, TestServer};
use connwarden::config::{Keepalive, UserTimeout};
use connwarden::sockopt::{self, Effective, SocketOptions};
use socket2::SockRef;

/// Reads the options of the socket in this process whose ends are `local` and `peer`.
fn read_back_accepted(local: SocketAddr, peer: SocketAddr) -> Option<Effective> {
    for entry in std::fs::read_dir("/proc/self/fd").ok()?.flatten() {
        let Ok(fd) = entry.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let is_socket = std::fs::read_link(entry.path())
            .map(|target| target.to_string_lossy().starts_with("socket:"))
            .unwrap_or(false);
        if !is_socket {
            continue;
        }
        // SAFETY: the descriptor was listed as open in this process a moment ago and is only
        // used for getsockopt/getsockname/getpeername, which cannot harm any socket (a descriptor
        // closed and reused meanwhile would fail the address check below).
        let borrowed = unsafe { BorrowedFd::borrow_raw(fd) };
        let socket = SockRef::from(&borrowed);
        let ends = (socket.local_addr(), socket.peer_addr());
        if let (Ok(l), Ok(p)) = ends {
            if l.as_socket() == Some(local) && p.as_socket() == Some(peer) {
                return Some(sockopt::read_back(socket));
            }
        }
    }
    None
}

async fn accepted_options(config: connwarden::Config) -> (Effective, SocketOptions) {
    let asked = SocketOptions::from_config(&config);
    let server = TestServer::start(config).await;
    let client = server.connect().await;
    server.wait_live(1).await;
    let client_addr = client.writer.local_addr().unwrap();
    let effective = read_back_accepted(server.addr, client_addr)
        .expect("accepted socket found in this process");
    drop(client);
    server.shutdown().await;
    (effective, asked)
}

#[tokio::test]
async fn accepted_socket_has_the_configured_keepalive_and_user_timeout() {
    let mut config = test_config();
    config.keepalive = Keepalive {
        idle: Duration::from_secs(7),
        interval: Duration::from_secs(3),
        count: 4,
    };
    config.user_timeout = UserTimeout::Fixed(Duration::from_secs(23));
    // The configured idle exactly: no phase (that case is the next test).
    config.keepalive_spread = false;
    let (effective, asked) = accepted_options(config).await;
    assert_eq!(effective.keepalive, Some(true));
    assert_eq!(effective.keepalive_idle, Some(Duration::from_secs(7)));
    assert_eq!(effective.keepalive_interval, Some(Duration::from_secs(3)));
    assert_eq!(effective.keepalive_count, Some(4));
    assert_eq!(effective.user_timeout, Some(Duration::from_secs(23)));
    assert_eq!(effective.nodelay, Some(true));
    assert_eq!(effective.mismatches(&asked), vec![]);
}

/// With `keepalive_spread` (the default), the first accepted socket starts with the shortest
/// first idle of the sequence (1 s), and gets the configured idle back once its first probe had
/// the time to be answered; the other options are as configured throughout.
#[tokio::test]
async fn a_spread_socket_starts_with_a_shorter_idle_and_gets_the_configured_one_back() {
    let mut config = test_config();
    config.keepalive = Keepalive {
        idle: Duration::from_secs(7),
        interval: Duration::from_secs(1),
        count: 4,
    };
    let server = TestServer::start(config).await;
    let client = server.connect().await;
    server.wait_live(1).await;
    let client_addr = client.writer.local_addr().unwrap();
    let read = || read_back_accepted(server.addr, client_addr).expect("accepted socket");
    let first = read();
    assert_eq!(
        first.keepalive_idle,
        Some(Duration::from_secs(1)),
        "{first:?}"
    );
    assert_eq!(first.keepalive_interval, Some(Duration::from_secs(1)));
    assert_eq!(first.keepalive_count, Some(4));
    let deadline = tokio::time::Instant::now() + common::PROMPT;
    loop {
        let now = read();
        if now.keepalive_idle == Some(Duration::from_secs(7)) {
            assert_eq!(now.keepalive_count, Some(4));
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the idle was not put back within {:?}: {now:?}",
            common::PROMPT
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    drop(client);
    server.shutdown().await;
}

#[tokio::test]
async fn auto_user_timeout_is_idle_plus_interval_times_count() {
    let mut config = test_config();
    config.keepalive = Keepalive {
        idle: Duration::from_secs(5),
        interval: Duration::from_secs(2),
        count: 6,
    };
    let (effective, _) = accepted_options(config).await;
    assert_eq!(effective.user_timeout, Some(Duration::from_secs(17)));
}

#[test]
fn a_changed_value_is_reported_with_asked_and_effective() {
    let asked = SocketOptions::from_config(&test_config());
    let effective = Effective {
        keepalive: Some(true),
        keepalive_idle: Some(Duration::from_secs(7200)),
        keepalive_interval: Some(Duration::from_secs(1)),
        keepalive_count: Some(30),
        user_timeout: Some(Duration::from_secs(60)),
        nodelay: Some(true),
        ..Effective::default()
    };
    let mismatches = effective.mismatches(&asked);
    assert_eq!(mismatches.len(), 1, "{mismatches:?}");
    assert_eq!(mismatches[0].option, "TCP_KEEPIDLE");
    assert_eq!(mismatches[0].asked, "30s");
    assert_eq!(mismatches[0].effective, "2h");
}
