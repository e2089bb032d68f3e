//! How each kind of value is read from its text and written back as TOML: the `parse` and
//! `show` columns of the key table (`super::keys`). A bare number is a count or a size; a
//! duration always has its unit.

use std::fmt::Display;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use tracing::level_filters::LevelFilter;

use super::{
    nats, FlapThreshold, FsyncMode, HeartbeatMode, LogFormat, Overflow, ProxyProtocol, SinkSpec,
    UserTimeout,
};

/// Parses `30s`, `2m`, `1h`, `500ms`, `1m 30s`. A bare number is refused: `30` could mean seconds
/// or milliseconds, and a wrong guess moves a timeout by a factor of a thousand.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    humantime::parse_duration(text.trim())
        .map_err(|e| format!("expected a duration such as 30s, 2m, 1h or 500ms ({e})"))
}

/// Parses a duration or `off`.
pub fn parse_optional_duration(text: &str) -> Result<Option<Duration>, String> {
    match text.trim() {
        "off" | "none" => Ok(None),
        other => parse_duration(other)
            .map(Some)
            .map_err(|e| format!("{e}, or off")),
    }
}

/// Parses `auto`, `off` or a duration.
pub fn parse_user_timeout(text: &str) -> Result<UserTimeout, String> {
    match text.trim() {
        "auto" => Ok(UserTimeout::Auto),
        "off" => Ok(UserTimeout::Off),
        other => parse_duration(other)
            .map(UserTimeout::Fixed)
            .map_err(|e| format!("{e}, or auto, or off")),
    }
}

/// Parses `true` or `false`.
pub fn parse_bool(text: &str) -> Result<bool, String> {
    match text.trim() {
        "true" | "yes" | "on" | "1" => Ok(true),
        "false" | "no" | "off" | "0" => Ok(false),
        _ => Err("expected true or false".into()),
    }
}

pub(super) fn parse_number<T: FromStr>(text: &str) -> Result<T, String> {
    text.trim()
        .replace('_', "")
        .parse()
        .map_err(|_| "expected a whole number in range".into())
}

/// Parses a size in bytes: `65536`, `64KiB`, `64k`, `1MiB`, `1m`, `2GiB`.
pub fn parse_size(text: &str) -> Result<usize, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit() && c != '_')
        .unwrap_or(text.len());
    let (digits, unit) = text.split_at(split);
    let number: usize = parse_number(digits)
        .map_err(|_| "expected a size such as 65536, 64KiB or 1MiB".to_owned())?;
    let multiplier = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1024,
        "m" | "mb" | "mib" => 1024 * 1024,
        "g" | "gb" | "gib" => 1024 * 1024 * 1024,
        _ => return Err("expected a size such as 65536, 64KiB, 1MiB or 2GiB".into()),
    };
    number
        .checked_mul(multiplier)
        .ok_or_else(|| "size too large".to_owned())
}

/// Parses a size in bytes or `auto`.
pub fn parse_buffer(text: &str) -> Result<Option<usize>, String> {
    match text.trim() {
        "auto" => Ok(None),
        other => parse_size(other)
            .map(Some)
            .map_err(|e| format!("{e}, or auto")),
    }
}

pub(super) fn parse_heartbeat(text: &str) -> Result<HeartbeatMode, String> {
    match text.trim() {
        "negotiated" => Ok(HeartbeatMode::Negotiated),
        "required" => Ok(HeartbeatMode::Required),
        "off" => Ok(HeartbeatMode::Off),
        _ => Err("expected negotiated, required or off".into()),
    }
}

pub(super) fn parse_overflow(text: &str) -> Result<Overflow, String> {
    match text.trim() {
        "backpressure" => Ok(Overflow::Backpressure),
        "drop-newest" => Ok(Overflow::DropNewest),
        "drop-oldest" => Ok(Overflow::DropOldest),
        _ => Err("expected backpressure, drop-newest or drop-oldest".into()),
    }
}

pub(super) fn parse_sink(text: &str) -> Result<SinkSpec, String> {
    match text.trim() {
        "stdout" => Ok(SinkSpec::Stdout),
        "jetstream" => Ok(SinkSpec::JetStream),
        other => match other.strip_prefix("file:") {
            Some(path) if !path.is_empty() => Ok(SinkSpec::File(PathBuf::from(path))),
            _ => Err("expected stdout, file:PATH or jetstream".into()),
        },
    }
}

pub(super) fn parse_fsync(text: &str) -> Result<FsyncMode, String> {
    match text.trim() {
        "always" => Ok(FsyncMode::Always),
        "batch" => Ok(FsyncMode::Batch),
        "never" => Ok(FsyncMode::Never),
        _ => Err("expected always, batch or never".into()),
    }
}

