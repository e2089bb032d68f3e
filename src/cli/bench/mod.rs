//! `connwarden bench`: a load generator in the binary. `idle` holds many connections, `flood`
//! sends items as fast as the server takes them, `churn` connects, sends one item and closes,
//! over and over; `jetstream` publishes straight into a JetStream stream. Latencies go into HDR histograms; a progress bar shows on a terminal; `--json`
//! prints one object for scripts (`bench/compare.sh`).

mod churn;
mod flood;
mod idle;
mod jetstream;
mod storm;

use std::io::IsTerminal;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Subcommand};
use hdrhistogram::Histogram;
use indicatif::{ProgressBar, ProgressStyle};
use tokio::net::{TcpSocket, TcpStream};
use tracing::level_filters::LevelFilter;

/// `bench` and its workloads.
#[derive(Debug, Args)]
pub struct BenchArgs {
    #[command(subcommand)]
    workload: Workload,
}

#[derive(Debug, Subcommand)]
enum Workload {
    /// Open N connections and hold them idle.
    Idle(idle::IdleArgs),
    /// Each connection sends M items as fast as it can.
    Flood(flood::FloodArgs),
    /// Connect, send one item, close; K times, concurrently.
    Churn(churn::ChurnArgs),
    /// A fleet reconnecting at once: N library clients each start within a short window,
    /// send one item and wait for its ack.
    Storm(storm::StormArgs),
    /// Publish straight into a JetStream stream with a plain async-nats publisher (the
    /// ceiling the JetStream sink is compared with).
    Jetstream(jetstream::JetStreamArgs),
}

/// What every workload takes: where to, from where, and how to report.
#[derive(Debug, Args)]
struct Target {
    /// The server.
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:7000")]
    to: SocketAddr,
    /// Source addresses to spread connections over (--source-base, then the next ones), so
    /// that source ports never run out, or to load the server from as many peers as a fleet
    /// has (its per-address accounting); 0 lets the kernel choose.
    #[arg(long, value_name = "N", default_value_t = 0)]
    sources: u16,
    /// First source address for --sources; the next ones follow it (127.0.0.255, then
    /// 127.0.1.0, ...).
    #[arg(long, value_name = "IPV4", default_value = "127.0.0.2")]
    source_base: Ipv4Addr,
    /// Print one JSON object instead of text.
    #[arg(long)]
    json: bool,
    /// Speak TLS, trusting this PEM file (the server's CA or certificate).
    #[arg(long, value_name = "FILE")]
    tls_ca: Option<std::path::PathBuf>,
    /// The name the server's certificate must carry, with --tls-ca.
    #[arg(long, value_name = "NAME", default_value = "localhost")]
    server_name: String,
    /// The TLS connector, made once from --tls-ca.
    #[arg(skip)]
    tls: std::sync::OnceLock<Result<Option<Connector>, String>>,
}

/// A client TLS configuration for the load (one for all its connections).
#[derive(Clone)]
struct Connector(tokio_rustls::TlsConnector);

impl std::fmt::Debug for Connector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Connector")
    }
}

/// A load connection: plain TCP, or TLS over it.
type BenchStream =
    tokio_util::either::Either<TcpStream, tokio_rustls::client::TlsStream<TcpStream>>;

/// The TCP socket of a load connection.
fn tcp_of(stream: &BenchStream) -> &TcpStream {
    match stream {
        tokio_util::either::Either::Left(tcp) => tcp,
        tokio_util::either::Either::Right(tls) => tls.get_ref().0,
    }
}

impl Target {
    /// The source address of connection `n`, if sources are spread.
    fn source(&self, n: u64) -> Option<SocketAddr> {
        if self.sources == 0 || !self.to.is_ipv4() {
            return None;
        }
        let base = u32::from(self.source_base);
        let host = base.wrapping_add((n % u64::from(self.sources)) as u32);
        Some(SocketAddr::new(IpAddr::V4(Ipv4Addr::from(host)), 0))
    }

    /// The TLS connector, when --tls-ca was given.
    fn connector(&self) -> std::io::Result<Option<Connector>> {
        let made = self.tls.get_or_init(|| {
            let Some(ca) = &self.tls_ca else {
                return Ok(None);
            };
            let tls = connwarden::tls::ClientTls::from_files(Some(ca), None, None)
                .map_err(|e| e.to_string())?;
            Ok(Some(Connector(tokio_rustls::TlsConnector::from(
                tls.config,
            ))))
        });
        made.clone().map_err(std::io::Error::other)
    }

    /// Connects connection `n` (see [`Target::connect`]), and shakes hands over TLS with
    /// --tls-ca.
    async fn open(&self, n: u64, reuse_time_wait: bool) -> std::io::Result<BenchStream> {
        let tcp = self.connect(n, reuse_time_wait).await?;
        let Some(connector) = self.connector()? else {
            return Ok(tokio_util::either::Either::Left(tcp));
        };
        let name = rustls::pki_types::ServerName::try_from(self.server_name.clone())
            .map_err(std::io::Error::other)?;
        let tls = tokio::time::timeout(Duration::from_secs(10), connector.0.connect(name, tcp))
            .await
            .map_err(|_| {
                std::io::Error::new(std::io::ErrorKind::TimedOut, "handshake timed out")
            })??;
        Ok(tokio_util::either::Either::Right(tls))
    }

