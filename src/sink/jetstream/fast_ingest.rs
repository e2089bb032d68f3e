//! The words of JetStream's fast-ingest batch protocol (ADR-50, nats-server 2.14+), as the
//! publisher uses them: the reply subject that carries a message's place in its batch, and what
//! the server answers on it.
//!
//! A batch is an inbox (`_INBOX.<id>`); each message's reply subject is
//! `<inbox>.<flow>.fail.<seq>.<op>.$FI`. With gaps set to `fail`, the stream stores a batch's
//! messages in order and without a gap: once one is missing (lost with a connection, or refused),
//! none after it is stored, and the batch ends with a publish ack that counts the ones stored.
//! That is what keeps each client's items in order across NATS failures.

use async_nats::jetstream;
use async_nats::StatusCode;
use serde::Deserialize;

/// What a message does to its batch (the `<op>` token).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Op {
    /// The first message: the server answers with the flow it allows.
    Start = 0,
    /// Every later message.
    Append = 1,
    /// Ends the batch without storing this (empty) message; answered with a publish ack once
    /// every earlier message is stored.
    CommitEob = 3,
    /// Asks for the latest flow ack again, and reports a gap if the server misses messages.
    Ping = 4,
}

/// The part of every reply subject of a batch that does not change: `<inbox>.<flow>.fail.`.
pub(super) fn reply_prefix(inbox: &str, max_flow: u16) -> String {
    format!("{inbox}.{max_flow}.fail.")
}

/// The reply subject of the message `seq` of a batch.
pub(super) fn reply_subject(prefix: &str, seq: u64, op: Op) -> String {
    format!("{prefix}{seq}.{}.$FI", op as u8)
}

/// Whether an inbox has the two tokens the server's reply parser expects.
pub(super) fn is_two_tokens(inbox: &str) -> bool {
    let mut tokens = inbox.split('.');
    matches!((tokens.next(), tokens.next(), tokens.next()), (Some(a), Some(b), None) if !a.is_empty() && !b.is_empty())
}

/// What the server sent on a batch's inbox.
#[derive(Debug, PartialEq)]
pub(super) enum Reply {
    /// Every message up to `seq` is stored; from now on an ack comes every `flow` messages.
    Flow { seq: u64, flow: u16 },
    /// Messages from `expected` on never reached the stream leader (a gap): the batch ends.
    Gap { expected: u64 },
    /// Message `seq` was refused: the batch ends.
    Refused {
        seq: u64,
        code: jetstream::ErrorCode,
    },
    /// The batch ended: its first `count` messages are stored. `duplicate` when the stream
    /// already had the batch's only message.
    Ended { count: u64, duplicate: bool },
    /// The batch ended without storing anything more than what was acknowledged, or was never
    /// started: the stream refused it.
    Failed { code: jetstream::ErrorCode },
    /// No stream listens on the subject (none yet, or none while its replicas elect a leader).
    NoResponders,
    /// Anything else; the publisher ignores it.
    Unknown,
}

#[derive(Deserialize)]
struct Wire {
    #[serde(rename = "type")]
    kind: Option<String>,
    seq: Option<u64>,
    msgs: Option<u16>,
    last_seq: Option<u64>,
    count: Option<u64>,
    #[serde(default)]
    duplicate: bool,
    error: Option<WireError>,
}

#[derive(Deserialize)]
struct WireError {
    #[serde(default)]
    err_code: jetstream::ErrorCode,
}

impl Reply {
    /// Reads one message received on a batch's inbox.
    pub(super) fn parse(status: Option<StatusCode>, payload: &[u8]) -> Reply {
        if status == Some(StatusCode::NO_RESPONDERS) {
            return Reply::NoResponders;
        }
        let Ok(wire) = serde_json::from_slice::<Wire>(payload) else {
            return Reply::Unknown;
        };
        let code = |wire: &Wire| {
            wire.error
                .as_ref()
                .map_or(jetstream::ErrorCode(0), |e| e.err_code)
        };
        match wire.kind.as_deref() {
            Some("ack") => Reply::Flow {
                seq: wire.seq.unwrap_or(0),
                flow: wire.msgs.unwrap_or(1).max(1),
            },
            Some("gap") => Reply::Gap {
                expected: wire.last_seq.unwrap_or(0),
            },
            Some("err") => Reply::Refused {
                seq: wire.seq.unwrap_or(0),
                code: code(&wire),
            },
            Some(_) => Reply::Unknown,
            None if wire.error.is_some() => Reply::Failed { code: code(&wire) },
            None => Reply::Ended {
                count: wire.count.unwrap_or(0),
                duplicate: wire.duplicate,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reply_subjects_carry_flow_gap_mode_sequence_and_operation() {
        let prefix = reply_prefix("_INBOX.abc", 250);
        assert_eq!(
            reply_subject(&prefix, 1, Op::Start),
            "_INBOX.abc.250.fail.1.0.$FI"
        );
        assert_eq!(
            reply_subject(&prefix, 42, Op::CommitEob),
            "_INBOX.abc.250.fail.42.3.$FI"
        );
        assert!(is_two_tokens("_INBOX.abc"));
        assert!(!is_two_tokens("_INBOX.app.abc"));
        assert!(!is_two_tokens("_INBOX"));
    }

    #[test]
    fn the_servers_answers_are_told_apart() {
        let parse = |json: &str| Reply::parse(None, json.as_bytes());
        assert_eq!(
            parse(r#"{"type":"ack","seq":10,"msgs":15}"#),
            Reply::Flow { seq: 10, flow: 15 }
        );
        assert_eq!(
            parse(r#"{"type":"gap","last_seq":10,"seq":15}"#),
            Reply::Gap { expected: 10 }
        );
        assert_eq!(
            parse(
                r#"{"type":"err","seq":10,"error":{"code":400,"err_code":10071,"description":"wrong last sequence: 1"}}"#
            ),
            Reply::Refused {
                seq: 10,
                code: jetstream::ErrorCode(10071)
            }
        );
        assert_eq!(
            parse(r#"{"stream":"S","seq":99,"batch":"_INBOX.abc","count":7}"#),
            Reply::Ended {
                count: 7,
                duplicate: false
            }
        );
        assert_eq!(
            parse(r#"{"stream":"S","seq":5,"duplicate": true,"batch":"_INBOX.abc","count":1}"#),
            Reply::Ended {
                count: 1,
                duplicate: true
            }
        );
        assert_eq!(
            parse(
                r#"{"error":{"code":400,"err_code":10208,"description":"batch publish ID unknown"},"stream":"S","seq":0}"#
            ),
            Reply::Failed {
                code: jetstream::ErrorCode(10208)
            }
        );
        assert_eq!(
            Reply::parse(Some(StatusCode::NO_RESPONDERS), b""),
            Reply::NoResponders
        );
        assert_eq!(parse("not json"), Reply::Unknown);
    }
}
