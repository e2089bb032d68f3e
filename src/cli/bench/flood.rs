//! `bench flood`: every connection sends its items as fast as the server takes them; with
//! `--ack`, each carries an id and the time to its ack is recorded.

use std::process::ExitCode;
use std::sync::Arc;

use clap::Args;
use connwarden::protocol::Reply;
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::sync::{mpsc, Semaphore};
use tokio::time::Instant;
use tokio_util::either::Either;

use super::{emit, histogram, item_line, progress, Errors, Percentiles, Target};

/// Flags of `bench flood`.
#[derive(Debug, Args)]
pub struct FloodArgs {
    #[command(flatten)]
    target: Target,
    /// Connections sending at once.
    #[arg(long, value_name = "C", default_value_t = 4)]
    conns: u64,
    /// Items per connection.
    #[arg(long, value_name = "M", default_value_t = 100_000)]
    items: u64,
    /// Give items ids and wait for every ack; records ack latency.
    #[arg(long)]
    ack: bool,
    /// Items per write.
    #[arg(long, value_name = "N", default_value_t = 256)]
    batch: u64,
    /// With --ack: unacknowledged items per connection, at most.
    #[arg(long, value_name = "N", default_value_t = 1024)]
    window: u64,
    /// Start each connection with a hello carrying its own client_id, as the client library
    /// does: a JetStream sink then gives every item a message id (off by default, so that
    /// floods stay comparable with earlier runs).
    #[arg(long)]
    client_ids: bool,
}

#[derive(serde::Serialize)]
struct Report {
    workload: &'static str,
    conns: u64,
    items_per_conn: u64,
    sent: u64,
    acknowledged: Option<u64>,
    refused: u64,
    seconds: f64,
    items_per_second: f64,
    ack_latency: Option<Percentiles>,
    errors: Errors,
}

/// What one connection did.
struct ConnResult {
    sent: u64,
    acked: u64,
    refused: u64,
    latency: hdrhistogram::Histogram<u64>,
    errors: Errors,
}

