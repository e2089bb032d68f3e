//! Takeover by `client_id`, through the binary: a client that comes back while its old
//! connection still looks alive supersedes it (the old one is told `superseded` and closed
//! within a second, its detection delay recorded); with token authentication only a connection
//! authenticated under the same name may; `--takeover false` lets both live.

use connwarden_test_common as common;

use std::time::{Duration, Instant};

use common::LinePeer as Peer;

const TOKENS: &str = "alice:alice-token-0123456789abcdef\nmallory:mallory-token-0123456789abcdef\n";

fn hello(peer: &mut Peer, client_id: &str, token: Option<&str>) {
    let line = match token {
        Some(token) => format!(r#"{{"type":"hello","client_id":"{client_id}","token":"{token}"}}"#),
        None => format!(r#"{{"type":"hello","client_id":"{client_id}"}}"#),
    };
    let answer = peer.say(&line);
    assert_eq!(answer["type"], "hello", "{answer}");
}

/// Sends an item and expects its ack: the connection is alive and served.
fn served(peer: &mut Peer, id: u32) {
    let reply = peer.say(&format!(r#"{{"ip":"192.0.2.1","id":{id}}}"#));
    assert_eq!(reply["type"], "ack", "{reply}");
}

#[test]
fn a_client_coming_back_supersedes_its_stale_connection_within_a_second() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (mut server, admin, addr) = common::serve().start_in(dir.path(), &[]);
    let mut stale = Peer::connect(&addr);
    hello(&mut stale, "dev-7", None);
    served(&mut stale, 1);
    let mut other = Peer::connect(&addr);
    hello(&mut other, "dev-8", None);

    let mut back = Peer::connect(&addr);
    let began = Instant::now();
    hello(&mut back, "dev-7", None);
    let told = stale.line();
    assert_eq!(told["code"], "superseded", "{told}");
    assert!(stale.closed(), "the superseded connection is closed");
    let waited = began.elapsed();
    assert!(
        waited < Duration::from_secs(1),
        "superseded after {waited:?}"
    );

    let closed = server.wait_close("superseded");
    assert_eq!(closed["ended_by"], "server", "{closed}");
    let history = admin.json("/closed?reason=superseded");
    assert_eq!(history["total"], 1, "{history}");
    assert!(
        history["items"][0]["detection_delay_s"].is_number(),
        "{history}"
    );
    let observed = "connwarden_detection_delay_seconds_count{reason=\"superseded\"}";
    assert_eq!(common::metric(&admin.metrics(), observed), Some(1.0));
    // The new connection and the other client's are served.
    served(&mut back, 2);
    served(&mut other, 3);
    assert_eq!(admin.json("/connections")["total"], 2);
}

#[test]
fn only_a_connection_authenticated_under_the_same_name_supersedes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let tokens = dir.path().join("tokens");
    std::fs::write(&tokens, TOKENS).expect("tokens");
    let flags = ["--auth-tokens", tokens.to_str().expect("utf-8")];
    let (mut server, admin, addr) = common::serve().start_in(dir.path(), &flags);
    let alice = Some("alice-token-0123456789abcdef");
    let mallory = Some("mallory-token-0123456789abcdef");

    let mut first = Peer::connect(&addr);
    hello(&mut first, "dev-7", alice);
    // Another name, or none, cannot take the client's place.
    let mut intruder = Peer::connect(&addr);
    hello(&mut intruder, "dev-7", mallory);
    let refusal = server
        .wait_log("client_id held by a connection authenticated under another name: not superseded")
        .expect("refusal logged");
    assert_eq!(refusal["client_id"], "dev-7");
    let mut anonymous = Peer::connect(&addr);
    hello(&mut anonymous, "dev-7", None);
    server
        .wait_log("client_id held by a connection authenticated under another name: not superseded")
        .expect("refusal logged");
    served(&mut first, 1);
    assert_eq!(admin.json("/closed?reason=superseded")["total"], 0);

    // The same name does.
    let mut back = Peer::connect(&addr);
    hello(&mut back, "dev-7", alice);
    assert_eq!(first.line()["code"], "superseded");
    assert!(first.closed());
    server.wait_close("superseded");
    served(&mut back, 2);
    served(&mut intruder, 3);
    assert_eq!(admin.json("/connections")["total"], 3);
}

#[test]
fn takeover_off_lets_both_live() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (_server, admin, addr) = common::serve().start_in(dir.path(), &["--takeover", "false"]);
    let mut first = Peer::connect(&addr);
    hello(&mut first, "dev-7", None);
    let mut second = Peer::connect(&addr);
    hello(&mut second, "dev-7", None);
    served(&mut first, 1);
    served(&mut second, 2);
    assert_eq!(admin.json("/connections")["total"], 2);
    assert_eq!(admin.json("/closed?reason=superseded")["total"], 0);
}
