//! `GET /connections` and `GET /closed`: parameters, filters, sorting and paging.
//!
//! Parameters are parsed by hand from the query's pairs, so that each mistake gets a message
//! that names the parameter and what it accepts, and a misspelt parameter is an error rather
//! than a filter silently not applied.

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant, SystemTime};

use ipnet::IpNet;

use super::{Closed, Connection, Page};
use crate::close_reason::CloseReason;
use crate::registry::{ConnInfo, Registry, SharedInfo};
use crate::sockopt::TcpInfo;

/// Entries per page when `limit` is not given.
pub const DEFAULT_LIMIT: usize = 100;
/// Most entries per page.
pub const MAX_LIMIT: usize = 10_000;

/// A parameter that does not parse; becomes a 400 answer.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct BadParameter(pub String);

/// What a connection listing is ordered by.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SortKey {
    /// Registry id: the order of accept.
    Id,
    /// Time since accept.
    Age,
    /// Time since the last byte received.
    Idle,
    /// Bytes received.
    BytesIn,
    /// Bytes sent.
    BytesOut,
    /// Items accepted.
    Items,
    /// Items refused.
    Errors,
    /// Smoothed round-trip time (`TCP_INFO`).
    Rtt,
    /// Unacknowledged segments (`TCP_INFO`).
    Unacked,
    /// Keep-alive probes sent and unanswered (`TCP_INFO`): the peers being tested now.
    Probes,
}

impl SortKey {
    const NAMES: &'static [(&'static str, SortKey)] = &[
        ("id", SortKey::Id),
        ("age", SortKey::Age),
        ("idle", SortKey::Idle),
        ("bytes_in", SortKey::BytesIn),
        ("bytes_out", SortKey::BytesOut),
        ("items", SortKey::Items),
        ("errors", SortKey::Errors),
        ("rtt", SortKey::Rtt),
        ("unacked", SortKey::Unacked),
        ("probes", SortKey::Probes),
    ];

    fn parse(text: &str) -> Result<SortKey, BadParameter> {
        SortKey::NAMES
            .iter()
            .find(|(name, _)| *name == text)
            .map(|(_, key)| *key)
            .ok_or_else(|| {
                let names: Vec<&str> = SortKey::NAMES.iter().map(|(n, _)| *n).collect();
                BadParameter(format!(
                    "sort={text:?}: expected one of {}",
                    names.join(", ")
                ))
            })
    }

    /// True when the key is read from `TCP_INFO`, so every connection's must be read to sort.
    fn needs_tcp_info(self) -> bool {
        matches!(self, SortKey::Rtt | SortKey::Unacked | SortKey::Probes)
    }
}

/// A peer filter: one address, one address and port, or a network in CIDR notation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PeerFilter {
    /// This address and port.
    Exact(SocketAddr),
    /// Any port of this network (a bare address is a /32 or /128).
    Net(IpNet),
}

impl PeerFilter {
    fn parse(text: &str) -> Result<PeerFilter, BadParameter> {
        if let Ok(addr) = text.parse::<SocketAddr>() {
            return Ok(PeerFilter::Exact(addr));
        }
        if let Ok(ip) = text.parse::<IpAddr>() {
            return Ok(PeerFilter::Net(IpNet::from(ip)));
        }
        text.parse::<IpNet>().map(PeerFilter::Net).map_err(|_| {
            BadParameter(format!(
                "peer={text:?}: expected an address (192.0.2.7), an address and port (192.0.2.7:5000) or a network (192.0.2.0/24)"
            ))
        })
    }

    fn matches(&self, peer: SocketAddr) -> bool {
        match self {
            PeerFilter::Exact(addr) => *addr == peer,
            PeerFilter::Net(net) => net.contains(&canonical(peer.ip())),
        }
    }
}

/// An IPv4-mapped IPv6 address as the IPv4 address it carries, so `192.0.2.0/24` matches a
/// client seen on a dual-stack listener.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// Paging: `offset` and `limit`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Paging {
    /// Entries skipped.
    pub offset: usize,
    /// Most entries returned.
    pub limit: usize,
}

/// The parameters of `GET /connections`.
#[derive(Clone, Debug, PartialEq)]
pub struct ConnQuery {
    /// Order.
    pub sort: SortKey,
    /// Largest first.
    pub descending: bool,
    /// Only connections from here.
    pub peer: Option<PeerFilter>,
    /// Only connections silent at least this long.
    pub min_idle: Option<Duration>,
    /// Only connections in this TCP state (`established`, `close_wait`, …).
    pub state: Option<String>,
    /// Which page.
    pub paging: Paging,
}

/// The parameters of `GET /closed`.
#[derive(Clone, Debug, PartialEq)]
pub struct ClosedQuery {
    /// Only closes with this reason.
    pub reason: Option<CloseReason>,
    /// Only connections from here.
    pub peer: Option<PeerFilter>,
    /// Which page (newest first).
    pub paging: Paging,
}

/// The query's pairs, each taken once by the parser that knows it.
struct Params(Vec<(String, String)>);

