//! Items read from a byte stream (a file, standard input) the way the server reads a
//! connection: with the server's own [`Decoder`], so whatever `serve` accepts, `send` accepts
//! too — objects one per line, pretty-printed over many lines (`jq .`), back to back with
//! nothing between them — and also bare IPv4 or IPv6 addresses, one per line.
//!
//! Unlike a connection, a file can be read past a bad object: an object too large to hold is
//! skipped to its end and reading goes on. Every refusal names the line where the refused
//! object (or line) starts, counted from 1, so it can be found and fixed in the input.

use std::collections::VecDeque;
use std::io;

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncReadExt};

use super::OutItem;
use crate::protocol::{Decoder, ErrorCode, Frame, ItemError};

/// The largest object [`ItemReader`] holds by default, as read (whitespace included): a
/// bound on memory, far above any `max_frame` a server would sensibly set. The server's own
/// limit is enforced after compaction, at sending (`frame_too_large`).
pub const DEFAULT_MAX_OBJECT: usize = 16 * 1024 * 1024;

/// Bytes asked of the input per read.
const READ_SIZE: usize = 256 * 1024;

/// One input object or line that cannot be sent.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("line {line}: {error}")]
pub struct RefusedInput {
    /// The line where the refused object or line starts, from 1.
    pub line: u64,
    /// Why, with the code the server would have answered.
    pub error: ItemError,
}

/// What the next call of [`ItemReader::next`] found.
pub type InputItem = Result<OutItem, RefusedInput>;

/// Reads items from `R`, checking each with the server's parser.
pub struct ItemReader<R> {
    input: R,
    buf: BytesMut,
    decoder: Decoder,
    max_object: usize,
    /// Bytes read from the input so far: `received - buf.len()` is the stream offset of the
    /// front of `buf` (the decoder compacts an object in place but never changes `buf`'s
    /// length before it consumes the object).
    received: u64,
    /// Stream offsets of the newlines read and not yet counted into `lines_before`.
    newlines: VecDeque<u64>,
    /// Newlines before the first offset still in `newlines`' range.
    lines_before: u64,
    /// Newline positions inside the pending frame were counted into `lines_before` and
    /// dropped: should the frame break, the lines after the break must be found again.
    forgot: bool,
    /// The line where the pending frame starts, once it has started.
    frame_line: u64,
    /// Skipping the rest of an object that was too large.
    skipping: bool,
    at_end: bool,
}

impl<R: AsyncRead + Unpin> ItemReader<R> {
    /// A reader of `input` that refuses objects longer than `max_object` bytes as read (at
    /// most [`crate::protocol::MAX_FRAME_LIMIT`]).
    pub fn new(input: R, max_object: usize) -> ItemReader<R> {
        ItemReader {
            input,
            buf: BytesMut::new(),
            decoder: Decoder::new(max_object),
            max_object: max_object.min(crate::protocol::MAX_FRAME_LIMIT),
            received: 0,
            newlines: VecDeque::new(),
            lines_before: 0,
            forgot: false,
            frame_line: 1,
            skipping: false,
            at_end: false,
        }
    }

    /// The next item or refusal, in input order; `Ok(None)` once the input has ended and
    /// everything in it was returned. An error only when the input cannot be read.
    pub async fn next(&mut self) -> io::Result<Option<InputItem>> {
        loop {
            if let Some(found) = self.cut() {
                return Ok(Some(found));
            }
            if self.at_end {
                return Ok(None);
            }
            self.read().await?;
        }
    }

    /// Cuts the next item or refusal from what has been read, if there is one.
    fn cut(&mut self) -> Option<InputItem> {
        if self.skipping {
            if !self.decoder.skip_frame(&mut self.buf) {
                if !self.at_end {
                    self.forget_newlines_read();
                    return None;
                }
                // The input ended inside the object being skipped: nothing is left to read.
                self.buf.clear();
                self.decoder = Decoder::new(self.max_object);
            }
            self.skipping = false;
        }
        if !self.decoder.is_mid_frame() {
            let blanks = self
                .buf
                .iter()
                .take_while(|b| b.is_ascii_whitespace())
                .count();
            if blanks < self.buf.len() {
                self.frame_line = self.line_at(self.offset_of_front() + blanks as u64);
                self.forgot = false;
            }
        }
        let decoded = if self.at_end {
            self.decoder.decode_eof(&mut self.buf)
        } else {
            self.decoder.decode(&mut self.buf)
        };
        let line = self.frame_line;
        let refused = |code, message: String| {
            Some(Err(RefusedInput {
                line,
                error: ItemError {
                    code,
                    message,
                    id: None,
                },
            }))
        };
        match decoded {
            Ok(Some(Frame::Object(object))) => {
                Some(OutItem::from_json(object).map_err(|error| RefusedInput { line, error }))
            }
            Ok(Some(Frame::Junk(junk))) => match OutItem::from_line(junk) {
                Ok(Some(item)) => Some(Ok(item)),
                // Only blanks: nothing to send, nothing to refuse.
                Ok(None) => self.cut(),
                Err(error) => Some(Err(RefusedInput { line, error })),
            },
            Ok(Some(Frame::Broken(broken))) => {
                self.resume_after(&broken.refused);
                refused(ErrorCode::InvalidJson, broken.to_string())
            }
            Ok(Some(Frame::Truncated(truncated))) => {
                refused(ErrorCode::Truncated, truncated.to_string())
            }
            Ok(None) => {
                if self.decoder.is_mid_frame() {
                    self.forget_newlines_read();
                }
                None
            }
            Err(too_large) => {
                self.skipping = true;
                refused(
                    ErrorCode::FrameTooLarge,
                    format!(
                        "an object larger than {} bytes (--max-object): skipped to its end",
                        too_large.limit
                    ),
                )
            }
        }
    }

