//! What a configuration really does on this machine: the options read back from a loopback
//! connection made with it (both ends), the worst-case detection time of each failure mode, and
//! the settings that defeat their purpose.

use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use socket2::{Domain, SockRef, Socket, Type};

use super::kernel::KernelDefaults;
use super::odds::{FalseCloses, FRAGILE_PER_1000_DAYS};
use crate::config::{Config, HeartbeatMode, Keepalive, Key};
use crate::sockopt::{self, Effective, ListenerOptions, SocketOptions};

/// Idle timeouts of common NATs and load balancers: an idle connection through one of them is
/// forgotten after this long, silently, unless keep-alive probes come first.
pub const MIDDLEBOX_IDLE_TIMEOUTS: &[(&str, u64, &str)] = &[
    (
        "Azure Load Balancer (default)",
        240,
        "https://learn.microsoft.com/azure/load-balancer/load-balancer-tcp-idle-timeout",
    ),
    (
        "Azure NAT Gateway (default)",
        240,
        "https://learn.microsoft.com/azure/nat-gateway/nat-gateway-resource",
    ),
    (
        "AWS NAT Gateway",
        350,
        "https://docs.aws.amazon.com/vpc/latest/userguide/nat-gateway-troubleshooting.html",
    ),
    (
        "AWS Network Load Balancer (TCP default)",
        350,
        "https://docs.aws.amazon.com/elasticloadbalancing/latest/network/update-idle-timeout.html",
    ),
    (
        "Google Cloud NAT (tcp-established-idle-timeout default)",
        1200,
        "https://cloud.google.com/nat/docs/tune-nat-configuration",
    ),
];

/// One socket option: asked, in force on each end, and the kernel's default.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct OptionRow {
    /// The option's name, as in the system headers.
    pub option: &'static str,
    /// The value the configuration asks for.
    pub asked: String,
    /// The value in force on the socket the server accepted (`null`: not readable here).
    pub server: Option<String>,
    /// The value in force on the client's socket.
    pub client: Option<String>,
    /// What applies where the option is not set.
    pub kernel_default: Option<String>,
    /// Both ends have what was asked (buffers: at least what was asked).
    pub ok: bool,
}

/// The worst case until the server notices one kind of failure.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Bound {
    /// A stable name: `idle_dead_peer`, `dead_peer_with_unacked_data`, `frozen_peer`,
    /// `slow_consumer`, `orderly_close`, `peer_crash`.
    pub failure: &'static str,
    /// What notices it, and how the bound is made.
    pub mechanism: String,
    /// The close reason recorded.
    pub reason: &'static str,
    /// Worst-case time in milliseconds; `null` when nothing notices it.
    pub bound_ms: Option<u64>,
}

/// A setting that defeats its purpose.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Warning {
    /// A stable name, for scripts.
    pub code: &'static str,
    /// What is wrong and what to do.
    pub message: String,
}

/// Everything `connwarden doctor` reports without measuring.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct Inspection {
    /// Version of this JSON layout; changes only when a field changes meaning or goes away.
    pub schema: u32,
    /// The platform (`linux`, `macos`, `windows`, …).
    pub platform: &'static str,
    /// Options this platform cannot set.
    pub missing_options: Vec<&'static str>,
    /// The options, asked and in force.
    pub options: Vec<OptionRow>,
    /// The kernel's defaults and limits.
    pub kernel: KernelDefaults,
    /// Worst-case detection time of each failure mode.
    pub bounds: Vec<Bound>,
    /// The other side of the keep-alive judgment: healthy idle peers closed on lossy paths.
    pub false_closes: FalseCloses,
    /// Who may connect and what the data port speaks.
    pub security: Security,
    /// Settings that defeat their purpose.
    pub warnings: Vec<Warning>,
    /// The JetStream sync setting of each NATS server asked (`doctor --nats-monitor`).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub nats: Vec<super::NatsDurability>,
}

/// The TLS and authentication configuration, with its files checked as `serve` would read
/// them.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Security {
    /// `tls` or `clear text`.
    pub transport: &'static str,
    /// What is wrong with the certificate, key or client CA files, if anything.
    pub tls_error: Option<String>,
    /// Whether clients must present a certificate (`tls_client_ca`).
    pub client_certificates: bool,
    /// Tokens in `auth_tokens`, when set and readable.
    pub tokens: Option<usize>,
    /// What is wrong with the tokens file, if anything.
    pub tokens_error: Option<String>,
    /// `required` or `optional`.
    pub auth: &'static str,
    /// Listen addresses that are not loopback.
    pub exposed: Vec<String>,
}

