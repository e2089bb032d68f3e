//! `connwarden doctor`: the options in force, the kernel's defaults, the worst case of each
//! failure mode, warnings; with `--measure`, the failure modes made to happen and timed.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use connwarden::doctor::{self, Inspection};
use tracing::level_filters::LevelFilter;

use super::config_flags::{layers_help, ConfigFlags};

/// Exit status when `--measure` cannot run here (no root, no namespaces, not Linux).
const EXIT_UNSUPPORTED: u8 = 2;

/// Flags of `doctor`.
#[derive(Debug, Args)]
#[command(after_help = layers_help())]
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
    let binary = std::env::current_exe().context("cannot find the connwarden executable")?;
    let tag = std::process::id().to_string();
    let runtime = tokio::runtime::Runtime::new().context("cannot start the Tokio runtime")?;
    if let Some(percent) = args.loss {
        return measure_loss(config, inspection, args, percent, &tag, runtime);
    }
    let banner = format!("\nmeasuring in network namespaces cwd-s-{tag} / cwd-c-{tag} …");
    let measurement = doctor::measure::measure(config, args.tolerance, &binary, &tag);
    let report = match in_namespaces(runtime, (!args.json).then_some(banner), &tag, measurement)? {
        Ok(report) => report,
        Err(ended) => return Ok(ended),
    };
    if args.json {
        let json = json_report(inspection, Some(&report));
        println!("{}", serde_json::to_string_pretty(&json)?);
    } else {
        print_measurements(&report);
    }
    Ok(passed(report.passed))
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
    let banner = format!(
        "\nmeasuring {} healthy idle peers at {percent} % loss each way for {} in network namespaces cwd-s-{tag} / cwd-c-{tag} …",
        plan.peers,
        humantime::format_duration(plan.duration)
    );
    let measurement = loss::measure_loss(config, plan, args.tolerance, tag);
    let (measured, namespaces) =
        match in_namespaces(runtime, (!args.json).then_some(banner), tag, measurement)? {
            Ok(measured) => measured,
            Err(ended) => return Ok(ended),
        };
    if args.json {
        let report = Report {
            inspection,
            measurement: None,
            loss: Some(&measured),
        };
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print_loss(&measured, &namespaces);
    }
    Ok(passed(measured.pass))
}

/// Runs a measurement in network namespaces until it ends or is interrupted (`SIGINT`,
/// `SIGTERM`), after printing `banner`. The runtime ends with it, and with it every namespace,
/// link, server and client process it made. `Err` holds the exit status of a measurement
/// interrupted, or impossible on this machine.
#[cfg(target_os = "linux")]
fn in_namespaces<T>(
    runtime: tokio::runtime::Runtime,
    banner: Option<String>,
    tag: &str,
    measurement: impl std::future::Future<Output = Result<T, doctor::measure::MeasureError>>,
) -> anyhow::Result<Result<T, ExitCode>> {
    use connwarden::doctor::measure::MeasureError;
    let outcome = runtime.block_on(async {
        let interrupted = super::signals::stop_signal()?;
        if let Some(banner) = banner {
            eprintln!("{banner}");
        }
        tokio::select! {
            result = measurement => Ok(Some(result)),
            () = interrupted => Ok::<_, anyhow::Error>(None),
        }
    })?;
    drop(runtime);
    match outcome {
        None => {
            eprintln!("connwarden: doctor --measure interrupted; namespaces cwd-s-{tag} and cwd-c-{tag} removed");
            Ok(Err(ExitCode::from(130)))
        }
        Some(Err(error)) if error.is_unsupported() => {
            eprintln!("connwarden: error: {error}");
            Ok(Err(ExitCode::from(EXIT_UNSUPPORTED)))
        }
        Some(Err(MeasureError::Run { what })) => Err(anyhow::anyhow!(what)),
        Some(Err(error)) => Err(error.into()),
        Some(Ok(report)) => Ok(Ok(report)),
    }
}

#[cfg(target_os = "linux")]
fn passed(pass: bool) -> ExitCode {
    match pass {
        true => ExitCode::SUCCESS,
        false => ExitCode::FAILURE,
    }
}

/// The loss measurement as a table: the healthy peers beside the prediction, the dead ones
/// beside the bound.
#[cfg(target_os = "linux")]
fn print_loss(m: &connwarden::doctor::loss::LossMeasurement, namespaces: &[String; 2]) {
    println!(
        "\nmeasured (network namespaces {} / {}, now removed): keep-alive {}, {} probes lost in a row close a peer",
        namespaces[0], namespaces[1], m.split, m.probes_before_close
    );
    let by_reason: Vec<String> = m
        .false_closes_by_reason
        .iter()
        .map(|(reason, n)| format!("{n} {reason}"))
        .collect();
    let reasons = match by_reason.is_empty() {
        true => String::new(),
        false => format!(" ({})", by_reason.join(", ")),
    };
    let healthy = vec![
        format!("healthy peers closed ({} % loss each way)", m.loss_percent),
        format!(
            "{} of {} in {}{reasons}",
            m.false_closes,
            m.peers,
            millis(Some(m.duration_ms))
        ),
        format!("predicted {:.3}", m.predicted),
        match m.agrees {
            true => "agrees (within 3x)",
            false => "DISAGREES",
        }
        .into(),
    ];
    let dead = vec![
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
        match m.dead_closed_in_bound == m.dead_peers {
            true => "pass",
            false => "FAIL",
        }
        .into(),
    ];
    table(&["", "measured", "expected", "result"], &[healthy, dead]);
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

/// One table of the inspection: its title, its header and its rows.
struct Section {
    title: String,
    header: &'static [&'static str],
    rows: Vec<Vec<String>>,
}

