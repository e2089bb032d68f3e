//! Live reload: a new configuration put in force while every connection stays open.
//!
//! `connwarden serve` reloads on `SIGHUP`: the file and the environment are read again, the
//! command-line flags stay as they were. Each key is of one of three kinds, its [`Reload`] class
//! in the table of keys (docs/CONFIGURATION.md):
//!
//! - **Every connection, at once** ([`Reload::EveryConnection`]): the keep-alive, the user timeout
//!   and `TCP_NODELAY` are set again on every open socket (Linux takes them on an established
//!   socket and re-arms its keep-alive timer); the write, idle and frame timeouts, `max_age` and its
//!   grace and the error budget are the deadlines every connection checks; `max_connections`,
//!   `closed_history`, `flap_threshold`, `shutdown_grace`, `upgrade_timeout`, `goaway_window` and
//!   `log_level` are the server's own.
//! - **Connections accepted after the reload** ([`Reload::NewConnections`]): the heartbeat (mode,
//!   interval, misses), `max_frame`, `max_pending_replies`, `keepalive_spread`, `takeover` and the
//!   PROXY protocol (`proxy_protocol`, `proxy_trusted`). A connection's `hello` answer
//!   announced its heartbeat interval and frame limit, and its client relies on them, so an open
//!   connection keeps the values it was accepted under.
//! - **Restart only** ([`Reload::Restart`]), every other key: the listen addresses and their socket (`reuse_port`,
//!   `backlog`, the buffers, which take part in the window negotiated at the handshake), the
//!   queue and its overflow policy, the sink with its `fsync` and rotation, the log format, the
//!   admin address and token file, the gateway name and NATS. A change of one of them is
//!   refused and logged, and its old value stays; the other changes still apply.
//!
//! A configuration that cannot be read, or that is invalid once its live keys are put beside
//! the old values of the others, changes nothing. Each reload is counted in the metrics
//! (`connwarden_config_reloads_total{result}`, `connwarden_config_last_reload_successful`).

use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;

#[cfg(doc)]
use crate::config::Reload;
use crate::config::{Config, ConfigError, Key};
use crate::conn::{ConnShared, Live};
use crate::metrics::Metrics;
use crate::registry::Registry;
use crate::tls::ServerTls;

/// `old` with the values of `new` for the keys a reload may change ([`Reload::is_live`]).
fn with_live_keys(old: &Config, new: &Config) -> Config {
    let mut next = old.clone();
    for &key in Key::ALL.iter().filter(|key| key.reload().is_live()) {
        next.take_key(new, key);
    }
    next
}

/// One key whose value differs, as the configuration file writes the values.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Change {
    /// The key.
    pub key: Key,
    /// Its value before.
    pub old: String,
    /// Its value in the new configuration.
    pub new: String,
}

impl std::fmt::Display for Change {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {} -> {}", self.key, self.old, self.new)
    }
}

/// What a reload did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ReloadReport {
    /// The changes now in force.
    pub applied: Vec<Change>,
    /// The changes that need a restart: their old values stay.
    pub refused: Vec<Change>,
}

impl ReloadReport {
    /// Whether the reload changed `key`.
    pub fn applied(&self, key: Key) -> bool {
        self.applied.iter().any(|change| change.key == key)
    }
}

/// The configuration to put in force in place of `old`, and what changes; an error when the
/// result is invalid.
fn plan(old: &Config, new: &Config) -> Result<(Config, ReloadReport), ConfigError> {
    let next = with_live_keys(old, new);
    next.validate()?;
    let report = ReloadReport {
        applied: changes(old, &next),
        refused: changes(&next, new),
    };
    Ok((next, report))
}

/// The keys whose values differ from `a` to `b`, in the order of [`Key::ALL`].
fn changes(a: &Config, b: &Config) -> Vec<Change> {
    a.key_values()
        .into_iter()
        .zip(b.key_values())
        .filter(|((_, old), (_, new))| old != new)
        .map(|((key, old), (_, new))| Change { key, old, new })
        .collect()
}

/// Puts a new configuration in force while the server runs ([`crate::Server::reloader`]).
/// Cheap to clone; usable before `run` and after it ended (then it only counts).
#[derive(Clone)]
pub struct Reloader {
    inner: Arc<Inner>,
}

