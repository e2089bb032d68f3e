//! Live reload of `connwarden serve` on `SIGHUP`, asserted through what peers and the kernel
//! see: the heartbeat a new connection is told and pinged at, `max_connections` raised and
//! lowered under live connections that all stay, keep-alive set again on open sockets (their
//! keep-alive timer in `ss`), a key that needs a restart refused with its old value kept, and
//! an invalid file that changes nothing.

use connwarden_test_common as common;

use std::io::{ErrorKind, Read};
use std::path::Path;
use std::time::Duration;

use common::{metric, Admin, LinePeer, Proc, TestServer};
use connwarden::config::{HeartbeatMode, Key};
use connwarden::{CloseReason, Config};

/// What every version of the test's file holds.
const BASE: &str = r#"
listen = ["127.0.0.1:0"]
sink = "file:/dev/null"
log_format = "json"
keepalive_interval = "10s"
keepalive_count = 3
# The keep-alive timers read here are the configured idle, not a phase (tests/keepalive_phase.rs).
keepalive_spread = false
# Pings go unanswered while the test looks elsewhere: no connection may close for it.
heartbeat_misses = 1000
"#;

fn write_config(path: &Path, keys: &str) {
    std::fs::write(path, format!("{BASE}{keys}")).expect("write the configuration");
}

/// A connection seen from the client's side.
type Peer = LinePeer;

/// What these tests do with a connection, beyond lines.
trait PeerExt: Sized {
    fn hello(addr: &str) -> (Self, serde_json::Value);
    fn item_is_acked(&mut self, id: &str);
    fn nothing_received(&mut self) -> bool;
    fn server_keepalive_minutes(&self, server_addr: &str) -> u64;
}

