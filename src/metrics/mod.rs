//! Prometheus metrics: what the gateway does, and above all how long dead peers lived before
//! they were found (the detection delay, by close reason, beside the bounds configured).
//!
//! Built on `metrics` with `metrics-exporter-prometheus`, whose recorder is kept here, per
//! server, rather than installed process-wide: a program may embed several servers, or have its
//! own recorder. The exporter writes the Prometheus text format (0.0.4), which `promtool check
//! metrics` validates and every Prometheus scrapes.
//!
//! Costs on the per-item path are atomics only: counter handles are atomic adds (items are
//! counted once per read or per sink batch, not once per item), and the one per-item histogram
//! (ack latency) is an [`AtomicHistogram`] of plain atomic buckets. The other histograms (one
//! observation per close or per fsync) go to the exporter's lock-free sample queues, folded into
//! buckets at scrape or by [`Metrics::run_upkeep`].
//! What is cheaper to read than to count (live connections, queue depth, keep-alive probes in
//! flight) is read at scrape time.
//!
//! Every name is listed, with its type, labels and meaning, in `docs/OPERATIONS.md`.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use metrics::{
    Counter, Gauge, Histogram, Key, Label, Level, Metadata, Recorder, SharedString, Unit,
};
use metrics_exporter_prometheus::{
    Matcher, PrometheusBuilder, PrometheusHandle, PrometheusRecorder,
};

mod histogram;
mod nats;

pub use histogram::AtomicHistogram;
pub use nats::PublishFailure;

use crate::close_reason::CloseReason;
use crate::config::Config;
use crate::protocol::ErrorCode;
use crate::queue::QueueStats;

/// Prefix of every connwarden metric.
const PREFIX: &str = "connwarden_";

/// Buckets of the connection lifetime histogram, seconds: a second to a week.
const LIFETIME_BUCKETS: &[f64] = &[
    1.0, 10.0, 60.0, 300.0, 900.0, 3600.0, 21600.0, 86400.0, 604800.0,
];
/// Buckets of the fsync latency histogram, seconds: 100 µs to 10 s.
const FSYNC_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    10.0,
];
/// Buckets of the TLS handshake histogram, seconds: 1 ms to 30 s (past `handshake_timeout`'s
/// default of 10 s, so that a storm's tail shows).
const HANDSHAKE_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 7.5, 10.0, 15.0, 30.0,
];
/// Buckets of the ack latency histogram, seconds: 100 µs to 10 s.
const ACK_BUCKETS: &[f64] = FSYNC_BUCKETS;
/// The detection-delay buckets below the bounds, and the round steps between them.
const DELAY_STEPS: &[f64] = &[
    0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 15.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0,
    7200.0, 14400.0, 28800.0, 86400.0,
];

/// The kinds of failed `accept`, as the label `error` of `connwarden_accept_errors_total`.
pub(crate) const ACCEPT_ERRORS: [&str; 4] = ["emfile", "enfile", "nomem", "other"];

/// How an upgrade (`SIGUSR2`) ended, as the label `result` of `connwarden_upgrades_total`:
/// handed over, or one of the ways the new process failed (the old one goes on serving).
pub const UPGRADE_RESULTS: [&str; 5] = [
    "handed_over",
    "spawn_failed",
    "exited",
    "timeout",
    "refused",
];

/// What a scrape reads from the registry and the queue, as plain values: the registry fills it
/// (`Registry::scrape`), so that metrics knows neither.
#[derive(Clone, Debug, Default)]
pub struct Scrape {
    /// Connections live now.
    pub connections_live: usize,
    /// Connections registered since start.
    pub opened_total: u64,
    /// Registered connections closed since start, by [`CloseReason::index`].
    pub closed_total: [u64; CloseReason::ALL.len()],
    /// Connections refused at accept since start, by [`CloseReason::index`].
    pub refused_total: [u64; CloseReason::ALL.len()],
    /// Keep-alive probes in flight now, across connections.
    pub keepalive_probes: u64,
    /// Connections with at least one keep-alive probe unanswered.
    pub connections_probing: u64,
    /// Probe storms since start: keep-alive closes in a burst while the kernel dropped
    /// received packets.
    pub keepalive_storms: u64,
    /// Bytes of partial objects held now.
    pub buffered: u64,
    /// Clients flapping now (`flap_threshold`).
    pub flapping_clients: usize,
    /// The queue's depth, capacity and drops.
    pub queue: QueueStats,
}

