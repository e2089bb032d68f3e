//! Finds the boundaries of JSON objects in a byte stream, and makes each object one line.
//!
//! Objects may be separated by whitespace (newline-delimited JSON) or by nothing at all (Go's
//! `json.Marshal` output written back to back), and may arrive split at any byte. The decoder
//! follows JSON's grammar as the bytes arrive (which token may come next, nesting, strings),
//! resumes where it stopped when more bytes arrive, and never looks further than `max_frame`
//! into an unfinished object, so a peer cannot make it buffer without bound. Whether a finished
//! object is valid JSON to the last detail (a number's digits, a `\u` escape, UTF-8) is decided
//! later, by [`super::parse`].
//!
//! # One damaged object costs only itself
//!
//! An object is answered at the first byte that can no longer continue it as JSON (a `{` or
//! `"` where `,`, `:` or `}` was due, a raw newline inside a string, a stray `]` …), not at
//! the end of the stream: a line torn by a writer that crashed mid-line must not swallow the
//! lines after it. The refused part is a [`Frame::Broken`], and reading resumes:
//!
//! - when the object began on the line of that byte: right after it (or at it, when it is a `{`
//!   that may begin the next object), the rest of that line refused with the object, as a run
//!   of junk would be;
//! - when the object began on an earlier line and its first line holds more than the `{` (a
//!   line meant whole, torn by a writer that crashed): at the start of its second line. A line
//!   torn where a value was due (`{"ip":"10.0.0.1","seq":`) takes what the next line holds as
//!   that value and breaks only on a later line: every line after the torn one is read again;
//! - when the object began on an earlier line with its `{` alone (pretty-printed): at the first
//!   later line that starts with `{` in its first column, if one came before that byte (pretty
//!   printers indent what is nested, so that is a new object); else the lines from the one
//!   holding that byte that are still the object's, as a pretty printer writes them (indented,
//!   blank, or only its closing `}`), are refused with it, and reading resumes at the first
//!   that is not: one refusal for one broken object, and no member read as an item.
//!
//! Bytes are given back to be read again at most three times over: an object that begins among
//! bytes given back three times and breaks is not taken back itself, so that no byte is scanned
//! as an object more than four times, whatever a peer sends. (So of four lines torn where a
//! value was due, one after the other, the fourth keeps the line it took.)
//!
//! A valid object never breaks, however it is laid out: pretty-printed (`jq .`, nested objects
//! and arrays over many lines, CRLF) it is cut exactly as before. Past [`STACK_DEPTH`] levels
//! of nesting only strings and brackets are followed: damage that deep is found where its
//! frame ends, or at a raw newline inside a string.
//!
//! # Compaction
//!
//! The decoder also removes the whitespace between an object's tokens, once the object has
//! ended: a pretty-printed object becomes one line, so every record a sink writes stays one
//! NDJSON line. Only space, tab, CR and LF outside strings are removed; strings, escapes, number
//! text, key order and raw UTF-8 (U+2028 included) are kept byte for byte. Whitespace between two
//! bytes that would otherwise join into one token (`1 2` deeper than the grammar is followed) is
//! kept as one space, so an object that is not valid JSON stays invalid and is refused, never
//! "repaired". An object sent compact is not copied at all.

use std::fmt;

use bytes::{Buf, Bytes, BytesMut};

/// The largest `max_frame` a decoder enforces (1 GiB): offsets into the pending frame are kept
/// in 32 bits, so that the decoder every connection holds stays small.
pub const MAX_FRAME_LIMIT: usize = 1 << 30;

/// Levels of nesting whose kind (object or array) the decoder remembers, one bit each, so that
/// it knows which closer, and after a comma whether a key or a value, is due. Deeper, it
/// follows only strings and brackets.
pub const STACK_DEPTH: u32 = 32;

/// One unit cut from the stream.
#[derive(Debug, PartialEq, Eq)]
pub enum Frame {
    /// The bytes from a `{` to its matching `}`, without the whitespace between tokens.
    Object(Bytes),
    /// Bytes that cannot begin an object, up to and including the next newline (or up to the
    /// next `{`, or the end of the stream): answered with `invalid_json`, after which decoding
    /// goes on.
    Junk(Bytes),
    /// An object that stopped being JSON before it ended: answered with `invalid_json`, after
    /// which decoding goes on where the module's docs say.
    Broken(Broken),
    /// The stream ended inside an object; what had arrived of it is discarded. Only
    /// [`Decoder::decode_eof`] returns it.
    Truncated(Truncated),
}

/// An object refused at the byte where it stopped being JSON.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Broken {
    /// The bytes refused, as received (whitespace included): the object up to where reading
    /// resumes, which may be before the offending byte (the start of its line) or after it (the
    /// rest of its line).
    pub refused: Bytes,
    /// Where the offending byte stands, counted from the object's `{` (which is byte 0).
    pub at: usize,
    /// The offending byte.
    pub found: u8,
    /// What JSON allowed there.
    pub expected: Expected,
}

impl fmt::Display for Broken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "not JSON at byte {} of the object: {} where {} was due; {} bytes refused",
            self.at,
            ByteName(self.found),
            self.expected,
            self.refused.len()
        )
    }
}

/// A byte as a reader would name it.
struct ByteName(u8);

impl fmt::Display for ByteName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            b'\n' => f.write_str("a newline"),
            b'\r' => f.write_str("a carriage return"),
            b'\t' => f.write_str("a tab"),
            b'`' => f.write_str("'`'"),
            byte @ 0x21..=0x7e => write!(f, "`{}`", byte as char),
            byte => write!(f, "byte 0x{byte:02x}"),
        }
    }
}

/// What the grammar allowed where an object broke.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Expected {
    /// A key or `}`, after `{`.
    KeyOrEnd,
    /// A key, after a `,` in an object.
    Key,
    /// `:`, after a key.
    Colon,
    /// A value, after `:` or a `,` in an array.
    Value,
    /// A value or `]`, after `[`.
    ValueOrEnd,
    /// `,` or `}`, after a member's value.
    CommaOrObjectEnd,
    /// `,` or `]`, after an element.
    CommaOrArrayEnd,
    /// More of a string or its closing quote: a raw newline cannot be inside one.
    StringEnd,
    /// One of `"\/bfnrtu`, after a backslash in a string.
    Escape,
}

impl fmt::Display for Expected {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Expected::KeyOrEnd => "a key or `}`",
            Expected::Key => "a key",
            Expected::Colon => "`:`",
            Expected::Value => "a value",
            Expected::ValueOrEnd => "a value or `]`",
            Expected::CommaOrObjectEnd => "`,` or `}`",
            Expected::CommaOrArrayEnd => "`,` or `]`",
            Expected::StringEnd => "the string's closing quote",
            Expected::Escape => "an escape (one of `\"\\/bfnrtu`)",
        })
    }
}

