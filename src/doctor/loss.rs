//! Both sides of the keep-alive judgment on a lossy path, measured (`doctor --measure --loss`):
//! healthy idle peers over a veth pair that drops packets at random must stay connected (the
//! false closes are counted and set beside [`super::odds`]' prediction), then the same peers
//! die (their link goes down) and each must be closed within the bound.
//!
//! The loss is nftables' `numgen random` in the client's namespace, on input and output, so
//! each way loses the same share (this kernel has no `sch_netem`). Connections are made before
//! the loss starts, so every one is established; the peers never send, and their kernels
//! answer the server's probes. The server runs with the heartbeat off: only keep-alive judges.

use std::collections::BTreeMap;
use std::io::Write;
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::time::Duration;

use tokio::sync::broadcast;
use tokio::task::JoinSet;
use tokio::time::Instant;

use super::measure::{run_error, start_server, Lab, MeasureError, SERVER_IP};
use super::odds;
use crate::config::{Config, HeartbeatMode};
use crate::registry::ClosedConn;

/// What to measure.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct LossPlan {
    /// Random loss each way, 0 to 1.
    pub loss: f64,
    /// Healthy idle peers.
    pub peers: usize,
    /// How long they are watched on the lossy link.
    pub duration: Duration,
}

/// The measured false closes beside the prediction, then the dead-peer closes.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct LossMeasurement {
    /// Random loss each way, in per cent.
    pub loss_percent: f64,
    /// Healthy idle peers connected.
    pub peers: usize,
    /// How long they were watched on the lossy link, in milliseconds.
    pub duration_ms: u64,
    /// The keep-alive split in force: `idle + interval x count`.
    pub split: String,
    /// Probes that must all fail for a healthy peer to be closed.
    pub probes_before_close: u32,
    /// Healthy peers the server closed while the link was lossy.
    pub false_closes: u64,
    /// Those closes by reason.
    pub false_closes_by_reason: BTreeMap<&'static str, u64>,
    /// The model's expected false closes over the same peers and time (each peer closed at
    /// most once: `peers × (1 − e^(−rate × duration))`).
    pub predicted: f64,
    /// Measured and predicted agree within a factor of 3 (both below 1 counts as agreeing).
    pub agrees: bool,
    /// The peers left when the link went down, all of which must be closed within the bound.
    pub dead_peers: u64,
    /// Those the server closed within bound + tolerance.
    pub dead_closed_in_bound: u64,
    /// The slowest of their closes, from the link going down, in milliseconds.
    pub dead_slowest_ms: Option<u64>,
    /// The keep-alive bound, in milliseconds.
    pub bound_ms: u64,
    /// The allowed excess, in milliseconds.
    pub tolerance_ms: u64,
    /// Every dead peer closed within bound + tolerance, and the false closes as predicted.
    pub pass: bool,
}

/// Runs the plan under `config` in a lab of its own (`tag`): the peers connect, the link turns
/// lossy for the plan's duration (false closes counted), then goes down (each survivor must
/// be closed within the bound).
pub async fn measure_loss(
    config: &Config,
    plan: LossPlan,
    tolerance: Duration,
    tag: &str,
) -> Result<(LossMeasurement, [String; 2]), MeasureError> {
    if !(0.0..1.0).contains(&plan.loss) {
        return Err(run_error("--loss must be 0 to under 100 per cent"));
    }
    let lab = Lab::create(tag)?;
    let config = Config {
        heartbeat: HeartbeatMode::Off,
        idle_timeout: None,
        max_connections: plan.peers + 16,
        listen: vec![std::net::SocketAddr::from((SERVER_IP, 0))],
        ..config.clone()
    };
    let (ka, user_timeout) = (config.keepalive, config.effective_user_timeout());
    let mut servers = JoinSet::new();
    let (addr, mut closes, registry, _) = start_server(&lab, config, 7010, &mut servers).await?;
    let peers = plan.peers;
    let clients: Vec<TcpStream> = Lab::in_ns(&lab.client_ns, move || {
        let connect = || TcpStream::connect_timeout(&addr, Duration::from_secs(5));
        (0..peers).map(|_| connect()).collect()
    })?;
    wait_registered(&registry, peers).await?;
    drop_packets(&lab, plan.loss)?;
    let lossy = count_closes_until(&mut closes, Instant::now() + plan.duration).await;
    // The other side: the survivors die at once, and each must be closed within the bound.
    lab.client_link(false)?;
    let dead = (plan.peers as u64).saturating_sub(lossy.closed);
    let timed = time_dead_closes(&mut closes, dead, ka.bound(), tolerance).await;
    drop(clients);
    servers.shutdown().await;
    let namespaces = [lab.server_ns.clone(), lab.client_ns.clone()];
    drop(lab); // Removes the namespaces and their links.
    let rate = odds::expected_false_closes(&ka, user_timeout, plan.loss, 1.0);
    let predicted = plan.peers as f64 * (1.0 - (-rate * plan.duration.as_secs_f64()).exp());
    let agrees = agree_within_3(lossy.closed as f64, predicted);
    let measurement = LossMeasurement {
        loss_percent: plan.loss * 100.0,
        peers: plan.peers,
        duration_ms: plan.duration.as_millis() as u64,
        split: split_text(&ka),
        probes_before_close: odds::probes_before_close(&ka, user_timeout),
        false_closes: lossy.closed,
        false_closes_by_reason: lossy.by_reason,
        predicted,
        agrees,
        dead_peers: dead,
        dead_closed_in_bound: timed.in_bound,
        dead_slowest_ms: timed.slowest.map(|d| d.as_millis() as u64),
        bound_ms: ka.bound().as_millis() as u64,
        tolerance_ms: tolerance.as_millis() as u64,
        pass: agrees && timed.in_bound == dead,
    };
    Ok((measurement, namespaces))
}