struct Inner {
    live: Arc<Live>,
    /// What the connections accepted from now on share.
    current: ArcSwap<ConnShared>,
    metrics: Arc<Metrics>,
    registry: Registry,
    /// The certificate new TLS handshakes use: its files are read again at every reload.
    tls: ServerTls,
    /// One reload at a time: two at once could each undo the other.
    serial: Mutex<()>,
}

impl std::fmt::Debug for Reloader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reloader").finish_non_exhaustive()
    }
}

impl Reloader {
    pub(crate) fn new(
        config: Config,
        metrics: Arc<Metrics>,
        registry: Registry,
        tls: ServerTls,
    ) -> Reloader {
        let first = ConnShared::first(config, Arc::clone(&metrics), registry.clone());
        Reloader {
            inner: Arc::new(Inner {
                tls,
                live: Arc::clone(&first.live),
                current: ArcSwap::from_pointee(first),
                metrics,
                registry,
                serial: Mutex::new(()),
            }),
        }
    }

    /// The configuration in force.
    pub fn config(&self) -> Arc<Config> {
        Arc::clone(&*self.inner.live.config())
    }

    /// Puts the keys of `new` that can change live in force, keeps the old values of the
    /// others, and logs both. `new` is the result of loading the configuration again: pass a
    /// failure too, so that it is logged and counted as a failed reload. On any error nothing
    /// changes.
    pub fn reload(&self, new: Result<Config, ConfigError>) -> Result<ReloadReport, ConfigError> {
        let _one_at_a_time = self
            .inner
            .serial
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let old = self.config();
        let planned = new
            .and_then(|new| plan(&old, &new))
            .and_then(|planned| self.reload_files(&planned.0).map(|()| planned));
        let (next, report) = match planned {
            Ok(planned) => planned,
            Err(error) => {
                tracing::error!(error = %error, "configuration reload refused; nothing changed");
                self.inner.metrics.reload_result(false);
                return Err(error);
            }
        };
        self.put_in_force(next);
        log_report(&report);
        if report.applied(Key::MaxConnections) {
            crate::sockopt::check_open_files(self.config().max_connections, false);
        }
        self.inner.metrics.reload_result(true);
        Ok(report)
    }

    /// Reads the files the configuration names again: the TLS certificate and key (a renewed
    /// pair is used by the handshakes that follow) and the client tokens (checked at the next
    /// `hello`). A file that cannot be used refuses the whole reload, before anything changed.
    fn reload_files(&self, next: &Config) -> Result<(), ConfigError> {
        // Tokens first, parsed but not yet in force: a bad file must leave the certificate too.
        let tokens = next
            .auth_tokens
            .as_deref()
            .map(crate::auth::Tokens::from_file)
            .transpose()
            .map_err(|error| ConfigError::Unusable {
                key: Key::AuthTokens,
                reason: format!("{error}; the tokens in force stay"),
            })?;
        match self.inner.tls.reload(next) {
            Ok(true) => {
                tracing::info!(cert = ?next.tls_cert, "TLS certificate read again; new handshakes use it");
            }
            Ok(false) => {}
            Err(error) => {
                return Err(ConfigError::Unusable {
                    key: Key::TlsCert,
                    reason: format!("{error}; the certificate in force stays"),
                })
            }
        }
        if let Some(tokens) = tokens {
            tracing::info!(tokens = tokens.len(), "client tokens read again");
            self.inner.live.tokens.replace(tokens);
        }
        Ok(())
    }

    /// Whether the data listener speaks TLS, and a session for a connection just accepted.
    pub(crate) fn tls(&self) -> &ServerTls {
        &self.inner.tls
    }

    /// Makes `next` the configuration of every connection's deadlines and socket options and
    /// of the connections accepted from now on, then wakes every connection to apply it.
    fn put_in_force(&self, next: Config) {
        let inner = &self.inner;
        inner.metrics.reconfigure(&next);
        inner.registry.set_closed_history(next.closed_history);
        inner.registry.set_flap_threshold(next.flap_threshold);
        inner
            .registry
            .storm_watch()
            .set_bound(next.keepalive.bound());
        let options_changes = inner.live.replace(next.clone());
        inner.current.store(Arc::new(ConnShared {
            params: next,
            options_changes,
            metrics: Arc::clone(&inner.metrics),
            live: Arc::clone(&inner.live),
            registry: inner.registry.clone(),
        }));
        inner.registry.wake_all();
    }

