//! Socket options that bound dead-peer detection: set them, then read back what the kernel keeps.
//!
//! The options are applied to the listening socket (accepted sockets inherit them on Linux, so
//! they are in force from the first instant) and again to every accepted socket before its first
//! read (where a platform does not inherit, they still cannot be missed). [`read_back`] reports
//! what is in force and [`Effective::mismatches`] names each option the kernel changed or refused.
//!
//! Platform support: Linux and Android have every option. macOS, iOS, FreeBSD and NetBSD lack
//! `TCP_USER_TIMEOUT`. Windows sets keep-alive idle and interval (the probe count is fixed by the
//! system at 10) and cannot read them back. [`Support`] says which options this build has.

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use socket2::{Domain, SockRef, Socket, TcpKeepalive, Type};

use crate::config::{Config, Keepalive};

/// Options that keep a connection's liveness bounded, applied to every connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SocketOptions {
    /// Keep-alive idle, interval and count.
    pub keepalive: Keepalive,
    /// `TCP_USER_TIMEOUT`; `None` leaves the kernel's retransmission limit (`tcp_retries2`).
    pub user_timeout: Option<Duration>,
    /// `TCP_NODELAY`: acks and pings leave at once.
    pub nodelay: bool,
    /// `SO_RCVBUF`; `None` keeps kernel autotuning.
    pub recv_buffer: Option<usize>,
    /// `SO_SNDBUF`; `None` keeps kernel autotuning.
    pub send_buffer: Option<usize>,
}

impl SocketOptions {
    /// The options a [`Config`] asks for.
    pub fn from_config(config: &Config) -> SocketOptions {
        SocketOptions {
            keepalive: config.keepalive,
            user_timeout: config.effective_user_timeout(),
            nodelay: config.nodelay,
            recv_buffer: config.recv_buffer,
            send_buffer: config.send_buffer,
        }
    }
}

/// Options of the listening socket itself.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ListenerOptions {
    /// `SO_REUSEPORT`.
    pub reuse_port: bool,
    /// Accept queue length passed to `listen(2)`.
    pub backlog: u32,
}

/// Which options this build can set and read back.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Support {
    /// `TCP_KEEPINTVL` can be set.
    pub keepalive_interval: bool,
    /// `TCP_KEEPCNT` can be set.
    pub keepalive_count: bool,
    /// `TCP_USER_TIMEOUT` can be set.
    pub user_timeout: bool,
    /// `SO_REUSEPORT` can be set.
    pub reuse_port: bool,
    /// Keep-alive idle, interval and count can be read back.
    pub read_back_keepalive: bool,
}

/// What this platform supports.
pub const SUPPORT: Support = Support {
    keepalive_interval: cfg!(any(full_keepalive, windows)),
    keepalive_count: cfg!(full_keepalive),
    user_timeout: cfg!(user_timeout),
    reuse_port: cfg!(all(
        unix,
        not(any(target_os = "solaris", target_os = "illumos"))
    )),
    read_back_keepalive: cfg!(full_keepalive),
};

impl Support {
    /// Names of the options this platform lacks, for a start-up warning.
    pub fn missing(&self) -> Vec<&'static str> {
        let mut missing = Vec::new();
        if !self.keepalive_interval {
            missing.push("TCP_KEEPINTVL");
        }
        if !self.keepalive_count {
            missing.push("TCP_KEEPCNT");
        }
        if !self.user_timeout {
            missing.push("TCP_USER_TIMEOUT");
        }
        if !self.reuse_port {
            missing.push("SO_REUSEPORT");
        }
        missing
    }
}

/// A failure to set an option; names the option.
#[derive(Debug, thiserror::Error)]
#[error("cannot set {option}")]
pub struct SockoptError {
    /// The option, as named in the system's headers.
    pub option: &'static str,
    #[source]
    /// The system's answer.
    pub source: io::Error,
}

fn named(option: &'static str) -> impl FnOnce(io::Error) -> SockoptError {
    move |source| SockoptError { option, source }
}

/// Sets keep-alive (idle, interval, count), the user timeout and `TCP_NODELAY` on a socket.
/// Call it before the first read: from then on a dead peer is bounded.
pub fn apply(socket: SockRef<'_>, options: &SocketOptions) -> Result<(), SockoptError> {
    socket
        .set_tcp_keepalive(&keepalive_params(&options.keepalive))
        .map_err(named("SO_KEEPALIVE/TCP_KEEPIDLE/TCP_KEEPINTVL/TCP_KEEPCNT"))?;
    set_user_timeout(&socket, options.user_timeout)?;
    socket
        .set_nodelay(options.nodelay)
        .map_err(named("TCP_NODELAY"))?;
    Ok(())
}

