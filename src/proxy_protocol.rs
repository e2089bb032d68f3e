//! The PROXY protocol header a load balancer (HAProxy, AWS NLB, Envoy) sends first on each
//! connection to tell who the client is: read here byte-exact, so that not one byte after the
//! header is taken from the connection (the client's first object, or its TLS `ClientHello`,
//! is the connection's to read), and parsed with the `ppp` crate.
//!
//! Reading stops exactly at the header's end by the rules of each version: a v2 header says
//! its length in its first 16 bytes; a v1 header ends at its first `\n` and is at most 107
//! bytes. Fifteen bytes, the shortest header of either version, are read first; then a v2
//! header's announced rest, or, for v1, what the socket holds up to the `\n` (`peek`, then a
//! read of that much: until the `\n` has come, every byte the socket holds is the header's).

use std::fmt;
use std::net::{IpAddr, SocketAddr};

use ppp::{v1, v2};
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

use crate::config::ProxyProtocol;

/// The shortest header of either version (`PROXY UNKNOWN\r\n`; a v2 header has 16 bytes).
const SHORTEST: usize = 15;
/// The longest v1 header, `\r\n` included (the specification's 107 bytes).
const V1_LONGEST: usize = 107;
/// A v2 header's fixed part: the signature, version and command, family, and length.
const V2_FIXED: usize = 16;

/// The addresses a header carries: the client's, and the one it connected to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProxiedAddresses {
    /// The client, as the load balancer saw it.
    pub source: SocketAddr,
    /// The address the client connected to (the load balancer's listener).
    pub destination: SocketAddr,
}

/// Why a connection's header was refused.
#[derive(Debug, PartialEq, Eq)]
pub enum HeaderError {
    /// The first bytes are not a header of the version in force.
    Missing {
        /// The version in force.
        expected: ProxyProtocol,
        /// The first bytes as they came (printable ASCII kept, the rest escaped).
        found: String,
    },
    /// A header of the version in force, but malformed (what `ppp` says of it).
    Malformed(String),
    /// The peer closed before its header was whole.
    Closed,
    /// The socket failed while the header was read.
    Io(std::io::ErrorKind),
}

impl fmt::Display for HeaderError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HeaderError::Missing { expected, found } => write!(
                f,
                "no PROXY protocol header ({} expected): the connection began with \"{found}\"",
                match expected {
                    ProxyProtocol::V1 => "v1",
                    ProxyProtocol::V2 => "v2",
                    _ => "v1 or v2",
                }
            ),
            HeaderError::Malformed(why) => write!(f, "malformed PROXY protocol header: {why}"),
            HeaderError::Closed => write!(
                f,
                "the peer closed before its PROXY protocol header was whole"
            ),
            HeaderError::Io(kind) => write!(f, "reading the PROXY protocol header failed: {kind}"),
        }
    }
}

impl std::error::Error for HeaderError {}

/// Whether `peer` may send a header: it is inside one of `trusted` (an IPv4-mapped IPv6 peer
/// counts as its IPv4 address).
pub fn is_trusted(peer: IpAddr, trusted: &[ipnet::IpNet]) -> bool {
    let peer = peer.to_canonical();
    trusted.iter().any(|net| net.contains(&peer))
}

/// Reads the connection's header as `accepted` allows (not [`ProxyProtocol::Off`]) and returns
/// the addresses it carries: `None` for a header that carries none (a v2 `LOCAL` command, as a
/// balancer's own health check sends, a v1 `UNKNOWN`, a non-IP family), where the socket's own
/// addresses stand. The caller bounds the wait (`handshake_timeout`).
pub async fn read_header(
    stream: &mut TcpStream,
    accepted: ProxyProtocol,
) -> Result<Option<ProxiedAddresses>, HeaderError> {
    let mut header = vec![0u8; SHORTEST];
    read_exact(stream, &mut header).await?;
    let is_v2 = header.starts_with(v2::PROTOCOL_PREFIX);
    let is_v1 = header.starts_with(b"PROXY ");
    let wanted = match accepted {
        ProxyProtocol::V1 => is_v1,
        ProxyProtocol::V2 => is_v2,
        _ => is_v1 || is_v2,
    };
    if !wanted {
        return Err(HeaderError::Missing {
            expected: accepted,
            found: header.escape_ascii().to_string(),
        });
    }
    if is_v2 {
        read_v2_rest(stream, &mut header).await?;
        let parsed = v2::Header::try_from(&header[..])
            .map_err(|error| HeaderError::Malformed(error.to_string()))?;
        Ok(v2_addresses(&parsed))
    } else {
        read_v1_rest(stream, &mut header).await?;
        let parsed = v1::Header::try_from(&header[..])
            .map_err(|error| HeaderError::Malformed(error.to_string()))?;
        Ok(v1_addresses(&parsed))
    }
}

