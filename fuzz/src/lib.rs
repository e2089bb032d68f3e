//! The properties the fuzz targets check, on arbitrary bytes from the network.
//!
//! Each target is one function here, so that the same checks run three ways: under libFuzzer
//! (`fuzz/run.sh`, nightly), and on stable in `cargo test` (`tests/fuzz_corpus.rs` replays
//! `fuzz/seeds/` and every input that once failed, kept in `fuzz/regressions/`).
//!
//! The last byte of an input is a control byte, not data: its low four bits choose the
//! decoder's `max_frame` from [`MAX_FRAMES`] (so the limit is fuzzed too), its high four bits
//! seed the chunk sizes in which the rest is fed, as a socket would deliver it.
//!
//! The oracles are independent of the code under test: `serde_json` says what is valid JSON
//! and what two texts mean, and a naive whitespace strip says what a compacted object is.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::ops::Range;

use bytes::{Bytes, BytesMut};
use connwarden::protocol::{self, Decoder, Frame, Inbound, Outbound, Reply};
use connwarden::Record;
use serde::de::IgnoredAny;
use serde_json::value::RawValue;
use serde_json::Value;

/// The `max_frame` values the control byte chooses from: the configurable minimum, sizes near
/// the short objects a fuzzer writes, and the largest limit.
pub const MAX_FRAMES: [usize; 16] = [
    16,
    17,
    18,
    20,
    24,
    31,
    32,
    40,
    64,
    100,
    128,
    255,
    256,
    1024,
    65536,
    protocol::MAX_FRAME_LIMIT,
];

/// The decoder cuts the same frames whether the stream arrives at once, byte by byte or in
/// random chunks; each frame is exactly the bytes it came from (a compacted object, a run of
/// junk, or an unfinished object at the end), and nothing is lost or invented between them.
pub fn decoder_chunks(data: &[u8]) {
    let Some(input) = Input::split(data) else {
        return;
    };
    let at_once = cut(&input, std::iter::repeat(usize::MAX));
    let byte_by_byte = cut(&input, std::iter::repeat(1));
    let chunked = cut(&input, input.chunk_sizes());
    assert_eq!(at_once, byte_by_byte, "at once vs byte by byte");
    assert_eq!(at_once, chunked, "at once vs chunked");
    for piece in &at_once.pieces {
        check_piece(&input, piece);
    }
    resynchronises(&input);
    // The server reads with `next_message`, whose fast path reads a whole compact object in
    // one walk: the same answers as cutting and interpreting, however the stream is chunked.
    let two_steps = read_messages(&input, input.chunk_sizes(), false);
    for (sizes, name) in [
        (
            Box::new(std::iter::repeat(usize::MAX)) as Box<dyn Iterator<Item = usize>>,
            "at once",
        ),
        (Box::new(std::iter::repeat(1)), "byte by byte"),
        (Box::new(input.chunk_sizes()), "chunked"),
    ] {
        let one_step = read_messages(&input, sizes, true);
        assert_eq!(
            two_steps, one_step,
            "next_message vs decode and interpret, {name}"
        );
    }
}

/// Valid objects written on the lines after a damaged one: the fuzzer's stream, made one line.
const AFTER_DAMAGE: [&str; 3] = [
    "{\"ip\":\"10.9.9.1\",\"mark\":1}\n",
    "{\"ip\":\"10.9.9.2\",\"mark\":[2,{\"k\":\"v\"}]}\r\n",
    "{\"ip\":\"10.9.9.3\",\"mark\":3}",
];

