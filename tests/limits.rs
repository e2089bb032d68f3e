//! Limits against greedy peers and exhausted resources, through the binary.

use connwarden_test_common as common;

use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::time::Duration;

use common::{metric, Admin, Proc};

/// Says hello on `stream` and returns the server's first line.
fn hello(stream: &TcpStream) -> serde_json::Value {
    send_line(stream, r#"{"type":"hello"}"#)
}

/// Sends one line and returns the server's next line.
fn send_line(stream: &TcpStream, line: &str) -> serde_json::Value {
    stream
        .set_read_timeout(Some(common::PROMPT))
        .expect("read timeout");
    (&*stream)
        .write_all(format!("{line}\n").as_bytes())
        .expect("send");
    let mut line = String::new();
    BufReader::new(stream)
        .read_line(&mut line)
        .expect("a line from the server");
    serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line:?}"))
}

#[test]
fn accept_backs_off_when_descriptors_run_out_and_recovers_without_a_restart() {
    // 64 descriptors: the runtime, listeners and sink take some, connections the rest.
    let mut server = Proc::spawn_with_file_limit(64, common::LOOPBACK_TO_NULL);
    let admin = Admin::of(&mut server);
    let listening = server.wait_log("listening").expect("listening");
    let addr = listening["addr"].as_str().expect("addr").to_owned();

    // More peers than descriptors: the kernel completes every handshake (the listen backlog),
    // the server accepts until EMFILE.
    let mut peers: Vec<TcpStream> = (0..80)
        .map(|_| TcpStream::connect(&addr).expect("connect"))
        .collect();
    let failing = server
        .wait_log("accept is failing: new connections wait in the listen backlog; retrying with backoff (logged again when it works)")
        .expect("the failure is logged");
    assert_eq!(failing["kind"], "emfile", "{failing}");

    // The exhaustion lasts 1.5 s (the length of the experiment, not a wait for an event): a
    // loop that retried at once would make thousands of attempts in it.
    std::thread::sleep(Duration::from_millis(1500));
    // Half the peers leave; their descriptors free, accept works again by itself.
    let staying = peers.split_off(40);
    drop(peers);
    let recovered = server
        .wait_log_within("accept works again", Duration::from_secs(20))
        .expect("recovery is logged");
    let failures = recovered["failures"].as_u64().expect("failures");
    let failing_ms = recovered["failing_ms"].as_u64().expect("failing_ms");
    assert!(failing_ms >= 1500, "{recovered}");
    // Backed off (5 ms doubling to 1 s): 5 + 10 + … + 640 ms covers the first 1.3 s in eight
    // attempts, then one a second.
    assert!(
        failures <= 9 + failing_ms / 1000,
        "{failures} attempts in {failing_ms} ms"
    );
    // Logged once per burst: no line per attempt.
    let so_far = server.stderr_so_far();
    assert_eq!(so_far.matches("accept is failing").count(), 1, "{so_far}");

    // Every peer that waited in the backlog is served.
    for (i, peer) in staying.iter().enumerate() {
        let answer = hello(peer);
        assert_eq!(answer["type"], "hello", "peer {i}: {answer}");
    }
    let text = admin.metrics();
    let emfile = metric(&text, "connwarden_accept_errors_total{error=\"emfile\"}").unwrap_or(0.0);
    assert!(emfile >= 1.0, "emfile counted: {emfile}");
    assert_eq!(
        metric(&text, "connwarden_connections_live"),
        Some(staying.len() as f64)
    );
    server.terminate();
    assert!(server.wait_exit(Duration::from_secs(20)).success());
}

/// Connects to `addr` from the loopback address `source`.
fn connect_from(source: [u8; 4], addr: &str) -> TcpStream {
    let socket =
        socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).expect("socket");
    socket
        .bind(&std::net::SocketAddr::from((source, 0)).into())
        .expect("bind the source address");
    let addr: std::net::SocketAddr = addr.parse().expect("address");
    socket.connect(&addr.into()).expect("connect");
    socket.into()
}

