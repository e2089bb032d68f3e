//! Flapping clients, through the binary: a client whose connections close as often as
//! `flap_threshold` counts within its window is listed by `GET /flapping` with its last close
//! reasons (by `client_id`, by address for clients without one), logged once when it begins,
//! and counted in one gauge; `/closed` says each close's `client_id`.

use connwarden_test_common as common;

use common::{metric, LinePeer as Peer};

/// Connects, says hello with `client_id` if given, then closes.
fn connect_and_leave(addr: &str, client_id: Option<&str>) {
    let mut peer = Peer::connect(addr);
    if let Some(client_id) = client_id {
        let answer = peer.say(&format!(r#"{{"type":"hello","client_id":"{client_id}"}}"#));
        assert_eq!(answer["type"], "hello", "{answer}");
    }
}

#[test]
fn clients_that_keep_reconnecting_are_listed_with_their_last_reasons() {
    let dir = tempfile::tempdir().expect("tempdir");
    let flags = ["--flap-threshold", "3/1m"];
    let (mut server, admin, addr) = common::serve().start_in(dir.path(), &flags);

    for _ in 0..2 {
        connect_and_leave(&addr, Some("dev-9"));
        server.wait_close("peer_closed");
    }
    let listed = admin.json("/flapping");
    assert_eq!(
        (listed["threshold"].as_str(), listed["total"].as_u64()),
        (Some("3/1m"), Some(0)),
        "{listed}"
    );

    connect_and_leave(&addr, Some("dev-9"));
    let began = server.wait_log("client is flapping: its connections keep closing (GET /flapping lists it with its last close reasons)").expect("flapping logged");
    assert_eq!(
        (began["client_id"].as_str(), began["closes"].as_u64()),
        (Some("dev-9"), Some(3))
    );
    let listed = admin.json("/flapping");
    assert_eq!(listed["total"], 1, "{listed}");
    let client = &listed["items"][0];
    assert_eq!(client["client_id"], "dev-9", "{client}");
    assert_eq!(client["closes"], 3, "{client}");
    assert_eq!(
        client["last_reasons"],
        serde_json::json!(["peer_closed", "peer_closed", "peer_closed"])
    );
    let closed = admin.json("/closed?limit=1");
    assert_eq!(closed["items"][0]["client_id"], "dev-9", "{closed}");

    // Clients without a client_id count by address: all of loopback is one.
    for _ in 0..3 {
        connect_and_leave(&addr, None);
        server.wait_close("peer_closed");
    }
    let listed = admin.json("/flapping");
    assert_eq!(listed["total"], 2, "{listed}");
    assert!(
        listed["items"]
            .as_array()
            .expect("items")
            .iter()
            .any(|c| c["address"] == "127.0.0.1" && c["client_id"].is_null()),
        "{listed}"
    );
    assert_eq!(
        metric(&admin.metrics(), "connwarden_flapping_clients"),
        Some(2.0)
    );
}

#[test]
fn flap_threshold_off_counts_nobody() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (mut server, admin, addr) =
        common::serve().start_in(dir.path(), &["--flap-threshold", "off"]);
    for _ in 0..3 {
        connect_and_leave(&addr, Some("dev-9"));
        server.wait_close("peer_closed");
    }
    let listed = admin.json("/flapping");
    assert_eq!(
        (listed["threshold"].as_str(), listed["total"].as_u64()),
        (Some("off"), Some(0))
    );
    assert_eq!(
        metric(&admin.metrics(), "connwarden_flapping_clients"),
        Some(0.0)
    );
}
