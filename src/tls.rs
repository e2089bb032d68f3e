//! TLS on the data listener: the server's certificate and key, read from PEM files and read
//! again at every reload, so that a renewed certificate is served without a restart.
//!
//! [`ServerTls`] holds the configuration new handshakes use. A reload that cannot read or use
//! the new files keeps the pair in force and says why; connections already open keep the
//! session they negotiated either way. The handshake and the records themselves are driven by
//! the connection ([`crate::conn`]) on its own socket: rustls is used without an I/O wrapper,
//! so that a plain connection pays nothing for TLS being possible.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use arc_swap::ArcSwapOption;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::ServerConnection;
use rustls::ServerConfig;

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
    pub fn accept(&self) -> Option<Result<ServerConnection, rustls::Error>> {
        let config = self.current.load_full()?;
        Some(ServerConnection::new(config))
    }
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
