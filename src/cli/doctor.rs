//! `connwarden doctor`: the options in force, the kernel's defaults, the worst case of each
//! failure mode, warnings; with `--measure`, the failure modes made to happen and timed.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use connwarden::doctor::{self, Inspection};
use tracing::level_filters::LevelFilter;

use super::config_flags::{ConfigFlags, LAYERS_HELP};

/// Exit status when `--measure` cannot run here (no root, no namespaces, not Linux).
const EXIT_UNSUPPORTED: u8 = 2;

/// Flags of `doctor`.
#[derive(Debug, Args)]
#[command(after_help = LAYERS_HELP)]
pub struct DoctorArgs {
    #[command(flatten)]
    flags: ConfigFlags,
    /// Print JSON (documented in docs/DOCTOR.md) instead of tables.
    #[arg(long)]
    json: bool,
    /// Make each failure mode happen in network namespaces and time it (Linux, root).
    #[arg(long)]
    measure: bool,
    /// Monitoring endpoint of a NATS server the JetStream sink publishes to
    /// (http://host:8222; repeatable or comma-separated): report whether it syncs what it
    /// acknowledges (`sync_interval: always`).
    #[arg(long, value_name = "URL", value_delimiter = ',')]
    nats_monitor: Vec<String>,
    /// With --measure: instead of the failure modes, healthy idle peers over a link that drops
    /// this share of packets each way (per cent, nftables), their false closes beside the
    /// prediction, then the same peers dead (link down), each closed within the bound.
    #[arg(long, value_name = "PERCENT", requires = "measure")]
    loss: Option<f64>,
    /// With --loss: healthy idle peers.
    #[arg(long, value_name = "N", default_value_t = 500, requires = "loss")]
    loss_peers: usize,
    /// With --loss: how long the peers are watched on the lossy link.
    #[arg(long, value_name = "DURATION", default_value = "2m", requires = "loss", value_parser = connwarden::config::parse_duration)]
    loss_duration: Duration,
    /// With --measure: how far past its bound a measurement may land and still pass.
    #[arg(long, value_name = "DURATION", default_value = "1s", value_parser = connwarden::config::parse_duration)]
    tolerance: Duration,
}

/// The whole report, as `--json` prints it.
#[derive(serde::Serialize)]
struct Report<'a> {
    #[serde(flatten)]
    inspection: &'a Inspection,
    #[cfg(target_os = "linux")]
    #[serde(skip_serializing_if = "Option::is_none")]
    measurement: Option<&'a doctor::measure::MeasureReport>,
    #[cfg(target_os = "linux")]
    #[serde(skip_serializing_if = "Option::is_none")]
    loss: Option<&'a doctor::loss::LossMeasurement>,
}

pub fn run(args: DoctorArgs) -> anyhow::Result<ExitCode> {
    let config = args.flags.load()?;
    let _logging = super::logging::init_logging(config.log_format, LevelFilter::WARN, None);
    let mut inspection = doctor::inspect(&config).context("doctor")?;
    add_nats_durability(&mut inspection, &args.nats_monitor, &config);
    if !args.measure {
        if args.json {
            println!(
                "{}",
                serde_json::to_string_pretty(&json_report(&inspection, None))?
            );
        } else {
            print_inspection(&inspection);
        }
        return Ok(ExitCode::SUCCESS);
    }
    if !args.json {
        print_inspection(&inspection);
    }
    measure(&config, &inspection, &args)
}

/// Reads each NATS server's sync setting from its `/varz` and adds a warning where acked items
/// are not synced, or the setting cannot be read. A JetStream sink with no `--nats-monitor` gets
/// a reminder, since nothing else can see the setting.
fn add_nats_durability(
    inspection: &mut Inspection,
    monitors: &[String],
    config: &connwarden::Config,
) {
    let agent = ureq::Agent::config_builder()
        .timeout_global(Some(Duration::from_secs(3)))
        .build()
        .new_agent();
    for monitor in monitors {
        let monitor = monitor.trim().trim_end_matches('/');
        let varz = agent
            .get(&format!("{monitor}/varz"))
            .call()
            .and_then(|mut response| response.body_mut().read_json::<serde_json::Value>());
        let durability = match varz {
            Ok(varz) => doctor::NatsDurability::from_varz(monitor, &varz),
            Err(error) => doctor::NatsDurability::unreadable(monitor, &error.to_string()),
        };
        inspection.warnings.extend(durability.warning());
        inspection.nats.push(durability);
    }
    if monitors.is_empty() && config.sink == connwarden::config::SinkSpec::JetStream {
        inspection.warnings.push(doctor::Warning {
            code: "nats_sync_unknown",
            message: "the JetStream sink's servers were not asked whether they sync what they acknowledge; pass --nats-monitor http://HOST:8222 for each (docs/SCALE-OUT.md)".into(),
        });
    }
}

