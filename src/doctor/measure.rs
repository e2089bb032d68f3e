//! Measured dead-peer detection: two network namespaces joined by a veth pair, a real server
//! (this crate's) listening in one, real clients in the other, and each failure mode made to
//! happen for real. Linux only; needs root (`CAP_NET_ADMIN`) and `ip` from iproute2.
//!
//! | failure | how it is made | bound |
//! |---|---|---|
//! | `idle_dead_peer` | client idle, its link goes down; server heartbeat off | keep-alive idle + interval × count |
//! | `dead_peer_with_unacked_data` | the server pings after `heartbeat_interval`, the ping is never acknowledged (link down); the heartbeat itself never closes | heartbeat interval + user timeout |
//! | `frozen_peer` | client sends `hello`, then neither reads nor answers; its kernel stays up | heartbeat interval × misses |
//! | `peer_killed` | a `connwarden send` process is killed with SIGKILL | immediate |
//!
//! Each measured time runs from the event (link down, `hello`, kill) to the server's close
//! event; a measurement passes if it is within its bound plus the tolerance and the close reason
//! is the expected one. [`Lab`] removes both namespaces (and so the veth pair) when dropped,
//! which happens on every path, including an interrupted measurement.

use std::io::Write;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::Command;
use std::time::Duration;

use tokio::sync::broadcast;
use tokio::task::JoinSet;
use tokio::time::Instant;

use std::sync::Arc;

use crate::config::{Config, HeartbeatMode};
use crate::metrics::Metrics;
use crate::registry::ClosedConn;
use crate::sink::ChannelSink;
use crate::{CloseReason, Server};

/// Address of the server's end of the veth pair.
pub const SERVER_IP: [u8; 4] = [10, 232, 0, 1];
/// Address of the client's end.
pub const CLIENT_IP: [u8; 4] = [10, 232, 0, 2];

/// Why a measurement could not run.
#[derive(Debug, thiserror::Error)]
pub enum MeasureError {
    /// Not root: network namespaces need `CAP_NET_ADMIN`.
    #[error("doctor --measure needs root (CAP_NET_ADMIN) to create network namespaces and veth links; run it as root")]
    NotRoot,
    /// `ip` (iproute2) is missing.
    #[error("doctor --measure needs the `ip` command (iproute2): {0}")]
    NoIpCommand(std::io::Error),
    /// The kernel or container refused to create namespaces or links.
    #[error("cannot set up network namespaces: `ip {command}` failed: {stderr}")]
    Setup {
        /// The failing command's arguments.
        command: String,
        /// What it said.
        stderr: String,
    },
    /// Anything else that stops the measurement.
    #[error("{what}")]
    Run {
        /// What failed.
        what: String,
    },
}

impl MeasureError {
    /// Whether this machine cannot measure at all (no root, no `ip`, no namespaces), as
    /// opposed to a measurement that failed.
    pub fn is_unsupported(&self) -> bool {
        matches!(
            self,
            MeasureError::NotRoot | MeasureError::NoIpCommand(_) | MeasureError::Setup { .. }
        )
    }
}

pub(super) fn run_error(what: impl Into<String>) -> MeasureError {
    MeasureError::Run { what: what.into() }
}

/// Two namespaces and a veth pair, with unique names; dropped, it removes them.
#[derive(Debug)]
pub struct Lab {
    /// The server's namespace.
    pub server_ns: String,
    /// The client's namespace.
    pub client_ns: String,
    /// The server's end of the veth pair.
    pub server_if: String,
    /// The client's end.
    pub client_if: String,
}

fn ip(args: &[&str]) -> Result<(), MeasureError> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(MeasureError::NoIpCommand)?;
    if out.status.success() {
        Ok(())
    } else {
        Err(MeasureError::Setup {
            command: args.join(" "),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        })
    }
}

