//! TLS on the data listener, through the binary: `send --tls` delivers and is acked, a
//! certificate is swapped by SIGHUP while connections made before and after both deliver, a
//! bad new pair is refused and the old one kept, and a peer that stalls its handshake or does
//! not speak TLS is closed with the documented reason.

use connwarden_test_common as common;

use std::io::Write;
use std::net::TcpStream;
use std::time::Duration;

use common::certs::{self, Ca};
use common::{metric, Admin, Proc};

/// A temporary folder with a CA and a server pair signed by it.
struct Fixture {
    dir: tempfile::TempDir,
    ca: Ca,
    cert: std::path::PathBuf,
    key: std::path::PathBuf,
}

impl Fixture {
    fn new() -> Fixture {
        let dir = tempfile::tempdir().expect("temp dir");
        let ca = Ca::new("connwarden test CA");
        let (cert, key) = certs::write_pair(dir.path(), "server", &ca.issue("server", false));
        Fixture { dir, ca, cert, key }
    }

    fn serve(&self, extra: &[&str]) -> (Proc, Admin, String) {
        let mut args = vec![
            "--tls-cert",
            self.cert.to_str().expect("utf-8"),
            "--tls-key",
            self.key.to_str().expect("utf-8"),
        ];
        args.extend_from_slice(extra);
        common::serve()
            .sink_file(&self.dir.path().join("items.ndjson"))
            .args(&args)
            .within(common::PROMPT)
            .start()
    }

    fn sink_lines(&self) -> Vec<serde_json::Value> {
        std::fs::read_to_string(self.dir.path().join("items.ndjson"))
            .unwrap_or_default()
            .lines()
            .map(|line| serde_json::from_str(line).expect("a JSON record"))
            .collect()
    }
}

#[test]
fn send_over_tls_delivers_every_item_and_is_acked() {
    let fixture = Fixture::new();
    let (mut server, _admin, addr) = fixture.serve(&[]);
    let ca = fixture.ca.write(fixture.dir.path(), "ca");
    let input = fixture.dir.path().join("input.ndjson");
    let items: String = (0..500)
        .map(|i| format!("{{\"ip\":\"192.0.2.{}\",\"n\":{i}}}\n", i % 250))
        .collect();
    std::fs::write(&input, items).expect("input");
    let mut send = Proc::connwarden(&[
        "send",
        "--to",
        &addr,
        "--tls-ca",
        ca.to_str().expect("utf-8"),
        "--server-name",
        "localhost",
        "--ack",
        "--log-format",
        "json",
        input.to_str().expect("utf-8"),
    ]);
    let status = send.wait_exit(Duration::from_secs(60));
    assert!(status.success(), "{}", send.stderr_so_far());
    let log = send.stderr_so_far();
    assert!(log.contains("sent 500 items, acknowledged 500"), "{log}");
    let records = fixture.sink_lines();
    assert_eq!(records.len(), 500);

    // A client that does not trust the server's CA is refused by its own handshake.
    let other_ca = Ca::new("another CA").write(fixture.dir.path(), "other");
    let mut refused = Proc::connwarden(&[
        "send",
        "--to",
        &addr,
        "--tls-ca",
        other_ca.to_str().expect("utf-8"),
        "--give-up",
        "1s",
        "--log-format",
        "json",
        input.to_str().expect("utf-8"),
    ]);
    let status = refused.wait_exit(Duration::from_secs(30));
    assert!(!status.success());
    let log = refused.stderr_so_far();
    assert!(log.contains("TLS handshake"), "{log}");
    server.terminate();
    assert!(server.wait_exit(Duration::from_secs(20)).success());
}

