//! A received item on its way to the sink, and the way back to its sender.

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::{Duration, SystemTime};

use bytes::{Bytes, BytesMut};
use tokio::sync::mpsc::UnboundedSender;

use crate::protocol::{ErrorCode, Outbound};

/// The connection a record came on: what every record of it carries beside its item.
///
/// Shared (an [`Arc`]) by the records a connection reads together, and its fields' NDJSON
/// formatted once for all of them: per record, that formatting was a third of the cost of an
/// item (issue 28). A connection builds one per read that holds items, so an idle connection
/// keeps none.
#[derive(Debug)]
pub struct Origin {
    /// The registry id of the connection.
    pub conn_id: u64,
    /// The client's address.
    pub peer: SocketAddr,
    /// The `client_id` the connection's `hello` gave, if any.
    pub client_id: Option<Arc<str>>,
    /// The name the connection authenticated under (client certificate subject or token name).
    pub auth_name: Option<Arc<str>>,
    /// `","conn_id":…,"peer":"…"` and the rest of a record's fields before its item, up to
    /// `"item":`: formatted by the first record written.
    fields: OnceLock<Box<[u8]>>,
}

impl Origin {
    /// The origin of records from `peer` on connection `conn_id`.
    pub fn new(
        conn_id: u64,
        peer: SocketAddr,
        client_id: Option<Arc<str>>,
        auth_name: Option<Arc<str>>,
    ) -> Origin {
        Origin {
            conn_id,
            peer,
            client_id,
            auth_name,
            fields: OnceLock::new(),
        }
    }

    /// The record's fields between its receive time and its item, as NDJSON.
    fn fields(&self) -> &[u8] {
        self.fields.get_or_init(|| {
            let mut dst = Vec::with_capacity(64);
            dst.extend_from_slice(b"\",\"conn_id\":");
            dst.extend_from_slice(itoa::Buffer::new().format(self.conn_id).as_bytes());
            dst.extend_from_slice(b",\"peer\":\"");
            write_peer(self.peer, &mut dst);
            dst.push(b'"');
            if let Some(client_id) = &self.client_id {
                // Printable ASCII without spaces (`check_client_id`): only `"` and `\` need an
                // escape.
                dst.extend_from_slice(b",\"client_id\":\"");
                for byte in client_id.bytes() {
                    if byte == b'"' || byte == b'\\' {
                        dst.push(b'\\');
                    }
                    dst.push(byte);
                }
                dst.push(b'"');
            }
            if let Some(name) = &self.auth_name {
                // A certificate subject may hold any character: escaped by serde_json.
                dst.extend_from_slice(b",\"auth_name\":");
                let _ = serde_json::to_writer(&mut dst, &**name);
            }
            dst.extend_from_slice(b",\"item\":");
            dst.into_boxed_slice()
        })
    }
}

/// The replies (acks, `queue_full` and `sink_failed` errors) to the records of one read that
/// need one, gathered as each is settled and sent to their connection in one message once the
/// last of them is: one channel message, one wake-up and one count per read instead of one
/// per item (issue 28). The channel is unbounded, so the sink never waits for a client: the
/// connection bounds it by the records it has queued unanswered (`max_pending_replies`).
#[derive(Debug)]
pub(crate) struct Replies {
    /// The replies so far, encoded.
    lines: Mutex<BytesMut>,
    /// Records of the read that joined, counted as the connection queues them.
    records: AtomicU32,
    to: UnboundedSender<Answered>,
}

/// What a connection receives for one read's records once all of them are settled.
#[derive(Debug)]
pub(crate) struct Answered {
    /// Their replies, encoded (empty when none of them asked for one).
    pub lines: BytesMut,
    /// How many records they were, answered or not.
    pub records: u32,
}

