//! Generated objects, pretty-printed or compact and cut at every byte, go through the real
//! decoder, parser and record writer: each becomes one line of JSON whose item is the compact
//! text of what was sent, equal to it by value. (`fuzz/` checks the same on arbitrary bytes.)

use connwarden_test_common as common;

use bytes::BytesMut;
use common::json_text::{pretty, tokens};
use connwarden::protocol::{self, Decoder, Frame, Inbound};
use connwarden::Record;
use proptest::prelude::*;

/// A JSON value kept as the text a client would write (numbers and strings verbatim).
#[derive(Clone, Debug)]
enum Json {
    Literal(String),
    Array(Vec<Json>),
    Object(Vec<(String, Json)>),
}

impl Json {
    fn write_compact(&self, out: &mut String) {
        match self {
            Json::Literal(text) => out.push_str(text),
            Json::Array(items) => {
                out.push('[');
                for (i, item) in items.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    item.write_compact(out);
                }
                out.push(']');
            }
            Json::Object(members) => {
                out.push('{');
                for (i, (key, value)) in members.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    out.push_str(key);
                    out.push(':');
                    value.write_compact(out);
                }
                out.push('}');
            }
        }
    }
}

/// A JSON string literal: raw characters (U+2028 and U+2029 among them), every short escape,
/// and `\u` escapes outside the surrogate range.
fn string_text() -> impl Strategy<Value = String> {
    r#""([^"\\\x00-\x1f]|[ \u{2028}\u{2029}é€😀]|\\["\\/bfnrt]|\\u00[0-9a-f]{2}|\\u[1-9a-cA-CeEfF][0-9a-fA-F]{3}){0,10}""#
}

fn number_text() -> impl Strategy<Value = String> {
    r"-?(0|[1-9][0-9]{0,30})(\.[0-9]{1,4})?([eE][+-]?[0-9]{1,2})?"
}

/// Keys start with `k`, so none is `ip`, `id` or `type`.
fn key_text() -> impl Strategy<Value = String> {
    string_text().prop_map(|s| format!("\"k{}", &s[1..]))
}

fn value() -> impl Strategy<Value = Json> {
    let leaf = prop_oneof![
        Just("true".to_owned()),
        Just("false".to_owned()),
        Just("null".to_owned()),
        number_text(),
        string_text(),
    ]
    .prop_map(Json::Literal);
    leaf.prop_recursive(3, 24, 5, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..5).prop_map(Json::Array),
            prop::collection::vec((key_text(), inner), 0..5).prop_map(Json::Object),
        ]
    })
}

/// An item: generated members, with an `ip` key (in any case) at any place.
fn item() -> impl Strategy<Value = (String, std::net::IpAddr)> {
    (
        prop::collection::vec((key_text(), value()), 0..5),
        any::<prop::sample::Index>(),
        prop_oneof![Just("ip"), Just("IP"), Just("Ip")],
        any::<std::net::IpAddr>(),
    )
        .prop_map(|(mut members, at, key, ip)| {
            let place = at.index(members.len() + 1);
            let ip_member = (format!("\"{key}\""), Json::Literal(format!("\"{ip}\"")));
            members.insert(place, ip_member);
            let mut text = String::new();
            Json::Object(members).write_compact(&mut text);
            (text, ip)
        })
}

/// Ways of writing a compact text with whitespace between its tokens.
fn layout() -> impl Strategy<Value = Layout> {
    prop_oneof![
        Just(Layout::Compact),
        Just(Layout::Pretty("  ", "\n")),
        Just(Layout::Pretty("    ", "\r\n")),
        Just(Layout::Pretty("\t", "\n")),
        prop::collection::vec("[ \t\r\n]{0,3}", 1..16).prop_map(Layout::Between),
    ]
}

#[derive(Clone, Debug)]
enum Layout {
    Compact,
    Pretty(&'static str, &'static str),
    /// These runs of whitespace between tokens, in turn.
    Between(Vec<String>),
}

