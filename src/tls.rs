//! TLS on the data listener: the server's certificate and key, read from PEM files and read
//! again at every reload, so that a renewed certificate is served without a restart.
//!
//! `ServerTls` holds the configuration new handshakes use. A reload that cannot read or use
//! the new files keeps the pair in force and says why; connections already open keep the
//! session they negotiated either way.
//!
//! [`TlsSession`] is the connection's transport: the connection's loop asks it to read the
//! records its socket holds (`TlsSession::read_from`) and gets plaintext, and hands it the
//! plaintext it appended to its output (`TlsSession::seal`) and gets records. rustls is used
//! without an I/O wrapper, on the connection's own socket and buffers, so that a plain
//! connection pays nothing for TLS being possible.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arc_swap::ArcSwapOption;
use bytes::BytesMut;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::UnbufferedServerConnection;
use rustls::ServerConfig;
use tokio::net::TcpStream;

use crate::buffer::{release_if_empty, READ_CHUNK};
use crate::close_reason::CloseReason;
use crate::config::Config;

/// Why a certificate or key cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file could not be read or holds no usable PEM.
    #[error("cannot read {what} from {path}: {reason}")]
    File {
        /// `certificate chain` or `private key`.
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// rustls refused the pair (a key that does not match the certificate, an unsupported
    /// key type, …).
    #[error("cannot use the certificate {cert} with the key {key}: {source}")]
    Pair {
        /// The certificate file.
        cert: PathBuf,
        /// The key file.
        key: PathBuf,
        /// Why.
        #[source]
        source: rustls::Error,
    },
    /// This build has no crypto provider (macOS, see README "Platforms").
    #[error("TLS is not available in this build for this platform (no crypto provider)")]
    Unsupported,
}

/// The crypto provider: ring, where it builds.
pub(crate) fn provider() -> Result<Arc<rustls::crypto::CryptoProvider>, TlsError> {
    #[cfg(not(target_vendor = "apple"))]
    {
        Ok(Arc::new(rustls::crypto::ring::default_provider()))
    }
    #[cfg(target_vendor = "apple")]
    {
        Err(TlsError::Unsupported)
    }
}

/// Reads a PEM certificate chain.
pub fn read_certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let fail = |reason: String| TlsError::File {
        what: "certificate chain",
        path: path.to_owned(),
        reason,
    };
    let certificates = CertificateDer::pem_file_iter(path)
        .map_err(|e| fail(e.to_string()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| fail(e.to_string()))?;
    if certificates.is_empty() {
        return Err(fail("no CERTIFICATE block".into()));
    }
    Ok(certificates)
}

/// Reads a PEM private key (PKCS#8, PKCS#1 or SEC1).
pub fn read_private_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_file(path).map_err(|e| TlsError::File {
        what: "private key",
        path: path.to_owned(),
        reason: e.to_string(),
    })
}

/// Builds the server configuration from the files `config` names; `None` when TLS is off.
pub fn server_config(config: &Config) -> Result<Option<Arc<ServerConfig>>, TlsError> {
    let (Some(cert), Some(key)) = (&config.tls_cert, &config.tls_key) else {
        return Ok(None);
    };
    let chain = read_certificates(cert)?;
    let private_key = read_private_key(key)?;
    let pair = |source| TlsError::Pair {
        cert: cert.clone(),
        key: key.clone(),
        source,
    };
    let provider = provider()?;
    let builder = ServerConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()
        .map_err(pair)?;
    let builder = match &config.tls_client_ca {
        None => builder.with_no_client_auth(),
        Some(ca) => builder.with_client_cert_verifier(client_verifier(ca, provider)?),
    };
    let mut server = builder.with_single_cert(chain, private_key).map_err(pair)?;
    // Items flow from the client; the server sends only acks and errors. No session
    // resumption state is kept per client: reconnects after a gateway restart do a full
    // handshake anyway.
    server.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
    Ok(Some(Arc::new(server)))
}

/// Requires a client certificate signed by the CA in `ca` (mutual TLS).
fn client_verifier(
    ca: &Path,
    provider: Arc<rustls::crypto::CryptoProvider>,
) -> Result<Arc<dyn rustls::server::danger::ClientCertVerifier>, TlsError> {
    let fail = |reason: String| TlsError::File {
        what: "client CA",
        path: ca.to_owned(),
        reason,
    };
    let mut roots = rustls::RootCertStore::empty();
    for certificate in read_certificates(ca)? {
        roots.add(certificate).map_err(|e| fail(e.to_string()))?;
    }
    rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
        .build()
        .map_err(|e| fail(e.to_string()))
}

