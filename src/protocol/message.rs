//! Messages: what a frame means, and what the server writes back.

use std::borrow::Cow;
use std::fmt;
use std::net::IpAddr;

use bytes::{BufMut, Bytes, BytesMut};
use serde::de::{IgnoredAny, MapAccess, Visitor};
use serde::{Deserialize, Deserializer};
use serde_json::value::RawValue;

use super::envelope::{self, Envelope, Keys};
use super::{Decoder, Frame, FrameTooLarge};

/// A message from a client.
#[derive(Debug, PartialEq, Eq)]
pub enum Inbound {
    /// A data item, kept byte for byte as it came (less whitespace between tokens).
    Item(Item),
    /// The client announces itself; the server then enforces the heartbeat (when `negotiated`).
    Hello(Hello),
    /// The client checks the server is alive; answered with `pong`.
    Ping,
    /// Answer to the server's `ping`.
    Pong,
}

/// What a client's `hello` says of it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Hello {
    /// The client's stable identity (`client_id`), if it gave one: with each item's `id` it makes
    /// the message id JetStream removes resends by ([`MAX_CLIENT_ID`] bytes at most, printable
    /// ASCII without spaces).
    pub client_id: Option<String>,
    /// The client's token (`auth_tokens`), if it gave one: never logged.
    pub token: Option<String>,
}

/// Longest `client_id` a `hello` may carry.
pub const MAX_CLIENT_ID: usize = 128;

/// A valid item.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Item {
    /// The client's object as it came, less the whitespace between its tokens (see
    /// [`super::Decoder`]).
    pub raw: Bytes,
    /// The address in the item's `ip` key.
    pub ip: IpAddr,
    /// The raw JSON of the item's `"id"` (a string or a number), echoed in its `ack`.
    pub id: Option<Bytes>,
}

/// Stable error codes sent to clients in `{"type":"error","code":…}`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorCode {
    /// The frame is not a valid JSON object (or not valid UTF-8).
    InvalidJson,
    /// An item has no `ip` key.
    MissingIp,
    /// `ip` is not a string holding one IPv4 or IPv6 address, or is given twice.
    InvalidIp,
    /// `id` is neither a string nor a number.
    InvalidId,
    /// The client sent a type only the server sends (`ack`, `error`).
    UnexpectedType,
    /// One object exceeded `max_frame`; the connection closes.
    FrameTooLarge,
    /// An object that had begun did not end within `frame_timeout`; the connection closes.
    FrameTimeout,
    /// The client did not authenticate (`auth = "required"`): no valid token before its first
    /// item or within `auth_timeout`, or an invalid token; the connection closes.
    Unauthorized,
    /// The server's budget for partial objects (`max_buffered`) was exceeded and this
    /// connection held one of the largest; it closes.
    MemoryPressure,
    /// The connection exceeded its error budget; it closes.
    TooManyErrors,
    /// The overflow policy dropped this item.
    QueueFull,
    /// The server holds `max_connections`; the new connection closes.
    ServerFull,
    /// The server holds `max_connections_per_ip` from the peer's address; the new connection
    /// closes.
    TooManyConnections,
    /// The sink could not store the item; it was not acknowledged.
    SinkFailed,
    /// The connection reached its maximum age: reconnect before the grace ends.
    MaxAge,
    /// The server is stopping; the connection closes.
    ShuttingDown,
    /// The stream ended inside an object; what had arrived of it was discarded.
    Truncated,
    /// A `hello`'s `client_id` is not 1 to 128 printable ASCII characters without spaces.
    InvalidClientId,
    /// The listener reads a PROXY protocol header first and the connection did not begin with
    /// one: the client bypassed the load balancer. The connection closes.
    ProxyHeaderInvalid,
    /// A newer connection with this connection's `client_id` took its place; this one closes.
    Superseded,
}

impl ErrorCode {
    /// Every code.
    pub const ALL: [ErrorCode; 20] = [
        ErrorCode::InvalidJson,
        ErrorCode::MissingIp,
        ErrorCode::InvalidIp,
        ErrorCode::InvalidId,
        ErrorCode::UnexpectedType,
        ErrorCode::FrameTooLarge,
        ErrorCode::FrameTimeout,
        ErrorCode::Unauthorized,
        ErrorCode::MemoryPressure,
        ErrorCode::TooManyErrors,
        ErrorCode::QueueFull,
        ErrorCode::ServerFull,
        ErrorCode::TooManyConnections,
        ErrorCode::SinkFailed,
        ErrorCode::MaxAge,
        ErrorCode::ShuttingDown,
        ErrorCode::Truncated,
        ErrorCode::InvalidClientId,
        ErrorCode::ProxyHeaderInvalid,
        ErrorCode::Superseded,
    ];

    /// Position in [`ErrorCode::ALL`], for per-code counters.
    pub fn index(self) -> usize {
        self as usize
    }

    /// The code with this spelling, if it is one.
    pub fn from_wire(text: &str) -> Option<ErrorCode> {
        ErrorCode::ALL
            .into_iter()
            .find(|code| code.as_str() == text)
    }

