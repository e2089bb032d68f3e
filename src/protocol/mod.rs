//! The wire protocol: a stream of JSON objects (see `docs/PROTOCOL.md`).
//!
//! [`Decoder`] cuts complete objects out of a byte buffer, following JSON's grammar without
//! parsing values, each made one line (the whitespace between its tokens removed); a damaged
//! object is answered at the byte where it broke, so that the objects after it are read.
//! [`interpret`] turns one frame into an [`Inbound`] message or an [`ItemError`]; [`Outbound`]
//! encodes what the server sends and [`parse_reply`] reads it back on the client's side.
//! Nothing here does I/O.

mod decoder;
mod envelope;
mod message;

pub use decoder::{
    Broken, Decoder, DecoderState, Expected, Frame, FrameTooLarge, Truncated, MAX_FRAME_LIMIT,
    STACK_DEPTH,
};
pub use message::{
    check_client_id, interpret, next_message, parse, parse_reply, ErrorCode, Hello, Inbound, Item,
    ItemError, Outbound, Reply, ReplyError, MAX_CLIENT_ID,
};