/// The subject of a client's certificate (`CN=device-7,O=Fleet`), its authenticated name.
pub fn certificate_subject(certificate: &CertificateDer<'_>) -> Option<String> {
    let (_, parsed) = x509_parser::parse_x509_certificate(certificate.as_ref()).ok()?;
    Some(parsed.subject().to_string())
}

/// The TLS configuration new handshakes use; replaced at each reload.
#[derive(Debug, Default)]
pub(crate) struct ServerTls {
    current: ArcSwapOption<ServerConfig>,
}

impl ServerTls {
    /// Reads the files `config` names.
    pub fn new(config: &Config) -> Result<ServerTls, TlsError> {
        Ok(ServerTls {
            current: ArcSwapOption::new(server_config(config)?),
        })
    }

    /// Whether the data listener speaks TLS.
    pub fn enabled(&self) -> bool {
        self.current.load().is_some()
    }

    /// Reads the files again; on failure the pair in force stays, and the error is returned
    /// for the caller to log.
    pub fn reload(&self, config: &Config) -> Result<bool, TlsError> {
        let next = server_config(config)?;
        let reloaded = next.is_some();
        if reloaded {
            self.current.store(next);
        }
        Ok(reloaded)
    }

    /// A server-side session for a connection just accepted, or `None` when TLS is off.
    pub fn accept(&self) -> Option<Result<TlsSession, rustls::Error>> {
        let config = self.current.load_full()?;
        Some(UnbufferedServerConnection::new(config).map(TlsSession::new))
    }
}

/// One connection's TLS session, on rustls's unbuffered API: the buffers are the connection's
/// own and freed when empty, so an idle TLS connection keeps no record buffer (the buffered
/// API keeps 4 KiB per connection for ever).
///
/// The connection appends what it reads from the socket to [`TlsSession::incoming`] and calls
/// [`TlsSession::drive`], which decrypts application data into the connection's read buffer,
/// writes handshake records, alerts and encrypted output into its output buffer, and encrypts
/// the plaintext waiting in [`TlsSession::queue`] once the handshake allows it.
#[doc(hidden)]
pub struct TlsSession {
    conn: UnbufferedServerConnection,
    /// Records read from the socket and not yet processed: at most a partial record between
    /// reads, and nothing (no allocation) on an idle connection.
    pub incoming: bytes::BytesMut,
    /// Plaintext to encrypt, waiting for the handshake to allow it.
    pending: bytes::BytesMut,
    /// A `close_notify` is to be sent.
    close_requested: bool,
    /// The peer sent its `close_notify`.
    peer_closed: bool,
    /// This handshake's turn among those the server runs at once (`max_handshakes`), given
    /// back when the handshake ends (or the session goes).
    turn: Option<HandshakeTurn>,
    /// When this handshake's turn came, if handshakes go in turns: its `handshake_timeout`
    /// runs from then.
    turn_began: Option<std::time::Instant>,
}

/// A handshake's turn among the `max_handshakes` the server runs at once: dropping it gives
/// the turn back (whoever holds the place is told through the channel).
#[derive(Debug)]
pub(crate) struct HandshakeTurn {
    /// Held only to be dropped: its channel closing is the turn's end.
    _ended: tokio::sync::oneshot::Sender<()>,
}

impl HandshakeTurn {
    /// A turn that ends when it is dropped, as `ended` tells.
    pub(crate) fn new(ended: tokio::sync::oneshot::Sender<()>) -> HandshakeTurn {
        HandshakeTurn { _ended: ended }
    }
}

impl TlsSession {
    pub fn new(conn: UnbufferedServerConnection) -> TlsSession {
        TlsSession {
            conn,
            incoming: bytes::BytesMut::new(),
            pending: bytes::BytesMut::new(),
            close_requested: false,
            peer_closed: false,
            turn: None,
            turn_began: None,
        }
    }

    /// Holds `turn` until the handshake ends; the handshake's time runs from now.
    pub(crate) fn hold_turn(&mut self, turn: HandshakeTurn) {
        self.turn = Some(turn);
        self.turn_began = Some(std::time::Instant::now());
    }

    /// When this handshake's turn came, if handshakes go in turns.
    pub(crate) fn turn_began(&self) -> Option<std::time::Instant> {
        self.turn_began
    }

    /// True while the handshake is under way.
    pub fn is_handshaking(&self) -> bool {
        self.conn.is_handshaking()
    }

