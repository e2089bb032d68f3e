//! TLS in a build without the `tls` feature: the types the connection, the server and the
//! client name, with no value ever made. [`TlsSession`] and [`ClientTls`] are uninhabited, so an
//! `Option` of either is always `None` and the code that handles `Some` compiles to nothing;
//! [`ServerTls`] is never enabled. `Config::validate` refuses `tls_cert` in such a build, and
//! [`ServerTls::new`] again, so no listener opens that a client would expect to speak TLS.

use std::convert::Infallible;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

use crate::close_reason::CloseReason;
use crate::config::Config;

/// Why TLS cannot be used: this build has none.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A certificate is configured, and this build cannot serve it.
    #[error("tls_cert needs connwarden built with the \"tls\" feature")]
    NotBuilt,
}

/// Refuses a configuration that asks for TLS.
fn refuse_tls(config: &Config) -> Result<(), TlsError> {
    match config.tls_cert {
        Some(_) => Err(TlsError::NotBuilt),
        None => Ok(()),
    }
}

/// The server configuration: never one, and an error when `config` asks for TLS.
pub fn server_config(config: &Config) -> Result<Option<Infallible>, TlsError> {
    refuse_tls(config).map(|()| None)
}

/// The data listener's TLS: never enabled.
#[derive(Debug, Default)]
pub(crate) struct ServerTls;

impl ServerTls {
    /// Refuses a configuration that asks for TLS.
    pub fn new(config: &Config) -> Result<ServerTls, TlsError> {
        refuse_tls(config).map(|()| ServerTls)
    }

    /// Never: the data listener speaks plain TCP.
    pub fn enabled(&self) -> bool {
        false
    }

    /// Refuses a configuration that asks for TLS; nothing to read again otherwise.
    pub fn reload(&self, config: &Config) -> Result<bool, TlsError> {
        refuse_tls(config).map(|()| false)
    }

    /// No session: every connection is plain.
    pub fn accept(&self) -> Option<Result<TlsSession, Infallible>> {
        None
    }
}

/// A connection's TLS session, of which this build has none.
#[doc(hidden)]
pub enum TlsSession {}

impl TlsSession {
    /// Unreachable: there is no session.
    pub fn is_handshaking(&self) -> bool {
        match *self {}
    }

    pub(crate) fn read_from(
        &mut self,
        _stream: &TcpStream,
        _plain: &mut BytesMut,
        _out: &mut BytesMut,
    ) -> RecordsRead {
        match *self {}
    }

    pub(crate) fn seal(
        &mut self,
        _plain: &mut BytesMut,
        _out: &mut BytesMut,
        _plain_from: usize,
    ) -> Result<(), Infallible> {
        match *self {}
    }

    pub(crate) fn close(&mut self, _plain: &mut BytesMut, _out: &mut BytesMut) {
        match *self {}
    }

    pub(crate) fn hold_turn(&mut self, _turn: HandshakeTurn) {
        match *self {}
    }

    pub(crate) fn turn_began(&self) -> Option<std::time::Instant> {
        match *self {}
    }

    pub(crate) fn mid_record(&self) -> bool {
        match *self {}
    }

    pub(crate) fn held(&self) -> usize {
        match *self {}
    }
}

/// What a read of records brought: the shape the connection matches, never made here.
#[allow(dead_code)]
pub(crate) enum RecordsRead {
    /// The socket held nothing.
    Nothing,
    /// The peer ended the TCP stream.
    Eof,
    /// The socket failed.
    Failed(io::Error),
    /// Records arrived and were processed.
    Records {
        bytes: usize,
        record_begun: bool,
        handshaken: bool,
        client_subject: Option<String>,
        peer_closed: bool,
        result: Result<(), Infallible>,
    },
}

/// A handshake's turn, given back when dropped (as in the TLS build; none is ever held here).
#[derive(Debug)]
pub(crate) struct HandshakeTurn {
    /// Held only to be dropped: its channel closing is the turn's end.
    _ended: tokio::sync::oneshot::Sender<()>,
}

impl HandshakeTurn {
    pub(crate) fn new(ended: tokio::sync::oneshot::Sender<()>) -> HandshakeTurn {
        HandshakeTurn { _ended: ended }
    }
}

/// Unreachable: no TLS failure happens without TLS.
pub(crate) fn close_reason(error: &Infallible) -> CloseReason {
    match *error {}
}

/// TLS on the client's side, of which this build has none: `ClientConfig::tls` is `None`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ClientTls {}

impl ClientTls {
    pub(crate) async fn connect(
        &self,
        _addr: &str,
        _stream: TcpStream,
    ) -> io::Result<ClientStream> {
        match *self {}
    }
}

/// A client's connection over TLS, of which this build has none.
pub(crate) enum ClientStream {}

/// Unreachable: there is no TLS connection.
pub(crate) fn tcp_of(stream: &ClientStream) -> &TcpStream {
    match *stream {}
}

impl AsyncRead for ClientStream {
    fn poll_read(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        _buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match *self {}
    }
}

impl AsyncWrite for ClientStream {
    fn poll_write(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        _buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match *self {}
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match *self {}
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match *self {}
    }
}
