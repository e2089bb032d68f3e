//! Acknowledged delivery end to end: the `send` process against `serve` processes that die and
//! come back, every fsync mode, refused input lines, and a slow consumer closed by the server.

use connwarden_test_common as common;

use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

use common::{free_port, poll_until, test_config, Proc, TestServer, PROMPT};
use connwarden::client::{Client, ClientConfig, OutItem};
use connwarden::CloseReason;

/// Writes `n` items, item `i` being `{"ip":…,"n":i}`.
fn write_items(path: &Path, n: u64) {
    let mut text = String::with_capacity(n as usize * 40);
    for i in 0..n {
        text.push_str(&format!(
            "{{\"ip\":\"10.{}.{}.{}\",\"n\":{i}}}\n",
            (i >> 16) & 255,
            (i >> 8) & 255,
            i & 255
        ));
    }
    std::fs::write(path, text).expect("write items");
}

/// What a file sink holds: the count of each item (by its input number, which is also its
/// delivery id when acks are on), and lines that are not records
/// (a line torn by SIGKILL in the middle of a write).
struct SinkContents {
    ids: HashMap<u64, u64>,
    records: u64,
    torn_lines: u64,
}

fn read_sink(path: &Path) -> SinkContents {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let mut contents = SinkContents {
        ids: HashMap::new(),
        records: 0,
        torn_lines: 0,
    };
    for line in text.lines() {
        let Ok(record) = serde_json::from_str::<serde_json::Value>(line) else {
            contents.torn_lines += 1;
            continue;
        };
        let item = &record["item"];
        let n = item["n"].as_u64().expect("every item has its input number");
        // With acks, the client numbers items in input order: id and payload must match.
        if let Some(id) = item.get("id") {
            assert_eq!(id.as_u64(), Some(n), "id {id} on item {n}");
        }
        let id = n;
        *contents.ids.entry(id).or_default() += 1;
        contents.records += 1;
    }
    contents
}

fn count_lines(path: &Path) -> u64 {
    std::fs::read(path)
        .map(|b| b.iter().filter(|c| **c == b'\n').count() as u64)
        .unwrap_or(0)
}

/// `serve` on `addr`, appending to `sink` with `fsync`.
fn serve_file(addr: &str, sink: &Path, fsync: &str) -> Proc {
    let (server, _admin, _addr) = common::serve()
        .listen(addr)
        .sink_file(sink)
        .args(&["--fsync", fsync])
        .start();
    server
}

/// The `send` summary line ("sent … items, acknowledged …").
fn summary_line(send: &mut Proc) -> String {
    send.stderr_so_far()
        .lines()
        .find(|l| l.starts_with("sent "))
        .unwrap_or_default()
        .to_owned()
}

/// A temporary directory with `items` input items, a sink path and a free loopback address.
struct Fixture {
    _dir: tempfile::TempDir,
    input: std::path::PathBuf,
    sink: std::path::PathBuf,
    addr: String,
}

impl Fixture {
    fn new(items: u64) -> Fixture {
        let dir = tempfile::tempdir().expect("tempdir");
        let input = dir.path().join("items.ndjson");
        let sink = dir.path().join("sink.ndjson");
        write_items(&input, items);
        Fixture {
            input,
            sink,
            addr: format!("127.0.0.1:{}", free_port()),
            _dir: dir,
        }
    }

    fn input(&self) -> &str {
        self.input.to_str().expect("utf-8 path")
    }
}

/// Asserts the sink holds each of the `items` items exactly once.
fn assert_each_item_once(sink: &Path, items: u64) {
    let contents = read_sink(sink);
    assert_eq!(
        (contents.records, contents.ids.len() as u64),
        (items, items)
    );
}