/// Parses an address or `off`.
pub(super) fn parse_admin(text: &str) -> Result<Option<SocketAddr>, String> {
    match text.trim() {
        "off" => Ok(None),
        other => other
            .parse()
            .map(Some)
            .map_err(|_| "expected an address such as 127.0.0.1:9464, or off".into()),
    }
}

/// Parses a path or `off`.
pub(super) fn parse_optional_path(text: &str) -> Result<Option<PathBuf>, String> {
    match text.trim() {
        "off" | "" => Ok(None),
        other => Ok(Some(PathBuf::from(other))),
    }
}

/// Parses `auth`: `required` or `optional`.
pub(super) fn parse_auth(text: &str) -> Result<bool, String> {
    match text.trim() {
        "required" => Ok(true),
        "optional" => Ok(false),
        _ => Err("expected required or optional".into()),
    }
}

/// Parses a size in bytes or `off`.
pub(super) fn parse_optional_size(text: &str) -> Result<Option<u64>, String> {
    match text.trim() {
        "off" => Ok(None),
        other => parse_size(other)
            .map(|n| Some(n as u64))
            .map_err(|e| format!("{e}, or off")),
    }
}

/// Parses a count or `off`.
pub(super) fn parse_optional_count(text: &str) -> Result<Option<usize>, String> {
    match text.trim() {
        "off" => Ok(None),
        other => parse_number(other)
            .map(Some)
            .map_err(|e| format!("{e}, or off")),
    }
}

/// Parses a text or `off`.
pub(super) fn parse_optional_text(text: &str) -> Result<Option<String>, String> {
    match text.trim() {
        "off" | "" => Ok(None),
        other => Ok(Some(other.to_owned())),
    }
}

/// Parses a name or `auto`.
pub(super) fn parse_auto_name(text: &str) -> Result<Option<String>, String> {
    match text.trim() {
        "auto" => Ok(None),
        other => nats::check_gateway_name(other).map(|()| Some(other.to_owned())),
    }
}

/// Parses `text` or `json`.
pub fn parse_log_format(text: &str) -> Result<LogFormat, String> {
    match text.trim() {
        "text" => Ok(LogFormat::Text),
        "json" => Ok(LogFormat::Json),
        _ => Err("expected text or json".into()),
    }
}

/// Parses `error`, `warn`, `info`, `debug`, `trace` or `off`.
pub fn parse_log_level(text: &str) -> Result<LevelFilter, String> {
    text.trim()
        .parse()
        .map_err(|_| "expected error, warn, info, debug, trace or off".into())
}

/// Parses listen addresses, each `0.0.0.0:7000` or `[::]:7000`.
pub(super) fn parse_listen(values: &[String]) -> Result<Vec<SocketAddr>, String> {
    values
        .iter()
        .map(|value| {
            value.trim().parse().map_err(|_| {
                format!("{value:?}: expected an address such as 0.0.0.0:7000 or [::]:7000")
            })
        })
        .collect()
}

/// Most closes a flap threshold may count: each client tracked keeps that many close times.
const MAX_FLAP_CLOSES: u32 = 1000;

pub(super) fn parse_flap_threshold(text: &str) -> Result<Option<FlapThreshold>, String> {
    let text = text.trim();
    if text == "off" {
        return Ok(None);
    }
    let usage = || format!("{text:?}: expected closes/window such as 10/5m, or off");
    let (closes, within) = text.split_once('/').ok_or_else(usage)?;
    let closes: u32 = closes.trim().parse().map_err(|_| usage())?;
    let within = parse_duration(within)?;
    if !(2..=MAX_FLAP_CLOSES).contains(&closes) || within.is_zero() {
        return Err(format!(
            "{text:?}: 2 to {MAX_FLAP_CLOSES} closes within a window above 0"
        ));
    }
    Ok(Some(FlapThreshold { closes, within }))
}

pub(super) fn parse_proxy_protocol(text: &str) -> Result<ProxyProtocol, String> {
    match text.trim() {
        "off" => Ok(ProxyProtocol::Off),
        "v1" => Ok(ProxyProtocol::V1),
        "v2" => Ok(ProxyProtocol::V2),
        "any" => Ok(ProxyProtocol::Any),
        _ => Err("expected off, v1, v2 or any".into()),
    }
}