pub async fn run(args: FloodArgs) -> anyhow::Result<ExitCode> {
    let args = Arc::new(args);
    let bar = progress(args.conns * args.items, "items");
    let started = Instant::now();
    let mut conns = tokio::task::JoinSet::new();
    for c in 0..args.conns {
        let args = Arc::clone(&args);
        let bar = bar.clone();
        conns.spawn(async move { one_connection(&args, c, &bar).await });
    }
    let mut total = ConnResult {
        sent: 0,
        acked: 0,
        refused: 0,
        latency: histogram(),
        errors: Errors::default(),
    };
    while let Some(done) = conns.join_next().await {
        let result = done?;
        total.sent += result.sent;
        total.acked += result.acked;
        total.refused += result.refused;
        total.latency.add(&result.latency)?;
        total.errors.merge(result.errors);
    }
    let seconds = started.elapsed().as_secs_f64();
    bar.finish_and_clear();
    let done = if args.ack { total.acked } else { total.sent };
    let report = Report {
        workload: "flood",
        conns: args.conns,
        items_per_conn: args.items,
        sent: total.sent,
        acknowledged: args.ack.then_some(total.acked),
        refused: total.refused,
        seconds,
        items_per_second: done as f64 / seconds.max(1e-9),
        ack_latency: args.ack.then(|| Percentiles::of(&total.latency)),
        errors: total.errors,
    };
    let mut text = vec![format!(
        "{} connections sent {} items{} in {:.2} s: {:.0} items/s; refused {}; {}",
        report.conns,
        report.sent,
        report
            .acknowledged
            .map_or_else(String::new, |a| format!(", {a} acknowledged")),
        report.seconds,
        report.items_per_second,
        report.refused,
        report.errors.line()
    )];
    if let Some(latency) = &report.ack_latency {
        text.push(format!("ack latency: {}", latency.line()));
    }
    emit(args.target.json, &report, &text)?;
    let complete = report.errors.total() == 0
        && report.sent == args.conns * args.items
        && (!args.ack || report.acknowledged == Some(report.sent));
    Ok(if complete {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

async fn one_connection(args: &FloodArgs, c: u64, bar: &indicatif::ProgressBar) -> ConnResult {
    let mut result = ConnResult {
        sent: 0,
        acked: 0,
        refused: 0,
        latency: histogram(),
        errors: Errors::default(),
    };
    let stream = match args.target.open(c, false).await {
        Ok(stream) => stream,
        Err(error) => {
            result.errors.add(&error);
            return result;
        }
    };
    match stream {
        Either::Left(tcp) => {
            let (read, write) = tcp.into_split();
            drive(args, c, bar, read, write, result).await
        }
        Either::Right(tls) => {
            let (read, write) = tokio::io::split(tls);
            drive(args, c, bar, read, write, result).await
        }
    }
}

/// Sends connection `c`'s items on `write` and counts the replies read from `read`.
async fn drive(
    args: &FloodArgs,
    c: u64,
    bar: &indicatif::ProgressBar,
    read: impl AsyncRead + Unpin + Send + 'static,
    mut write: impl AsyncWrite + Unpin,
    mut result: ConnResult,
) -> ConnResult {
    let window = Arc::new(Semaphore::new(if args.ack {
        args.window.max(args.batch) as usize
    } else {
        Semaphore::MAX_PERMITS
    }));
    // The send instant of each batch, in order; acks of one connection come in order.
    let (sent_at, sent_at_rx) = mpsc::unbounded_channel::<(u64, Instant)>();
    let replies = Replies {
        window: Arc::clone(&window),
        sent_at: sent_at_rx,
        bar: args.ack.then(|| bar.clone()),
    };
    let reader = tokio::spawn(replies.count(read));
    if args.client_ids {
        let hello = format!(
            "{{\"type\":\"hello\",\"client_id\":\"flood-{}-{c}\"}}\n",
            connwarden::client::random_client_id()
        );
        if let Err(error) = write.write_all(hello.as_bytes()).await {
            result.errors.add(&error);
        }
    }
    send_items(args, c, bar, &mut write, &window, sent_at, &mut result).await;
    // Our side is done; the server reads to the end, answers what is left, and closes.
    let _ = write.shutdown().await;
    match reader.await {
        Ok((acked, refused, latency)) => {
            result.acked = acked;
            result.refused = refused;
            result.latency = latency;
        }
        Err(error) => result.errors.add(&std::io::Error::other(error.to_string())),
    }
    result
}

/// Writes connection `c`'s items in batches, each once the window has room for it; with acks,
/// says when each batch left.
async fn send_items(
    args: &FloodArgs,
    c: u64,
    bar: &indicatif::ProgressBar,
    write: &mut (impl AsyncWrite + Unpin),
    window: &Arc<Semaphore>,
    sent_at: mpsc::UnboundedSender<(u64, Instant)>,
    result: &mut ConnResult,
) {
    let mut buf = Vec::with_capacity(args.batch as usize * 48);
    let mut n = 0;
    while n < args.items {
        let count = args.batch.min(args.items - n);
        match Arc::clone(window).acquire_many_owned(count as u32).await {
            Ok(permits) => permits.forget(),
            Err(_) => break,
        }
        buf.clear();
        for i in n..n + count {
            let global = c * args.items + i;
            item_line(&mut buf, global, args.ack.then_some(i));
        }
        if args.ack {
            let _ = sent_at.send((n + count, Instant::now()));
        }
        if let Err(error) = write.write_all(&buf).await {
            result.errors.add(&error);
            break;
        }
        n += count;
        result.sent += count;
        if !args.ack {
            bar.inc(count);
        }
    }
}

/// The reading side of one connection: each reply gives its item's room in the window back.
struct Replies {
    window: Arc<Semaphore>,
    /// The end (exclusive) and send instant of each batch, in order.
    sent_at: mpsc::UnboundedReceiver<(u64, Instant)>,
    /// Counts acks as progress (with `--ack`).
    bar: Option<indicatif::ProgressBar>,
}

impl Replies {
    /// Reads replies until the server closes: acks, refusals, and each ack's latency from its
    /// batch's send.
    async fn count(
        mut self,
        read: impl AsyncRead + Unpin,
    ) -> (u64, u64, hdrhistogram::Histogram<u64>) {
        let mut lines = BufReader::new(read).lines();
        let (mut acked, mut refused) = (0u64, 0u64);
        let mut latency = histogram();
        let mut batch: Option<(u64, Instant)> = None;
        while let Ok(Some(line)) = lines.next_line().await {
            match connwarden::protocol::parse_reply(line.as_bytes()) {
                Ok(Reply::Ack { id }) => {
                    let id: u64 = std::str::from_utf8(&id)
                        .ok()
                        .and_then(|t| t.parse().ok())
                        .unwrap_or(0);
                    while batch.is_none_or(|(end, _)| id >= end) {
                        match self.sent_at.recv().await {
                            Some(next) => batch = Some(next),
                            None => break,
                        }
                    }
                    if let Some((_, at)) = batch {
                        latency.saturating_record(at.elapsed().as_micros() as u64);
                    }
                    acked += 1;
                    self.window.add_permits(1);
                    if let Some(bar) = &self.bar {
                        bar.inc(1);
                    }
                }
                Ok(Reply::Error { .. }) => {
                    refused += 1;
                    self.window.add_permits(1);
                }
                _ => {}
            }
        }
        (acked, refused, latency)
    }
}