#[cfg(target_os = "linux")]
fn json_report<'a>(
    inspection: &'a Inspection,
    measurement: Option<&'a doctor::measure::MeasureReport>,
) -> Report<'a> {
    Report {
        inspection,
        measurement,
        loss: None,
    }
}

#[cfg(not(target_os = "linux"))]
fn json_report<'a>(inspection: &'a Inspection, _: Option<()>) -> Report<'a> {
    Report { inspection }
}

#[cfg(target_os = "linux")]
fn measure(
    config: &connwarden::Config,
    inspection: &Inspection,
    args: &DoctorArgs,
) -> anyhow::Result<ExitCode> {
    use connwarden::doctor::measure::MeasureError;
    let binary = std::env::current_exe().context("cannot find the connwarden executable")?;
    let tag = std::process::id().to_string();
    let runtime = tokio::runtime::Runtime::new().context("cannot start the Tokio runtime")?;
    if let Some(percent) = args.loss {
        return measure_loss(config, inspection, args, percent, &tag, runtime);
    }
    let outcome = runtime.block_on(async {
        let interrupted = super::signals::stop_signal()?;
        if !args.json {
            eprintln!("\nmeasuring in network namespaces cwd-s-{tag} / cwd-c-{tag} …");
        }
        tokio::select! {
            result = doctor::measure::measure(config, args.tolerance, &binary, &tag) => Ok(Some(result)),
            () = interrupted => Ok::<_, anyhow::Error>(None),
        }
    })?;
    // Every namespace, link, server and client process is gone once the measurement is
    // dropped (above, on every path).
    drop(runtime);
    match outcome {
        None => {
            eprintln!("connwarden: doctor --measure interrupted; namespaces cwd-s-{tag} and cwd-c-{tag} removed");
            Ok(ExitCode::from(130))
        }
        Some(Err(error)) if error.is_unsupported() => {
            eprintln!("connwarden: error: {error}");
            Ok(ExitCode::from(EXIT_UNSUPPORTED))
        }
        Some(Err(MeasureError::Run { what })) => Err(anyhow::anyhow!(what)),
        Some(Err(error)) => Err(error.into()),
        Some(Ok(report)) => {
            if args.json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&json_report(inspection, Some(&report)))?
                );
            } else {
                print_measurements(&report);
            }
            Ok(if report.passed {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
    }
}

