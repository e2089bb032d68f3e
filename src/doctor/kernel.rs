//! The kernel's defaults: what applies where a socket option is not set, and the limits that
//! bound a server. Read from `/proc/sys` (Linux); `None` where the platform has no such file.

use std::time::Duration;

/// Kernel settings that matter for dead-peer detection and for holding many connections.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct KernelDefaults {
    /// `net.ipv4.tcp_keepalive_time`, seconds: idle before the first probe when not set.
    pub tcp_keepalive_time: Option<u64>,
    /// `net.ipv4.tcp_keepalive_intvl`, seconds.
    pub tcp_keepalive_intvl: Option<u64>,
    /// `net.ipv4.tcp_keepalive_probes`.
    pub tcp_keepalive_probes: Option<u64>,
    /// `net.ipv4.tcp_retries2`: retransmissions before an unacknowledged connection is dropped
    /// when `TCP_USER_TIMEOUT` is not set.
    pub tcp_retries2: Option<u64>,
    /// `net.ipv4.tcp_rmem`: min, default, max receive buffer in bytes.
    pub tcp_rmem: Option<[u64; 3]>,
    /// `net.ipv4.tcp_wmem`: min, default, max send buffer in bytes.
    pub tcp_wmem: Option<[u64; 3]>,
    /// `net.core.rmem_max`: the largest `SO_RCVBUF` an unprivileged process may ask.
    pub rmem_max: Option<u64>,
    /// `net.core.wmem_max`: the largest `SO_SNDBUF` an unprivileged process may ask.
    pub wmem_max: Option<u64>,
    /// `net.core.somaxconn`: the cap on a listen backlog.
    pub somaxconn: Option<u64>,
    /// `net.core.netdev_max_backlog`: packets a CPU queues on receive from loopback, veth and
    /// other software devices before it drops them.
    pub netdev_max_backlog: Option<u64>,
    /// `fs.nr_open`: the cap on a process's open-file limit.
    pub nr_open: Option<u64>,
    /// `net.netfilter.nf_conntrack_tcp_timeout_established`, seconds (when conntrack is loaded):
    /// a NAT or firewall on this host forgets an idle connection after it.
    pub conntrack_established_timeout: Option<u64>,
    /// This process's open-file limit: soft.
    pub nofile_soft: Option<u64>,
    /// This process's open-file limit: hard.
    pub nofile_hard: Option<u64>,
}

impl KernelDefaults {
    /// Reads this machine's values.
    pub fn read() -> KernelDefaults {
        let (nofile_soft, nofile_hard) = nofile_limits();
        KernelDefaults {
            tcp_keepalive_time: number("net/ipv4/tcp_keepalive_time"),
            tcp_keepalive_intvl: number("net/ipv4/tcp_keepalive_intvl"),
            tcp_keepalive_probes: number("net/ipv4/tcp_keepalive_probes"),
            tcp_retries2: number("net/ipv4/tcp_retries2"),
            tcp_rmem: triple("net/ipv4/tcp_rmem"),
            tcp_wmem: triple("net/ipv4/tcp_wmem"),
            rmem_max: number("net/core/rmem_max"),
            wmem_max: number("net/core/wmem_max"),
            somaxconn: number("net/core/somaxconn"),
            netdev_max_backlog: number("net/core/netdev_max_backlog"),
            nr_open: number("fs/nr_open"),
            conntrack_established_timeout: number(
                "net/netfilter/nf_conntrack_tcp_timeout_established",
            ),
            nofile_soft,
            nofile_hard,
        }
    }

    /// The kernel's keep-alive bound for a socket that sets nothing: time + intvl × probes.
    pub fn default_keepalive_bound(&self) -> Option<Duration> {
        Some(Duration::from_secs(
            self.tcp_keepalive_time? + self.tcp_keepalive_intvl? * self.tcp_keepalive_probes?,
        ))
    }

    /// How long unacknowledged data is retransmitted without `TCP_USER_TIMEOUT`: the sum of
    /// the exponentially backed-off retransmission timeouts for `tcp_retries2` retries, from
    /// the 200 ms minimum up to the 120 s maximum (Linux's `TCP_RTO_MIN` / `TCP_RTO_MAX`).
    /// 924.6 s for the default 15. A longer round-trip time makes it longer still.
    pub fn retransmission_bound(&self) -> Option<Duration> {
        self.tcp_retries2.map(retransmission_bound)
    }
}

/// See [`KernelDefaults::retransmission_bound`].
pub fn retransmission_bound(retries: u64) -> Duration {
    let rto_min = Duration::from_millis(200);
    let rto_max = Duration::from_secs(120);
    (0..=retries)
        .map(|i| {
            rto_min
                .checked_mul(1u32.checked_shl(i.min(31) as u32).unwrap_or(u32::MAX))
                .map_or(rto_max, |rto| rto.min(rto_max))
        })
        .sum()
}

fn read_sys(path: &str) -> Option<String> {
    std::fs::read_to_string(format!("/proc/sys/{path}")).ok()
}

fn number(path: &str) -> Option<u64> {
    read_sys(path)?.trim().parse().ok()
}

fn triple(path: &str) -> Option<[u64; 3]> {
    let text = read_sys(path)?;
    let mut parts = text.split_whitespace().map(|p| p.parse::<u64>().ok());
    Some([parts.next()??, parts.next()??, parts.next()??])
}

fn nofile_limits() -> (Option<u64>, Option<u64>) {
    #[cfg(unix)]
    {
        match rlimit::getrlimit(rlimit::Resource::NOFILE) {
            Ok((soft, hard)) => (Some(soft), Some(hard)),
            Err(_) => (None, None),
        }
    }
    #[cfg(not(unix))]
    {
        (None, None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retransmission_bound_matches_the_documented_figures() {
        // 15 retries: 924.6 s (Documentation/networking/ip-sysctl.rst); 8 retries: ~100 s.
        assert_eq!(retransmission_bound(15), Duration::from_millis(924_600));
        assert_eq!(retransmission_bound(8), Duration::from_millis(102_200));
    }
}