/// Networks in CIDR notation; a bare address is its own network (`10.0.0.7` is `10.0.0.7/32`).
pub(super) fn parse_networks(values: &[String]) -> Result<Vec<ipnet::IpNet>, String> {
    values
        .iter()
        .flat_map(|value| value.split(','))
        .map(str::trim)
        .filter(|value| !value.is_empty())
        .map(|value| {
            value
                .parse::<ipnet::IpNet>()
                .or_else(|_| value.parse::<std::net::IpAddr>().map(ipnet::IpNet::from))
                .map_err(|_| {
                    format!("{value:?}: expected a network such as 10.0.0.0/8 or fd00::/8")
                })
        })
        .collect()
}

/// A text as a TOML string.
fn quoted(text: &str) -> String {
    format!("{text:?}")
}

pub(super) fn show_text(text: &str) -> String {
    quoted(text)
}

pub(super) fn show_texts(texts: &[String]) -> String {
    let quoted: Vec<String> = texts.iter().map(|text| quoted(text)).collect();
    format!("[{}]", quoted.join(", "))
}

pub(super) fn show_addresses(addresses: &[SocketAddr]) -> String {
    let texts: Vec<String> = addresses.iter().map(ToString::to_string).collect();
    show_texts(&texts)
}

pub(super) fn show_networks(networks: &[ipnet::IpNet]) -> String {
    let texts: Vec<String> = networks.iter().map(ToString::to_string).collect();
    show_texts(&texts)
}

pub(super) fn show_flap_threshold(threshold: &Option<FlapThreshold>) -> String {
    match threshold {
        Some(t) => quoted(&t.to_string()),
        None => quoted("off"),
    }
}

pub(super) fn show_proxy_protocol(mode: &ProxyProtocol) -> String {
    quoted(mode.as_str())
}

pub(super) fn show_bool(value: &bool) -> String {
    value.to_string()
}

pub(super) fn show_number<T: Display>(value: &T) -> String {
    value.to_string()
}

pub(super) fn show_optional_number<T: Display>(value: &Option<T>) -> String {
    value
        .as_ref()
        .map_or_else(|| quoted("off"), ToString::to_string)
}

pub(super) fn show_buffer(value: &Option<usize>) -> String {
    value.map_or_else(|| quoted("auto"), |bytes| bytes.to_string())
}

pub(super) fn show_duration(value: &Duration) -> String {
    quoted(&humantime::format_duration(*value).to_string())
}

pub(super) fn show_optional_duration(value: &Option<Duration>) -> String {
    value.as_ref().map_or_else(|| quoted("off"), show_duration)
}

pub(super) fn show_user_timeout(value: &UserTimeout) -> String {
    match value {
        UserTimeout::Auto => quoted("auto"),
        UserTimeout::Off => quoted("off"),
        UserTimeout::Fixed(timeout) => show_duration(timeout),
    }
}

pub(super) fn show_heartbeat(mode: &HeartbeatMode) -> String {
    quoted(match mode {
        HeartbeatMode::Negotiated => "negotiated",
        HeartbeatMode::Required => "required",
        HeartbeatMode::Off => "off",
    })
}

pub(super) fn show_overflow(policy: &Overflow) -> String {
    quoted(policy.as_str())
}

pub(super) fn show_sink(sink: &SinkSpec) -> String {
    quoted(&match sink {
        SinkSpec::Stdout => "stdout".to_owned(),
        SinkSpec::File(path) => format!("file:{}", path.display()),
        SinkSpec::JetStream => "jetstream".to_owned(),
    })
}

pub(super) fn show_fsync(mode: &FsyncMode) -> String {
    quoted(mode.as_str())
}

pub(super) fn show_log_format(format: &LogFormat) -> String {
    quoted(match format {
        LogFormat::Text => "text",
        LogFormat::Json => "json",
    })
}

pub(super) fn show_log_level(level: &LevelFilter) -> String {
    quoted(&level.to_string().to_ascii_lowercase())
}

pub(super) fn show_admin(address: &Option<SocketAddr>) -> String {
    quoted(&address.map_or_else(|| "off".to_owned(), |a| a.to_string()))
}

pub(super) fn show_optional_path(path: &Option<PathBuf>) -> String {
    quoted(
        &path
            .as_ref()
            .map_or_else(|| "off".to_owned(), |p| p.display().to_string()),
    )
}

pub(super) fn show_auth(required: &bool) -> String {
    quoted(if *required { "required" } else { "optional" })
}

pub(super) fn show_auto_name(name: &Option<String>) -> String {
    quoted(name.as_deref().unwrap_or("auto"))
}

pub(super) fn show_optional_text(text: &Option<String>) -> String {
    quoted(text.as_deref().unwrap_or("off"))
}