#[test]
fn one_address_gets_max_connections_per_ip_and_other_addresses_are_untouched() {
    let mut args = common::LOOPBACK_TO_NULL.to_vec();
    args.extend(["--max-connections-per-ip", "2"]);
    let mut server = Proc::spawn(&args);
    let admin = Admin::of(&mut server);
    let listening = server.wait_log("listening").expect("listening");
    let addr = listening["addr"].as_str().expect("addr").to_owned();

    let first = connect_from([127, 0, 0, 2], &addr);
    let second = connect_from([127, 0, 0, 2], &addr);
    for peer in [&first, &second] {
        assert_eq!(hello(peer)["type"], "hello");
    }
    let third = connect_from([127, 0, 0, 2], &addr);
    let refused = hello(&third);
    assert_eq!(refused["code"], "too_many_connections", "{refused}");
    // Another address is not affected, nor are the two live ones.
    let other = connect_from([127, 0, 0, 3], &addr);
    assert_eq!(hello(&other)["type"], "hello");
    assert_eq!(
        send_line(&first, r#"{"ip":"192.0.2.1","id":1}"#)["type"],
        "ack"
    );

    // One leaves: its place is free again.
    drop(second);
    common::poll_until(common::PROMPT, "two live connections", || {
        admin.json("/connections")["total"] == 2
    });
    let again = connect_from([127, 0, 0, 2], &addr);
    assert_eq!(hello(&again)["type"], "hello");

    let text = admin.metrics();
    assert_eq!(
        metric(
            &text,
            "connwarden_connections_refused_total{reason=\"too_many_connections\"}"
        ),
        Some(1.0)
    );
    server.terminate();
    assert!(server.wait_exit(Duration::from_secs(20)).success());
}

/// What one slow-loris peer saw: the time from its first byte to the end of its connection,
/// and the lines the server sent it.
struct LorisEnd {
    lasted: Duration,
    lines: String,
}

/// Connects and sends an object that never ends, one byte every second, until the server
/// closes the connection (or `bound` passes).
fn slow_loris(addr: &str, bound: Duration) -> LorisEnd {
    use std::io::Read;
    let mut stream = TcpStream::connect(addr).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(1)))
        .expect("read timeout");
    let object = br#"{"ip":"192.0.2.7","pad":""#
        .iter()
        .chain(std::iter::repeat(&b'x'));
    let start = std::time::Instant::now();
    let mut received = Vec::new();
    for &byte in object {
        if start.elapsed() > bound {
            panic!("still open after {bound:?}");
        }
        if stream.write_all(&[byte]).is_err() {
            break;
        }
        // A second's wait between bytes is the peer's pace, and the server's answer or end
        // wakes it sooner.
        let mut chunk = [0; 512];
        match stream.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => {
                received.extend_from_slice(&chunk[..n]);
                // The notice comes before the end: read on until it.
                let _ = stream.read_to_end(&mut received);
                break;
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) if e.kind() == std::io::ErrorKind::TimedOut => {}
            Err(_) => break,
        }
    }
    LorisEnd {
        lasted: start.elapsed(),
        lines: String::from_utf8_lossy(&received).into_owned(),
    }
}