#[test]
fn sighup_swaps_the_certificate_while_connections_made_before_and_after_deliver() {
    let fixture = Fixture::new();
    let (mut server, admin, addr) = fixture.serve(&[]);
    let mut before = certs::connect(&addr, &fixture.ca, None).expect("TLS with the first CA");
    let ack = certs::exchange(&mut before, r#"{"type":"hello"}"#);
    assert_eq!(ack["type"], "hello", "{ack}");
    let ack = certs::exchange(&mut before, r#"{"ip":"192.0.2.1","id":1}"#);
    assert_eq!(ack["type"], "ack", "{ack}");

    // Renewal: a pair from a new CA in place of the old files.
    let renewed = Ca::new("renewed CA");
    certs::write_pair(
        fixture.dir.path(),
        "server",
        &renewed.issue("server", false),
    );
    server.sighup();
    server
        .wait_log("TLS certificate read again; new handshakes use it")
        .expect("the reload is logged");

    // The connection made before goes on; one made after uses the new certificate.
    let ack = certs::exchange(&mut before, r#"{"ip":"192.0.2.1","id":2}"#);
    assert_eq!(ack["type"], "ack", "{ack}");
    let mut after = certs::connect(&addr, &renewed, None).expect("TLS with the renewed CA");
    let ack = certs::exchange(&mut after, r#"{"ip":"192.0.2.2","id":1}"#);
    assert_eq!(ack["type"], "ack", "{ack}");
    assert!(
        certs::connect(&addr, &fixture.ca, None).is_err(),
        "the old certificate is no longer served"
    );

    // A bad new pair (a key that is not the certificate's) is refused; the pair in force stays.
    let mismatched = (
        renewed.issue("server", false).0,
        fixture.ca.issue("x", false).1,
    );
    certs::write_pair(fixture.dir.path(), "server", &mismatched);
    server.sighup();
    let refused = server
        .wait_log("configuration reload refused; nothing changed")
        .expect("the refusal is logged");
    assert!(
        refused["error"].as_str().unwrap_or("").contains("tls_cert"),
        "{refused}"
    );
    let mut still = certs::connect(&addr, &renewed, None).expect("the renewed pair stays");
    let ack = certs::exchange(&mut still, r#"{"ip":"192.0.2.3","id":1}"#);
    assert_eq!(ack["type"], "ack", "{ack}");
    let ack = certs::exchange(&mut before, r#"{"ip":"192.0.2.1","id":3}"#);
    assert_eq!(ack["type"], "ack", "{ack}");

    let text = admin.metrics();
    assert_eq!(
        metric(&text, "connwarden_config_reloads_total{result=\"failure\"}"),
        Some(1.0)
    );
    server.terminate();
    assert!(server.wait_exit(Duration::from_secs(20)).success());
    let records = fixture.sink_lines();
    assert_eq!(records.len(), 5, "{records:?}");
}

#[test]
fn a_stalled_handshake_and_a_clear_text_peer_are_closed_with_their_reasons() {
    let fixture = Fixture::new();
    let (mut server, admin, addr) = fixture.serve(&["--handshake-timeout", "1s"]);

    // Connects and says nothing: no handshake.
    let started = std::time::Instant::now();
    let mut silent = TcpStream::connect(&addr).expect("connect");
    silent
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("read timeout");
    let mut end = Vec::new();
    let _ = std::io::Read::read_to_end(&mut silent, &mut end);
    let lasted = started.elapsed();
    assert!(
        lasted >= Duration::from_secs(1) && lasted < Duration::from_secs(4),
        "closed after {lasted:?}"
    );
    // At most a TLS alert record (content type 21): no line in clear text.
    assert!(
        end.is_empty() || end[0] == 21,
        "nothing but an alert before a handshake: {end:?}"
    );

    // Speaks JSON to a TLS port: not a TLS record.
    let mut clear = TcpStream::connect(&addr).expect("connect");
    clear.write_all(b"{\"ip\":\"192.0.2.1\"}\n").expect("send");
    clear
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("read timeout");
    let mut answer = Vec::new();
    let _ = std::io::Read::read_to_end(&mut clear, &mut answer);

    common::poll_until(common::PROMPT, "both closes recorded", || {
        let text = admin.metrics();
        let closed = |reason: &str| {
            metric(
                &text,
                &format!("connwarden_connections_closed_total{{reason=\"{reason}\"}}"),
            )
        };
        closed("handshake_timeout") == Some(1.0) && closed("tls_error") == Some(1.0)
    });
    // Neither reached the sink.
    assert!(fixture.sink_lines().is_empty());
    server.terminate();
    assert!(server.wait_exit(Duration::from_secs(20)).success());
}

#[test]
fn mutual_tls_refuses_a_client_without_a_valid_certificate_and_names_the_others() {
    let fixture = Fixture::new();
    let client_ca = Ca::new("fleet CA");
    let ca_path = client_ca.write(fixture.dir.path(), "fleet");
    let (mut server, admin, addr) =
        fixture.serve(&["--tls-client-ca", ca_path.to_str().expect("utf-8")]);

    // No certificate, and one from another CA: both refused in the handshake.
    let stranger = Ca::new("stranger CA").issue("intruder", true);
    for identity in [None, Some(&stranger)] {
        let refused = certs::connect(&addr, &fixture.ca, identity).and_then(|mut stream| {
            // TLS 1.3: the client learns of the refusal at its first read.
            stream.write_all(b"{\"ip\":\"192.0.2.1\",\"id\":1}\n")?;
            let mut byte = [0u8; 1];
            std::io::Read::read(&mut stream, &mut byte)
        });
        assert!(matches!(refused, Err(_) | Ok(0)), "{refused:?}");
    }
    common::poll_until(common::PROMPT, "two unauthorized closes", || {
        let text = admin.metrics();
        metric(
            &text,
            "connwarden_connections_closed_total{reason=\"unauthorized\"}",
        ) == Some(2.0)
    });

    // A device with a certificate from the fleet CA: delivered, named by its subject.
    let device = client_ca.issue("device-7", true);
    let mut stream = certs::connect(&addr, &fixture.ca, Some(&device)).expect("mutual TLS");
    let ack = certs::exchange(&mut stream, r#"{"ip":"192.0.2.7","id":1}"#);
    assert_eq!(ack["type"], "ack", "{ack}");
    let listed = admin.json("/connections");
    assert_eq!(listed["items"][0]["auth_name"], "CN=device-7", "{listed}");
    server.terminate();
    assert!(server.wait_exit(Duration::from_secs(20)).success());
    let records = fixture.sink_lines();
    assert_eq!(records.len(), 1);
    assert_eq!(records[0]["auth_name"], "CN=device-7", "{:?}", records[0]);
    let log = server.stderr_so_far();
    assert!(
        log.lines()
            .any(|l| l.contains("connection closed") && l.contains("CN=device-7")),
        "the close is logged with the name"
    );
}

#[test]
fn a_tls_record_left_unfinished_is_held_to_frame_timeout() {
    let fixture = Fixture::new();
    let (mut server, admin, addr) = fixture.serve(&["--frame-timeout", "1s"]);
    let mut stream = certs::connect(&addr, &fixture.ca, None).expect("TLS");
    let ack = certs::exchange(&mut stream, r#"{"ip":"192.0.2.1","id":1}"#);
    assert_eq!(ack["type"], "ack", "{ack}");
    // The header of an application data record of 64 bytes, and nothing more: no object has
    // begun that the server can see, but a record has.
    stream
        .sock
        .write_all(&[0x17, 0x03, 0x03, 0x00, 0x40, 0x00])
        .expect("a partial record");
    common::poll_until(common::PROMPT, "closed as frame_timeout", || {
        metric(
            &admin.metrics(),
            "connwarden_connections_closed_total{reason=\"frame_timeout\"}",
        ) == Some(1.0)
    });
    server.terminate();
    assert!(server.wait_exit(Duration::from_secs(20)).success());
}
