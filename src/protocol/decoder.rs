//! Finds the boundaries of JSON objects in a byte stream, and makes each object one line.
//!
//! Objects may be separated by whitespace (newline-delimited JSON) or by nothing at all (Go's
//! `json.Marshal` output written back to back), and may arrive split at any byte. The decoder
//! tracks only nesting and string state, resumes where it stopped when more bytes arrive, and
//! never looks further than `max_frame` into an unfinished object, so a peer cannot make it
//! buffer without bound. Whether the object is valid JSON is decided later, by [`super::parse`].
//!
//! While it scans, the decoder also removes the whitespace between an object's tokens, in
//! place and in the same pass: a pretty-printed object (`jq .`, `json.dumps(…, indent=2)`,
//! CRLF line ends) becomes one line, so every record a sink writes stays one NDJSON line. Only
//! space, tab, CR and LF outside strings are removed; strings, escapes, number text, key order
//! and raw UTF-8 (U+2028 included) are kept byte for byte. Whitespace between two bytes that
//! would otherwise join into one token (`1 2`, `tru e`, `- 1`) is kept as one space, so an
//! object that is not valid JSON stays invalid and is refused, never "repaired". An object
//! sent compact is not copied at all.

use std::fmt;

use bytes::{Buf, Bytes, BytesMut};

/// The largest `max_frame` a decoder enforces (1 GiB): offsets into the pending frame are kept
/// in 32 bits, so that the decoder every connection holds stays small.
pub const MAX_FRAME_LIMIT: usize = 1 << 30;

/// One unit cut from the stream.
#[derive(Debug, PartialEq, Eq)]
pub enum Frame {
    /// The bytes from a `{` to its matching `}`, without the whitespace between tokens.
    Object(Bytes),
    /// Bytes that cannot begin an object, up to and including the next newline (or up to the
    /// next `{`, or the end of the stream): answered with `invalid_json`, after which decoding
    /// goes on.
    Junk(Bytes),
    /// The stream ended inside an object; what had arrived of it is discarded. Only
    /// [`Decoder::decode_eof`] returns it.
    Truncated(Truncated),
}

/// What the end of a stream cut short.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Truncated {
    /// Bytes of the unfinished object as they arrived, whitespace included.
    pub discarded: usize,
    /// Objects and arrays still open when the stream ended (at least 1).
    pub depth: u32,
    /// True when the stream ended inside a string.
    pub in_string: bool,
}

impl fmt::Display for Truncated {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let inside = if self.in_string {
            "inside a string of an unfinished object"
        } else {
            "inside an unfinished object"
        };
        write!(
            f,
            "the stream ended {inside} (depth {}); {} bytes discarded",
            self.depth, self.discarded
        )
    }
}

/// An object (or a run of junk) longer than the limit: the stream cannot be resynchronised
/// cheaply, so the connection is closed.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
#[error("frame larger than {limit} bytes")]
pub struct FrameTooLarge {
    /// The configured `max_frame`, in bytes.
    pub limit: usize,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    Between,
    Object(ObjectScan),
    Junk,
}

/// Where the scan of an unfinished object stands.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct ObjectScan {
    depth: u32,
    in_string: bool,
    escaped: bool,
    /// Whitespace was dropped since the last byte kept.
    spaced: bool,
}

/// Incremental, bounded splitter of a JSON object stream.
#[derive(Debug)]
pub struct Decoder {
    /// At most [`MAX_FRAME_LIMIT`], so it fits 32 bits: every idle connection holds a decoder.
    max_frame: u32,
    /// Bytes of the pending frame already scanned (at most `max_frame + 1`).
    scanned: u32,
    /// Bytes of the pending object kept so far: its compacted length. The object is compacted
    /// in place, so `buf[..kept]` is the object so far and `buf[kept..scanned]` is spare room.
    kept: u32,
    state: State,
}

/// Where a decoder stands in its buffer: what a connection handed to another process carries
/// with its unread bytes, so that the object it is in the middle of goes on there as if nothing
/// happened (the same bytes kept, the same count against `max_frame`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct DecoderState {
    max_frame: u32,
    scanned: u32,
    kept: u32,
    /// 0 between objects, 1 in an object, 2 in junk.
    mode: u8,
    depth: u32,
    in_string: bool,
    escaped: bool,
    spaced: bool,
}