/// The metrics of one server. Cheap to share (`Arc`); every handle is an atomic.
pub struct Metrics {
    recorder: PrometheusRecorder,
    handle: PrometheusHandle,
    process: ProcessCollector,
    detection_delay: [Histogram; CloseReason::ALL.len()],
    lifetime: [Histogram; CloseReason::ALL.len()],
    items_received: Counter,
    items_refused: [Counter; ErrorCode::ALL.len()],
    items_acknowledged: Counter,
    ack_latency: AtomicHistogram,
    bytes_received: Counter,
    bytes_sent: Counter,
    sink_records: Counter,
    sink_batches: Counter,
    sink_fsyncs: Counter,
    sink_errors: Counter,
    sink_fsync_failures: Counter,
    sink_files_abandoned: Counter,
    service_notifications_dropped: Counter,
    log_lines_dropped: Counter,
    fsync_duration: Histogram,
    tls_handshake: Histogram,
    /// False from a failed sink write or `fsync` until the next one succeeds.
    sink_healthy: AtomicBool,
    /// Silence after which the kernel may have keep-alive probes out (`keepalive_idle`), in
    /// milliseconds: a reload changes it.
    keepalive_idle_ms: AtomicU64,
    /// The gauges of `detection_bound_seconds`, by reason, for the reasons that have a bound.
    detection_bounds: Mutex<Vec<(CloseReason, Gauge)>>,
    /// `accept` failures by kind ([`crate::server`]'s `AcceptError`).
    accept_errors: [Counter; 4],
    /// Upgrades by [`UPGRADE_RESULTS`].
    upgrades: [Counter; 5],
    /// Reloads by result: success, failure.
    config_reloads: [Counter; 2],
    config_last_reload_successful: Gauge,
    config_last_reload_success: Gauge,
    /// `max_buffered`, NaN when off: a reload changes it.
    buffered_limit: Gauge,
    /// Connections a paced drain chose and has not told yet.
    drain_pending: Gauge,
    /// Idle connections parked now: counted here as they park and wake, read by
    /// [`Metrics::parked_connections`] and set into the gauge `parked` at each scrape.
    parked_now: std::sync::atomic::AtomicU64,
    parked: Gauge,
    /// Parks so far (0 where connections do not park: only on Linux).
    #[cfg_attr(not(target_os = "linux"), allow(dead_code))]
    parks: Counter,
    drain_goaways: Counter,
    scraped: ScrapeTime,
    nats: nats::NatsMetrics,
    /// Whether the JetStream metrics apply (its latency histogram is rendered only then).
    jetstream: bool,
}