    /// The client's certificate chain, after a mutual TLS handshake.
    pub fn peer_certificates(&self) -> Option<&[CertificateDer<'static>]> {
        self.conn.peer_certificates()
    }

    /// True once the peer sent its `close_notify`.
    pub fn peer_closed(&self) -> bool {
        self.peer_closed
    }

    /// Queues `plaintext` for encryption (sent at the next [`TlsSession::drive`]).
    pub fn queue(&mut self, plaintext: &[u8]) {
        self.pending.extend_from_slice(plaintext);
    }

    /// Asks for a `close_notify` at the next [`TlsSession::drive`] that may send one.
    pub fn request_close(&mut self) {
        self.close_requested = true;
    }

    /// Reads the records `stream` holds, without waiting, and processes them: the plaintext is
    /// appended to `plain`, what rustls answers (handshake, alerts) to `out`.
    pub(crate) fn read_from(
        &mut self,
        stream: &tokio::net::TcpStream,
        plain: &mut BytesMut,
        out: &mut BytesMut,
    ) -> RecordsRead {
        let had_partial_record = !self.incoming.is_empty();
        self.incoming.reserve(READ_CHUNK);
        let read = stream.try_read_buf(&mut self.incoming);
        // Nothing came: the room reserved for it goes, or an idle connection would keep it.
        release_if_empty(&mut self.incoming);
        let n = match read {
            Ok(0) => return RecordsRead::Eof,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return RecordsRead::Nothing,
            Err(e) => return RecordsRead::Failed(e),
        };
        let was_handshaking = self.is_handshaking();
        let result = self.drive(plain, out);
        let handshaken = was_handshaking && !self.is_handshaking();
        if handshaken {
            self.turn = None;
        }
        let client_subject = match handshaken {
            true => self
                .peer_certificates()
                .and_then(|chain| chain.first())
                .and_then(certificate_subject),
            false => None,
        };
        RecordsRead::Records {
            bytes: n,
            record_begun: !had_partial_record && !self.incoming.is_empty(),
            handshaken,
            client_subject,
            peer_closed: self.peer_closed,
            result,
        }
    }

    /// Encrypts the plaintext appended to `out` from `plain_from` on: `out` then ends with its
    /// records instead (or, during the handshake, the plaintext waits in the session).
    /// Plaintext that processing brings in goes to `plain`.
    pub(crate) fn seal(
        &mut self,
        plain: &mut BytesMut,
        out: &mut BytesMut,
        plain_from: usize,
    ) -> Result<(), rustls::Error> {
        let plaintext = out.split_off(plain_from);
        self.queue(&plaintext);
        self.drive(plain, out)
    }

    /// Writes a `close_notify` into `out` (once the handshake allows one).
    pub(crate) fn close(&mut self, plain: &mut BytesMut, out: &mut BytesMut) {
        self.request_close();
        let _ = self.drive(plain, out);
    }

    /// True while a record has begun and not ended: the connection's `frame_timeout` runs.
    pub(crate) fn mid_record(&self) -> bool {
        !self.incoming.is_empty()
    }

    /// The memory the partial record holds, counted against `max_buffered`.
    pub(crate) fn held(&self) -> usize {
        self.incoming.capacity()
    }

    /// Processes what is in `incoming` and what is queued, until rustls needs more from the
    /// peer: application data goes to `plain`, records to send go to `out`.
    pub fn drive(
        &mut self,
        plain: &mut bytes::BytesMut,
        out: &mut bytes::BytesMut,
    ) -> Result<(), rustls::Error> {
        use rustls::unbuffered::{ConnectionState, UnbufferedStatus};
        // A TLS record starts with its content type (20 to 23): anything else before the
        // handshake is a peer that does not speak TLS, told at once rather than held until
        // the length its "header" claims has arrived.
        if self.conn.is_handshaking()
            && self
                .incoming
                .first()
                .is_some_and(|b| !(20..=23).contains(b))
        {
            return Err(rustls::Error::InvalidMessage(
                rustls::InvalidMessage::InvalidContentType,
            ));
        }
        loop {
            let UnbufferedStatus { mut discard, state } =
                self.conn.process_tls_records(&mut self.incoming[..]);
            let go_on = match state? {
                ConnectionState::ReadTraffic(mut traffic) => {
                    while let Some(record) = traffic.next_record() {
                        let record = record?;
                        discard += record.discard;
                        plain.extend_from_slice(record.payload);
                    }
                    true
                }
                ConnectionState::EncodeTlsData(mut encode) => {
                    write_grown(out, |buf| encode.encode(buf).map_err(EncodeFailure::from))?;
                    true
                }
                ConnectionState::TransmitTlsData(mut transmit) => {
                    // `out` goes to the socket in order, before anything appended later.
                    if let Some(mut traffic) = transmit.may_encrypt_app_data() {
                        encrypt_pending(&mut self.pending, &mut traffic, out)?;
                    }
                    transmit.done();
                    true
                }
                ConnectionState::WriteTraffic(mut traffic) => {
                    encrypt_pending(&mut self.pending, &mut traffic, out)?;
                    if std::mem::take(&mut self.close_requested) {
                        write_grown(out, |buf| {
                            traffic.queue_close_notify(buf).map_err(EncodeFailure::from)
                        })?;
                    }
                    false
                }
                ConnectionState::PeerClosed => {
                    self.peer_closed = true;
                    true
                }
                ConnectionState::Closed => {
                    self.peer_closed = true;
                    false
                }
                // Early data is not enabled; nothing else is waited for.
                _ => false,
            };
            bytes::Buf::advance(&mut self.incoming, discard);
            if !go_on {
                break;
            }
        }
        release_if_empty(&mut self.incoming);
        Ok(())
    }
}