impl Params {
    fn take(&mut self, name: &str) -> Result<Option<String>, BadParameter> {
        let mut found = None;
        let mut i = 0;
        while i < self.0.len() {
            if self.0[i].0 == name {
                if found.is_some() {
                    return Err(BadParameter(format!("{name} is given twice")));
                }
                found = Some(self.0.remove(i).1);
            } else {
                i += 1;
            }
        }
        Ok(found)
    }

    fn finish(self, known: &str) -> Result<(), BadParameter> {
        match self.0.first() {
            Some((name, _)) => Err(BadParameter(format!(
                "unknown parameter {name:?}; known: {known}"
            ))),
            None => Ok(()),
        }
    }

    fn paging(&mut self) -> Result<Paging, BadParameter> {
        let number = |name: &str, text: String| {
            text.parse::<usize>()
                .map_err(|_| BadParameter(format!("{name}={text:?}: expected a whole number")))
        };
        let limit = match self.take("limit")? {
            Some(text) => number("limit", text)?,
            None => DEFAULT_LIMIT,
        };
        if limit == 0 || limit > MAX_LIMIT {
            return Err(BadParameter(format!(
                "limit={limit}: expected 1 to {MAX_LIMIT}"
            )));
        }
        let offset = match self.take("offset")? {
            Some(text) => number("offset", text)?,
            None => 0,
        };
        Ok(Paging { offset, limit })
    }

    fn peer(&mut self) -> Result<Option<PeerFilter>, BadParameter> {
        self.take("peer")?
            .map(|text| PeerFilter::parse(&text))
            .transpose()
    }
}

impl ConnQuery {
    /// Parses the query's pairs.
    pub fn parse(pairs: Vec<(String, String)>) -> Result<ConnQuery, BadParameter> {
        let mut params = Params(pairs);
        let sort = match params.take("sort")? {
            Some(text) => SortKey::parse(&text)?,
            None => SortKey::Id,
        };
        let descending = match params.take("order")?.as_deref() {
            None => sort != SortKey::Id,
            Some("desc") => true,
            Some("asc") => false,
            Some(other) => {
                return Err(BadParameter(format!(
                    "order={other:?}: expected asc or desc"
                )))
            }
        };
        let peer = params.peer()?;
        let min_idle = params
            .take("min_idle")?
            .map(|text| {
                crate::config::parse_duration(&text)
                    .map_err(|e| BadParameter(format!("min_idle={text:?}: {e}")))
            })
            .transpose()?;
        let state = params.take("state")?;
        let paging = params.paging()?;
        params.finish("sort, order, peer, min_idle, state, limit, offset")?;
        Ok(ConnQuery {
            sort,
            descending,
            peer,
            min_idle,
            state,
            paging,
        })
    }

    /// Runs the listing against `registry`. Reads `TCP_INFO` of every connection when the sort
    /// or the state filter needs it, else only of the page: call it off the runtime's workers.
    ///
    /// Filtering and sorting work on a small key per connection, read from the entry's atomics;
    /// only the page's connections are copied in full.
    pub fn run(&self, registry: &Registry) -> Page<Connection> {
        let (now, wall) = (Instant::now(), SystemTime::now());
        let mut entries = registry.entries();
        entries.retain(|entry| {
            self.peer.is_none_or(|p| p.matches(entry.peer()))
                && self.min_idle.is_none_or(|min| entry.idle_in_at(now) >= min)
        });
        let reads_all = self.sort.needs_tcp_info() || self.state.is_some();
        let tcp = reads_all.then(|| registry.tcp_info_of(&entries));
        let tcp_of = |i: usize| tcp.as_ref().and_then(|all| all[i].as_ref());
        let mut rows: Vec<(u64, u64, usize)> = (0..entries.len())
            .filter(|&i| match &self.state {
                Some(state) => tcp_of(i).is_some_and(|t| t.state == state.as_str()),
                None => true,
            })
            .map(|i| (self.key(&entries[i], tcp_of(i), now), entries[i].id, i))
            .collect();
        rows.sort_unstable_by(|(ka, ida, _), (kb, idb, _)| {
            let order = if self.descending {
                kb.cmp(ka)
            } else {
                ka.cmp(kb)
            };
            // Ties keep the order of accept, so pages do not overlap.
            order.then(ida.cmp(idb))
        });
        let total = rows.len();
        let page: Vec<usize> = rows
            .iter()
            .skip(self.paging.offset)
            .take(self.paging.limit)
            .map(|&(_, _, i)| i)
            .collect();
        let page_entries: Vec<SharedInfo> = page
            .iter()
            .map(|&i| SharedInfo::clone(&entries[i]))
            .collect();
        let page_tcp = match tcp {
            Some(mut all) => page.iter().map(|&i| all[i].take()).collect(),
            None => registry.tcp_info_of(&page_entries),
        };
        let items = page_entries
            .iter()
            .zip(page_tcp)
            .map(|(entry, tcp)| Connection::new(&registry.snapshot_of(entry, now, wall), tcp))
            .collect();
        Page {
            total,
            offset: self.paging.offset,
            items,
        }
    }

