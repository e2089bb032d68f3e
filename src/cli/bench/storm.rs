//! `bench storm`: a fleet reconnecting at once. Each of N clients of the client library (the
//! real reconnect logic: connect timeout, backoff with jitter, `retry_after`, TLS) starts at a
//! random moment within a short window, sends one item and waits for its ack. Several processes
//! given the same `--at` storm together (one process holds at most ~19,000 descriptors).
//! Reported: the time until the whole fleet is back (from `--at` to the last first ack), each
//! client's time to its ack, the attempts that failed (and so were retried after a wait), and,
//! with `--hold`, clients whose connection was lost while held (heartbeats go on meanwhile).

use std::process::ExitCode;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use clap::Args;
use connwarden::client::{Client, ClientConfig, OutItem};
use tokio::time::Instant;

use super::{emit, histogram, Percentiles, Target};

/// Flags of `bench storm`.
#[derive(Debug, Args)]
pub struct StormArgs {
    #[command(flatten)]
    target: Target,
    /// Clients, each a client of the library with its own connection.
    #[arg(long, value_name = "N", default_value_t = 2500)]
    clients: u64,
    /// Each client starts at a random moment within this window.
    #[arg(long, value_name = "DURATION", default_value = "1s")]
    within: String,
    /// Start the window at this Unix time in milliseconds (several processes, one storm);
    /// now by default.
    #[arg(long, value_name = "UNIX_MS")]
    at: Option<u64>,
    /// Keep each client connected this long after its ack, then count those whose connection
    /// was lost meanwhile (the established connections a storm must not disturb).
    #[arg(long, value_name = "DURATION", default_value = "0s")]
    hold: String,
    /// Give up on clients not acknowledged after this long.
    #[arg(long, value_name = "DURATION", default_value = "120s")]
    timeout: String,
}

#[derive(serde::Serialize)]
struct Report {
    workload: &'static str,
    clients: u64,
    acked: u64,
    /// From the start of the window to the last client's first ack.
    fleet_back_ms: f64,
    /// Each client's time from its start to its ack.
    time_to_ack: Percentiles,
    /// Attempts that failed and were retried, in all.
    failed_attempts: u64,
    /// Clients with at least one failed attempt.
    clients_retried: u64,
    /// Clients whose connection was lost while held (`--hold`).
    lost_while_held: u64,
}

/// What one client saw.
#[derive(Default)]
struct Outcome {
    /// From the window's start to its ack; `None` if it never came.
    back_at: Option<Duration>,
    /// From its own start to its ack.
    latency: Option<Duration>,
    failed_attempts: u64,
    lost_while_held: bool,
}

pub async fn run(args: StormArgs) -> anyhow::Result<ExitCode> {
    let duration =
        |text: &str| connwarden::config::parse_duration(text).map_err(anyhow::Error::msg);
    let within = duration(&args.within).context("--within")?;
    let hold = duration(&args.hold).context("--hold")?;
    let timeout = duration(&args.timeout).context("--timeout")?;
    let config = Arc::new(client_config(&args.target)?);
    let start = match args.at {
        Some(at) => {
            let now = SystemTime::now().duration_since(UNIX_EPOCH)?.as_millis() as u64;
            Instant::now() + Duration::from_millis(at.saturating_sub(now))
        }
        None => Instant::now(),
    };
    let mut clients = tokio::task::JoinSet::new();
    for _ in 0..args.clients {
        let offset = Duration::from_nanos(fastrand::u64(0..=within.as_nanos() as u64));
        let config = Arc::clone(&config);
        clients.spawn(one_client(config, start, offset, hold, timeout));
    }
    let mut outcomes = Vec::with_capacity(args.clients as usize);
    while let Some(outcome) = clients.join_next().await {
        outcomes.push(outcome?);
    }
    let report = Report::of(args.clients, &outcomes);
    emit(args.target.json, &report, &report.lines())?;
    Ok(
        if report.acked == report.clients && report.lost_while_held == 0 {
            ExitCode::SUCCESS
        } else {
            ExitCode::FAILURE
        },
    )
}

