//! Opening a connection: resolve, create the socket, set its options with the server's code,
//! connect within a timeout, and shake hands over TLS when the client is configured for it.

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use socket2::SockRef;
use tokio::net::{TcpSocket, TcpStream};

use super::ClientConfig;
use crate::sockopt::{self, SocketOptions, SockoptError};
use crate::tls::{self, ClientStream};

/// Why a connection could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum DialError {
    /// The address does not resolve.
    #[error("cannot resolve {addr}")]
    Resolve {
        /// The address as configured.
        addr: String,
        #[source]
        /// The resolver's answer.
        source: io::Error,
    },
    /// The address resolves to nothing.
    #[error("{addr} resolves to no address")]
    NoAddress {
        /// The address as configured.
        addr: String,
    },
    /// A socket option could not be set.
    #[error("cannot prepare a socket for {addr}")]
    Sockopt {
        /// The address tried.
        addr: SocketAddr,
        #[source]
        /// The option that failed.
        source: SockoptError,
    },
    /// The connection was refused, unreachable, or not established in time.
    #[error("cannot connect to {addr}")]
    Connect {
        /// The address tried.
        addr: SocketAddr,
        #[source]
        /// Why.
        source: io::Error,
    },
    /// The TLS handshake failed (an untrusted or misnamed certificate, a refused client
    /// certificate, a server that does not speak TLS) or did not finish in time.
    #[error("TLS handshake with {addr} failed")]
    Tls {
        /// The address as configured.
        addr: String,
        #[source]
        /// Why.
        source: io::Error,
    },
}

/// An open connection: plain TCP, or TLS over it.
pub(super) enum Transport {
    Plain(TcpStream),
    Tls(Box<ClientStream>),
}

impl Transport {
    /// The TCP socket underneath.
    pub fn tcp(&self) -> &TcpStream {
        match self {
            Transport::Plain(stream) => stream,
            Transport::Tls(stream) => tls::tcp_of(stream),
        }
    }
}

/// Connects to the first of `config`'s addresses that answers, trying them in turn from the
/// one at `first` (modulo their number); returns the stream and the index of its address.
pub(super) async fn connect(
    config: &ClientConfig,
    first: usize,
) -> Result<(Transport, usize), DialError> {
    let addrs = config.addrs();
    let mut last = None;
    for step in 0..addrs.len() {
        let index = (first + step) % addrs.len();
        match connect_to(addrs[index], config).await {
            Ok(stream) => return Ok((stream, index)),
            Err(error) => {
                if addrs.len() > 1 {
                    tracing::debug!(addr = addrs[index], error = %error, "cannot connect; trying the next address");
                }
                last = Some(error);
            }
        }
    }
    Err(last.unwrap_or_else(|| DialError::NoAddress {
        addr: config.addr.clone(),
    }))
}

/// Connects to `addr`, over TLS when configured.
async fn connect_to(addr: &str, config: &ClientConfig) -> Result<Transport, DialError> {
    let stream = connect_tcp(addr, config).await?;
    let Some(tls) = &config.tls else {
        return Ok(Transport::Plain(stream));
    };
    let tls_error = |source| DialError::Tls {
        addr: addr.to_owned(),
        source,
    };
    match tokio::time::timeout(config.connect_timeout, tls.connect(addr, stream)).await {
        Ok(Ok(stream)) => Ok(Transport::Tls(Box::new(stream))),
        Ok(Err(error)) => Err(tls_error(error)),
        Err(_) => Err(tls_error(io::Error::new(
            io::ErrorKind::TimedOut,
            "the handshake did not finish within the connect timeout",
        ))),
    }
}

/// Connects to the first address `addr` resolves to that answers.
async fn connect_tcp(addr: &str, config: &ClientConfig) -> Result<TcpStream, DialError> {
    let resolved = tokio::time::timeout(config.connect_timeout, tokio::net::lookup_host(addr))
        .await
        .unwrap_or_else(|_| Err(io::Error::new(io::ErrorKind::TimedOut, "timed out")))
        .map_err(|source| DialError::Resolve {
            addr: addr.to_owned(),
            source,
        })?;
    let options = config.socket_options();
    let mut last = None;
    for addr in resolved {
        match connect_one(addr, &options, config.connect_timeout).await {
            Ok(stream) => return Ok(stream),
            Err(error) => last = Some(error),
        }
    }
    Err(last.unwrap_or_else(|| DialError::NoAddress {
        addr: addr.to_owned(),
    }))
}

async fn connect_one(
    addr: SocketAddr,
    options: &SocketOptions,
    timeout: Duration,
) -> Result<TcpStream, DialError> {
    let connect_error = |source| DialError::Connect { addr, source };
    let socket = match addr {
        SocketAddr::V4(_) => TcpSocket::new_v4(),
        SocketAddr::V6(_) => TcpSocket::new_v6(),
    }
    .map_err(connect_error)?;
    // Buffers before `connect`, so the window scale negotiated in the handshake fits them;
    // liveness options before the first byte, so no instant of the connection is unbounded.
    let prepare = sockopt::apply_buffers(SockRef::from(&socket), options)
        .and_then(|()| sockopt::apply(SockRef::from(&socket), options));
    prepare.map_err(|source| DialError::Sockopt { addr, source })?;
    match tokio::time::timeout(timeout, socket.connect(addr)).await {
        Ok(connected) => connected.map_err(connect_error),
        Err(_) => Err(connect_error(io::Error::new(
            io::ErrorKind::TimedOut,
            format!(
                "not established within {}",
                humantime::format_duration(timeout)
            ),
        ))),
    }
}

/// Reads the options back from a connected socket, logs them, and warns about each the kernel
/// changed.
pub(super) fn check_options(stream: &TcpStream, asked: &SocketOptions) {
    let effective = sockopt::read_back(SockRef::from(stream));
    tracing::info!(effective = %effective, "client socket options in force");
    sockopt::warn_mismatches(&effective, asked, "client");
}