    /// Connects connection `n`. `reuse_time_wait` (churn): choose the source port at
    /// `connect()` (`IP_BIND_ADDRESS_NO_PORT`), where TIME_WAIT ports can be reused; otherwise
    /// at `bind()`, which gives each source address its own 64k ports (idle, flood).
    async fn connect(&self, n: u64, reuse_time_wait: bool) -> std::io::Result<TcpStream> {
        let socket = match self.to {
            SocketAddr::V4(_) => TcpSocket::new_v4()?,
            SocketAddr::V6(_) => TcpSocket::new_v6()?,
        };
        if let Some(source) = self.source(n) {
            #[cfg(target_os = "linux")]
            if reuse_time_wait {
                bind_address_no_port(&socket)?;
            }
            // Elsewhere the kernel picks the port at bind(): nothing to choose.
            #[cfg(not(target_os = "linux"))]
            let _ = reuse_time_wait;
            socket.bind(source)?;
        }
        let stream = tokio::time::timeout(Duration::from_secs(10), socket.connect(self.to))
            .await
            .map_err(|_| {
                std::io::Error::new(std::io::ErrorKind::TimedOut, "connect timed out")
            })??;
        stream.set_nodelay(true)?;
        Ok(stream)
    }
}

/// Sets `IP_BIND_ADDRESS_NO_PORT`.
#[cfg(target_os = "linux")]
fn bind_address_no_port(socket: &TcpSocket) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    let one: libc::c_int = 1;
    // SAFETY: a valid socket descriptor, an int option value of the right size.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::IPPROTO_IP,
            libc::IP_BIND_ADDRESS_NO_PORT,
            (&one as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

pub fn run(args: BenchArgs) -> anyhow::Result<ExitCode> {
    let _logging =
        super::logging::init_logging(connwarden::config::LogFormat::Text, LevelFilter::WARN, None);
    // Many connections need many descriptors.
    let _ = connwarden::sockopt::raise_nofile_limit();
    let runtime = tokio::runtime::Runtime::new().context("cannot start the Tokio runtime")?;
    runtime.block_on(async move {
        match args.workload {
            Workload::Idle(args) => idle::run(args).await,
            Workload::Flood(args) => flood::run(args).await,
            Workload::Churn(args) => churn::run(args).await,
            Workload::Jetstream(args) => jetstream::run(args).await,
            Workload::Storm(args) => storm::run(args).await,
        }
    })
}

/// A progress bar on a terminal, hidden otherwise.
fn progress(len: u64, what: &str) -> ProgressBar {
    let bar = if std::io::stderr().is_terminal() {
        ProgressBar::new(len)
    } else {
        ProgressBar::hidden()
    };
    bar.set_style(
        ProgressStyle::with_template(&format!(
            "{{spinner}} [{{elapsed_precise}}] {{bar:30}} {{pos}}/{{len}} {what} ({{per_sec}})"
        ))
        .expect("the template is valid"),
    );
    bar
}

/// A histogram of microseconds, 1 µs to 1 h, 3 significant digits.
fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("valid bounds")
}

/// Percentiles of a histogram of microseconds, in milliseconds, for reports.
#[derive(Debug, Default, serde::Serialize)]
struct Percentiles {
    count: u64,
    p50_ms: f64,
    p90_ms: f64,
    p99_ms: f64,
    p999_ms: f64,
    max_ms: f64,
}

impl Percentiles {
    fn of(histogram: &Histogram<u64>) -> Percentiles {
        let ms = |us: u64| us as f64 / 1000.0;
        Percentiles {
            count: histogram.len(),
            p50_ms: ms(histogram.value_at_quantile(0.5)),
            p90_ms: ms(histogram.value_at_quantile(0.9)),
            p99_ms: ms(histogram.value_at_quantile(0.99)),
            p999_ms: ms(histogram.value_at_quantile(0.999)),
            max_ms: ms(histogram.max()),
        }
    }

    fn line(&self) -> String {
        format!(
            "p50 {:.3} ms, p90 {:.3} ms, p99 {:.3} ms, p99.9 {:.3} ms, max {:.3} ms ({} samples)",
            self.p50_ms, self.p90_ms, self.p99_ms, self.p999_ms, self.max_ms, self.count
        )
    }
}

/// Prints `report` as JSON, or `text` lines. A closed standard output (`| head`) is not an
/// error worth a panic.
fn emit(json: bool, report: &impl serde::Serialize, text: &[String]) -> anyhow::Result<()> {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    let written = if json {
        writeln!(out, "{}", serde_json::to_string(report)?)
    } else {
        text.iter().try_for_each(|line| writeln!(out, "{line}"))
    };
    match written {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(e.into()),
        _ => Ok(()),
    }
}

/// Errors counted by kind, for reports.
#[derive(Debug, Default, serde::Serialize)]
struct Errors(std::collections::BTreeMap<String, u64>);

impl Errors {
    fn add(&mut self, error: &std::io::Error) {
        *self.0.entry(format!("{:?}", error.kind())).or_default() += 1;
    }

    fn total(&self) -> u64 {
        self.0.values().sum()
    }

    fn merge(&mut self, other: Errors) {
        for (kind, n) in other.0 {
            *self.0.entry(kind).or_default() += n;
        }
    }

    fn line(&self) -> String {
        if self.0.is_empty() {
            "no errors".into()
        } else {
            let kinds: Vec<String> = self.0.iter().map(|(k, n)| format!("{k}: {n}")).collect();
            format!("errors: {}", kinds.join(", "))
        }
    }
}

/// One item, `{"ip":…,"n":…}`, with an `id` when acks are wanted.
fn item_line(out: &mut Vec<u8>, n: u64, id: Option<u64>) {
    use std::io::Write;
    let ip = Ipv4Addr::from(0x0a00_0000 | (n as u32 & 0x00ff_ffff));
    match id {
        Some(id) => writeln!(out, "{{\"id\":{id},\"ip\":\"{ip}\",\"n\":{n}}}"),
        None => writeln!(out, "{{\"ip\":\"{ip}\",\"n\":{n}}}"),
    }
    .expect("writing to a Vec cannot fail");
}