    /// The spelling on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::InvalidJson => "invalid_json",
            ErrorCode::MissingIp => "missing_ip",
            ErrorCode::InvalidIp => "invalid_ip",
            ErrorCode::InvalidId => "invalid_id",
            ErrorCode::UnexpectedType => "unexpected_type",
            ErrorCode::FrameTooLarge => "frame_too_large",
            ErrorCode::FrameTimeout => "frame_timeout",
            ErrorCode::MemoryPressure => "memory_pressure",
            ErrorCode::Unauthorized => "unauthorized",
            ErrorCode::TooManyErrors => "too_many_errors",
            ErrorCode::QueueFull => "queue_full",
            ErrorCode::ServerFull => "server_full",
            ErrorCode::TooManyConnections => "too_many_connections",
            ErrorCode::SinkFailed => "sink_failed",
            ErrorCode::MaxAge => "max_age",
            ErrorCode::ShuttingDown => "shutting_down",
            ErrorCode::Truncated => "truncated",
            ErrorCode::InvalidClientId => "invalid_client_id",
            ErrorCode::ProxyHeaderInvalid => "proxy_header_invalid",
            ErrorCode::Superseded => "superseded",
        }
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why one frame was refused. The connection goes on; the client gets an `error` reply.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{code}: {message}")]
pub struct ItemError {
    /// The code sent to the client.
    pub code: ErrorCode,
    /// A message for people.
    pub message: String,
    /// The item's `"id"`, when it could be read, so the client knows which item failed.
    pub id: Option<Bytes>,
}

impl ItemError {
    fn new(code: ErrorCode, message: impl Into<String>, id: Option<Bytes>) -> ItemError {
        ItemError {
            code,
            message: message.into(),
            id,
        }
    }
}

/// The keys the server looks at, read by serde_json: every other key is skipped, unparsed
/// beyond validation. The slow path, for what [`envelope::scan_prefix`] leaves undecided.
struct SerdeEnvelope<'a>(Envelope<'a>);

impl<'de> Deserialize<'de> for SerdeEnvelope<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct EnvelopeVisitor;
        impl<'de> Visitor<'de> for EnvelopeVisitor {
            type Value = SerdeEnvelope<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut envelope = Envelope::default();
                while let Some(key) = map.next_key::<&'de RawValue>()? {
                    let name = key_name(key);
                    let name = name.as_deref().unwrap_or_default();
                    if name.eq_ignore_ascii_case("ip") {
                        envelope.ip = raw_text(&mut map)?;
                        envelope.ip_keys += 1;
                    } else if name == "type" {
                        envelope.kind = raw_text(&mut map)?;
                    } else if name == "id" {
                        envelope.id = raw_text(&mut map)?;
                    } else {
                        map.next_value::<IgnoredAny>()?;
                    }
                }
                Ok(SerdeEnvelope(envelope))
            }
        }
        /// A value's raw JSON text.
        fn raw_text<'de, A: MapAccess<'de>>(map: &mut A) -> Result<Option<&'de str>, A::Error> {
            Ok(Some(map.next_value::<&'de RawValue>()?.get()))
        }
        deserializer.deserialize_map(EnvelopeVisitor)
    }
}

/// The name of an object's key, read from its raw text: without escapes (the usual case) it is
/// borrowed as it is; with escapes it is decoded. `None` for a key holding an escaped lone UTF-16
/// surrogate (`"\\uD800"`), which JSON's grammar allows and no `str` can hold: such a key is
/// none the server looks at, and the item is kept, as it is when the surrogate is in a value.
/// (Reading keys as raw text also keeps serde_json's check that strings hold no raw control
/// character, which its byte-string reading skips.)
fn key_name(raw: &RawValue) -> Option<Cow<'_, str>> {
    let text = raw.get();
    let inner = &text[1..text.len() - 1];
    if inner.contains('\\') {
        serde_json::from_str(text).ok()
    } else {
        Some(Cow::Borrowed(inner))
    }
}

/// What one frame from a client means: an object is [`parse`]d; junk, a broken object and a
/// truncated one are refused with their codes. Every frame gets an answer: a message, or an error to send.
pub fn interpret(frame: Frame) -> Result<Inbound, ItemError> {
    match frame {
        Frame::Object(bytes) => parse(bytes),
        Frame::Junk(bytes) => Err(ItemError::new(
            ErrorCode::InvalidJson,
            format!(
                "expected a JSON object, got {} bytes that cannot start one",
                bytes.len()
            ),
            None,
        )),
        Frame::Broken(broken) => Err(ItemError::new(
            ErrorCode::InvalidJson,
            broken.to_string(),
            None,
        )),
        Frame::Truncated(truncated) => Err(ItemError::new(
            ErrorCode::Truncated,
            truncated.to_string(),
            None,
        )),
    }
}