/// One damaged object costs only itself: whatever one line holds (the fuzzer's stream with its
/// newlines made spaces), every valid object on the lines after it is read whole and in order,
/// at once and in random chunks, by the server's reader as by the decoder (byte by byte is
/// compared with at once for every stream above). The one exception, by design:
/// a line nested deeper than the grammar is followed ([`protocol::STACK_DEPTH`]), where only
/// brackets are counted, so that line is left out.
fn resynchronises(input: &Input<'_>) {
    let openers = input
        .stream
        .iter()
        .filter(|&&b| b == b'{' || b == b'[')
        .count();
    if openers > protocol::STACK_DEPTH as usize {
        return;
    }
    let mut stream: Vec<u8> = input
        .stream
        .iter()
        .map(|&b| if b == b'\n' { b' ' } else { b })
        .collect();
    stream.push(b'\n');
    for line in AFTER_DAMAGE {
        stream.extend_from_slice(line.as_bytes());
    }
    let damaged = Input {
        stream: &stream,
        max_frame: protocol::MAX_FRAME_LIMIT,
        seed: input.seed,
    };
    let expected: Vec<Vec<u8>> = AFTER_DAMAGE
        .iter()
        .map(|line| line.trim_end().as_bytes().to_vec())
        .collect();
    for (sizes, name) in [
        (
            Box::new(std::iter::repeat(usize::MAX)) as Box<dyn Iterator<Item = usize>>,
            "at once",
        ),
        (Box::new(damaged.chunk_sizes()), "chunked"),
    ] {
        let objects: Vec<Vec<u8>> = cut(&damaged, sizes)
            .pieces
            .into_iter()
            .filter_map(|piece| match piece {
                Piece::Frame {
                    frame: Frame::Object(object),
                    ..
                } => Some(object.to_vec()),
                _ => None,
            })
            .collect();
        assert!(
            objects.ends_with(&expected),
            "{name}: the objects after {:?} were lost: {:?}",
            lossy(input.stream),
            objects.iter().map(|o| lossy(o)).collect::<Vec<_>>()
        );
    }
    let messages = read_messages(&damaged, damaged.chunk_sizes(), true);
    let items: Vec<_> = messages
        .iter()
        .filter_map(|message| match message {
            Ok(Ok(Inbound::Item(item))) => Some(item.raw.to_vec()),
            _ => None,
        })
        .collect();
    assert!(
        items.ends_with(&expected),
        "next_message lost the objects after {:?}",
        lossy(input.stream)
    );
}

/// What a reader makes of `input`'s stream fed in `chunk_sizes`: with
/// [`protocol::next_message`] (`one_step`) or with [`Decoder::decode`] and
/// [`protocol::interpret`]. Ends at the stream's end or at the first frame too large.
fn read_messages(
    input: &Input<'_>,
    mut chunk_sizes: impl Iterator<Item = usize>,
    one_step: bool,
) -> Vec<Result<Result<Inbound, protocol::ItemError>, protocol::FrameTooLarge>> {
    let stream = input.stream;
    let mut decoder = Decoder::new(input.max_frame);
    let (mut buf, mut fed, mut messages) = (BytesMut::new(), 0, Vec::new());
    loop {
        let eof = feed(stream, &mut fed, &mut buf, &mut chunk_sizes);
        loop {
            let next = if one_step {
                protocol::next_message(&mut decoder, &mut buf, eof)
            } else if eof {
                decoder
                    .decode_eof(&mut buf)
                    .map(|f| f.map(protocol::interpret))
            } else {
                decoder.decode(&mut buf).map(|f| f.map(protocol::interpret))
            };
            match next {
                Ok(Some(message)) => messages.push(Ok(message)),
                Ok(None) if eof => return messages,
                Ok(None) => break,
                Err(too_large) => {
                    messages.push(Err(too_large));
                    return messages;
                }
            }
        }
    }
}

/// Whatever one frame holds, [`protocol::parse`] does not panic; an item it accepts is a JSON
/// object whose `ip` key holds the address it reports; what it refuses is answered with one
/// line the client's own parser reads back as that error.
pub fn parse_frame(data: &[u8]) {
    let frame = Bytes::copy_from_slice(data);
    let is_object = is_json(data) && data.trim_ascii_start().first() == Some(&b'{');
    match protocol::parse(frame) {
        Ok(Inbound::Item(item)) => {
            assert!(is_object, "an item that is not a JSON object");
            assert_eq!(item.raw, data, "the item is the frame, unchanged");
            let members = members(data).expect("an object");
            let holds_ip = members.iter().any(|(Name(key), value)| {
                key.eq_ignore_ascii_case(b"ip")
                    && serde_json::from_str::<String>(value.get())
                        .is_ok_and(|text| text.parse() == Ok(item.ip))
            });
            assert!(holds_ip, "no ip key holds {}", item.ip);
            let id = members
                .get(&Name(b"id".to_vec()))
                .map(|raw| raw.get().as_bytes());
            assert_eq!(item.id.as_deref(), id, "the id is the object's, as written");
            if let Some(id) = id {
                assert!(matches!(id[0], b'"' | b'-' | b'0'..=b'9'), "id {id:?}");
            }
        }
        Ok(_control) => assert!(is_object, "a control message that is not an object"),
        Err(error) => {
            if error.code == protocol::ErrorCode::InvalidJson {
                assert!(!is_object, "a JSON object refused as invalid_json: {error}");
            } else {
                assert!(is_object, "{error}, for something that is not an object");
            }
            check_error_line(&error);
        }
    }
}