impl Decoder {
    fn max_frame(&self) -> usize {
        self.max_frame as usize
    }

    /// A decoder that refuses frames longer than `max_frame` bytes (as received, whitespace
    /// included; at most [`MAX_FRAME_LIMIT`]).
    pub fn new(max_frame: usize) -> Decoder {
        Decoder {
            max_frame: max_frame.min(MAX_FRAME_LIMIT) as u32,
            scanned: 0,
            kept: 0,
            state: State::Between,
        }
    }

    /// Where it stands, to [`Decoder::resume`] elsewhere over the same buffer.
    pub fn state(&self) -> DecoderState {
        let (mode, scan) = match self.state {
            State::Between => (0, ObjectScan::default()),
            State::Object(scan) => (1, scan),
            State::Junk => (2, ObjectScan::default()),
        };
        DecoderState {
            max_frame: self.max_frame,
            scanned: self.scanned,
            kept: self.kept,
            mode,
            depth: scan.depth,
            in_string: scan.in_string,
            escaped: scan.escaped,
            spaced: scan.spaced,
        }
    }

    /// The decoder `state` describes, over a buffer of `buffered` bytes; `None` when the two do
    /// not fit together (the state of another buffer, or a peer that does not speak this).
    pub fn resume(state: DecoderState, buffered: usize) -> Option<Decoder> {
        let fits = state.kept <= state.scanned
            && state.scanned as usize <= buffered
            && state.max_frame as usize <= MAX_FRAME_LIMIT
            && state.scanned <= state.max_frame.saturating_add(1);
        let scan = ObjectScan {
            depth: state.depth,
            in_string: state.in_string,
            escaped: state.escaped,
            spaced: state.spaced,
        };
        let mode = match state.mode {
            // Between objects the counts are set afresh at the next one.
            0 => return Some(Decoder::new(state.max_frame as usize)),
            1 => State::Object(scan),
            2 => State::Junk,
            _ => return None,
        };
        fits.then_some(Decoder {
            max_frame: state.max_frame,
            scanned: state.scanned,
            kept: state.kept,
            state: mode,
        })
    }

    /// True while part of a frame has been seen but not its end.
    pub fn is_mid_frame(&self) -> bool {
        self.state != State::Between
    }

    /// Cuts the next complete frame from the front of `buf`, or returns `None` when `buf` holds
    /// no complete frame yet (whitespace between frames is consumed).
    pub fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<Frame>, FrameTooLarge> {
        if self.state == State::Between {
            skip_blanks(buf);
            self.state = match buf.first() {
                None => return Ok(None),
                Some(b'{') => State::Object(ObjectScan::default()),
                Some(_) => State::Junk,
            };
            self.scanned = 0;
            self.kept = 0;
        }
        let end = match self.state {
            State::Object(scan) => self.scan_object(scan, buf),
            State::Junk => self.scan_junk(buf),
            State::Between => unreachable!("state set above"),
        };
        match end {
            Some(len) if len > self.max_frame() => {
                // It ended one byte past the limit: gone, so that `skip_frame` has nothing
                // left of it to skip.
                buf.advance(len);
                self.state = State::Between;
                Err(FrameTooLarge {
                    limit: self.max_frame(),
                })
            }
            Some(len) => {
                let mut bytes = buf.split_to(len);
                let frame = match self.state {
                    State::Junk => Frame::Junk(bytes.freeze()),
                    _ => {
                        bytes.truncate(self.kept as usize);
                        Frame::Object(bytes.freeze())
                    }
                };
                self.state = State::Between;
                Ok(Some(frame))
            }
            None if self.scanned > self.max_frame => Err(FrameTooLarge {
                limit: self.max_frame(),
            }),
            None => Ok(None),
        }
    }

    /// The fast path of [`decode`](Self::decode): when no frame is pending and `buf` begins
    /// (after the whitespace between frames) with an object that `measure` recognises whole, it
    /// is cut and returned with what `measure` learnt, and the byte-by-byte scan is skipped.
    /// `measure` sees at most `max_frame` bytes and returns the object's length; it must only
    /// recognise a compact object (nothing to remove) that ends where the scan would end it.
    /// `None` leaves the decoder as it was: then call `decode`.
    pub(super) fn decode_measured<T>(
        &mut self,
        buf: &mut BytesMut,
        measure: impl FnOnce(&[u8]) -> Option<(usize, T)>,
    ) -> Option<(Bytes, T)> {
        if self.state != State::Between {
            return None;
        }
        skip_blanks(buf);
        if buf.first() != Some(&b'{') {
            return None;
        }
        let limit = buf.len().min(self.max_frame());
        let (len, learnt) = measure(&buf[..limit])?;
        Some((buf.split_to(len).freeze(), learnt))
    }