/// Interprets one object cut by the [`super::Decoder`].
///
/// The `ip` key is matched case-insensitively (Go clients send `"IP"`) and must hold one valid
/// IPv4 or IPv6 address. A `"type"` of `hello`, `ping` or `pong` makes a control message; any
/// other type, or none, leaves the object an item, so clients' own `type` fields keep working.
pub fn parse(frame: Bytes) -> Result<Inbound, ItemError> {
    let keys = match envelope::scan_prefix(&frame) {
        Some((len, keys)) if len == frame.len() => keys,
        _ => read_envelope(&frame)?.locate(&frame),
    };
    judge(frame, keys)
}

/// Cuts the next frame from `buf` and says what it means: [`Decoder::decode`] (or, once the
/// stream has ended, [`Decoder::decode_eof`]) and [`interpret`] in one. An object that arrived
/// whole and compact is checked and its keys read in the same walk that finds its end, instead
/// of one walk to cut it and another to read it (issue 28); any other frame takes the two
/// steps. The answer is the same either way.
pub fn next_message(
    decoder: &mut Decoder,
    buf: &mut BytesMut,
    eof: bool,
) -> Result<Option<Result<Inbound, ItemError>>, FrameTooLarge> {
    if let Some((frame, keys)) = decoder.decode_measured(buf, envelope::scan_prefix) {
        return Ok(Some(judge(frame, keys)));
    }
    let frame = if eof {
        decoder.decode_eof(buf)?
    } else {
        decoder.decode(buf)?
    };
    Ok(frame.map(interpret))
}

/// What a valid object means, given where its keys are.
fn judge(frame: Bytes, keys: Keys) -> Result<Inbound, ItemError> {
    let id = keys.id.map(|range| frame.slice(range));
    let id_valid = id
        .as_ref()
        .is_none_or(|raw| matches!(raw.first(), Some(b'"' | b'-' | b'0'..=b'9')));
    // Only an id that is a string or a number is ever echoed: it is one token, one line.
    // Both readers checked the whole object is UTF-8, and a value begins and ends at ASCII
    // bytes: the conversion cannot fail.
    let kind = keys
        .kind
        .map(|range| std::str::from_utf8(&frame[range]).unwrap_or(""));
    if let Some(control) = control_message(kind, id.as_ref().filter(|_| id_valid), &frame)? {
        return Ok(control);
    }
    if !id_valid {
        return Err(ItemError::new(
            ErrorCode::InvalidId,
            "id must be a string or a number",
            None,
        ));
    }
    let ip = match (keys.ip, keys.ip_keys) {
        (None, _) => {
            return Err(ItemError::new(
                ErrorCode::MissingIp,
                "item has no \"ip\" key",
                id,
            ))
        }
        (Some(_), n) if n > 1 => {
            return Err(ItemError::new(
                ErrorCode::InvalidIp,
                "item has more than one \"ip\" key",
                id,
            ))
        }
        (Some(raw), _) => parse_ip(&frame[raw])
            .map_err(|message| ItemError::new(ErrorCode::InvalidIp, message, id.clone()))?,
    };
    Ok(Inbound::Item(Item { raw: frame, ip, id }))
}

/// The slow path: serde_json reads the keys, or says why `frame` is not a JSON object.
pub(super) fn read_envelope(frame: &[u8]) -> Result<Envelope<'_>, ItemError> {
    // Checked first and whole: serde_json skips the strings of ignored fields without checking
    // their encoding, and the sink must only ever hold valid UTF-8.
    let text = std::str::from_utf8(frame).map_err(|e| {
        ItemError::new(
            ErrorCode::InvalidJson,
            format!("not valid UTF-8: {e}"),
            None,
        )
    })?;
    match serde_json::from_str(text) {
        Ok(SerdeEnvelope(envelope)) => Ok(envelope),
        Err(e) => Err(ItemError::new(
            ErrorCode::InvalidJson,
            format!("not a valid JSON object: {e}"),
            None,
        )),
    }
}

fn control_message(
    kind: Option<&str>,
    id: Option<&Bytes>,
    text: &[u8],
) -> Result<Option<Inbound>, ItemError> {
    let Some(kind) = kind else {
        return Ok(None);
    };
    let Ok(kind) = serde_json::from_str::<Cow<'_, str>>(kind) else {
        return Ok(None);
    };
    match kind.as_ref() {
        "hello" => parse_hello(text).map(|hello| Some(Inbound::Hello(hello))),
        "ping" => Ok(Some(Inbound::Ping)),
        "pong" => Ok(Some(Inbound::Pong)),
        "ack" | "error" => Err(ItemError::new(
            ErrorCode::UnexpectedType,
            format!("\"{kind}\" is sent by the server, not to it"),
            id.cloned(),
        )),
        _ => Ok(None),
    }
}

