//! `connwarden doctor`: read-back checked against the configuration and `sysctl`, warnings,
//! and `--measure` in network namespaces (pass, cleanup after success and after an interrupt,
//! exit 2 without root). The tests that measure are skipped without root, unless
//! `CW_TEST_REQUIRE_NETNS=1` (as in CI).

use connwarden_test_common as common;

use std::process::Command;
use std::time::Duration;

use common::{binary, doctor_json, poll_until, Proc};

fn sysctl(key: &str) -> String {
    let out = Command::new("sysctl")
        .args(["-n", key])
        .output()
        .expect("run sysctl (procps)");
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
}

fn option<'a>(report: &'a serde_json::Value, name: &str) -> &'a serde_json::Value {
    report["options"]
        .as_array()
        .unwrap()
        .iter()
        .find(|o| o["option"] == name)
        .unwrap_or_else(|| panic!("no {name} row"))
}

#[test]
fn read_back_matches_the_configuration_on_both_ends_and_kernel_matches_sysctl() {
    let report = doctor_json(&[
        "--keepalive-idle",
        "7s",
        "--keepalive-interval",
        "3s",
        "--keepalive-count",
        "4",
        "--user-timeout",
        "23s",
        "--recv-buffer",
        "65536",
    ]);
    for (name, value) in [
        ("SO_KEEPALIVE", "true"),
        ("TCP_KEEPIDLE", "7s"),
        ("TCP_KEEPINTVL", "3s"),
        ("TCP_KEEPCNT", "4"),
        ("TCP_USER_TIMEOUT", "23s"),
        ("TCP_NODELAY", "true"),
    ] {
        let row = option(&report, name);
        assert_eq!(row["asked"], value, "{row}");
        assert_eq!(row["server"], value, "{row}");
        assert_eq!(row["client"], value, "{row}");
        assert_eq!(row["ok"], true, "{row}");
    }
    // Linux keeps double the buffer asked, for its bookkeeping.
    let rcvbuf = option(&report, "SO_RCVBUF");
    assert_eq!(rcvbuf["server"], "131072");
    assert_eq!(rcvbuf["client"], "131072");

    let kernel = &report["kernel"];
    for (field, key) in [
        ("tcp_keepalive_time", "net.ipv4.tcp_keepalive_time"),
        ("tcp_keepalive_intvl", "net.ipv4.tcp_keepalive_intvl"),
        ("tcp_keepalive_probes", "net.ipv4.tcp_keepalive_probes"),
        ("tcp_retries2", "net.ipv4.tcp_retries2"),
        ("somaxconn", "net.core.somaxconn"),
        ("nr_open", "fs.nr_open"),
    ] {
        assert_eq!(kernel[field].to_string(), sysctl(key), "{field}");
    }
    let rmem: Vec<String> = kernel["tcp_rmem"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.to_string())
        .collect();
    assert_eq!(rmem.join(" "), sysctl("net.ipv4.tcp_rmem"));

    let bound = |failure: &str| {
        report["bounds"]
            .as_array()
            .unwrap()
            .iter()
            .find(|b| b["failure"] == failure)
            .unwrap()["bound_ms"]
            .as_u64()
    };
    assert_eq!(bound("idle_dead_peer"), Some(19_000));
    assert_eq!(bound("dead_peer_with_unacked_data"), Some(23_000));
    assert_eq!(bound("frozen_peer"), Some(45_000));
}