impl Replies {
    /// A group whose replies go to `to`.
    pub(crate) fn new(to: UnboundedSender<Answered>) -> Arc<Replies> {
        Arc::new(Replies {
            lines: Mutex::new(BytesMut::new()),
            records: AtomicU32::new(0),
            to,
        })
    }

    /// One more record of the group: the handle it carries.
    pub(crate) fn join(self: &Arc<Replies>) -> Arc<Replies> {
        self.records.fetch_add(1, Ordering::Relaxed);
        Arc::clone(self)
    }

    fn add(&self, reply: &Outbound) {
        // A panic elsewhere while holding the lock left whole lines: each is appended at once.
        reply.encode(&mut self.lines.lock().unwrap_or_else(PoisonError::into_inner));
    }
}

impl Drop for Replies {
    /// The last record of the group is settled (or dropped, at shutdown): its replies leave.
    fn drop(&mut self) {
        let answered = Answered {
            lines: std::mem::take(self.lines.get_mut().unwrap_or_else(PoisonError::into_inner)),
            records: *self.records.get_mut(),
        };
        // The connection is gone when the send fails: nobody is left to answer.
        let _ = self.to.send(answered);
    }
}

/// One item with where and when it came from.
///
/// A record may belong to its read's `Replies`: its ack (or its `queue_full` / `sink_failed`
/// error) is then sent with theirs, without waiting, whatever the client does.
#[derive(Debug)]
pub struct Record {
    /// The connection it came on (shared with the records read with it).
    pub origin: Arc<Origin>,
    /// When the server read the item (the records of one read share the time).
    pub received_at: SystemTime,
    /// The address in the item's `ip` key.
    pub ip: IpAddr,
    /// The client's object as one line: its bytes with the whitespace between tokens removed,
    /// everything else (key order, escapes, number text) as sent (see `docs/PROTOCOL.md`,
    /// "Records in the sink"). [`Record::new`] keeps what it is given.
    pub item: Bytes,
    /// The raw JSON of the item's `"id"`, if it had one.
    pub id: Option<Bytes>,
    pub(crate) reply: Option<Arc<Replies>>,
}

impl Record {
    /// A record with no way back to a sender (for sinks and tests that build their own).
    pub fn new(
        conn_id: u64,
        peer: SocketAddr,
        ip: IpAddr,
        item: Bytes,
        id: Option<Bytes>,
    ) -> Record {
        Record::of(
            Arc::new(Origin::new(conn_id, peer, None, None)),
            SystemTime::now(),
            ip,
            item,
            id,
        )
    }

    /// A record of `origin`'s, with no way back to a sender.
    pub fn of(
        origin: Arc<Origin>,
        received_at: SystemTime,
        ip: IpAddr,
        item: Bytes,
        id: Option<Bytes>,
    ) -> Record {
        Record {
            origin,
            received_at,
            ip,
            item,
            id,
            reply: None,
        }
    }

    /// The registry id of the connection the item came on.
    pub fn conn_id(&self) -> u64 {
        self.origin.conn_id
    }

    /// The client's address.
    pub fn peer(&self) -> SocketAddr {
        self.origin.peer
    }

    /// The `client_id` its connection's `hello` gave, if any.
    pub fn client_id(&self) -> Option<&Arc<str>> {
        self.origin.client_id.as_ref()
    }

    /// The name its connection authenticated under, if any.
    pub fn auth_name(&self) -> Option<&Arc<str>> {
        self.origin.auth_name.as_ref()
    }

    /// A copy without the reply slot, for sinks that hand records on.
    pub fn detached(&self) -> Record {
        Record::of(
            Arc::clone(&self.origin),
            self.received_at,
            self.ip,
            self.item.clone(),
            self.id.clone(),
        )
    }

    /// The id that makes a resend of this item recognisable wherever it arrives: the client's
    /// `client_id` and the item's `id` (`client-7:42`). `None` unless the item has both: an item
    /// without them cannot be told apart from another one.
    pub fn message_id(&self) -> Option<String> {
        let (client, id) = (self.client_id()?, self.id.as_deref()?);
        let id = std::str::from_utf8(id).ok()?;
        Some(format!("{client}:{id}"))
    }

