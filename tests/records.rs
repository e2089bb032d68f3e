//! Every record a sink writes is one line of JSON, whatever whitespace the client put in its
//! objects; and a stream that ends inside an object is answered before the close.

use connwarden_test_common as common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, TcpStream};

use common::json_text::{pretty, tokens};
use common::{Proc, PROMPT};

/// Items as a client writes them compact, with what a parse-and-reserialise would change:
/// number text (a 30-digit integer, `1.50`, `1E+3`, `-0`), escapes, raw UTF-8 (U+2028 and
/// U+2029 included), duplicate keys, key case and order, spaces inside strings.
fn compact_items() -> Vec<String> {
    vec![
        r#"{"ip":"192.0.2.1","id":1,"n":123456789012345678901234567890,"f":1.50,"e":1E+3,"z":-0}"#
            .to_owned(),
        "{\"IP\":\"2001:db8::7\",\"id\":2,\"s\":\"caf\\u00e9 café \\\"q\\\" \\\\ \\/ \\n\\t \u{2028}|\u{2029}\",\"sp\":\" a  b \"}".to_owned(),
        r#"{"ip":"198.51.100.9","id":3,"nested":{"a":[1,[2,[3,{}]],[],{"b":null,"c":true,"d":false}],"e":""},"dup":1,"dup":2}"#
            .to_owned(),
        r#"{"id":4,"type":"login","Ip":"10.0.0.1","k":[{"x":"{ } [ ] , :"}]}"#.to_owned(),
    ]
}

/// A way of writing the items: a name, the text of one item, the text between items.
type Format = (&'static str, fn(&str) -> String, &'static str);

fn formats() -> Vec<Format> {
    vec![
        ("compact", |c| c.to_owned(), "\n"),
        ("indent 2", |c| pretty(c, "  ", "\n"), "\n"),
        ("indent 4, CRLF", |c| pretty(c, "    ", "\r\n"), "\r\n"),
        ("tabs", |c| pretty(c, "\t", "\n"), ""),
        (
            "a newline between every token",
            |c| tokens(c).join("\n"),
            "\n\n",
        ),
        (
            "spaces and tabs between tokens",
            |c| tokens(c).join(" \t "),
            " ",
        ),
    ]
}

/// `serve` storing to `sink` (its standard output read by the test for `stdout`).
fn serve_to(sink: &str) -> (Proc, String) {
    let mut serve = common::serve().sink(sink);
    if sink == "stdout" {
        serve = serve.stdout();
    }
    let (serve, _admin, addr) = serve.start();
    (serve, addr)
}

/// Sends `text` on a new connection and waits for the acks of ids 1..=n: the sink has them.
fn send_and_wait_for_acks(addr: &str, text: &str, n: u64) {
    let mut stream = TcpStream::connect(addr).expect("connect");
    stream.set_read_timeout(Some(PROMPT)).unwrap();
    stream.write_all(text.as_bytes()).expect("send");
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut acked = Vec::new();
    while acked.len() < n as usize {
        let mut line = String::new();
        assert!(reader.read_line(&mut line).expect("a reply") > 0, "closed");
        let reply: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(reply["type"], "ack", "{line}");
        acked.push(reply["id"].as_u64().unwrap());
    }
    assert_eq!(acked, (1..=n).collect::<Vec<_>>());
}