/// What one [`TlsSession::read_from`] brought.
pub(crate) enum RecordsRead {
    /// The socket held nothing.
    Nothing,
    /// The peer ended the TCP stream.
    Eof,
    /// The socket failed.
    Failed(std::io::Error),
    /// Records arrived and were processed.
    Records {
        /// Bytes read from the socket.
        bytes: usize,
        /// A record began with this read (none was partial before): a peer sending a record a
        /// byte at a time is held to `frame_timeout` as one sending an object so.
        record_begun: bool,
        /// The handshake ended with this read.
        handshaken: bool,
        /// The handshake ended with this read, with a client certificate: its subject.
        client_subject: Option<String>,
        /// The peer has sent its `close_notify`.
        peer_closed: bool,
        /// How processing went: an error ends the connection ([`close_reason`]).
        result: Result<(), rustls::Error>,
    },
}

/// The reason a TLS failure closes its connection with: a refused client certificate is
/// `unauthorized`, the rest `tls_error`.
pub(crate) fn close_reason(error: &rustls::Error) -> CloseReason {
    match error {
        rustls::Error::InvalidCertificate(_) | rustls::Error::NoCertificatesPresented => {
            CloseReason::Unauthorized
        }
        _ => CloseReason::TlsError,
    }
}

/// Why encoding a record failed (other than room, which [`write_grown`] makes).
#[derive(Debug)]
enum EncodeFailure {
    Room(usize),
    Other(rustls::Error),
}

impl From<rustls::unbuffered::EncodeError> for EncodeFailure {
    fn from(error: rustls::unbuffered::EncodeError) -> EncodeFailure {
        match error {
            rustls::unbuffered::EncodeError::InsufficientSize(size) => {
                EncodeFailure::Room(size.required_size)
            }
            other => EncodeFailure::Other(rustls::Error::General(other.to_string())),
        }
    }
}

impl From<rustls::unbuffered::EncryptError> for EncodeFailure {
    fn from(error: rustls::unbuffered::EncryptError) -> EncodeFailure {
        match error {
            rustls::unbuffered::EncryptError::InsufficientSize(size) => {
                EncodeFailure::Room(size.required_size)
            }
            other => EncodeFailure::Other(rustls::Error::General(other.to_string())),
        }
    }
}

/// Appends to `out` what `write` puts in a buffer, growing the room it is given until it fits.
fn write_grown(
    out: &mut bytes::BytesMut,
    mut write: impl FnMut(&mut [u8]) -> Result<usize, EncodeFailure>,
) -> Result<(), rustls::Error> {
    let start = out.len();
    let mut room = 1024;
    loop {
        out.resize(start + room, 0);
        match write(&mut out[start..]) {
            Ok(n) => {
                out.truncate(start + n);
                return Ok(());
            }
            Err(EncodeFailure::Room(needed)) if needed > room => room = needed,
            Err(EncodeFailure::Room(_)) => room *= 2,
            Err(EncodeFailure::Other(error)) => {
                out.truncate(start);
                return Err(error);
            }
        }
    }
}

/// Encrypts the queued plaintext into `out`, and frees the queue.
fn encrypt_pending(
    pending: &mut bytes::BytesMut,
    traffic: &mut rustls::unbuffered::WriteTraffic<'_, rustls::server::ServerConnectionData>,
    out: &mut bytes::BytesMut,
) -> Result<(), rustls::Error> {
    if pending.is_empty() {
        return Ok(());
    }
    write_grown(out, |buf| {
        traffic.encrypt(pending, buf).map_err(EncodeFailure::from)
    })?;
    *pending = bytes::BytesMut::new();
    Ok(())
}