impl PeerExt for LinePeer {
    /// Says hello; the server's answer (`hello`, or the `server_full` error).
    fn hello(addr: &str) -> (Peer, serde_json::Value) {
        let mut peer = Peer::connect(addr);
        peer.send(r#"{"type":"hello"}"#);
        let answer = peer.line();
        (peer, answer)
    }

    /// Sends an item with an id and expects its ack: the connection is alive and served.
    fn item_is_acked(&mut self, id: &str) {
        self.send(&format!(r#"{{"ip":"192.0.2.1","id":"{id}"}}"#));
        loop {
            let reply = self.line();
            match reply["type"].as_str() {
                Some("ping") => self.send(r#"{"type":"pong"}"#),
                Some("ack") => {
                    assert_eq!(reply["id"], id, "{reply}");
                    return;
                }
                _ => panic!("expected the ack of {id}: {reply}"),
            }
        }
    }

    /// Nothing has arrived from the server (no ping): checked without waiting.
    fn nothing_received(&mut self) -> bool {
        if !self.reader.buffer().is_empty() {
            return false;
        }
        let stream = self.reader.get_mut();
        stream.set_nonblocking(true).expect("nonblocking");
        let read = stream.read(&mut [0; 256]);
        stream.set_nonblocking(false).expect("blocking");
        matches!(read, Err(e) if e.kind() == ErrorKind::WouldBlock)
    }

    /// Minutes left on the server side's keep-alive timer of this connection, as `ss` shows it.
    fn server_keepalive_minutes(&self, server_addr: &str) -> u64 {
        let local = self.reader.get_ref().local_addr().expect("local addr");
        let server_port = server_addr.rsplit(':').next().expect("port");
        let out = std::process::Command::new("ss")
            .args(["-tnoH", "state", "established"])
            .arg(format!(
                "( sport = :{server_port} and dport = :{} )",
                local.port()
            ))
            .output()
            .expect("ss (apt-get install iproute2)");
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let timer = text
            .split("timer:(keepalive,")
            .nth(1)
            .unwrap_or_else(|| panic!("no keep-alive timer in {text:?}"));
        // `59min`, `4min30sec`, `29sec`, `4.500ms`: only the minutes matter here.
        let value = timer.split(',').next().unwrap_or_default();
        value
            .split_once("min")
            .map_or(0, |(minutes, _)| minutes.parse().expect("minutes"))
    }
}

fn reloads(admin: &Admin, result: &str) -> f64 {
    let text = admin.metrics();
    metric(
        &text,
        &format!("connwarden_config_reloads_total{{result=\"{result}\"}}"),
    )
    .unwrap_or(0.0)
}

#[test]
fn sighup_changes_heartbeat_and_max_connections_for_new_peers_keeps_live_ones_and_refuses_an_invalid_file(
) {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("connwarden.toml");
    write_config(
        &path,
        // 300 s: even the earliest phased first ping (a tenth of it) comes after this test.
        "heartbeat_interval = \"300s\"\nmax_connections = 3\nkeepalive_idle = \"1h\"\n",
    );
    let mut server = Proc::spawn(&["--config", path.to_str().expect("utf-8 path")]);
    let admin = Admin::of(&mut server);
    let listening = server.wait_log("listening").expect("listening");
    let addr = listening["addr"].as_str().expect("addr").to_owned();

    // Three live connections under the first file: told 300 s, kept alive after an hour.
    let mut old: Vec<Peer> = (0..3)
        .map(|_| {
            let (peer, answer) = Peer::hello(&addr);
            assert_eq!(answer["heartbeat_ms"], 300_000, "{answer}");
            peer
        })
        .collect();
    let (_, answer) = Peer::hello(&addr);
    assert_eq!(answer["code"], "server_full", "{answer}");
    for peer in &old {
        assert!(peer.server_keepalive_minutes(&addr) >= 30);
    }

    // Live keys change; `queue` needs a restart and is refused.
    write_config(
        &path,
        "heartbeat_interval = \"1s\"\nmax_connections = 5\nkeepalive_idle = \"5s\"\nqueue = 128\n",
    );
    server.sighup();
    let refused = server
        .wait_log(
            "this key cannot change while the server runs; its old value stays until a restart",
        )
        .expect("refusal logged");
    assert_eq!(refused["key"], "queue", "{refused}");
    let reloaded = server
        .wait_log("configuration reloaded")
        .expect("reload logged");
    let applied = reloaded["applied"].as_str().expect("applied");
    for key in ["heartbeat_interval", "max_connections", "keepalive_idle"] {
        assert!(applied.contains(key), "{reloaded}");
    }
    let (status, in_force) = admin.request("GET", "/config");
    assert_eq!(status, 200);
    for line in [
        "heartbeat_interval = \"1s\"",
        "max_connections = 5",
        "queue = 65536",
    ] {
        assert!(
            in_force.lines().any(|l| l == line),
            "{line} in force:\n{in_force}"
        );
    }
    let metrics = admin.metrics();
    assert_eq!(
        metric(&metrics, "connwarden_queue_capacity_items"),
        Some(65536.0),
        "the queue keeps its size until a restart"
    );

    // A new connection is told 1 s and pinged at it; there is room for two more.
    let (mut new, answer) = Peer::hello(&addr);
    assert_eq!(answer["heartbeat_ms"], 1_000, "{answer}");
    for _ in 0..2 {
        assert_eq!(new.line()["type"], "ping");
    }
    new.send(r#"{"type":"pong"}"#);
    let (mut fifth, answer) = Peer::hello(&addr);
    assert_eq!(answer["type"], "hello", "{answer}");
    let (_, answer) = Peer::hello(&addr);
    assert_eq!(answer["code"], "server_full", "{answer}");

    // The three older connections are still served, on the interval they were told (silent
    // for more than two seconds of the new one's, they got no ping), with the new keep-alive
    // set on their sockets.
    for (i, peer) in old.iter_mut().enumerate() {
        assert!(
            peer.nothing_received(),
            "connection {i} got a ping at the new interval"
        );
        assert!(peer.server_keepalive_minutes(&addr) < 1, "connection {i}");
        peer.item_is_acked(&format!("old-{i}"));
    }
    fifth.item_is_acked("fifth");

    // Lowered under the live count, with quieter logs: the five stay, a sixth is refused.
    write_config(
        &path,
        "heartbeat_interval = \"1s\"\nmax_connections = 2\nkeepalive_idle = \"5s\"\nlog_level = \"warn\"\n",
    );
    server.sighup();
    server
        .wait_log("configuration reloaded")
        .expect("second reload");
    common::poll_until(common::PROMPT, "two successful reloads", || {
        reloads(&admin, "success") == 2.0
    });
    let (_, answer) = Peer::hello(&addr);
    assert_eq!(answer["code"], "server_full", "{answer}");
    for (i, peer) in old.iter_mut().enumerate() {
        peer.item_is_acked(&format!("old-{i}-again"));
    }
    new.item_is_acked("new");
    fifth.item_is_acked("fifth-again");

    // An invalid file changes nothing.
    write_config(
        &path,
        "heartbeat_interval = \"soon\"\nmax_connections = 50\nkeepalive_idle = \"5s\"\n",
    );
    server.sighup();
    server
        .wait_log("configuration reload refused; nothing changed")
        .expect("invalid file refused");
    let so_far = server.stderr_so_far();
    let third_sighup = so_far
        .lines()
        .filter(|line| line.contains("SIGHUP: reading the configuration again"))
        .count();
    assert_eq!(
        third_sighup, 2,
        "log_level = warn silenced the third reload's info line"
    );
    let metrics = admin.metrics();
    assert_eq!(
        metric(
            &metrics,
            "connwarden_config_reloads_total{result=\"failure\"}"
        ),
        Some(1.0)
    );
    assert_eq!(
        metric(&metrics, "connwarden_config_last_reload_successful"),
        Some(0.0)
    );
    // All closed: two places under max_connections = 2, at the 1 s heartbeat.
    drop(old);
    drop(fifth);
    drop(new);
    common::poll_until(common::PROMPT, "no live connection", || {
        admin.json("/connections")["total"] == 0
    });
    let (_first, answer) = Peer::hello(&addr);
    assert_eq!(answer["heartbeat_ms"], 1_000, "{answer}");
    let (_second, answer) = Peer::hello(&addr);
    assert_eq!(answer["type"], "hello", "{answer}");
    let (_, answer) = Peer::hello(&addr);
    assert_eq!(answer["code"], "server_full", "{answer}");

    server.terminate();
    assert!(server.wait_exit(Duration::from_secs(20)).success());
}

#[tokio::test]
async fn a_reload_holds_open_connections_to_the_new_idle_timeout_and_error_budget() {
    let config = Config {
        heartbeat: HeartbeatMode::Off,
        ..common::test_config()
    };
    let mut server = TestServer::start(config.clone()).await;
    let _idle = server.connect().await;
    let mut noisy = server.connect().await;
    server.wait_live(2).await;

    let report = server
        .reloader
        .reload(Ok(Config {
            idle_timeout: Some(Duration::from_millis(300)),
            error_budget: 1,
            ..config
        }))
        .expect("a valid configuration");
    assert!(report.applied(Key::IdleTimeout) && report.applied(Key::ErrorBudget));
    assert!(report.refused.is_empty(), "{report:?}");
    assert_eq!(
        server.reloader.config().idle_timeout,
        Some(Duration::from_millis(300))
    );

    // Two bad items exceed the new budget of one (the old one was 100).
    noisy.send(b"{\"ip\":\"nope\"}\n{\"ip\":\"nope\"}\n").await;
    assert!(noisy.until_closed().await.contains("too_many_errors"));
    let mut reasons = vec![
        server.next_close().await.reason,
        server.next_close().await.reason,
    ];
    reasons.sort_by_key(|reason| reason.as_str());
    assert_eq!(
        reasons,
        [CloseReason::IdleTimeout, CloseReason::ProtocolError],
        "the connection open before the reload was closed by its new idle timeout"
    );
    server.shutdown().await;
}