impl Lab {
    /// Creates the namespaces `cwd-s-<tag>` and `cwd-c-<tag>` joined by `cwds<tag>` /
    /// `cwdc<tag>`, with 10.232.0.1/30 and 10.232.0.2/30, links up. `tag` must keep interface
    /// names within 15 bytes.
    pub fn create(tag: &str) -> Result<Lab, MeasureError> {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            return Err(MeasureError::NotRoot);
        }
        let lab = Lab {
            server_ns: format!("cwd-s-{tag}"),
            client_ns: format!("cwd-c-{tag}"),
            server_if: format!("cwds{tag}"),
            client_if: format!("cwdc{tag}"),
        };
        ip(&["netns", "add", &lab.server_ns])?;
        // From here on, dropping `lab` removes whatever was made.
        ip(&["netns", "add", &lab.client_ns])?;
        ip(&[
            "link",
            "add",
            &lab.server_if,
            "netns",
            &lab.server_ns,
            "type",
            "veth",
            "peer",
            "name",
            &lab.client_if,
            "netns",
            &lab.client_ns,
        ])?;
        for (ns, dev, addr) in [
            (&lab.server_ns, &lab.server_if, SERVER_IP),
            (&lab.client_ns, &lab.client_if, CLIENT_IP),
        ] {
            let cidr = format!("{}/30", std::net::Ipv4Addr::from(addr));
            ip(&["-n", ns, "addr", "add", &cidr, "dev", dev])?;
            ip(&["-n", ns, "link", "set", "lo", "up"])?;
            ip(&["-n", ns, "link", "set", dev, "up"])?;
        }
        Ok(lab)
    }

    /// Runs `f` on a thread that entered namespace `ns`: sockets it creates live there.
    pub fn in_ns<T: Send + 'static>(
        ns: &str,
        f: impl FnOnce() -> std::io::Result<T> + Send + 'static,
    ) -> Result<T, MeasureError> {
        let path = format!("/var/run/netns/{ns}");
        std::thread::spawn(move || {
            use std::os::fd::AsRawFd;
            let file = std::fs::File::open(&path)?;
            // SAFETY: setns changes only this thread's network namespace; the descriptor is
            // valid for the call, and the thread ends after `f`.
            if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                return Err(std::io::Error::last_os_error());
            }
            f()
        })
        .join()
        .map_err(|_| run_error("a namespace thread panicked"))?
        .map_err(|e| run_error(format!("in namespace: {e}")))
    }

    /// Takes the client host's link down (or up): nothing it sends or answers gets through.
    pub fn client_link(&self, up: bool) -> Result<(), MeasureError> {
        set_link(&self.client_ns, &self.client_if, up)
    }

    /// Takes the server host's link down (or up).
    pub fn server_link(&self, up: bool) -> Result<(), MeasureError> {
        set_link(&self.server_ns, &self.server_if, up)
    }
}

fn set_link(ns: &str, dev: &str, up: bool) -> Result<(), MeasureError> {
    ip(&["-n", ns, "link", "set", dev, if up { "up" } else { "down" }])
}

impl Drop for Lab {
    fn drop(&mut self) {
        for ns in [&self.server_ns, &self.client_ns] {
            let _ = Command::new("ip").args(["netns", "del", ns]).output();
        }
    }
}

/// One measured failure mode.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Measurement {
    /// `idle_dead_peer`, `dead_peer_with_unacked_data`, `frozen_peer` or `peer_killed`.
    pub failure: &'static str,
    /// How the failure was made.
    pub how: String,
    /// Time from the event to the server's close, in milliseconds; `null` if it never closed
    /// within bound + tolerance + 5 s, or the mode was skipped.
    pub measured_ms: Option<u64>,
    /// The bound, in milliseconds.
    pub bound_ms: u64,
    /// The allowed excess, in milliseconds.
    pub tolerance_ms: u64,
    /// The close reason the server recorded.
    pub reason: Option<&'static str>,
    /// The reasons that count as right.
    pub expected: Vec<&'static str>,
    /// Within bound + tolerance, with an expected reason. `true` for a skipped mode.
    pub pass: bool,
    /// Why the mode was not measured, if it was not.
    pub skipped: Option<String>,
}

