//! Connections accepted in one burst do not probe in one burst: each gets a keep-alive phase
//! over the idle period, and keeps it (src/phase.rs).
//!
//! Observed from the server's side, as an operator would: `since_ack_ms` of every connection
//! in the admin API (`TCP_INFO`'s time since the peer's last ACK). On an idle connection that
//! ACK is the answer to a keep-alive probe, so sampling it gives the moment each probe was
//! answered. The peers are this test's own sockets on loopback, alive throughout: the kernel
//! answers every probe, and no connection may close.

use connwarden_test_common as common;

use std::collections::BTreeMap;
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::{metric, Admin, Proc};

const PEERS: usize = 240;
const IDLE: u64 = 8;

/// Answers seen per connection id, as times since the burst was accepted.
fn sample(admin: &Admin, since: Instant, answers: &mut BTreeMap<u64, Vec<f64>>) -> usize {
    let listed = admin.json(&format!("/connections?limit={}", PEERS + 10));
    let at = since.elapsed().as_secs_f64();
    let items = listed["items"].as_array().expect("items");
    for conn in items {
        let id = conn["id"].as_u64().expect("id");
        let since_ack = conn["tcp"]["since_ack_ms"].as_u64().expect("since_ack_ms") as f64 / 1e3;
        let answered = at - since_ack;
        // Past the handshake, and not the answer seen at the last sample.
        let seen = answers.entry(id).or_default();
        if answered > 0.5 && seen.last().is_none_or(|last| answered - last > 0.5) {
            seen.push(answered);
        }
    }
    items.len()
}

#[test]
fn a_burst_of_connections_probes_spread_over_the_idle_period_and_keeps_its_phases() {
    let idle = format!("{IDLE}s");
    let mut args = common::LOOPBACK_TO_NULL.to_vec();
    args.extend([
        "--keepalive-idle",
        &idle,
        "--keepalive-interval",
        "1s",
        "--keepalive-count",
        "3",
    ]);
    let mut server = Proc::spawn(&args);
    let admin = Admin::of(&mut server);
    let listening = server.wait_log("listening").expect("listening");
    let addr = listening["addr"].as_str().expect("addr").to_owned();

    let peers: Vec<TcpStream> = (0..PEERS)
        .map(|_| TcpStream::connect(&addr).expect("connect"))
        .collect();
    let accepted = Instant::now();
    common::poll_until(common::PROMPT, "every peer accepted", || {
        metric(&admin.metrics(), "connwarden_connections_live") == Some(PEERS as f64)
    });

    // Three idle periods, sampled four times a second.
    let mut answers: BTreeMap<u64, Vec<f64>> = BTreeMap::new();
    while accepted.elapsed() < Duration::from_secs(3 * IDLE) {
        let live = sample(&admin, accepted, &mut answers);
        assert_eq!(live, PEERS, "a healthy peer was closed");
        std::thread::sleep(Duration::from_millis(250));
    }

    assert_spread_and_kept(&answers);

    let text = admin.metrics();
    assert_eq!(
        metric(
            &text,
            "connwarden_connections_closed_total{reason=\"keepalive_timeout\"}"
        )
        .unwrap_or(0.0),
        0.0
    );
    drop(peers);
    server.terminate();
    assert!(server.wait_exit(Duration::from_secs(20)).success());
}