    /// The sort key of one connection (a missing `TCP_INFO` sorts as 0).
    fn key(&self, entry: &ConnInfo, tcp: Option<&TcpInfo>, now: Instant) -> u64 {
        match self.sort {
            SortKey::Id => entry.id,
            SortKey::Age => entry.age_at(now).as_millis() as u64,
            SortKey::Idle => entry.idle_in_at(now).as_millis() as u64,
            SortKey::BytesIn => entry.bytes_in(),
            SortKey::BytesOut => entry.bytes_out(),
            SortKey::Items => entry.items(),
            SortKey::Errors => entry.errors(),
            SortKey::Rtt => tcp.map_or(0, |t| t.rtt_us.into()),
            SortKey::Unacked => tcp.map_or(0, |t| t.unacked.into()),
            SortKey::Probes => tcp.map_or(0, |t| t.probes.into()),
        }
    }
}

impl ClosedQuery {
    /// Parses the query's pairs.
    pub fn parse(pairs: Vec<(String, String)>) -> Result<ClosedQuery, BadParameter> {
        let mut params = Params(pairs);
        let reason = params
            .take("reason")?
            .map(|text| {
                CloseReason::ALL
                    .into_iter()
                    .find(|r| r.as_str() == text)
                    .ok_or_else(|| {
                        let names: Vec<&str> =
                            CloseReason::ALL.iter().map(|r| r.as_str()).collect();
                        BadParameter(format!(
                            "reason={text:?}: expected one of {}",
                            names.join(", ")
                        ))
                    })
            })
            .transpose()?;
        let peer = params.peer()?;
        let paging = params.paging()?;
        params.finish("reason, peer, limit, offset")?;
        Ok(ClosedQuery {
            reason,
            peer,
            paging,
        })
    }

    /// The matching closes, newest first.
    pub fn run(&self, registry: &Registry) -> Page<Closed> {
        let matching: Vec<Closed> = registry
            .closed()
            .iter()
            .rev()
            .filter(|c| self.reason.is_none_or(|r| c.reason == r))
            .filter(|c| self.peer.is_none_or(|p| p.matches(c.peer)))
            .map(Closed::from)
            .collect();
        let total = matching.len();
        Page {
            total,
            offset: self.paging.offset,
            items: page(matching, self.paging).collect(),
        }
    }
}

fn page<T>(rows: Vec<T>, paging: Paging) -> impl Iterator<Item = T> {
    rows.into_iter().skip(paging.offset).take(paging.limit)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pairs(query: &[(&str, &str)]) -> Vec<(String, String)> {
        query
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn parses_every_parameter() {
        let query = ConnQuery::parse(pairs(&[
            ("sort", "idle"),
            ("peer", "10.0.0.0/8"),
            ("min_idle", "30s"),
            ("state", "established"),
            ("limit", "5"),
            ("offset", "10"),
        ]))
        .unwrap();
        assert_eq!(query.sort, SortKey::Idle);
        assert!(query.descending, "a measure sorts largest first by default");
        assert_eq!(query.min_idle, Some(Duration::from_secs(30)));
        assert_eq!(
            query.paging,
            Paging {
                offset: 10,
                limit: 5
            }
        );
        assert!(query.peer.unwrap().matches("10.1.2.3:4".parse().unwrap()));
        assert!(!query.peer.unwrap().matches("11.1.2.3:4".parse().unwrap()));
    }

    #[test]
    fn mistakes_name_the_parameter() {
        for (query, needle) in [
            (vec![("sort", "colour")], "sort=\"colour\""),
            (vec![("limit", "0")], "limit=0"),
            (vec![("limit", "10001")], "limit=10001"),
            (vec![("limt", "5")], "unknown parameter \"limt\""),
            (vec![("peer", "nowhere")], "peer=\"nowhere\""),
            (vec![("min_idle", "30")], "min_idle=\"30\""),
            (vec![("order", "up")], "order=\"up\""),
            (vec![("limit", "1"), ("limit", "2")], "twice"),
        ] {
            let error = ConnQuery::parse(pairs(&query)).unwrap_err().to_string();
            assert!(error.contains(needle), "{error:?} lacks {needle:?}");
        }
        let error = ClosedQuery::parse(pairs(&[("reason", "tired")]))
            .unwrap_err()
            .to_string();
        assert!(error.contains("keepalive_timeout"), "{error}");
    }

    #[test]
    fn mapped_ipv6_peers_match_ipv4_networks() {
        let filter = PeerFilter::parse("192.0.2.0/24").unwrap();
        assert!(filter.matches("[::ffff:192.0.2.9]:5000".parse().unwrap()));
        let exact = PeerFilter::parse("192.0.2.9:5000").unwrap();
        assert!(exact.matches("192.0.2.9:5000".parse().unwrap()));
        assert!(!exact.matches("192.0.2.9:5001".parse().unwrap()));
    }
}