/// `doctor --measure --loss`: false closes on a lossy link, then the same peers dead.
#[cfg(target_os = "linux")]
fn measure_loss(
    config: &connwarden::Config,
    inspection: &Inspection,
    args: &DoctorArgs,
    percent: f64,
    tag: &str,
    runtime: tokio::runtime::Runtime,
) -> anyhow::Result<ExitCode> {
    use connwarden::doctor::loss::{self, LossPlan};
    let plan = LossPlan {
        loss: percent / 100.0,
        peers: args.loss_peers,
        duration: args.loss_duration,
    };
    let outcome = runtime.block_on(async {
        let interrupted = super::signals::stop_signal()?;
        if !args.json {
            eprintln!(
                "\nmeasuring {} healthy idle peers at {percent} % loss each way for {} in network namespaces cwd-s-{tag} / cwd-c-{tag} …",
                plan.peers,
                humantime::format_duration(plan.duration)
            );
        }
        tokio::select! {
            result = loss::measure_loss(config, plan, args.tolerance, tag) => Ok(Some(result)),
            () = interrupted => Ok::<_, anyhow::Error>(None),
        }
    })?;
    drop(runtime);
    let (measured, namespaces) = match outcome {
        None => {
            eprintln!("connwarden: doctor --measure interrupted; namespaces cwd-s-{tag} and cwd-c-{tag} removed");
            return Ok(ExitCode::from(130));
        }
        Some(Err(error)) if error.is_unsupported() => {
            eprintln!("connwarden: error: {error}");
            return Ok(ExitCode::from(EXIT_UNSUPPORTED));
        }
        Some(Err(error)) => return Err(error.into()),
        Some(Ok(result)) => result,
    };
    if args.json {
        let report = Report {
            inspection,
            measurement: None,
            loss: Some(&measured),
        };
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        let m = &measured;
        println!(
            "\nmeasured (network namespaces {} / {}, now removed): keep-alive {}, {} probes lost in a row close a peer",
            namespaces[0], namespaces[1], m.split, m.probes_before_close
        );
        let by_reason: Vec<String> = m
            .false_closes_by_reason
            .iter()
            .map(|(reason, n)| format!("{n} {reason}"))
            .collect();
        let rows = vec![
            vec![
                format!("healthy peers closed ({} % loss each way)", m.loss_percent),
                format!(
                    "{} of {} in {}{}",
                    m.false_closes,
                    m.peers,
                    millis(Some(m.duration_ms)),
                    if by_reason.is_empty() {
                        String::new()
                    } else {
                        format!(" ({})", by_reason.join(", "))
                    }
                ),
                format!("predicted {:.3}", m.predicted),
                if m.agrees {
                    "agrees (within 3x)"
                } else {
                    "DISAGREES"
                }
                .into(),
            ],
            vec![
                "dead peers closed (link down)".into(),
                format!(
                    "{} of {}, slowest {}",
                    m.dead_closed_in_bound,
                    m.dead_peers,
                    millis(m.dead_slowest_ms)
                ),
                format!(
                    "bound {} + {}",
                    millis(Some(m.bound_ms)),
                    millis(Some(m.tolerance_ms))
                ),
                if m.dead_closed_in_bound == m.dead_peers {
                    "pass"
                } else {
                    "FAIL"
                }
                .into(),
            ],
        ];
        table(&["", "measured", "expected", "result"], &rows);
    }
    Ok(if measured.pass {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

#[cfg(not(target_os = "linux"))]
fn measure(_: &connwarden::Config, _: &Inspection, _: &DoctorArgs) -> anyhow::Result<ExitCode> {
    eprintln!(
        "connwarden: error: doctor --measure needs Linux network namespaces; this is {}",
        std::env::consts::OS
    );
    Ok(ExitCode::from(EXIT_UNSUPPORTED))
}

/// Prints a table indented under its section's heading.
fn table(header: &[&str], rows: &[Vec<String>]) {
    print!("{}", super::table::table(header, rows, "  "));
}

fn or_dash(value: &Option<String>) -> String {
    value.clone().unwrap_or_else(|| "-".into())
}

fn millis(ms: Option<u64>) -> String {
    match ms {
        None => "never".into(),
        Some(0) => "immediate".into(),
        Some(ms) if ms % 1000 == 0 => format!("{} s", ms / 1000),
        Some(ms) => format!("{:.1} s", ms as f64 / 1000.0),
    }
}

fn print_inspection(inspection: &Inspection) {
    println!("socket options (loopback connection made with this configuration)");
    let rows: Vec<Vec<String>> = inspection
        .options
        .iter()
        .map(|o| {
            vec![
                o.option.to_string(),
                o.asked.clone(),
                or_dash(&o.server),
                or_dash(&o.client),
                or_dash(&o.kernel_default),
                if o.ok { "ok" } else { "CHANGED" }.to_string(),
            ]
        })
        .collect();
    table(
        &["option", "asked", "server", "client", "kernel default", ""],
        &rows,
    );

    let k = &inspection.kernel;
    let num = |n: Option<u64>| n.map_or_else(|| "-".into(), |n| n.to_string());
    let triple =
        |t: Option<[u64; 3]>| t.map_or_else(|| "-".into(), |[a, b, c]| format!("{a} {b} {c}"));
    println!("\nkernel");
    let kernel_rows = vec![
        vec![
            "net.ipv4.tcp_keepalive_time / intvl / probes".into(),
            format!(
                "{} / {} / {}",
                num(k.tcp_keepalive_time),
                num(k.tcp_keepalive_intvl),
                num(k.tcp_keepalive_probes)
            ),
        ],
        vec![
            "net.ipv4.tcp_retries2".into(),
            format!(
                "{} (~{} of retransmissions)",
                num(k.tcp_retries2),
                millis(k.retransmission_bound().map(|d| d.as_millis() as u64))
            ),
        ],
        vec![
            "net.ipv4.tcp_rmem / tcp_wmem".into(),
            format!("{} / {}", triple(k.tcp_rmem), triple(k.tcp_wmem)),
        ],
        vec![
            "net.core.rmem_max / wmem_max".into(),
            format!("{} / {}", num(k.rmem_max), num(k.wmem_max)),
        ],
        vec!["net.core.somaxconn".into(), num(k.somaxconn)],
        vec![
            "net.core.netdev_max_backlog".into(),
            num(k.netdev_max_backlog),
        ],
        vec!["fs.nr_open".into(), num(k.nr_open)],
        vec![
            "open files (this process): soft / hard".into(),
            format!("{} / {}", num(k.nofile_soft), num(k.nofile_hard)),
        ],
        vec![
            "nf_conntrack_tcp_timeout_established".into(),
            k.conntrack_established_timeout
                .map_or_else(|| "- (conntrack not loaded)".into(), |s| format!("{s} s")),
        ],
    ];
    table(&["setting", "value"], &kernel_rows);

    println!("\nworst case until the server notices");
    let rows: Vec<Vec<String>> = inspection
        .bounds
        .iter()
        .map(|b| {
            vec![
                b.failure.to_string(),
                millis(b.bound_ms),
                b.reason.to_string(),
                b.mechanism.clone(),
            ]
        })
        .collect();
    table(&["failure", "bound", "close reason", "mechanism"], &rows);

    let odds = &inspection.false_closes;
    println!(
        "\nhealthy idle peers closed on lossy paths ({} probes lost in a row close one; docs/DOCTOR.md)",
        odds.probes_before_close
    );
    let rows: Vec<Vec<String>> = odds
        .odds
        .iter()
        .map(|o| {
            vec![
                format!("{} %", o.loss_percent),
                format!("{:.3e}", o.per_1000_connection_days),
            ]
        })
        .collect();
    table(
        &["random loss each way", "per 1,000 connection-days"],
        &rows,
    );

    if !inspection.nats.is_empty() {
        println!("\nNATS servers (JetStream sync)");
        let rows: Vec<Vec<String>> = inspection
            .nats
            .iter()
            .map(|n| {
                vec![
                    n.monitor.clone(),
                    or_dash(&n.server),
                    match (n.sync_always, n.sync_interval_ms) {
                        (Some(true), _) => "always".into(),
                        (Some(false), Some(ms)) => format!("every {} s", ms / 1000),
                        (Some(false), None) => "interval".into(),
                        (None, _) => format!("unknown: {}", or_dash(&n.error)),
                    },
                ]
            })
            .collect();
        table(&["monitor", "server", "sync"], &rows);
    }

    let security = &inspection.security;
    println!("\nsecurity");
    let rows = vec![
        vec!["transport".to_owned(), security.transport.to_owned()],
        vec![
            "client certificates".to_owned(),
            if security.client_certificates {
                "required (mutual TLS)"
            } else {
                "no"
            }
            .to_owned(),
        ],
        vec![
            "tokens".to_owned(),
            security
                .tokens
                .map_or_else(|| "none".to_owned(), |n| format!("{n} in auth_tokens")),
        ],
        vec!["authentication".to_owned(), security.auth.to_owned()],
        vec![
            "beyond loopback".to_owned(),
            if security.exposed.is_empty() {
                "none".to_owned()
            } else {
                security.exposed.join(", ")
            },
        ],
    ];
    table(&["", ""], &rows);

    if inspection.warnings.is_empty() {
        println!("\nno warnings");
    } else {
        println!("\nwarnings");
        for warning in &inspection.warnings {
            println!("  - [{}] {}", warning.code, warning.message);
        }
    }
}

#[cfg(target_os = "linux")]
fn print_measurements(report: &doctor::measure::MeasureReport) {
    println!(
        "\nmeasured (network namespaces {} / {}, now removed)",
        report.namespaces[0], report.namespaces[1]
    );
    let rows: Vec<Vec<String>> = report
        .measurements
        .iter()
        .map(|m| match &m.skipped {
            Some(why) => vec![
                m.failure.to_string(),
                "-".into(),
                "-".into(),
                "-".into(),
                format!("skipped: {why}"),
            ],
            None => vec![
                m.failure.to_string(),
                m.measured_ms.map_or_else(
                    || "no close".into(),
                    |ms| format!("{:.2} s", ms as f64 / 1000.0),
                ),
                format!(
                    "{} + {}",
                    millis(Some(m.bound_ms)),
                    millis(Some(m.tolerance_ms))
                ),
                m.reason.unwrap_or("-").to_string(),
                if m.pass {
                    "pass".into()
                } else {
                    format!("FAIL (expected {})", m.expected.join(" or "))
                },
            ],
        })
        .collect();
    table(
        &[
            "failure",
            "measured",
            "bound + tolerance",
            "close reason",
            "result",
        ],
        &rows,
    );
    println!(
        "\n{}",
        if report.passed {
            "every failure mode was noticed within its bound"
        } else {
            "some failure modes were not noticed within their bounds"
        }
    );
}