/// TLS on the client's side: whom to trust, what to present, which name to check.
#[derive(Clone, Debug)]
pub struct ClientTls {
    /// The rustls configuration every connection of the client uses.
    pub config: Arc<rustls::ClientConfig>,
    /// The name the server's certificate must carry; `None` takes the host of the address
    /// connected to (a DNS name or an IP address).
    pub server_name: Option<String>,
}

/// Two are equal when they share one rustls configuration and check the same name.
impl PartialEq for ClientTls {
    fn eq(&self, other: &ClientTls) -> bool {
        Arc::ptr_eq(&self.config, &other.config) && self.server_name == other.server_name
    }
}

impl Eq for ClientTls {}

impl ClientTls {
    /// Trusts the certificates in the PEM file `ca` (the server's own, or the CA that signed
    /// it), or the system's trust store without one; presents the certificate and key
    /// `identity`, when given, for mutual TLS.
    pub fn from_files(
        ca: Option<&Path>,
        identity: Option<(&Path, &Path)>,
        server_name: Option<String>,
    ) -> Result<ClientTls, TlsError> {
        let mut roots = rustls::RootCertStore::empty();
        match ca {
            Some(ca) => {
                for certificate in read_certificates(ca)? {
                    roots.add(certificate).map_err(|e| TlsError::File {
                        what: "CA certificate",
                        path: ca.to_owned(),
                        reason: e.to_string(),
                    })?;
                }
            }
            None => {
                let found = rustls_native_certs::load_native_certs();
                roots.add_parsable_certificates(found.certs);
                if roots.is_empty() {
                    return Err(TlsError::File {
                        what: "system trust store",
                        path: PathBuf::from("(system)"),
                        reason: "no certificate found: give the server's CA with --tls-ca".into(),
                    });
                }
            }
        }
        let builder = rustls::ClientConfig::builder_with_provider(provider()?)
            .with_safe_default_protocol_versions()
            .map_err(|source| TlsError::Pair {
                cert: PathBuf::new(),
                key: PathBuf::new(),
                source,
            })?
            .with_root_certificates(roots);
        let config = match identity {
            None => builder.with_no_client_auth(),
            Some((cert, key)) => builder
                .with_client_auth_cert(read_certificates(cert)?, read_private_key(key)?)
                .map_err(|source| TlsError::Pair {
                    cert: cert.to_owned(),
                    key: key.to_owned(),
                    source,
                })?,
        };
        Ok(ClientTls {
            config: Arc::new(config),
            server_name,
        })
    }

    /// The name to verify for a connection to `addr` (`host:port`).
    pub fn name_for(
        &self,
        addr: &str,
    ) -> Result<rustls::pki_types::ServerName<'static>, rustls::pki_types::InvalidDnsNameError>
    {
        let host = match &self.server_name {
            Some(name) => name.as_str(),
            None => host_of(addr),
        };
        rustls::pki_types::ServerName::try_from(host.to_owned())
    }
}

/// A client's connection over TLS.
pub(crate) type ClientStream = tokio_rustls::client::TlsStream<TcpStream>;

impl ClientTls {
    /// Shakes hands over `stream` with the server at `addr` (`host:port`), which must present a
    /// certificate for the name [`ClientTls::name_for`] gives.
    pub(crate) async fn connect(&self, addr: &str, stream: TcpStream) -> io::Result<ClientStream> {
        let name = self
            .name_for(addr)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        let connector = tokio_rustls::TlsConnector::from(Arc::clone(&self.config));
        connector.connect(name, stream).await
    }
}

/// The TCP socket under a client's TLS connection.
pub(crate) fn tcp_of(stream: &ClientStream) -> &TcpStream {
    stream.get_ref().0
}

/// The host part of `host:port` (`[v6]:port` too).
fn host_of(addr: &str) -> &str {
    let host = addr.rsplit_once(':').map_or(addr, |(host, _)| host);
    host.trim_start_matches('[').trim_end_matches(']')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_host_of_an_address_is_what_a_certificate_names() {
        assert_eq!(host_of("gw.example.com:7000"), "gw.example.com");
        assert_eq!(host_of("127.0.0.1:7000"), "127.0.0.1");
        assert_eq!(host_of("[::1]:7000"), "::1");
        assert_eq!(host_of("localhost"), "localhost");
    }
}