/// The first answers spread over the idle period (about evenly), and, once the idle is back,
/// one probe per idle period at the phase kept.
fn assert_spread_and_kept(answers: &BTreeMap<u64, Vec<f64>>) {
    // The first answers, by the second of the idle period they fell in.
    let mut per_second = [0usize; IDLE as usize + 2];
    for seen in answers.values() {
        let first = seen
            .first()
            .expect("every connection was probed at least once");
        per_second[(*first as usize).min(IDLE as usize + 1)] += 1;
    }
    eprintln!("first probe answers per second after the burst: {per_second:?}");
    let even = PEERS / IDLE as usize;
    let busiest = *per_second.iter().max().expect("seconds");
    let seconds_used = per_second.iter().filter(|&&n| n > 0).count();
    // Without phases, every first probe leaves at the idle, in one or two seconds.
    assert!(
        seconds_used >= IDLE as usize - 1 && busiest <= 2 * even,
        "the first probes were not spread: {per_second:?} (even: {even} a second)"
    );

    // Once its idle is back, a connection is probed once per idle period, keeping its phase:
    // no two answers closer than the idle (less the kernel's timer rounding).
    let mut gaps = Vec::new();
    for (id, seen) in answers {
        for pair in seen.windows(2) {
            if pair[0] >= IDLE as f64 + 1.0 {
                let gap = pair[1] - pair[0];
                assert!(
                    gap >= IDLE as f64 - 1.0,
                    "connection {id} probed {gap:.2} s apart, its answers: {seen:?}"
                );
                gaps.push(gap);
            }
        }
    }
    gaps.sort_by(f64::total_cmp);
    assert!(
        gaps.len() >= PEERS / 2,
        "too few probe cycles seen: {}",
        gaps.len()
    );
    eprintln!(
        "{} probe cycles after the first: median {:.2} s apart, shortest {:.2} s",
        gaps.len(),
        gaps[gaps.len() / 2],
        gaps[0]
    );
}

/// Seconds left on the keep-alive timer of each client socket connected to `port`, by local
/// port, as `ss` shows them (`timer:(keepalive,5.404ms,0)` for 5.404 s, `512ms`, `1min2sec`).
fn client_keepalive_timers(port: &str) -> BTreeMap<u16, f64> {
    let out = std::process::Command::new("ss")
        .args(["-tnoH", "state", "established"])
        .arg(format!("( dport = :{port} )"))
        .output()
        .expect("ss (apt-get install iproute2)");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let mut timers = BTreeMap::new();
    for line in text.lines() {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let Some(local) = fields.get(2).and_then(|a| a.rsplit(':').next()) else {
            continue;
        };
        let Some(timer) = line.split("timer:(keepalive,").nth(1) else {
            continue;
        };
        let value = timer.split(',').next().unwrap_or_default();
        let (minutes, rest) = value.split_once("min").unwrap_or(("0", value));
        // `ss` writes `5.404ms` for 5.404 s (seconds, a dot, milliseconds) and `512ms` for 512 ms.
        let seconds = if let Some(ms) = rest.strip_suffix("ms") {
            let value = ms.parse::<f64>().unwrap_or(0.0);
            if ms.contains('.') {
                value
            } else {
                value / 1e3
            }
        } else {
            rest.trim_end_matches("sec").parse::<f64>().unwrap_or(0.0)
        };
        let minutes: f64 = minutes.parse().unwrap_or(0.0);
        timers.insert(local.parse().expect("port"), minutes * 60.0 + seconds);
    }
    timers
}