#[test]
fn sigkill_and_restart_of_the_server_lose_no_item() {
    const ITEMS: u64 = 200_000;
    const WINDOW: u64 = 1024;
    let fixture = Fixture::new(ITEMS);
    let (input, sink, addr) = (fixture.input(), &fixture.sink, &fixture.addr);
    let mut server = serve_file(addr, sink, "batch");
    // A paced sender (about 5 s in all), so the kill lands well inside the run.
    let mut send = Proc::connwarden(&[
        "send",
        "--to",
        addr,
        "--ack",
        "--window",
        &WINDOW.to_string(),
        "--rate",
        "40000",
        "--backoff-initial",
        "50ms",
        "--backoff-max",
        "500ms",
        "--give-up",
        "60s",
        "--log-format",
        "json",
        input,
    ]);
    poll_until(
        Duration::from_secs(30),
        "a quarter of the items stored",
        || count_lines(sink) >= ITEMS / 4,
    );
    server.child.kill().expect("SIGKILL the server");
    server.child.wait().expect("reap the server");
    let lost = send
        .wait_log("connection lost")
        .expect("the client notices the server died");
    assert!(
        ["peer_closed", "reset"].contains(&lost["reason"].as_str().unwrap_or("")),
        "{lost}"
    );
    let at_kill = read_sink(sink).records;
    assert!(at_kill < ITEMS, "the kill came after the end");
    let _restarted = serve_file(addr, sink, "batch");
    let status = send.wait_exit(Duration::from_secs(60));
    let summary = summary_line(&mut send);
    assert!(status.success(), "send failed: {summary}");

    let contents = read_sink(sink);
    let missing: Vec<u64> = (0..ITEMS)
        .filter(|id| !contents.ids.contains_key(id))
        .collect();
    assert!(
        missing.is_empty(),
        "{} ids missing, first {:?}",
        missing.len(),
        &missing[..missing.len().min(10)]
    );
    let duplicates = contents.records - ITEMS;
    assert!(
        duplicates <= WINDOW,
        "{duplicates} duplicates, more than the window"
    );
    assert!(
        contents.torn_lines <= 1,
        "{} torn lines",
        contents.torn_lines
    );
    assert!(
        summary.contains(&format!("acknowledged {ITEMS}"))
            && summary.contains("over 2 connections"),
        "{summary}"
    );
    eprintln!(
        "killed at {at_kill} records; {duplicates} duplicates, {} torn line(s); {summary}",
        contents.torn_lines
    );
}

#[test]
fn max_age_rotates_connections_without_resending_anything() {
    const ITEMS: u64 = 6000;
    let fixture = Fixture::new(ITEMS);
    let (input, sink, addr) = (fixture.input(), &fixture.sink, &fixture.addr);
    let sink_arg = format!("file:{}", sink.display());
    let _server = {
        let mut server = Proc::spawn(&[
            "--listen",
            addr,
            "--sink",
            &sink_arg,
            "--max-age",
            "1s",
            "--max-age-grace",
            "5s",
            "--log-format",
            "json",
        ]);
        server.wait_log("listening").expect("server listening");
        server
    };
    // About 3 s of sending: the server asks for a new connection every second.
    let mut send = Proc::connwarden(&[
        "send",
        "--to",
        addr,
        "--ack",
        "--rate",
        "2000",
        "--log-format",
        "json",
        input,
    ]);
    let status = send.wait_exit(Duration::from_secs(30));
    let summary = summary_line(&mut send);
    assert!(status.success(), "{summary}");
    // The client stopped sending on `max_age`, waited for its in-flight acks, then reconnected:
    // nothing was in flight when a connection ended, so nothing was sent twice.
    let connections: u64 = summary
        .split(" over ")
        .nth(1)
        .and_then(|rest| rest.split(' ').next())
        .and_then(|n| n.parse().ok())
        .expect("connection count in the summary");
    assert!(connections >= 3, "{summary}");
    assert!(summary.contains(", resent 0,"), "{summary}");
    assert_each_item_once(sink, ITEMS);
}

#[test]
fn without_acks_the_client_exits_only_once_the_server_has_read_everything() {
    const ITEMS: u64 = 200_000;
    let fixture = Fixture::new(ITEMS);
    let (input, sink, addr) = (fixture.input(), &fixture.sink, &fixture.addr);
    let mut server = serve_file(addr, sink, "never");
    let mut send = Proc::connwarden(&["send", "--to", addr, input]);
    let status = send.wait_exit(Duration::from_secs(60));
    assert!(status.success(), "{}", summary_line(&mut send));
    // The client closed its side and waited for the server's close: every byte was read by
    // then, so a shutdown right away still stores every item.
    server.terminate();
    assert!(server.wait_exit(PROMPT).success());
    assert_each_item_once(sink, ITEMS);
}

