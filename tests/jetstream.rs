//! The JetStream sink and the cluster-wide registry against real `nats-server` processes
//! (`sync_interval: always`): acks only after JetStream has the item, nothing lost or stored
//! twice across a NATS outage, gateway and NATS node crashes, and the registry across gateways.

use connwarden_test_common as common;

use std::collections::HashSet;
use std::io::Write;
use std::process::Command;
use std::time::{Duration, Instant};

use common::nats::{read_stream, Nats, Stored};
use common::{metric, Admin, Proc};

/// A gateway: `serve --sink jetstream` on loopback ports of its own choosing.
struct Gateway {
    name: String,
    proc: Proc,
    admin: Admin,
    addr: String,
}

impl Gateway {
    fn start(name: &str, nats: &Nats, extra: &[&str]) -> Gateway {
        let urls = nats.urls();
        let mut args = vec!["--nats-url", &urls, "--gateway-name", name];
        args.extend_from_slice(extra);
        // A new cluster may take a while to elect the leaders the stream needs.
        let (proc, admin, addr) = common::serve()
            .sink("jetstream")
            .args(&args)
            .within(Duration::from_secs(90))
            .start();
        Gateway {
            name: name.to_owned(),
            proc,
            admin,
            addr,
        }
    }

    fn acknowledged(&self) -> f64 {
        metric(&self.admin.metrics(), "connwarden_items_acknowledged_total").unwrap_or(0.0)
    }
}

/// A file of `n` items, one bare address a line.
fn items_file(n: usize) -> tempfile::NamedTempFile {
    let mut file = tempfile::NamedTempFile::new().expect("temp file");
    let mut out = std::io::BufWriter::new(file.as_file_mut());
    for i in 0..n {
        writeln!(out, "10.{}.{}.{}", i >> 16 & 255, i >> 8 & 255, i & 255).expect("write");
    }
    out.flush().expect("flush");
    drop(out);
    file
}

/// Checks what the stream holds: `n` items of one client, each once, in the order the client
/// sent them.
fn assert_exactly_once_in_order(stored: &[Stored], n: usize) {
    let mut seen = HashSet::new();
    let mut duplicates = 0;
    let mut last_id = None;
    let mut out_of_order = 0;
    for record in stored {
        let key = (record.client_id.clone(), record.id);
        assert!(
            record.client_id.is_some() && record.id.is_some(),
            "{record:?}"
        );
        if !seen.insert(key) {
            duplicates += 1;
            continue;
        }
        if last_id.is_some_and(|last| record.id <= Some(last)) {
            out_of_order += 1;
        }
        last_id = record.id;
    }
    assert_eq!(duplicates, 0, "items stored twice");
    assert_eq!(seen.len(), n, "distinct items in the stream");
    assert_eq!(stored.len(), n, "messages in the stream");
    let clients: HashSet<_> = stored.iter().map(|r| r.client_id.clone()).collect();
    assert_eq!(clients.len(), 1, "one client");
    let ips: HashSet<_> = stored.iter().map(|r| r.ip.as_str()).collect();
    assert_eq!(ips.len(), n, "every input line's address");
    assert_eq!(
        out_of_order, 0,
        "items stored after a later item of their client"
    );
}

/// The NATS tests run one at a time: each starts its own servers, and two cores are enough
/// for one cluster and three gateways, not for two.
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn one_at_a_time() -> std::sync::MutexGuard<'static, ()> {
    ONE_AT_A_TIME
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Runtime::new().expect("runtime")
}