/// Sets the buffer sizes. They must be set before `listen` or `connect` to take part in the
/// window negotiated at the handshake; accepted sockets inherit the listener's.
pub fn apply_buffers(socket: SockRef<'_>, options: &SocketOptions) -> Result<(), SockoptError> {
    if let Some(size) = options.recv_buffer {
        socket
            .set_recv_buffer_size(size)
            .map_err(named("SO_RCVBUF"))?;
    }
    if let Some(size) = options.send_buffer {
        socket
            .set_send_buffer_size(size)
            .map_err(named("SO_SNDBUF"))?;
    }
    Ok(())
}

fn keepalive_params(keepalive: &Keepalive) -> TcpKeepalive {
    let params = TcpKeepalive::new().with_time(keepalive.idle);
    #[cfg(any(full_keepalive, windows))]
    let params = params.with_interval(keepalive.interval);
    #[cfg(full_keepalive)]
    let params = params.with_retries(keepalive.count);
    params
}

#[cfg(user_timeout)]
fn set_user_timeout(socket: &SockRef<'_>, timeout: Option<Duration>) -> Result<(), SockoptError> {
    socket
        .set_tcp_user_timeout(timeout)
        .map_err(named("TCP_USER_TIMEOUT"))
}

#[cfg(not(user_timeout))]
fn set_user_timeout(_socket: &SockRef<'_>, _timeout: Option<Duration>) -> Result<(), SockoptError> {
    Ok(())
}

/// Creates, configures, binds and listens: address reuse, optional `SO_REUSEPORT`, buffers and
/// liveness options are all set before `listen`, so no accepted socket can be without them.
pub fn bind_listener(
    addr: SocketAddr,
    listener: &ListenerOptions,
    options: &SocketOptions,
) -> Result<std::net::TcpListener, ListenError> {
    let wrap = |stage: &'static str| {
        move |source| ListenError {
            addr,
            stage,
            source,
        }
    };
    let socket =
        Socket::new(Domain::for_address(addr), Type::STREAM, None).map_err(wrap("socket"))?;
    #[cfg(unix)]
    socket
        .set_reuse_address(true)
        .map_err(wrap("SO_REUSEADDR"))?;
    if listener.reuse_port {
        #[cfg(all(unix, not(any(target_os = "solaris", target_os = "illumos"))))]
        socket.set_reuse_port(true).map_err(wrap("SO_REUSEPORT"))?;
        #[cfg(not(all(unix, not(any(target_os = "solaris", target_os = "illumos")))))]
        return Err(ListenError {
            addr,
            stage: "SO_REUSEPORT",
            source: io::Error::new(io::ErrorKind::Unsupported, "not available on this platform"),
        });
    }
    if addr.is_ipv6() {
        // One address family per socket: `[::]` and `0.0.0.0` can then be listed side by side.
        socket.set_only_v6(true).map_err(wrap("IPV6_V6ONLY"))?;
    }
    apply_buffers(SockRef::from(&socket), options).map_err(|e| ListenError {
        addr,
        stage: e.option,
        source: e.source,
    })?;
    apply(SockRef::from(&socket), options).map_err(|e| ListenError {
        addr,
        stage: e.option,
        source: e.source,
    })?;
    socket.set_nonblocking(true).map_err(wrap("O_NONBLOCK"))?;
    socket.bind(&addr.into()).map_err(wrap("bind"))?;
    let backlog = i32::try_from(listener.backlog).unwrap_or(i32::MAX);
    socket.listen(backlog).map_err(wrap("listen"))?;
    Ok(socket.into())
}

/// A failure to open a listener, naming the address and the step.
#[derive(Debug, thiserror::Error)]
#[error("cannot listen on {addr}: {stage} failed")]
pub struct ListenError {
    /// The address being opened.
    pub addr: SocketAddr,
    /// The step that failed (`bind`, `listen`, an option's name).
    pub stage: &'static str,
    #[source]
    /// The system's answer.
    pub source: io::Error,
}

/// The options in force on a socket, as `getsockopt` reports them. `None`: not readable here.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct Effective {
    /// `SO_KEEPALIVE`.
    pub keepalive: Option<bool>,
    /// `TCP_KEEPIDLE`.
    pub keepalive_idle: Option<Duration>,
    /// `TCP_KEEPINTVL`.
    pub keepalive_interval: Option<Duration>,
    /// `TCP_KEEPCNT`.
    pub keepalive_count: Option<u32>,
    /// `TCP_USER_TIMEOUT`; `None` also when it is off (0).
    pub user_timeout: Option<Duration>,
    /// `TCP_NODELAY`.
    pub nodelay: Option<bool>,
    /// `SO_RCVBUF` in bytes (Linux reports double the size asked, for bookkeeping).
    pub recv_buffer: Option<usize>,
    /// `SO_SNDBUF` in bytes (Linux reports double the size asked, for bookkeeping).
    pub send_buffer: Option<usize>,
}

