//! Metrics of the NATS connection and the JetStream sink: publish latency, publishes in flight,
//! retries and errors by kind, duplicates JetStream removed, connection state and reconnects.

use std::sync::atomic::{AtomicI64, AtomicU8, Ordering};
use std::time::Duration;

use metrics::{Counter, Gauge, Unit};

use super::{AtomicHistogram, Kind, Registrar};

/// Buckets of the publish latency histogram, seconds: 100 µs to 10 s (a retry lands high).
const PUBLISH_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0,
];

/// Why a publish to JetStream did not get its ack; each is retried.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PublishFailure {
    /// No ack within `nats_publish_timeout`.
    Timeout,
    /// No stream listens on the subject (none yet, or no leader during an election).
    NoResponders,
    /// A batch lost a message on its way to the stream leader (a connection or a leader lost):
    /// the stream stored none after it, and the rest is published again.
    Gap,
    /// JetStream is still storing an earlier copy with the same message id (error 10158): the
    /// retry will be answered as a duplicate. Retried, and not counted as an error.
    MessageIdInProcess,
    /// Another JetStream API error (stream full, storage failure, no quorum…).
    Api,
    /// The message could not be handed to the NATS connection.
    Send,
    /// The message is larger than the server's `max_payload`.
    MaxPayload,
}

impl PublishFailure {
    /// Every kind, in label order.
    pub const ALL: [PublishFailure; 7] = [
        PublishFailure::Timeout,
        PublishFailure::NoResponders,
        PublishFailure::Gap,
        PublishFailure::MessageIdInProcess,
        PublishFailure::Api,
        PublishFailure::Send,
        PublishFailure::MaxPayload,
    ];

    /// The `kind` label.
    pub fn as_str(self) -> &'static str {
        match self {
            PublishFailure::Timeout => "timeout",
            PublishFailure::NoResponders => "no_responders",
            PublishFailure::Gap => "gap",
            PublishFailure::MessageIdInProcess => "msg_id_in_process",
            PublishFailure::Api => "api",
            PublishFailure::Send => "send",
            PublishFailure::MaxPayload => "max_payload",
        }
    }

    /// Whether it counts in `jetstream_errors_total`.
    pub fn is_error(self) -> bool {
        self != PublishFailure::MessageIdInProcess
    }
}

/// NATS connection state, for `/readyz` and `nats_connected`.
const NOT_CONFIGURED: u8 = 0;
const CONNECTED: u8 = 1;
const DISCONNECTED: u8 = 2;

/// The handles of the NATS metrics.
pub(super) struct NatsMetrics {
    publish_latency: AtomicHistogram,
    in_flight: AtomicI64,
    retries: [Counter; PublishFailure::ALL.len()],
    errors: [Counter; PublishFailure::ALL.len()],
    duplicates: Counter,
    reconnects: Counter,
    state: AtomicU8,
    scraped_in_flight: Gauge,
    scraped_connected: Gauge,
}

impl NatsMetrics {
    pub(super) fn new(r: &Registrar<'_>) -> NatsMetrics {
        let by_kind = |short: &str| -> [Counter; PublishFailure::ALL.len()] {
            std::array::from_fn(|i| r.counter(short, &[("kind", PublishFailure::ALL[i].as_str())]))
        };
        NatsMetrics {
            publish_latency: AtomicHistogram::new(
                super::name("jetstream_publish_latency_seconds"),
                PUBLISH_LATENCY_HELP,
                PUBLISH_BUCKETS,
            ),
            in_flight: AtomicI64::new(0),
            retries: by_kind("jetstream_retries_total"),
            errors: by_kind("jetstream_errors_total"),
            duplicates: r.counter("jetstream_duplicates_total", &[]),
            reconnects: r.counter("nats_reconnects_total", &[]),
            state: AtomicU8::new(NOT_CONFIGURED),
            scraped_in_flight: r.gauge("jetstream_publishes_in_flight", &[]),
            scraped_connected: r.gauge("nats_connected", &[]),
        }
    }

    /// Sets the gauges read at scrape, before the exporter renders them.
    pub(super) fn set_gauges(&self) {
        self.scraped_in_flight
            .set(self.in_flight.load(Ordering::Relaxed).max(0) as f64);
        self.scraped_connected
            .set(f64::from(self.state.load(Ordering::Relaxed) == CONNECTED));
    }

    /// Appends the publish latency histogram.
    pub(super) fn render_latency(&self, out: &mut String) {
        self.publish_latency.render(out);
    }
}

/// What the JetStream sink and the NATS connection report.
impl super::Metrics {
    /// Counts publishes handed to NATS (`n` > 0) or settled by an ack (`n` < 0).
    pub fn jetstream_in_flight(&self, n: i64) {
        self.nats.in_flight.fetch_add(n, Ordering::Relaxed);
    }

    /// Observes one JetStream ack, `latency` after the record was handed to the publisher;
    /// `duplicate` when JetStream already had its message id.
    pub fn jetstream_acked(&self, latency: Duration, duplicate: bool) {
        self.nats.publish_latency.observe(latency);
        if duplicate {
            self.nats.duplicates.increment(1);
        }
    }

    /// Counts a failed publish, which is retried.
    pub fn jetstream_failure(&self, failure: PublishFailure) {
        let i = failure as usize;
        self.nats.retries[i].increment(1);
        if failure.is_error() {
            self.nats.errors[i].increment(1);
        }
    }

    /// Records the NATS connection's state: up (`true`) or lost (`false`); a reconnect is
    /// counted.
    pub fn nats_connection(&self, connected: bool) {
        let state = if connected { CONNECTED } else { DISCONNECTED };
        let before = self.nats.state.swap(state, Ordering::Relaxed);
        if connected && before == DISCONNECTED {
            self.nats.reconnects.increment(1);
        }
    }

    /// False while a configured NATS connection is down: `/readyz` answers 503 then.
    pub fn nats_ready(&self) -> bool {
        self.nats.state.load(Ordering::Relaxed) != DISCONNECTED
    }
}

const PUBLISH_LATENCY_HELP: &str =
    "Time from a record's hand-over to the JetStream publisher to JetStream's ack for it (waiting for the window and retries included).";

/// The NATS metrics: kind, name after the prefix, unit, help.
pub(super) const DESCRIPTIONS: &[(Kind, &str, Option<Unit>, &str)] = &[
    (Kind::G, "jetstream_publishes_in_flight", None, "Records published to JetStream and not yet acknowledged by it (bounded by nats_window)."),
    (Kind::C, "jetstream_retries_total", None, "Publishes sent again, by what went wrong the time before."),
    (Kind::C, "jetstream_errors_total", None, "Failed publishes, by kind (each was retried; msg_id_in_process is only a retry, not an error)."),
    (Kind::C, "jetstream_duplicates_total", None, "Resends JetStream answered as duplicates (already stored, within the duplicate window). JetStream reports them only when one opens a batch; those inside a batch are dropped silently and not counted."),
    (Kind::G, "nats_connected", None, "1 while the NATS connection is up."),
    (Kind::C, "nats_reconnects_total", None, "NATS connections re-established after a loss."),
];