/// Reads a `hello`'s fields. Parsed a second time, and only for `hello`: items, the frames that
/// count, pay nothing for the keys only a `hello` has.
fn parse_hello(text: &[u8]) -> Result<Hello, ItemError> {
    #[derive(Deserialize)]
    struct Fields<'a> {
        #[serde(borrow)]
        client_id: Option<Cow<'a, str>>,
    }
    #[derive(Deserialize)]
    struct Token<'a> {
        #[serde(borrow)]
        token: Option<Cow<'a, str>>,
    }
    let bad = |detail: String| ItemError::new(ErrorCode::InvalidClientId, detail, None);
    let fields: Fields<'_> = serde_json::from_slice(text)
        .map_err(|e| bad(format!("client_id must be a string: {e}")))?;
    // A token that is not a string is no token: refused as such when tokens are required.
    let token = serde_json::from_slice::<Token<'_>>(text)
        .map(|t| t.token.map(Cow::into_owned))
        .unwrap_or_else(|_| Some(String::new()));
    let client_id = match fields.client_id {
        Some(client_id) => {
            check_client_id(&client_id).map_err(bad)?;
            Some(client_id.into_owned())
        }
        None => None,
    };
    Ok(Hello { client_id, token })
}

/// Checks a `client_id`: 1 to [`MAX_CLIENT_ID`] printable ASCII characters without spaces (one
/// token of a message id, one word in a log). The server checks every `hello` with it; the
/// client checks one it is given.
pub fn check_client_id(client_id: &str) -> Result<(), String> {
    let valid = !client_id.is_empty()
        && client_id.len() <= MAX_CLIENT_ID
        && client_id.bytes().all(|b| b.is_ascii_graphic());
    if valid {
        Ok(())
    } else {
        Err(format!(
            "client_id must be 1 to {MAX_CLIENT_ID} printable ASCII characters without spaces"
        ))
    }
}

/// The address in an `ip` value's raw JSON text.
fn parse_ip(raw: &[u8]) -> Result<IpAddr, String> {
    // Mostly a dotted quad in a string without escapes: read from the bytes at once.
    let inner = raw.strip_prefix(b"\"").and_then(|r| r.strip_suffix(b"\""));
    if let Some(v4) = inner.and_then(dotted_quad) {
        return Ok(IpAddr::V4(v4));
    }
    // Both readers checked the whole object is UTF-8, and a value begins and ends at an ASCII
    // byte: this cannot fail.
    let raw = std::str::from_utf8(raw).map_err(|e| format!("ip is not UTF-8: {e}"))?;
    let text: Cow<'_, str> = match raw.strip_prefix('"').and_then(|r| r.strip_suffix('"')) {
        Some(inner) if !inner.contains('\\') => Cow::Borrowed(inner),
        _ => serde_json::from_str(raw).map_err(|_| format!("ip must be a string, got {raw}"))?,
    };
    // Not a plain dotted quad: the standard library reads the rest (IPv6, an escaped address;
    // its IPv4 reading is the one `dotted_quad` is checked against).
    text.parse()
        .map_err(|_| format!("{text:?} is not a valid IPv4 or IPv6 address"))
}

/// `a.b.c.d` as the standard library reads it (four octets of 1 to 3 digits, no leading zero,
/// at most 255), in a tenth of its instructions; `None` for anything else, which `parse` then
/// reads (or refuses) as before.
fn dotted_quad(text: &[u8]) -> Option<std::net::Ipv4Addr> {
    let mut octets = [0u8; 4];
    let mut at = 0;
    for (i, octet) in octets.iter_mut().enumerate() {
        if i > 0 {
            (text.get(at) == Some(&b'.')).then_some(())?;
            at += 1;
        }
        let start = at;
        let mut value = 0u16;
        while let Some(digit) = text.get(at).filter(|d| d.is_ascii_digit()) {
            // A fourth digit: no octet has one (and 0255 is not 255).
            (at - start < 3).then_some(())?;
            value = value * 10 + u16::from(digit - b'0');
            at += 1;
        }
        let digits = at - start;
        if digits == 0 || (digits > 1 && text[start] == b'0') {
            return None;
        }
        *octet = u8::try_from(value).ok()?;
    }
    (at == text.len()).then_some(std::net::Ipv4Addr::from(octets))
}

/// A message from the server. Each is written as one line of JSON.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outbound {
    /// The sink has taken the item with this id.
    Ack {
        /// The item's `id`, raw JSON as the client wrote it.
        id: Bytes,
    },
    /// Something went wrong; see [`ErrorCode`].
    Error {
        /// The stable code.
        code: ErrorCode,
        /// A message for people.
        message: Cow<'static, str>,
        /// The `id` of the item concerned, if it could be read.
        id: Option<Bytes>,
    },
    /// Asks the client to answer (`pong`, or any byte) to prove it is alive.
    Ping,
    /// Answer to the client's `ping`.
    Pong,
    /// A connection refused at accept (`server_full`, `too_many_connections`), with the time
    /// the client should wait before it tries again: drawn at random by the server, so that a
    /// refused crowd comes back spread out.
    Refused {
        /// The stable code.
        code: ErrorCode,
        /// A message for people.
        message: &'static str,
        /// Milliseconds to wait before the next attempt.
        retry_after_ms: u64,
    },
    /// The server asks the client to reconnect (to another process, or later): stop sending
    /// new items, wait for the acks of those in flight, close, and connect again after a random
    /// delay within `reconnect_within_ms`, so that many clients come back spread out.
    GoAway {
        /// The window over which the client spreads its reconnect, in milliseconds.
        reconnect_within_ms: u64,
    },
    /// Answer to `hello`: the heartbeat the server will enforce (0 when off) and the frame limit.
    Hello {
        /// Interval of the server's pings in milliseconds; 0 when the heartbeat is off.
        heartbeat_ms: u64,
        /// The server's `max_frame`, in bytes.
        max_frame: usize,
    },
}

