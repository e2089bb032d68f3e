//! Items as a client takes them: validated here with the server's own parser, so a bad line is
//! refused at its source, with its reason, and never takes a place in the window.

use std::net::IpAddr;

use bytes::Bytes;

use crate::protocol::{self, ErrorCode, Inbound, ItemError};

/// A JSON object the server will accept as an item. The client adds its `id` when sending.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OutItem(Bytes);

impl OutItem {
    /// Checks one JSON object: an item with a valid `ip` and no `id` (the client numbers items
    /// itself, to match acks to them).
    pub fn from_json(object: Bytes) -> Result<OutItem, ItemError> {
        match protocol::parse(object.clone()) {
            Ok(Inbound::Item(item)) if item.id.is_some() => Err(ItemError {
                code: ErrorCode::InvalidId,
                message: "the `id` key is reserved: the client numbers items to match acks".into(),
                id: None,
            }),
            Ok(Inbound::Item(_)) => Ok(OutItem(object)),
            Ok(_) => Err(ItemError {
                code: ErrorCode::UnexpectedType,
                message: "a control message (hello, ping, pong) is not an item".into(),
                id: None,
            }),
            Err(error) => Err(error),
        }
    }

    /// An item holding just an address.
    pub fn from_ip(ip: IpAddr) -> OutItem {
        OutItem(Bytes::from(format!("{{\"ip\":\"{ip}\"}}")))
    }

    /// One input line: a JSON object, or a bare IPv4 or IPv6 address. Surrounding whitespace
    /// is ignored; a blank line is `Ok(None)`.
    pub fn from_line(line: Bytes) -> Result<Option<OutItem>, ItemError> {
        let start = line.iter().take_while(|b| b.is_ascii_whitespace()).count();
        let end = line.len()
            - line[start..]
                .iter()
                .rev()
                .take_while(|b| b.is_ascii_whitespace())
                .count();
        let trimmed = line.slice(start..end);
        if trimmed.is_empty() {
            return Ok(None);
        }
        if trimmed[0] == b'{' {
            return OutItem::from_json(trimmed).map(Some);
        }
        let text = std::str::from_utf8(&trimmed).unwrap_or("");
        match text.parse::<IpAddr>() {
            Ok(ip) => Ok(Some(OutItem::from_ip(ip))),
            Err(_) => Err(ItemError {
                // What the server answers to the same bytes, unless they were meant as an
                // address.
                code: if looks_like_an_address(&trimmed) {
                    ErrorCode::InvalidIp
                } else {
                    ErrorCode::InvalidJson
                },
                message: format!(
                    "neither a JSON object nor an IPv4 or IPv6 address: {:?}",
                    String::from_utf8_lossy(&trimmed[..trimmed.len().min(80)])
                ),
                id: None,
            }),
        }
    }

    /// The object's bytes.
    pub fn as_bytes(&self) -> &Bytes {
        &self.0
    }

    pub(crate) fn into_bytes(self) -> Bytes {
        self.0
    }
}

/// True for one word of letters, digits, `.`, `:` and `%` holding a `.` or a `:`: an address
/// mistyped (`999.1.1.1`, `10.0.0`, `fe80::1%eth0`) rather than a line of something else.
fn looks_like_an_address(text: &[u8]) -> bool {
    text.iter()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b':' | b'%'))
        && text.iter().any(|b| matches!(b, b'.' | b':'))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(text: &str) -> Result<Option<OutItem>, ItemError> {
        OutItem::from_line(Bytes::copy_from_slice(text.as_bytes()))
    }

    #[test]
    fn lines_are_objects_or_bare_addresses() {
        assert_eq!(
            line("  10.1.2.3 \r\n")
                .unwrap()
                .unwrap()
                .as_bytes()
                .as_ref(),
            br#"{"ip":"10.1.2.3"}"#
        );
        assert_eq!(
            line("2001:db8::1").unwrap().unwrap().as_bytes().as_ref(),
            br#"{"ip":"2001:db8::1"}"#
        );
        assert_eq!(
            line(r#" {"IP":"1.1.1.1","x":[1]} "#)
                .unwrap()
                .unwrap()
                .as_bytes()
                .as_ref(),
            br#"{"IP":"1.1.1.1","x":[1]}"#
        );
        assert_eq!(line("   \n").unwrap(), None);
    }

    #[test]
    fn bad_lines_are_refused_with_the_servers_codes() {
        let code = |text| line(text).unwrap_err().code;
        assert_eq!(code("999.1.1.1"), ErrorCode::InvalidIp);
        assert_eq!(code("10.0.0"), ErrorCode::InvalidIp);
        assert_eq!(code("not an address"), ErrorCode::InvalidJson);
        assert_eq!(code(r#""seq": 7,"#), ErrorCode::InvalidJson);
        assert_eq!(code("}"), ErrorCode::InvalidJson);
        assert_eq!(code(r#"{"ip":"999.1.1.1"}"#), ErrorCode::InvalidIp);
        assert_eq!(code(r#"{"ip":"1.1.1.1""#), ErrorCode::InvalidJson);
        assert_eq!(code(r#"{"x":1}"#), ErrorCode::MissingIp);
        assert_eq!(code(r#"{"ip":"1.1.1.1","id":4}"#), ErrorCode::InvalidId);
        assert_eq!(code(r#"{"type":"ping"}"#), ErrorCode::UnexpectedType);
    }
}
