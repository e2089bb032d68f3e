//! `bench idle`: open N connections, hold them, report the connect rate.

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::Args;
use tokio::sync::Semaphore;
use tokio::time::Instant;

use super::{emit, histogram, progress, tcp_of, BenchStream, Errors, Percentiles, Target};

/// Flags of `bench idle`.
#[derive(Debug, Args)]
pub struct IdleArgs {
    #[command(flatten)]
    target: Target,
    /// Connections to open and hold.
    #[arg(long, value_name = "N")]
    conns: u64,
    /// Connection attempts in flight at once.
    #[arg(long, value_name = "N", default_value_t = 256)]
    parallel: usize,
    /// Send `hello` on each connection (the server then holds it to the heartbeat).
    #[arg(long)]
    hello: bool,
    /// How long to hold them; without it, until SIGINT or SIGTERM.
    #[arg(long, value_name = "DURATION", value_parser = connwarden::config::parse_duration)]
    hold: Option<Duration>,
}

#[derive(serde::Serialize)]
struct Report {
    workload: &'static str,
    conns: u64,
    opened: u64,
    connect_seconds: f64,
    connects_per_second: f64,
    connect_latency: Percentiles,
    errors: Errors,
    /// Connections the server had closed by the end of the hold.
    closed_by_server: u64,
}

pub async fn run(args: IdleArgs) -> anyhow::Result<ExitCode> {
    let target = Arc::new(args.target);
    let bar = progress(args.conns, "connected");
    let limit = Arc::new(Semaphore::new(args.parallel.max(1)));
    let started = Instant::now();
    let mut attempts = tokio::task::JoinSet::new();
    let mut tally = Tally {
        held: Vec::with_capacity(args.conns as usize),
        latency: histogram(),
        errors: Errors::default(),
    };
    for n in 0..args.conns {
        let permit = Arc::clone(&limit).acquire_owned().await?;
        let target = Arc::clone(&target);
        let hello = args.hello;
        attempts.spawn(async move {
            let _permit = permit;
            let began = Instant::now();
            let mut stream = target.open(n, false).await?;
            if hello {
                use tokio::io::AsyncWriteExt;
                stream
                    .write_all(b"{\"type\":\"hello\",\"client\":\"connwarden-bench\"}\n")
                    .await?;
            }
            Ok::<_, std::io::Error>((stream, began.elapsed()))
        });
        while let Some(done) = attempts.try_join_next() {
            bar.inc(1);
            tally.take(done?);
        }
    }
    while let Some(done) = attempts.join_next().await {
        bar.inc(1);
        tally.take(done?);
    }
    let Tally {
        held,
        latency,
        errors,
    } = tally;
    let connect_seconds = started.elapsed().as_secs_f64();
    bar.finish_and_clear();
    eprintln!(
        "holding {} connections ({} errors) to {}",
        held.len(),
        errors.total(),
        target.to
    );
    match args.hold {
        Some(hold) => tokio::time::sleep(hold).await,
        None => super::super::signals::stop_signal()?.await,
    }
    let closed_by_server = held.iter().filter(|s| is_closed(tcp_of(s))).count() as u64;
    let report = Report {
        workload: "idle",
        conns: args.conns,
        opened: held.len() as u64,
        connect_seconds,
        connects_per_second: held.len() as f64 / connect_seconds.max(1e-9),
        connect_latency: Percentiles::of(&latency),
        errors,
        closed_by_server,
    };
    let text = vec![
        format!(
            "opened {} of {} connections in {:.2} s ({:.0} connects/s); {}",
            report.opened,
            report.conns,
            report.connect_seconds,
            report.connects_per_second,
            report.errors.line()
        ),
        format!("connect latency: {}", report.connect_latency.line()),
        format!(
            "closed by the server while held: {}",
            report.closed_by_server
        ),
    ];
    emit(target.json, &report, &text)?;
    Ok(if report.opened == report.conns {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// The connections held so far, and how opening them went.
struct Tally {
    held: Vec<BenchStream>,
    latency: hdrhistogram::Histogram<u64>,
    errors: Errors,
}

impl Tally {
    fn take(&mut self, attempt: std::io::Result<(BenchStream, Duration)>) {
        match attempt {
            Ok((stream, took)) => {
                self.latency.saturating_record(took.as_micros() as u64);
                self.held.push(stream);
            }
            Err(error) => self.errors.add(&error),
        }
    }
}

/// Whether the server closed this connection (end of stream or an error is readable now).
fn is_closed(stream: &tokio::net::TcpStream) -> bool {
    let mut byte = [0u8; 1];
    match stream.try_read(&mut byte) {
        Ok(0) => true,
        Ok(_) => false,
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => false,
        Err(_) => true,
    }
}