/// Handles set at scrape time, from values cheaper to read than to count.
struct ScrapeTime {
    connections_live: Gauge,
    connections_opened: Counter,
    connections_closed: [Counter; CloseReason::ALL.len()],
    connections_refused: [Counter; CloseReason::ALL.len()],
    queue_depth: Gauge,
    queue_capacity: Gauge,
    queue_dropped: Counter,
    keepalive_probes: Gauge,
    connections_probing: Gauge,
    keepalive_storms: Counter,
    sink_healthy: Gauge,
    buffered: Gauge,
    flapping_clients: Gauge,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

/// The bound each close reason is held to by the configuration, for the dashboard's line
/// beside the measured delay. Reasons with no bound are absent.
pub fn detection_bounds(config: &Config) -> Vec<(CloseReason, Duration)> {
    let mut bounds = vec![(CloseReason::KeepaliveTimeout, config.keepalive.bound())];
    if let Some(user_timeout) = config.effective_user_timeout() {
        bounds.push((CloseReason::UserTimeout, user_timeout));
    }
    if config.heartbeat != crate::config::HeartbeatMode::Off {
        bounds.push((
            CloseReason::HeartbeatTimeout,
            config.heartbeat_interval * config.heartbeat_misses,
        ));
    }
    if let Some(idle) = config.idle_timeout {
        bounds.push((CloseReason::IdleTimeout, idle));
    }
    bounds.push((CloseReason::WriteTimeout, config.write_timeout));
    bounds
}

/// Detection-delay buckets: round steps from 0.1 s up to twice the largest bound, each bound
/// itself, and each bound plus a tenth (so "within the bound" and "just past it" are told apart).
pub fn detection_buckets(config: &Config) -> Vec<f64> {
    let bounds: Vec<f64> = detection_bounds(config)
        .iter()
        .map(|(_, bound)| bound.as_secs_f64())
        .collect();
    let top = 2.0 * bounds.iter().copied().fold(1.0, f64::max);
    let mut buckets: Vec<f64> = DELAY_STEPS.iter().copied().filter(|b| *b < top).collect();
    // To the millisecond: `49.5`, not `49.50000000000001`.
    let just_past = |b: f64| (b * 1100.0).round() / 1000.0;
    buckets.extend(bounds.iter().flat_map(|b| [*b, just_past(*b)]));
    buckets.push(top);
    buckets.sort_by(f64::total_cmp);
    buckets.dedup_by(|a, b| (*a - *b).abs() < 1e-9);
    buckets
}

/// Seconds since the Unix epoch, now.
fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

fn name(short: &str) -> String {
    format!("{PREFIX}{short}")
}

impl Metrics {
    /// The metrics of a server running `config`.
    pub fn new(config: &Config) -> Metrics {
        let full = |short: &str| Matcher::Full(name(short));
        let recorder = PrometheusBuilder::new()
            .set_buckets_for_metric(full("detection_delay_seconds"), &detection_buckets(config))
            .and_then(|b| {
                b.set_buckets_for_metric(full("connection_lifetime_seconds"), LIFETIME_BUCKETS)
            })
            .and_then(|b| {
                b.set_buckets_for_metric(full("sink_fsync_duration_seconds"), FSYNC_BUCKETS)
            })
            .and_then(|b| {
                b.set_buckets_for_metric(full("tls_handshake_seconds"), HANDSHAKE_BUCKETS)
            })
            .expect("bucket lists are not empty")
            .build_recorder();
        let handle = recorder.handle();
        let r = Registrar(&recorder);
        let by_reason = |short: &str| -> [Histogram; CloseReason::ALL.len()] {
            std::array::from_fn(|i| r.histogram(short, &[("reason", CloseReason::ALL[i].as_str())]))
        };
        let counter_by_reason = |short: &str| -> [Counter; CloseReason::ALL.len()] {
            std::array::from_fn(|i| r.counter(short, &[("reason", CloseReason::ALL[i].as_str())]))
        };
        r.describe_all();
        let metrics = Metrics {
            detection_delay: by_reason("detection_delay_seconds"),
            lifetime: by_reason("connection_lifetime_seconds"),
            items_received: r.counter("items_received_total", &[]),
            items_refused: std::array::from_fn(|i| {
                r.counter(
                    "items_refused_total",
                    &[("code", ErrorCode::ALL[i].as_str())],
                )
            }),
            items_acknowledged: r.counter("items_acknowledged_total", &[]),
            ack_latency: AtomicHistogram::new(
                name("ack_latency_seconds"),
                ACK_LATENCY_HELP,
                ACK_BUCKETS,
            ),
            bytes_received: r.counter("received_bytes_total", &[]),
            bytes_sent: r.counter("sent_bytes_total", &[]),
            sink_records: r.counter("sink_records_written_total", &[]),
            sink_batches: r.counter("sink_batches_total", &[]),
            sink_fsyncs: r.counter("sink_fsyncs_total", &[]),
            sink_errors: r.counter("sink_errors_total", &[]),
            sink_fsync_failures: r.counter("sink_fsync_failures_total", &[]),
            sink_files_abandoned: r.counter("sink_files_abandoned_total", &[]),
            service_notifications_dropped: r.counter("service_notifications_dropped_total", &[]),
            log_lines_dropped: r.counter("log_lines_dropped_total", &[]),
            fsync_duration: r.histogram("sink_fsync_duration_seconds", &[]),
            tls_handshake: r.histogram("tls_handshake_seconds", &[]),
            scraped: ScrapeTime {
                connections_live: r.gauge("connections_live", &[]),
                connections_opened: r.counter("connections_opened_total", &[]),
                connections_closed: counter_by_reason("connections_closed_total"),
                connections_refused: counter_by_reason("connections_refused_total"),
                queue_depth: r.gauge("queue_items", &[]),
                queue_capacity: r.gauge("queue_capacity_items", &[]),
                queue_dropped: r.counter(
                    "queue_dropped_total",
                    &[("policy", config.overflow.as_str())],
                ),
                keepalive_probes: r.gauge("keepalive_probes", &[]),
                connections_probing: r.gauge("connections_probing", &[]),
                keepalive_storms: r.counter("keepalive_storms_total", &[]),
                sink_healthy: r.gauge("sink_healthy", &[]),
                buffered: r.gauge("buffered_bytes", &[]),
                flapping_clients: r.gauge("flapping_clients", &[]),
            },
            sink_healthy: AtomicBool::new(true),
            nats: nats::NatsMetrics::new(&r),
            jetstream: config.sink == crate::config::SinkSpec::JetStream,
            keepalive_idle_ms: AtomicU64::new(0),
            detection_bounds: Mutex::new(Vec::new()),
            accept_errors: ACCEPT_ERRORS
                .map(|kind| r.counter("accept_errors_total", &[("error", kind)])),
            upgrades: UPGRADE_RESULTS
                .map(|result| r.counter("upgrades_total", &[("result", result)])),
            config_reloads: ["success", "failure"]
                .map(|result| r.counter("config_reloads_total", &[("result", result)])),
            config_last_reload_successful: r.gauge("config_last_reload_successful", &[]),
            config_last_reload_success: r
                .gauge("config_last_reload_success_timestamp_seconds", &[]),
            buffered_limit: r.gauge("buffered_limit_bytes", &[]),
            drain_pending: r.gauge("drain_pending_connections", &[]),
            parked: r.gauge("parked_connections", &[]),
            parked_now: std::sync::atomic::AtomicU64::new(0),
            parks: r.counter("parks_total", &[]),
            drain_goaways: r.counter("drain_goaways_total", &[]),
            process: ProcessCollector::default(),
            handle,
            recorder,
        };
        metrics.reconfigure(config);
        metrics.config_last_reload_successful.set(1.0);
        metrics.config_last_reload_success.set(unix_now());
        metrics::with_local_recorder(&metrics.recorder, || metrics.process.describe());
        metrics
    }