/// The whole way from bytes to the sink: every item the server would accept becomes one
/// NDJSON line of valid JSON whose `item` equals, by value, the object the client sent; junk
/// and a truncated object are never accepted, and every refusal is one line of reply.
pub fn sink_line(data: &[u8]) {
    let Some(input) = Input::split(data) else {
        return;
    };
    let pieces = cut(&input, input.chunk_sizes()).pieces;
    let peer = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 40_000);
    for piece in pieces {
        let Piece::Frame { raw, frame } = piece else {
            continue;
        };
        let sent = &input.stream[raw];
        let was_object = matches!(frame, Frame::Object(_));
        match protocol::interpret(frame) {
            Ok(Inbound::Item(item)) => {
                assert!(was_object, "junk or a truncated object accepted as an item");
                let record = Record::new(7, peer, item.ip, item.raw, item.id);
                let mut line = Vec::new();
                record.write_ndjson(&mut line);
                assert_eq!(line.iter().filter(|&&b| b == b'\n').count(), 1);
                assert_eq!(line.last(), Some(&b'\n'), "the record ends its line");
                assert!(!line.contains(&b'\r'), "a CR in {:?}", lossy(&line));
                let record = members(&line)
                    .unwrap_or_else(|| panic!("record {:?} is not JSON", lossy(&line)));
                let item = record[&Name(b"item".to_vec())].get().as_bytes();
                assert_eq!(item, strip_whitespace(sent), "the item is what was sent");
                if let Ok(sent) = serde_json::from_slice::<Value>(sent) {
                    let item: Value = serde_json::from_slice(item).expect("the same numbers");
                    assert_eq!(item, sent, "the record's item is what was sent");
                }
            }
            Ok(_control) => assert!(was_object, "a control message from junk"),
            Err(error) => check_error_line(&error),
        }
    }
}

/// A fuzz input: the stream and the control byte's two choices.
pub struct Input<'a> {
    stream: &'a [u8],
    max_frame: usize,
    seed: u8,
}

