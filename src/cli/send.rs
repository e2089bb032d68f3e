//! `connwarden send`: read items (any JSON object stream, as the server reads it, or bare
//! addresses one per line) and deliver them with the client library.

use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use connwarden::client::{
    BackoffPolicy, Client, ClientConfig, ClientError, ItemReader, Progress, RefusedInput, Summary,
    DEFAULT_MAX_OBJECT,
};
use connwarden::config::{self, LogFormat, UserTimeout};
use connwarden::tls::ClientTls;
use indicatif::{ProgressBar, ProgressStyle};
use tokio::io::AsyncRead;
use tokio::time::Instant;
use tracing::level_filters::LevelFilter;

/// Flags of `send`.
#[derive(Debug, Args)]
pub struct SendArgs {
    /// Server address; or several, comma-separated (g1:7000,g2:7000), to fail over between:
    /// after a lost connection the next one is tried, and unacknowledged items are sent again.
    #[arg(long, value_name = "ADDR[,ADDR…]", default_value = "127.0.0.1:7000")]
    to: String,
    /// This client's identity in its hello: with each item's number it lets a JetStream sink
    /// store a resend once, through whichever gateway [default: random for each run].
    #[arg(long, value_name = "ID")]
    client_id: Option<String>,
    /// Number items and wait for every ack; unacknowledged items are sent again after a
    /// reconnect. Without it an item is done once written.
    #[arg(long)]
    ack: bool,
    /// Items in flight (sent and not yet acknowledged), at most.
    #[arg(long, value_name = "N", default_value_t = 1024)]
    window: usize,
    /// Items per second, at most [default: as fast as the server takes them].
    #[arg(long, value_name = "PER_SEC")]
    rate: Option<f64>,
    /// Input: a file, or - for standard input, of JSON objects as the server takes them (one
    /// per line, pretty-printed over several, or back to back) or of bare IPv4 or IPv6
    /// addresses, one per line.
    #[arg(value_name = "FILE|-", default_value = "-")]
    input: String,
    /// Largest input object as read, whitespace included: a larger one is refused with its line
    /// and skipped (the server's own max_frame applies to what is sent) [default: 16MiB].
    #[arg(long, value_name = "SIZE", value_parser = config::parse_size, default_value_t = DEFAULT_MAX_OBJECT, hide_default_value = true)]
    max_object: usize,
    /// Longest wait for a connection and the server's hello [default: 5s].
    #[arg(long, value_name = "DURATION", value_parser = config::parse_duration)]
    connect_timeout: Option<Duration>,
    /// TCP_KEEPIDLE of the client's socket [default: 30s].
    #[arg(long, value_name = "DURATION", value_parser = config::parse_duration)]
    keepalive_idle: Option<Duration>,
    /// TCP_KEEPINTVL [default: 1s].
    #[arg(long, value_name = "DURATION", value_parser = config::parse_duration)]
    keepalive_interval: Option<Duration>,
    /// TCP_KEEPCNT [default: 30].
    #[arg(long, value_name = "N")]
    keepalive_count: Option<u32>,
    /// TCP_USER_TIMEOUT: auto (idle + interval x count), a duration, or off [default: auto].
    #[arg(long, value_name = "auto|off|DURATION", value_parser = config::parse_user_timeout)]
    user_timeout: Option<UserTimeout>,
    /// Inbound silence after which the client pings the server [default: 15s].
    #[arg(long, value_name = "DURATION", value_parser = config::parse_duration)]
    heartbeat_interval: Option<Duration>,
    /// Silent intervals after which the connection is given up [default: 3].
    #[arg(long, value_name = "N")]
    heartbeat_misses: Option<u32>,
    /// First reconnect delay ceiling (full jitter below it) [default: 100ms].
    #[arg(long, value_name = "DURATION", value_parser = config::parse_duration)]
    backoff_initial: Option<Duration>,
    /// Largest reconnect delay ceiling [default: 10s].
    #[arg(long, value_name = "DURATION", value_parser = config::parse_duration)]
    backoff_max: Option<Duration>,
    /// Give up after this long without a working connection, or off [default: off].
    #[arg(long, value_name = "DURATION")]
    give_up: Option<String>,
    /// SO_RCVBUF in bytes, set before connect, or auto [default: auto].
    #[arg(long, value_name = "SIZE")]
    recv_buffer: Option<String>,
    /// SO_SNDBUF in bytes, set before connect, or auto [default: auto].
    #[arg(long, value_name = "SIZE")]
    send_buffer: Option<String>,
    /// Speak TLS to the server (implied by --tls-ca); without --tls-ca the system's trust store
    /// verifies the server.
    #[arg(long)]
    tls: bool,
    /// PEM file of the CA (or the server certificate) to trust.
    #[arg(long, value_name = "FILE")]
    tls_ca: Option<PathBuf>,
    /// PEM certificate to present to a server that asks for one (mutual TLS); with --tls-key.
    #[arg(long, value_name = "FILE", requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// PEM private key of --tls-cert.
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// File whose first line is the token to send in hello (the server's --auth-tokens).
    #[arg(long, value_name = "FILE")]
    token_file: Option<PathBuf>,
    /// The name the server's certificate must carry [default: the host of --to].
    #[arg(long, value_name = "NAME")]
    server_name: Option<String>,
    /// Log format: text or json.
    #[arg(long, value_name = "FORMAT", default_value = "text", value_parser = config::parse_log_format)]
    log_format: LogFormat,
}