/// All measurements of one run.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct MeasureReport {
    /// The namespaces used (removed by now).
    pub namespaces: [String; 2],
    /// One entry per failure mode.
    pub measurements: Vec<Measurement>,
    /// Every measurement passed.
    pub passed: bool,
}

/// Measures every failure mode under `config`. `binary` is the `connwarden` executable (for
/// the process that gets killed); `tag` makes the namespace names unique.
pub async fn measure(
    config: &Config,
    tolerance: Duration,
    binary: &std::path::Path,
    tag: &str,
) -> Result<MeasureReport, MeasureError> {
    let lab = Lab::create(tag)?;
    tracing::info!(server_ns = %lab.server_ns, client_ns = %lab.client_ns, "namespaces created");
    let mut servers = JoinSet::new();
    let base = Config {
        listen: vec![SocketAddr::from((SERVER_IP, 0))],
        ..config.clone()
    };

    // Phase 1, link up: a frozen peer and a killed one.
    let frozen = frozen_peer(&lab, &base, &mut servers, tolerance, 7001).await?;
    let killed = killed_peer(&lab, &base, &mut servers, tolerance, binary, 7002).await?;
    let (frozen, killed) = tokio::join!(frozen, killed);

    // Phase 2, link down: an idle dead peer, and one with data in flight.
    let mut idle = idle_dead_peer(&lab, &base, &mut servers, 7003).await?;
    let mut unacked = unacked_dead_peer(&lab, &base, &mut servers, 7004).await?;
    // Idle connections park after `park_after`, as in production: the link goes down once
    // both have (or once they had the time to), so that the bounds measured are theirs.
    if let Some(after) = base.park_after {
        let parked = |p: &Pending| p.metrics.parked_connections() == 1;
        let until = Instant::now() + after + Duration::from_secs(2);
        while !(parked(&idle) && parked(&unacked)) && Instant::now() < until {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        for pending in [&mut idle, &mut unacked] {
            if parked(pending) {
                pending.how.push_str(" (parked)");
            }
        }
    }
    lab.client_link(false)?;
    let down_at = Instant::now();
    let (idle, unacked) = tokio::join!(
        idle.wait(down_at, tolerance),
        unacked.wait(down_at, tolerance)
    );

    let measurements = vec![idle, unacked, frozen, killed];
    let passed = measurements.iter().all(|m| m.pass);
    servers.shutdown().await;
    let namespaces = [lab.server_ns.clone(), lab.client_ns.clone()];
    drop(lab);
    Ok(MeasureReport {
        namespaces,
        measurements,
        passed,
    })
}

/// A server in the lab's server namespace, the close events of its connections, its registry
/// and its metrics.
pub(super) async fn start_server(
    lab: &Lab,
    config: Config,
    port: u16,
    servers: &mut JoinSet<()>,
) -> Result<
    (
        SocketAddr,
        broadcast::Receiver<ClosedConn>,
        crate::registry::Registry,
        Arc<Metrics>,
    ),
    MeasureError,
> {
    let addr = SocketAddr::from((SERVER_IP, port));
    let options = crate::sockopt::SocketOptions::from_config(&config);
    let listener: TcpListener = Lab::in_ns(&lab.server_ns, move || {
        crate::sockopt::bind_listener(
            addr,
            &crate::sockopt::ListenerOptions {
                reuse_port: false,
                backlog: 16,
            },
            &options,
        )
        .map_err(std::io::Error::other)
    })?;
    let listener = tokio::net::TcpListener::from_std(listener)
        .map_err(|e| run_error(format!("register listener: {e}")))?;
    let (sink, mut records) = ChannelSink::new(64);
    // The measurement reads the registry directly; an admin listener would only take a port.
    let config = Config {
        admin: None,
        ..config
    };
    let server = Server::builder(config)
        .sink(sink)
        .build()
        .map_err(|e| run_error(format!("server: {e}")))?;
    let closes = server.registry().subscribe();
    let registry = server.registry();
    let metrics = server.metrics();
    servers.spawn(async move {
        let drain = tokio::spawn(async move { while records.recv().await.is_some() {} });
        let _ = server.run(vec![listener], std::future::pending()).await;
        drain.abort();
    });
    Ok((addr, closes, registry, metrics))
}

/// A raw client connection from the client namespace.
fn connect(lab: &Lab, addr: SocketAddr) -> Result<TcpStream, MeasureError> {
    Lab::in_ns(&lab.client_ns, move || {
        TcpStream::connect_timeout(&addr, Duration::from_secs(5))
    })
}

/// A connection whose close is awaited.
struct Pending {
    failure: &'static str,
    how: String,
    bound: Duration,
    expected: Vec<&'static str>,
    closes: broadcast::Receiver<ClosedConn>,
    /// Held open until the server closes.
    _client: Option<TcpStream>,
    /// The server's, to see its connection parked.
    metrics: Arc<Metrics>,
}

impl Pending {
    /// Waits for the server's close and judges it.
    async fn wait(mut self, since: Instant, tolerance: Duration) -> Measurement {
        let limit = self.bound + tolerance + Duration::from_secs(5);
        let closed = tokio::time::timeout_at(since + limit, async {
            loop {
                match self.closes.recv().await {
                    Ok(closed) => return Some(closed.reason),
                    Err(broadcast::error::RecvError::Lagged(_)) => continue,
                    Err(broadcast::error::RecvError::Closed) => return None,
                }
            }
        })
        .await
        .ok()
        .flatten();
        let measured = closed.map(|_| since.elapsed());
        let reason = closed.map(CloseReason::as_str);
        let pass = measured.is_some_and(|m| m <= self.bound + tolerance)
            && reason.is_some_and(|r| self.expected.contains(&r));
        Measurement {
            failure: self.failure,
            how: self.how,
            measured_ms: measured.map(|m| m.as_millis() as u64),
            bound_ms: self.bound.as_millis() as u64,
            tolerance_ms: tolerance.as_millis() as u64,
            reason,
            expected: self.expected,
            pass,
            skipped: None,
        }
    }
}

fn skipped(failure: &'static str, why: String) -> Measurement {
    Measurement {
        failure,
        how: String::new(),
        measured_ms: None,
        bound_ms: 0,
        tolerance_ms: 0,
        reason: None,
        expected: Vec::new(),
        pass: true,
        skipped: Some(why),
    }
}

type MeasureFuture = std::pin::Pin<Box<dyn std::future::Future<Output = Measurement> + Send>>;

async fn idle_dead_peer(
    lab: &Lab,
    base: &Config,
    servers: &mut JoinSet<()>,
    port: u16,
) -> Result<Pending, MeasureError> {
    // Only keep-alive may notice: no heartbeat, no idle timeout.
    let config = Config {
        heartbeat: HeartbeatMode::Off,
        idle_timeout: None,
        ..base.clone()
    };
    let ka = config.keepalive;
    let (addr, closes, _, metrics) = start_server(lab, config, port, servers).await?;
    let client = connect(lab, addr)?;
    Ok(Pending {
        failure: "idle_dead_peer",
        how: "idle client, its link taken down; server heartbeat off".into(),
        bound: ka.bound(),
        expected: vec!["keepalive_timeout"],
        closes,
        _client: Some(client),
        metrics,
    })
}

async fn unacked_dead_peer(
    lab: &Lab,
    base: &Config,
    servers: &mut JoinSet<()>,
    port: u16,
) -> Result<Pending, MeasureError> {
    // The server pings after `heartbeat_interval`; the heartbeat itself closes only after the
    // most misses allowed, far later, so the unacknowledged ping is left to TCP_USER_TIMEOUT.
    let config = Config {
        heartbeat: HeartbeatMode::Required,
        heartbeat_misses: crate::config::MAX_HEARTBEAT_MISSES,
        idle_timeout: None,
        ..base.clone()
    };
    let user_timeout = config
        .effective_user_timeout()
        .unwrap_or_else(|| super::retransmission_bound(15));
    let interval = config.heartbeat_interval;
    // If keep-alive probes start before the first ping, they are what goes unanswered.
    let mut expected = vec!["user_timeout"];
    if config.keepalive.idle <= interval {
        expected.push("keepalive_timeout");
    }
    let (addr, closes, _, metrics) = start_server(lab, config, port, servers).await?;
    let client = connect(lab, addr)?;
    Ok(Pending {
        failure: "dead_peer_with_unacked_data",
        how: format!(
            "client link taken down; the server's ping after {} stays unacknowledged",
            humantime::format_duration(interval)
        ),
        bound: interval + user_timeout,
        expected,
        closes,
        _client: Some(client),
        metrics,
    })
}

async fn frozen_peer(
    lab: &Lab,
    base: &Config,
    servers: &mut JoinSet<()>,
    tolerance: Duration,
    port: u16,
) -> Result<MeasureFuture, MeasureError> {
    if base.heartbeat == HeartbeatMode::Off {
        return Ok(Box::pin(std::future::ready(skipped(
            "frozen_peer",
            "heartbeat is off: nothing notices a frozen peer".into(),
        ))));
    }
    let config = Config {
        idle_timeout: None,
        ..base.clone()
    };
    let bound = config.heartbeat_interval * config.heartbeat_misses;
    let (addr, closes, _, metrics) = start_server(lab, config, port, servers).await?;
    let mut client = connect(lab, addr)?;
    client
        .write_all(b"{\"type\":\"hello\",\"client\":\"connwarden-doctor\"}\n")
        .map_err(|e| run_error(format!("send hello: {e}")))?;
    let since = Instant::now();
    let pending = Pending {
        failure: "frozen_peer",
        how: "client sent hello, then neither reads nor answers; its kernel stays up".into(),
        bound,
        expected: vec!["heartbeat_timeout"],
        closes,
        _client: Some(client),
        metrics,
    };
    Ok(Box::pin(pending.wait(since, tolerance)))
}

async fn killed_peer(
    lab: &Lab,
    base: &Config,
    servers: &mut JoinSet<()>,
    tolerance: Duration,
    binary: &std::path::Path,
    port: u16,
) -> Result<MeasureFuture, MeasureError> {
    let (addr, closes, _, metrics) = start_server(lab, base.clone(), port, servers).await?;
    let mut child = tokio::process::Command::new("ip")
        .args(["netns", "exec", &lab.client_ns])
        .arg(binary)
        .args(["send", "--to", &addr.to_string(), "-"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| run_error(format!("start the client process: {e}")))?;
    // Connected and greeted: `send` logs its socket options once the connection is up.
    let stderr = child.stderr.take().ok_or_else(|| run_error("no stderr"))?;
    let connected = async {
        use tokio::io::AsyncBufReadExt;
        let mut lines = tokio::io::BufReader::new(stderr).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            if line.contains("client socket options in force") {
                return Some(lines);
            }
        }
        None
    };
    let lines = tokio::time::timeout(Duration::from_secs(10), connected)
        .await
        .ok()
        .flatten()
        .ok_or_else(|| run_error("the client process did not connect"))?;
    child
        .start_kill()
        .map_err(|e| run_error(format!("kill the client process: {e}")))?;
    let since = Instant::now();
    let pending = Pending {
        failure: "peer_killed",
        how: "a `connwarden send` process killed with SIGKILL".into(),
        bound: Duration::ZERO,
        expected: vec!["peer_closed", "reset"],
        closes,
        _client: None,
        metrics,
    };
    Ok(Box::pin(async move {
        let measurement = pending.wait(since, tolerance).await;
        let _ = child.wait().await;
        drop(lines);
        measurement
    }))
}