impl std::fmt::Display for Effective {
    /// One line for logs: `keepalive on idle 30s interval 10s count 3, user_timeout 60s, …`;
    /// `?` marks what this platform cannot read.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        fn show<T: std::fmt::Display>(value: Option<T>) -> String {
            value.map_or_else(|| "?".to_owned(), |v| v.to_string())
        }
        let secs = |d: Option<Duration>| show(d.map(humantime::format_duration));
        write!(
            f,
            "keepalive {} idle {} interval {} count {}, user_timeout {}, nodelay {}, rcvbuf {}, sndbuf {}",
            match self.keepalive {
                Some(true) => "on",
                Some(false) => "off",
                None => "?",
            },
            secs(self.keepalive_idle),
            secs(self.keepalive_interval),
            show(self.keepalive_count),
            self.user_timeout
                .map_or_else(|| "off".to_owned(), |d| humantime::format_duration(d).to_string()),
            show(self.nodelay),
            show(self.recv_buffer),
            show(self.send_buffer),
        )
    }
}

/// Logs a warning for each option of `socket` the kernel changed or refused.
pub fn warn_mismatches(effective: &Effective, asked: &SocketOptions, socket: &'static str) {
    for mismatch in effective.mismatches(asked) {
        tracing::warn!(
            socket,
            option = mismatch.option,
            asked = %mismatch.asked,
            effective = %mismatch.effective,
            "the kernel changed a socket option"
        );
    }
}

/// One option whose value in force is not the value asked for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mismatch {
    /// The option's name.
    pub option: &'static str,
    /// The value asked for.
    pub asked: String,
    /// The value in force.
    pub effective: String,
}

/// Reads the liveness options back from a socket.
pub fn read_back(socket: SockRef<'_>) -> Effective {
    // Platforms without the readable options keep the `None`s below.
    #[cfg_attr(not(any(full_keepalive, user_timeout)), allow(unused_mut))]
    let mut effective = Effective {
        keepalive: socket.keepalive().ok(),
        nodelay: socket.nodelay().ok(),
        recv_buffer: socket.recv_buffer_size().ok(),
        send_buffer: socket.send_buffer_size().ok(),
        ..Effective::default()
    };
    #[cfg(full_keepalive)]
    {
        effective.keepalive_idle = socket.keepalive_time().ok();
        effective.keepalive_interval = socket.keepalive_interval().ok();
        effective.keepalive_count = socket.keepalive_retries().ok();
    }
    #[cfg(user_timeout)]
    {
        effective.user_timeout = socket.tcp_user_timeout().ok().flatten();
    }
    effective
}

impl Effective {
    /// The options whose value in force differs from `asked`. Options this platform cannot read
    /// are not reported here (see [`Support::missing`]). Linux doubles `SO_RCVBUF`/`SO_SNDBUF`
    /// for bookkeeping, so a buffer is a mismatch only when it is smaller than asked.
    pub fn mismatches(&self, asked: &SocketOptions) -> Vec<Mismatch> {
        let mut out = Vec::new();
        let secs = |d: Duration| humantime::format_duration(d).to_string();
        let mut check = |option, asked: String, effective: Option<String>| {
            if let Some(effective) = effective {
                if effective != asked {
                    out.push(Mismatch {
                        option,
                        asked,
                        effective,
                    });
                }
            }
        };
        check(
            "SO_KEEPALIVE",
            "true".into(),
            self.keepalive.map(|k| k.to_string()),
        );
        check(
            "TCP_KEEPIDLE",
            secs(asked.keepalive.idle),
            self.keepalive_idle.map(secs),
        );
        check(
            "TCP_KEEPINTVL",
            secs(asked.keepalive.interval),
            self.keepalive_interval.map(secs),
        );
        check(
            "TCP_KEEPCNT",
            asked.keepalive.count.to_string(),
            self.keepalive_count.map(|c| c.to_string()),
        );
        if SUPPORT.user_timeout {
            let show = |d: Option<Duration>| d.map_or_else(|| "off".to_owned(), secs);
            check(
                "TCP_USER_TIMEOUT",
                show(asked.user_timeout),
                Some(show(self.user_timeout)),
            );
        }
        check(
            "TCP_NODELAY",
            asked.nodelay.to_string(),
            self.nodelay.map(|n| n.to_string()),
        );
        for (option, asked, effective) in [
            ("SO_RCVBUF", asked.recv_buffer, self.recv_buffer),
            ("SO_SNDBUF", asked.send_buffer, self.send_buffer),
        ] {
            if let (Some(asked), Some(effective)) = (asked, effective) {
                if effective < asked {
                    out.push(Mismatch {
                        option,
                        asked: asked.to_string(),
                        effective: effective.to_string(),
                    });
                }
            }
        }
        out
    }
}