    /// A paced drain chose `chosen` connections to tell.
    pub(crate) fn drain_started(&self, chosen: usize) {
        self.drain_pending.set(chosen as f64);
    }

    /// A paced drain told one more connection `goaway`.
    pub(crate) fn drain_told(&self) {
        self.drain_goaways.increment(1);
        self.drain_pending.decrement(1.0);
    }

    /// A paced drain passed a chosen connection that closed before its turn.
    pub(crate) fn drain_skipped(&self) {
        self.drain_pending.decrement(1.0);
    }

    /// A connection parked outside its task (`true`), or woke up (`false`).
    #[cfg_attr(not(target_os = "linux"), allow(dead_code))]
    pub(crate) fn parked(&self, parked: bool) {
        use std::sync::atomic::Ordering::Relaxed;
        match parked {
            true => {
                self.parked_now.fetch_add(1, Relaxed);
                self.parks.increment(1);
            }
            false => {
                self.parked_now.fetch_sub(1, Relaxed);
            }
        }
    }

    /// Idle connections parked outside their task now (`park_after`; the gauge
    /// `connwarden_parked_connections`).
    pub fn parked_connections(&self) -> u64 {
        self.parked_now.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// A paced drain tells no more (done or cancelled).
    pub(crate) fn drain_ended(&self) {
        self.drain_pending.set(0.0);
    }

    /// Follows a configuration put in force (at start and at each reload): the detection bounds
    /// and the keep-alive idle time of the probe gauges. A bound that no longer applies (its
    /// timeout turned off) reads NaN.
    pub(crate) fn reconfigure(&self, config: &Config) {
        self.keepalive_idle_ms
            .store(config.keepalive.idle.as_millis() as u64, Ordering::Relaxed);
        self.buffered_limit
            .set(config.max_buffered.map_or(f64::NAN, |bytes| bytes as f64));
        let bounds = detection_bounds(config);
        let mut gauges = self
            .detection_bounds
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        for (reason, gauge) in gauges.iter() {
            if !bounds.iter().any(|(bounded, _)| bounded == reason) {
                gauge.set(f64::NAN);
            }
        }
        for (reason, bound) in bounds {
            let position = gauges.iter().position(|(known, _)| *known == reason);
            let gauge = match position {
                Some(i) => &gauges[i].1,
                None => {
                    let gauge = Registrar(&self.recorder)
                        .gauge("detection_bound_seconds", &[("reason", reason.as_str())]);
                    gauges.push((reason, gauge));
                    &gauges[gauges.len() - 1].1
                }
            };
            gauge.set(bound.as_secs_f64());
        }
    }

    /// Counts a failed `accept`, by kind (`emfile`, `enfile`, `nomem`, `other`).
    pub(crate) fn accept_error(&self, kind: &str) {
        if let Some(i) = ACCEPT_ERRORS.iter().position(|k| *k == kind) {
            self.accept_errors[i].increment(1);
        }
    }

    /// Counts an upgrade by its result, one of [`UPGRADE_RESULTS`].
    pub fn upgrade(&self, result: &str) {
        if let Some(i) = UPGRADE_RESULTS.iter().position(|r| *r == result) {
            self.upgrades[i].increment(1);
        }
    }

    /// Counts a configuration reload, and when it succeeded, its time.
    pub(crate) fn reload_result(&self, success: bool) {
        self.config_reloads[usize::from(!success)].increment(1);
        self.config_last_reload_successful
            .set(if success { 1.0 } else { 0.0 });
        if success {
            self.config_last_reload_success.set(unix_now());
        }
    }

    /// Observes the close of a registered connection: its detection delay and its lifetime,
    /// under its reason. (Refused connections never lived: the registry only counts them.)
    pub fn observe_close(
        &self,
        reason: CloseReason,
        detection_delay: Duration,
        lifetime: Duration,
    ) {
        let i = reason.index();
        self.detection_delay[i].record(detection_delay.as_secs_f64());
        self.lifetime[i].record(lifetime.as_secs_f64());
    }

    /// A TLS handshake finished, `took` after its connection was accepted.
    pub(crate) fn observe_handshake(&self, took: Duration) {
        self.tls_handshake.record(took.as_secs_f64());
    }

    /// Counts `n` items taken from one read.
    pub fn items_received(&self, n: u64) {
        if n > 0 {
            self.items_received.increment(n);
        }
    }

    /// Counts one refused item (or a connection-ending refusal such as `frame_too_large`).
    pub fn item_refused(&self, code: ErrorCode) {
        self.items_refused(code, 1);
    }

    /// Counts `n` items refused with `code` at once (a failed sink batch).
    pub fn items_refused(&self, code: ErrorCode, n: u64) {
        self.items_refused[code.index()].increment(n);
    }

    /// Counts bytes read from clients.
    pub fn bytes_received(&self, n: usize) {
        self.bytes_received.increment(n as u64);
    }

    /// Counts bytes written to clients.
    pub fn bytes_sent(&self, n: usize) {
        self.bytes_sent.increment(n as u64);
    }

    /// Observes `acks` acknowledgements handed to their connection, `latency` after their items
    /// were read (together).
    pub fn ack_latency(&self, latency: Duration, acks: u64) {
        self.ack_latency.observe_many(latency, acks);
    }

    /// Counts the acknowledgements of one sink batch.
    pub fn acknowledged(&self, acks: u64) {
        self.items_acknowledged.increment(acks);
    }

    /// Counts a batch the sink stored.
    pub fn sink_batch(&self, records: usize) {
        self.sink_healthy.store(true, Ordering::Relaxed);
        self.sink_batches.increment(1);
        self.sink_records.increment(records as u64);
    }

    /// Counts a failed sink write or `fsync`.
    pub fn sink_error(&self) {
        self.sink_healthy.store(false, Ordering::Relaxed);
        self.sink_errors.increment(1);
    }

    /// False from a failed sink write or `fsync` until the next write succeeds: `/readyz`
    /// answers 503 meanwhile.
    pub fn sink_healthy(&self) -> bool {
        self.sink_healthy.load(Ordering::Relaxed)
    }

    /// Observes a finished `fsync`.
    pub fn fsync(&self, took: Duration) {
        self.sink_fsyncs.increment(1);
        self.fsync_duration.record(took.as_secs_f64());
    }

    /// Counts a failed `fsync`: the sink is unhealthy until it stores again. (Its records are
    /// counted in `sink_errors_total` by what the drain does with them.)
    pub fn fsync_failed(&self) {
        self.sink_healthy.store(false, Ordering::Relaxed);
        self.sink_fsync_failures.increment(1);
    }

    /// Counts a sink file given up after its `fsync` failed: it is never synced again, and its
    /// unacknowledged records are written again to a new file.
    pub fn sink_file_abandoned(&self) {
        self.sink_files_abandoned.increment(1);
    }

    /// Counts `n` notifications to the service manager that could not be sent at once (its
    /// socket full or gone) and were dropped rather than waited for.
    pub fn service_notifications_dropped(&self, n: u64) {
        self.service_notifications_dropped.increment(n);
    }

    /// Counts `n` log lines dropped because standard error was not read fast enough (the
    /// daemon's logs never wait for their reader).
    pub fn log_lines_dropped(&self, n: u64) {
        self.log_lines_dropped.increment(n);
    }

    /// Folds histogram samples into their buckets, so that they take no memory between scrapes.
    /// The server calls it every second.
    pub fn run_upkeep(&self) {
        self.handle.run_upkeep();
    }

    /// How long a connection stays idle before keep-alive probes it, in force now: what the
    /// scrape counts probes against ([`Scrape::keepalive_probes`]).
    pub fn keepalive_idle(&self) -> Duration {
        Duration::from_millis(self.keepalive_idle_ms.load(Ordering::Relaxed))
    }

    /// The exposition: the values read at this scrape (`now`: connections, queue, keep-alive
    /// probes in flight), the process's, then every metric in the Prometheus text format.
    pub fn render(&self, now: &Scrape) -> String {
        let s = &self.scraped;
        s.connections_live.set(now.connections_live as f64);
        s.connections_opened.absolute(now.opened_total);
        for reason in CloseReason::ALL {
            s.connections_closed[reason.index()].absolute(now.closed_total[reason.index()]);
            s.connections_refused[reason.index()].absolute(now.refused_total[reason.index()]);
        }
        s.queue_depth.set(now.queue.depth as f64);
        s.queue_capacity.set(now.queue.capacity as f64);
        s.queue_dropped.absolute(now.queue.dropped);
        s.keepalive_probes.set(now.keepalive_probes as f64);
        s.connections_probing.set(now.connections_probing as f64);
        s.keepalive_storms.absolute(now.keepalive_storms);
        s.buffered.set(now.buffered as f64);
        s.flapping_clients.set(now.flapping_clients as f64);
        self.parked.set(self.parked_connections() as f64);
        s.sink_healthy
            .set(if self.sink_healthy() { 1.0 } else { 0.0 });
        self.nats.set_gauges();
        metrics::with_local_recorder(&self.recorder, || self.process.collect());
        let mut out = self.handle.render();
        if !out.is_empty() && !out.ends_with('\n') {
            out.push('\n');
        }
        self.ack_latency.render(&mut out);
        if self.jetstream {
            self.nats.render_latency(&mut out);
        }
        out
    }
}

/// `process_*` metrics (open fds, RSS, CPU, threads), on Linux.
#[cfg(target_os = "linux")]
type ProcessCollector = metrics_process::Collector;

/// No process metrics on this platform.
#[cfg(not(target_os = "linux"))]
#[derive(Default)]
struct ProcessCollector;

#[cfg(not(target_os = "linux"))]
impl ProcessCollector {
    fn describe(&self) {}
    fn collect(&self) {}
}

/// Registers handles on the server's own recorder.
struct Registrar<'r>(&'r PrometheusRecorder);

/// Metadata is required by the `Recorder` interface; the exporter ignores it.
static METADATA: Metadata<'static> = Metadata::new(module_path!(), Level::INFO, None);

fn key(short: &str, labels: &[(&str, &str)]) -> Key {
    let labels: Vec<Label> = labels
        .iter()
        .map(|(k, v)| Label::new(k.to_string(), v.to_string()))
        .collect();
    Key::from_parts(name(short), labels)
}

impl Registrar<'_> {
    fn counter(&self, short: &str, labels: &[(&str, &str)]) -> Counter {
        self.0.register_counter(&key(short, labels), &METADATA)
    }