/// Reads the rest of a v2 header whose first [`SHORTEST`] bytes are in `header`.
async fn read_v2_rest(stream: &mut TcpStream, header: &mut Vec<u8>) -> Result<(), HeaderError> {
    header.resize(V2_FIXED, 0);
    read_exact(stream, &mut header[SHORTEST..]).await?;
    let announced = u16::from_be_bytes([header[14], header[15]]) as usize;
    header.resize(V2_FIXED + announced, 0);
    read_exact(stream, &mut header[V2_FIXED..]).await
}

/// Reads the rest of a v1 header, up to and with its `\n`.
async fn read_v1_rest(stream: &mut TcpStream, header: &mut Vec<u8>) -> Result<(), HeaderError> {
    let mut peeked = [0u8; V1_LONGEST];
    while !header.ends_with(b"\n") {
        let room = V1_LONGEST - header.len();
        if room == 0 || header.contains(&b'\n') {
            // Longer than the specification allows, or a line that ended before its `\r\n`:
            // `ppp` names what is wrong with it.
            break;
        }
        let held = stream
            .peek(&mut peeked[..room])
            .await
            .map_err(|error| HeaderError::Io(error.kind()))?;
        if held == 0 {
            return Err(HeaderError::Closed);
        }
        let take = match peeked[..held].iter().position(|&b| b == b'\n') {
            Some(end) => end + 1,
            None => held,
        };
        let start = header.len();
        header.resize(start + take, 0);
        read_exact(stream, &mut header[start..]).await?;
    }
    Ok(())
}

async fn read_exact(stream: &mut TcpStream, into: &mut [u8]) -> Result<(), HeaderError> {
    match stream.read_exact(into).await {
        Ok(_) => Ok(()),
        Err(error) if error.kind() == std::io::ErrorKind::UnexpectedEof => Err(HeaderError::Closed),
        Err(error) => Err(HeaderError::Io(error.kind())),
    }
}

fn v2_addresses(header: &v2::Header<'_>) -> Option<ProxiedAddresses> {
    if header.command == v2::Command::Local {
        return None;
    }
    match header.addresses {
        v2::Addresses::IPv4(a) => Some(ProxiedAddresses {
            source: SocketAddr::from((a.source_address, a.source_port)),
            destination: SocketAddr::from((a.destination_address, a.destination_port)),
        }),
        v2::Addresses::IPv6(a) => Some(ProxiedAddresses {
            source: SocketAddr::from((a.source_address, a.source_port)),
            destination: SocketAddr::from((a.destination_address, a.destination_port)),
        }),
        v2::Addresses::Unspecified | v2::Addresses::Unix(_) => None,
    }
}

