//! The NATS keys: where the JetStream sink publishes, how it authenticates, and the stream it
//! creates when there is none. Their defaults are in docs/CONFIGURATION.md, made from the table of keys (`super::keys`).

use std::path::PathBuf;
use std::time::Duration;

/// The placeholder of `nats_subject` that becomes the gateway's name.
pub const GATEWAY_PLACEHOLDER: &str = "{gateway}";

/// NATS: servers, credentials, the stream and the publish window.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NatsConfig {
    /// Seed servers (`nats://host:4222`, `tls://host:4222`); empty means no NATS.
    pub urls: Vec<String>,
    /// The stream the records go to.
    pub stream: String,
    /// Subject of each record, with `{gateway}` for the gateway's name.
    pub subject: String,
    /// Replicas of a stream connwarden creates.
    pub replicas: usize,
    /// How long JetStream remembers a message id (`Nats-Msg-Id`) of a stream connwarden creates.
    pub duplicate_window: Duration,
    /// Oldest message a created stream keeps; `None` keeps them all.
    pub max_age: Option<Duration>,
    /// Largest size of a created stream; `None` has no limit.
    pub max_bytes: Option<u64>,
    /// Records the sink holds not yet stored, at most.
    pub window: usize,
    /// Longest silence from JetStream while an answer is due; then the batch is published again.
    pub publish_timeout: Duration,
    /// Credentials file (JWT and nkey seed).
    pub creds: Option<PathBuf>,
    /// File holding a token.
    pub token_file: Option<PathBuf>,
    /// User name, with `password_file`.
    pub user: Option<String>,
    /// File holding the user's password.
    pub password_file: Option<PathBuf>,
    /// CA certificate for TLS to NATS.
    pub tls_ca: Option<PathBuf>,
    /// Client certificate for TLS to NATS.
    pub tls_cert: Option<PathBuf>,
    /// Key of `tls_cert`.
    pub tls_key: Option<PathBuf>,
    /// Subject prefix of the cluster-wide registry.
    pub registry: String,
}

impl Default for NatsConfig {
    fn default() -> Self {
        NatsConfig {
            urls: Vec::new(),
            stream: "CONNWARDEN".into(),
            subject: format!("connwarden.items.{GATEWAY_PLACEHOLDER}"),
            replicas: 1,
            duplicate_window: Duration::from_secs(120),
            max_age: Some(Duration::from_secs(7 * 24 * 3600)),
            max_bytes: None,
            window: 4096,
            publish_timeout: Duration::from_secs(5),
            creds: None,
            token_file: None,
            user: None,
            password_file: None,
            tls_ca: None,
            tls_cert: None,
            tls_key: None,
            registry: "connwarden.registry".into(),
        }
    }
}

impl NatsConfig {
    /// Whether NATS is configured at all.
    pub fn enabled(&self) -> bool {
        !self.urls.is_empty()
    }

    /// The subject this gateway publishes its records on.
    pub fn subject_for(&self, gateway: &str) -> String {
        self.subject.replace(GATEWAY_PLACEHOLDER, gateway)
    }

    /// The subjects a stream created by connwarden takes: the template with a wildcard for the
    /// gateway, so that every gateway's records land in the one stream.
    pub fn stream_subjects(&self) -> String {
        self.subject.replace(GATEWAY_PLACEHOLDER, "*")
    }
}

/// Checks a gateway name: 1 to 64 letters, digits, `-` or `_`, so that it is one token of a
/// NATS subject and one word in a `GATEWAY/ID` argument.
pub fn check_gateway_name(name: &str) -> Result<(), String> {
    let valid = !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if valid {
        Ok(())
    } else {
        Err("expected 1 to 64 letters, digits, - or _ (one token of a NATS subject)".into())
    }
}

/// The host name and `port` as a gateway name: `web-1-7000`.
pub fn default_gateway_name(port: u16) -> String {
    let host: String = host_name()
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '-'
            }
        })
        .take(56)
        .collect();
    let host = if host.is_empty() {
        "connwarden".into()
    } else {
        host
    };
    format!("{host}-{port}")
}

