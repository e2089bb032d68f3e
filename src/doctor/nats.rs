//! Whether the NATS servers a JetStream sink publishes to keep what they acknowledge across a
//! power cut. A JetStream ack means "stored on a quorum", in the page cache: nats-server calls
//! `fsync` only every `sync_interval` (2 minutes by default) unless it is `always`. The setting
//! is read from each server's monitoring endpoint (`/varz`), the only place a client can see it.

use std::time::Duration;

use super::Warning;

/// One server's durability setting, as its `/varz` says.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct NatsDurability {
    /// The monitoring URL asked (`http://host:8222`).
    pub monitor: String,
    /// The server's name and version, when it answered.
    pub server: Option<String>,
    /// `sync_interval: always`: every write is synced before it is acknowledged.
    pub sync_always: Option<bool>,
    /// The background `fsync` interval, milliseconds.
    pub sync_interval_ms: Option<u64>,
    /// Why the setting could not be read (no answer, no JetStream).
    pub error: Option<String>,
}

impl NatsDurability {
    /// Reads a server's `/varz` answer.
    pub fn from_varz(monitor: &str, varz: &serde_json::Value) -> NatsDurability {
        let config = &varz["jetstream"]["config"];
        let server = match (varz["server_name"].as_str(), varz["version"].as_str()) {
            (Some(name), Some(version)) => Some(format!("{name} {version}")),
            (None, Some(version)) => Some(version.to_owned()),
            _ => None,
        };
        if !config.is_object() {
            return NatsDurability {
                server,
                ..NatsDurability::unreadable(monitor, "JetStream is not enabled on this server")
            };
        }
        NatsDurability {
            monitor: monitor.to_owned(),
            server,
            sync_always: Some(config["sync_always"].as_bool().unwrap_or(false)),
            // Go's time.Duration: nanoseconds.
            sync_interval_ms: config["sync_interval"]
                .as_u64()
                .map(|ns| Duration::from_nanos(ns).as_millis() as u64),
            error: None,
        }
    }

    /// A server whose setting could not be read, and why.
    pub fn unreadable(monitor: &str, why: &str) -> NatsDurability {
        NatsDurability {
            monitor: monitor.to_owned(),
            server: None,
            sync_always: None,
            sync_interval_ms: None,
            error: Some(why.to_owned()),
        }
    }

    /// A warning when acknowledged items can be lost on a power cut, or the setting is unknown.
    pub fn warning(&self) -> Option<Warning> {
        match (self.sync_always, &self.error) {
            (Some(true), _) => None,
            (Some(false), _) => Some(Warning {
                code: "nats_sync_not_always",
                message: format!(
                    "{} syncs JetStream to disk only every {}: a power cut can lose items already acknowledged to clients; set jetstream {{ sync_interval: always }} (docs/SCALE-OUT.md)",
                    self.monitor,
                    self.sync_interval_ms
                        .map_or_else(|| "sync_interval".into(), |ms| format!("{} s", ms / 1000))
                ),
            }),
            (None, error) => Some(Warning {
                code: "nats_sync_unknown",
                message: format!(
                    "cannot read the JetStream sync setting of {}: {}",
                    self.monitor,
                    error.as_deref().unwrap_or("no answer")
                ),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sync_always_passes_and_an_interval_warns() {
        let always = serde_json::json!({"server_name": "n1", "version": "2.15.1",
            "jetstream": {"config": {"sync_interval": 120_000_000_000u64, "sync_always": true}}});
        let d = NatsDurability::from_varz("http://n1:8222", &always);
        assert_eq!(d.sync_always, Some(true));
        assert_eq!(d.server.as_deref(), Some("n1 2.15.1"));
        assert_eq!(d.warning(), None);

        let interval = serde_json::json!({"version": "2.15.1",
            "jetstream": {"config": {"sync_interval": 120_000_000_000u64}}});
        let d = NatsDurability::from_varz("http://n2:8222", &interval);
        assert_eq!(d.sync_always, Some(false));
        assert_eq!(d.sync_interval_ms, Some(120_000));
        let warning = d.warning().expect("a warning");
        assert_eq!(warning.code, "nats_sync_not_always");
        assert!(warning.message.contains("120 s"), "{}", warning.message);

        let no_js = serde_json::json!({"version": "2.15.1"});
        let d = NatsDurability::from_varz("http://n3:8222", &no_js);
        assert_eq!(d.warning().expect("a warning").code, "nats_sync_unknown");
    }
}
