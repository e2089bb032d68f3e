//! Client authentication by token, through the binary: with `--auth required` an item before
//! a valid `hello`, an invalid token, and silence past `--auth-timeout` are refused with
//! `unauthorized`; a valid token names the connection in `/connections`, the records and the
//! logs; `SIGHUP` reads the tokens again while connections made before stay; `send
//! --token-file` delivers.

use connwarden_test_common as common;

use std::time::Duration;

use common::{metric, Admin, LinePeer as Peer, Proc};

const FIRST: &str = "sensors:first-token-0123456789abcdef\n";
const SECOND: &str = "# rotated\ngateways:second-token-0123456789abcdef\n";

struct Fixture {
    dir: tempfile::TempDir,
    tokens: std::path::PathBuf,
}

impl Fixture {
    fn new() -> Fixture {
        let dir = tempfile::tempdir().expect("temp dir");
        let tokens = dir.path().join("tokens");
        std::fs::write(&tokens, FIRST).expect("tokens");
        Fixture { dir, tokens }
    }

    fn serve(&self) -> (Proc, Admin, String) {
        let args = [
            "--auth-tokens",
            self.tokens.to_str().expect("utf-8"),
            "--auth",
            "required",
            "--auth-timeout",
            "1s",
        ];
        common::serve()
            .sink_file(&self.dir.path().join("items.ndjson"))
            .args(&args)
            .within(common::PROMPT)
            .start()
    }

    fn records(&self) -> Vec<serde_json::Value> {
        std::fs::read_to_string(self.dir.path().join("items.ndjson"))
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).expect("record"))
            .collect()
    }
}

#[test]
fn required_tokens_refuse_the_unauthenticated_and_name_the_others() {
    let fixture = Fixture::new();
    let (mut server, admin, addr) = fixture.serve();

    // An item before any hello.
    let mut eager = Peer::connect(&addr);
    let refused = eager.say(r#"{"ip":"192.0.2.1","id":1}"#);
    assert_eq!(refused["code"], "unauthorized", "{refused}");
    assert!(eager.closed());
    // A wrong token.
    let mut wrong = Peer::connect(&addr);
    let refused = wrong.say(r#"{"type":"hello","token":"not-the-token-0123456789"}"#);
    assert_eq!(refused["code"], "unauthorized", "{refused}");
    assert!(wrong.closed());
    // Silence past auth_timeout (1 s).
    let started = std::time::Instant::now();
    let mut silent = Peer::connect(&addr);
    let refused = silent.line();
    assert_eq!(refused["code"], "unauthorized", "{refused}");
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_secs(1) && waited < Duration::from_secs(4),
        "{waited:?}"
    );

    // The right token: acked, and named.
    let mut sensor = Peer::connect(&addr);
    let hello = sensor.say(r#"{"type":"hello","token":"first-token-0123456789abcdef"}"#);
    assert_eq!(hello["type"], "hello", "{hello}");
    let ack = sensor.say(r#"{"ip":"192.0.2.2","id":1}"#);
    assert_eq!(ack["type"], "ack", "{ack}");
    let listed = admin.json("/connections");
    assert_eq!(listed["items"][0]["auth_name"], "sensors", "{listed}");

    // Rotation: the file now holds another token; SIGHUP reads it.
    std::fs::write(&fixture.tokens, SECOND).expect("rotate");
    server.sighup();
    server
        .wait_log("client tokens read again")
        .expect("the reload is logged");
    // The connection made before goes on; the old token no longer opens a new one.
    let ack = sensor.say(r#"{"ip":"192.0.2.2","id":2}"#);
    assert_eq!(ack["type"], "ack", "{ack}");
    let mut late = Peer::connect(&addr);
    let refused = late.say(r#"{"type":"hello","token":"first-token-0123456789abcdef"}"#);
    assert_eq!(refused["code"], "unauthorized", "{refused}");
    let mut gateway = Peer::connect(&addr);
    let hello = gateway.say(r#"{"type":"hello","token":"second-token-0123456789abcdef"}"#);
    assert_eq!(hello["type"], "hello", "{hello}");
    let ack = gateway.say(r#"{"ip":"192.0.2.3","id":1}"#);
    assert_eq!(ack["type"], "ack", "{ack}");

    // send --token-file.
    let token_file = fixture.dir.path().join("my-token");
    std::fs::write(&token_file, "second-token-0123456789abcdef\n").expect("token file");
    let input = fixture.dir.path().join("input.ndjson");
    std::fs::write(&input, "{\"ip\":\"192.0.2.4\"}\n{\"ip\":\"192.0.2.5\"}\n").expect("input");
    let mut send = Proc::connwarden(&[
        "send",
        "--to",
        &addr,
        "--token-file",
        token_file.to_str().expect("utf-8"),
        "--ack",
        input.to_str().expect("utf-8"),
    ]);
    assert!(
        send.wait_exit(Duration::from_secs(30)).success(),
        "{}",
        send.stderr_so_far()
    );

    let text = admin.metrics();
    assert_eq!(
        metric(
            &text,
            "connwarden_connections_closed_total{reason=\"unauthorized\"}"
        ),
        Some(4.0)
    );
    server.terminate();
    assert!(server.wait_exit(Duration::from_secs(20)).success());
    let records = fixture.records();
    let names: Vec<_> = records.iter().map(|r| r["auth_name"].clone()).collect();
    assert_eq!(
        names,
        ["sensors", "sensors", "gateways", "gateways", "gateways"],
        "{records:?}"
    );
    // The token itself is never written anywhere.
    let log = server.stderr_so_far();
    assert!(!log.contains("first-token") && !log.contains("second-token"));
}

#[test]
fn a_tokens_file_that_cannot_be_used_stops_the_start_with_its_line() {
    let dir = tempfile::tempdir().expect("temp dir");
    let tokens = dir.path().join("tokens");
    std::fs::write(&tokens, "ok:0123456789abcdef0123\nshort\n").expect("tokens");
    let mut server = Proc::connwarden(&[
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--admin",
        "off",
        "--auth-tokens",
        tokens.to_str().expect("utf-8"),
    ]);
    let status = server.wait_exit(Duration::from_secs(20));
    assert!(!status.success());
    let log = server.stderr_so_far();
    assert!(log.contains("line 2"), "{log}");
}
