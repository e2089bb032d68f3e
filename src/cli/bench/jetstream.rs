//! `bench jetstream`: a plain `async-nats` publisher, straight into a JetStream stream, many
//! publishes in flight within a window and every publish ack awaited. It is the ceiling the
//! JetStream sink is measured against (`bench/jetstream.sh`): what the server and its disk allow
//! a client that does nothing else, with messages of the same size and a message id each.

use std::collections::VecDeque;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::Context;
use async_nats::jetstream::{self, message::PublishMessage, stream};
use bytes::Bytes;
use clap::Args;

use super::{emit, progress};

/// Flags of `bench jetstream`.
#[derive(Debug, Args)]
pub struct JetStreamArgs {
    /// The NATS server (comma-separated for a cluster).
    #[arg(long, value_name = "URL", default_value = "nats://127.0.0.1:4222")]
    nats: String,
    /// The stream; created if missing (file storage, 2-minute duplicate window).
    #[arg(long, value_name = "NAME", default_value = "CONNWARDEN_BENCH")]
    stream: String,
    /// Replicas of a created stream.
    #[arg(long, value_name = "N", default_value_t = 1)]
    replicas: usize,
    /// The subject published to (the stream listens on it).
    #[arg(long, value_name = "SUBJECT", default_value = "connwarden.bench")]
    subject: String,
    /// Messages to publish.
    #[arg(long, value_name = "M", default_value_t = 100_000)]
    messages: u64,
    /// Payload bytes of each message.
    #[arg(long, value_name = "BYTES", default_value_t = 160)]
    size: usize,
    /// Take the payload size from the last message of this stream instead (a gateway's record).
    #[arg(long, value_name = "STREAM")]
    size_like: Option<String>,
    /// Publishes awaiting their ack, at most.
    #[arg(long, value_name = "N", default_value_t = 4096)]
    window: usize,
    /// Print one JSON object instead of text.
    #[arg(long)]
    json: bool,
}

#[derive(serde::Serialize)]
struct Report {
    workload: &'static str,
    messages: u64,
    payload_bytes: usize,
    window: usize,
    replicas: usize,
    acknowledged: u64,
    seconds: f64,
    items_per_second: f64,
    errors: u64,
}

pub async fn run(args: JetStreamArgs) -> anyhow::Result<ExitCode> {
    let config = connwarden::config::NatsConfig {
        urls: connwarden::config::parse_nats_urls(std::slice::from_ref(&args.nats))
            .map_err(|reason| anyhow::anyhow!("--nats: {reason}"))?,
        ..Default::default()
    };
    let client = connwarden::nats::connect(&config, "connwarden bench jetstream", None)
        .await
        .context("cannot connect to NATS")?;
    let js = jetstream::ContextBuilder::new()
        .timeout(Duration::from_secs(10))
        .max_ack_inflight(args.window)
        .build(client);
    js.get_or_create_stream(stream::Config {
        name: args.stream.clone(),
        subjects: vec![args.subject.clone()],
        storage: stream::StorageType::File,
        num_replicas: args.replicas,
        duplicate_window: Duration::from_secs(120),
        ..Default::default()
    })
    .await
    .context("cannot find or create the stream")?;
    let size = match &args.size_like {
        Some(name) => last_payload_size(&js, name).await?,
        None => args.size,
    };
    let payload = Bytes::from(vec![b'x'; size]);
    // Message ids like a gateway's (`CLIENT_ID:ITEM_ID`), so that JetStream's duplicate check
    // costs the same; unique per run.
    let run_id = connwarden::client::random_client_id();
    let bar = progress(args.messages, "messages");
    let started = Instant::now();
    let mut in_flight = VecDeque::with_capacity(args.window);
    // Acknowledged, and failed (not handed to NATS, or answered with an error).
    let mut counts = [0u64; 2];
    let mut settle = |outcome: Result<(), ()>| counts[usize::from(outcome.is_err())] += 1;
    for n in 0..args.messages {
        if in_flight.len() >= args.window {
            let ack: jetstream::context::PublishAckFuture =
                in_flight.pop_front().expect("the window is full");
            settle(ack.await.map(|_| ()).map_err(|_| ()));
            bar.inc(1);
        }
        let message = PublishMessage::build()
            .payload(payload.clone())
            .message_id(format!("{run_id}:{n}"));
        match js.send_publish(args.subject.clone(), message).await {
            Ok(ack) => in_flight.push_back(ack),
            Err(_) => settle(Err(())),
        }
    }
    for ack in in_flight {
        settle(ack.await.map(|_| ()).map_err(|_| ()));
    }
    let [acknowledged, errors] = counts;
    let seconds = started.elapsed().as_secs_f64();
    bar.finish_and_clear();
    let report = Report {
        workload: "jetstream",
        messages: args.messages,
        payload_bytes: size,
        window: args.window,
        replicas: args.replicas,
        acknowledged,
        seconds,
        items_per_second: acknowledged as f64 / seconds.max(1e-9),
        errors,
    };
    let text = [format!(
        "{} messages of {} bytes into {} (R{}), window {}: {} acknowledged in {:.2} s, {:.0}/s; {} errors",
        report.messages,
        report.payload_bytes,
        args.stream,
        report.replicas,
        report.window,
        report.acknowledged,
        report.seconds,
        report.items_per_second,
        report.errors
    )];
    emit(args.json, &report, &text)?;
    Ok(if errors == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// The payload size of the last message in stream `name`.
async fn last_payload_size(js: &jetstream::Context, name: &str) -> anyhow::Result<usize> {
    let mut stream = js
        .get_stream(name)
        .await
        .with_context(|| format!("--size-like: no stream {name}"))?;
    let last = stream.info().await?.state.last_sequence;
    let message = stream
        .get_raw_message(last)
        .await
        .with_context(|| format!("--size-like: cannot read message {last} of {name}"))?;
    Ok(message.payload.len())
}