/// The split as `idle + interval x count`.
fn split_text(ka: &crate::config::Keepalive) -> String {
    let d = humantime::format_duration;
    format!("{} + {} x {}", d(ka.idle), d(ka.interval), ka.count)
}

/// Waits until every one of `peers` connections is in the registry (30 s at most).
async fn wait_registered(
    registry: &crate::registry::Registry,
    peers: usize,
) -> Result<(), MeasureError> {
    let deadline = Instant::now() + Duration::from_secs(30);
    while registry.len() < peers {
        if Instant::now() > deadline {
            return Err(run_error(format!(
                "{} of {peers} connections registered within 30 s",
                registry.len()
            )));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(())
}

/// Closes seen while the link was lossy: each a healthy peer closed.
struct LossyCloses {
    closed: u64,
    by_reason: BTreeMap<&'static str, u64>,
}

/// Counts the closes until `until`, by reason.
async fn count_closes_until(
    closes: &mut broadcast::Receiver<ClosedConn>,
    until: Instant,
) -> LossyCloses {
    let mut counted = LossyCloses {
        closed: 0,
        by_reason: BTreeMap::new(),
    };
    loop {
        match tokio::time::timeout_at(until, closes.recv()).await {
            Err(_) => break,
            Ok(Ok(closed)) => {
                counted.closed += 1;
                *counted.by_reason.entry(closed.reason.as_str()).or_insert(0) += 1;
            }
            Ok(Err(broadcast::error::RecvError::Lagged(missed))) => counted.closed += missed,
            Ok(Err(broadcast::error::RecvError::Closed)) => break,
        }
    }
    counted
}

/// The dead peers' closes, timed from now (the link just went down).
struct TimedCloses {
    in_bound: u64,
    slowest: Option<Duration>,
}

/// Waits for `dead` closes (until bound + tolerance + 5 s), timing each from now.
async fn time_dead_closes(
    closes: &mut broadcast::Receiver<ClosedConn>,
    dead: u64,
    bound: Duration,
    tolerance: Duration,
) -> TimedCloses {
    let down_at = Instant::now();
    let give_up = down_at + bound + tolerance + Duration::from_secs(5);
    let mut timed = TimedCloses {
        in_bound: 0,
        slowest: None,
    };
    let mut seen = 0u64;
    while seen < dead {
        match tokio::time::timeout_at(give_up, closes.recv()).await {
            Err(_) => break,
            Ok(Ok(_)) => {
                seen += 1;
                let after = down_at.elapsed();
                timed.slowest = Some(after);
                if after <= bound + tolerance {
                    timed.in_bound += 1;
                }
            }
            Ok(Err(broadcast::error::RecvError::Lagged(missed))) => seen += missed,
            Ok(Err(broadcast::error::RecvError::Closed)) => break,
        }
    }
    timed
}

/// Within a factor of 3 of each other; counts below 1 are taken as 1 (0 closes where 10⁻²⁰
/// were expected agree).
fn agree_within_3(measured: f64, predicted: f64) -> bool {
    let (m, p) = (measured.max(1.0), predicted.max(1.0));
    m.max(p) / m.min(p) <= 3.0
}

/// Drops `loss` of the TCP packets each way at the client's end.
fn drop_packets(lab: &Lab, loss: f64) -> Result<(), MeasureError> {
    let per_10000 = (loss * 10_000.0).round() as u32;
    let server = std::net::Ipv4Addr::from(SERVER_IP);
    let rules = format!(
        "table inet cwloss {{\n\
         chain input {{ type filter hook input priority 0; policy accept; ip saddr {server} meta l4proto tcp numgen random mod 10000 < {per_10000} drop; }}\n\
         chain output {{ type filter hook output priority 0; policy accept; ip daddr {server} meta l4proto tcp numgen random mod 10000 < {per_10000} drop; }}\n\
         }}\n"
    );
    let mut nft = Command::new("ip")
        .args(["netns", "exec", &lab.client_ns, "nft", "-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| run_error(format!("cannot run nft (nftables): {e}")))?;
    if let Some(mut stdin) = nft.stdin.take() {
        stdin
            .write_all(rules.as_bytes())
            .map_err(|e| run_error(format!("nft: {e}")))?;
    }
    let out = nft
        .wait_with_output()
        .map_err(|e| run_error(format!("nft: {e}")))?;
    if !out.status.success() {
        return Err(MeasureError::Setup {
            command: "netns exec … nft -f - (random drops; needs nftables)".into(),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn agreement_is_a_factor_of_3_with_small_counts_as_one() {
        assert!(agree_within_3(28.0, 31.0));
        assert!(agree_within_3(10.0, 29.0));
        assert!(!agree_within_3(9.0, 29.0));
        assert!(agree_within_3(0.0, 1e-20));
        assert!(agree_within_3(2.0, 1e-20));
        assert!(!agree_within_3(4.0, 1e-20));
    }
}
