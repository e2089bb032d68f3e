//! The PROXY protocol on the data listener, through the binary: the address a v1 or v2 header
//! carries is the peer in records, `/connections`, `conns` and `max_connections_per_ip`; a
//! connection without a header, with a malformed one, too slow to send it, or from outside
//! `proxy_trusted` is closed under its named reason; TLS starts after the header.

use connwarden_test_common as common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::time::Duration;

use common::certs::{self, Ca};
use common::metric;
use ppp::v2;

/// A header of `version` naming `source` as the client (and 10.0.0.1:7000 as the balancer's
/// listener).
fn header(version: &str, source: &str) -> Vec<u8> {
    let source: SocketAddr = source.parse().expect("source");
    let destination: SocketAddr = "10.0.0.1:7000".parse().expect("destination");
    match version {
        "v1" => format!(
            "PROXY TCP4 {} {} {} {}\r\n",
            source.ip(),
            destination.ip(),
            source.port(),
            destination.port()
        )
        .into_bytes(),
        _ => v2::Builder::with_addresses(
            v2::Version::Two | v2::Command::Proxy,
            v2::Protocol::Stream,
            (source, destination),
        )
        .build()
        .expect("v2 header"),
    }
}

/// Writes `bytes` and returns the server's next line.
fn exchange(stream: &TcpStream, bytes: &[u8]) -> serde_json::Value {
    (&*stream).write_all(bytes).expect("send");
    let mut line = String::new();
    BufReader::new(stream)
        .read_line(&mut line)
        .expect("a line from the server");
    serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line:?}"))
}

/// Waits until the server closed `stream` (an end of stream, or a reset when it closed with
/// bytes unread); the read timeout bounds the wait.
fn assert_closed(stream: &TcpStream) {
    let mut rest = [0u8; 256];
    match (&*stream).read(&mut rest) {
        Ok(0) => {}
        Err(error) if error.kind() == std::io::ErrorKind::ConnectionReset => {}
        other => panic!("expected the server to close the connection: {other:?}"),
    }
}

/// The peer each record in the sink names, once `count` records are there.
fn record_peers(dir: &Path, count: usize) -> Vec<String> {
    let path = dir.join("items.ndjson");
    let mut peers = Vec::new();
    common::poll_until(common::PROMPT, "the records are written", || {
        peers = std::fs::read_to_string(&path)
            .unwrap_or_default()
            .lines()
            .map(|line| {
                let record: serde_json::Value = serde_json::from_str(line).expect("record");
                record["peer"].as_str().expect("peer").to_owned()
            })
            .collect();
        peers.len() >= count
    });
    peers
}

fn header_names_the_peer_everywhere(version: &str) {
    let dir = tempfile::tempdir().expect("tempdir");
    let flags = [
        "--proxy-protocol",
        version,
        "--proxy-trusted",
        "127.0.0.0/8",
        "--max-connections-per-ip",
        "1",
    ];
    let (mut server, admin, addr) = common::serve().start_in(dir.path(), &flags);

    let first = common::connect_prompt(&addr);
    let item = br#"{"ip":"192.0.2.1","id":1}"#;
    let sent = [header(version, "203.0.113.7:4567").as_slice(), item, b"\n"].concat();
    assert_eq!(exchange(&first, &sent)["type"], "ack");
    let page = admin.json("/connections?peer=203.0.113.7:4567");
    assert_eq!(page["total"], 1, "{page}");
    assert_eq!(page["items"][0]["local"], "10.0.0.1:7000", "{page}");
    let listed = std::process::Command::new(common::binary())
        .args(["conns", "--admin", &admin.addr])
        .output()
        .expect("connwarden conns");
    let listed = String::from_utf8_lossy(&listed.stdout);
    assert!(listed.contains("203.0.113.7:4567"), "{listed}");
    assert!(!listed.contains("127.0.0.1"), "{listed}");
    assert_eq!(record_peers(dir.path(), 1), ["203.0.113.7:4567"]);

    // The limit counts the header's address: the same client again is refused ...
    let second = common::connect_prompt(&addr);
    let refused = exchange(&second, &header(version, "203.0.113.7:4568"));
    assert_eq!(refused["code"], "too_many_connections", "{refused}");
    let closed = server.wait_close("too_many_connections");
    assert_eq!(closed["peer"], "203.0.113.7:4568", "{closed}");
    // ... and another is let in, though both come from 127.0.0.1.
    let third = common::connect_prompt(&addr);
    let sent = [header(version, "203.0.113.8:1000").as_slice(), item, b"\n"].concat();
    assert_eq!(exchange(&third, &sent)["type"], "ack");
    assert_eq!(admin.json("/connections")["total"], 2);
    assert_eq!(
        record_peers(dir.path(), 2),
        ["203.0.113.7:4567", "203.0.113.8:1000"]
    );
}