impl<'a> Input<'a> {
    /// Splits off the control byte; `None` for an empty input.
    pub fn split(data: &'a [u8]) -> Option<Input<'a>> {
        let (&control, stream) = data.split_last()?;
        Some(Input {
            stream,
            max_frame: MAX_FRAMES[usize::from(control & 0x0f)],
            seed: control >> 4,
        })
    }

    /// Chunk sizes as reads would return them: mostly small, sometimes larger.
    fn chunk_sizes(&self) -> impl Iterator<Item = usize> {
        let mut rng = fastrand::Rng::with_seed(u64::from(self.seed));
        std::iter::repeat_with(move || {
            if rng.bool() {
                rng.usize(1..4)
            } else {
                rng.usize(1..100)
            }
        })
    }
}

/// Appends the next chunk of `stream` to `buf`, as a socket would deliver it; true once all of
/// it had been fed before this call (the stream has ended).
fn feed(
    stream: &[u8],
    fed: &mut usize,
    buf: &mut BytesMut,
    chunk_sizes: &mut impl Iterator<Item = usize>,
) -> bool {
    if *fed == stream.len() {
        return true;
    }
    let size = chunk_sizes
        .next()
        .expect("endless")
        .min(stream.len() - *fed);
    buf.extend_from_slice(&stream[*fed..*fed + size]);
    *fed += size;
    false
}

/// What the decoder made of one stream.
#[derive(Debug, PartialEq, Eq)]
struct Cut {
    pieces: Vec<Piece>,
}

#[derive(Debug, PartialEq, Eq)]
enum Piece {
    /// A frame and the bytes of the stream it came from (whitespace before it excluded).
    Frame { raw: Range<usize>, frame: Frame },
    /// `FrameTooLarge`, where the connection would close; `start` is where the frame began.
    TooLarge { start: usize },
}

/// Feeds `input` to a decoder in chunks of the given sizes, draining it after each, then ends
/// the stream. Checks on the way that a decoder waiting for more never holds more than
/// `max_frame` bytes of a frame.
fn cut(input: &Input<'_>, chunk_sizes: impl Iterator<Item = usize>) -> Cut {
    let stream = input.stream;
    let mut decoder = Decoder::new(input.max_frame);
    let mut buf = BytesMut::new();
    let mut fed = 0;
    let mut frame_end = 0;
    let mut pieces = Vec::new();
    let mut chunk_sizes = chunk_sizes;
    loop {
        let eof = feed(stream, &mut fed, &mut buf, &mut chunk_sizes);
        loop {
            let decoded = if eof {
                decoder.decode_eof(&mut buf)
            } else {
                decoder.decode(&mut buf)
            };
            match decoded {
                Ok(Some(frame)) => {
                    let end = fed - buf.len();
                    let start = skip_blanks(stream, frame_end, end);
                    pieces.push(Piece::Frame {
                        raw: start..end,
                        frame,
                    });
                    frame_end = end;
                }
                Ok(None) if eof => {
                    assert!(buf.is_empty(), "decode_eof left {} bytes", buf.len());
                    assert!(!decoder.is_mid_frame(), "mid frame after the end");
                    return Cut { pieces };
                }
                Ok(None) => {
                    assert!(
                        buf.len() <= input.max_frame,
                        "waiting with {} bytes buffered, max_frame {}",
                        buf.len(),
                        input.max_frame
                    );
                    break;
                }
                Err(too_large) => {
                    assert_eq!(too_large.limit, input.max_frame);
                    let start = skip_blanks(stream, frame_end, fed - buf.len());
                    pieces.push(Piece::TooLarge { start });
                    return Cut { pieces };
                }
            }
        }
    }
}

/// Where the next frame starts: the decoder skips ASCII whitespace between frames.
fn skip_blanks(stream: &[u8], from: usize, to: usize) -> usize {
    from + stream[from..to]
        .iter()
        .take_while(|b| b.is_ascii_whitespace())
        .count()
}

/// One piece against the bytes it came from.
fn check_piece(input: &Input<'_>, piece: &Piece) {
    let (start, raw, frame) = match piece {
        Piece::Frame { raw, frame } => (raw.start, &input.stream[raw.clone()], frame),
        Piece::TooLarge { start } => {
            let rest = &input.stream[*start..];
            let frame_len = match rest.first() {
                // An object that broke may be refused with the rest of its line: only a valid
                // object the limit would hold must never be refused.
                Some(b'{') => match object_len(rest) {
                    Some(len) if len <= input.max_frame && is_json(&rest[..len]) => Some(len),
                    _ => return,
                },
                _ => rest.iter().position(|&b| b == b'\n' || b == b'{').map(|p| {
                    if rest[p] == b'\n' {
                        p + 1
                    } else {
                        p
                    }
                }),
            };
            // Too large: the frame, or what has arrived of it, is longer than the limit.
            let seen = frame_len.unwrap_or(rest.len());
            assert!(seen > input.max_frame, "{seen} bytes refused as too large");
            return;
        }
    };
    assert!(raw.len() <= input.max_frame, "a frame over max_frame");
    match frame {
        Frame::Object(compact) => {
            assert_eq!(raw.first(), Some(&b'{'));
            assert_eq!(
                object_len(raw),
                Some(raw.len()),
                "the object ends at its brace"
            );
            assert_compacted(raw, compact);
        }
        Frame::Junk(junk) => {
            assert_eq!(junk, raw, "junk is passed on as it came");
            assert!(!raw.is_empty() && raw[0] != b'{');
            let newline = raw.iter().position(|&b| b == b'\n');
            assert!(
                newline.is_none_or(|p| p == raw.len() - 1),
                "junk past its line"
            );
            assert!(!raw.contains(&b'{'), "junk swallowed an object's brace");
        }
        Frame::Broken(broken) => {
            assert_eq!(broken.refused, raw, "a broken object is refused as it came");
            assert_eq!(raw.first(), Some(&b'{'));
            // The stream from the object's `{` to the offending byte.
            let object = &input.stream[start..];
            assert_eq!(object.get(broken.at), Some(&broken.found));
            let upto = &object[..=broken.at];
            assert!(
                not_a_json_prefix(upto),
                "{:?} broke where JSON could go on",
                lossy(upto)
            );
            let line_began = !object[..broken.at].contains(&b'\n');
            if !line_began || broken.found == b'\n' {
                // Reading resumes at the start of a line (or at the end of the stream).
                let at_end = start + raw.len() == input.stream.len();
                // (A tail past the break stops at a `{` that may begin the next object.)
                let at_brace = raw.len() > broken.at && object.get(raw.len()) == Some(&b'{');
                assert!(
                    raw.last() == Some(&b'\n') || at_end || at_brace,
                    "resumed inside a line"
                );
                if let Some(own) = raw.get(broken.at + 1..).filter(|own| !own.is_empty()) {
                    // Past the byte where it broke: the rest of its line when that line held
                    // only closing brackets and commas up to it (it can begin nothing), and a
                    // pretty-printed object's own lines.
                    let line_start = object[..broken.at]
                        .iter()
                        .rposition(|&b| b == b'\n')
                        .map_or(0, |p| p + 1);
                    let closing = object[line_start..=broken.at]
                        .iter()
                        .all(|b| matches!(b, b'}' | b']' | b',' | b' ' | b'\t' | b'\r'));
                    let first_line = raw.split(|&b| b == b'\n').next().unwrap_or_default();
                    let pretty = first_line.trim_ascii() == b"{";
                    assert!(closing || pretty, "refused past the line where it broke");
                    let from = own
                        .iter()
                        .position(|&b| b == b'\n')
                        .map_or(own.len(), |p| p + 1);
                    assert!(
                        pretty || !own[..from].contains(&b'{'),
                        "a tail took a brace"
                    );
                    for line in own[from..].split(|&b| b == b'\n') {
                        assert!(
                            line.is_empty()
                                || (pretty && matches!(line[0], b' ' | b'\t' | b'\r'))
                                || (pretty && line.trim_ascii() == b"}"),
                            "a line refused with a broken object that is not its own: {:?}",
                            lossy(line)
                        );
                    }
                }
            } else if raw.len() == broken.at {
                assert_eq!(broken.found, b'{', "resumed at a byte that begins nothing");
            } else {
                // The rest of the line where it began goes with it.
                let tail = &raw[broken.at + 1..];
                let newline = tail.iter().position(|&b| b == b'\n');
                assert!(newline.is_none_or(|p| p == tail.len() - 1), "past its line");
                assert!(!tail.contains(&b'{'), "a tail swallowed an object's brace");
            }
        }
        Frame::Truncated(truncated) => {
            assert_eq!(raw.first(), Some(&b'{'));
            assert_eq!(raw.len(), truncated.discarded);
            assert_eq!(
                object_len(raw),
                None,
                "a truncated object that was complete"
            );
            assert!(truncated.depth >= 1);
        }
    }
}

/// The compacted object means what the received one means, and is one line: valid exactly
/// when the original is, equal to it by value, and, when valid, the original with its
/// whitespace outside strings removed.
pub fn assert_compacted(raw: &[u8], compact: &[u8]) {
    assert!(compact.len() <= raw.len());
    let valid = is_json(raw);
    assert_eq!(
        valid,
        is_json(compact),
        "compaction changed validity: {:?} became {:?}",
        lossy(raw),
        lossy(compact)
    );
    if !valid {
        return;
    }
    assert_eq!(compact, strip_whitespace(raw), "compaction kept whitespace");
    assert!(!compact.contains(&b'\n') && !compact.contains(&b'\r'));
    let before = serde_json::from_slice::<Value>(raw);
    let after = serde_json::from_slice::<Value>(compact);
    match (before, after) {
        (Ok(before), Ok(after)) => assert_eq!(before, after, "compaction changed the value"),
        (Err(_), Err(_)) => {} // a number beyond f64, in both
        (before, after) => panic!("one side read as a value: {before:?} / {after:?}"),
    }
}

/// True when no bytes appended to `text` could make it valid JSON, by serde_json: it finds a
/// syntax error, not the end of the input. serde_json takes the four digits of a `\u` escape
/// before it checks them, so an escape cut short by the end of `text` is checked here.
pub fn not_a_json_prefix(text: &[u8]) -> bool {
    match serde_json::from_slice::<IgnoredAny>(text) {
        Ok(_) => false,
        Err(error) if !error.is_eof() => true,
        Err(_) => {
            let Some(u) = text.windows(2).rposition(|pair| pair == b"\\u") else {
                return false;
            };
            let backslashes = text[..=u].iter().rev().take_while(|&&b| b == b'\\').count();
            let digits = &text[u + 2..];
            backslashes % 2 == 1 && digits.len() < 4 && !digits.iter().all(u8::is_ascii_hexdigit)
        }
    }
}

/// Valid JSON text by the grammar (RFC 8259): serde_json's parser with every string's UTF-8
/// checked, and numbers checked but not converted, so that `1e400` is valid as the RFC says.
fn is_json(bytes: &[u8]) -> bool {
    std::str::from_utf8(bytes).is_ok() && serde_json::from_slice::<IgnoredAny>(bytes).is_ok()
}

/// The members of a JSON object, values as written (a repeated key keeps its last value).
fn members(bytes: &[u8]) -> Option<BTreeMap<Name, &RawValue>> {
    serde_json::from_slice(bytes).ok()
}

/// A key, escapes decoded, as bytes: JSON allows a lone surrogate (`"\\uD800"`) in a key,
/// which no `String` can hold.
#[derive(Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Name(Vec<u8>);

impl<'de> serde::Deserialize<'de> for Name {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct NameVisitor;
        impl serde::de::Visitor<'_> for NameVisitor {
            type Value = Name;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a key")
            }
            fn visit_bytes<E>(self, key: &[u8]) -> Result<Name, E> {
                Ok(Name(key.to_vec()))
            }
            fn visit_str<E>(self, key: &str) -> Result<Name, E> {
                Ok(Name(key.as_bytes().to_vec()))
            }
        }
        deserializer.deserialize_bytes(NameVisitor)
    }
}

