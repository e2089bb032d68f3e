//! One damaged object costs only itself: `serve` on a connection and `send` from a file answer
//! the same damaged streams alike (the same items kept, the same errors, in order), and no
//! valid object after the damage is lost.

use connwarden_test_common as common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::{test_config, Proc, TestServer};
use connwarden::Record;
use tokio::io::AsyncWriteExt;

/// Valid objects written after every damage: compact, pretty-printed (`jq .`), nested.
const VALID_AFTER: &str = "{\"ip\":\"10.7.0.1\",\"n\":1}\n{\n  \"ip\": \"10.7.0.2\",\n  \"n\": [\n    2,\n    {\"k\": \"v\"}\n  ]\n}\n{\"ip\":\"10.7.0.3\",\"n\":[3]}\n";

/// What a reader must make of them.
const VALID_ITEMS: [&str; 3] = [
    "{\"ip\":\"10.7.0.1\",\"n\":1}",
    "{\"ip\":\"10.7.0.2\",\"n\":[2,{\"k\":\"v\"}]}",
    "{\"ip\":\"10.7.0.3\",\"n\":[3]}",
];

/// A damaged stream: what comes before [`VALID_AFTER`], the items it holds itself, and the
/// lines (from 1) of the refusals it must cause, each `invalid_json`.
struct Damage {
    name: &'static str,
    text: &'static str,
    items: &'static [&'static str],
    refused_lines: &'static [u64],
}

const CORPUS: &[Damage] = &[
    Damage {
        name: "unterminated object",
        text: "{\"ip\":\"10.0.0.1\",\"seq\":7\n",
        items: &[],
        refused_lines: &[1],
    },
    Damage {
        name: "torn where a value was due",
        text: "{\"ip\":\"10.0.0.1\",\"seq\":\n",
        items: &[],
        refused_lines: &[1],
    },
    Damage {
        name: "unterminated string across the newline",
        text: "{\"ip\":\"10.0.0.1\",\"note\":\"cut here\n",
        items: &[],
        refused_lines: &[1],
    },
    Damage {
        name: "unterminated array",
        text: "{\"ip\":\"10.0.0.1\",\"a\":[1,2\n",
        items: &[],
        refused_lines: &[1],
    },
    Damage {
        name: "a torn NDJSON line in the middle",
        text: "{\"ip\":\"10.6.0.1\"}\n{\"ip\":\"10.0.0.1\",\"se\n{\"ip\":\"10.6.0.2\"}\n",
        items: &["{\"ip\":\"10.6.0.1\"}", "{\"ip\":\"10.6.0.2\"}"],
        refused_lines: &[2],
    },
    Damage {
        name: "two lines torn where a value was due, in a row",
        text: "{\"ip\":\"10.0.0.1\",\"a\":[\n{\"ip\":\"10.0.0.2\",\"seq\":\n",
        items: &[],
        refused_lines: &[1, 2],
    },
    Damage {
        name: "a doubled closing brace",
        text: "{\"ip\":\"10.6.0.3\"}}\n",
        items: &["{\"ip\":\"10.6.0.3\"}"],
        refused_lines: &[1],
    },
    Damage {
        name: "garbage between objects",
        text: "{\"ip\":\"10.6.0.4\"}\n%% garbage ]] \"\n",
        items: &["{\"ip\":\"10.6.0.4\"}"],
        refused_lines: &[2],
    },
    Damage {
        name: "broken on its own line",
        text: "{\"ip\":\"10.0.0.1\" \"seq\": 7} and the rest\n",
        items: &[],
        refused_lines: &[1],
    },
    Damage {
        name: "a pretty-printed object missing a comma",
        text: "{\n  \"ip\": \"10.0.0.1\"\n  \"seq\": 7,\n  \"t\": [\n    {\"ip\": \"10.0.0.8\"}\n  ]\n}\n",
        items: &[],
        refused_lines: &[1],
    },
];

/// What a reader made of a stream: the items stored, and the codes of the refusals.
#[derive(Debug, PartialEq, Eq)]
struct Answers {
    items: Vec<String>,
    refused: Vec<String>,
}

/// Every record the sink received since the last call: a marker item is sent on a connection
/// of its own and acknowledged, and the records before it are the ones asked for.
async fn records_so_far(server: &mut TestServer) -> Vec<Record> {
    let mut client = server.connect().await;
    client
        .send(b"{\"ip\":\"10.255.255.254\",\"id\":\"marker\"}\n")
        .await;
    assert_eq!(client.line_of_type("ack").await["id"], "marker");
    let mut records = Vec::new();
    loop {
        let record = server.next_record().await;
        if record.ip.to_string() == "10.255.255.254" {
            return records;
        }
        records.push(record);
    }
}