#[test]
fn a_v2_header_names_the_peer_in_records_listings_and_limits() {
    header_names_the_peer_everywhere("v2");
}

#[test]
fn a_v1_header_names_the_peer_in_records_listings_and_limits() {
    header_names_the_peer_everywhere("v1");
}

#[test]
fn connections_without_a_good_header_in_time_are_closed_under_their_reasons() {
    let dir = tempfile::tempdir().expect("tempdir");
    let flags = [
        "--proxy-protocol",
        "v2",
        "--proxy-trusted",
        "127.0.0.1",
        "--handshake-timeout",
        "1s",
    ];
    let (mut server, admin, addr) = common::serve().start_in(dir.path(), &flags);

    // An item where the header was due: refused, the reason logged with the bytes seen.
    let bare = common::connect_prompt(&addr);
    let told = exchange(&bare, b"{\"ip\":\"192.0.2.1\"}\n");
    assert_eq!(told["code"], "proxy_header_invalid", "{told}");
    assert_closed(&bare);
    let refusal = server
        .wait_log("refused a connection's PROXY protocol header; closing")
        .expect("refusal logged");
    let error = refusal["error"].as_str().expect("error");
    assert!(
        error.contains("no PROXY protocol header (v2 expected)"),
        "{error}"
    );
    assert!(error.contains(r#"{\"ip\":"#), "{error}");
    server.wait_close("proxy_header_invalid");

    // A v1 header where v2 is in force.
    let v1 = common::connect_prompt(&addr);
    let told = exchange(&v1, &header("v1", "203.0.113.7:4567"));
    assert_eq!(told["code"], "proxy_header_invalid", "{told}");
    assert_closed(&v1);
    server.wait_close("proxy_header_invalid");

    // A header cut short, then silence: closed after handshake_timeout.
    let slow = common::connect_prompt(&addr);
    (&slow)
        .write_all(&header("v2", "203.0.113.7:4567")[..20])
        .expect("send");
    let began = std::time::Instant::now();
    assert_closed(&slow);
    let waited = began.elapsed();
    assert!(
        waited >= Duration::from_millis(900) && waited < Duration::from_secs(5),
        "closed after {waited:?}, handshake_timeout is 1 s"
    );
    server.wait_close("proxy_header_timeout");

    // None of them was ever a live connection; each is counted as refused.
    let metrics = admin.metrics();
    for (reason, count) in [("proxy_header_invalid", 2.0), ("proxy_header_timeout", 1.0)] {
        let name = format!("connwarden_connections_refused_total{{reason=\"{reason}\"}}");
        assert_eq!(metric(&metrics, &name), Some(count), "{name}");
    }
    assert_eq!(
        metric(&metrics, "connwarden_connections_opened_total"),
        Some(0.0)
    );
}

#[test]
fn a_connection_from_outside_the_trusted_networks_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let flags = [
        "--proxy-protocol",
        "any",
        "--proxy-trusted",
        "10.0.0.0/8,fd00::/8",
    ];
    let (mut server, admin, addr) = common::serve().start_in(dir.path(), &flags);
    let stream = common::connect_prompt(&addr);
    (&stream)
        .write_all(&header("v2", "203.0.113.7:4567"))
        .expect("send");
    assert_closed(&stream);
    let closed = server.wait_close("proxy_untrusted");
    assert!(closed["peer"]
        .as_str()
        .expect("peer")
        .starts_with("127.0.0.1:"));
    let name = "connwarden_connections_refused_total{reason=\"proxy_untrusted\"}";
    assert_eq!(metric(&admin.metrics(), name), Some(1.0));
}

#[test]
fn tls_starts_after_the_header() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = Ca::new("connwarden test CA");
    let (cert, key) = certs::write_pair(dir.path(), "server", &ca.issue("server", false));
    let flags = [
        "--proxy-protocol",
        "v1",
        "--proxy-trusted",
        "127.0.0.0/8",
        "--tls-cert",
        cert.to_str().expect("utf-8"),
        "--tls-key",
        key.to_str().expect("utf-8"),
    ];
    let (_server, admin, addr) = common::serve().start_in(dir.path(), &flags);
    let socket = common::connect_prompt(&addr);
    (&socket)
        .write_all(&header("v1", "198.51.100.9:2222"))
        .expect("header");
    let mut tls = certs::connect_over(socket, &ca, None).expect("TLS after the header");
    let reply = certs::exchange(&mut tls, r#"{"ip":"192.0.2.1","id":1}"#);
    assert_eq!(reply["type"], "ack", "{reply}");
    assert_eq!(record_peers(dir.path(), 1), ["198.51.100.9:2222"]);
    assert_eq!(
        admin.json("/connections?peer=198.51.100.9")["total"],
        1,
        "the TLS connection is listed under the header's address"
    );
}