/// The length of the object at the start of `bytes` (up to the brace that closes it, by the
/// same counting the protocol defines), or `None` if it does not end in `bytes`.
fn object_len(bytes: &[u8]) -> Option<usize> {
    let (mut depth, mut in_string, mut escaped) = (0u32, false, false);
    for (at, &byte) in bytes.iter().enumerate() {
        match (in_string, escaped, byte) {
            (true, true, _) => escaped = false,
            (true, false, b'\\') => escaped = true,
            (true, false, b'"') => in_string = false,
            (true, false, _) => {}
            (false, _, b'"') => in_string = true,
            (false, _, b'{' | b'[') => depth += 1,
            (false, _, b'}' | b']') => {
                depth = depth.saturating_sub(1);
                if depth == 0 {
                    return Some(at + 1);
                }
            }
            (false, _, _) => {}
        }
    }
    None
}

/// A valid JSON text without the whitespace outside its strings.
fn strip_whitespace(text: &[u8]) -> Vec<u8> {
    let (mut in_string, mut escaped) = (false, false);
    let mut out = Vec::with_capacity(text.len());
    for &byte in text {
        if in_string {
            let was_escaped = escaped;
            escaped = !was_escaped && byte == b'\\';
            in_string = was_escaped || byte != b'"';
        } else if matches!(byte, b' ' | b'\t' | b'\n' | b'\r') {
            continue;
        } else {
            in_string = byte == b'"';
        }
        out.push(byte);
    }
    out
}

/// A refusal is one line that the client's parser reads back as the same error.
fn check_error_line(error: &protocol::ItemError) {
    let line = Outbound::from(error.clone()).to_line();
    assert_eq!(line.iter().filter(|&&b| b == b'\n').count(), 1, "{error}");
    assert_eq!(line.last(), Some(&b'\n'));
    match protocol::parse_reply(&line[..line.len() - 1]) {
        Ok(Reply::Error {
            code, message, id, ..
        }) => {
            assert_eq!(code, Some(error.code));
            assert_eq!(message, error.message);
            assert_eq!(id, error.id, "the id is echoed as written");
        }
        other => panic!("{:?} read back as {other:?}", lossy(&line)),
    }
}

fn lossy(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}