    async fn read(&mut self) -> io::Result<()> {
        if self.buf.capacity() - self.buf.len() < READ_SIZE / 4 {
            self.buf.reserve(READ_SIZE);
        }
        let before = self.buf.len();
        let n = self.input.read_buf(&mut self.buf).await?;
        if n == 0 {
            self.at_end = true;
            return Ok(());
        }
        let start = self.received;
        self.newlines.extend(
            self.buf[before..]
                .iter()
                .enumerate()
                .filter(|(_, b)| **b == b'\n')
                .map(|(i, _)| start + i as u64),
        );
        self.received += n as u64;
        Ok(())
    }

    fn offset_of_front(&self) -> u64 {
        self.received - self.buf.len() as u64
    }

    /// The line (from 1) of stream offset `offset`, which is never before an offset asked
    /// about earlier.
    fn line_at(&mut self, offset: u64) -> u64 {
        while self.newlines.front().is_some_and(|&at| at < offset) {
            self.newlines.pop_front();
            self.lines_before += 1;
        }
        self.lines_before + 1
    }

    /// Counts every newline read so far as passed: called while a frame is unfinished, when
    /// they all lie inside it (its start line is already known), so that a long pretty-printed
    /// object does not keep a position per line.
    fn forget_newlines_read(&mut self) {
        self.lines_before += self.newlines.len() as u64;
        self.newlines.clear();
        self.forgot = true;
    }

    /// After a broken object, whose `refused` bytes began at `frame_line`: reading resumes
    /// inside what the object had spanned, so the newlines still in the buffer are found
    /// again if they had been forgotten.
    fn resume_after(&mut self, refused: &[u8]) {
        if !std::mem::take(&mut self.forgot) {
            return;
        }
        let passed = memchr::memchr_iter(b'\n', refused).count() as u64;
        self.lines_before = self.frame_line - 1 + passed;
        let front = self.offset_of_front();
        self.newlines.clear();
        self.newlines
            .extend(memchr::memchr_iter(b'\n', &self.buf).map(|i| front + i as u64));
    }
}

#[cfg(test)]
mod tests {
    use std::pin::Pin;
    use std::task::{Context, Poll};

    use tokio::io::ReadBuf;

    use super::*;