/// The same from the other end: clients of the library connected together get their first
/// keep-alive probe spread over the idle period, and their idle back after it. Observed on the
/// clients' sockets (`ss`: the time left on each keep-alive timer): right after connecting, the
/// timers left are spread over the idle (without phases they would all read about the idle);
/// later, after an answered probe, a timer reads the full idle less one interval (without the
/// restore it could never read more than its shortened first idle less one interval).
#[test]
fn library_clients_connected_together_probe_spread_and_get_their_idle_back() {
    use connwarden::client::{Client, ClientConfig};
    use connwarden::config::Keepalive;
    let mut args = common::LOOPBACK_TO_NULL.to_vec();
    args.extend(["--keepalive-idle", "1h", "--heartbeat", "off"]);
    let mut server = Proc::spawn(&args);
    let admin = Admin::of(&mut server);
    let listening = server.wait_log("listening").expect("listening");
    let addr = listening["addr"].as_str().expect("addr").to_owned();
    let port = addr.rsplit(':').next().expect("port").to_owned();

    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let _inside = runtime.enter();
    let clients: Vec<Client> = (0..PEERS)
        .map(|_| {
            let mut config = ClientConfig::new(addr.clone());
            config.keepalive = Keepalive {
                idle: Duration::from_secs(IDLE),
                interval: Duration::from_secs(1),
                count: 3,
            };
            config.heartbeat_interval = Duration::from_secs(3600);
            Client::start(config)
        })
        .collect();
    let connected = Instant::now();
    common::poll_until(common::PROMPT, "every client connected", || {
        metric(&admin.metrics(), "connwarden_connections_live") == Some(PEERS as f64)
            && client_keepalive_timers(&port).len() == PEERS
    });
    // Every client has had its hello answered and set its phase by now (within a second).
    std::thread::sleep(Duration::from_millis(300));
    let early = client_keepalive_timers(&port);
    let mut per_second = [0usize; IDLE as usize + 1];
    for left in early.values() {
        per_second[(left.ceil() as usize).min(IDLE as usize)] += 1;
    }
    eprintln!("client keep-alive timers left after connecting, per whole second: {per_second:?}");
    let seconds_used = per_second.iter().filter(|&&n| n > 0).count();
    assert!(
        seconds_used >= IDLE as usize - 2 && per_second[IDLE as usize] < PEERS / 4,
        "the clients' first probes were not spread: {per_second:?}"
    );

    // Over two more idle periods, the most each timer reads.
    let mut most: BTreeMap<u16, f64> = BTreeMap::new();
    while connected.elapsed() < Duration::from_secs(3 * IDLE) {
        if connected.elapsed() > Duration::from_secs(IDLE + 2) {
            for (local, left) in client_keepalive_timers(&port) {
                let m = most.entry(local).or_insert(0.0);
                *m = m.max(left);
            }
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    // After an answered probe the kernel re-arms the timer for the idle less the interval it
    // waited on that probe: up to 7 s here once the idle is back, at most the first idle less
    // 1 s (6 s) without the restore.
    let restored = most.values().filter(|&&m| m >= IDLE as f64 - 1.5).count();
    eprintln!(
        "{restored} of {} client timers read the idle in force again",
        most.len()
    );
    assert_eq!(most.len(), PEERS, "a client's connection was closed");
    assert!(
        restored >= PEERS * 9 / 10,
        "only {restored} of {PEERS} clients got their idle back: {most:?}"
    );
    drop(clients);
    server.terminate();
    assert!(server.wait_exit(Duration::from_secs(20)).success());
}

/// The heartbeat's first pings are spread too: peers that said `hello` together are not
/// pinged together (from a tenth of the interval to the interval), and none is closed sooner
/// for it: the close still waits `heartbeat_misses` whole intervals.
#[test]
fn first_heartbeat_pings_of_peers_greeted_together_are_spread_over_the_interval() {
    use std::io::{BufRead, BufReader, Write};
    const INTERVAL: f64 = 4.0;
    let mut args = common::LOOPBACK_TO_NULL.to_vec();
    args.extend(["--heartbeat-interval", "4s", "--heartbeat-misses", "3"]);
    let mut server = Proc::spawn(&args);
    let listening = server.wait_log("listening").expect("listening");
    let addr = listening["addr"].as_str().expect("addr").to_owned();
    let greeted = Instant::now();
    let peers: Vec<_> = (0..100)
        .map(|_| {
            let addr = addr.clone();
            std::thread::spawn(move || {
                let mut stream = TcpStream::connect(&addr).expect("connect");
                stream.write_all(b"{\"type\":\"hello\"}\n").expect("hello");
                stream
                    .set_read_timeout(Some(Duration::from_secs(10)))
                    .expect("timeout");
                let mut lines = BufReader::new(stream);
                let mut line = String::new();
                loop {
                    line.clear();
                    lines
                        .read_line(&mut line)
                        .expect("a line before the timeout");
                    if line.contains("\"ping\"") {
                        return greeted.elapsed().as_secs_f64();
                    }
                }
            })
        })
        .collect();
    let firsts: Vec<f64> = peers.into_iter().map(|p| p.join().expect("peer")).collect();
    let mut per_second = [0usize; INTERVAL as usize + 1];
    for at in &firsts {
        assert!(*at <= INTERVAL + 0.5, "a first ping came late: {at:.2} s");
        per_second[(*at as usize).min(INTERVAL as usize)] += 1;
    }
    eprintln!("first pings per second after hello: {per_second:?}");
    assert!(
        per_second.iter().take(INTERVAL as usize).all(|&n| n >= 10),
        "the first pings were not spread over the interval: {per_second:?}"
    );
    server.terminate();
    assert!(server.wait_exit(Duration::from_secs(20)).success());
}