#[test]
fn nats_unreachable_for_ten_seconds_acks_nothing_meanwhile_and_loses_nothing() {
    let _serial = one_at_a_time();
    const ITEMS: usize = 30_000;
    let mut nats = Nats::start(1);
    let gateway = Gateway::start("g1", &nats, &["--nats-publish-timeout", "1s"]);
    let input = items_file(ITEMS);
    let path = input.path().to_str().expect("utf-8 path").to_owned();
    let mut send = Proc::connwarden(&[
        "send",
        "--to",
        &gateway.addr,
        "--ack",
        "--rate",
        "3000",
        "--log-format",
        "json",
        &path,
    ]);
    common::poll_until(Duration::from_secs(60), "5,000 items acknowledged", || {
        gateway.acknowledged() >= 5000.0
    });

    nats.nodes[0].kill();
    common::poll_until(Duration::from_secs(10), "/readyz not ready", || {
        gateway.admin.request("GET", "/readyz").0 == 503
    });
    let acked_when_down = gateway.acknowledged();
    // The outage the issue asks for: ten seconds with every NATS node stopped.
    std::thread::sleep(Duration::from_secs(10));
    let exposition = gateway.admin.metrics();
    let acked_after = metric(&exposition, "connwarden_items_acknowledged_total").unwrap_or(0.0);
    assert_eq!(acked_after, acked_when_down, "no ack while NATS was down");
    assert_eq!(metric(&exposition, "connwarden_nats_connected"), Some(0.0));
    let readyz = gateway.admin.request("GET", "/readyz");
    assert_eq!(readyz.0, 503, "{}", readyz.1);
    assert!(
        readyz.1.contains("\"nats_connected\":false"),
        "{}",
        readyz.1
    );

    nats.nodes[0].start();
    let status = send.wait_exit(Duration::from_secs(180));
    assert!(status.success(), "send: {}", send.stderr_so_far());
    common::poll_until(Duration::from_secs(10), "/readyz ready again", || {
        gateway.admin.request("GET", "/readyz").0 == 200
    });
    let exposition = gateway.admin.metrics();
    assert!(metric(&exposition, "connwarden_nats_reconnects_total").unwrap_or(0.0) >= 1.0);
    let retries: f64 = exposition
        .lines()
        .filter(|l| l.starts_with("connwarden_jetstream_retries_total{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    assert!(retries > 0.0, "publishes were retried:\n{exposition}");
    common::promtool_check(&exposition);

    let stored = runtime().block_on(async {
        let client = nats.client().await;
        read_stream(&client, "CONNWARDEN").await
    });
    assert_exactly_once_in_order(&stored, ITEMS);
}

#[test]
fn the_registry_lists_every_gateway_kicks_through_nats_and_reports_a_stopped_one_missing() {
    let _serial = one_at_a_time();
    let nats = Nats::start(1);
    let gateways: Vec<Gateway> = ["r1", "r2", "r3"]
        .iter()
        .map(|name| Gateway::start(name, &nats, &[]))
        .collect();
    // Two idle connections on each gateway.
    let conns: Vec<std::net::TcpStream> = gateways
        .iter()
        .flat_map(|g| (0..2).map(|_| std::net::TcpStream::connect(&g.addr).expect("connect")))
        .collect();
    for gateway in &gateways {
        common::poll_until(Duration::from_secs(10), "2 live connections", || {
            metric(&gateway.admin.metrics(), "connwarden_connections_live") == Some(2.0)
        });
    }
    let urls = nats.urls();
    let conns_json = |extra: &[&str]| {
        let mut command = Command::new(common::binary());
        command
            .args(["conns", "--nats", &urls, "--json"])
            .args(extra);
        command.output().expect("run conns")
    };
    // Every gateway announces itself within its first heartbeat.
    let mut listing = serde_json::Value::Null;
    common::poll_until(Duration::from_secs(10), "3 gateways answering", || {
        let out = conns_json(&[]);
        listing = serde_json::from_slice(&out.stdout).unwrap_or_default();
        out.status.success() && listing["gateways"].as_array().map(Vec::len) == Some(3)
    });
    let items = listing["items"].as_array().expect("items");
    assert_eq!(items.len(), 6, "{listing}");
    for name in ["r1", "r2", "r3"] {
        assert_eq!(
            items.iter().filter(|i| i["gateway"] == name).count(),
            2,
            "{listing}"
        );
    }

    // Kick r2's first connection through NATS: closed there with reason kicked.
    let victim = items
        .iter()
        .find(|i| i["gateway"] == "r2")
        .expect("a connection of r2");
    let target = format!("r2/{}", victim["id"]);
    let out = Command::new(common::binary())
        .args(["kick", &target, "--nats", &urls])
        .output()
        .expect("run kick");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let closed = gateways[1].admin.json("/closed?reason=kicked");
    assert_eq!(closed["total"], 1, "{closed}");
    assert_eq!(closed["items"][0]["id"], victim["id"], "{closed}");
    let table = Command::new(common::binary())
        .args(["conns", "--nats", &urls])
        .output()
        .expect("run conns");
    let text = String::from_utf8_lossy(&table.stdout);
    assert!(
        text.contains("5 connections from 3 of 3 gateways"),
        "{text}"
    );

    // A frozen gateway (SIGSTOP: alive for the kernel, silent for NATS) is reported missing.
    let stopped = gateways[2].proc.child.id() as i32;
    // SAFETY: kill(2) on the pid of a child the test owns.
    assert_eq!(unsafe { libc::kill(stopped, libc::SIGSTOP) }, 0);
    let out = conns_json(&["--nats-timeout", "1s"]);
    // SAFETY: as above.
    assert_eq!(unsafe { libc::kill(stopped, libc::SIGCONT) }, 0);
    let listing: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert!(!out.status.success(), "a missing gateway fails the command");
    let r3 = listing["gateways"]
        .as_array()
        .expect("gateways")
        .iter()
        .find(|g| g["name"] == "r3")
        .expect("r3 is listed");
    assert_eq!(r3["status"], "missing", "{listing}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("gateway r3: missing"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    drop(conns);
}

#[test]
fn three_gateways_three_nats_nodes_every_item_once_through_crashes() {
    let _serial = one_at_a_time();
    let items: usize = std::env::var("SCALE_OUT_ITEMS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(300_000);
    let mut nats = Nats::start(3);
    let extra = ["--nats-replicas", "3", "--nats-publish-timeout", "2s"];
    let mut gateways: Vec<Gateway> = ["g1", "g2", "g3"]
        .iter()
        .map(|name| Gateway::start(name, &nats, &extra))
        .collect();
    let to: Vec<&str> = gateways.iter().map(|g| g.addr.as_str()).collect();
    let to = to.join(",");
    let input = items_file(items);
    let path = input.path().to_str().expect("utf-8 path").to_owned();
    let started = Instant::now();
    let mut send = Proc::connwarden(&[
        "send",
        "--to",
        &to,
        "--ack",
        "--window",
        "4096",
        "--backoff-initial",
        "50ms",
        "--log-format",
        "json",
        &path,
    ]);
    // The client starts with g1: crash it a quarter of the way.
    let quarter = items as f64 / 4.0;
    common::poll_until(
        Duration::from_secs(300),
        "a quarter acknowledged by g1",
        || gateways[0].acknowledged() >= quarter,
    );
    let mut g1 = gateways.remove(0);
    let _ = g1.proc.child.kill();
    let _ = g1.proc.child.wait();
    // The client fails over to g2 (or g3); crash a NATS node once it has delivered more.
    common::poll_until(
        Duration::from_secs(300),
        "another quarter through g2 or g3",
        || gateways.iter().map(Gateway::acknowledged).sum::<f64>() >= quarter,
    );
    // Kill the node the busiest gateway publishes through: its NATS connection breaks with
    // publishes in flight, the case that would reorder items if anything could.
    let busiest = if gateways[0].acknowledged() >= gateways[1].acknowledged() {
        &gateways[0]
    } else {
        &gateways[1]
    };
    let connection = format!("connwarden {}", busiest.name);
    let node = nats
        .nodes
        .iter()
        .position(|node| node.client_names().contains(&connection))
        .expect("the gateway's NATS connection is on a node");
    eprintln!(
        "killing NATS node {node}, which {} publishes through",
        busiest.name
    );
    nats.nodes[node].kill();
    let status = send.wait_exit(Duration::from_secs(900));
    let took = started.elapsed();
    assert!(status.success(), "send: {}", send.stderr_so_far());
    let log = send.stderr_so_far();
    assert!(
        log.contains("\"resent\"")
            || log.contains("reconnecting")
            || log.contains("connection lost"),
        "the client failed over:\n{log}"
    );
    let stored = runtime().block_on(async {
        let client = nats.client().await;
        read_stream(&client, "CONNWARDEN").await
    });
    let duplicates: f64 = gateways
        .iter()
        .filter_map(|g| metric(&g.admin.metrics(), "connwarden_jetstream_duplicates_total"))
        .sum();
    eprintln!(
        "{items} items through 3 gateways into an R3 stream in {:.1} s ({:.0} items/s); JetStream removed {duplicates} resends as duplicates",
        took.as_secs_f64(),
        items as f64 / took.as_secs_f64()
    );
    assert_exactly_once_in_order(&stored, items);
}

/// `doctor --nats-monitor` reads each server's JetStream sync setting from its `/varz`: the test
/// servers sync always (no warning); a monitor that does not answer is reported unknown.
#[test]
fn doctor_reports_whether_nats_syncs_what_it_acknowledges() {
    let _serial = one_at_a_time();
    let nats = Nats::start(1);
    let monitor = format!("http://127.0.0.1:{}", nats.nodes[0].http_port);
    let closed = format!("http://127.0.0.1:{}", common::free_port());
    let urls = nats.urls();
    let monitors = format!("{monitor},{closed}");
    let report = common::doctor_json(&[
        "--sink",
        "jetstream",
        "--nats-url",
        &urls,
        "--nats-monitor",
        &monitors,
    ]);
    let servers = report["nats"].as_array().expect("nats");
    assert_eq!(servers.len(), 2, "{report}");
    assert_eq!(servers[0]["monitor"], monitor.as_str());
    assert_eq!(servers[0]["sync_always"], true, "{report}");
    assert!(servers[1]["error"].is_string(), "{report}");
    let codes: Vec<&str> = report["warnings"]
        .as_array()
        .expect("warnings")
        .iter()
        .filter_map(|w| w["code"].as_str())
        .filter(|code| code.starts_with("nats_sync"))
        .collect();
    assert_eq!(codes, ["nats_sync_unknown"], "{report}");
}