/// Parses an optional flag whose value may be "off"/"auto" (clap reserves `Option<Option<T>>`).
fn parse_flag<T>(
    flag: &str,
    text: &Option<String>,
    parse: fn(&str) -> Result<T, String>,
) -> anyhow::Result<Option<T>> {
    text.as_deref()
        .map(|t| parse(t).map_err(|reason| anyhow::anyhow!("--{flag} {t:?}: {reason}")))
        .transpose()
}

impl SendArgs {
    fn client_config(&self) -> anyhow::Result<ClientConfig> {
        anyhow::ensure!(self.window > 0, "--window must be at least 1");
        if let Some(rate) = self.rate {
            anyhow::ensure!(rate > 0.0 && rate.is_finite(), "--rate must be above 0");
        }
        let mut config = ClientConfig::new(self.to.clone());
        anyhow::ensure!(!config.addrs().is_empty(), "--to needs an address");
        if let Some(id) = &self.client_id {
            connwarden::protocol::check_client_id(id)
                .map_err(|reason| anyhow::anyhow!("--client-id {id:?}: {reason}"))?;
            config.client_id = id.clone();
        }
        config.ack = self.ack;
        config.window = self.window;
        let defaults = BackoffPolicy::default();
        config.backoff = BackoffPolicy {
            initial: self.backoff_initial.unwrap_or(defaults.initial),
            max: self.backoff_max.unwrap_or(defaults.max),
            give_up: parse_flag("give-up", &self.give_up, config::parse_optional_duration)?
                .unwrap_or(defaults.give_up),
        };
        set(&mut config.connect_timeout, self.connect_timeout);
        set(&mut config.keepalive.idle, self.keepalive_idle);
        set(&mut config.keepalive.interval, self.keepalive_interval);
        set(&mut config.keepalive.count, self.keepalive_count);
        set(&mut config.user_timeout, self.user_timeout);
        set(&mut config.heartbeat_interval, self.heartbeat_interval);
        set(&mut config.heartbeat_misses, self.heartbeat_misses);
        set(
            &mut config.recv_buffer,
            parse_flag("recv-buffer", &self.recv_buffer, config::parse_buffer)?,
        );
        set(
            &mut config.send_buffer,
            parse_flag("send-buffer", &self.send_buffer, config::parse_buffer)?,
        );
        anyhow::ensure!(
            config.heartbeat_misses > 0,
            "--heartbeat-misses must be at least 1"
        );
        if let Some(path) = &self.token_file {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("--token-file {}", path.display()))?;
            let token = text.lines().next().unwrap_or("").trim();
            anyhow::ensure!(
                !token.is_empty(),
                "--token-file {}: no token on its first line",
                path.display()
            );
            config.token = Some(token.to_owned());
        }
        let wants_tls = self.tls || self.tls_ca.is_some() || self.tls_cert.is_some();
        if wants_tls {
            let identity = self.tls_cert.as_deref().zip(self.tls_key.as_deref());
            let tls =
                ClientTls::from_files(self.tls_ca.as_deref(), identity, self.server_name.clone())?;
            config.tls = Some(tls);
        } else {
            anyhow::ensure!(self.server_name.is_none(), "--server-name needs --tls");
        }
        anyhow::ensure!(
            !config.heartbeat_interval.is_zero(),
            "--heartbeat-interval must be above 0"
        );
        Ok(config)
    }
}

fn set<T>(field: &mut T, value: Option<T>) {
    if let Some(value) = value {
        *field = value;
    }
}

/// Lines of the input the client refused before sending, by error code.
#[derive(Default)]
struct Refused {
    by_code: BTreeMap<String, u64>,
}

pub fn run(args: SendArgs) -> anyhow::Result<ExitCode> {
    let config = args.client_config()?;
    let bar = std::io::stderr().is_terminal().then(progress_bar);
    let _logging = super::logging::init_logging(args.log_format, LevelFilter::INFO, bar.clone());
    // One connection's work: one thread. Feeding and delivering on the same thread spares a
    // cross-thread wake-up per handful of items (measured: most of the system time otherwise).
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the Tokio runtime")?;
    anyhow::ensure!(
        (16..=connwarden::protocol::MAX_FRAME_LIMIT).contains(&args.max_object),
        "--max-object must be between 16 bytes and 1 GiB"
    );
    let outcome = runtime.block_on(async move {
        let input: Box<dyn AsyncRead + Unpin + Send> = if args.input == "-" {
            Box::new(tokio::io::stdin())
        } else {
            let path = PathBuf::from(&args.input);
            Box::new(
                tokio::fs::File::open(&path)
                    .await
                    .with_context(|| format!("cannot open {}", path.display()))?,
            )
        };
        tracing::info!(to = %config.addr, client_id = %config.client_id, ack = config.ack, window = config.window, liveness_bound_ms = config.liveness_bound().as_millis() as u64, "sending");
        let started = Instant::now();
        let client = Client::start(config);
        let ticker = bar.clone().map(|bar| tokio::spawn(tick(bar, client.progress())));
        let read = feed(input, args.max_object, &client, args.rate).await;
        let result = client.finish().await;
        if let Some(ticker) = ticker {
            ticker.abort();
        }
        if let Some(bar) = &bar {
            bar.finish_and_clear();
        }
        let refused = read?;
        report(result, refused, started.elapsed(), args.ack)
    });
    // A read of standard input still waiting on the blocking pool (the client gave up before
    // the input ended) must not keep the process from exiting: dropping the runtime would wait
    // for it.
    runtime.shutdown_background();
    outcome
}