fn item_text(record: &Record) -> String {
    String::from_utf8(record.item.to_vec()).expect("UTF-8")
}

/// `stream` written to a connection `chunk` bytes at a time, then ended: what `serve` answered
/// before it closed, and what it stored.
async fn through_serve(server: &mut TestServer, stream: &str, chunk: usize) -> Answers {
    let mut client = server.connect().await;
    for piece in stream.as_bytes().chunks(chunk) {
        client.send(piece).await;
        client.writer.flush().await.expect("flush");
    }
    client.writer.shutdown().await.expect("end the stream");
    let replies = client.until_closed().await;
    let refused = replies
        .lines()
        .map(|line| serde_json::from_str::<serde_json::Value>(line).expect("a JSON reply"))
        .filter(|reply| reply["type"] == "error")
        .map(|reply| reply["code"].as_str().expect("a code").to_owned())
        .collect();
    let items = records_so_far(server).await.iter().map(item_text).collect();
    Answers { items, refused }
}

/// `connwarden send` of `stream` from a file: what it refused (code, line) and what was stored.
async fn through_send(
    server: &mut TestServer,
    dir: &Path,
    stream: &str,
    ack: bool,
) -> (Answers, Vec<u64>, std::process::ExitStatus) {
    let input = dir.join("input.ndjson");
    std::fs::write(&input, stream).expect("write the input");
    let addr = server.addr.to_string();
    let mut args = vec!["send", "--to", &addr, "--log-format", "json"];
    if ack {
        args.push("--ack");
    }
    args.push(input.to_str().expect("a UTF-8 path"));
    let mut send = Proc::connwarden(&args);
    let status = tokio::task::spawn_blocking(move || {
        let status = send.wait_exit(Duration::from_secs(60));
        (send, status)
    })
    .await
    .expect("send ran");
    let (mut send, status) = status;
    let (mut refused, mut lines) = (Vec::new(), Vec::new());
    for line in send.stderr_so_far().lines() {
        let Ok(log) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        if log["message"] == "input refused" {
            refused.push(log["code"].as_str().expect("a code").to_owned());
            lines.push(log["line"].as_u64().expect("a line"));
        }
    }
    let items = records_so_far(server).await.iter().map(item_text).collect();
    (Answers { items, refused }, lines, status)
}

#[tokio::test]
async fn serve_and_send_answer_every_damaged_stream_alike_and_lose_nothing_after_it() {
    let mut server = TestServer::start(test_config()).await;
    let dir = tempfile::tempdir().expect("tempdir");
    for damage in CORPUS {
        let stream = format!("{}{VALID_AFTER}", damage.text);
        let expected = Answers {
            items: (damage.items.iter().chain(&VALID_ITEMS))
                .map(|item| item.to_string())
                .collect(),
            refused: vec!["invalid_json".to_owned(); damage.refused_lines.len()],
        };
        let (by_send, lines, status) = through_send(&mut server, dir.path(), &stream, false).await;
        assert_eq!(by_send, expected, "send, {}", damage.name);
        assert_eq!(lines, damage.refused_lines, "send's lines, {}", damage.name);
        assert!(!status.success(), "send exits non-zero, {}", damage.name);
        for chunk in [stream.len(), 1, 2, 7, 64] {
            let by_serve = through_serve(&mut server, &stream, chunk).await;
            assert_eq!(
                by_serve, expected,
                "serve, {} written {chunk} bytes at a time",
                damage.name
            );
        }
    }
    server.shutdown().await;
}

/// The case: `{"ip":"10.0.0.1"` and a newline, then 1,000 valid items, and no end of
/// stream: the damaged object is answered at once, every item after it is stored, and the
/// connection stays open.
#[tokio::test]
async fn a_damaged_object_is_answered_at_once_and_the_connection_goes_on() {
    let mut server = TestServer::start(test_config()).await;
    let mut client = server.connect().await;
    let mut items = String::new();
    for n in 1..=1000 {
        items.push_str(&format!(
            "{{\"ip\":\"10.8.{}.{}\",\"id\":{n}}}\n",
            n / 256,
            n % 256
        ));
    }
    let sent = Instant::now();
    client.send(b"{\"ip\":\"10.0.0.1\"\n").await;
    client.send(items.as_bytes()).await;
    let error = client.line_of_type("error").await;
    let answered = sent.elapsed();
    assert_eq!(error["code"], "invalid_json", "{error}");
    assert!(
        answered < Duration::from_secs(1),
        "answered after {answered:?}"
    );
    let mut acked = Vec::new();
    while acked.len() < 1000 {
        let ack = client.line_of_type("ack").await;
        acked.push(ack["id"].as_u64().expect("a numeric id"));
    }
    acked.sort_unstable();
    assert_eq!(acked, (1..=1000).collect::<Vec<_>>());
    let mut stored = Vec::new();
    for _ in 0..1000 {
        stored.push(server.next_record().await.ip.to_string());
    }
    assert_eq!(stored.first().map(String::as_str), Some("10.8.0.1"));
    assert_eq!(stored.last().map(String::as_str), Some("10.8.3.232"));
    assert_eq!(server.registry.len(), 1, "the connection is still open");
    client.send(b"{\"ip\":\"10.8.9.9\",\"id\":1001}\n").await;
    assert_eq!(client.line_of_type("ack").await["id"], 1001);
    eprintln!("the damaged object was answered {answered:?} after it was sent");
    drop(client);
    server.shutdown().await;
}