/// What the end of a stream cut short.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Truncated {
    /// Bytes of the unfinished object as they arrived, whitespace included.
    pub discarded: usize,
    /// Objects and arrays still open where the discarded bytes end (at least 1).
    pub depth: u32,
    /// True when they end inside a string.
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
    /// The rest of the line of an object that broke on the line where it began.
    Tail(BrokeAt),
    /// The lines of a broken pretty-printed object after the one where it broke that are still
    /// its own (see [`Decoder::scan_remains`]).
    Remains(BrokeAt),
}

/// Where and why an object broke, kept while the rest of its line is refused with it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct BrokeAt {
    at: u32,
    found: u8,
    expected: Expected,
}

impl BrokeAt {
    fn new(at: usize, found: u8, expected: Expected) -> BrokeAt {
        BrokeAt {
            at: at as u32,
            found,
            expected,
        }
    }
}

/// What may come next in an object, outside strings.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
enum Expect {
    /// After `{`.
    KeyOrEnd,
    /// After a `,` in an object.
    Key,
    /// After a key.
    Colon,
    /// After `:` or a `,` in an array; also before the object's own `{`.
    #[default]
    Value,
    /// After `[`.
    ValueOrEnd,
    /// After a value.
    CommaOrEnd,
    /// Inside a number, `true`, `false` or `null`.
    Literal,
    /// Deeper than [`STACK_DEPTH`]: only strings and brackets are followed.
    Deep,
}

/// Flags of [`ObjectScan`], in one byte: every idle connection holds a decoder.
const IN_STRING: u8 = 1;
const ESCAPED: u8 = 2;
/// The string being read is a key.
const KEY: u8 = 4;
/// Whitespace was seen outside strings: the object needs compacting once it ends.
const SPACED: u8 = 8;
/// Two bits: how many times the bytes the object began in had been given back to be read
/// again (see [`Decoder::reread`]).
const LEVEL_SHIFT: u8 = 4;
const LEVEL: u8 = 0b11 << LEVEL_SHIFT;

/// How many times bytes may be given back: a chain of that many lines torn where a value was
/// due, one after the other, is read whole again; each byte is scanned as an object at most
/// one time more than this.
const MAX_TAKE_BACKS: u8 = 3;

/// Where the scan of an unfinished object stands.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct ObjectScan {
    /// Objects and arrays open.
    depth: u32,
    /// The kind of each open level up to [`STACK_DEPTH`], bit `level - 1`: 1 an object.
    kinds: u32,
    expect: Expect,
    flags: u8,
}

/// How a scan of an object's bytes ended.
enum Scan {
    /// The bytes ran out (or the limit came) first.
    More,
    /// The object ends before this offset.
    End(usize),
    /// The byte at this offset cannot continue the object.
    Broke { at: usize, expected: Expected },
}

impl ObjectScan {
    fn has(&self, flag: u8) -> bool {
        self.flags & flag != 0
    }

    fn set(&mut self, flag: u8, on: bool) {
        if on {
            self.flags |= flag;
        } else {
            self.flags &= !flag;
        }
    }

    /// Times the bytes it began in had been given back.
    fn level(&self) -> u8 {
        (self.flags & LEVEL) >> LEVEL_SHIFT
    }

    fn may_take_back(&self) -> bool {
        self.level() < MAX_TAKE_BACKS
    }

    /// True when the innermost open level is an object.
    fn in_object(&self) -> bool {
        (1..=STACK_DEPTH).contains(&self.depth) && self.kinds >> (self.depth - 1) & 1 == 1
    }

    /// What comes after a value ends at the current depth.
    fn after_value(&self) -> Expect {
        if self.depth > STACK_DEPTH {
            Expect::Deep
        } else {
            Expect::CommaOrEnd
        }
    }

    fn open(&mut self, object: bool) {
        if self.depth < STACK_DEPTH {
            self.kinds = self.kinds & !(1 << self.depth) | u32::from(object) << self.depth;
        }
        self.depth += 1;
        self.expect = match (self.depth > STACK_DEPTH, object) {
            (true, _) => Expect::Deep,
            (false, true) => Expect::KeyOrEnd,
            (false, false) => Expect::ValueOrEnd,
        };
    }

    /// Closes the innermost level; true once the object itself has ended.
    fn close(&mut self) -> bool {
        self.depth -= 1;
        self.expect = self.after_value();
        self.depth == 0
    }

    fn begin_string(&mut self, key: bool) {
        self.set(IN_STRING, true);
        self.set(KEY, key);
    }

    /// The string ends.
    fn end_string(&mut self) {
        self.set(IN_STRING, false);
        self.expect = if self.depth > STACK_DEPTH {
            Expect::Deep
        } else if self.has(KEY) {
            Expect::Colon
        } else {
            Expect::CommaOrEnd
        };
    }

    /// Takes one byte outside strings that is not whitespace: true once the object has ended,
    /// or what was due when the byte cannot continue it.
    fn step(&mut self, byte: u8) -> Result<bool, Expected> {
        use Expect::*;
        match (self.expect, byte) {
            (Deep, _) => return Ok(self.deep(byte)),
            (KeyOrEnd | Key, b'"') => self.begin_string(true),
            (Colon, b':') => self.expect = Value,
            (Value | ValueOrEnd, b'"') => self.begin_string(false),
            (Value | ValueOrEnd, b'{') => self.open(true),
            (Value | ValueOrEnd, b'[') => self.open(false),
            (Value | ValueOrEnd | Literal, b) if is_literal(b) => self.expect = Literal,
            (CommaOrEnd | Literal, b',') if self.in_object() => self.expect = Key,
            (CommaOrEnd | Literal, b',') => self.expect = Value,
            (KeyOrEnd, b'}') | (ValueOrEnd, b']') => return Ok(self.close()),
            (CommaOrEnd | Literal, b'}') if self.in_object() => return Ok(self.close()),
            (CommaOrEnd | Literal, b']') if !self.in_object() => return Ok(self.close()),
            (expect, _) => return Err(self.expected(expect)),
        }
        Ok(false)
    }

    /// Deeper than the grammar is followed: strings and brackets only.
    fn deep(&mut self, byte: u8) -> bool {
        match byte {
            b'"' => self.begin_string(false),
            b'{' | b'[' => self.depth += 1,
            b'}' | b']' => return self.close(),
            _ => {}
        }
        false
    }

    fn expected(&self, expect: Expect) -> Expected {
        match expect {
            Expect::KeyOrEnd => Expected::KeyOrEnd,
            Expect::Key => Expected::Key,
            Expect::Colon => Expected::Colon,
            Expect::Value => Expected::Value,
            Expect::ValueOrEnd => Expected::ValueOrEnd,
            Expect::CommaOrEnd | Expect::Literal | Expect::Deep if self.in_object() => {
                Expected::CommaOrObjectEnd
            }
            Expect::CommaOrEnd | Expect::Literal | Expect::Deep => Expected::CommaOrArrayEnd,
        }
    }
}

/// A byte of a number, `true`, `false` or `null`, or of a misspelling of one (which the parser
/// refuses once the object ends); anything else outside strings is structure or breaks.
fn is_literal(byte: u8) -> bool {
    byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'+' | b'.')
}