/// A message from the server, as a client reads it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reply {
    /// The sink has the item with this id (raw JSON, as the client wrote it).
    Ack {
        /// The item's `id`.
        id: Bytes,
    },
    /// An item was refused, or the connection is about to close.
    Error {
        /// The code, when it is one this build knows.
        code: Option<ErrorCode>,
        /// The code as sent.
        code_text: String,
        /// A message for people.
        message: String,
        /// The `id` of the item concerned, if any.
        id: Option<Bytes>,
        /// The time to wait before connecting again, when the server said it (a refusal at
        /// accept), in milliseconds.
        retry_after_ms: Option<u64>,
    },
    /// The server checks the client is alive.
    Ping,
    /// Answer to the client's `ping`.
    Pong,
    /// The server asks the client to reconnect within this window (see [`Outbound::GoAway`]).
    GoAway {
        /// The window, in milliseconds.
        reconnect_within_ms: u64,
    },
    /// Answer to the client's `hello`.
    Hello {
        /// The server's ping interval in milliseconds; 0 when its heartbeat is off.
        heartbeat_ms: u64,
        /// The largest object the server accepts, in bytes.
        max_frame: usize,
    },
}

/// A server message that cannot be understood.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("unreadable server message: {0}")]
pub struct ReplyError(String);

#[derive(Deserialize)]
struct WireReply<'a> {
    #[serde(rename = "type", borrow)]
    kind: Cow<'a, str>,
    #[serde(borrow, default)]
    id: Option<&'a RawValue>,
    #[serde(borrow, default)]
    code: Option<Cow<'a, str>>,
    #[serde(default)]
    message: Option<String>,
    #[serde(default)]
    heartbeat_ms: Option<u64>,
    #[serde(default)]
    max_frame: Option<usize>,
    #[serde(default)]
    reconnect_within_ms: Option<u64>,
    #[serde(default)]
    retry_after_ms: Option<u64>,
}

/// Interprets one object the server sent.
pub fn parse_reply(frame: &[u8]) -> Result<Reply, ReplyError> {
    let wire: WireReply<'_> =
        serde_json::from_slice(frame).map_err(|e| ReplyError(e.to_string()))?;
    let id = wire
        .id
        .map(|raw| Bytes::copy_from_slice(raw.get().as_bytes()));
    Ok(match wire.kind.as_ref() {
        "ack" => Reply::Ack {
            id: id.ok_or_else(|| ReplyError("an ack without id".into()))?,
        },
        "error" => {
            let code_text = wire.code.unwrap_or_default().into_owned();
            Reply::Error {
                code: ErrorCode::from_wire(&code_text),
                code_text,
                message: wire.message.unwrap_or_default(),
                id,
                retry_after_ms: wire.retry_after_ms,
            }
        }
        "ping" => Reply::Ping,
        "pong" => Reply::Pong,
        "goaway" => Reply::GoAway {
            reconnect_within_ms: wire.reconnect_within_ms.unwrap_or(0),
        },
        "hello" => Reply::Hello {
            heartbeat_ms: wire.heartbeat_ms.unwrap_or(0),
            max_frame: wire.max_frame.unwrap_or(usize::MAX),
        },
        other => return Err(ReplyError(format!("unknown type {other:?}"))),
    })
}

impl From<ItemError> for Outbound {
    fn from(error: ItemError) -> Outbound {
        Outbound::Error {
            code: error.code,
            message: Cow::Owned(error.message),
            id: error.id,
        }
    }
}