/// Reads items as the server would (any JSON object stream, or bare addresses one per line),
/// checks each, and hands the good ones to the client at the requested rate.
async fn feed(
    input: Box<dyn AsyncRead + Unpin + Send>,
    max_object: usize,
    client: &Client,
    rate: Option<f64>,
) -> anyhow::Result<Refused> {
    let mut refused = Refused::default();
    let mut items = ItemReader::new(input, max_object);
    let mut handed = 0u64;
    let started = Instant::now();
    while let Some(found) = items.next().await.context("cannot read the input")? {
        match found {
            Ok(item) => {
                if let Some(rate) = rate {
                    let due = started + Duration::from_secs_f64(handed as f64 / rate);
                    tokio::time::sleep_until(due).await;
                }
                if client.send(item).await.is_err() {
                    // The client stopped (gave up); `finish` says why.
                    return Ok(refused);
                }
                handed += 1;
            }
            Err(RefusedInput { line, error }) => {
                tracing::warn!(line, code = %error.code, detail = %error.message, "input refused");
                *refused.by_code.entry(error.code.to_string()).or_default() += 1;
            }
        }
    }
    Ok(refused)
}

fn report(
    result: Result<Summary, ClientError>,
    refused: Refused,
    elapsed: Duration,
    ack: bool,
) -> anyhow::Result<ExitCode> {
    let (summary, failure) = match result {
        Ok(summary) => (summary, None),
        Err(error @ ClientError::GaveUp { .. }) => {
            let message = error.to_string();
            let ClientError::GaveUp { summary, .. } = error else {
                unreachable!("matched above")
            };
            (*summary, Some(message))
        }
        Err(error) => return Err(error.into()),
    };
    let mut rejected = refused.by_code;
    for (code, count) in &summary.rejected {
        *rejected.entry(code.clone()).or_default() += count;
    }
    let rejected_total: u64 = rejected.values().sum();
    let delivered = if ack {
        summary.acknowledged
    } else {
        summary.written
    };
    let rate = delivered as f64 / elapsed.as_secs_f64().max(1e-9);
    let codes: Vec<String> = rejected.iter().map(|(c, n)| format!("{c}: {n}")).collect();
    eprintln!(
        "sent {} items, {} {}, resent {}, rejected {}{} over {} connections in {:.2} s ({:.0} items/s)",
        summary.sent,
        if ack { "acknowledged" } else { "written" },
        delivered,
        summary.resent,
        rejected_total,
        if codes.is_empty() {
            String::new()
        } else {
            format!(" ({})", codes.join(", "))
        },
        summary.connections,
        elapsed.as_secs_f64(),
        rate,
    );
    if let Some(message) = failure {
        eprintln!("connwarden: error: {message}");
        return Ok(ExitCode::FAILURE);
    }
    let all_delivered = delivered + summary.rejected.values().sum::<u64>() == summary.taken;
    Ok(if all_delivered && rejected_total == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

fn progress_bar() -> ProgressBar {
    let bar = ProgressBar::new_spinner();
    bar.set_style(
        ProgressStyle::with_template("{spinner} [{elapsed_precise}] {msg}")
            .expect("the template is valid"),
    );
    bar
}

/// Refreshes the progress line from the client's counters.
async fn tick(bar: ProgressBar, progress: Arc<Progress>) {
    let mut interval = tokio::time::interval(Duration::from_millis(200));
    let mut last = (Instant::now(), 0u64);
    loop {
        interval.tick().await;
        let load = |c: &std::sync::atomic::AtomicU64| c.load(Ordering::Relaxed);
        let done = load(&progress.acknowledged) + load(&progress.written);
        let now = Instant::now();
        let rate = (done - last.1) as f64 / now.duration_since(last.0).as_secs_f64().max(1e-9);
        last = (now, done);
        bar.set_message(format!(
            "sent {} · done {} · resent {} · rejected {} · {:.0}/s · {}",
            load(&progress.sent),
            done,
            load(&progress.resent),
            load(&progress.rejected),
            rate,
            if progress.connected.load(Ordering::Relaxed) {
                "connected"
            } else {
                "reconnecting"
            }
        ));
        bar.tick();
    }
}