/// Incremental, bounded splitter of a JSON object stream.
#[derive(Debug)]
pub struct Decoder {
    /// At most [`MAX_FRAME_LIMIT`], so it fits 32 bits: every idle connection holds a decoder.
    max_frame: u32,
    /// Bytes of the pending frame already scanned (at most `max_frame + 1`). The pending frame
    /// is left as it arrived until it ends: a broken object may be read again from one of its
    /// lines.
    scanned: u32,
    /// Bytes at the front of the buffer that a broken object had scanned and gave back to be
    /// read again, `level` times over: an object that begins among them takes lines back only
    /// while `level` is below [`MAX_TAKE_BACKS`], so that no byte is scanned as an object more
    /// than `MAX_TAKE_BACKS + 1` times, whatever a peer sends.
    reread: u32,
    level: u8,
    state: State,
}

/// Where a decoder stands in its buffer: what a connection handed to another process carries
/// with its unread bytes, so that the frame it is in the middle of goes on there as if nothing
/// happened.
///
/// A decoder leaves a pending frame as it arrived, so it says only what kind of frame is
/// pending and the new process scans it again from its first byte (at most `max_frame` bytes,
/// once). The other fields are those of earlier versions, which compacted an object in place
/// as they scanned: a state from one of them is resumed by closing the gap it left
/// (`kept..scanned`); one sent to one of them (`scanned` 0) is scanned again there too.
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
            reread: 0,
            level: 0,
            state: State::Between,
        }
    }

    /// Where it stands, to [`Decoder::resume`] elsewhere over the same buffer.
    pub fn state(&self) -> DecoderState {
        let mode = match self.state {
            State::Between => 0,
            // A broken object's tail is found again by scanning the object again.
            State::Object(_) | State::Tail(_) | State::Remains(_) => 1,
            State::Junk => 2,
        };
        DecoderState {
            max_frame: self.max_frame,
            scanned: 0,
            kept: 0,
            mode,
            depth: 0,
            in_string: false,
            escaped: false,
            spaced: false,
        }
    }

    /// The decoder `state` describes, over `buf`, the bytes that came with it; `None` when the
    /// two do not fit together (the state of another buffer, or a peer that does not speak
    /// this). A state from an earlier version that compacted in place has its gap closed in
    /// `buf`.
    pub fn resume(state: DecoderState, buf: &mut BytesMut) -> Option<Decoder> {
        let fits = state.kept <= state.scanned
            && state.scanned as usize <= buf.len()
            && state.max_frame as usize <= MAX_FRAME_LIMIT
            && state.scanned <= state.max_frame.saturating_add(1);
        let pending = match (state.mode, buf.first()) {
            (0, _) => State::Between,
            (1, Some(b'{')) => State::Object(ObjectScan::default()),
            (2, Some(&byte)) if byte != b'{' => State::Junk,
            _ => return None,
        };
        if !fits {
            return None;
        }
        if state.mode == 1 && state.kept < state.scanned {
            // Bytes kept, then spare room, then bytes not yet scanned: the object so far is
            // the kept bytes and the unscanned ones.
            let mut rest = buf.split_off(state.kept as usize);
            rest.advance((state.scanned - state.kept) as usize);
            buf.unsplit(rest);
        }
        Some(Decoder {
            max_frame: state.max_frame,
            scanned: 0,
            reread: 0,
            level: 0,
            state: pending,
        })
    }

    /// True while part of a frame has been seen but not its end.
    pub fn is_mid_frame(&self) -> bool {
        self.state != State::Between
    }

    /// True when the decoder holds nothing a new one would not: between objects (where
    /// `scanned` is reset at the next object), with no byte given back to be read again. A
    /// connection parked in this state is given a new decoder when it wakes (`crate::conn`'s
    /// `park`).
    pub fn is_at_rest(&self) -> bool {
        self.state == State::Between && self.reread == 0
    }

    /// Cuts the next complete frame from the front of `buf`, or returns `None` when `buf` holds
    /// no complete frame yet (whitespace between frames is consumed).
    pub fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<Frame>, FrameTooLarge> {
        loop {
            if self.state == State::Between {
                self.skip_blanks(buf);
                self.state = match buf.first() {
                    None => return Ok(None),
                    Some(b'{') => State::Object(ObjectScan {
                        flags: if self.reread > 0 {
                            self.level << LEVEL_SHIFT
                        } else {
                            0
                        },
                        ..ObjectScan::default()
                    }),
                    Some(_) => State::Junk,
                };
                self.scanned = 0;
            }
            let end = match self.state {
                State::Object(scan) => match self.scan_object(scan, buf) {
                    Scan::End(len) => Some(len),
                    Scan::More => None,
                    // It ran past the limit before it broke: too large, whatever came next.
                    Scan::Broke { at, .. } if at >= self.max_frame() => {
                        return Err(FrameTooLarge {
                            limit: self.max_frame(),
                        })
                    }
                    Scan::Broke { at, expected } => match self.broke(buf, at, expected) {
                        Some(frame) => return Ok(Some(frame)),
                        // The rest of its line goes with it.
                        None => continue,
                    },
                },
                State::Junk | State::Tail(_) => self.scan_junk(buf),
                State::Remains(_) => self.scan_remains(buf),
                State::Between => unreachable!("state set above"),
            };
            return match end {
                Some(len) if len > self.max_frame() => {
                    // It ended one byte past the limit: gone, so that `skip_frame` has nothing
                    // left of it to skip.
                    self.pass(buf, len);
                    self.state = State::Between;
                    Err(FrameTooLarge {
                        limit: self.max_frame(),
                    })
                }
                Some(len) => Ok(Some(self.cut(buf, len))),
                None if self.scanned > self.max_frame => Err(FrameTooLarge {
                    limit: self.max_frame(),
                }),
                None => Ok(None),
            };
        }
    }

    /// The first `scanned` bytes of the buffer, which the object `scan` has scanned, are to be
    /// read again (from where it is taken back).
    fn give_back(&mut self, scan: ObjectScan, scanned: usize) {
        let level = if self.reread > 0 { self.level } else { 0 };
        self.level = level.max(scan.level() + 1);
        self.reread = self.reread.max(scanned as u32);
    }

    /// Takes `len` bytes from the front of `buf`.
    fn take(&mut self, buf: &mut BytesMut, len: usize) -> BytesMut {
        self.reread = self.reread.saturating_sub(len as u32);
        buf.split_to(len)
    }

    /// Drops `len` bytes from the front of `buf`.
    fn pass(&mut self, buf: &mut BytesMut, len: usize) {
        self.reread = self.reread.saturating_sub(len as u32);
        buf.advance(len);
    }

    /// Consumes the whitespace between frames.
    fn skip_blanks(&mut self, buf: &mut BytesMut) {
        let blanks = buf.iter().take_while(|b| b.is_ascii_whitespace()).count();
        self.pass(buf, blanks);
    }

    /// Cuts the frame that ends before `len`, compacting an object that holds whitespace.
    fn cut(&mut self, buf: &mut BytesMut, len: usize) -> Frame {
        let mut bytes = self.take(buf, len);
        let frame = match self.state {
            State::Junk => Frame::Junk(bytes.freeze()),
            State::Tail(broke) | State::Remains(broke) => Frame::Broken(Broken {
                refused: bytes.freeze(),
                at: broke.at as usize,
                found: broke.found,
                expected: broke.expected,
            }),
            State::Object(scan) => {
                if scan.has(SPACED) {
                    let kept = compact(&mut bytes);
                    bytes.truncate(kept);
                }
                Frame::Object(bytes.freeze())
            }
            State::Between => unreachable!("a frame is pending"),
        };
        self.state = State::Between;
        frame
    }

    /// The object at the front of `buf` broke at `at`: the refused part, or `None` when more of
    /// it is still to be found: the rest of the line where it began and broke
    /// ([`State::Tail`]), or the lines of a pretty-printed one that are still its own
    /// ([`State::Remains`]).
    fn broke(&mut self, buf: &mut BytesMut, at: usize, expected: Expected) -> Option<Frame> {
        let found = buf[at];
        let State::Object(scan) = self.state else {
            unreachable!("an object broke");
        };
        let resume = if memchr::memchr(b'\n', &buf[..at]).is_none() {
            if found != b'\n' {
                // Began on this line: the rest of it goes with it, up to a `{` that may begin
                // the next object.
                let from = if found == b'{' { at } else { at + 1 };
                self.go_on(State::Tail, BrokeAt::new(at, found, expected), from);
                return None;
            }
            at + 1
        } else {
            let line_start = memchr::memrchr(b'\n', &buf[..=at]).map_or(0, |p| p + 1);
            let taken_back = match scan.may_take_back() {
                false => None,
                true => take_back(&buf[..=at]).filter(|&p| p < line_start),
            };
            if taken_back.is_some() {
                self.give_back(scan, at + 1);
            }
            match taken_back {
                Some(resume) => resume,
                // Only closing brackets and commas before it on its line (`{"ip":` then a
                // line `}`): that line can begin nothing, and goes with the object.
                None if meant_whole(&buf[..at])
                    && found != b'\n'
                    && closes_only(&buf[line_start..=at]) =>
                {
                    self.go_on(State::Tail, BrokeAt::new(at, found, expected), at + 1);
                    return None;
                }
                None if meant_whole(&buf[..at]) => line_start,
                None => {
                    self.go_on(
                        State::Remains,
                        BrokeAt::new(at, found, expected),
                        line_start,
                    );
                    return None;
                }
            }
        };
        self.state = State::Between;
        Some(Frame::Broken(Broken {
            refused: self.take(buf, resume).freeze(),
            at,
            found,
            expected,
        }))
    }

    /// A broken object goes on as `state` (the rest of its line, or its own lines), scanned
    /// from `from`.
    fn go_on(&mut self, state: fn(BrokeAt) -> State, broke: BrokeAt, from: usize) {
        self.state = state(broke);
        self.scanned = from as u32;
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
        self.skip_blanks(buf);
        if buf.first() != Some(&b'{') {
            return None;
        }
        let limit = buf.len().min(self.max_frame());
        let (len, learnt) = measure(&buf[..limit])?;
        Some((self.take(buf, len).freeze(), learnt))
    }

    /// Like [`decode`](Self::decode), for when the stream has ended: once the complete frames
    /// are taken, what is left is returned too, as a [`Frame::Junk`] (a segment without its
    /// newline), a [`Frame::Broken`] (an object that broke on its line, and the rest of it) or
    /// a [`Frame::Truncated`] (an unfinished object, discarded). `buf` is empty once this
    /// returns `Ok(None)`.
    ///
    /// An unfinished object is discarded only up to its first later line that starts with `{`
    /// (an object a torn line took as a value), and the lines from there are read again.
    pub fn decode_eof(&mut self, buf: &mut BytesMut) -> Result<Option<Frame>, FrameTooLarge> {
        if let Some(frame) = self.decode(buf)? {
            return Ok(Some(frame));
        }
        let frame = match self.state {
            State::Between => return Ok(None),
            State::Junk | State::Tail(_) => {
                let len = buf.len();
                self.cut(buf, len)
            }
            State::Remains(_) => {
                // The last line may be a `}` the scan was waiting to see whole.
                let at = self.scanned as usize;
                let not_own = at < buf.len()
                    && buf[at - 1] == b'\n'
                    && buf[at] == b'}'
                    && !buf[at + 1..].iter().all(u8::is_ascii_whitespace);
                let len = if not_own { at } else { buf.len() };
                self.cut(buf, len)
            }
            State::Object(scan) => {
                // Nothing broke: the lines of an object cut at its end are not read again as
                // junk, only those that may be objects it took.
                let taken_back = match scan.may_take_back() {
                    false => None,
                    true => first_column_object(buf),
                };
                if taken_back.is_some() {
                    self.give_back(scan, buf.len());
                }
                let discarded = self.take(buf, taken_back.unwrap_or(buf.len()));
                // How deep the discarded bytes end, when they are not all there was.
                let scan = match taken_back {
                    Some(_) => {
                        let mut probe = Decoder::new(self.max_frame());
                        probe.scan_object(ObjectScan::default(), &discarded);
                        match probe.state {
                            State::Object(scan) => scan,
                            _ => scan,
                        }
                    }
                    None => scan,
                };
                self.state = State::Between;
                Frame::Truncated(Truncated {
                    discarded: discarded.len(),
                    depth: scan.depth,
                    in_string: scan.has(IN_STRING),
                })
            }
        };
        Ok(Some(frame))
    }

    /// After [`FrameTooLarge`], drops the rest of that frame as it arrives, keeping nothing of
    /// it, so that a reader that can afford to (a file, unlike a peer) goes on with the frames
    /// after it. True once the frame's end (or the line where it broke) has been passed and
    /// [`decode`](Self::decode) may go on; false when `buf` ran out first (call again with
    /// more). Nothing is taken back: the bytes before are gone.
    pub fn skip_frame(&mut self, buf: &mut BytesMut) -> bool {
        loop {
            if self.state == State::Between {
                return true;
            }
            // The scan looks back at nothing: what it has passed can go.
            let scanned = (self.scanned as usize).min(buf.len());
            self.pass(buf, scanned);
            self.scanned = 0;
            if buf.is_empty() {
                return false;
            }
            let end = match self.state {
                State::Object(scan) => match self.scan_object(scan, buf) {
                    Scan::End(len) => Some(len),
                    Scan::More => None,
                    Scan::Broke { at, expected } => match memchr::memrchr(b'\n', &buf[..=at]) {
                        Some(newline) => Some(newline + 1),
                        None => {
                            let found = buf[at];
                            let from = if found == b'{' { at } else { at + 1 };
                            self.go_on(State::Tail, BrokeAt::new(at, found, expected), from);
                            continue;
                        }
                    },
                },
                State::Junk | State::Tail(_) => self.scan_junk(buf),
                // What is left of a broken object's lines is read as what it is.
                State::Remains(_) => Some(0),
                State::Between => unreachable!("returned above"),
            };
            if let Some(len) = end {
                self.pass(buf, len);
                self.state = State::Between;
                return true;
            }
        }
    }

    /// Scans on from where the last call stopped, following the grammar. Returns the object's
    /// length as received once its closing brace is in `buf`, or where it broke.
    fn scan_object(&mut self, mut scan: ObjectScan, buf: &[u8]) -> Scan {
        let limit = buf.len().min(self.max_frame() + 1);
        let mut at = self.scanned as usize;
        let result = loop {
            if at >= limit {
                break Scan::More;
            }
            if scan.has(IN_STRING) {
                if scan.has(ESCAPED) {
                    scan.set(ESCAPED, false);
                    if !matches!(
                        buf[at],
                        b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't' | b'u'
                    ) {
                        break Scan::Broke {
                            at,
                            expected: Expected::Escape,
                        };
                    }
                    at += 1;
                    continue;
                }
                // Most of an item is string bytes: jump to the next byte that matters inside a
                // string. A raw newline cannot be in one: the line was torn.
                let Some(p) = memchr::memchr3(b'"', b'\\', b'\n', &buf[at..limit]) else {
                    at = limit;
                    continue;
                };
                at += p;
                match buf[at] {
                    b'"' => scan.end_string(),
                    b'\\' => scan.set(ESCAPED, true),
                    _ => {
                        break Scan::Broke {
                            at,
                            expected: Expected::StringEnd,
                        }
                    }
                }
                at += 1;
                continue;
            }
            let byte = buf[at];
            if matches!(byte, b' ' | b'\t' | b'\n' | b'\r') {
                scan.set(SPACED, true);
                if scan.expect == Expect::Literal {
                    scan.expect = Expect::CommaOrEnd;
                }
                at += 1;
                continue;
            }
            match scan.step(byte) {
                Ok(true) => break Scan::End(at + 1),
                Ok(false) => at += 1,
                Err(expected) => break Scan::Broke { at, expected },
            }
        };
        self.state = State::Object(scan);
        self.scanned = at as u32;
        result
    }

    /// The lines after the one where a pretty-printed object broke that are still its own, as
    /// a pretty printer writes them: indented (its members) or blank, and a line holding only
    /// its closing `}`. Their end, once the first line that is not one of them begins (or
    /// once that `}` line ends); `scanned` is always at the start of a line or inside one of
    /// them.
    fn scan_remains(&mut self, buf: &[u8]) -> Option<usize> {
        let limit = buf.len().min(self.max_frame() + 1);
        let mut at = self.scanned as usize;
        let end = loop {
            if at >= limit {
                break None;
            }
            if buf[at - 1] == b'\n' {
                match buf[at] {
                    b' ' | b'\t' | b'\r' | b'\n' => {}
                    b'}' => {
                        // Wait for the whole line: only `}` and blanks make it the object's.
                        let Some(p) = memchr::memchr(b'\n', &buf[at..limit]) else {
                            // Not past the limit, though: then it is too large.
                            if limit > self.max_frame() {
                                at = limit;
                            }
                            break None;
                        };
                        let closing = buf[at + 1..at + p].iter().all(u8::is_ascii_whitespace);
                        break Some(if closing { at + p + 1 } else { at });
                    }
                    _ => break Some(at),
                }
            }
            at = memchr::memchr(b'\n', &buf[at..limit]).map_or(limit, |p| at + p + 1);
        };
        self.scanned = at as u32;
        end
    }

    /// Junk runs to the end of its line, or up to the next `{`.
    fn scan_junk(&mut self, buf: &[u8]) -> Option<usize> {
        let limit = buf.len().min(self.max_frame() + 1);
        let scanned = (self.scanned as usize).min(limit);
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

/// Where reading resumes in `object`, from its `{` to the byte where it broke, when it reached
/// past its first line (see the module's docs): its second line when its first holds more
/// than the `{` (a line meant whole, torn); for a pretty-printed object (`{` alone on its first
/// line), the first later line that starts with `{`. `None` when there is no such line.
fn take_back(object: &[u8]) -> Option<usize> {
    if meant_whole(object) {
        memchr::memchr(b'\n', object).map(|p| p + 1)
    } else {
        first_column_object(object)
    }
}

/// True when the first line of `object` (which begins with its `{`) holds more than the `{`:
/// a line meant whole, not the first line of a pretty-printed object.
fn meant_whole(object: &[u8]) -> bool {
    let first_line = memchr::memchr(b'\n', object).map_or(object, |p| &object[..p]);
    first_line[1..].iter().any(|b| !b.is_ascii_whitespace())
}

/// True for bytes that can begin nothing: closing brackets, commas and blanks.
fn closes_only(bytes: &[u8]) -> bool {
    bytes
        .iter()
        .all(|b| matches!(b, b'}' | b']' | b',' | b' ' | b'\t' | b'\r'))
}

/// The first line after the first of `bytes` that starts with `{`.
fn first_column_object(bytes: &[u8]) -> Option<usize> {
    memchr::memmem::find(bytes, b"\n{").map(|p| p + 1)
}

/// Removes the whitespace outside strings from an object that has ended, in place; returns its
/// new length.
fn compact(bytes: &mut [u8]) -> usize {
    let (mut kept, mut at, mut spaced) = (0, 0, false);
    while at < bytes.len() {
        let byte = bytes[at];
        if matches!(byte, b' ' | b'\t' | b'\n' | b'\r') {
            spaced = true;
            at += 1;
            continue;
        }
        if spaced && kept > 0 && joins(bytes[kept - 1], byte) {
            // Keep one space: without it, two tokens would read as one.
            bytes[kept] = b' ';
            kept += 1;
        }
        spaced = false;
        let end = if byte == b'"' {
            string_end(bytes, at + 1)
        } else {
            at + 1
        };
        bytes.copy_within(at..end, kept);
        kept += end - at;
        at = end;
    }
    kept
}

/// The offset just past the quote that closes the string whose contents begin at `from` (or
/// the end of `bytes`).
fn string_end(bytes: &[u8], mut from: usize) -> usize {
    while let Some(p) = memchr::memchr2(b'"', b'\\', &bytes[from..]) {
        from += p + 1;
        if bytes[from - 1] == b'"' {
            return from;
        }
        // The escaped byte.
        from = (from + 1).min(bytes.len());
    }
    bytes.len()
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

    fn junk(s: &str) -> Frame {
        Frame::Junk(Bytes::copy_from_slice(s.as_bytes()))
    }

    fn broken(refused: &str, at: usize, found: u8, expected: Expected) -> Frame {
        Frame::Broken(Broken {
            refused: Bytes::copy_from_slice(refused.as_bytes()),
            at,
            found,
            expected,
        })
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

    /// The same frames at every chunking, byte by byte included.
    fn frames_at_every_step(stream: &str) -> Vec<Frame> {
        let whole = frames_in_steps(stream.as_bytes(), stream.len().max(1), 1 << 16);
        for step in 1..stream.len() {
            assert_eq!(
                frames_in_steps(stream.as_bytes(), step, 1 << 16),
                whole,
                "step {step} of {stream:?}"
            );
        }
        whole
    }

    const VALID: &str = "{\"ip\":\"10.0.0.2\"}\n{\"ip\":\"10.0.0.3\",\"n\":[1,{\"a\":null}]}\n";

    fn valid_after() -> [Frame; 2] {
        [
            object("{\"ip\":\"10.0.0.2\"}"),
            object("{\"ip\":\"10.0.0.3\",\"n\":[1,{\"a\":null}]}"),
        ]
    }

    /// Each kind of damage the issue names, followed by valid objects on the next lines: the
    /// damage is refused at the byte where it broke and every object after it is read.
    #[test]
    fn one_damaged_object_costs_only_itself() {
        use Expected::*;
        let cases: Vec<(&str, Vec<Frame>)> = vec![
            // Unterminated object: the next line's `{` cannot follow a value.
            (
                "{\"ip\":\"10.0.0.1\"\n",
                vec![broken("{\"ip\":\"10.0.0.1\"\n", 17, b'{', CommaOrObjectEnd)],
            ),
            // Cut after a comma: a key was due.
            (
                "{\"ip\":\"10.0.0.1\",\n",
                vec![broken("{\"ip\":\"10.0.0.1\",\n", 18, b'{', Key)],
            ),
            // Unterminated string across the newline: refused through its line.
            (
                "{\"ip\":\"10.0.0.1\",\"note\":\"a b\n",
                vec![broken(
                    "{\"ip\":\"10.0.0.1\",\"note\":\"a b\n",
                    28,
                    b'\n',
                    StringEnd,
                )],
            ),
            // Unterminated array.
            (
                "{\"ip\":\"10.0.0.1\",\"a\":[1,2\n",
                vec![broken(
                    "{\"ip\":\"10.0.0.1\",\"a\":[1,2\n",
                    26,
                    b'{',
                    CommaOrArrayEnd,
                )],
            ),
            // A torn line whose value was due takes the next object as that value, breaks on
            // the line after it, and the taken object is read again from its own line.
            (
                "{\"ip\":\"10.3.0.5\",\"seq\":\n",
                vec![broken(
                    "{\"ip\":\"10.3.0.5\",\"seq\":\n",
                    42,
                    b'{',
                    CommaOrObjectEnd,
                )],
            ),
            (
                "{\"a\":[\n",
                vec![broken("{\"a\":[\n", 25, b'{', CommaOrArrayEnd)],
            ),
            // A doubled `}`: the object is whole, the second brace is junk.
            (
                "{\"ip\":\"10.0.0.1\"}}\n",
                vec![object("{\"ip\":\"10.0.0.1\"}"), junk("}\n")],
            ),
            // Garbage between objects.
            ("garbage ]] \"x\n", vec![junk("garbage ]] \"x\n")]),
            // Broken on its own line: the rest of the line goes with it, in one refusal.
            (
                "{\"a\": tru e} trailing\n",
                vec![broken(
                    "{\"a\": tru e} trailing\n",
                    10,
                    b'e',
                    CommaOrObjectEnd,
                )],
            ),
            (
                "{\"a\" \"b\"}\n",
                vec![broken("{\"a\" \"b\"}\n", 5, b'"', Colon)],
            ),
            (
                "{\"a\":1]\n",
                vec![broken("{\"a\":1]\n", 6, b']', CommaOrObjectEnd)],
            ),
            (
                "{\"a\":\"\\x\"}\n",
                vec![broken("{\"a\":\"\\x\"}\n", 7, b'x', Escape)],
            ),
            (
                "{\"a\":\u{1}}\n",
                vec![broken("{\"a\":\u{1}}\n", 5, 1, Value)],
            ),
            ("{,}\n", vec![broken("{,}\n", 1, b',', KeyOrEnd)]),
            // ...and a `{` on that line may begin the next object.
            (
                "{\"ip\":\"10.0.0.1\" {\"ip\":\"10.0.0.9\"}\n",
                vec![
                    broken("{\"ip\":\"10.0.0.1\" ", 17, b'{', CommaOrObjectEnd),
                    object("{\"ip\":\"10.0.0.9\"}"),
                ],
            ),
            // A line meant whole, whose end came on the next line too early: that line, which
            // can begin nothing, goes with it.
            (
                "{\"ip\":\n} ]\n",
                vec![broken("{\"ip\":\n} ]\n", 7, b'}', Value)],
            ),
            // A pretty-printed object broken on a later line: refused with its members' lines
            // and its closing brace, in one refusal.
            (
                "{\n  \"ip\": \"10.0.0.1\"\n  \"seq\": 7,\n  \"t\": [\n    {\"ip\": \"10.0.0.8\"}\n  ]\n}\n",
                vec![broken(
                    "{\n  \"ip\": \"10.0.0.1\"\n  \"seq\": 7,\n  \"t\": [\n    {\"ip\": \"10.0.0.8\"}\n  ]\n}\n",
                    23,
                    b'"',
                    CommaOrObjectEnd,
                )],
            ),
            // ...up to the first line that is not its own: here a bare address, then `}` and
            // more (not a closing line).
            (
                "{\n  \"a\": 1\n  \"b\": 2\n10.0.0.6\n}, x\n",
                vec![
                    broken("{\n  \"a\": 1\n  \"b\": 2\n", 13, b'"', CommaOrObjectEnd),
                    junk("10.0.0.6\n"),
                    junk("}, x\n"),
                ],
            ),
            // A pretty-printed object that never ended takes the next as an element, and breaks
            // after it: that object is read again from its `{` in the first column.
            (
                "{\n  \"a\": [1,\n{\n  \"ip\": \"10.0.0.7\"\n}\n",
                vec![
                    broken("{\n  \"a\": [1,\n", 36, b'{', CommaOrArrayEnd),
                    object("{\"ip\":\"10.0.0.7\"}"),
                ],
            ),
        ];
        for (damage, mut expected) in cases {
            let stream = format!("{damage}{VALID}");
            // The torn lines at a value's place: the next object is read again.
            expected.extend(valid_after());
            assert_eq!(frames_at_every_step(&stream), expected, "{damage:?}");
        }
    }

    #[test]
    fn a_torn_line_followed_by_crlf_lines_and_pretty_objects() {
        let stream = "{\"ip\":\"10.0.0.1\",\"tags\":[\"a\",\r\n{\r\n  \"ip\": \"10.0.0.2\"\r\n}\r\n{\"ip\":\"10.0.0.3\"}\r\n";
        assert_eq!(
            frames_at_every_step(stream),
            vec![
                broken(
                    "{\"ip\":\"10.0.0.1\",\"tags\":[\"a\",\r\n",
                    57,
                    b'{',
                    Expected::CommaOrArrayEnd
                ),
                object("{\"ip\":\"10.0.0.2\"}"),
                object("{\"ip\":\"10.0.0.3\"}"),
            ]
        );
    }

    /// Lines torn where a value was due, one after the other: each takes the next as its
    /// value, and each is taken back in turn, three deep; a fourth keeps the line it took.
    #[test]
    fn torn_lines_in_a_row_give_back_the_lines_after_them_three_deep() {
        let valid = "{\"ip\":\"10.0.0.1\"}\n{\"ip\":\"10.0.0.2\"}\n";
        use Expected::CommaOrObjectEnd as Due;
        assert_eq!(
            frames_at_every_step(&format!("{{\"a\":\n{{\"b\":\n{{\"c\":\n{valid}")),
            vec![
                broken("{\"a\":\n", 36, b'{', Due),
                broken("{\"b\":\n", 30, b'{', Due),
                broken("{\"c\":\n", 24, b'{', Due),
                object("{\"ip\":\"10.0.0.1\"}"),
                object("{\"ip\":\"10.0.0.2\"}"),
            ]
        );
        assert_eq!(
            frames_at_every_step(&format!("{{\"a\":\n{{\"b\":\n{{\"c\":\n{{\"d\":\n{valid}")),
            vec![
                broken("{\"a\":\n", 42, b'{', Due),
                broken("{\"b\":\n", 36, b'{', Due),
                broken("{\"c\":\n", 30, b'{', Due),
                broken("{\"d\":\n{\"ip\":\"10.0.0.1\"}\n", 24, b'{', Due),
                object("{\"ip\":\"10.0.0.2\"}"),
            ]
        );
    }

    /// A line torn where a value was due takes whatever the next line holds (here a bare
    /// address, which `send` accepts): every line after the torn one is read again.
    #[test]
    fn a_torn_line_gives_back_every_line_after_it() {
        assert_eq!(
            frames_at_every_step(
                "{\"ip\":\"10.0.0.1\",\"seq\":\n10.0.0.6\n{\"ip\":\"10.0.0.2\"}\n"
            ),
            vec![
                broken(
                    "{\"ip\":\"10.0.0.1\",\"seq\":\n",
                    33,
                    b'{',
                    Expected::CommaOrObjectEnd
                ),
                junk("10.0.0.6\n"),
                object("{\"ip\":\"10.0.0.2\"}"),
            ]
        );
    }

    /// Bytes given back are read again three times over, not again and again: an object that
    /// begins among bytes given back three times is refused up to its own break, not taken
    /// back, even where the junk between objects hid how often they had been read.
    #[test]
    fn bytes_are_given_back_three_times_at_most() {
        let stream = format!(
            "{}\"x\n{{\"ip\":\"10.0.0.2\"}}\n",
            "{\"a\":[\n1,\n".repeat(5)
        );
        use Expected::StringEnd as Due;
        assert_eq!(
            frames_at_every_step(&stream),
            vec![
                broken("{\"a\":[\n", 52, b'\n', Due),
                junk("1,\n"),
                broken("{\"a\":[\n", 42, b'\n', Due),
                junk("1,\n"),
                broken("{\"a\":[\n", 32, b'\n', Due),
                junk("1,\n"),
                broken("{\"a\":[\n1,\n{\"a\":[\n1,\n\"x\n", 22, b'\n', Due),
                object("{\"ip\":\"10.0.0.2\"}"),
            ]
        );
    }

    #[test]
    fn at_the_end_an_unfinished_object_gives_back_the_lines_it_took() {
        assert_eq!(
            frames_at_every_step("{\"ip\":\"10.0.0.1\",\"seq\":\n{\"ip\":\"10.0.0.2\"}\n"),
            vec![
                Frame::Truncated(Truncated {
                    discarded: 24,
                    depth: 1,
                    in_string: false
                }),
                object("{\"ip\":\"10.0.0.2\"}"),
            ]
        );
        // A pretty printer indents what is nested: nothing begins in the first column.
        assert_eq!(
            frames_at_every_step("{\n  \"a\": [\n    {\"ip\": \"10.0.0.2\"}\n"),
            vec![Frame::Truncated(Truncated {
                discarded: 34,
                depth: 2,
                in_string: false
            })]
        );
    }

    /// Valid objects never break, however they are laid out.
    #[test]
    fn valid_objects_of_every_shape_are_cut_whole() {
        let pretty = "{\n  \"ip\": \"10.0.0.1\",\n  \"list\": [\n    {\n      \"a\": [\n        1,\n        -2.5e+3,\n        true,\n        false,\n        null,\n        \"x\\\"\\\\\\/\\b\\f\\n\\r\\t\\u00e9\"\n      ]\n    },\n    [],\n    {}\n  ]\n}\n";
        let compact = "{\"ip\":\"10.0.0.1\",\"list\":[{\"a\":[1,-2.5e+3,true,false,null,\"x\\\"\\\\\\/\\b\\f\\n\\r\\t\\u00e9\"]},[],{}]}";
        assert_eq!(frames_at_every_step(pretty), vec![object(compact)]);
        let deep = format!(
            "{{\"ip\":\"1.1.1.1\",\"d\":{}1{}}}",
            "[".repeat(40),
            "]".repeat(40)
        );
        assert_eq!(frames_at_every_step(&deep), vec![object(&deep)]);
        let deep_objects = format!(
            "{{\"ip\":\"1.1.1.1\",\"d\":{}0{}}}",
            "{\"k\": [".repeat(40),
            "]}".repeat(40)
        );
        assert_eq!(
            frames_at_every_step(&deep_objects),
            vec![object(&deep_objects.replace(' ', ""))]
        );
        // Past the depth the grammar follows, closers are only counted.
        let mismatched = format!(
            "{{\"d\":{}{}}}",
            "[".repeat(40),
            "}".repeat(8) + &"]".repeat(32)
        );
        assert_eq!(frames_at_every_step(&mismatched), vec![object(&mismatched)]);
    }

    /// A decoder resumed from its state over the same bytes (another process, at an upgrade)
    /// goes on exactly as the original would: at every cut of a stream of objects with
    /// whitespace, strings and a broken object, the frames are the same; a state that does not
    /// fit its bytes is refused.
    #[test]
    fn a_resumed_decoder_goes_on_as_the_original() {
        let stream = b"{\"ip\": \"1.2.3.4\",\n \"note\": \"a \\\" b { }\"}\n  {\"ip\":\"5.6.7.8\", \"k\": [1, 2]}\n{\"ip\":\"9.9.9.9\" x}{\"ip\": 1\n{\"ip\":\"9.9.9.8\"}junk";
        let mut whole = Decoder::new(1024);
        let expected = decode_all(&mut whole, &mut BytesMut::from(&stream[..]));
        assert_eq!(expected.len(), 5, "{expected:?}");
        for cut in 0..stream.len() {
            let mut first = Decoder::new(1024);
            let mut buf = BytesMut::from(&stream[..cut]);
            let mut frames = decode_all(&mut first, &mut buf);
            let state = first.state();
            let mut resumed = Decoder::resume(state, &mut buf).expect("a state that fits");
            assert_eq!(resumed.is_mid_frame(), first.is_mid_frame(), "cut at {cut}");
            buf.extend_from_slice(&stream[cut..]);
            frames.extend(decode_all(&mut resumed, &mut buf));
            assert_eq!(frames, expected, "cut at {cut}");
        }
        let mut mid = Decoder::new(1024);
        let mut buf = BytesMut::from(&b"{\"ip\": \"1.2"[..]);
        assert!(mid.decode(&mut buf).unwrap().is_none());
        assert!(
            Decoder::resume(mid.state(), &mut BytesMut::from(&b"x"[..])).is_none(),
            "another frame's bytes"
        );
    }

    /// A state from a version that compacted in place (`kept` bytes of the object, then spare
    /// room up to `scanned`) is resumed by closing the gap.
    #[test]
    fn a_state_from_a_version_that_compacted_in_place_is_resumed() {
        let mut buf = BytesMut::from(&b"{\"ip\":\"1.2.3.4\"??????,\n \"n\": 1}\n"[..]);
        let old = DecoderState {
            max_frame: 1024,
            scanned: 21,
            kept: 15,
            mode: 1,
            depth: 1,
            in_string: false,
            escaped: false,
            spaced: true,
        };
        let mut resumed = Decoder::resume(old, &mut buf).expect("fits");
        assert_eq!(
            decode_all(&mut resumed, &mut buf),
            vec![object("{\"ip\":\"1.2.3.4\",\"n\":1}")]
        );
        let too_far = DecoderState { scanned: 99, ..old };
        assert!(Decoder::resume(too_far, &mut BytesMut::from(&b"{\"a\""[..])).is_none());
    }

    #[test]
    fn an_oversized_frame_is_skipped_and_the_frames_after_it_are_read() {
        let mut d = Decoder::new(16);
        let big = format!(
            r#"{{"ip":"1.1.1.1","pad":"{}","x":[1, 2 ,{{"}}":3}}]}}"#,
            "}".repeat(100)
        );
        let torn = format!("{{\"ip\":\"1.1.1.1\",\"pad\":\"{}\",\n", "x".repeat(40));
        let text = format!(
            "{big}{{\"a\":1}}\n{}\n{{\"b\":2}}{torn}{{\"c\":3}}",
            "j".repeat(40)
        );
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
                        frames.push(junk("(too large)"));
                        skipping = true;
                    }
                    Err(other) => panic!("{other}"),
                }
            }
        }
        assert_eq!(
            frames,
            vec![
                junk("(too large)"),
                object(r#"{"a":1}"#),
                junk("(too large)"),
                object(r#"{"b":2}"#),
                junk("(too large)"),
                object(r#"{"c":3}"#),
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
        assert_eq!(
            frames_at_every_step(stream),
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
                junk("hello world\n"),
                object("{\"ip\":\"1.1.1.1\"}"),
                junk("oops"),
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

    #[test]
    fn whitespace_between_tokens_is_removed_and_nothing_else() {
        let pretty = "{\r\n  \"ip\" : \"192.0.2.1\",\n\t\"n\": 123456789012345678901234567890 ,\n  \"s\": \"a b\\n\\u00e9 \u{2028}\\\" }\",\n  \"list\": [ 1 , -2.5e+3, true, null, { } , [ ] ]\n}";
        let compact = "{\"ip\":\"192.0.2.1\",\"n\":123456789012345678901234567890,\"s\":\"a b\\n\\u00e9 \u{2028}\\\" }\",\"list\":[1,-2.5e+3,true,null,{},[]]}";
        assert_eq!(frames_at_every_step(pretty), vec![object(compact)]);
        assert_eq!(
            frames_in_steps(compact.as_bytes(), 7, 1024),
            vec![object(compact)]
        );
    }

    /// Two literals side by side break the object where the grammar is followed; deeper, the
    /// whitespace between them is kept as one space, so that the parser still refuses them.
    #[test]
    fn whitespace_that_separates_two_literals_stays_so_invalid_stays_invalid() {
        for (sent, at) in [("{\"a\": 1 2}", 8), ("{\"a\": -  1}", 9)] {
            assert_eq!(
                frames_in_steps(sent.as_bytes(), 1, 64),
                vec![broken(
                    sent,
                    at,
                    sent.as_bytes()[at],
                    Expected::CommaOrObjectEnd
                )],
                "{sent:?}"
            );
        }
        // Broken on the line after the object's first: that line is read again.
        assert_eq!(
            frames_in_steps(b"{\"a\":tru\n\te}", 1, 64),
            vec![
                broken("{\"a\":tru\n", 10, b'e', Expected::CommaOrObjectEnd),
                junk("e}")
            ]
        );
        let open = "[".repeat(33);
        let close = "]".repeat(33);
        for (sent, kept) in [
            (
                format!("{{\"a\":{open}1 2{close}}}"),
                format!("{{\"a\":{open}1 2{close}}}"),
            ),
            (
                format!("{{\"a\":{open}tru\n\te{close}}}"),
                format!("{{\"a\":{open}tru e{close}}}"),
            ),
            (
                format!("{{\"a\":{open} \"x\" \"y\" {close}}}"),
                format!("{{\"a\":{open}\"x\"\"y\"{close}}}"),
            ),
        ] {
            assert_eq!(
                frames_in_steps(sent.as_bytes(), 1, 256),
                vec![object(&kept)]
            );
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
        // Broken on its line, which the stream ended before finishing.
        assert_eq!(
            frames_in_steps(b"{\"a\":1 x", 3, 64),
            vec![broken("{\"a\":1 x", 7, b'x', Expected::CommaOrObjectEnd)]
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
            vec![junk("["), object("{\"ip\":\"1.1.1.1\"}"), junk(", oops"),]
        );
        let mut d = Decoder::new(64);
        assert_eq!(d.decode_eof(&mut BytesMut::new()), Ok(None));
    }

    #[test]
    fn messages_name_the_byte_and_what_was_due() {
        let frames = frames_in_steps(b"{\"ip\":\"10.0.0.1\"\n{\"ip\":\"10.0.0.2\"}", 64, 64);
        let Frame::Broken(broke) = &frames[0] else {
            panic!("{frames:?}");
        };
        assert_eq!(
            broke.to_string(),
            "not JSON at byte 17 of the object: `{` where `,` or `}` was due; 17 bytes refused"
        );
        let frames = frames_in_steps(b"{\"s\":\"a\n", 64, 64);
        let Frame::Broken(broke) = &frames[0] else {
            panic!("{frames:?}");
        };
        assert_eq!(
            broke.to_string(),
            "not JSON at byte 7 of the object: a newline where the string's closing quote was due; 8 bytes refused"
        );
    }

    #[test]
    fn decoder_stays_small() {
        // Every connection holds one.
        assert!(std::mem::size_of::<Decoder>() <= 28);
    }
}
