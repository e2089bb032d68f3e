//! TLS handshakes in turns (`max_handshakes`), through the binary: a peer that connects and
//! says nothing never holds a turn, one that sends part of its `ClientHello` and stalls holds
//! it at most about a second, and clients behind them are served.

use connwarden_test_common as common;

use std::io::Write;
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::certs::{self, Ca};

#[test]
fn silent_and_stalling_peers_do_not_keep_others_from_their_handshake() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = Ca::new("connwarden test CA");
    let (cert, key) = certs::write_pair(dir.path(), "server", &ca.issue("server", false));
    let flags = [
        "--tls-cert",
        cert.to_str().expect("utf-8"),
        "--tls-key",
        key.to_str().expect("utf-8"),
        "--max-handshakes",
        "1",
    ];
    let (_server, admin, addr) = common::serve().start_in(dir.path(), &flags);

    // Silent: it never takes the one turn.
    let _silent = TcpStream::connect(&addr).expect("connect");
    let began = Instant::now();
    let mut tls = certs::connect(&addr, &ca, None).expect("a handshake beside a silent peer");
    assert_eq!(
        certs::exchange(&mut tls, r#"{"ip":"192.0.2.1","id":1}"#)["type"],
        "ack"
    );
    assert!(
        began.elapsed() < Duration::from_secs(1),
        "{:?}",
        began.elapsed()
    );

    // Stalling: the start of a TLS record (a handshake record announcing 512 bytes), then
    // nothing. It takes the turn and keeps it about a second at most.
    let mut stalling = TcpStream::connect(&addr).expect("connect");
    stalling
        .write_all(&[22, 3, 1, 2, 0, 1])
        .expect("a partial ClientHello");
    common::poll_until(common::PROMPT, "both peers registered", || {
        admin.json("/connections")["total"] == 3
    });
    let began = Instant::now();
    let mut behind = certs::connect(&addr, &ca, None).expect("a handshake behind a stalling peer");
    let waited = began.elapsed();
    assert_eq!(
        certs::exchange(&mut behind, r#"{"ip":"192.0.2.1","id":2}"#)["type"],
        "ack"
    );
    assert!(
        waited < Duration::from_secs(3),
        "waited {waited:?} behind a stalled handshake"
    );
    let metrics = admin.metrics();
    assert_eq!(
        common::metric(&metrics, "connwarden_tls_handshake_seconds_count"),
        Some(2.0),
        "two handshakes finished"
    );
}