#[test]
fn settings_that_defeat_their_purpose_are_named() {
    let codes = |args: &[&str]| -> Vec<String> {
        doctor_json(args)["warnings"]
            .as_array()
            .unwrap()
            .iter()
            .map(|w| w["code"].as_str().unwrap().to_owned())
            .collect()
    };
    let defaults = codes(&[]);
    assert!(
        !defaults.iter().any(|c| c.starts_with("keepalive_idle")),
        "{defaults:?}"
    );
    let bad = codes(&[
        "--keepalive-idle",
        "10m",
        "--user-timeout",
        "off",
        "--heartbeat",
        "off",
        "--max-connections",
        "1000000",
    ]);
    for code in [
        "keepalive_idle_above_middlebox_timeouts",
        "user_timeout_off",
        "frozen_peer_undetected",
        "nofile_below_max_connections",
    ] {
        assert!(bad.iter().any(|c| c == code), "{code} missing from {bad:?}");
    }
    // The receive backlog of software devices against max_connections: warned above it only.
    let netdev_backlog: u64 = std::fs::read_to_string("/proc/sys/net/core/netdev_max_backlog")
        .expect("netdev_max_backlog")
        .trim()
        .parse()
        .expect("a number");
    // Spread over 30 s, the probes of one 2.048 s wheel bucket (HZ 250, the widest) are
    // 2.048/30 of the connections; unspread, every connection accepted together.
    let code = "netdev_backlog_below_max_connections";
    for (spread, carries) in [
        ("true", (netdev_backlog as f64 * 30.0 / 2.048) as u64),
        ("false", netdev_backlog),
    ] {
        let (at, above) = (carries.to_string(), (carries + 1).to_string());
        let at_backlog = codes(&["--max-connections", &at, "--keepalive-spread", spread]);
        assert!(!at_backlog.iter().any(|c| c == code), "{at_backlog:?}");
        let above_backlog = codes(&["--max-connections", &above, "--keepalive-spread", spread]);
        assert!(above_backlog.iter().any(|c| c == code), "{above_backlog:?}");
    }
    // A split with few probes is fragile on lossy paths; the default, many short ones, is not.
    let fragile = "keepalive_split_fragile";
    assert!(!defaults.iter().any(|c| c == fragile), "{defaults:?}");
    let few = codes(&["--keepalive-interval", "10s", "--keepalive-count", "3"]);
    assert!(few.iter().any(|c| c == fragile), "{few:?}");
    let odds = doctor_json(&["--keepalive-interval", "10s", "--keepalive-count", "3"]);
    assert_eq!(odds["false_closes"]["probes_before_close"], 3);
    let at_one = odds["false_closes"]["odds"][1]["per_1000_connection_days"]
        .as_f64()
        .unwrap();
    assert!((20.0..25.0).contains(&at_one), "{odds:?}");
    let short = codes(&[
        "--keepalive-idle",
        "20s",
        "--keepalive-interval",
        "5s",
        "--keepalive-count",
        "3",
        "--user-timeout",
        "10s",
    ]);
    assert!(
        short
            .iter()
            .any(|c| c == "user_timeout_below_keepalive_bound"),
        "{short:?}"
    );
}

fn namespaces_of(pid: u32) -> Vec<String> {
    let out = Command::new("ip")
        .args(["netns", "list"])
        .output()
        .expect("ip");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|name| name.ends_with(&format!("-{pid}")) && name.starts_with("cwd-"))
        .map(str::to_owned)
        .collect()
}

/// Processes whose command line names the doctor's client namespace (its killed client).
fn processes_in(ns: &str) -> usize {
    let out = Command::new("pgrep")
        .args(["-f", ns])
        .output()
        .expect("pgrep");
    String::from_utf8_lossy(&out.stdout).lines().count()
}

const SHORT: [&str; 8] = [
    "--keepalive-idle",
    "2s",
    "--keepalive-interval",
    "1s",
    "--keepalive-count",
    "3",
    "--heartbeat-interval",
    "1s",
];