impl Outbound {
    /// Appends the message and a newline to `dst`.
    pub fn encode(&self, dst: &mut BytesMut) {
        match self {
            Outbound::Ack { id } => {
                dst.put_slice(b"{\"type\":\"ack\",\"id\":");
                dst.put_slice(id);
                dst.put_slice(b"}\n");
            }
            Outbound::Error { code, message, id } => {
                dst.put_slice(b"{\"type\":\"error\",\"code\":\"");
                dst.put_slice(code.as_str().as_bytes());
                dst.put_slice(b"\",\"message\":");
                let quoted =
                    serde_json::to_string(message.as_ref()).expect("a string always serialises");
                dst.put_slice(quoted.as_bytes());
                if let Some(id) = id {
                    dst.put_slice(b",\"id\":");
                    dst.put_slice(id);
                }
                dst.put_slice(b"}\n");
            }
            Outbound::Refused {
                code,
                message,
                retry_after_ms,
            } => {
                dst.put_slice(b"{\"type\":\"error\",\"code\":\"");
                dst.put_slice(code.as_str().as_bytes());
                dst.put_slice(b"\",\"message\":");
                let quoted = serde_json::to_string(message).expect("a string always serialises");
                dst.put_slice(quoted.as_bytes());
                dst.put_slice(format!(",\"retry_after_ms\":{retry_after_ms}}}\n").as_bytes());
            }
            Outbound::Ping => dst.put_slice(b"{\"type\":\"ping\"}\n"),
            Outbound::Pong => dst.put_slice(b"{\"type\":\"pong\"}\n"),
            Outbound::GoAway {
                reconnect_within_ms,
            } => {
                dst.put_slice(b"{\"type\":\"goaway\",\"reconnect_within_ms\":");
                dst.put_slice(itoa::Buffer::new().format(*reconnect_within_ms).as_bytes());
                dst.put_slice(b"}\n");
            }
            Outbound::Hello {
                heartbeat_ms,
                max_frame,
            } => {
                let line = format!(
                    "{{\"type\":\"hello\",\"server\":\"connwarden\",\"version\":\"{}\",\"heartbeat_ms\":{heartbeat_ms},\"max_frame\":{max_frame}}}\n",
                    env!("CARGO_PKG_VERSION")
                );
                dst.put_slice(line.as_bytes());
            }
        }
    }

