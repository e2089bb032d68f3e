//! Idle connections parked outside their task (`park_after`), through the binary: clients that
//! fall silent around the park threshold, then send again in random chunks, lose and reorder
//! nothing; what the server asks of a parked connection (a kick, a `goaway`, a shutdown)
//! reaches it; and it closes with its reason when its peer goes.

#![cfg(target_os = "linux")]

use std::collections::BTreeMap;
use std::time::Duration;

use connwarden_test_common as common;

use common::metric;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

/// The park threshold of these tests: short, so that a client's silences straddle it.
const PARK_AFTER_MS: u64 = 300;

/// One client's schedule, drawn from `seed`: before each item a silence of 0 to twice the park
/// threshold, then the item's bytes in 1 to 4 chunks with pauses of up to half of it between
/// them (a connection mid-object never parks, so the pauses test that too).
struct Schedule {
    rng: fastrand::Rng,
}

impl Schedule {
    fn silence(&mut self) -> Duration {
        Duration::from_millis(self.rng.u64(0..=2 * PARK_AFTER_MS))
    }

    fn chunks(&mut self, line: &[u8]) -> Vec<(Vec<u8>, Duration)> {
        let mut cuts: Vec<usize> = (0..self.rng.usize(0..4))
            .map(|_| self.rng.usize(1..line.len()))
            .collect();
        cuts.sort_unstable();
        cuts.dedup();
        let mut chunks = Vec::new();
        let mut from = 0;
        for cut in cuts.into_iter().chain([line.len()]) {
            let pause = Duration::from_millis(self.rng.u64(0..=PARK_AFTER_MS / 2));
            chunks.push((line[from..cut].to_vec(), pause));
            from = cut;
        }
        chunks
    }
}