    /// Like [`decode`](Self::decode), for when the stream has ended: once the complete frames
    /// are taken, what is left is returned too, as a [`Frame::Junk`] (a segment without its
    /// newline) or a [`Frame::Truncated`] (an unfinished object, discarded). `buf` is empty
    /// once this returns `Ok(None)`.
    pub fn decode_eof(&mut self, buf: &mut BytesMut) -> Result<Option<Frame>, FrameTooLarge> {
        if let Some(frame) = self.decode(buf)? {
            return Ok(Some(frame));
        }
        let frame = match self.state {
            State::Between => return Ok(None),
            State::Junk => Frame::Junk(buf.split().freeze()),
            State::Object(scan) => {
                let discarded = buf.len();
                buf.clear();
                Frame::Truncated(Truncated {
                    discarded,
                    depth: scan.depth,
                    in_string: scan.in_string,
                })
            }
        };
        self.state = State::Between;
        Ok(Some(frame))
    }

    /// After [`FrameTooLarge`], drops the rest of that frame as it arrives, keeping nothing of
    /// it, so that a reader that can afford to (a file, unlike a peer) goes on with the frames
    /// after it. True once the frame's end has been passed and [`decode`](Self::decode) may go
    /// on; false when `buf` ran out first (call again with more).
    pub fn skip_frame(&mut self, buf: &mut BytesMut) -> bool {
        loop {
            let scanned = (self.scanned as usize).min(buf.len());
            let end = match self.state {
                State::Between => return true,
                State::Object(scan) => {
                    // Keep the last byte kept: the scan looks back at it (whitespace between two
                    // literal bytes).
                    if scanned > 1 {
                        buf[scanned - 1] = buf[self.kept as usize - 1];
                        buf.advance(scanned - 1);
                        (self.scanned, self.kept) = (1, 1);
                    }
                    if buf.len() <= self.scanned as usize {
                        return false;
                    }
                    self.scan_object(scan, buf)
                }
                State::Junk => {
                    buf.advance(scanned);
                    self.scanned = 0;
                    if buf.is_empty() {
                        return false;
                    }
                    self.scan_junk(buf)
                }
            };
            if let Some(len) = end {
                buf.advance(len);
                self.state = State::Between;
                return true;
            }
        }
    }

    /// Scans on from where the last call stopped, moving each byte that is kept to its place
    /// in the compacted object. Returns the object's length as received once its closing brace
    /// is in `buf`.
    fn scan_object(&mut self, mut scan: ObjectScan, buf: &mut [u8]) -> Option<usize> {
        let limit = buf.len().min(self.max_frame() + 1);
        let mut kept = self.kept as usize;
        let mut at = self.scanned as usize;
        let mut found = None;
        while at < limit {
            if scan.in_string {
                // Most of an item is string bytes: jump to the next quote or backslash, the only
                // bytes that matter inside a string, and keep the run as it is.
                let run_end = if scan.escaped {
                    scan.escaped = false;
                    at + 1
                } else {
                    match memchr::memchr2(b'"', b'\\', &buf[at..limit]) {
                        Some(p) => {
                            scan.escaped = buf[at + p] == b'\\';
                            scan.in_string = scan.escaped;
                            at + p + 1
                        }
                        None => limit,
                    }
                };
                if kept != at {
                    buf.copy_within(at..run_end, kept);
                }
                kept += run_end - at;
                at = run_end;
                continue;
            }
            let byte = buf[at];
            at += 1;
            match byte {
                b' ' | b'\t' | b'\n' | b'\r' => {
                    scan.spaced = true;
                    continue;
                }
                b'"' => scan.in_string = true,
                b'{' | b'[' => scan.depth += 1,
                b'}' | b']' => {
                    scan.depth = scan.depth.saturating_sub(1);
                    if scan.depth == 0 {
                        found = Some(at);
                    }
                }
                _ if scan.spaced && joins(buf[kept - 1], byte) => {
                    // Keep one space: without it, two tokens would read as one.
                    buf[kept] = b' ';
                    kept += 1;
                }
                _ => {}
            }
            scan.spaced = false;
            if kept + 1 != at {
                buf[kept] = byte;
            }
            kept += 1;
            if found.is_some() {
                break;
            }
        }
        self.state = State::Object(scan);
        self.scanned = at as u32;
        self.kept = kept as u32;
        found
    }