    /// Appends the record as one NDJSON line: the item under `item`, as [`Record::item`] holds it,
    /// next to the connection id, the peer, the receive time and, when the client gave one, its
    /// `client_id`.
    pub fn write_ndjson(&self, dst: &mut Vec<u8>) {
        self.write_ndjson_with(dst, &mut TimeFormat::default());
    }

    /// [`Record::write_ndjson`], with the receive time's date and time of day formatted once
    /// per second by `times` (kept across the records of a batch) and the connection's fields
    /// once per [`Origin`]: the same bytes.
    pub fn write_ndjson_with(&self, dst: &mut Vec<u8>, times: &mut TimeFormat) {
        dst.extend_from_slice(b"{\"received_at\":\"");
        times.write(self.received_at, dst);
        dst.extend_from_slice(self.origin.fields());
        dst.extend_from_slice(&self.item);
        dst.extend_from_slice(b"}\n");
    }

    /// The sink has the item: send its ack, if it asked for one. True when an ack was sent.
    pub fn acknowledge(self) -> bool {
        if let (Some(replies), Some(id)) = (self.reply, self.id) {
            replies.add(&Outbound::Ack { id });
            return true;
        }
        false
    }

    /// The item was not stored: tell its sender why.
    pub fn reject(self, code: ErrorCode, message: &'static str) {
        if let Some(replies) = self.reply {
            replies.add(&Outbound::Error {
                code,
                message: message.into(),
                id: self.id,
            });
        }
    }
}

/// Appends `peer` as its `Display` writes it (`10.0.0.7:40000`, `[::1]:40000`). An IPv4 address
/// is written by hand: through `core::fmt` it cost about 1,300 instructions a record.
fn write_peer(peer: SocketAddr, dst: &mut Vec<u8>) {
    match peer {
        SocketAddr::V4(v4) => {
            let mut digits = itoa::Buffer::new();
            for (i, octet) in v4.ip().octets().into_iter().enumerate() {
                if i > 0 {
                    dst.push(b'.');
                }
                dst.extend_from_slice(digits.format(octet).as_bytes());
            }
            dst.push(b':');
            dst.extend_from_slice(digits.format(v4.port()).as_bytes());
        }
        SocketAddr::V6(_) => {
            use std::io::Write as _;
            // Writing to a Vec cannot fail.
            let _ = write!(dst, "{peer}");
        }
    }
}

/// Receive times as RFC 3339 with microseconds, `2026-12-03T14:25:58.123456Z` (what
/// `humantime::format_rfc3339_micros` writes), the part up to the second formatted once per
/// second: records of a batch mostly share it, and formatting a date is most of a record's
/// cost otherwise.
#[derive(Debug, Default)]
pub struct TimeFormat {
    /// The second `prefix` is for, since the Unix epoch.
    second: Option<u64>,
    /// `YYYY-MM-DDTHH:MM:SS`.
    prefix: [u8; 19],
}

