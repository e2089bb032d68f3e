//! `bench churn`: connect, send one item, close; K times, from many workers. A cycle ends when
//! the server has answered: its ack (with `--ack`), or its own close after reading our end of
//! stream (so it works against servers that do not ack, such as the Go baseline).

use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use clap::Args;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::time::Instant;

use super::{emit, histogram, item_line, progress, Errors, Percentiles, Target};

/// Flags of `bench churn`.
#[derive(Debug, Args)]
pub struct ChurnArgs {
    #[command(flatten)]
    target: Target,
    /// Connect–send–close cycles in all.
    #[arg(long, value_name = "K", default_value_t = 100_000)]
    cycles: u64,
    /// Cycles in progress at once.
    #[arg(long, value_name = "N", default_value_t = 64)]
    concurrency: u64,
    /// Give the item an id and wait for its ack before closing.
    #[arg(long)]
    ack: bool,
}

#[derive(serde::Serialize)]
struct Report {
    workload: &'static str,
    cycles: u64,
    completed: u64,
    seconds: f64,
    cycles_per_second: f64,
    cycle_latency: Percentiles,
    errors: Errors,
}

pub async fn run(args: ChurnArgs) -> anyhow::Result<ExitCode> {
    let args = Arc::new(args);
    let bar = progress(args.cycles, "cycles");
    let next = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let mut workers = tokio::task::JoinSet::new();
    for _ in 0..args.concurrency.max(1) {
        let (args, next, bar) = (Arc::clone(&args), Arc::clone(&next), bar.clone());
        workers.spawn(async move {
            let mut latency = histogram();
            let mut errors = Errors::default();
            let mut completed = 0u64;
            loop {
                let n = next.fetch_add(1, Ordering::Relaxed);
                if n >= args.cycles {
                    break;
                }
                let began = Instant::now();
                match cycle(&args.target, n, args.ack).await {
                    Ok(()) => {
                        completed += 1;
                        latency.saturating_record(began.elapsed().as_micros() as u64);
                    }
                    Err(error) => errors.add(&error),
                }
                bar.inc(1);
            }
            (completed, latency, errors)
        });
    }
    let (mut completed, mut latency, mut errors) = (0, histogram(), Errors::default());
    while let Some(done) = workers.join_next().await {
        let (c, l, e) = done?;
        completed += c;
        latency.add(&l)?;
        errors.merge(e);
    }
    let seconds = started.elapsed().as_secs_f64();
    bar.finish_and_clear();
    let report = Report {
        workload: "churn",
        cycles: args.cycles,
        completed,
        seconds,
        cycles_per_second: completed as f64 / seconds.max(1e-9),
        cycle_latency: Percentiles::of(&latency),
        errors,
    };
    let text = vec![
        format!(
            "{} of {} cycles in {:.2} s: {:.0} cycles/s; {}",
            report.completed,
            report.cycles,
            report.seconds,
            report.cycles_per_second,
            report.errors.line()
        ),
        format!("cycle latency: {}", report.cycle_latency.line()),
    ];
    emit(args.target.json, &report, &text)?;
    Ok(if report.completed == report.cycles {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// One cycle: connect, send an item, then read its ack and close (`ack`), or close our side and
/// read until the server closes.
async fn cycle(target: &Target, n: u64, ack: bool) -> std::io::Result<()> {
    let stream = target.open(n, true).await?;
    let (read, mut write) = tokio::io::split(stream);
    let mut line = Vec::with_capacity(64);
    item_line(&mut line, n, ack.then_some(n));
    write.write_all(&line).await?;
    let mut reader = BufReader::new(read);
    if ack {
        let mut reply = String::new();
        reader.read_line(&mut reply).await?;
        if !matches!(
            connwarden::protocol::parse_reply(reply.as_bytes()),
            Ok(connwarden::protocol::Reply::Ack { .. })
        ) {
            return Err(std::io::Error::other(format!("no ack: {}", reply.trim())));
        }
        return write.shutdown().await;
    }
    write.shutdown().await?;
    let mut rest = Vec::new();
    tokio::io::AsyncReadExt::read_to_end(&mut reader, &mut rest).await?;
    Ok(())
}