/// The file: 200 objects, 80 bare addresses and 12 bad lines of every kind, in any
/// order (three shuffles, and the bad lines that take the next line as a value placed one
/// after the other before a bare address): `send --ack` stores each of the 280 valid lines
/// once, reports each bad line by its number and no other, and exits non-zero.
#[tokio::test]
async fn send_stores_every_valid_line_of_a_damaged_file_once() {
    const BAD: [&str; 12] = [
        "{\"ip\":\"10.3.0.5\",\"seq\":7",
        "{\"ip\":\"10.3.0.6\",\"seq\":",
        "{\"ip\":\"10.3.0.7\",\"note\":\"cut",
        "{\"ip\":\"10.3.0.8\",\"a\":[1,2",
        "{\"ip\":\"10.3.0.9\",\"a\":[",
        "garbage line",
        "999.1.1.1",
        "{\"ip\":\"10.3.0.10\",}",
        "{\"ip\":\"999.0.0.1\"}",
        "{\"host\":\"10.3.0.12\"}",
        "{\"ip\":\"10.3.0.11\" \"x\":1}",
        "]]}",
    ];
    let mut lines: Vec<(String, Option<String>)> = Vec::new();
    for n in 0..200 {
        let ip = format!("10.1.{}.{}", n / 256, n % 256);
        lines.push((format!("{{\"ip\":\"{ip}\",\"n\":{n}}}"), Some(ip)));
    }
    for n in 0..80 {
        let ip = format!("10.2.0.{n}");
        lines.push((ip.clone(), Some(ip)));
    }
    lines.extend(BAD.iter().map(|bad| (bad.to_string(), None)));
    let mut orders = Vec::new();
    for seed in [1, 2, 3] {
        let mut order = lines.clone();
        fastrand::Rng::with_seed(seed).shuffle(&mut order);
        orders.push(order);
    }
    // The worst order for a reader: the two lines torn where a value was due, one after the
    // other, before a bare address.
    let mut worst = lines.clone();
    let (torn_at_value, torn_in_array) = (worst.remove(281), worst.remove(283));
    let bare = worst
        .iter()
        .position(|(line, _)| line == "10.2.0.50")
        .expect("a bare address");
    let bare = worst.remove(bare);
    worst.splice(10..10, [torn_at_value, torn_in_array, bare]);
    orders.push(worst);

    let mut server = TestServer::start(test_config()).await;
    let dir = tempfile::tempdir().expect("tempdir");
    for (o, order) in orders.iter().enumerate() {
        let text: String = order.iter().map(|(line, _)| format!("{line}\n")).collect();
        let (answers, refused_lines, status) =
            through_send(&mut server, dir.path(), &text, true).await;
        let mut stored: Vec<String> = answers
            .items
            .iter()
            .map(|item| {
                let item: serde_json::Value = serde_json::from_str(item).expect("JSON");
                item["ip"].as_str().expect("an ip").to_owned()
            })
            .collect();
        stored.sort();
        let mut valid: Vec<String> = order.iter().filter_map(|(_, ip)| ip.clone()).collect();
        valid.sort();
        assert_eq!(stored.len(), 280, "order {o}");
        assert_eq!(stored, valid, "order {o}: each valid line once");
        let bad_lines: Vec<u64> = order
            .iter()
            .enumerate()
            .filter(|(_, (_, ip))| ip.is_none())
            .map(|(at, _)| at as u64 + 1)
            .collect();
        let mut reported = refused_lines.clone();
        reported.sort_unstable();
        assert_eq!(
            reported, bad_lines,
            "order {o}: each bad line, by its number"
        );
        assert!(!status.success(), "order {o}: send exits non-zero");
    }
    server.shutdown().await;
}
