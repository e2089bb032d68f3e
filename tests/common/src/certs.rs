//! Test certificates made on the spot with rcgen: a CA, server certificates it signs for
//! `localhost` and 127.0.0.1, client certificates for mutual TLS, and a synchronous TLS client
//! (rustls over a std socket) to talk to `serve` with.

use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose,
};

/// A certificate authority.
pub struct Ca {
    pub cert: rcgen::Certificate,
    pub key: KeyPair,
}

impl Ca {
    pub fn new(name: &str) -> Ca {
        let key = KeyPair::generate().expect("CA key");
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let cert = params.self_signed(&key).expect("CA certificate");
        Ca { cert, key }
    }

    /// A certificate for `localhost` and 127.0.0.1 (server) or named `name` (client):
    /// (certificate PEM, key PEM).
    pub fn issue(&self, name: &str, client: bool) -> (String, String) {
        let key = KeyPair::generate().expect("key");
        let names = match client {
            false => vec!["localhost".to_owned(), "127.0.0.1".to_owned()],
            true => Vec::new(),
        };
        let mut params = CertificateParams::new(names).expect("params");
        params.distinguished_name.push(DnType::CommonName, name);
        params.extended_key_usages = vec![match client {
            false => ExtendedKeyUsagePurpose::ServerAuth,
            true => ExtendedKeyUsagePurpose::ClientAuth,
        }];
        let cert = params
            .signed_by(&key, &self.cert, &self.key)
            .expect("certificate");
        (cert.pem(), key.serialize_pem())
    }

    /// Writes the CA's certificate to `dir/NAME.pem` and returns the path.
    pub fn write(&self, dir: &Path, name: &str) -> PathBuf {
        let path = dir.join(format!("{name}.pem"));
        std::fs::write(&path, self.cert.pem()).expect("write the CA");
        path
    }
}

/// Writes a (certificate, key) pair to `dir/NAME.crt` and `dir/NAME.key`.
pub fn write_pair(dir: &Path, name: &str, pair: &(String, String)) -> (PathBuf, PathBuf) {
    let cert = dir.join(format!("{name}.crt"));
    let key = dir.join(format!("{name}.key"));
    std::fs::write(&cert, &pair.0).expect("write the certificate");
    std::fs::write(&key, &pair.1).expect("write the key");
    (cert, key)
}

/// A rustls client configuration trusting `ca`, presenting `identity` (certificate PEM, key
/// PEM) when given.
pub fn client_config(ca: &Ca, identity: Option<&(String, String)>) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca.cert.der().clone()).expect("trust the CA");
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(roots);
    Arc::new(match identity {
        None => builder.with_no_client_auth(),
        Some((cert, key)) => {
            use rustls::pki_types::pem::PemObject;
            let chain = rustls::pki_types::CertificateDer::pem_slice_iter(cert.as_bytes())
                .collect::<Result<Vec<_>, _>>()
                .expect("certificate");
            let key =
                rustls::pki_types::PrivateKeyDer::from_pem_slice(key.as_bytes()).expect("key");
            builder.with_client_auth_cert(chain, key).expect("identity")
        }
    })
}

/// A blocking TLS connection to `serve`.
pub type TlsStream = rustls::StreamOwned<rustls::ClientConnection, TcpStream>;

/// Connects to `addr` over TLS, trusting `ca`, presenting `identity` when given. The
/// handshake completes (or fails) before it returns.
pub fn connect(
    addr: &str,
    ca: &Ca,
    identity: Option<&(String, String)>,
) -> Result<TlsStream, std::io::Error> {
    connect_over(TcpStream::connect(addr)?, ca, identity)
}

/// Speaks TLS on `socket`, already connected (after a PROXY protocol header, say), as
/// [`connect`] does.
pub fn connect_over(
    socket: TcpStream,
    ca: &Ca,
    identity: Option<&(String, String)>,
) -> Result<TlsStream, std::io::Error> {
    let config = client_config(ca, identity);
    let name = rustls::pki_types::ServerName::try_from("localhost").expect("name");
    let session = rustls::ClientConnection::new(config, name).expect("session");
    socket.set_read_timeout(Some(super::PROMPT))?;
    let mut stream = rustls::StreamOwned::new(session, socket);
    while stream.conn.is_handshaking() {
        stream.conn.complete_io(&mut stream.sock)?;
    }
    Ok(stream)
}

/// Sends `line` and returns the server's next line.
pub fn exchange(stream: &mut TlsStream, line: &str) -> serde_json::Value {
    stream
        .write_all(format!("{line}\n").as_bytes())
        .expect("send over TLS");
    stream.flush().expect("flush");
    let mut reply = String::new();
    BufReader::new(stream)
        .read_line(&mut reply)
        .expect("a line over TLS");
    serde_json::from_str(&reply).unwrap_or_else(|e| panic!("{e}: {reply:?}"))
}