/// Which kernel timer dropped a connection that failed with `ETIMEDOUT`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TimeoutCause {
    /// Keep-alive probes went unanswered while nothing was in flight.
    Keepalive,
    /// Sent data stayed unacknowledged (retransmissions, bounded by `TCP_USER_TIMEOUT`).
    Retransmission,
}

/// What `TCP_INFO` says of a connection, for the admin API, the metrics and close reasons.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct TcpInfo {
    /// The kernel's TCP state (`established`, `close_wait`, …).
    pub state: &'static str,
    /// Smoothed round-trip time, microseconds.
    pub rtt_us: u32,
    /// Round-trip time variation, microseconds.
    pub rttvar_us: u32,
    /// Consecutive retransmission timeouts of the segment now unacknowledged (`tcpi_retransmits`).
    pub retransmits: u8,
    /// Segments retransmitted over the connection's life (`tcpi_total_retrans`).
    pub total_retrans: u32,
    /// Segments sent and not yet acknowledged (`tcpi_unacked`).
    pub unacked: u32,
    /// Keep-alive (or zero-window) probes sent without an answer (`tcpi_probes`).
    pub probes: u8,
    /// Exponential backoff of the retransmission timer (`tcpi_backoff`).
    pub backoff: u8,
    /// Bytes queued and not yet sent (`tcpi_notsent_bytes`).
    pub notsent_bytes: u32,
    /// Bytes sent and not yet acknowledged: sent minus acknowledged.
    pub unacked_bytes: u64,
    /// Milliseconds since the peer last acknowledged anything (`tcpi_last_ack_recv`): on an
    /// idle connection, since it answered the last keep-alive probe.
    pub last_ack_recv_ms: u32,
}

#[cfg(any(target_os = "linux", target_os = "android"))]
impl TcpInfo {
    /// The bytes of `tcpi_state` as the kernel names them.
    fn state_name(state: u8) -> &'static str {
        match state {
            1 => "established",
            2 => "syn_sent",
            3 => "syn_recv",
            4 => "fin_wait1",
            5 => "fin_wait2",
            6 => "time_wait",
            7 => "close",
            8 => "close_wait",
            9 => "last_ack",
            10 => "listen",
            11 => "closing",
            _ => "unknown",
        }
    }
}

/// Reads `TCP_INFO`; `None` where the platform has none or the call fails.
pub fn tcp_info(socket: SockRef<'_>) -> Option<TcpInfo> {
    imp::tcp_info(socket)
}

/// How much before a keep-alive probe was due an ACK may come and still be taken for its
/// answer ([`probe_answered`]): the segments before the probe (the answer to our own last
/// reply) come within a round trip of the last data, and a keep-alive idle is 1 s or more.
const ROUND_TRIP_ALLOWANCE: Duration = Duration::from_millis(500);

/// Whether the peer of a connection silent for `silence` has answered the keep-alive probe due
/// `first` into that silence: its last ACK (`tcpi_last_ack_recv`) came at or after the probe
/// was due. `None` where `TCP_INFO` cannot be read.
pub fn probe_answered(socket: &SockRef<'_>, silence: Duration, first: Duration) -> Option<bool> {
    let info = tcp_info(SockRef::from(&**socket))?;
    let since_due = silence.saturating_sub(first) + ROUND_TRIP_ALLOWANCE;
    Some(Duration::from_millis(info.last_ack_recv_ms.into()) <= since_due)
}

/// Tells, from `TCP_INFO`, which timer dropped a connection that failed with `ETIMEDOUT`.
///
/// The kernel purges the send queue when it drops the connection, so the count of unacknowledged
/// segments reads 0 afterwards; what survives is the count of keep-alive probes sent
/// (`tcpi_probes`) and of consecutive retransmission timeouts (`tcpi_retransmits`), and the
/// byte counters. `None` where `TCP_INFO` cannot be read.
pub fn timeout_cause(socket: SockRef<'_>) -> Option<TimeoutCause> {
    let info = tcp_info(socket)?;
    let probing = info.probes > 0 && info.retransmits == 0;
    let data_in_flight = info.retransmits > 0 || info.unacked > 0 || info.unacked_bytes > 0;
    Some(if !probing && data_in_flight {
        TimeoutCause::Retransmission
    } else {
        TimeoutCause::Keepalive
    })
}

