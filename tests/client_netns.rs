//! The client's own dead-peer detection, across real network namespaces: the server's link
//! goes down while items are flowing; the `send` process must notice within its bound, keep
//! trying, reconnect once the link is back, and deliver every item.

use connwarden_test_common as common;

use std::collections::HashMap;
use std::time::{Duration, SystemTime};

use common::{poll_until, NetnsPair, Proc, NETNS_SERVER_IP};

const ITEMS: u64 = 1500;
const WINDOW: u64 = 1024;

fn log_time(line: &serde_json::Value) -> SystemTime {
    humantime::parse_rfc3339(line["timestamp"].as_str().expect("timestamp")).expect("rfc3339")
}

/// Runs one outage and returns (close reason, detection time); `None` where network namespaces
/// cannot be made (`test` skipped).
fn outage(test: &str, heartbeat_interval: &str) -> Option<(String, Duration)> {
    let pair = NetnsPair::create(test)?;
    let dir = tempfile::tempdir().expect("tempdir");
    let input = dir.path().join("items.txt");
    let sink = dir.path().join("sink.ndjson");
    let text: String = (0..ITEMS)
        .map(|i| format!("{{\"ip\":\"192.0.2.{}\",\"n\":{i}}}\n", i % 250))
        .collect();
    std::fs::write(&input, text).expect("write items");
    let addr = format!("{NETNS_SERVER_IP}:7000");
    let sink_arg = format!("file:{}", sink.display());
    let mut server = Proc::spawn_in_netns(
        &pair.server_ns,
        &[
            "serve",
            "--listen",
            &addr,
            "--sink",
            &sink_arg,
            "--log-format",
            "json",
        ],
    );
    server.wait_log("listening").expect("server listening");
    let mut send = Proc::spawn_in_netns(
        &pair.client_ns,
        &[
            "send",
            "--to",
            &addr,
            "--ack",
            "--rate",
            "250",
            "--keepalive-idle",
            "2s",
            "--keepalive-interval",
            "1s",
            "--keepalive-count",
            "3",
            "--heartbeat-interval",
            heartbeat_interval,
            "--heartbeat-misses",
            "3",
            "--connect-timeout",
            "1s",
            "--backoff-initial",
            "100ms",
            "--backoff-max",
            "500ms",
            "--log-format",
            "json",
            input.to_str().expect("utf-8 path"),
        ],
    );
    send.wait_log("client socket options in force")
        .expect("client connected");
    // Items are flowing (and being acknowledged) before the link goes.
    poll_until(Duration::from_secs(10), "200 items stored", || {
        std::fs::read_to_string(&sink).map_or(0, |t| t.lines().count()) >= 200
    });
    let down_at = SystemTime::now();
    pair.server_link(false);
    let lost = send
        .wait_log_within("connection lost", Duration::from_secs(20))
        .expect("the client notices");
    let detection = log_time(&lost).duration_since(down_at).unwrap_or_default();
    // It keeps trying while the link is down: the outage outlasts its liveness bound.
    send.wait_log_within("cannot connect", Duration::from_secs(10))
        .expect("a failed attempt while the link is down");
    pair.server_link(true);
    let status = send.wait_exit(Duration::from_secs(60));
    let stderr = send.stderr_so_far();
    assert!(status.success(), "send failed:\n{stderr}");

    let mut ids: HashMap<u64, u64> = HashMap::new();
    for line in std::fs::read_to_string(&sink).expect("sink").lines() {
        let record: serde_json::Value = serde_json::from_str(line).expect("whole records");
        *ids.entry(record["item"]["id"].as_u64().expect("id"))
            .or_default() += 1;
    }
    let missing = (0..ITEMS).filter(|id| !ids.contains_key(id)).count();
    let duplicates: u64 = ids.values().map(|n| n - 1).sum();
    assert_eq!(missing, 0, "items missing after the outage");
    assert!(duplicates <= WINDOW, "{duplicates} duplicates");
    let summary = stderr
        .lines()
        .find(|l| l.starts_with("sent "))
        .unwrap_or_default();
    eprintln!(
        "heartbeat {heartbeat_interval}: {} after {detection:?}; {duplicates} duplicates; {summary}",
        lost["reason"]
    );
    Some((
        lost["reason"].as_str().unwrap_or_default().to_owned(),
        detection,
    ))
}

#[test]
fn client_heartbeat_detects_a_dead_server_link_within_its_bound() {
    // Heartbeat 1 s × 3 = 3 s, below the kernel's 2 s + 1 s × 3 = 5 s.
    let Some((reason, detection)) = outage(
        "client_heartbeat_detects_a_dead_server_link_within_its_bound",
        "1s",
    ) else {
        return;
    };
    assert_eq!(reason, "heartbeat_timeout");
    assert!(
        detection <= Duration::from_secs(3) + Duration::from_secs(1),
        "detected after {detection:?}"
    );
}

#[test]
fn client_kernel_timeouts_detect_a_dead_server_link_within_their_bound() {
    // Heartbeat far away (30 s × 3): the kernel must do it. Items are in flight, so the user
    // timeout (auto = 2 s + 1 s × 3 = 5 s) fires; idle, keep-alive would, with the same bound.
    let Some((reason, detection)) = outage(
        "client_kernel_timeouts_detect_a_dead_server_link_within_their_bound",
        "30s",
    ) else {
        return;
    };
    assert!(
        reason == "user_timeout" || reason == "keepalive_timeout",
        "reason {reason}"
    );
    // Linux counts the user timeout from the send time of the segment it retransmits, which
    // can trail the link's fall by up to one retransmission timeout; with both tests of this
    // file on two loaded cores, the timeout's RTT estimate grows. Measured 5.28–6.05 s.
    assert!(
        detection <= Duration::from_secs(5) + Duration::from_secs(2),
        "detected after {detection:?}"
    );
}
