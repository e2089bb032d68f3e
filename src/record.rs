//! A received item on its way to the sink, and the way back to its sender.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::SystemTime;

use bytes::Bytes;
use tokio::sync::mpsc::OwnedPermit;

use crate::protocol::{ErrorCode, Outbound};

/// One item with where and when it came from.
///
/// A record may hold a reserved slot in its connection's reply channel: the ack (or the
/// `queue_full` / `sink_failed` error) is then sent without waiting, whatever the client does.
#[derive(Debug)]
pub struct Record {
    /// The registry id of the connection the item came on.
    pub conn_id: u64,
    /// The client's address.
    pub peer: SocketAddr,
    /// When the server read the item.
    pub received_at: SystemTime,
    /// The address in the item's `ip` key.
    pub ip: IpAddr,
    /// The client's object as one line: its bytes with the whitespace between tokens removed,
    /// everything else (key order, escapes, number text) as sent (see `docs/PROTOCOL.md`,
    /// "Records in the sink"). [`Record::new`] keeps what it is given.
    pub item: Bytes,
    /// The raw JSON of the item's `"id"`, if it had one.
    pub id: Option<Bytes>,
    /// The `client_id` its connection's `hello` gave, if any.
    pub client_id: Option<Arc<str>>,
    /// The name its connection authenticated under (client certificate subject or token name).
    pub auth_name: Option<Arc<str>>,
    pub(crate) reply: Option<OwnedPermit<Outbound>>,
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
        Record {
            conn_id,
            peer,
            received_at: SystemTime::now(),
            ip,
            item,
            id,
            client_id: None,
            auth_name: None,
            reply: None,
        }
    }

    /// A copy without the reply slot, for sinks that hand records on.
    pub fn detached(&self) -> Record {
        Record {
            conn_id: self.conn_id,
            peer: self.peer,
            received_at: self.received_at,
            ip: self.ip,
            item: self.item.clone(),
            id: self.id.clone(),
            client_id: self.client_id.clone(),
            auth_name: self.auth_name.clone(),
            reply: None,
        }
    }

    /// The id that makes a resend of this item recognisable wherever it arrives: the client's
    /// `client_id` and the item's `id` (`client-7:42`). `None` unless the item has both: an item
    /// without them cannot be told apart from another one.
    pub fn message_id(&self) -> Option<String> {
        let (client, id) = (self.client_id.as_deref()?, self.id.as_deref()?);
        let id = std::str::from_utf8(id).ok()?;
        Some(format!("{client}:{id}"))
    }

    /// Appends the record as one NDJSON line: the item under `item`, as [`Record::item`] holds it,
    /// next to the connection id, the peer, the receive time and, when the client gave one, its
    /// `client_id`.
    pub fn write_ndjson(&self, dst: &mut Vec<u8>) {
        let received_at = humantime::format_rfc3339_micros(self.received_at);
        dst.extend_from_slice(b"{\"received_at\":\"");
        dst.extend_from_slice(received_at.to_string().as_bytes());
        dst.extend_from_slice(b"\",\"conn_id\":");
        dst.extend_from_slice(self.conn_id.to_string().as_bytes());
        dst.extend_from_slice(b",\"peer\":\"");
        dst.extend_from_slice(self.peer.to_string().as_bytes());
        dst.push(b'"');
        if let Some(client_id) = &self.client_id {
            // Printable ASCII without spaces (`check_client_id`): only `"` and `\` need an
            // escape, written in place rather than through an allocation per record.
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
            let _ = serde_json::to_writer(&mut *dst, &**name);
        }
        dst.extend_from_slice(b",\"item\":");
        dst.extend_from_slice(&self.item);
        dst.extend_from_slice(b"}\n");
    }

    /// The sink has the item: send its ack, if it asked for one. True when an ack was sent.
    pub fn acknowledge(self) -> bool {
        if let (Some(permit), Some(id)) = (self.reply, self.id) {
            permit.send(Outbound::Ack { id });
            return true;
        }
        false
    }

    /// The item was not stored: tell its sender why.
    pub fn reject(self, code: ErrorCode, message: &'static str) {
        if let Some(permit) = self.reply {
            permit.send(Outbound::Error {
                code,
                message: message.into(),
                id: self.id,
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
        record.client_id = Some(r#"a"b\c:d"#.into());
        let mut line = Vec::new();
        record.write_ndjson(&mut line);
        let value: serde_json::Value = serde_json::from_slice(&line).unwrap();
        assert_eq!(value["client_id"], r#"a"b\c:d"#);
        assert_eq!(value["item"]["id"], 7);
        assert_eq!(record.message_id().as_deref(), Some(r#"a"b\c:d:7"#));
    }
}