/// Sends `items` items as client `name` on the schedule of `seed`, reading acks meanwhile;
/// returns the ids acknowledged, in the order they came.
async fn client(addr: String, name: String, items: u64, seed: u64) -> Vec<String> {
    let stream = TcpStream::connect(&addr).await.expect("connect");
    let (read, mut write) = stream.into_split();
    let acks = tokio::spawn(async move {
        let mut lines = BufReader::new(read).lines();
        let mut acked = Vec::new();
        while acked.len() < items as usize {
            let line = tokio::time::timeout(Duration::from_secs(20), lines.next_line())
                .await
                .expect("an ack within 20 s")
                .expect("read")
                .expect("no close before the last ack");
            let answer: serde_json::Value = serde_json::from_str(&line).expect("JSON");
            assert_eq!(answer["type"], "ack", "{answer}");
            acked.push(answer["id"].as_str().expect("id").to_owned());
        }
        acked
    });
    let mut schedule = Schedule {
        rng: fastrand::Rng::with_seed(seed),
    };
    for n in 0..items {
        tokio::time::sleep(schedule.silence()).await;
        let line = format!(r#"{{"ip":"10.1.2.3","id":"{name}-{n}","client":"{name}","n":{n}}}"#);
        for (chunk, pause) in schedule.chunks(format!("{line}\n").as_bytes()) {
            write.write_all(&chunk).await.expect("write");
            tokio::time::sleep(pause).await;
        }
    }
    let acked = acks.await.expect("acks");
    drop(write);
    acked
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_parked_and_woken_at_random_lose_and_reorder_nothing() {
    const CLIENTS: usize = 16;
    const ITEMS: u64 = 30;
    let seed = std::env::var("CW_PARK_SEED")
        .ok()
        .and_then(|seed| seed.parse().ok())
        .unwrap_or_else(|| fastrand::u64(..));
    eprintln!("schedule seed {seed} (CW_PARK_SEED={seed} replays it)");
    let dir = tempfile::tempdir().expect("tempdir");
    let park_after = format!("{PARK_AFTER_MS}ms");
    let (mut server, admin, addr) =
        common::serve().start_in(dir.path(), &["--park-after", &park_after]);

    let clients: Vec<_> = (0..CLIENTS)
        .map(|c| {
            let name = format!("c{c}");
            tokio::spawn(client(
                addr.clone(),
                name,
                ITEMS,
                seed.wrapping_add(c as u64),
            ))
        })
        .collect();
    for (c, client) in clients.into_iter().enumerate() {
        let acked = client.await.expect("client");
        let expected: Vec<String> = (0..ITEMS).map(|n| format!("c{c}-{n}")).collect();
        assert_eq!(
            acked, expected,
            "c{c}: every ack, once, in order (seed {seed})"
        );
    }

    let metrics = admin.metrics();
    let parks = metric(&metrics, "connwarden_parks_total").expect("parks_total");
    eprintln!("{parks} parks");
    // Each client is silent past the threshold about a quarter of the time: far more parks
    // than clients, or the test did not test parking.
    assert!(
        parks >= (CLIENTS * 2) as f64,
        "only {parks} parks (seed {seed})"
    );
    server.terminate();
    server.wait_exit(Duration::from_secs(10));
    let mut stored: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    let written = std::fs::read_to_string(dir.path().join("items.ndjson")).expect("sink");
    for line in written.lines() {
        let record: serde_json::Value = serde_json::from_str(line).expect("record");
        let item = &record["item"];
        let client = item["client"].as_str().expect("client").to_owned();
        stored
            .entry(client)
            .or_default()
            .push(item["n"].as_u64().expect("n"));
    }
    common::each_client_stored_once_in_order(stored, CLIENTS, ITEMS);
}

/// Waits until `admin`'s metrics count `n` parked connections.
fn wait_parked(admin: &common::Admin, n: f64) {
    common::poll_until(Duration::from_secs(10), "connections parked", || {
        metric(&admin.metrics(), "connwarden_parked_connections") == Some(n)
    });
}

#[test]
fn a_parked_connection_hears_kicks_goaways_and_the_shutdown() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (mut server, admin, addr) = common::serve().start_in(
        dir.path(),
        &["--park-after", "200ms", "--goaway-window", "1m"],
    );
    let mut peers: Vec<_> = (0..3).map(|_| common::connect_prompt(&addr)).collect();
    wait_parked(&admin, 3.0);

    let listed = admin.json("/connections");
    let ids: Vec<u64> = listed["items"]
        .as_array()
        .expect("items")
        .iter()
        .map(|c| c["id"].as_u64().expect("id"))
        .collect();
    assert_eq!(ids.len(), 3, "{listed}");

    let (status, body) = admin.request("DELETE", &format!("/connections/{}", ids[0]));
    assert!((200..300).contains(&status), "{status} {body}");
    let closed = server.wait_close("kicked");
    assert_eq!(closed["conn_id"], ids[0]);
    assert_eq!(read_to_end(&mut peers[0]), "", "a kick sends nothing");

    let drain = std::process::Command::new(common::binary())
        .args([
            "drain",
            "--admin",
            &admin.addr,
            "--fraction",
            "1",
            "--over",
            "1s",
        ])
        .output()
        .expect("connwarden drain");
    assert!(drain.status.success(), "{drain:?}");
    for peer in &mut peers[1..] {
        let line = read_line(peer);
        assert!(line.contains(r#""type":"goaway""#), "{line}");
    }
    wait_parked(&admin, 2.0);

    server.terminate();
    for peer in &mut peers[1..] {
        let line = read_line(peer);
        assert!(line.contains("shutting_down"), "{line}");
    }
    server.wait_exit(Duration::from_secs(10));
}

#[test]
fn a_parked_connection_closed_by_its_peer_is_closed_at_once() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (mut server, admin, addr) =
        common::serve().start_in(dir.path(), &["--park-after", "200ms"]);
    let peer = common::connect_prompt(&addr);
    wait_parked(&admin, 1.0);
    drop(peer);
    let closed = server.wait_close("peer_closed");
    assert!(closed["detection_delay_ms"].as_u64().is_some(), "{closed}");
    wait_parked(&admin, 0.0);
}

fn read_line(peer: &mut std::net::TcpStream) -> String {
    use std::io::Read;
    let mut line = Vec::new();
    let mut byte = [0u8; 1];
    while peer.read(&mut byte).expect("read within the bound") == 1 {
        if byte[0] == b'\n' {
            break;
        }
        line.push(byte[0]);
    }
    String::from_utf8(line).expect("UTF-8")
}

fn read_to_end(peer: &mut std::net::TcpStream) -> String {
    use std::io::Read;
    let mut rest = String::new();
    let _ = peer.read_to_string(&mut rest);
    rest
}