    fn gauge(&self, short: &str, labels: &[(&str, &str)]) -> Gauge {
        self.0.register_gauge(&key(short, labels), &METADATA)
    }

    fn histogram(&self, short: &str, labels: &[(&str, &str)]) -> Histogram {
        self.0.register_histogram(&key(short, labels), &METADATA)
    }

    /// The help text of every metric, as `# HELP` lines.
    fn describe_all(&self) {
        use Kind::*;
        for (kind, short, unit, help) in DESCRIPTIONS.iter().chain(nats::DESCRIPTIONS) {
            let name = name(short).into();
            let help = SharedString::from(*help);
            match kind {
                C => self.0.describe_counter(name, *unit, help),
                G => self.0.describe_gauge(name, *unit, help),
                H => self.0.describe_histogram(name, *unit, help),
            }
        }
    }
}

/// Help of `ack_latency_seconds`, an [`AtomicHistogram`] rendered apart from the exporter's.
const ACK_LATENCY_HELP: &str = "Time from reading an item to handing its ack to the connection.";

/// Counter, gauge or histogram.
pub(crate) enum Kind {
    C,
    G,
    H,
}

/// Every connwarden metric: kind, name after the prefix, unit, help.
const DESCRIPTIONS: &[(Kind, &str, Option<Unit>, &str)] = &[
    (Kind::G, "connections_live", None, "Connections open now."),
    (Kind::C, "connections_opened_total", None, "Connections accepted and registered."),
    (Kind::C, "connections_closed_total", None, "Registered connections closed, by the one reason each closed."),
    (Kind::C, "accept_errors_total", None, "accept(2) failures, by error: emfile (the process's open-file limit), enfile (the system's), nomem (ENOBUFS, ENOMEM) or other (a peer gone before it was accepted). The first three back off, up to 1 s between attempts; the connections wait in the listen backlog meanwhile."),
    (Kind::C, "connections_refused_total", None, "Connections refused at accept, never registered (server_full, too_many_connections, internal_error)."),
    (Kind::H, "detection_delay_seconds", Some(Unit::Seconds), "Time from a connection's last inbound byte (or its accept) to its close, by close reason: for a dead peer, how long it took to find out."),
    (Kind::G, "detection_bound_seconds", Some(Unit::Seconds), "The configured bound on the detection delay, by the close reason that enforces it."),
    (Kind::H, "connection_lifetime_seconds", Some(Unit::Seconds), "Time from accept to close, by close reason."),
    (Kind::C, "items_received_total", None, "Items read and queued for the sink."),
    (Kind::C, "items_refused_total", None, "Items refused, each answered with an error, by error code."),
    (Kind::C, "items_acknowledged_total", None, "Acks handed to their connections, after the sink stored (and, per fsync mode, synced) the item."),
    (Kind::C, "received_bytes_total", Some(Unit::Bytes), "Bytes read from clients."),
    (Kind::C, "sent_bytes_total", Some(Unit::Bytes), "Bytes written to clients."),
    (Kind::G, "queue_items", None, "Items between the connections and the sink now."),
    (Kind::G, "queue_capacity_items", None, "Most items the queue holds."),
    (Kind::C, "queue_dropped_total", None, "Items the overflow policy dropped, by policy."),
    (Kind::C, "sink_records_written_total", None, "Records the sink stored."),
    (Kind::C, "sink_batches_total", None, "Batches the sink stored."),
    (Kind::C, "sink_fsyncs_total", None, "fsync calls completed by the sink."),
    (Kind::C, "sink_errors_total", None, "Failed sink writes and fsyncs (their records were refused with sink_failed)."),
    (Kind::C, "sink_fsync_failures_total", None, "fsync calls that failed (EIO, ENOSPC...): the file is given up, never synced again, and the records it held unacknowledged are written again to a new file."),
    (Kind::C, "sink_files_abandoned_total", None, "Sink files given up after a failed fsync (renamed aside as PATH.<UTC time>; a new PATH is opened)."),
    (Kind::C, "service_notifications_dropped_total", None, "Notifications to the service manager (NOTIFY_SOCKET: READY, RELOADING, STOPPING, WATCHDOG) dropped because its socket was full or gone: the server never waits for it."),
    (Kind::C, "log_lines_dropped_total", None, "Log lines dropped because standard error was not read fast enough (a full pipe, a wedged journald): logs are written by a thread of their own and never make the server wait."),
    (Kind::H, "sink_fsync_duration_seconds", Some(Unit::Seconds), "Duration of each fsync."),
    (Kind::H, "tls_handshake_seconds", Some(Unit::Seconds), "Time from accept to a finished TLS handshake (the queueing of a reconnect storm shows here; past handshake_timeout the connection closes as handshake_timeout)."),
    (Kind::G, "sink_healthy", None, "1 while the sink's last write or fsync succeeded, 0 after a failure until the next success."),
    (Kind::G, "keepalive_probes", None, "Keep-alive probes sent and unanswered, summed over live connections (TCP_INFO tcpi_probes, read at scrape)."),
    (Kind::C, "upgrades_total", None, "Binary upgrades (SIGUSR2) by result: handed_over (the new process took the listeners and the connections; this one exits), or, leaving this process serving as before, spawn_failed (the executable could not be started), exited (it ended before it was ready, e.g. it refused the configuration), timeout (not ready within upgrade_timeout) or refused (it did not speak the hand-over's protocol)."),
    (Kind::C, "config_reloads_total", None, "Configuration reloads (SIGHUP), by result: success (keys that need a restart may have been refused, see the log) or failure (the configuration could not be read or was invalid; nothing changed)."),
    (Kind::G, "config_last_reload_successful", None, "1 when the last configuration reload succeeded, or none was tried; 0 after a failed one."),
    (Kind::G, "config_last_reload_success_timestamp_seconds", Some(Unit::Seconds), "Unix time of the last successful configuration reload, or of the start."),
    (Kind::G, "buffered_bytes", Some(Unit::Bytes), "Bytes of read buffers holding partial objects, summed over live connections (read at scrape)."),
    (Kind::G, "buffered_limit_bytes", Some(Unit::Bytes), "max_buffered: beyond it the connections holding the most are closed (memory_pressure); NaN when off."),
    (Kind::G, "connections_probing", None, "Live connections with at least one unanswered keep-alive probe (read at scrape)."),
    (Kind::G, "parked_connections", None, "Idle connections parked outside their task (park_after): silent, nothing pending, watched by one epoll set per worker until bytes, a deadline, a kick or a shutdown wake them. Counted in connections_live too."),
    (Kind::C, "parks_total", None, "Times an idle connection parked (park_after); with connections_opened_total, how often connections go quiet, and with parked_connections, how long they stay parked."),
    (Kind::G, "drain_pending_connections", None, "Connections a paced drain (POST /drain, connwarden drain) chose and has yet to tell goaway: above 0 while a drain is under way."),
    (Kind::C, "drain_goaways_total", None, "goaway messages paced drains asked connections to send. Told connections still open past goaway_window + shutdown_grace close as drained."),
    (Kind::G, "flapping_clients", None, "Clients flapping now: as many closes of their connections as flap_threshold counts within its window, by client_id (by address for clients without one). GET /flapping lists them with their last close reasons."),
    (Kind::C, "keepalive_storms_total", None, "Probe storms: 10 or more keepalive_timeout closes within 2 s while the kernel dropped received packets (/proc/net/softnet_stat) within the keep-alive bound before; healthy peers closed by the loss of their probes."),
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_resolve_every_bound_up_to_twice_the_largest() {
        let config = Config {
            idle_timeout: Some(Duration::from_secs(90)),
            ..Config::default()
        };
        let buckets = detection_buckets(&config);
        assert_eq!(buckets.first(), Some(&0.1));
        for (_, bound) in detection_bounds(&config) {
            assert!(
                buckets.contains(&bound.as_secs_f64()),
                "{bound:?} in {buckets:?}"
            );
        }
        assert_eq!(buckets.last(), Some(&180.0));
        assert!(buckets.windows(2).all(|w| w[0] < w[1]), "{buckets:?}");
    }
}