#[test]
fn measure_notices_every_failure_mode_within_its_bound_and_leaves_nothing() {
    if !common::netns_or_skip(
        "measure_notices_every_failure_mode_within_its_bound_and_leaves_nothing",
    ) {
        return;
    }
    let started = std::time::Instant::now();
    let out = Command::new(binary())
        .args(["doctor", "--measure", "--json"])
        .args(SHORT)
        .output()
        .expect("run doctor --measure");
    let elapsed = started.elapsed();
    let stderr = String::from_utf8_lossy(&out.stderr);
    let report: serde_json::Value =
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}; stderr: {stderr}"));
    let measurement = &report["measurement"];
    for m in measurement["measurements"].as_array().unwrap() {
        eprintln!(
            "{}: {} ms (bound {} ms) {}",
            m["failure"], m["measured_ms"], m["bound_ms"], m["reason"]
        );
        assert_eq!(m["pass"], true, "{m}");
        assert!(m["skipped"].is_null(), "{m}");
    }
    assert_eq!(measurement["measurements"].as_array().unwrap().len(), 4);
    assert_eq!(measurement["passed"], true);
    assert!(out.status.success(), "{stderr}");
    assert!(elapsed < Duration::from_secs(60), "took {elapsed:?}");
    let [server_ns, client_ns] = ["cwd-s-", "cwd-c-"].map(|prefix| {
        measurement["namespaces"]
            .as_array()
            .unwrap()
            .iter()
            .find(|n| n.as_str().unwrap().starts_with(prefix))
            .unwrap()
            .as_str()
            .unwrap()
            .to_owned()
    });
    let listed = Command::new("ip").args(["netns", "list"]).output().unwrap();
    let listed = String::from_utf8_lossy(&listed.stdout);
    assert!(
        !listed.contains(&server_ns) && !listed.contains(&client_ns),
        "{listed}"
    );
    assert_eq!(processes_in(&client_ns), 0);
}

#[test]
fn an_interrupted_measure_removes_what_it_created() {
    if !common::netns_or_skip("an_interrupted_measure_removes_what_it_created") {
        return;
    }
    let mut doctor = Proc::connwarden(&["doctor", "--measure"]);
    let pid = doctor.child.id();
    // Interrupt once the namespaces exist: from then on there are namespaces, links, servers
    // and (for a moment) a client process to clean.
    poll_until(Duration::from_secs(10), "the namespaces", || {
        namespaces_of(pid).len() == 2
    });
    let client_ns = format!("cwd-c-{pid}");
    // SAFETY: kill(2) on our own child's pid.
    assert_eq!(unsafe { libc::kill(pid as i32, libc::SIGINT) }, 0);
    let status = doctor.wait_exit(Duration::from_secs(20));
    assert_eq!(status.code(), Some(130), "{}", doctor.stderr_so_far());
    assert!(
        namespaces_of(pid).is_empty(),
        "left behind: {:?}",
        namespaces_of(pid)
    );
    poll_until(Duration::from_secs(5), "the client process gone", || {
        processes_in(&client_ns) == 0
    });
    let links = Command::new("ip").args(["-o", "link"]).output().unwrap();
    assert!(!String::from_utf8_lossy(&links.stdout).contains(&format!("cwdc{pid}")));
}

#[test]
fn measure_without_root_says_why_and_exits_2() {
    // As root, as nobody; otherwise as the user running the tests.
    let mut doctor = if common::is_root() {
        let mut setpriv = Command::new("setpriv");
        setpriv
            .args(["--reuid", "65534", "--regid", "65534", "--clear-groups"])
            .arg(binary());
        setpriv
    } else {
        Command::new(binary())
    };
    let out = doctor
        .args(["doctor", "--measure"])
        .output()
        .expect("run doctor (as root through setpriv, util-linux)");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("needs root"), "{stderr}");
}

#[test]
fn the_kernel_runs_the_keepalive_timer_doctor_reports() {
    // What `ss -tno` shows for a live connection of `serve` must agree with what doctor reads
    // back for the same options: a keep-alive timer counting down from the configured idle.
    let mut serve = Proc::spawn(&[
        "--listen",
        "127.0.0.1:0",
        "--keepalive-idle",
        "7s",
        "--keepalive-interval",
        "3s",
        "--log-format",
        "json",
    ]);
    let listening = serve.wait_log("listening").expect("serve listens");
    let addr: std::net::SocketAddr = listening["addr"].as_str().unwrap().parse().unwrap();
    let _client = std::net::TcpStream::connect(addr).expect("connect");
    let filter = format!("( sport = :{} )", addr.port());
    let mut timer = String::new();
    poll_until(
        Duration::from_secs(10),
        "the accepted connection in ss",
        || {
            let out = Command::new("ss")
                .args(["-Htno", "state", "established", &filter])
                .output()
                .expect("run ss (iproute2)");
            timer = String::from_utf8_lossy(&out.stdout).into_owned();
            timer.contains("timer:(keepalive")
        },
    );
    // iproute2 prints the time left as `7sec`, `6.996ms` (6 s 996 ms) or `996ms`.
    let field = timer
        .split("timer:(keepalive,")
        .nth(1)
        .and_then(|rest| rest.split(',').next())
        .unwrap_or_else(|| panic!("no keep-alive timer in {timer:?}"));
    let left = ss_seconds(field).unwrap_or_else(|| panic!("unreadable timer {field:?}"));
    assert!(left > 0.0 && left <= 7.0, "{timer}");
    let report = doctor_json(&["--keepalive-idle", "7s", "--keepalive-interval", "3s"]);
    assert_eq!(option(&report, "TCP_KEEPIDLE")["server"], "7s");
}