fn v1_addresses(header: &v1::Header<'_>) -> Option<ProxiedAddresses> {
    match header.addresses {
        v1::Addresses::Tcp4(a) => Some(ProxiedAddresses {
            source: SocketAddr::from((a.source_address, a.source_port)),
            destination: SocketAddr::from((a.destination_address, a.destination_port)),
        }),
        v1::Addresses::Tcp6(a) => Some(ProxiedAddresses {
            source: SocketAddr::from((a.source_address, a.source_port)),
            destination: SocketAddr::from((a.destination_address, a.destination_port)),
        }),
        v1::Addresses::Unknown => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;
    use tokio::net::TcpListener;

    /// The server's side of a loopback connection whose client wrote `chunks`, one write each
    /// (a short pause between them, so that they arrive apart), then `after`.
    async fn read_from(
        chunks: Vec<Vec<u8>>,
        after: &'static [u8],
        accepted: ProxyProtocol,
    ) -> (Result<Option<ProxiedAddresses>, HeaderError>, Vec<u8>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let client = tokio::spawn(async move {
            let mut stream = TcpStream::connect(addr).await.unwrap();
            for chunk in chunks {
                stream.write_all(&chunk).await.unwrap();
                stream.flush().await.unwrap();
                tokio::task::yield_now().await;
            }
            stream.write_all(after).await.unwrap();
            stream.shutdown().await.unwrap();
        });
        let (mut stream, _) = listener.accept().await.unwrap();
        let result = read_header(&mut stream, accepted).await;
        let mut rest = Vec::new();
        if result.is_ok() {
            stream.read_to_end(&mut rest).await.unwrap();
        }
        client.await.unwrap();
        (result, rest)
    }

    fn v2_header(source: &str, destination: &str) -> Vec<u8> {
        let source: SocketAddr = source.parse().unwrap();
        let destination: SocketAddr = destination.parse().unwrap();
        v2::Builder::with_addresses(
            v2::Version::Two | v2::Command::Proxy,
            v2::Protocol::Stream,
            (source, destination),
        )
        .write_tlv(v2::Type::NoOp, b"padding")
        .unwrap()
        .build()
        .unwrap()
    }

    #[tokio::test]
    async fn a_v2_header_gives_its_addresses_and_leaves_the_rest() {
        let header = v2_header("203.0.113.7:4567", "10.0.0.1:7000");
        let (result, rest) =
            read_from(vec![header], b"{\"ip\":\"10.0.0.1\"}\n", ProxyProtocol::V2).await;
        let addresses = result.unwrap().unwrap();
        assert_eq!(addresses.source, "203.0.113.7:4567".parse().unwrap());
        assert_eq!(addresses.destination, "10.0.0.1:7000".parse().unwrap());
        assert_eq!(rest, b"{\"ip\":\"10.0.0.1\"}\n");
    }

    #[tokio::test]
    async fn a_v2_header_in_pieces_is_read_whole() {
        let header = v2_header("[2001:db8::7]:4567", "[2001:db8::1]:7000");
        let chunks = header.chunks(5).map(<[u8]>::to_vec).collect();
        let (result, rest) = read_from(chunks, b"next", ProxyProtocol::Any).await;
        assert_eq!(
            result.unwrap().unwrap().source,
            "[2001:db8::7]:4567".parse().unwrap()
        );
        assert_eq!(rest, b"next");
    }

    #[tokio::test]
    async fn a_v1_header_in_pieces_stops_at_its_end() {
        let line = b"PROXY TCP4 203.0.113.7 10.0.0.1 4567 7000\r\n";
        let chunks = line.chunks(7).map(<[u8]>::to_vec).collect();
        let (result, rest) =
            read_from(chunks, b"PROXY is the client's now\n", ProxyProtocol::V1).await;
        assert_eq!(
            result.unwrap().unwrap().source,
            "203.0.113.7:4567".parse().unwrap()
        );
        assert_eq!(rest, b"PROXY is the client's now\n");
    }

    #[tokio::test]
    async fn the_shortest_v1_header_takes_nothing_after_it() {
        let (result, rest) = read_from(
            vec![b"PROXY UNKNOWN\r\n".to_vec()],
            b"x",
            ProxyProtocol::Any,
        )
        .await;
        assert_eq!(result, Ok(None));
        assert_eq!(rest, b"x");
    }

    #[tokio::test]
    async fn a_local_command_carries_no_address() {
        let header = v2::Builder::with_addresses(
            v2::Version::Two | v2::Command::Local,
            v2::Protocol::Unspecified,
            v2::Addresses::Unspecified,
        )
        .build()
        .unwrap();
        let (result, _) = read_from(vec![header], b"", ProxyProtocol::V2).await;
        assert_eq!(result, Ok(None));
    }

    #[tokio::test]
    async fn refusals_name_what_is_wrong() {
        let (result, _) = read_from(
            vec![b"{\"ip\":\"10.0.0.1\"}\n".to_vec()],
            b"",
            ProxyProtocol::Any,
        )
        .await;
        let error = result.unwrap_err();
        assert!(matches!(error, HeaderError::Missing { .. }), "{error:?}");
        assert!(
            error.to_string().contains("began with \"{\\\"ip\\\""),
            "{error}"
        );

        let v1 = b"PROXY TCP4 203.0.113.7 10.0.0.1 4567 7000\r\n".to_vec();
        let (result, _) = read_from(vec![v1], b"", ProxyProtocol::V2).await;
        assert!(matches!(
            result,
            Err(HeaderError::Missing {
                expected: ProxyProtocol::V2,
                ..
            })
        ));

        let bad = b"PROXY TCP4 203.0.113.999 10.0.0.1 4567 7000\r\n".to_vec();
        let (result, _) = read_from(vec![bad], b"", ProxyProtocol::V1).await;
        assert!(
            matches!(result, Err(HeaderError::Malformed(_))),
            "{result:?}"
        );

        let endless = [b"PROXY TCP4 ".as_slice(), &[b'1'; 120]].concat();
        let (result, _) = read_from(vec![endless], b"", ProxyProtocol::V1).await;
        assert!(
            matches!(result, Err(HeaderError::Malformed(_))),
            "{result:?}"
        );

        let cut = b"PROXY TCP4 203.0.113.7".to_vec();
        let (result, _) = read_from(vec![cut], b"", ProxyProtocol::V1).await;
        assert_eq!(result, Err(HeaderError::Closed));
    }

    #[test]
    fn trust_is_by_network() {
        let trusted = vec!["10.0.0.0/8".parse().unwrap(), "fd00::/8".parse().unwrap()];
        assert!(is_trusted("10.1.2.3".parse().unwrap(), &trusted));
        assert!(is_trusted("::ffff:10.1.2.3".parse().unwrap(), &trusted));
        assert!(is_trusted("fd00::1".parse().unwrap(), &trusted));
        assert!(!is_trusted("127.0.0.1".parse().unwrap(), &trusted));
        assert!(!is_trusted("11.0.0.1".parse().unwrap(), &trusted));
    }
}