impl Section {
    fn new(
        title: impl Into<String>,
        header: &'static [&'static str],
        rows: Vec<Vec<String>>,
    ) -> Self {
        Section {
            title: title.into(),
            header,
            rows,
        }
    }
}

/// Prints the inspection's tables, then its warnings.
fn print_inspection(inspection: &Inspection) {
    for (i, section) in sections(inspection).iter().enumerate() {
        let gap = if i == 0 { "" } else { "\n" };
        println!("{gap}{}", section.title);
        table(section.header, &section.rows);
    }
    if inspection.warnings.is_empty() {
        println!("\nno warnings");
    } else {
        println!("\nwarnings");
        for warning in &inspection.warnings {
            println!("  - [{}] {}", warning.code, warning.message);
        }
    }
}

/// The inspection as the tables `doctor` prints, in order.
fn sections(inspection: &Inspection) -> Vec<Section> {
    let mut sections = vec![
        options_section(inspection),
        kernel_section(&inspection.kernel),
        bounds_section(inspection),
        odds_section(inspection),
    ];
    sections.extend(nats_section(inspection));
    sections.push(security_section(&inspection.security));
    sections
}

fn options_section(inspection: &Inspection) -> Section {
    let rows = inspection
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
    Section::new(
        "socket options (loopback connection made with this configuration)",
        &["option", "asked", "server", "client", "kernel default", ""],
        rows,
    )
}

fn kernel_section(k: &doctor::KernelDefaults) -> Section {
    let num = |n: Option<u64>| n.map_or_else(|| "-".into(), |n| n.to_string());
    let triple =
        |t: Option<[u64; 3]>| t.map_or_else(|| "-".into(), |[a, b, c]| format!("{a} {b} {c}"));
    let retransmissions = millis(k.retransmission_bound().map(|d| d.as_millis() as u64));
    let conntrack = k
        .conntrack_established_timeout
        .map_or_else(|| "- (conntrack not loaded)".into(), |s| format!("{s} s"));
    let rows: Vec<(&str, String)> = vec![
        (
            "net.ipv4.tcp_keepalive_time / intvl / probes",
            format!(
                "{} / {} / {}",
                num(k.tcp_keepalive_time),
                num(k.tcp_keepalive_intvl),
                num(k.tcp_keepalive_probes)
            ),
        ),
        (
            "net.ipv4.tcp_retries2",
            format!(
                "{} (~{retransmissions} of retransmissions)",
                num(k.tcp_retries2)
            ),
        ),
        (
            "net.ipv4.tcp_rmem / tcp_wmem",
            format!("{} / {}", triple(k.tcp_rmem), triple(k.tcp_wmem)),
        ),
        (
            "net.core.rmem_max / wmem_max",
            format!("{} / {}", num(k.rmem_max), num(k.wmem_max)),
        ),
        ("net.core.somaxconn", num(k.somaxconn)),
        ("net.core.netdev_max_backlog", num(k.netdev_max_backlog)),
        ("fs.nr_open", num(k.nr_open)),
        (
            "open files (this process): soft / hard",
            format!("{} / {}", num(k.nofile_soft), num(k.nofile_hard)),
        ),
        ("nf_conntrack_tcp_timeout_established", conntrack),
    ];
    let rows = rows
        .into_iter()
        .map(|(setting, value)| vec![setting.to_owned(), value])
        .collect();
    Section::new("kernel", &["setting", "value"], rows)
}

fn bounds_section(inspection: &Inspection) -> Section {
    let rows = inspection
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
    Section::new(
        "worst case until the server notices",
        &["failure", "bound", "close reason", "mechanism"],
        rows,
    )
}

fn odds_section(inspection: &Inspection) -> Section {
    let odds = &inspection.false_closes;
    let rows = odds
        .odds
        .iter()
        .map(|o| {
            vec![
                format!("{} %", o.loss_percent),
                format!("{:.3e}", o.per_1000_connection_days),
            ]
        })
        .collect();
    Section::new(
        format!(
            "healthy idle peers closed on lossy paths ({} probes lost in a row close one; docs/DOCTOR.md)",
            odds.probes_before_close
        ),
        &["random loss each way", "per 1,000 connection-days"],
        rows,
    )
}

fn nats_section(inspection: &Inspection) -> Option<Section> {
    if inspection.nats.is_empty() {
        return None;
    }
    let rows = inspection
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
    Some(Section::new(
        "NATS servers (JetStream sync)",
        &["monitor", "server", "sync"],
        rows,
    ))
}

fn security_section(security: &doctor::Security) -> Section {
    let client_certificates = match security.client_certificates {
        true => "required (mutual TLS)",
        false => "no",
    };
    let tokens = security
        .tokens
        .map_or_else(|| "none".to_owned(), |n| format!("{n} in auth_tokens"));
    let exposed = match security.exposed.is_empty() {
        true => "none".to_owned(),
        false => security.exposed.join(", "),
    };
    let rows = [
        ("transport", security.transport.to_owned()),
        ("client certificates", client_certificates.to_owned()),
        ("tokens", tokens),
        ("authentication", security.auth.to_owned()),
        ("beyond loopback", exposed),
    ];
    let rows = rows
        .into_iter()
        .map(|(what, value)| vec![what.to_owned(), value])
        .collect();
    Section::new("security", &["", ""], rows)
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