    /// The message as one line, for callers that write a single message.
    pub fn to_line(&self) -> BytesMut {
        let mut buf = BytesMut::new();
        self.encode(&mut buf);
        buf
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dotted_quads_read_as_the_standard_library_reads_them() {
        let mut tried = 0;
        let pieces = [
            "", "0", "00", "01", "1", "9", "10", "99", "100", "255", "256", "300", "999", "1000",
            "a", "-1", "+1", " 1",
        ];
        for a in pieces {
            for b in ["0", "255", "01", ""] {
                for c in pieces {
                    for d in ["7", "256", "", "1.2", "3 "] {
                        let text = format!("{a}.{b}.{c}.{d}");
                        let std = text.parse::<std::net::Ipv4Addr>().ok();
                        let ours = dotted_quad(text.as_bytes());
                        assert!(
                            ours.is_none() || ours == std,
                            "{text:?}: {ours:?} vs {std:?}"
                        );
                        assert_eq!(ours.is_some(), std.is_some(), "{text:?}");
                        tried += 1;
                    }
                }
            }
        }
        for text in [
            "1.2.3",
            "1.2.3.4.5",
            "1..2.3",
            ".1.2.3",
            "1.2.3.",
            "::1",
            "1.2.3.4x",
        ] {
            assert_eq!(dotted_quad(text.as_bytes()), None, "{text}");
        }
        assert!(tried > 5_000);
    }

    #[test]
    fn every_code_is_at_its_index_in_all() {
        for (i, code) in ErrorCode::ALL.iter().enumerate() {
            assert_eq!(code.index(), i, "{code:?}");
        }
    }

    #[test]
    fn every_outbound_message_reads_back_as_a_reply() {
        let cases = [
            (
                Outbound::Ack {
                    id: Bytes::from_static(b"17"),
                },
                Reply::Ack {
                    id: Bytes::from_static(b"17"),
                },
            ),
            (
                Outbound::Error {
                    code: ErrorCode::QueueFull,
                    message: "full \"now\"".into(),
                    id: Some(Bytes::from_static(b"\"a\"")),
                },
                Reply::Error {
                    code: Some(ErrorCode::QueueFull),
                    code_text: "queue_full".into(),
                    message: "full \"now\"".into(),
                    id: Some(Bytes::from_static(b"\"a\"")),
                    retry_after_ms: None,
                },
            ),
            (
                Outbound::Refused {
                    code: ErrorCode::ServerFull,
                    message: "full",
                    retry_after_ms: 2500,
                },
                Reply::Error {
                    code: Some(ErrorCode::ServerFull),
                    code_text: "server_full".into(),
                    message: "full".into(),
                    id: None,
                    retry_after_ms: Some(2500),
                },
            ),
            (Outbound::Ping, Reply::Ping),
            (Outbound::Pong, Reply::Pong),
            (
                Outbound::GoAway {
                    reconnect_within_ms: 30_000,
                },
                Reply::GoAway {
                    reconnect_within_ms: 30_000,
                },
            ),
            (
                Outbound::Hello {
                    heartbeat_ms: 1500,
                    max_frame: 4096,
                },
                Reply::Hello {
                    heartbeat_ms: 1500,
                    max_frame: 4096,
                },
            ),
        ];
        for (outbound, reply) in cases {
            let mut line = BytesMut::new();
            outbound.encode(&mut line);
            assert_eq!(parse_reply(&line), Ok(reply));
        }
        assert!(parse_reply(br#"{"type":"nonsense"}"#).is_err());
        assert!(parse_reply(br#"{"type":"ack"}"#).is_err());
        for code in ErrorCode::ALL {
            assert_eq!(ErrorCode::from_wire(code.as_str()), Some(code));
        }
    }

    /// The server's one-step reading and the two steps it replaces give the same answers, in
    /// the same order, whatever the stream holds and however it is cut.
    #[test]
    fn next_message_answers_as_decode_and_interpret_do() {
        let stream = concat!(
            "{\"ip\":\"10.0.0.1\",\"id\":1}{\"IP\":\"::1\",\"id\":\"a\"}\n",
            "  {\n  \"ip\": \"10.0.0.2\",\n  \"n\": [1, 2]\n}\r\n",
            "not json\n{\"type\":\"ping\"}{\"type\":\"hello\",\"client_id\":\"c-1\"}",
            "{\"ip\":\"300.0.0.1\"}{\"n\":1}{\"ip\":1}{\"ip\":\"1.1.1.1\",\"Ip\":\"2.2.2.2\"}",
            "{\"ip\":\"1.2.3.4\",\"id\":[1]}{\"ip\":\"1.2.3.4\",\"x\":01}\u{c}",
            "{\"\\u0069p\":\"5.6.7.8\",\"s\":\"\\\"}\\u00e9\"}{\"ip\":\"9.9.9.9\",\"deep\":",
            "{\"a\":{\"b\":[{\"c\":\"}\"}]}}}{\"ip\":\"1.1.1.1\",\"long\":\"xxxxxxxxxxxxxxxxxxxxxxxx\"}",
            "{\"ip\":\"7.7.7.7\""
        );
        let read = |max_frame: usize, step: usize, one_step: bool| {
            let mut decoder = Decoder::new(max_frame);
            let (mut buf, mut fed, mut answers) = (BytesMut::new(), 0, Vec::new());
            loop {
                let eof = fed == stream.len();
                let end = fed.saturating_add(step).min(stream.len());
                buf.extend_from_slice(&stream.as_bytes()[fed..end]);
                fed = end;
                loop {
                    let next = if one_step {
                        next_message(&mut decoder, &mut buf, eof)
                    } else if eof {
                        decoder.decode_eof(&mut buf).map(|f| f.map(interpret))
                    } else {
                        decoder.decode(&mut buf).map(|f| f.map(interpret))
                    };
                    match next {
                        Ok(Some(answer)) => answers.push(Ok(answer)),
                        Ok(None) if eof => return answers,
                        Ok(None) => break,
                        Err(too_large) => {
                            answers.push(Err(too_large));
                            return answers;
                        }
                    }
                }
            }
        };
        for max_frame in [40, 64, 1 << 20] {
            let expected = read(max_frame, usize::MAX, false);
            assert!(expected.len() > 3, "{expected:?}");
            for step in [1, 2, 3, 7, 16, 33, usize::MAX] {
                let answers = read(max_frame, step, true);
                assert_eq!(answers, expected, "max_frame {max_frame}, step {step}");
            }
        }
        let whole = read(1 << 20, usize::MAX, true);
        let items = whole
            .iter()
            .filter(|a| matches!(a, Ok(Ok(Inbound::Item(_)))))
            .count();
        let refused = whole.iter().filter(|a| matches!(a, Ok(Err(_)))).count();
        assert_eq!((whole.len(), items, refused), (16, 6, 8), "{whole:#?}");
    }

    fn parse_str(s: &str) -> Result<Inbound, ItemError> {
        parse(Bytes::copy_from_slice(s.as_bytes()))
    }

    #[test]
    fn ip_key_is_case_insensitive_and_object_kept_whole() {
        let text = r#"{"IP":"192.0.2.7","extra":{"k":[1,2]},"id":17}"#;
        let Ok(Inbound::Item(item)) = parse_str(text) else {
            panic!("expected an item");
        };
        assert_eq!(item.ip, "192.0.2.7".parse::<IpAddr>().unwrap());
        assert_eq!(&item.raw[..], text.as_bytes());
        assert_eq!(item.id.as_deref(), Some(&b"17"[..]));
        assert!(matches!(
            parse_str(r#"{"Ip":"2001:db8::1"}"#),
            Ok(Inbound::Item(_))
        ));
    }

    #[test]
    fn bad_items_get_their_codes() {
        let code = |s| parse_str(s).unwrap_err().code;
        assert_eq!(code(r#"{"ip":"1.2.3"}"#), ErrorCode::InvalidIp);
        assert_eq!(code(r#"{"ip":7}"#), ErrorCode::InvalidIp);
        assert_eq!(
            code(r#"{"ip":"1.1.1.1","IP":"2.2.2.2"}"#),
            ErrorCode::InvalidIp
        );
        assert_eq!(code(r#"{"addr":"1.1.1.1"}"#), ErrorCode::MissingIp);
        assert_eq!(code(r#"{"ip":"1.1.1.1",}"#), ErrorCode::InvalidJson);
        assert_eq!(code(r#"{"ip":"1.1.1.1","id":[1]}"#), ErrorCode::InvalidId);
        assert_eq!(code(r#"{"type":"ack","id":1}"#), ErrorCode::UnexpectedType);
        assert_eq!(
            code("{\"ip\":\"1.1.1.1\",\"x\":\"\u{0}\"}"),
            ErrorCode::InvalidJson
        );
    }

    #[test]
    fn error_carries_the_id_when_readable() {
        let err = parse_str(r#"{"ip":"nope","id":"a-1"}"#).unwrap_err();
        assert_eq!(err.id.as_deref(), Some(&br#""a-1""#[..]));
    }

    #[test]
    fn a_lone_surrogate_is_kept_in_a_key_as_in_a_value() {
        for text in [
            r#"{"ip":"1.1.1.1","\uD9D1x":true}"#,
            r#"{"ip":"1.1.1.1","x":"\uD9D1"}"#,
            r#"{"\u0069p":"1.1.1.1"}"#,
            r#"{"\u0069p":"1.1.1.1","\uD800\n":1}"#,
        ] {
            assert!(matches!(parse_str(text), Ok(Inbound::Item(_))), "{text}");
        }
        let err = parse_str(r#"{"ip":"1.1.1.1","\uD9D1":1,"\uD9D1":2,"IP":"::1"}"#).unwrap_err();
        assert_eq!(err.code, ErrorCode::InvalidIp);
        let err = parse_str("{\"ip\":\"1.1.1.1\",\"a\u{1}b\":1}").unwrap_err();
        assert_eq!(
            err.code,
            ErrorCode::InvalidJson,
            "a raw control character in a key"
        );
    }

    #[test]
    fn only_a_string_or_number_id_is_echoed() {
        let err = parse_str(r#"{"type":"ack","id":7}"#).unwrap_err();
        assert_eq!(err.id.as_deref(), Some(&b"7"[..]));
        let err = parse_str("{\"type\":\"ack\",\"id\":{\n\"a\":1}}").unwrap_err();
        assert_eq!((err.code, err.id), (ErrorCode::UnexpectedType, None));
    }

    #[test]
    fn invalid_utf8_is_invalid_json() {
        let err = parse(Bytes::from_static(b"{\"ip\":\"1.1.1.1\",\"x\":\"\xff\"}")).unwrap_err();
        assert_eq!(err.code, ErrorCode::InvalidJson);
    }

    #[test]
    fn control_messages_and_client_types() {
        assert_eq!(
            parse_str(r#"{"type":"hello","client":"x"}"#),
            Ok(Inbound::Hello(Hello::default()))
        );
        assert_eq!(
            parse_str(r#"{"type":"hello","client_id":"a-1:b"}"#),
            Ok(Inbound::Hello(Hello {
                client_id: Some("a-1:b".into()),
                token: None,
            }))
        );
        assert_eq!(
            parse_str(r#"{"type":"hello","token":"s3cret-s3cret-s3cret"}"#),
            Ok(Inbound::Hello(Hello {
                client_id: None,
                token: Some("s3cret-s3cret-s3cret".into()),
            }))
        );
        // A token that is not a string is an empty one: no token matches it.
        assert_eq!(
            parse_str(r#"{"type":"hello","token":7}"#),
            Ok(Inbound::Hello(Hello {
                client_id: None,
                token: Some(String::new()),
            }))
        );
        let long = format!("{:?}", "x".repeat(129));
        for bad in [r#""""#, r#""a b""#, "7", long.as_str()] {
            let text = format!(r#"{{"type":"hello","client_id":{bad}}}"#);
            let err = parse_str(&text).unwrap_err();
            assert_eq!(err.code, ErrorCode::InvalidClientId, "{text}");
        }
        assert_eq!(parse_str(r#"{"type":"ping"}"#), Ok(Inbound::Ping));
        assert_eq!(parse_str(r#"{"type":"pong"}"#), Ok(Inbound::Pong));
        assert!(matches!(
            parse_str(r#"{"type":"login","ip":"1.1.1.1"}"#),
            Ok(Inbound::Item(_))
        ));
    }

    #[test]
    fn outbound_lines_are_valid_json() {
        let messages = [
            Outbound::Ack {
                id: Bytes::from_static(b"\"x\""),
            },
            Outbound::Error {
                code: ErrorCode::InvalidIp,
                message: "bad \"quote\"\n".into(),
                id: Some(Bytes::from_static(b"3")),
            },
            Outbound::Ping,
            Outbound::Pong,
            Outbound::GoAway {
                reconnect_within_ms: 0,
            },
            Outbound::Hello {
                heartbeat_ms: 15000,
                max_frame: 65536,
            },
        ];
        for message in messages {
            let line = message.to_line();
            assert_eq!(line.last(), Some(&b'\n'));
            let value: serde_json::Value = serde_json::from_slice(&line).unwrap();
            assert!(value["type"].is_string(), "{value}");
        }
    }
}