    /// Junk runs to the end of its line, or up to the next `{`.
    fn scan_junk(&mut self, buf: &[u8]) -> Option<usize> {
        let limit = buf.len().min(self.max_frame() + 1);
        let scanned = self.scanned as usize;
        let found = memchr::memchr2(b'\n', b'{', &buf[scanned..limit]).map(|p| {
            let at = scanned + p;
            if buf[at] == b'\n' {
                at + 1
            } else {
                at
            }
        });
        self.scanned = found.unwrap_or(limit) as u32;
        found
    }
}

/// Consumes the whitespace between frames.
fn skip_blanks(buf: &mut BytesMut) {
    let blanks = buf.iter().take_while(|b| b.is_ascii_whitespace()).count();
    buf.advance(blanks);
}

/// True when `before` and `after`, written side by side, could be read as one token: both are
/// bytes of a literal (a number, `true`, `false`, `null`, or bytes that are not JSON at all).
fn joins(before: u8, after: u8) -> bool {
    let literal = |b: u8| {
        !matches!(
            b,
            b'{' | b'}' | b'[' | b']' | b':' | b',' | b'"' | b' ' | b'\t' | b'\n' | b'\r'
        )
    };
    literal(before) && literal(after)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode_all(decoder: &mut Decoder, buf: &mut BytesMut) -> Vec<Frame> {
        let mut out = Vec::new();
        while let Some(frame) = decoder.decode(buf).unwrap() {
            out.push(frame);
        }
        out
    }

    fn object(s: &str) -> Frame {
        Frame::Object(Bytes::copy_from_slice(s.as_bytes()))
    }

    /// A decoder resumed from its state over the same bytes (another process, at an upgrade)
    /// goes on exactly as the original would: at every cut of a stream of objects with
    /// whitespace and strings, the frames are the same; a state that does not fit its bytes is
    /// refused.
    #[test]
    fn a_resumed_decoder_goes_on_as_the_original() {
        let stream = b"{\"ip\": \"1.2.3.4\",\n \"note\": \"a \\\" b { }\"}\n  {\"ip\":\"5.6.7.8\", \"k\": [1, 2]}\n{\"ip\":\"9.9.9.9\"}";
        let mut whole = Decoder::new(1024);
        let expected = decode_all(&mut whole, &mut BytesMut::from(&stream[..]));
        assert_eq!(expected.len(), 3);
        for cut in 0..stream.len() {
            let mut first = Decoder::new(1024);
            let mut buf = BytesMut::from(&stream[..cut]);
            let mut frames = decode_all(&mut first, &mut buf);
            let state = first.state();
            let mut resumed = Decoder::resume(state, buf.len()).expect("a state that fits");
            buf.extend_from_slice(&stream[cut..]);
            frames.extend(decode_all(&mut resumed, &mut buf));
            assert_eq!(frames, expected, "cut at {cut}");
        }
        let mut mid = Decoder::new(1024);
        let mut buf = BytesMut::from(&b"{\"ip\": \"1.2"[..]);
        assert!(mid.decode(&mut buf).unwrap().is_none());
        assert!(
            Decoder::resume(mid.state(), buf.len() - 1).is_none(),
            "bytes missing"
        );
    }

    #[test]
    fn an_oversized_frame_is_skipped_and_the_frames_after_it_are_read() {
        let mut d = Decoder::new(16);
        let big = format!(
            r#"{{"ip":"1.1.1.1","pad":"{}","x":[1, 2 ,{{"}}":3}}]}}"#,
            "}".repeat(100)
        );
        let text = format!("{big}{{\"a\":1}}\n{}\n{{\"b\":2}}", "j".repeat(40));
        // Fed a few bytes at a time, as a file is read.
        let mut buf = BytesMut::new();
        let mut frames = Vec::new();
        let mut skipping = false;
        for chunk in text.as_bytes().chunks(7) {
            buf.extend_from_slice(chunk);
            loop {
                if skipping {
                    if !d.skip_frame(&mut buf) {
                        break;
                    }
                    skipping = false;
                }
                match d.decode(&mut buf) {
                    Ok(Some(frame)) => frames.push(frame),
                    Ok(None) => break,
                    Err(FrameTooLarge { limit: 16 }) => {
                        frames.push(Frame::Junk(Bytes::from_static(b"(too large)")));
                        skipping = true;
                    }
                    Err(other) => panic!("{other}"),
                }
            }
        }
        assert_eq!(
            frames,
            vec![
                Frame::Junk(Bytes::from_static(b"(too large)")),
                object(r#"{"a":1}"#),
                Frame::Junk(Bytes::from_static(b"(too large)")),
                object(r#"{"b":2}"#),
            ]
        );
    }

    #[test]
    fn back_to_back_objects_without_delimiter() {
        let mut d = Decoder::new(1024);
        let mut buf = BytesMut::from(&br#"{"ip":"1.2.3.4"}{"ip":"::1","n":{"a":[1,{}]}}"#[..]);
        let frames = decode_all(&mut d, &mut buf);
        assert_eq!(
            frames,
            vec![
                object(r#"{"ip":"1.2.3.4"}"#),
                object(r#"{"ip":"::1","n":{"a":[1,{}]}}"#)
            ]
        );
        assert!(buf.is_empty());
    }

    #[test]
    fn braces_and_quotes_inside_strings_do_not_count() {
        let mut d = Decoder::new(1024);
        let text = r#"{"ip":"1.1.1.1","s":"}{\"\\"}"#;
        let mut buf = BytesMut::from(format!("{text}\n").as_bytes());
        assert_eq!(decode_all(&mut d, &mut buf), vec![object(text)]);
    }

    #[test]
    fn object_split_at_every_byte() {
        let stream = "{\"ip\":\"10.0.0.1\",\"s\":\"a\\\"}\"}\n  {\"IP\":\"::2\"}";
        let mut d = Decoder::new(1024);
        let mut buf = BytesMut::new();
        let mut frames = Vec::new();
        for byte in stream.bytes() {
            buf.extend_from_slice(&[byte]);
            frames.extend(decode_all(&mut d, &mut buf));
        }
        assert_eq!(
            frames,
            vec![
                object("{\"ip\":\"10.0.0.1\",\"s\":\"a\\\"}\"}"),
                object("{\"IP\":\"::2\"}")
            ]
        );
    }

    #[test]
    fn junk_runs_to_end_of_line_and_decoding_resumes() {
        let mut d = Decoder::new(1024);
        let mut buf =
            BytesMut::from(&b"hello world\n{\"ip\":\"1.1.1.1\"} oops{\"ip\":\"2.2.2.2\"}"[..]);
        let frames = decode_all(&mut d, &mut buf);
        assert_eq!(
            frames,
            vec![
                Frame::Junk(Bytes::from_static(b"hello world\n")),
                object("{\"ip\":\"1.1.1.1\"}"),
                Frame::Junk(Bytes::from_static(b"oops")),
                object("{\"ip\":\"2.2.2.2\"}"),
            ]
        );
    }

    #[test]
    fn frame_longer_than_limit_is_refused_even_when_incomplete() {
        let mut d = Decoder::new(16);
        let mut buf = BytesMut::from(&b"{\"ip\":\"1.1.1.1\",\"pad\":\"xxxxxxxxxxxx"[..]);
        assert_eq!(d.decode(&mut buf), Err(FrameTooLarge { limit: 16 }));
        let mut d = Decoder::new(16);
        let mut exact = BytesMut::from(&b"{\"a\":\"12345678\"}"[..]);
        assert_eq!(exact.len(), 16);
        assert!(matches!(d.decode(&mut exact), Ok(Some(Frame::Object(_)))));
    }

    #[test]
    fn incomplete_object_waits_for_more() {
        let mut d = Decoder::new(64);
        let mut buf = BytesMut::from(&b"  {\"ip\": \"1."[..]);
        assert_eq!(d.decode(&mut buf), Ok(None));
        assert!(d.is_mid_frame());
        buf.extend_from_slice(b"2.3.4\"}");
        assert_eq!(d.decode(&mut buf), Ok(Some(object("{\"ip\":\"1.2.3.4\"}"))));
        assert!(!d.is_mid_frame());
    }

    /// Feeds `stream` in pieces of `step` bytes, then ends it; every frame, in order.
    fn frames_in_steps(stream: &[u8], step: usize, max_frame: usize) -> Vec<Frame> {
        let mut d = Decoder::new(max_frame);
        let mut buf = BytesMut::new();
        let mut frames = Vec::new();
        for piece in stream.chunks(step) {
            buf.extend_from_slice(piece);
            frames.extend(decode_all(&mut d, &mut buf));
        }
        while let Some(frame) = d.decode_eof(&mut buf).unwrap() {
            frames.push(frame);
        }
        assert!(buf.is_empty());
        frames
    }

    #[test]
    fn whitespace_between_tokens_is_removed_and_nothing_else() {
        let pretty = "{\r\n  \"ip\" : \"192.0.2.1\",\n\t\"n\": 123456789012345678901234567890 ,\n  \"s\": \"a b\\n\\u00e9 \u{2028}\\\" }\",\n  \"list\": [ 1 , -2.5e+3, true, null, { } , [ ] ]\n}";
        let compact = "{\"ip\":\"192.0.2.1\",\"n\":123456789012345678901234567890,\"s\":\"a b\\n\\u00e9 \u{2028}\\\" }\",\"list\":[1,-2.5e+3,true,null,{},[]]}";
        for step in 1..=pretty.len() {
            assert_eq!(
                frames_in_steps(pretty.as_bytes(), step, 1024),
                vec![object(compact)],
                "step {step}"
            );
        }
        assert_eq!(
            frames_in_steps(compact.as_bytes(), 7, 1024),
            vec![object(compact)]
        );
    }

    #[test]
    fn whitespace_that_separates_two_literals_stays_so_invalid_stays_invalid() {
        for (sent, kept) in [
            ("{\"a\": 1 2}", "{\"a\":1 2}"),
            ("{\"a\":tru\n\te}", "{\"a\":tru e}"),
            ("{\"a\": -  1}", "{\"a\":- 1}"),
            ("{\"a\": \"x\" \"y\"}", "{\"a\":\"x\"\"y\"}"),
            ("{\"a\": [1 ,2 ]}", "{\"a\":[1,2]}"),
        ] {
            assert_eq!(frames_in_steps(sent.as_bytes(), 1, 64), vec![object(kept)]);
        }
    }

    #[test]
    fn max_frame_counts_bytes_as_received() {
        let sent = "{\"a\":         1}";
        assert_eq!(sent.len(), 16);
        let mut buf = BytesMut::from(sent.as_bytes());
        assert_eq!(
            Decoder::new(15).decode(&mut buf),
            Err(FrameTooLarge { limit: 15 })
        );
        assert_eq!(
            frames_in_steps(sent.as_bytes(), 3, 16),
            vec![object("{\"a\":1}")]
        );
    }

    #[test]
    fn end_of_stream_inside_an_object_reports_what_was_discarded() {
        assert_eq!(
            frames_in_steps(b"{\"ip\":\"1.1.1.1\"}\n{\"ip\": \"2.2", 4, 64),
            vec![
                object("{\"ip\":\"1.1.1.1\"}"),
                Frame::Truncated(Truncated {
                    discarded: 11,
                    depth: 1,
                    in_string: true
                })
            ]
        );
        assert_eq!(
            frames_in_steps(b"{\"a\":[{\"b\":1}, ", 64, 64),
            vec![Frame::Truncated(Truncated {
                discarded: 15,
                depth: 2,
                in_string: false
            })]
        );
    }

    #[test]
    fn end_of_stream_after_junk_or_whitespace() {
        assert_eq!(
            frames_in_steps(b"{\"ip\":\"1.1.1.1\"} \n\t ", 5, 64),
            vec![object("{\"ip\":\"1.1.1.1\"}")]
        );
        // A top-level array: its brackets and commas are junk, the objects in it are objects.
        assert_eq!(
            frames_in_steps(b"[{\"ip\":\"1.1.1.1\"}, oops", 5, 64),
            vec![
                Frame::Junk(Bytes::from_static(b"[")),
                object("{\"ip\":\"1.1.1.1\"}"),
                Frame::Junk(Bytes::from_static(b", oops")),
            ]
        );
        let mut d = Decoder::new(64);
        assert_eq!(d.decode_eof(&mut BytesMut::new()), Ok(None));
    }

    #[test]
    fn decoder_stays_small() {
        // Every connection holds one.
        assert!(std::mem::size_of::<Decoder>() <= 24);
    }
}
