//! Finds the boundaries of JSON objects in a byte stream.
//!
//! Objects may be separated by whitespace (newline-delimited JSON) or by nothing at all (Go's
//! `json.Marshal` output written back to back), and may arrive split at any byte. The decoder
//! tracks only nesting and string state, resumes where it stopped when more bytes arrive, and
//! never looks further than `max_frame` into an unfinished object, so a peer cannot make it
//! buffer without bound. Whether the object is valid JSON is decided later, by [`super::parse`].

use bytes::{Buf, Bytes, BytesMut};

/// One unit cut from the stream.
#[derive(Debug, PartialEq, Eq)]
pub enum Frame {
    /// The bytes from a `{` to its matching `}`.
    Object(Bytes),
    /// Bytes that cannot begin an object, up to and including the next newline (or up to the
    /// next `{`): answered with `invalid_json`, after which decoding goes on.
    Junk(Bytes),
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
    Object {
        depth: u32,
        in_string: bool,
        escaped: bool,
    },
    Junk,
}

/// Incremental, bounded splitter of a JSON object stream.
#[derive(Debug)]
pub struct Decoder {
    max_frame: usize,
    /// Bytes of the pending frame already scanned.
    scanned: usize,
    state: State,
}

impl Decoder {
    /// A decoder that refuses frames longer than `max_frame` bytes.
    pub fn new(max_frame: usize) -> Decoder {
        Decoder {
            max_frame,
            scanned: 0,
            state: State::Between,
        }
    }

    /// True while part of a frame has been seen but not its end.
    pub fn is_mid_frame(&self) -> bool {
        self.state != State::Between
    }

    /// Cuts the next complete frame from the front of `buf`, or returns `None` when `buf` holds
    /// no complete frame yet (whitespace between frames is consumed).
    pub fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<Frame>, FrameTooLarge> {
        if self.state == State::Between {
            let blanks = buf.iter().take_while(|b| b.is_ascii_whitespace()).count();
            buf.advance(blanks);
            match buf.first() {
                None => return Ok(None),
                Some(b'{') => {
                    self.state = State::Object {
                        depth: 0,
                        in_string: false,
                        escaped: false,
                    };
                }
                Some(_) => self.state = State::Junk,
            }
            self.scanned = 0;
        }
        let end = match self.state {
            State::Object { .. } => self.scan_object(buf),
            State::Junk => self.scan_junk(buf),
            State::Between => unreachable!("state set above"),
        };
        match end {
            Some(len) if len > self.max_frame => Err(FrameTooLarge {
                limit: self.max_frame,
            }),
            Some(len) => {
                let bytes = buf.split_to(len).freeze();
                let frame = match self.state {
                    State::Junk => Frame::Junk(bytes),
                    _ => Frame::Object(bytes),
                };
                self.state = State::Between;
                self.scanned = 0;
                Ok(Some(frame))
            }
            None if self.scanned > self.max_frame => Err(FrameTooLarge {
                limit: self.max_frame,
            }),
            None => Ok(None),
        }
    }

    /// Returns the object's length once its closing brace is in `buf`.
    fn scan_object(&mut self, buf: &[u8]) -> Option<usize> {
        let State::Object {
            mut depth,
            mut in_string,
            mut escaped,
        } = self.state
        else {
            unreachable!("called in the object state");
        };
        let limit = buf.len().min(self.max_frame + 1);
        let mut found = None;
        for (i, &byte) in buf.iter().enumerate().take(limit).skip(self.scanned) {
            if in_string {
                match byte {
                    _ if escaped => escaped = false,
                    b'\\' => escaped = true,
                    b'"' => in_string = false,
                    _ => {}
                }
                continue;
            }
            match byte {
                b'"' => in_string = true,
                b'{' | b'[' => depth += 1,
                b'}' | b']' => {
                    depth = depth.saturating_sub(1);
                    if depth == 0 {
                        found = Some(i + 1);
                        break;
                    }
                }
                _ => {}
            }
        }
        self.state = State::Object {
            depth,
            in_string,
            escaped,
        };
        self.scanned = found.unwrap_or(limit);
        found
    }

    /// Junk runs to the end of its line, or up to the next `{`.
    fn scan_junk(&mut self, buf: &[u8]) -> Option<usize> {
        let limit = buf.len().min(self.max_frame + 1);
        let found = buf[..limit]
            .iter()
            .skip(self.scanned)
            .position(|&b| b == b'\n' || b == b'{')
            .map(|p| {
                let at = self.scanned + p;
                if buf[at] == b'\n' {
                    at + 1
                } else {
                    at
                }
            });
        self.scanned = found.unwrap_or(limit);
        found
    }
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
        assert_eq!(
            d.decode(&mut buf),
            Ok(Some(object("{\"ip\": \"1.2.3.4\"}")))
        );
        assert!(!d.is_mid_frame());
    }
}