#[test]
fn every_fsync_mode_acknowledges_every_item_once_stored() {
    const ITEMS: u64 = 20_000;
    let dir = tempfile::tempdir().expect("tempdir");
    let input = dir.path().join("items.ndjson");
    write_items(&input, ITEMS);
    for mode in ["always", "batch", "never"] {
        let sink = dir.path().join(format!("sink-{mode}.ndjson"));
        let addr = format!("127.0.0.1:{}", free_port());
        let mut server = serve_file(&addr, &sink, mode);
        let mut send = send_acked(&addr, &input);
        let status = send.wait_exit(Duration::from_secs(60));
        let summary = summary_line(&mut send);
        assert!(status.success(), "fsync {mode}: {summary}");
        // Every ack came after the write: the file already holds every item.
        let contents = read_sink(&sink);
        assert_eq!(
            (contents.records, contents.ids.len() as u64),
            (ITEMS, ITEMS),
            "fsync {mode}"
        );
        server.terminate();
        assert!(server.wait_exit(PROMPT).success());
    }
}

/// Starts `send --ack --log-format json INPUT` to `addr`.
fn send_acked(addr: &str, input: &Path) -> Proc {
    Proc::connwarden(&[
        "send",
        "--to",
        addr,
        "--ack",
        "--log-format",
        "json",
        input.to_str().expect("utf-8 path"),
    ])
}

/// A finished `send --ack` of an input file holding `text`, to a `serve` storing into a file
/// sink (`--fsync batch`), which still runs.
struct Sent {
    _dir: tempfile::TempDir,
    _server: Proc,
    sink: std::path::PathBuf,
    send: Proc,
    status: std::process::ExitStatus,
}

fn send_with_acks(text: &str) -> Sent {
    let dir = tempfile::tempdir().expect("tempdir");
    let input = dir.path().join("input");
    std::fs::write(&input, text).expect("write input");
    let sink = dir.path().join("sink.ndjson");
    let addr = format!("127.0.0.1:{}", free_port());
    let server = serve_file(&addr, &sink, "batch");
    let mut send = send_acked(&addr, &input);
    let status = send.wait_exit(Duration::from_secs(30));
    Sent {
        _dir: dir,
        _server: server,
        sink,
        send,
        status,
    }
}

