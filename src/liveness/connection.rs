//! The two halves a handler gets: the [`Connection`], its bytes, and the [`Control`], the
//! layer's side of it.

use std::future::poll_fn;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use socket2::SockRef;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::Instant;

use super::watch::{State, Watch};
use super::{Signal, Timed};
use crate::close_reason::CloseReason;

/// One accepted connection, as its handler reads and writes it: an [`AsyncRead`] +
/// [`AsyncWrite`] over the socket that counts what passes (bytes and last activity each way,
/// in the registry entry and the metrics), takes every byte read as a sign of life (unless the
/// server was built with [`Life::Marked`](super::Life::Marked)), and names the socket error
/// that ends it (`keepalive_timeout`, `user_timeout`, `reset`), so that the close is recorded
/// with its reason whatever the handler returns.
///
/// Use it as it is or under a codec (`tokio_util::codec::Framed`); take its [`Control`] first.
///
/// `write_timeout` runs from a write the socket refused (its send buffer full) until a write
/// goes through: a handler that gives up on a write half done (its future dropped by a
/// `select!`) should finish it or close, or the clock keeps running.
///
/// ```no_run
/// use connwarden::liveness::Connection;
/// use tokio::io::{AsyncReadExt, AsyncWriteExt};
///
/// async fn echo(mut conn: Connection) -> std::io::Result<()> {
///     let mut buf = [0u8; 1024];
///     loop {
///         let n = conn.read(&mut buf).await?;
///         if n == 0 {
///             return Ok(()); // recorded as `peer_closed`
///         }
///         conn.write_all(&buf[..n]).await?;
///     }
/// }
/// ```
pub struct Connection {
    stream: TcpStream,
    watch: Arc<Watch>,
}

impl Connection {
    pub(super) fn new(stream: TcpStream, watch: Arc<Watch>) -> Connection {
        Connection { stream, watch }
    }

    /// The layer's side of this connection: its signals, and what the protocol says of it.
    pub fn control(&self) -> Control {
        Control {
            watch: Arc::clone(&self.watch),
        }
    }

    /// The registry id (as `/connections`, the logs and `kick` name it).
    pub fn id(&self) -> u64 {
        self.watch.info.id
    }

    /// The client's address.
    pub fn peer(&self) -> SocketAddr {
        self.watch.info.peer()
    }

    /// The server's address the client reached.
    pub fn local(&self) -> SocketAddr {
        self.watch.info.local()
    }

    /// Waits until the socket has bytes to read (or an error, or the peer's end), holding no
    /// buffer: a handler that reads only after this keeps no read buffer while its peer is
    /// silent, as the JSON gateway does (a codec's `Framed` keeps two of 8 KiB each for the
    /// connection's life). Then read with [`Connection::try_read_buf`].
    pub async fn readable(&self) -> io::Result<()> {
        self.stream.readable().await
    }

    /// Reads what the socket holds now, without waiting (`WouldBlock` when nothing is there),
    /// counted as every read is.
    pub fn try_read_buf(&mut self, buf: &mut bytes::BytesMut) -> io::Result<usize> {
        // `BytesMut` makes room for a read, so 0 bytes is the peer's end.
        let read = self.stream.try_read_buf(buf);
        self.count_read(&read, true);
        read
    }

    /// Counts a read's outcome: bytes received (life), the peer's end (0 bytes where there was
    /// room for more), or the socket error (`WouldBlock` is none: nothing was there yet).
    fn count_read(&self, read: &io::Result<usize>, had_room: bool) {
        match read {
            Ok(0) if had_room => self.watch.end_of_stream(),
            Ok(0) => {}
            Ok(n) => self.watch.received(*n),
            Err(error) if error.kind() == io::ErrorKind::WouldBlock => {}
            Err(error) => self.failed(error),
        }
    }

    /// Names a socket error (the cause of the close, if it is the first).
    fn failed(&self, error: &io::Error) {
        let eof = self.watch.state().contains(State::EOF);
        let reason = CloseReason::from_io_error(error, SockRef::from(&self.stream), eof)
            .unwrap_or(CloseReason::InternalError);
        self.watch.failed(reason);
    }
}

impl Drop for Connection {
    /// The registry reads `TCP_INFO` by descriptor while the entry is listed: it lets go of the
    /// descriptor before the socket closes, so that it never reads one the kernel gave again.
    fn drop(&mut self) {
        self.watch.release_socket();
    }
}

impl std::fmt::Debug for Connection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connection")
            .field("id", &self.id())
            .field("peer", &self.peer())
            .finish_non_exhaustive()
    }
}