impl Security {
    fn of(config: &Config) -> Security {
        let tls_error = crate::tls::server_config(config)
            .err()
            .map(|e| e.to_string());
        let (tokens, tokens_error) = match config.auth_tokens.as_deref() {
            None => (None, None),
            Some(path) => match crate::auth::Tokens::from_file(path) {
                Ok(tokens) => (Some(tokens.len()), None),
                Err(error) => (None, Some(error.to_string())),
            },
        };
        Security {
            transport: if config.tls_cert.is_some() {
                "tls"
            } else {
                "clear text"
            },
            tls_error,
            client_certificates: config.tls_client_ca.is_some(),
            tokens,
            tokens_error,
            auth: if config.auth_required {
                "required"
            } else {
                "optional"
            },
            exposed: config
                .listen
                .iter()
                .filter(|addr| !addr.ip().is_loopback())
                .map(|addr| addr.to_string())
                .collect(),
        }
    }
}

impl Security {
    /// What defeats the purpose: clear text beyond loopback, files `serve` could not use.
    fn warnings(&self) -> Vec<Warning> {
        let mut out = Vec::new();
        if self.transport == "clear text" && !self.exposed.is_empty() {
            out.push(Warning {
                code: "clear_text_beyond_loopback",
                message: format!(
                    "{} listen beyond loopback without TLS: items (and tokens) travel in clear text; set tls_cert and tls_key",
                    self.exposed.join(", ")
                ),
            });
        }
        let unusable = [
            ("tls_files_unusable", &self.tls_error),
            ("auth_tokens_unusable", &self.tokens_error),
        ];
        for (code, error) in unusable {
            if let Some(error) = error {
                out.push(Warning {
                    code,
                    message: format!("serve would not start: {error}"),
                });
            }
        }
        out
    }
}