/// Sends every format of every item, one connection per format, then stops the server and
/// checks what `sink` holds: one record per line, each item byte for byte the compact text.
fn every_format_gives_one_line_records(sink_kind: &str) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("records.ndjson");
    let sink = match sink_kind {
        "file" => format!("file:{}", path.display()),
        _ => "stdout".to_owned(),
    };
    let (mut serve, addr) = serve_to(&sink);
    let items = compact_items();
    for (name, render, between) in formats() {
        let text: Vec<String> = items.iter().map(|c| render(c)).collect();
        assert!(
            name == "compact" || text.iter().all(|t| t.contains(['\n', '\t', ' '])),
            "{name} adds whitespace"
        );
        send_and_wait_for_acks(&addr, &text.join(between), items.len() as u64);
    }
    let mut stdout = serve.child.stdout.take();
    serve.terminate();
    assert!(serve.wait_exit(PROMPT).success());
    let mut written = String::new();
    match stdout.as_mut() {
        Some(out) => out.read_to_string(&mut written).map(|_| ()).unwrap(),
        None => written = std::fs::read_to_string(&path).unwrap(),
    };

    let lines: Vec<&str> = written.split_terminator('\n').collect();
    assert_eq!(lines.len(), formats().len() * items.len(), "{written}");
    let mut by_conn: std::collections::BTreeMap<u64, Vec<&str>> = Default::default();
    for line in &lines {
        assert!(!line.contains('\r'), "{line:?}");
        let record: serde_json::Value = serde_json::from_str(line)
            .unwrap_or_else(|e| panic!("not one JSON record: {line:?}: {e}"));
        let item_text = line
            .split_once(",\"item\":")
            .and_then(|(_, rest)| rest.strip_suffix('}'))
            .unwrap_or_else(|| panic!("no item in {line:?}"));
        let item: serde_json::Value = serde_json::from_str(item_text).unwrap();
        assert_eq!(record["item"], item);
        by_conn
            .entry(record["conn_id"].as_u64().unwrap())
            .or_default()
            .push(item_text);
    }
    assert_eq!(by_conn.len(), formats().len());
    for ((name, render, _), stored) in formats().into_iter().zip(by_conn.values()) {
        for (compact, stored) in items.iter().zip(stored) {
            assert_eq!(stored, compact, "{name}: text changed");
            let sent: serde_json::Value = serde_json::from_str(&render(compact)).unwrap();
            let stored: serde_json::Value = serde_json::from_str(stored).unwrap();
            assert_eq!(stored, sent, "{name}: value changed");
        }
    }
}

#[test]
fn pretty_printed_items_are_one_line_records_in_a_file() {
    every_format_gives_one_line_records("file");
}

#[test]
fn pretty_printed_items_are_one_line_records_on_stdout() {
    every_format_gives_one_line_records("stdout");
}

/// Sends `text`, ends the stream, and returns every line the server sent before it closed.
fn half_close_after(addr: &str, text: &[u8]) -> Vec<serde_json::Value> {
    let mut stream = TcpStream::connect(addr).expect("connect");
    stream.set_read_timeout(Some(PROMPT)).unwrap();
    stream.write_all(text).expect("send");
    stream.shutdown(Shutdown::Write).expect("half-close");
    let mut replies = String::new();
    stream
        .read_to_string(&mut replies)
        .expect("the server answers, then closes");
    replies
        .lines()
        .map(|line| serde_json::from_str(line).expect("a JSON reply"))
        .collect()
}

#[test]
fn a_stream_that_ends_inside_an_object_is_answered_before_the_close() {
    let (mut serve, addr) = serve_to("file:/dev/null");
    let cases: [(&[u8], &str, &str); 3] = [
        (
            b"{\"ip\":\"192.0.2.1\",\"id\":1}\n{\"ip\": \"192.0.2.2\",\n \"note\": \"cut he",
            "truncated",
            "inside a string of an unfinished object (depth 1); 36 bytes discarded",
        ),
        (
            b"{\"ip\":\"192.0.2.1\",\"id\":1}{\"ip\":\"192.0.2.3\",\"a\":[{\"b\":1},",
            "truncated",
            "inside an unfinished object (depth 2); 31 bytes discarded",
        ),
        (
            b"{\"ip\":\"192.0.2.1\",\"id\":1}\nnot an object",
            "invalid_json",
            "13 bytes",
        ),
    ];
    for (sent, code, detail) in cases {
        let replies = half_close_after(&addr, sent);
        assert_eq!(replies.len(), 2, "{replies:?}");
        let ack = replies.iter().find(|r| r["type"] == "ack").expect("an ack");
        assert_eq!(ack["id"], 1);
        let error = replies
            .iter()
            .find(|r| r["type"] == "error")
            .expect("error");
        assert_eq!(error["code"], code);
        let message = error["message"].as_str().unwrap();
        assert!(message.contains(detail), "{message}");

        let refused = serve.wait_log("item refused").expect("a warning");
        assert_eq!(refused["level"], "WARN");
        assert_eq!(refused["code"], code);
        let conn_id = refused["conn_id"].as_u64().expect("the connection id");
        let closed = serve.wait_log("connection closed").expect("the close");
        assert_eq!(closed["conn_id"], conn_id);
        assert_eq!(closed["reason"], "peer_closed");
        assert_eq!(closed["items"], 1);
        assert_eq!(closed["errors"], 1, "counted like any refused item");
    }
}