#[test]
fn slow_loris_peers_end_as_frame_timeout_while_other_clients_keep_delivering() {
    // 2.5 s: the close falls between two of a loris's bytes (one a second), so no byte of it
    // is unread when the server closes (which would turn the close into a reset).
    let frame_timeout = Duration::from_millis(2500);
    let mut args = common::LOOPBACK_TO_NULL.to_vec();
    args.extend(["--frame-timeout", "2500ms"]);
    let mut server = Proc::spawn(&args);
    let admin = Admin::of(&mut server);
    let listening = server.wait_log("listening").expect("listening");
    let addr = listening["addr"].as_str().expect("addr").to_owned();

    const LORISES: usize = 50;
    let lorises: Vec<_> = (0..LORISES)
        .map(|_| {
            let addr = addr.clone();
            std::thread::spawn(move || slow_loris(&addr, Duration::from_secs(20)))
        })
        .collect();

    // Meanwhile a patient client: every object takes a second to arrive, in two parts, and
    // the connection is mid-object throughout (each write ends one object and begins the
    // next), for longer than frame_timeout in all. Each object is within the limit: acked.
    let patient = TcpStream::connect(&addr).expect("connect");
    assert_eq!(hello(&patient)["type"], "hello");
    let mut acks = BufReader::new(&patient);
    (&patient)
        .write_all(br#"{"ip":"192.0.2.1","#)
        .expect("send");
    for id in 1..=5 {
        std::thread::sleep(Duration::from_secs(1));
        (&patient)
            .write_all(format!("\"id\":{id}}}\n{{\"ip\":\"192.0.2.1\",").as_bytes())
            .expect("send");
        let mut line = String::new();
        acks.read_line(&mut line).expect("an ack");
        let ack: serde_json::Value = serde_json::from_str(&line).expect("json");
        assert_eq!(
            (ack["type"].as_str(), ack["id"].as_u64()),
            (Some("ack"), Some(id)),
            "{line}"
        );
    }
    // And a brisk client: whole items, answered while the lorises are being closed.
    let brisk = TcpStream::connect(&addr).expect("connect");
    assert_eq!(hello(&brisk)["type"], "hello");
    for id in 1..=20 {
        let ack = send_line(&brisk, &format!(r#"{{"ip":"192.0.2.2","id":{id}}}"#));
        assert_eq!(ack["type"], "ack", "{ack}");
    }

    for (i, loris) in lorises.into_iter().enumerate() {
        let end = loris.join().expect("loris thread");
        assert!(
            end.lines.contains(r#""code":"frame_timeout""#),
            "loris {i} was told why: {:?}",
            end.lines
        );
        // Closed no sooner than its first byte's frame_timeout, and promptly after it.
        assert!(
            end.lasted >= frame_timeout && end.lasted < frame_timeout + Duration::from_secs(2),
            "loris {i} lasted {:?}",
            end.lasted
        );
    }
    let text = admin.metrics();
    assert_eq!(
        metric(
            &text,
            "connwarden_connections_closed_total{reason=\"frame_timeout\"}"
        ),
        Some(LORISES as f64)
    );
    // The patient and brisk clients are still there.
    assert_eq!(admin.json("/connections")["total"], 2);
    assert_eq!(send_line(&patient, r#""id":6}"#)["type"], "ack");
    server.terminate();
    assert!(server.wait_exit(Duration::from_secs(20)).success());
}

/// A line of `/proc/PID/status`, in KiB (`VmRSS`, `VmHWM`).
fn status_kib(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    status
        .lines()
        .find_map(|line| line.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|value| value.trim().trim_end_matches(" kB").parse().ok())
        .unwrap_or_else(|| panic!("no {field} in {status}"))
}

/// What `PEERS` peers, each holding a partial object of `PARTIAL` bytes, did to a server
/// started with `extra` flags.
struct Siege {
    /// Growth of the server's peak resident memory over its resident memory before.
    peak_growth_kib: u64,
    /// Connections closed as `memory_pressure`.
    pressure_closes: f64,
    /// Partial objects held when the siege settled.
    buffered: f64,
    /// Peers told `memory_pressure` before their close.
    told: usize,
}

const PEERS: usize = 2000;
const PARTIAL: usize = 60 * 1024;

fn siege(extra: &[&str]) -> Siege {
    use std::io::Read;
    let mut args = common::LOOPBACK_TO_NULL.to_vec();
    // Only the budget closes anyone here.
    args.extend(["--frame-timeout", "off"]);
    args.extend(extra);
    let mut server = Proc::spawn(&args);
    let admin = Admin::of(&mut server);
    let listening = server.wait_log("listening").expect("listening");
    let addr = listening["addr"].as_str().expect("addr").to_owned();
    let pid = server.child.id();
    let before_kib = status_kib(pid, "VmRSS");

    // A client with whole items is served throughout.
    let brisk = TcpStream::connect(&addr).expect("connect");
    assert_eq!(hello(&brisk)["type"], "hello");
    let mut partial = br#"{"ip":"192.0.2.9","pad":""#.to_vec();
    partial.resize(PARTIAL, b'x');
    let mut peers = Vec::with_capacity(PEERS);
    for i in 0..PEERS {
        let mut peer = TcpStream::connect(&addr).expect("connect");
        peer.write_all(&partial).expect("send a partial object");
        peers.push(peer);
        if i % 500 == 0 {
            let ack = send_line(&brisk, &format!(r#"{{"ip":"192.0.2.2","id":{i}}}"#));
            assert_eq!(ack["type"], "ack", "{ack}");
        }
    }
    // Settled: every peer was accepted, and each still open has had its whole partial object
    // read (a peer closed under pressure may be closed before all of its bytes were read, so
    // the server's byte count is no sign); then the relief is done (what is held fits the
    // budget, or nothing is closed).
    let brisk_addr = brisk.local_addr().expect("local address").to_string();
    common::poll_until(Duration::from_secs(60), "every partial object read", || {
        let opened = metric(&admin.metrics(), "connwarden_connections_opened_total");
        let listed = admin.json("/connections?limit=10000");
        let items = listed["items"].as_array().expect("items");
        opened >= Some((PEERS + 1) as f64)
            && items.iter().all(|conn| {
                conn["peer"] == brisk_addr.as_str()
                    || conn["bytes_in"].as_u64() >= Some(PARTIAL as u64)
            })
    });
    let mut text = admin.metrics();
    let limit = metric(&text, "connwarden_buffered_limit_bytes").unwrap_or(f64::NAN);
    common::poll_until(Duration::from_secs(30), "the relief done", || {
        text = admin.metrics();
        limit.is_nan() || metric(&text, "connwarden_buffered_bytes").unwrap_or(0.0) <= limit
    });
    let ack = send_line(&brisk, r#"{"ip":"192.0.2.2","id":"last"}"#);
    assert_eq!(ack["type"], "ack", "{ack}");
    let peak_growth_kib = status_kib(pid, "VmHWM").saturating_sub(before_kib);

    // What the closed peers were told (an open peer's read times out).
    let mut told = 0;
    for peer in &mut peers {
        peer.set_read_timeout(Some(Duration::from_millis(1)))
            .expect("read timeout");
        let mut answer = Vec::new();
        let _ = peer.read_to_end(&mut answer);
        told +=
            usize::from(String::from_utf8_lossy(&answer).contains(r#""code":"memory_pressure""#));
    }
    let siege = Siege {
        peak_growth_kib,
        pressure_closes: metric(
            &text,
            "connwarden_connections_closed_total{reason=\"memory_pressure\"}",
        )
        .unwrap_or(0.0),
        buffered: metric(&text, "connwarden_buffered_bytes").unwrap_or(0.0),
        told,
    };
    server.terminate();
    assert!(server.wait_exit(Duration::from_secs(30)).success());
    siege
}

#[test]
fn max_buffered_bounds_the_memory_of_partial_objects_by_closing_the_largest_holders() {
    // Without the budget, every partial object is held: the measure of what the budget saves.
    let unbounded = siege(&["--max-buffered", "off"]);
    eprintln!(
        "off: peak RSS +{} KiB, {} bytes held",
        unbounded.peak_growth_kib, unbounded.buffered
    );
    assert_eq!(unbounded.pressure_closes, 0.0);
    assert!(unbounded.buffered >= (PEERS * PARTIAL) as f64);

    let budget = 32 << 20;
    let bounded = siege(&["--max-buffered", "32MiB"]);
    eprintln!(
        "32MiB: peak RSS +{} KiB, {} bytes held, {} closed, {} told",
        bounded.peak_growth_kib, bounded.buffered, bounded.pressure_closes, bounded.told
    );
    assert!(bounded.buffered <= budget as f64, "{}", bounded.buffered);
    // At most what fits stays: the rest were closed.
    let fit = budget / PARTIAL;
    assert!(
        bounded.pressure_closes >= (PEERS - fit) as f64 && bounded.pressure_closes < PEERS as f64,
        "{} closed",
        bounded.pressure_closes
    );
    assert!(
        bounded.told as f64 >= bounded.pressure_closes * 0.9,
        "{} told",
        bounded.told
    );
    // The peak: the budget, plus 2,000 connections' own state, plus what arrives while the
    // relief runs; far below the unbounded peak.
    assert!(
        bounded.peak_growth_kib < 64 * 1024,
        "peak RSS grew {} KiB",
        bounded.peak_growth_kib
    );
    assert!(bounded.peak_growth_kib * 2 < unbounded.peak_growth_kib);
}