/// Why the inspection could not run.
#[derive(Debug, thiserror::Error)]
pub enum InspectError {
    /// The loopback listener could not be made.
    #[error("cannot listen on loopback")]
    Listen(#[source] sockopt::ListenError),
    /// The loopback connection could not be made.
    #[error("cannot open a loopback connection: {stage}")]
    Connect {
        /// The step that failed.
        stage: &'static str,
        #[source]
        /// The system's answer.
        source: std::io::Error,
    },
}

/// Opens a loopback connection with `config`'s options on both ends, reads them back, and
/// works out bounds and warnings.
pub fn inspect(config: &Config) -> Result<Inspection, InspectError> {
    let options = SocketOptions::from_config(config);
    let (server, client) = loopback_pair(&options)?;
    let server = sockopt::read_back(SockRef::from(&server));
    let client = sockopt::read_back(SockRef::from(&client));
    let kernel = KernelDefaults::read();
    // Reads the certificate and tokens files once, for the report and its warnings.
    let security = Security::of(config);
    Ok(Inspection {
        schema: 1,
        platform: std::env::consts::OS,
        missing_options: sockopt::SUPPORT.missing(),
        options: option_rows(&options, &server, &client, &kernel),
        bounds: bounds(config, &kernel),
        false_closes: FalseCloses::of(config),
        warnings: warnings(config, &kernel, &options, &[&server, &client])
            .into_iter()
            .chain(security.warnings())
            .collect(),
        security,
        nats: Vec::new(),
        kernel,
    })
}

/// A connection on 127.0.0.1 made the way the server makes them: listener options before
/// `listen`, options again on the accepted socket; the client sets the same options before
/// `connect`, as `connwarden::client` does.
fn loopback_pair(options: &SocketOptions) -> Result<(TcpStream, TcpStream), InspectError> {
    let listen_options = ListenerOptions {
        reuse_port: false,
        backlog: 8,
    };
    let any_port = SocketAddr::from(([127, 0, 0, 1], 0));
    let listener =
        sockopt::bind_listener(any_port, &listen_options, options).map_err(InspectError::Listen)?;
    let fail = |stage| move |source| InspectError::Connect { stage, source };
    let addr = listener.local_addr().map_err(fail("local_addr"))?;
    let socket = Socket::new(Domain::IPV4, Type::STREAM, None).map_err(fail("socket"))?;
    let prepare = sockopt::apply_buffers(SockRef::from(&socket), options)
        .and_then(|()| sockopt::apply(SockRef::from(&socket), options));
    prepare.map_err(|e| fail("set options")(std::io::Error::other(e)))?;
    socket
        .connect_timeout(&addr.into(), Duration::from_secs(5))
        .map_err(fail("connect"))?;
    let (server, _) = listener.accept().map_err(fail("accept"))?;
    sockopt::apply(SockRef::from(&server), options)
        .map_err(|e| fail("set options on the accepted socket")(std::io::Error::other(e)))?;
    Ok((server, socket.into()))
}

fn option_rows(
    asked: &SocketOptions,
    server: &Effective,
    client: &Effective,
    kernel: &KernelDefaults,
) -> Vec<OptionRow> {
    let secs = |d: Duration| humantime::format_duration(d).to_string();
    let opt_secs = |d: Option<Duration>| d.map(secs);
    let num = |n: Option<u64>| n.map(|n| n.to_string());
    let mut rows = vec![
        row(
            "SO_KEEPALIVE",
            "true".into(),
            [server, client].map(|e| e.keepalive.map(|k| k.to_string())),
            Some("false".into()),
        ),
        row(
            "TCP_KEEPIDLE",
            secs(asked.keepalive.idle),
            [server, client].map(|e| opt_secs(e.keepalive_idle)),
            kernel
                .tcp_keepalive_time
                .map(|s| secs(Duration::from_secs(s))),
        ),
        row(
            "TCP_KEEPINTVL",
            secs(asked.keepalive.interval),
            [server, client].map(|e| opt_secs(e.keepalive_interval)),
            kernel
                .tcp_keepalive_intvl
                .map(|s| secs(Duration::from_secs(s))),
        ),
        row(
            "TCP_KEEPCNT",
            asked.keepalive.count.to_string(),
            [server, client].map(|e| e.keepalive_count.map(|c| c.to_string())),
            num(kernel.tcp_keepalive_probes),
        ),
    ];
    let show_ut = |d: Option<Duration>| d.map_or_else(|| "off".to_owned(), secs);
    rows.push(row(
        "TCP_USER_TIMEOUT",
        show_ut(asked.user_timeout),
        [server, client].map(|e| {
            sockopt::SUPPORT
                .user_timeout
                .then(|| show_ut(e.user_timeout))
        }),
        kernel.tcp_retries2.map(|r| {
            format!(
                "off: tcp_retries2 = {r} (~{} s)",
                super::kernel::retransmission_bound(r).as_secs()
            )
        }),
    ));
    rows.push(row(
        "TCP_NODELAY",
        asked.nodelay.to_string(),
        [server, client].map(|e| e.nodelay.map(|n| n.to_string())),
        Some("false".into()),
    ));
    let buffer = |asked: Option<usize>| asked.map_or_else(|| "auto".to_owned(), |b| b.to_string());
    let mut rcv = row(
        "SO_RCVBUF",
        buffer(asked.recv_buffer),
        [server, client].map(|e| e.recv_buffer.map(|b| b.to_string())),
        kernel
            .tcp_rmem
            .map(|[min, def, max]| format!("auto {min}/{def}/{max}")),
    );
    let mut snd = row(
        "SO_SNDBUF",
        buffer(asked.send_buffer),
        [server, client].map(|e| e.send_buffer.map(|b| b.to_string())),
        kernel
            .tcp_wmem
            .map(|[min, def, max]| format!("auto {min}/{def}/{max}")),
    );
    // Buffers: Linux doubles the value asked (bookkeeping), and `auto` is whatever autotuning
    // chose. The check is "at least what was asked".
    rcv.ok = buffer_ok(asked.recv_buffer, [server.recv_buffer, client.recv_buffer]);
    snd.ok = buffer_ok(asked.send_buffer, [server.send_buffer, client.send_buffer]);
    rows.push(rcv);
    rows.push(snd);
    rows
}

fn row(
    option: &'static str,
    asked: String,
    [server, client]: [Option<String>; 2],
    kernel_default: Option<String>,
) -> OptionRow {
    let ok = [&server, &client]
        .iter()
        .all(|v| v.as_deref().is_none_or(|v| v == asked));
    OptionRow {
        option,
        asked,
        server,
        client,
        kernel_default,
        ok,
    }
}

fn buffer_ok(asked: Option<usize>, effective: [Option<usize>; 2]) -> bool {
    match asked {
        None => true,
        Some(asked) => effective.iter().all(|e| e.is_none_or(|e| e >= asked)),
    }
}

fn ms(d: Duration) -> Option<u64> {
    Some(d.as_millis() as u64)
}

fn show(d: Duration) -> String {
    humantime::format_duration(Duration::from_millis(d.as_millis() as u64)).to_string()
}

/// The worst case of each failure mode under `config`.
pub fn bounds(config: &Config, kernel: &KernelDefaults) -> Vec<Bound> {
    let ka = config.keepalive;
    let heartbeat = config.heartbeat_interval * config.heartbeat_misses;
    let heartbeat_text = match config.heartbeat {
        HeartbeatMode::Off => None,
        HeartbeatMode::Negotiated => Some("clients that sent hello"),
        HeartbeatMode::Required => Some("every client"),
    };
    let idle_timeout = config.idle_timeout;
    let idle = Bound {
        failure: "idle_dead_peer",
        mechanism: format!(
            "kernel keep-alive: idle {} + interval {} x {} probes",
            show(ka.idle),
            show(ka.interval),
            ka.count
        ),
        reason: "keepalive_timeout",
        bound_ms: ms(ka.bound()),
    };
    let unacked = match config.effective_user_timeout() {
        Some(timeout) => Bound {
            failure: "dead_peer_with_unacked_data",
            mechanism: format!(
                "TCP_USER_TIMEOUT {} (keep-alive is paused while data is unacknowledged)",
                show(timeout)
            ),
            reason: "user_timeout",
            bound_ms: ms(timeout),
        },
        None => Bound {
            failure: "dead_peer_with_unacked_data",
            mechanism: format!(
                "no user timeout: the kernel retransmits tcp_retries2 = {} times",
                kernel.tcp_retries2.map_or("?".into(), |r| r.to_string())
            ),
            reason: "user_timeout",
            bound_ms: kernel.retransmission_bound().and_then(ms),
        },
    };
    let frozen = match (heartbeat_text, idle_timeout) {
        (Some(who), _) => Bound {
            failure: "frozen_peer",
            mechanism: format!(
                "heartbeat ({who}): ping after {} of silence, {} misses",
                show(config.heartbeat_interval),
                config.heartbeat_misses
            ),
            reason: "heartbeat_timeout",
            bound_ms: ms(idle_timeout.map_or(heartbeat, |i| i.min(heartbeat))),
        },
        (None, Some(idle)) => Bound {
            failure: "frozen_peer",
            mechanism: format!("idle timeout {} (heartbeat off)", show(idle)),
            reason: "idle_timeout",
            bound_ms: ms(idle),
        },
        (None, None) => Bound {
            failure: "frozen_peer",
            mechanism: "nothing: heartbeat and idle timeout are off, and the peer's kernel answers keep-alive".into(),
            reason: "-",
            bound_ms: None,
        },
    };
    vec![
        idle,
        unacked,
        frozen,
        Bound {
            failure: "slow_consumer",
            mechanism: format!(
                "write timeout {} on pending output",
                show(config.write_timeout)
            ),
            reason: "write_timeout",
            bound_ms: ms(config.write_timeout),
        },
        Bound {
            failure: "orderly_close",
            mechanism: "FIN from the peer".into(),
            reason: "peer_closed",
            bound_ms: Some(0),
        },
        Bound {
            failure: "peer_crash",
            mechanism:
                "process crash: its kernel sends FIN or RST (a host crash is an idle dead peer)"
                    .into(),
            reason: "peer_closed / reset",
            bound_ms: Some(0),
        },
    ]
}

/// Settings that defeat their purpose, each once, in the order of the checks below.
pub fn warnings(
    config: &Config,
    kernel: &KernelDefaults,
    asked: &SocketOptions,
    effective: &[&Effective],
) -> Vec<Warning> {
    let mut out = Vec::new();
    out.extend(idle_above_middleboxes(config));
    out.extend(idle_above_conntrack(config, kernel));
    out.extend(user_timeout(config, kernel));
    out.extend(fragile_split(config));
    out.extend(frozen_peers(config));
    out.extend(open_files(config, kernel));
    out.extend(backlogs(config, kernel));
    out.extend(buffers_above_kernel_max(asked, kernel));
    out.extend(not_in_force(asked, effective));
    out.extend(platform_lacks_options());
    first_of_each(out)
}

fn warning(code: &'static str, message: impl Into<String>) -> Option<Warning> {
    Some(Warning {
        code,
        message: message.into(),
    })
}

fn idle_above_middleboxes(config: &Config) -> Option<Warning> {
    let idle = config.keepalive.idle;
    let exceeded: Vec<String> = MIDDLEBOX_IDLE_TIMEOUTS
        .iter()
        .filter(|(_, secs, _)| idle >= Duration::from_secs(*secs))
        .map(|(name, secs, _)| format!("{name} {secs} s"))
        .collect();
    if exceeded.is_empty() {
        return None;
    }
    warning(
        "keepalive_idle_above_middlebox_timeouts",
        format!(
            "{} {} is not below the idle timeout of {}: such a middlebox forgets an idle connection before the first probe, and neither end learns of it until it sends; keep {} under the smallest idle timeout on the path",
            Key::KeepaliveIdle,
            show(idle),
            exceeded.join(", "),
            Key::KeepaliveIdle,
        ),
    )
}

fn idle_above_conntrack(config: &Config, kernel: &KernelDefaults) -> Option<Warning> {
    let idle = config.keepalive.idle;
    let conntrack = kernel.conntrack_established_timeout?;
    if idle < Duration::from_secs(conntrack) {
        return None;
    }
    warning(
        "keepalive_idle_above_conntrack",
        format!(
            "{} {} is not below this host's nf_conntrack_tcp_timeout_established ({conntrack} s)",
            Key::KeepaliveIdle,
            show(idle)
        ),
    )
}

fn user_timeout(config: &Config, kernel: &KernelDefaults) -> Option<Warning> {
    match config.effective_user_timeout() {
        None => warning(
            "user_timeout_off",
            format!(
                "{} is off: a dead peer with unacknowledged data is noticed only after tcp_retries2 retransmissions (~{}), keep-alive does not run meanwhile",
                Key::UserTimeout,
                kernel.retransmission_bound().map_or("15 minutes".into(), show)
            ),
        ),
        Some(timeout) if timeout < config.keepalive.bound() => warning(
            "user_timeout_below_keepalive_bound",
            format!(
                "{} {} is below the keep-alive bound {}: Linux then also ends an idle connection once the user timeout has passed since the last data, after the first unanswered probe, so {} no longer counts",
                Key::UserTimeout,
                show(timeout),
                show(config.keepalive.bound()),
                Key::KeepaliveCount,
            ),
        ),
        Some(_) => None,
    }
}

fn fragile_split(config: &Config) -> Option<Warning> {
    let odds = FalseCloses::of(config);
    if odds.at_one_percent() <= FRAGILE_PER_1000_DAYS {
        return None;
    }
    let ka = &config.keepalive;
    let bound = ka.bound().as_secs();
    let better = Keepalive::for_bound(Duration::from_secs(bound))
        .map(|k| format!("{} + {} x {}", show(k.idle), show(k.interval), k.count))
        .unwrap_or_else(|_| "a longer bound".into());
    warning(
        "keepalive_split_fragile",
        format!(
            "the keep-alive split {} + {} x {} (bound {}) closes healthy peers on lossy paths: a lost probe is not retransmitted, and {} lost in a row close the connection; at 1 % random loss each way that is {:.3} false closes per 1,000 connection-days; spend the same bound as {} = \"{bound}s\" ({better}) instead",
            show(ka.idle),
            show(ka.interval),
            ka.count,
            show(ka.bound()),
            odds.probes_before_close,
            odds.at_one_percent(),
            Key::KeepaliveBound,
        ),
    )
}

fn frozen_peers(config: &Config) -> Option<Warning> {
    if config.heartbeat == HeartbeatMode::Off && config.idle_timeout.is_none() {
        warning(
            "frozen_peer_undetected",
            format!("{} and {} are off: a peer whose process is frozen while its kernel answers keep-alive is never closed", Key::Heartbeat, Key::IdleTimeout),
        )
    } else if config.heartbeat == HeartbeatMode::Negotiated {
        warning(
            "heartbeat_negotiated",
            format!("{} is negotiated: clients that never send hello are not held to it (a frozen one is noticed only by {}, if set); use {} required if all clients answer ping", Key::Heartbeat, Key::IdleTimeout, Key::Heartbeat.flag()),
        )
    } else {
        None
    }
}

fn open_files(config: &Config, kernel: &KernelDefaults) -> Option<Warning> {
    let headroom = 64u64;
    let soft = kernel.nofile_soft?;
    let hard = kernel.nofile_hard.unwrap_or(soft);
    let needed = config.max_connections as u64 + headroom;
    if hard < needed {
        warning(
            "nofile_below_max_connections",
            format!(
                "the open-file limit (hard {hard}) is below {} {} + {headroom}: connections beyond ~{} are refused by the kernel (EMFILE); raise the hard limit (ulimit -n, LimitNOFILE=) or run several {} processes",
                Key::MaxConnections,
                config.max_connections,
                hard.saturating_sub(headroom),
                Key::ReusePort.flag(),
            ),
        )
    } else if soft < needed {
        warning(
            "nofile_soft_below_max_connections",
            format!("the open-file soft limit {soft} is below {} {} + {headroom}; serve raises it to the hard limit {hard} at start", Key::MaxConnections, config.max_connections),
        )
    } else {
        None
    }
}

fn backlogs(config: &Config, kernel: &KernelDefaults) -> Vec<Warning> {
    let mut out = Vec::new();
    if let Some(somaxconn) = kernel.somaxconn {
        if u64::from(config.backlog) > somaxconn {
            out.extend(warning(
                "backlog_above_somaxconn",
                format!(
                    "{} {} is capped by net.core.somaxconn = {somaxconn}",
                    Key::Backlog,
                    config.backlog
                ),
            ));
        }
    }
    if let Some(backlog) = kernel.netdev_max_backlog {
        let message = crate::phase::backlog_warning(
            backlog,
            config.max_connections as u64,
            config.keepalive.idle,
            config.keepalive_spread,
        );
        out.extend(message.and_then(|m| warning("netdev_backlog_below_max_connections", m)));
    }
    out
}

fn buffers_above_kernel_max(asked: &SocketOptions, kernel: &KernelDefaults) -> Vec<Warning> {
    [
        (Key::RecvBuffer, asked.recv_buffer, kernel.rmem_max, "rmem_max"),
        (Key::SendBuffer, asked.send_buffer, kernel.wmem_max, "wmem_max"),
    ]
    .into_iter()
    .filter_map(|(key, asked, max, sysctl)| match (asked, max) {
        (Some(asked), Some(max)) if asked as u64 > max => warning(
            "buffer_above_kernel_max",
            format!("{key} {asked} is above the kernel's maximum {max} (net.core.{sysctl}): the kernel caps it"),
        ),
        _ => None,
    })
    .collect()
}

fn not_in_force(asked: &SocketOptions, effective: &[&Effective]) -> Vec<Warning> {
    effective
        .iter()
        .flat_map(|end| end.mismatches(asked))
        .filter_map(|mismatch| {
            warning(
                "option_not_in_force",
                format!(
                    "{}: asked {}, in force {}",
                    mismatch.option, mismatch.asked, mismatch.effective
                ),
            )
        })
        .collect()
}

fn platform_lacks_options() -> Option<Warning> {
    let missing = sockopt::SUPPORT.missing();
    if missing.is_empty() {
        return None;
    }
    warning(
        "platform_lacks_options",
        format!(
            "this platform cannot set {}: the bounds that rest on them do not hold here",
            missing.join(", ")
        ),
    )
}

/// Each warning once, where it first appeared: both ends of the loopback connection report
/// what they differ on, one end after the other, so with two options or more the copies are
/// not next to each other (`Vec::dedup` would keep them).
fn first_of_each(warnings: Vec<Warning>) -> Vec<Warning> {
    let mut kept: Vec<Warning> = Vec::with_capacity(warnings.len());
    for warning in warnings {
        if !kept.contains(&warning) {
            kept.push(warning);
        }
    }
    kept
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_both_ends_differ_on_are_warned_once_each_in_order() {
        let config = Config::default();
        let asked = SocketOptions::from_config(&config);
        let end = Effective {
            keepalive: Some(false),
            nodelay: Some(!asked.nodelay),
            ..Effective::default()
        };
        let expected: Vec<String> = end
            .mismatches(&asked)
            .into_iter()
            .map(|m| format!("{}: asked {}, in force {}", m.option, m.asked, m.effective))
            .collect();
        assert!(expected.len() >= 2, "two options differ: {expected:?}");

        let warned: Vec<String> =
            warnings(&config, &KernelDefaults::default(), &asked, &[&end, &end])
                .into_iter()
                .filter(|w| w.code == "option_not_in_force")
                .map(|w| w.message)
                .collect();
        assert_eq!(warned, expected);
    }
}