#[cfg(any(target_os = "linux", target_os = "android"))]
mod imp {
    use std::os::fd::AsRawFd;

    use socket2::SockRef;

    use super::TcpInfo;

    pub(super) fn tcp_info(socket: SockRef<'_>) -> Option<TcpInfo> {
        let mut info = std::mem::MaybeUninit::<libc::tcp_info>::zeroed();
        let mut len = std::mem::size_of::<libc::tcp_info>() as libc::socklen_t;
        // SAFETY: `info` is a writable buffer of `len` bytes that outlives the call; the kernel
        // writes at most `len` bytes and reports how many in `len`. The struct is plain data, and
        // it was zeroed, so fields the kernel did not write are valid zeros.
        let rc = unsafe {
            libc::getsockopt(
                socket.as_raw_fd(),
                libc::IPPROTO_TCP,
                libc::TCP_INFO,
                info.as_mut_ptr().cast(),
                &mut len,
            )
        };
        if rc != 0 {
            return None;
        }
        // SAFETY: zero-initialised above and possibly overwritten by the kernel: valid either way.
        let info = unsafe { info.assume_init() };
        Some(TcpInfo {
            state: TcpInfo::state_name(info.tcpi_state),
            rtt_us: info.tcpi_rtt,
            rttvar_us: info.tcpi_rttvar,
            retransmits: info.tcpi_retransmits,
            total_retrans: info.tcpi_total_retrans,
            unacked: info.tcpi_unacked,
            probes: info.tcpi_probes,
            backoff: info.tcpi_backoff,
            notsent_bytes: info.tcpi_notsent_bytes,
            unacked_bytes: info.tcpi_bytes_sent.saturating_sub(info.tcpi_bytes_acked),
            last_ack_recv_ms: info.tcpi_last_ack_recv,
        })
    }
}

#[cfg(not(any(target_os = "linux", target_os = "android")))]
mod imp {
    use socket2::SockRef;

    use super::TcpInfo;

    pub(super) fn tcp_info(_socket: SockRef<'_>) -> Option<TcpInfo> {
        None
    }
}

/// The process's open-file limits after raising the soft limit to the hard one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FileLimit {
    /// The soft limit now in force.
    pub soft: u64,
    /// The hard limit (only a privileged process can raise it).
    pub hard: u64,
}

/// Raises the open-file soft limit to the hard limit: every connection is a descriptor, and the
/// common soft default (1024) would refuse connections long before `max_connections`.
/// `None` on platforms without `RLIMIT_NOFILE`.
pub fn raise_nofile_limit() -> io::Result<Option<FileLimit>> {
    #[cfg(unix)]
    {
        let (_, hard) = rlimit::getrlimit(rlimit::Resource::NOFILE)?;
        let soft = rlimit::increase_nofile_limit(hard)?;
        Ok(Some(FileLimit { soft, hard }))
    }
    #[cfg(not(unix))]
    {
        Ok(None)
    }
}

/// `net.core.netdev_max_backlog`: packets one CPU queues on receive from loopback and veth;
/// `None` where it cannot be read (not Linux, no `/proc`).
pub(crate) fn netdev_max_backlog() -> Option<u64> {
    std::fs::read_to_string("/proc/sys/net/core/netdev_max_backlog")
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// Raises the open-file soft limit to the hard limit and warns when `max_connections` does not
/// fit under it (at start, and at a reload that changed it); at start, says the limit.
pub(crate) fn check_open_files(max_connections: usize, at_start: bool) {
    match raise_nofile_limit() {
        Ok(Some(limit)) => {
            // Listeners, the sink, logs and the runtime need some descriptors of their own.
            let headroom = 64;
            let fits = (max_connections as u64).saturating_add(headroom) <= limit.soft;
            if !fits {
                tracing::warn!(
                    max_connections,
                    nofile_soft = limit.soft,
                    nofile_hard = limit.hard,
                    "max_connections does not fit under the open-file limit; accept will fail with EMFILE first (run several processes with reuse_port, or raise the hard limit)"
                );
            } else if at_start {
                tracing::info!(
                    nofile_soft = limit.soft,
                    nofile_hard = limit.hard,
                    "open-file limit raised"
                );
            }
        }
        Ok(None) => {}
        Err(error) => tracing::warn!(error = %error, "cannot raise the open-file limit"),
    }
}