#[test]
fn send_reads_every_object_stream_the_server_reads_and_delivers_each_item_once() {
    // 100 objects pretty-printed as `jq .` prints them, 100 back to back on one line (Go's
    // json.Encoder without newlines), 100 one per line: 300 items, each once in the sink.
    let mut text = String::new();
    for n in 0..100u64 {
        text.push_str(&format!(
            "{{\n  \"ip\": \"10.1.0.{n}\",\n  \"n\": {n},\n  \"tags\": [\n    \"a b\",\n    {{ \"k\": \"}}\\n{{\" }}\n  ]\n}}\n"
        ));
    }
    for n in 100..200u64 {
        text.push_str(&format!(r#"{{"ip":"10.1.1.{}","n":{n}}}"#, n - 100));
    }
    text.push('\n');
    for n in 200..300u64 {
        text.push_str(&format!("{{\"ip\":\"10.1.2.{}\",\"n\":{n}}}\r\n", n - 200));
    }
    // Bound whole: the directory and the server live to the end of the test.
    let mut sent = send_with_acks(&text);
    let summary = summary_line(&mut sent.send);
    assert!(
        sent.status.success(),
        "{summary}\n{}",
        sent.send.stderr_so_far()
    );
    assert!(
        summary.contains("acknowledged 300, resent 0, rejected 0"),
        "{summary}"
    );
    assert_each_item_once(&sent.sink, 300);
    // Each object is stored as the one line the server makes of it, strings untouched.
    let stored = std::fs::read_to_string(&sent.sink).expect("sink");
    let first: serde_json::Value =
        serde_json::from_str(stored.lines().next().expect("a record")).expect("json");
    assert_eq!(
        first["item"]["tags"],
        serde_json::json!(["a b", {"k": "}\n{"}])
    );
}

#[test]
fn refused_lines_are_reported_with_their_number_and_the_rest_is_delivered() {
    // A refused object is reported at the line where it starts: the pretty-printed one with a
    // bad address starts on line 8.
    let mut sent = send_with_acks(
        "192.0.2.1\n{\"ip\":\"192.0.2.2\",\"x\":1}\n999.1.1.1\n\n{\"ip\":\"192.0.2.3\",}\n2001:db8::7\n{\"x\":1}\n{\n  \"ip\":\n    \"192.0.2.999\"\n}\n",
    );
    let stderr = sent.send.stderr_so_far();
    assert_eq!(
        sent.status.code(),
        Some(1),
        "refused lines make the exit non-zero"
    );
    let refused: Vec<(u64, String)> = stderr
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["message"] == "input refused")
        .map(|v| {
            (
                v["line"].as_u64().unwrap(),
                v["code"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    assert_eq!(
        refused,
        [
            (3, "invalid_ip".to_owned()),
            (5, "invalid_json".to_owned()),
            (7, "missing_ip".to_owned()),
            (8, "invalid_ip".to_owned())
        ]
    );
    assert!(
        summary_line(&mut sent.send).contains(
            "acknowledged 3, resent 0, rejected 4 (invalid_ip: 2, invalid_json: 1, missing_ip: 1)"
        ),
        "{stderr}"
    );
    let ips: Vec<String> = std::fs::read_to_string(&sent.sink)
        .unwrap()
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            v["item"]["ip"].as_str().unwrap().to_owned()
        })
        .collect();
    assert_eq!(ips, ["192.0.2.1", "192.0.2.2", "2001:db8::7"]);
}

#[test]
fn send_gives_up_after_the_limit_and_says_so() {
    let addr = format!("127.0.0.1:{}", free_port());
    let dir = tempfile::tempdir().expect("tempdir");
    let input = dir.path().join("one.txt");
    std::fs::write(&input, "192.0.2.1\n").unwrap();
    let mut send = Proc::connwarden(&[
        "send",
        "--to",
        &addr,
        "--ack",
        "--backoff-initial",
        "10ms",
        "--backoff-max",
        "50ms",
        "--give-up",
        "500ms",
        input.to_str().unwrap(),
    ]);
    let status = send.wait_exit(PROMPT);
    let stderr = send.stderr_so_far();
    assert_eq!(status.code(), Some(1));
    assert!(
        stderr.contains("gave up on") && stderr.contains("1 items not delivered"),
        "{stderr}"
    );
}

#[tokio::test]
async fn library_client_delivers_every_item_in_order_with_acks() {
    let mut server = TestServer::start(test_config()).await;
    let client = Client::start(ClientConfig::new(server.addr.to_string()));
    // The channel sink holds few records: read them while the client sends.
    let sending = tokio::spawn(async move {
        for i in 0..5000u32 {
            let item = format!("{{\"ip\":\"192.0.2.{}\",\"n\":{i}}}", i % 250);
            client
                .send(OutItem::from_json(item.into()).unwrap())
                .await
                .unwrap();
        }
        client.finish().await
    });
    for i in 0..5000u64 {
        let record = server.next_record().await;
        let item: serde_json::Value = serde_json::from_slice(&record.item).unwrap();
        assert_eq!(
            (item["id"].as_u64(), item["n"].as_u64()),
            (Some(i), Some(i))
        );
    }
    let summary = tokio::time::timeout(PROMPT, sending)
        .await
        .expect("finished in time")
        .unwrap()
        .expect("delivered");
    assert_eq!((summary.acknowledged, summary.resent), (5000, 0));
    let closed = server.next_close().await;
    assert_eq!(closed.reason, CloseReason::PeerClosed);
    server.shutdown().await;
}