#[cfg(unix)]
fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| {
            let mut buf = [0u8; 256];
            // SAFETY: the buffer is valid for its length; gethostname NUL-terminates within it
            // or truncates, and the last byte stays 0.
            let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len() - 1) };
            (rc == 0).then(|| {
                let end = buf.iter().position(|b| *b == 0).unwrap_or(buf.len());
                String::from_utf8_lossy(&buf[..end]).into_owned()
            })
        })
        .map(|h| h.trim().to_owned())
        .unwrap_or_default()
}

#[cfg(not(unix))]
fn host_name() -> String {
    std::env::var("COMPUTERNAME").unwrap_or_default()
}

/// Parses NATS server URLs: each value may hold several, comma-separated; `nats://`, `tls://` or
/// no scheme.
pub fn parse_urls(values: &[String]) -> Result<Vec<String>, String> {
    let urls: Vec<String> = values
        .iter()
        .flat_map(|v| v.split(','))
        .map(|u| u.trim().to_owned())
        .filter(|u| !u.is_empty() && u != "off")
        .collect();
    for url in &urls {
        let rest = url
            .split_once("://")
            .map_or(url.as_str(), |(scheme, rest)| {
                if matches!(scheme, "nats" | "tls") {
                    rest
                } else {
                    ""
                }
            });
        if rest.is_empty() || rest.contains(char::is_whitespace) {
            return Err(format!(
                "{url:?}: expected host:port, nats://host:port or tls://host:port"
            ));
        }
    }
    Ok(urls)
}

pub(super) fn parse_stream_name(text: &str) -> Result<String, String> {
    let name = text.trim();
    let valid = !name.is_empty()
        && name.len() <= 255
        && !name.contains(|c: char| c == '.' || c == '*' || c == '>' || c.is_whitespace());
    if valid {
        Ok(name.to_owned())
    } else {
        Err("expected a stream name without dots, wildcards or spaces".into())
    }
}

pub(super) fn parse_subject_template(text: &str) -> Result<String, String> {
    let template = text.trim();
    check_subject(&template.replace(GATEWAY_PLACEHOLDER, "g"), false)?;
    Ok(template.to_owned())
}

pub(super) fn parse_subject_prefix(text: &str) -> Result<String, String> {
    let prefix = text.trim();
    check_subject(prefix, false)?;
    Ok(prefix.to_owned())
}

/// A subject: tokens separated by dots, none empty, no spaces, wildcards only if `wildcards`.
pub(super) fn check_subject(subject: &str, wildcards: bool) -> Result<(), String> {
    let bad_token = subject.split('.').any(|token| {
        token.is_empty()
            || token.contains(|c: char| c.is_whitespace() || c.is_control())
            || (!wildcards && (token.contains('*') || token.contains('>')))
    });
    if subject.is_empty() || bad_token {
        Err("expected a NATS subject: dot-separated tokens, no spaces, no wildcards".into())
    } else {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gateway_names_are_single_subject_tokens() {
        assert!(check_gateway_name("gw-1_a").is_ok());
        for bad in ["", "a.b", "a b", "a*", &"x".repeat(65)] {
            assert!(check_gateway_name(bad).is_err(), "{bad:?}");
        }
        let name = default_gateway_name(7000);
        assert!(check_gateway_name(&name).is_ok(), "{name}");
        assert!(name.ends_with("-7000"), "{name}");
    }

    #[test]
    fn the_subject_template_takes_the_gateway_and_the_stream_all_gateways() {
        let config = NatsConfig::default();
        assert_eq!(config.subject_for("g1"), "connwarden.items.g1");
        assert_eq!(config.stream_subjects(), "connwarden.items.*");
        assert!(parse_subject_template("a..b").is_err());
        assert!(parse_subject_template("a.>").is_err());
        assert_eq!(
            parse_urls(&["nats://a:1, b:2".into(), "tls://c:3".into()]).unwrap(),
            ["nats://a:1", "b:2", "tls://c:3"]
        );
        assert!(parse_urls(&["http://a:1".into()]).is_err());
    }
}