/// The library client every storm client starts from (each then gets its own `client_id`).
fn client_config(target: &Target) -> anyhow::Result<ClientConfig> {
    let mut config = ClientConfig::new(target.to.to_string());
    if let Some(ca) = &target.tls_ca {
        let mut tls = connwarden::tls::ClientTls::from_files(Some(ca), None, None)?;
        tls.server_name = Some(target.server_name.clone());
        config.tls = Some(tls);
    }
    Ok(config)
}

impl Report {
    /// What `outcomes`, those of `clients` clients, add up to.
    fn of(clients: u64, outcomes: &[Outcome]) -> Report {
        let mut latency = histogram();
        let mut fleet_back = Duration::ZERO;
        let mut report = Report {
            workload: "storm",
            clients,
            acked: 0,
            fleet_back_ms: 0.0,
            time_to_ack: Percentiles::default(),
            failed_attempts: 0,
            clients_retried: 0,
            lost_while_held: 0,
        };
        for outcome in outcomes {
            if let (Some(back_at), Some(took)) = (outcome.back_at, outcome.latency) {
                report.acked += 1;
                fleet_back = fleet_back.max(back_at);
                latency.saturating_record(took.as_micros() as u64);
            }
            report.failed_attempts += outcome.failed_attempts;
            report.clients_retried += u64::from(outcome.failed_attempts > 0);
            report.lost_while_held += u64::from(outcome.lost_while_held);
        }
        report.fleet_back_ms = fleet_back.as_secs_f64() * 1000.0;
        report.time_to_ack = Percentiles::of(&latency);
        report
    }

    /// The report as text.
    fn lines(&self) -> [String; 3] {
        [
            format!(
                "storm: {} of {} clients acknowledged; the fleet back {:.0} ms after the window began",
                self.acked, self.clients, self.fleet_back_ms
            ),
            format!("time to ack: {}", self.time_to_ack.line()),
            format!(
                "failed attempts {} ({} clients retried); lost while held {}",
                self.failed_attempts, self.clients_retried, self.lost_while_held
            ),
        ]
    }
}

impl Outcome {
    fn failed(progress: &connwarden::client::Progress) -> Outcome {
        Outcome {
            failed_attempts: progress.failed_attempts.load(Ordering::Relaxed),
            ..Outcome::default()
        }
    }
}

async fn one_client(
    config: Arc<ClientConfig>,
    start: Instant,
    offset: Duration,
    hold: Duration,
    timeout: Duration,
) -> Outcome {
    tokio::time::sleep_until(start + offset).await;
    let began = Instant::now();
    let mut config = (*config).clone();
    // Each client its own identity: clients sharing one would supersede each other.
    config.client_id = connwarden::client::random_client_id();
    let client = Client::start(config);
    let progress = client.progress();
    let item = OutItem::from_json(br#"{"ip":"192.0.2.1"}"#.to_vec().into()).expect("an item");
    if client.send(item).await.is_err() {
        return Outcome::failed(&progress);
    }
    let mut lost_while_held = false;
    let (acked, back) = if hold.is_zero() {
        // Without a hold the client finishes: its end is its ack, timed without polling (the
        // connection then closes, as a client done with its work does).
        let finished = tokio::time::timeout(timeout, client.finish()).await;
        let acked = matches!(finished, Ok(Ok(summary)) if summary.acknowledged == 1);
        (acked, Instant::now())
    } else {
        // Held clients are the established fleet: a look every 250 ms is enough.
        let acked = async {
            while progress.acknowledged.load(Ordering::Relaxed) == 0 {
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
        };
        let acked = tokio::time::timeout(timeout, acked).await.is_ok();
        // Timed at the look that saw the ack, not after the hold.
        let back = Instant::now();
        if acked {
            let connections = progress.connections.load(Ordering::Relaxed);
            tokio::time::sleep(hold).await;
            lost_while_held = progress.connections.load(Ordering::Relaxed) != connections
                || !progress.connected.load(Ordering::Relaxed);
        }
        drop(client);
        (acked, back)
    };
    let failed_attempts = progress.failed_attempts.load(Ordering::Relaxed);
    Outcome {
        back_at: acked.then(|| back.duration_since(start)),
        latency: acked.then(|| back.duration_since(began)),
        failed_attempts,
        lost_while_held,
    }
}