    /// Yields its bytes at most `chunk` at a time, as a slow pipe would.
    struct Trickle<'a> {
        bytes: &'a [u8],
        chunk: usize,
    }

    impl AsyncRead for Trickle<'_> {
        fn poll_read(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
            buf: &mut ReadBuf<'_>,
        ) -> Poll<io::Result<()>> {
            let n = self.chunk.min(self.bytes.len()).min(buf.remaining());
            buf.put_slice(&self.bytes[..n]);
            self.bytes = &self.bytes[n..];
            Poll::Ready(Ok(()))
        }
    }

    /// Everything read from `text`, `chunk` bytes at a time: sent objects as text, and refusals
    /// as `line code`.
    async fn read_all(text: &str, chunk: usize, max_object: usize) -> Vec<String> {
        let input = Trickle {
            bytes: text.as_bytes(),
            chunk,
        };
        let mut reader = ItemReader::new(input, max_object);
        let mut out = Vec::new();
        while let Some(found) = reader.next().await.unwrap() {
            out.push(match found {
                Ok(item) => String::from_utf8(item.as_bytes().to_vec()).unwrap(),
                Err(refused) => format!("{} {}", refused.line, refused.error.code),
            });
        }
        out
    }

    const MIXED: &str = concat!(
        "{\"ip\":\"10.0.0.1\"}\n",
        "{\n  \"ip\": \"10.0.0.2\",\n  \"tags\": [\n    \"a\",\n    \"b\"\n  ]\n}\n",
        "{\"ip\":\"10.0.0.3\"}{\"ip\":\"10.0.0.4\"} {\"ip\":\"10.0.0.5\"}\n",
        "\n",
        "10.0.0.6\n",
        "  2001:db8::7  \r\n",
        "not an address\n",
        "{\n  \"ip\": \"999.0.0.8\"\n}\n",
        "{\"ip\":\"10.0.0.9\",\n \"x\": tru e}\n",
        "{\"ip\":\"10.0.0.10\"}\n",
        "{\"ip\":\"10.0.0.11\",\n",
    );

    fn mixed_expected() -> Vec<String> {
        [
            r#"{"ip":"10.0.0.1"}"#,
            r#"{"ip":"10.0.0.2","tags":["a","b"]}"#,
            r#"{"ip":"10.0.0.3"}"#,
            r#"{"ip":"10.0.0.4"}"#,
            r#"{"ip":"10.0.0.5"}"#,
            r#"{"ip":"10.0.0.6"}"#,
            r#"{"ip":"2001:db8::7"}"#,
            "13 invalid_json",
            "14 invalid_ip",
            "17 invalid_json",
            "18 invalid_json",
            r#"{"ip":"10.0.0.10"}"#,
            "20 truncated",
        ]
        .map(String::from)
        .to_vec()
    }

    #[tokio::test]
    async fn every_form_the_server_takes_is_read_and_refusals_name_their_first_line() {
        for chunk in [1, 2, 3, 7, 64, 1 << 20] {
            assert_eq!(
                read_all(MIXED, chunk, 1024).await,
                mixed_expected(),
                "read {chunk} bytes at a time"
            );
        }
    }

    #[tokio::test]
    async fn an_object_too_large_is_refused_at_its_line_and_skipped_to_its_end() {
        let big = format!(
            "{{\n\"ip\": \"10.0.0.1\",\n\"pad\": \"{}\",\n\"x\": [1, {{\"}}\": 2}}]\n}}",
            "}\\n{".repeat(40)
        );
        let text = format!("{{\"ip\":\"10.0.0.2\"}}\n\n{big}{{\"ip\":\"10.0.0.3\"}}\n{big}");
        for chunk in [1, 5, 64, 1 << 20] {
            assert_eq!(
                read_all(&text, chunk, 64).await,
                vec![
                    r#"{"ip":"10.0.0.2"}"#.to_owned(),
                    "3 frame_too_large".to_owned(),
                    r#"{"ip":"10.0.0.3"}"#.to_owned(),
                    "8 frame_too_large".to_owned(),
                ],
                "read {chunk} bytes at a time"
            );
        }
    }

    #[tokio::test]
    async fn an_object_one_byte_too_large_or_cut_short_by_the_end_is_refused_once() {
        let base = r#"{"ip":"10.0.0.1","p":""}"#;
        let exact = format!(
            r#"{{"ip":"10.0.0.1","p":"{}"}}"#,
            "x".repeat(65 - base.len())
        );
        assert_eq!(exact.len(), 65);
        let text = format!(
            "{exact}{{\"ip\":\"10.0.0.4\"}}\n\n{{\"ip\":\"10.0.0.5\",\"p\":\"{}",
            "y".repeat(200)
        );
        for chunk in [1, 5, 64, 1 << 20] {
            assert_eq!(
                read_all(&text, chunk, 64).await,
                vec![
                    "1 frame_too_large".to_owned(),
                    r#"{"ip":"10.0.0.4"}"#.to_owned(),
                    "3 frame_too_large".to_owned(),
                ],
                "read {chunk} bytes at a time"
            );
        }
    }

    #[tokio::test]
    async fn a_long_pretty_printed_object_keeps_no_position_per_line() {
        let lines = 50_000;
        let mut text = String::from("{\n\"ip\": \"10.0.0.1\",\n\"list\": [\n");
        for _ in 0..lines {
            text.push_str("1,\n");
        }
        text.push_str("2]}\nbad\n");
        let input = Trickle {
            bytes: text.as_bytes(),
            chunk: 4096,
        };
        let mut reader = ItemReader::new(input, 1 << 20);
        assert!(reader.next().await.unwrap().unwrap().is_ok());
        assert!(
            reader.newlines.len() < 4096,
            "{} newline positions held",
            reader.newlines.len()
        );
        let refused = reader.next().await.unwrap().unwrap().unwrap_err();
        assert_eq!(
            refused.line,
            lines + 5,
            "after 3 lines, 50,000 and the closing one"
        );
        assert!(reader.next().await.unwrap().is_none());
    }
}
