//! A codec with the connection's frame clock and memory budget around it.

use bytes::BytesMut;
use tokio_util::codec::{Decoder, Encoder};

use super::Control;

/// A tokio-util codec that tells the layer where frames begin and end (for `frame_timeout`) and
/// how many bytes a partial frame holds (for `max_buffered`). Made by [`Control::timed`];
/// it decodes and encodes exactly as the codec it wraps.
///
/// ```no_run
/// # fn f(conn: connwarden::liveness::Connection) {
/// use tokio_util::codec::{Framed, LengthDelimitedCodec};
///
/// let control = conn.control();
/// let frames = Framed::new(conn, control.timed(LengthDelimitedCodec::new()));
/// # }
/// ```
#[derive(Debug)]
pub struct Timed<C> {
    codec: C,
    control: Control,
    /// The bytes last reported to the budget.
    held: usize,
}

impl<C> Timed<C> {
    pub(super) fn new(codec: C, control: Control) -> Timed<C> {
        Timed {
            codec,
            control,
            held: 0,
        }
    }

    /// The codec inside.
    pub fn get_ref(&self) -> &C {
        &self.codec
    }

    /// The codec inside, to change its settings.
    pub fn get_mut(&mut self) -> &mut C {
        &mut self.codec
    }

    /// After a decode: a frame that `ended`, and what waits in `src` (the start of the next
    /// frame, or nothing).
    fn after(&mut self, ended: bool, src: &BytesMut) {
        if ended {
            // What follows an ended frame is the next one's start: its clock starts now.
            self.control.pending(0);
        }
        self.held = src.len();
        self.control.pending(self.held);
    }
}

impl<C: Decoder> Decoder for Timed<C> {
    type Item = C::Item;
    type Error = C::Error;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<C::Item>, C::Error> {
        let decoded = self.codec.decode(src)?;
        self.after(decoded.is_some(), src);
        Ok(decoded)
    }

    fn decode_eof(&mut self, src: &mut BytesMut) -> Result<Option<C::Item>, C::Error> {
        let decoded = self.codec.decode_eof(src)?;
        self.after(decoded.is_some(), src);
        Ok(decoded)
    }
}

impl<I, C: Encoder<I>> Encoder<I> for Timed<C> {
    type Error = C::Error;

    fn encode(&mut self, item: I, dst: &mut BytesMut) -> Result<(), C::Error> {
        self.codec.encode(item, dst)
    }
}

impl<C> Drop for Timed<C> {
    /// A partial frame leaves the budget with the codec.
    fn drop(&mut self) {
        if self.held != 0 {
            self.control.pending(0);
        }
    }
}