    /// What the connections accepted now share.
    pub(crate) fn connections(&self) -> Arc<ConnShared> {
        self.inner.current.load_full()
    }

    /// The stage and configuration every connection reads.
    pub(crate) fn live(&self) -> &Arc<Live> {
        &self.inner.live
    }
}

fn log_report(report: &ReloadReport) {
    for change in &report.refused {
        tracing::warn!(key = change.key.name(), running = %change.old, file = %change.new, "this key cannot change while the server runs; its old value stays until a restart");
    }
    let list = |changes: &[Change]| {
        changes
            .iter()
            .map(Change::to_string)
            .collect::<Vec<_>>()
            .join(", ")
    };
    tracing::info!(
        applied = %list(&report.applied),
        refused = %list(&report.refused),
        "configuration reloaded"
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Settings, KEYS};

    /// A valid value other than the default, for every key.
    const CHANGED: &[(&str, &str)] = &[
        ("listen", "127.0.0.1:7001"),
        ("reuse_port", "true"),
        ("backlog", "99"),
        ("recv_buffer", "64KiB"),
        ("send_buffer", "64KiB"),
        ("keepalive_bound", "20s"),
        ("keepalive_idle", "20s"),
        ("keepalive_interval", "5s"),
        ("keepalive_count", "4"),
        ("user_timeout", "off"),
        ("keepalive_spread", "false"),
        ("nodelay", "false"),
        ("heartbeat", "required"),
        ("heartbeat_interval", "5s"),
        ("heartbeat_misses", "2"),
        ("idle_timeout", "5m"),
        ("park_after", "1m"),
        ("write_timeout", "10s"),
        ("max_age", "1h"),
        ("max_age_grace", "10s"),
        ("max_connections", "5"),
        ("max_connections_per_ip", "2"),
        ("takeover", "false"),
        ("flap_threshold", "3/1m"),
        ("proxy_protocol", "v2"),
        ("proxy_trusted", "10.0.0.0/8"),
        ("max_frame", "1KiB"),
        ("frame_timeout", "5s"),
        ("max_buffered", "1MiB"),
        ("error_budget", "3"),
        ("max_pending_replies", "16"),
        ("queue", "128"),
        ("overflow", "drop-newest"),
        ("sink", "file:/tmp/reload-test.ndjson"),
        ("fsync", "always"),
        ("sink_rotate_size", "1MiB"),
        ("sink_rotate_interval", "1h"),
        ("sink_keep", "3"),
        ("shutdown_grace", "3s"),
        ("upgrade_timeout", "7s"),
        ("goaway_window", "4s"),
        ("log_format", "json"),
        ("log_level", "debug"),
        ("admin", "127.0.0.1:9999"),
        ("admin_token_file", "/tmp/token"),
        ("tls_cert", "/tmp/tls.crt"),
        ("tls_key", "/tmp/tls.key"),
        ("tls_client_ca", "/tmp/client-ca.pem"),
        ("auth_tokens", "/tmp/tokens"),
        ("auth", "required"),
        ("auth_timeout", "3s"),
        ("handshake_timeout", "3s"),
        ("max_handshakes", "16"),
        ("closed_history", "7"),
        ("gateway_name", "east-1"),
        ("nats_url", "nats://127.0.0.1:4333"),
        ("nats_stream", "OTHER"),
        ("nats_subject", "other.{gateway}"),
        ("nats_replicas", "3"),
        ("nats_duplicate_window", "5m"),
        ("nats_max_age", "1d"),
        ("nats_max_bytes", "1GiB"),
        ("nats_window", "100"),
        ("nats_publish_timeout", "9s"),
        ("nats_creds", "/tmp/creds"),
        ("nats_token_file", "/tmp/nats-token"),
        ("nats_user", "someone"),
        ("nats_password_file", "/tmp/password"),
        ("nats_tls_ca", "/tmp/ca.pem"),
        ("nats_tls_cert", "/tmp/cert.pem"),
        ("nats_tls_key", "/tmp/key.pem"),
        ("nats_registry", "other.registry"),
    ];

    /// The defaults, with a NATS server (so that the NATS keys may change) where NATS is built.
    fn base() -> Settings {
        let mut settings = Settings::default();
        if cfg!(feature = "nats") {
            settings
                .set_flag("nats_url", "nats://127.0.0.1:4222")
                .unwrap();
        }
        settings
    }

    /// The configuration with `key` changed; `None` for a key of a part this build leaves out
    /// (a Cargo feature), which no configuration may set.
    fn with(key: &str, value: &str) -> Option<Config> {
        let mut settings = base();
        settings.set_flag(key, value).unwrap();
        // Keys valid only beside another, which changes with them (then both are refused).
        let companions: &[(&str, &str)] = match key {
            k if k.starts_with("sink_") => &[("sink", "file:/tmp/reload-test.ndjson")],
            "nats_tls_cert" => &[("nats_tls_key", "/tmp/key.pem")],
            "nats_tls_key" => &[("nats_tls_cert", "/tmp/cert.pem")],
            "nats_user" => &[("nats_password_file", "/tmp/password")],
            "nats_password_file" => &[("nats_user", "someone")],
            "tls_cert" => &[("tls_key", "/tmp/tls.key")],
            "tls_key" => &[("tls_cert", "/tmp/tls.crt")],
            "tls_client_ca" => &[("tls_cert", "/tmp/tls.crt"), ("tls_key", "/tmp/tls.key")],
            "auth" => &[("auth_tokens", "/tmp/tokens")],
            "proxy_protocol" => &[("proxy_trusted", "10.0.0.0/8")],
            _ => &[],
        };
        for (other, value) in companions {
            settings.set_flag(other, *value).unwrap();
        }
        match Config::from_settings(&settings) {
            Ok(config) => Some(config),
            Err(ConfigError::NotBuilt { .. }) => None,
            Err(e) => panic!("{key} = {value}: {e}"),
        }
    }

    #[test]
    fn every_key_is_applied_live_or_refused_with_its_old_value_kept() {
        let listed: Vec<&str> = CHANGED.iter().map(|(key, _)| *key).collect();
        assert_eq!(listed, KEYS, "CHANGED names every key, in order");
        let old = Config::from_settings(&base()).unwrap();
        for (key, value) in CHANGED {
            let Some(new) = with(key, value) else {
                continue;
            };
            let (next, report) = plan(&old, &new).unwrap();
            let live = Key::from_name(key).unwrap().reload().is_live();
            let applied: Vec<_> = report.applied.iter().map(|c| c.key.name()).collect();
            let refused: Vec<_> = report.refused.iter().map(|c| c.key.name()).collect();
            if live {
                assert!(applied.contains(key), "{key}: {report:?}");
                assert!(refused.is_empty(), "{key}: {report:?}");
                assert_eq!(
                    changes(&next, &new),
                    vec![],
                    "{key}: the new value is in force"
                );
            } else {
                assert!(applied.is_empty(), "{key}: {report:?}");
                assert!(refused.contains(key), "{key}: {report:?}");
                assert_eq!(changes(&old, &next), vec![], "{key}: the old value stays");
            }
        }
    }

    #[test]
    fn live_and_restart_changes_in_one_file_split_and_an_invalid_result_changes_nothing() {
        let old = Config::default();
        let mut settings = Settings::default();
        settings.set_flag("heartbeat_interval", "2s").unwrap();
        settings.set_flag("queue", "8").unwrap();
        let new = Config::from_settings(&settings).unwrap();
        let (next, report) = plan(&old, &new).unwrap();
        assert_eq!(next.heartbeat_interval, std::time::Duration::from_secs(2));
        assert_eq!(next.queue, old.queue);
        assert_eq!(report.applied.len(), 1, "{report:?}");
        assert_eq!(report.refused.len(), 1, "{report:?}");
        assert_eq!(report.refused[0].to_string(), "queue: 65536 -> 8");

        // Valid on its own (max_connections 0 is checked), invalid beside nothing else: the
        // merged result is validated again.
        let invalid = Config {
            max_connections: 0,
            ..Config::default()
        };
        assert!(plan(&old, &invalid).is_err());
    }
}