impl TimeFormat {
    /// Appends `at` to `dst`.
    pub fn write(&mut self, at: SystemTime, dst: &mut Vec<u8>) {
        // RFC 3339 (and humantime, which fails on them) holds years 1970 to 9999 only: a clock
        // outside them is written as the nearest end rather than failing the record.
        const LAST: Duration = Duration::from_micros(253_402_300_799_999_999);
        let since = at
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or(Duration::ZERO)
            .min(LAST);
        let at = std::time::UNIX_EPOCH + since;
        let second = since.as_secs();
        if self.second != Some(second) {
            let whole = humantime::format_rfc3339_seconds(at).to_string();
            self.prefix.copy_from_slice(&whole.as_bytes()[..19]);
            self.second = Some(second);
        }
        dst.extend_from_slice(&self.prefix);
        let micros = since.subsec_micros();
        let mut digits = [b'.', b'0', b'0', b'0', b'0', b'0', b'0', b'Z'];
        let mut rest = micros;
        for digit in digits[1..7].iter_mut().rev() {
            *digit = b'0' + (rest % 10) as u8;
            rest /= 10;
        }
        dst.extend_from_slice(&digits);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cached_times_are_the_bytes_humantime_writes() {
        let mut times = TimeFormat::default();
        let mut state = 0x9E37_79B9_7F4A_7C15u64;
        let mut at = std::time::UNIX_EPOCH;
        for i in 0..20_000u64 {
            // Mostly small steps (records of one second), sometimes a jump (years, the epoch).
            state = state
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1);
            let step = match i % 100 {
                0 => Duration::from_secs(state % 250_000_000_000),
                _ => Duration::from_micros(state % 700_000),
            };
            at = if i % 100 == 0 {
                std::time::UNIX_EPOCH + step
            } else {
                at + step
            };
            let mut ours = Vec::new();
            times.write(at, &mut ours);
            let theirs = humantime::format_rfc3339_micros(at).to_string();
            assert_eq!(String::from_utf8(ours).unwrap(), theirs, "{at:?}");
        }
        // A clock before 1970 is written as the epoch, not a failure.
        let mut early = Vec::new();
        times.write(
            std::time::UNIX_EPOCH - Duration::from_secs(86_400),
            &mut early,
        );
        assert_eq!(early, b"1970-01-01T00:00:00.000000Z");
    }

    #[test]
    fn peers_are_written_as_display_writes_them() {
        for peer in [
            "0.0.0.0:0",
            "127.0.0.1:4000",
            "10.200.30.4:65535",
            "255.255.255.255:1",
            "[::1]:80",
            "[2001:db8::7]:40000",
            "[::ffff:10.0.0.1]:9",
        ] {
            let peer: SocketAddr = peer.parse().unwrap();
            let mut ours = Vec::new();
            write_peer(peer, &mut ours);
            assert_eq!(String::from_utf8(ours).unwrap(), peer.to_string());
        }
    }

    #[test]
    fn ndjson_line_keeps_the_item_verbatim() {
        let item = Bytes::from_static(br#"{"IP":"1.2.3.4", "x" : [1,2]}"#);
        let record = Record::new(
            9,
            "127.0.0.1:4000".parse().unwrap(),
            "1.2.3.4".parse().unwrap(),
            item.clone(),
            None,
        );
        let mut line = Vec::new();
        record.write_ndjson(&mut line);
        let value: serde_json::Value = serde_json::from_slice(&line).unwrap();
        assert_eq!(value["conn_id"], 9);
        assert_eq!(value["peer"], "127.0.0.1:4000");
        assert!(value["received_at"].as_str().unwrap().ends_with('Z'));
        let text = std::str::from_utf8(&line).unwrap();
        assert!(text.contains(std::str::from_utf8(&item).unwrap()));
    }

    #[test]
    fn client_id_is_a_json_string_whatever_it_holds() {
        let mut record = Record::new(
            1,
            "127.0.0.1:4000".parse().unwrap(),
            "1.2.3.4".parse().unwrap(),
            Bytes::from_static(br#"{"ip":"1.2.3.4","id":7}"#),
            Some(Bytes::from_static(b"7")),
        );
        record.origin = Arc::new(Origin::new(
            1,
            record.peer(),
            Some(r#"a"b\c:d"#.into()),
            None,
        ));
        let mut line = Vec::new();
        record.write_ndjson(&mut line);
        let value: serde_json::Value = serde_json::from_slice(&line).unwrap();
        assert_eq!(value["client_id"], r#"a"b\c:d"#);
        assert_eq!(value["item"]["id"], 7);
        assert_eq!(record.message_id().as_deref(), Some(r#"a"b\c:d:7"#));
    }
}