/// Seconds in an `ss` timer field (`7sec`, `6.996ms`, `996ms`, `1min`).
fn ss_seconds(field: &str) -> Option<f64> {
    if let Some(secs) = field.strip_suffix("sec") {
        return secs.parse().ok();
    }
    if let Some(mins) = field.strip_suffix("min") {
        return mins.parse::<f64>().ok().map(|m| m * 60.0);
    }
    let ms = field.strip_suffix("ms")?;
    match ms.split_once('.') {
        Some((secs, millis)) => {
            Some(secs.parse::<f64>().ok()? + millis.parse::<f64>().ok()? / 1000.0)
        }
        None => ms.parse::<f64>().ok().map(|m| m / 1000.0),
    }
}

#[test]
fn doctor_reports_tls_and_auth_and_warns_of_clear_text_beyond_loopback() {
    let codes = |report: &serde_json::Value| -> Vec<String> {
        report["warnings"]
            .as_array()
            .expect("warnings")
            .iter()
            .map(|w| w["code"].as_str().unwrap_or_default().to_owned())
            .collect()
    };
    let exposed = doctor_json(&["--listen", "0.0.0.0:7000"]);
    assert_eq!(exposed["security"]["transport"], "clear text", "{exposed}");
    assert!(codes(&exposed).contains(&"clear_text_beyond_loopback".to_owned()));
    let local = doctor_json(&["--listen", "127.0.0.1:7000"]);
    assert!(!codes(&local).contains(&"clear_text_beyond_loopback".to_owned()));

    let dir = tempfile::tempdir().expect("temp dir");
    let ca = common::certs::Ca::new("doctor CA");
    let (cert, key) = common::certs::write_pair(dir.path(), "server", &ca.issue("server", false));
    let client_ca = ca.write(dir.path(), "clients");
    let tokens = dir.path().join("tokens");
    std::fs::write(&tokens, "a:0123456789abcdef0123\nb:fedcba9876543210fedc\n").expect("tokens");
    let secured = doctor_json(&[
        "--listen",
        "0.0.0.0:7000",
        "--tls-cert",
        cert.to_str().expect("utf-8"),
        "--tls-key",
        key.to_str().expect("utf-8"),
        "--tls-client-ca",
        client_ca.to_str().expect("utf-8"),
        "--auth-tokens",
        tokens.to_str().expect("utf-8"),
        "--auth",
        "required",
    ]);
    let security = &secured["security"];
    assert_eq!(security["transport"], "tls", "{secured}");
    assert_eq!(security["client_certificates"], true);
    assert_eq!(security["tokens"], 2);
    assert_eq!(security["auth"], "required");
    assert!(security["tls_error"].is_null(), "{security}");
    assert!(!codes(&secured).contains(&"clear_text_beyond_loopback".to_owned()));

    // A key that is not the certificate's: doctor says serve would not start.
    let (other_cert, _) = common::certs::write_pair(dir.path(), "other", &ca.issue("x", false));
    let mismatched = doctor_json(&[
        "--tls-cert",
        other_cert.to_str().expect("utf-8"),
        "--tls-key",
        key.to_str().expect("utf-8"),
    ]);
    assert!(
        codes(&mismatched).contains(&"tls_files_unusable".to_owned()),
        "{mismatched}"
    );
}
