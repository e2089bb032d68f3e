//! A connection's two socket addresses in 20 bytes rather than two `SocketAddr`s' 64: the
//! registry entry is what every idle connection pays for, and the addresses were a third of it.
//!
//! The peer's address is kept whole (16 bytes of IPv6, IPv4 mapped into it, and the port).
//! The local address, of which a server has a handful (its listeners on its interfaces, or the
//! destinations a load balancer's PROXY headers name), is interned in a process-wide table and
//! kept as its index. An IPv6 peer's flow label is not kept (a hint for routers, of no use once
//! the connection is accepted); its scope is the local address's, which is the interface the
//! connection came in on (the kernel gives a scope to link-local addresses only).

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV6};
use std::sync::{LazyLock, Once, PoisonError, RwLock};

/// The peer's family, in the local index's high bit (an IPv4 peer and an IPv6 peer whose address
/// is IPv4-mapped are both kept, as they were accepted).
const PEER_V6: u16 = 1 << 15;
/// More distinct local addresses than a table of 15-bit indexes holds: the index past the last.
const TOO_MANY: u16 = PEER_V6 - 1;

/// The peer's and the local address of one connection.
#[derive(Clone, Copy)]
pub(super) struct Addresses {
    peer_ip: [u8; 16],
    peer_port: u16,
    /// The local address's index in [`LOCALS`], and [`PEER_V6`].
    local: u16,
}

impl Addresses {
    pub(super) fn new(peer: SocketAddr, local: SocketAddr) -> Addresses {
        let (peer_ip, family) = match peer.ip() {
            IpAddr::V4(ip) => (ip.to_ipv6_mapped().octets(), 0),
            IpAddr::V6(ip) => (ip.octets(), PEER_V6),
        };
        Addresses {
            peer_ip,
            peer_port: peer.port(),
            local: intern(local) | family,
        }
    }

    pub(super) fn peer(&self) -> SocketAddr {
        let ip = Ipv6Addr::from(self.peer_ip);
        if self.local & PEER_V6 == 0 {
            let v4 = ip.to_ipv4_mapped().unwrap_or(Ipv4Addr::UNSPECIFIED);
            return SocketAddr::new(IpAddr::V4(v4), self.peer_port);
        }
        let scope = match self.local() {
            SocketAddr::V6(local) if ip.is_unicast_link_local() => local.scope_id(),
            _ => 0,
        };
        SocketAddr::V6(SocketAddrV6::new(ip, self.peer_port, 0, scope))
    }

    pub(super) fn local(&self) -> SocketAddr {
        let index = self.local & !PEER_V6;
        let locals = LOCALS.read().unwrap_or_else(PoisonError::into_inner);
        match locals.addresses.get(usize::from(index)) {
            Some(local) => *local,
            None => SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0)),
        }
    }
}

impl std::fmt::Debug for Addresses {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Addresses")
            .field("peer", &self.peer())
            .field("local", &self.local())
            .finish()
    }
}

/// Every local address a connection of this process was accepted on, in the order first seen.
/// It never shrinks: its addresses are the listeners' and the balancers', a few per server.
#[derive(Default)]
struct Locals {
    addresses: Vec<SocketAddr>,
    index: HashMap<SocketAddr, u16>,
}

static LOCALS: LazyLock<RwLock<Locals>> = LazyLock::new(Default::default);

/// The index of `local`, added when new. Past 32,767 distinct addresses, [`TOO_MANY`] (read
/// back as `0.0.0.0:0`, as no address is kept there), with a warning the first time.
fn intern(local: SocketAddr) -> u16 {
    let known = LOCALS.read().unwrap_or_else(PoisonError::into_inner);
    if let Some(index) = known.index.get(&local) {
        return *index;
    }
    drop(known);
    let mut locals = LOCALS.write().unwrap_or_else(PoisonError::into_inner);
    if let Some(index) = locals.index.get(&local) {
        return *index;
    }
    let index = match u16::try_from(locals.addresses.len()) {
        Ok(index) if index < TOO_MANY => index,
        _ => {
            static WARNED: Once = Once::new();
            WARNED.call_once(|| tracing::warn!(limit = TOO_MANY, "more distinct local addresses than the registry keeps; later ones are listed as 0.0.0.0:0"));
            return TOO_MANY;
        }
    };
    locals.addresses.push(local);
    locals.index.insert(local, index);
    index
}

#[cfg(test)]
mod tests {
    use super::Addresses;
    use std::net::SocketAddr;

    #[test]
    fn both_addresses_read_back_as_accepted() {
        let cases = [
            ("10.1.2.3:4567", "127.0.0.1:7000"),
            ("[::ffff:10.1.2.3]:4567", "[::ffff:127.0.0.1]:7000"),
            ("[2001:db8::7]:65535", "[2001:db8::1]:7000"),
            ("[fe80::1%3]:1", "[fe80::2%3]:7000"),
            ("203.0.113.7:4567", "[2001:db8::1]:443"),
            ("[2001:db8::9]:2", "127.0.0.1:7000"),
        ];
        for (peer, local) in cases {
            let (peer, local): (SocketAddr, SocketAddr) =
                (peer.parse().unwrap(), local.parse().unwrap());
            let kept = Addresses::new(peer, local);
            assert_eq!((kept.peer(), kept.local()), (peer, local));
        }
        assert_eq!(std::mem::size_of::<Addresses>(), 20);
    }
}