impl Layout {
    fn render(&self, compact: &str) -> String {
        match self {
            Layout::Compact => compact.to_owned(),
            Layout::Pretty(indent, newline) => pretty(compact, indent, newline),
            Layout::Between(runs) => {
                let mut out = String::new();
                for (i, token) in tokens(compact).into_iter().enumerate() {
                    if i > 0 {
                        out.push_str(&runs[i % runs.len()]);
                    }
                    out.push_str(token);
                }
                out
            }
        }
    }
}

/// Feeds `pieces` to a fresh decoder, then ends the stream; every frame, in order.
fn decode<'a>(pieces: impl IntoIterator<Item = &'a [u8]>, max_frame: usize) -> Vec<Frame> {
    let mut decoder = Decoder::new(max_frame);
    let mut buf = BytesMut::new();
    let mut frames = Vec::new();
    for piece in pieces {
        buf.extend_from_slice(piece);
        while let Some(frame) = decoder.decode(&mut buf).expect("within max_frame") {
            frames.push(frame);
        }
        assert!(buf.len() <= max_frame, "the buffer stays bounded");
    }
    while let Some(frame) = decoder.decode_eof(&mut buf).expect("within max_frame") {
        frames.push(frame);
    }
    frames
}

/// The record line for one frame, through the real parser and writer.
fn record_line(frame: Frame, ip: std::net::IpAddr) -> Vec<u8> {
    let Frame::Object(bytes) = frame else {
        panic!("expected an object, got {frame:?}");
    };
    let Ok(Inbound::Item(item)) = protocol::parse(bytes) else {
        panic!("a valid item is refused");
    };
    assert_eq!(item.ip, ip);
    let record = Record::new(
        7,
        "127.0.0.1:9".parse().unwrap(),
        item.ip,
        item.raw,
        item.id,
    );
    let mut line = Vec::new();
    record.write_ndjson(&mut line);
    line
}

fn check_line(line: &[u8], sent: &str, compact: &str) {
    assert_eq!(line.iter().filter(|&&b| b == b'\n').count(), 1);
    assert_eq!(line.last(), Some(&b'\n'));
    assert!(!line.contains(&b'\r'));
    let record: serde_json::Value = serde_json::from_slice(line).expect("valid JSON");
    let sent: serde_json::Value = serde_json::from_str(sent).expect("generated valid JSON");
    assert_eq!(record["item"], sent, "equal by value");
    let text = std::str::from_utf8(line).unwrap();
    assert!(
        text.ends_with(&format!(",\"item\":{compact}}}\n")),
        "{text}"
    );
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(192))]

    #[test]
    fn one_object_cut_at_every_byte_is_one_line((compact, ip) in item(), layout in layout()) {
        let sent = layout.render(&compact);
        let bytes = sent.as_bytes();
        for cut in 0..=bytes.len() {
            let frames = decode([&bytes[..cut], &bytes[cut..]], 64 * 1024);
            prop_assert_eq!(frames.len(), 1);
            let frame = frames.into_iter().next().unwrap();
            check_line(&record_line(frame, ip), &sent, &compact);
        }
    }

    #[test]
    fn a_stream_of_objects_in_any_chunks_gives_the_same_lines(
        items in prop::collection::vec((item(), layout(), "[ \t\r\n]{0,2}"), 1..5),
        chunk in 1usize..64,
    ) {
        let stream: String = items
            .iter()
            .map(|((compact, _), layout, gap)| layout.render(compact) + gap)
            .collect();
        let whole = decode([stream.as_bytes()], 64 * 1024);
        let chunked = decode(stream.as_bytes().chunks(chunk), 64 * 1024);
        prop_assert_eq!(&whole, &chunked);
        prop_assert_eq!(whole.len(), items.len());
        for (frame, ((compact, ip), layout, _)) in whole.into_iter().zip(&items) {
            check_line(&record_line(frame, *ip), &layout.render(compact), compact);
        }
    }
}
