//! The stream the sink publishes into: found, or created as the configuration says, with fast
//! ingest (`allow_batched`) on.

use std::time::{Duration, Instant};

use async_nats::jetstream::context::GetStreamErrorKind;
use async_nats::jetstream::{self, stream};

use crate::config::NatsConfig;

/// Finds the stream, or creates it as `config` says. A new cluster may answer "no suitable
/// peers" or time out until its meta leader is elected: retried for up to a minute.
pub(super) async fn ensure_stream(
    js: &jetstream::Context,
    config: &NatsConfig,
    subject: &str,
) -> Result<(), String> {
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut delay = Duration::from_millis(200);
    loop {
        let result = find_or_create(js, config, subject).await;
        match result {
            Ok(()) => return Ok(()),
            Err(Setup::Fatal(reason)) => return Err(reason),
            Err(Setup::Retry(reason)) if Instant::now() + delay < deadline => {
                tracing::warn!(stream = %config.stream, error = %reason, retry_in_ms = delay.as_millis() as u64, "JetStream stream not ready; retrying");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(5));
            }
            Err(Setup::Retry(reason)) => return Err(reason),
        }
    }
}

enum Setup {
    Retry(String),
    Fatal(String),
}

async fn find_or_create(
    js: &jetstream::Context,
    config: &NatsConfig,
    subject: &str,
) -> Result<(), Setup> {
    match js.get_stream(&config.stream).await {
        Ok(mut existing) => {
            let info = existing
                .info()
                .await
                .map_err(|e| Setup::Retry(e.to_string()))?;
            let covered = info
                .config
                .subjects
                .iter()
                .any(|pattern| subject_matches(pattern, subject));
            if !covered {
                return Err(Setup::Fatal(format!(
                    "stream {} exists but its subjects {:?} do not cover {subject}",
                    config.stream, info.config.subjects
                )));
            }
            if info.config.duplicate_window < config.duplicate_window {
                tracing::warn!(stream = %config.stream, duplicate_window_s = info.config.duplicate_window.as_secs(), "the existing stream's duplicate window is shorter than nats_duplicate_window; resends older than it may be stored twice");
            }
            tracing::info!(stream = %config.stream, replicas = info.config.num_replicas, messages = info.state.messages, "JetStream stream found");
            if !info.config.allow_batch_publish {
                enable_fast_ingest(js, info.config.clone()).await?;
            }
            Ok(())
        }
        Err(error)
            if matches!(error.kind(), GetStreamErrorKind::JetStream(api)
                if api.error_code() == jetstream::ErrorCode::STREAM_NOT_FOUND) =>
        {
            create(js, config).await
        }
        Err(error) => Err(Setup::Retry(error.to_string())),
    }
}

async fn create(js: &jetstream::Context, config: &NatsConfig) -> Result<(), Setup> {
    let stream_config = stream::Config {
        name: config.stream.clone(),
        subjects: vec![config.stream_subjects()],
        storage: stream::StorageType::File,
        num_replicas: config.replicas,
        duplicate_window: config.duplicate_window,
        max_age: config.max_age.unwrap_or_default(),
        max_bytes: config.max_bytes.map_or(-1, |b| b as i64),
        // A full stream refuses new messages (they are retried, and backpressure reaches the
        // clients) rather than evicting unread ones.
        discard: stream::DiscardPolicy::New,
        // Fast-ingest batches: what keeps each gateway's records in order across failures.
        allow_batch_publish: true,
        ..Default::default()
    };
    match js.create_stream(stream_config).await {
        Ok(_) => {
            tracing::info!(stream = %config.stream, subjects = %config.stream_subjects(), replicas = config.replicas, "JetStream stream created");
            Ok(())
        }
        Err(error) => Err(Setup::Retry(error.to_string())),
    }
}

/// Turns fast ingest on for a stream made without it (by an operator, or an older connwarden):
/// the sink publishes nothing else. Other settings are left as they are.
async fn enable_fast_ingest(
    js: &jetstream::Context,
    mut existing: stream::Config,
) -> Result<(), Setup> {
    let name = existing.name.clone();
    existing.allow_batch_publish = true;
    match js.update_stream(existing).await {
        Ok(_) => {
            tracing::warn!(stream = %name, "fast-ingest batches (allow_batched) turned on for the existing stream: the JetStream sink publishes through them");
            Ok(())
        }
        Err(error) => Err(Setup::Fatal(format!(
            "stream {name} does not allow fast-ingest batches (allow_batched) and cannot be updated to: {error}; nats-server 2.14 or later is needed"
        ))),
    }
}

/// Whether `subject` matches a stream's subject `pattern` (`*` one token, `>` the rest).
fn subject_matches(pattern: &str, subject: &str) -> bool {
    let mut tokens = subject.split('.');
    for want in pattern.split('.') {
        match (want, tokens.next()) {
            (">", Some(_)) => return true,
            ("*", Some(_)) => {}
            (want, Some(token)) if want == token => {}
            _ => return false,
        }
    }
    tokens.next().is_none()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stream_patterns_match_as_nats_does() {
        assert!(subject_matches("a.*", "a.b"));
        assert!(subject_matches("a.>", "a.b.c"));
        assert!(subject_matches("a.b", "a.b"));
        assert!(!subject_matches("a.*", "a.b.c"));
        assert!(!subject_matches("a.>", "a"));
        assert!(!subject_matches("a.b", "a.c"));
    }
}