impl AsyncRead for Connection {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let had_room = buf.remaining() > 0;
        let result = std::task::ready!(Pin::new(&mut self.stream).poll_read(cx, buf));
        let read = result.map(|()| buf.filled().len() - before);
        self.count_read(&read, had_room);
        Poll::Ready(read.map(drop))
    }
}

impl AsyncWrite for Connection {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.stream).poll_write(cx, buf);
        self.wrote(polled)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.stream).poll_write_vectored(cx, bufs);
        self.wrote(polled)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

impl Connection {
    /// Counts a write's outcome: bytes sent, a full send buffer (the write deadline runs), or
    /// the socket error.
    fn wrote(&self, polled: Poll<io::Result<usize>>) -> Poll<io::Result<usize>> {
        match &polled {
            Poll::Pending => self.watch.write_blocked(),
            Poll::Ready(Ok(n)) => self.watch.sent(*n),
            Poll::Ready(Err(error)) => self.failed(error),
        }
        polled
    }
}

/// The layer's side of a connection, for its handler: the signals to answer in the
/// protocol's own words, and what only the protocol can say (which frames are life, where a
/// frame begins and ends, whether the heartbeat applies). Cheap to clone; usable from any
/// task.
///
/// ```no_run
/// use connwarden::liveness::{Connection, Signal};
/// use futures_util::{SinkExt, StreamExt};
/// use tokio_util::codec::{Framed, LinesCodec};
///
/// async fn serve(conn: Connection) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
///     let control = conn.control();
///     let mut lines = Framed::new(conn, control.timed(LinesCodec::new_with_max_length(4096)));
///     loop {
///         tokio::select! {
///             line = lines.next() => match line {
///                 Some(line) => lines.send(line?).await?,
///                 None => return Ok(()),
///             },
///             signal = control.signal() => match signal {
///                 Signal::Ping => lines.send("PING").await?,
///                 Signal::Close(reason) => {
///                     lines.send(format!("BYE {reason}")).await?;
///                     return Ok(());
///                 }
///                 _ => {}
///             },
///         }
///     }
/// }
/// ```
#[derive(Clone)]
pub struct Control {
    watch: Arc<Watch>,
}

impl std::fmt::Debug for Control {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Control")
            .field("id", &self.watch.info.id)
            .finish_non_exhaustive()
    }
}

impl Control {
    /// The next signal for this connection. Cancel-safe: a signal is taken only when this
    /// returns it, so it fits in `tokio::select!` beside the reads. Once the layer decided to
    /// close, every call returns [`Signal::Close`] at once.
    pub async fn signal(&self) -> Signal {
        poll_fn(|cx| self.watch.poll_signal(cx)).await
    }

    /// The peer is alive now: what a server built with [`Life::Marked`](super::Life::Marked)
    /// calls for each frame that counts (a pong, any complete request). With
    /// [`Life::AnyByte`](super::Life::AnyByte) every byte read already counts, and a call here
    /// changes nothing.
    pub fn alive(&self) {
        self.watch.alive_at(Instant::now());
    }

    /// Turns the application heartbeat on for this connection (the server's `heartbeat` key is
    /// `negotiated`, and the client said it answers pings). Under `required` it is on from the
    /// accept; under `off` it never is.
    pub fn enable_heartbeat(&self) {
        self.watch.enable_heartbeat();
    }

    /// `codec` with this connection's frame clock and memory budget: a frame begins when bytes
    /// wait that make no whole frame, and ends when a frame is decoded; the bytes a partial
    /// frame holds count against `max_buffered` (the largest holders are closed first, as
    /// `memory_pressure`).
    pub fn timed<C>(&self, codec: C) -> Timed<C> {
        Timed::new(codec, self.clone())
    }

    /// The bytes of an incomplete frame (message, request) the handler holds now, said after
    /// each read by a handler that frames by hand ([`Control::timed`] says it for a codec).
    /// More than 0 begins a frame, or goes on with it: `frame_timeout` runs from the first
    /// such call until one with 0. The bytes count against `max_buffered` (the largest
    /// holders are closed first, as `memory_pressure`).
    pub fn pending(&self, bytes: usize) {
        self.watch.frame(bytes > 0);
        self.watch.hold(bytes);
    }

    /// Counts one message taken from the peer (the entry's `items`, in `/connections`).
    pub fn message(&self) {
        self.watch.info.item();
    }

    /// Counts one message refused (the entry's `errors`).
    pub fn refused(&self) {
        self.watch.info.error();
    }

    /// The registry id.
    pub fn id(&self) -> u64 {
        self.watch.info.id
    }
}
