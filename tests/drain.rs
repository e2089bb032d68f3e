//! Paced drain, through the binary: `connwarden drain --fraction F --over D` tells that share of
//! the live connections `goaway`, oldest first, at an even pace over the window; raw clients
//! that ignore it are closed as `drained` once their time to reconnect and the grace are up;
//! library clients come back with every item acknowledged once.

use connwarden_test_common as common;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{metric, Admin};
use connwarden::client::{Client, ClientConfig, OutItem};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

/// Runs `connwarden drain` with `args` against `admin`; its standard output.
async fn drain(admin: &Admin, args: &[&str]) -> String {
    let mut command = std::process::Command::new(common::binary());
    command.args(["drain", "--admin", &admin.addr]).args(args);
    let out = tokio::task::spawn_blocking(move || command.output().expect("connwarden drain"))
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Polls `GET /drain` until the drain is done.
async fn drain_done(admin: &Admin, bound: Duration) -> serde_json::Value {
    let deadline = Instant::now() + bound;
    loop {
        let reader = admin.clone();
        let status = tokio::task::spawn_blocking(move || reader.json("/drain"))
            .await
            .unwrap();
        if status["state"] == "done" {
            return status;
        }
        assert!(
            Instant::now() < deadline,
            "drain not done within {bound:?}: {status}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn half_of_a_thousand_raw_connections_told_goaway_evenly_over_the_window() {
    const CONNECTIONS: usize = 1000;
    let dir = tempfile::tempdir().expect("tempdir");
    let flags = [
        "--goaway-window",
        "1s",
        "--shutdown-grace",
        "1s",
        "--max-connections",
        "2000",
    ];
    let (_server, admin, addr) = common::serve().start_in(dir.path(), &flags);

    // Raw clients that read and ignore everything: each notes when its goaway came. Opened one
    // after the other, so the first half are the oldest.
    let told: Arc<Mutex<BTreeMap<usize, Instant>>> = Arc::default();
    let mut readers = Vec::new();
    for k in 0..CONNECTIONS {
        let mut stream = TcpStream::connect(&addr).await.expect("connect");
        stream.write_all(b"{\"type\":\"hello\"}\n").await.unwrap();
        let mut lines = BufReader::new(stream).lines();
        let answer = lines.next_line().await.unwrap().expect("hello answer");
        assert!(answer.contains("\"hello\""), "{answer}");
        let told = Arc::clone(&told);
        readers.push(tokio::spawn(async move {
            while let Ok(Some(line)) = lines.next_line().await {
                if line.contains("\"goaway\"") {
                    told.lock().unwrap().insert(k, Instant::now());
                }
            }
        }));
    }
    assert_eq!(admin.json("/connections")["total"], CONNECTIONS);

    let began = Instant::now();
    let printed = drain(&admin, &["--fraction", "0.5", "--over", "10s"]).await;
    assert!(
        printed.contains("500 of 1000 live connections chosen"),
        "{printed}"
    );
    let status = drain_done(&admin, Duration::from_secs(30)).await;
    assert_eq!(status["told"], 500, "{status}");

    let told = told.lock().unwrap().clone();
    assert!((495..=505).contains(&told.len()), "{} told", told.len());
    // The oldest half, and each second of the window holds at most twice its share (50).
    assert!(
        told.keys().all(|&k| k < CONNECTIONS / 2),
        "{:?}",
        told.keys().max()
    );
    let mut per_second = [0usize; 11];
    for at in told.values() {
        per_second[(at.duration_since(began).as_secs() as usize).min(10)] += 1;
    }
    assert!(per_second.iter().all(|&n| n <= 100), "{per_second:?}");
    assert!(per_second[..10].iter().all(|&n| n >= 25), "{per_second:?}");

    // They ignored it: closed as drained, by an operator's act; the others stay.
    assert_eq!(status["closed_as_drained"], 500, "{status}");
    let closed = admin.json("/closed?reason=drained&limit=1");
    assert_eq!(closed["total"], 500, "{closed}");
    assert_eq!(closed["items"][0]["ended_by"], "operator", "{closed}");
    assert_eq!(admin.json("/connections")["total"], CONNECTIONS / 2);
    let metrics = admin.metrics();
    assert_eq!(
        metric(&metrics, "connwarden_drain_goaways_total"),
        Some(500.0)
    );
    assert_eq!(
        metric(&metrics, "connwarden_drain_pending_connections"),
        Some(0.0)
    );
    for reader in readers {
        reader.abort();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn library_clients_drained_come_back_with_every_item_acknowledged_once() {
    const CLIENTS: usize = 10;
    const ITEMS: u64 = 300;
    let dir = tempfile::tempdir().expect("tempdir");
    let (_server, admin, addr) = common::serve().start_in(dir.path(), &["--goaway-window", "1s"]);
    let clients: Vec<_> = (0..CLIENTS)
        .map(|c| {
            let addr = addr.clone();
            tokio::spawn(async move {
                let mut config = ClientConfig::new(addr);
                config.client_id = format!("client-{c}");
                let client = Client::start(config);
                for n in 0..ITEMS {
                    let item = format!("{{\"ip\":\"192.0.2.1\",\"n\":{n}}}");
                    let item = OutItem::from_json(item.into()).unwrap();
                    client.send(item).await.unwrap();
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                client.finish().await.unwrap()
            })
        })
        .collect();
    let listed = admin.clone();
    common::wait_until(common::PROMPT, || {
        let page = listed.json("/connections");
        page["total"] == CLIENTS
            && page["items"]
                .as_array()
                .is_some_and(|items| items.iter().all(|c| c["items"].as_u64() > Some(10)))
    })
    .await;
    let printed = drain(&admin, &["--fraction", "1", "--over", "1s"]).await;
    assert!(
        printed.contains("10 of 10 live connections chosen"),
        "{printed}"
    );
    common::every_item_acked_over_two_connections(clients, ITEMS).await;
    let status = drain_done(&admin, Duration::from_secs(10)).await;
    assert_eq!(
        (
            status["told"].as_u64(),
            status["closed_as_drained"].as_u64()
        ),
        (Some(10), Some(0))
    );

    // Every item in the sink once, in order, per client.
    let mut stored: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    let text = std::fs::read_to_string(dir.path().join("items.ndjson")).unwrap();
    for line in text.lines() {
        let record: serde_json::Value = serde_json::from_str(line).unwrap();
        let client = record["client_id"].as_str().unwrap().to_owned();
        stored
            .entry(client)
            .or_default()
            .push(record["item"]["n"].as_u64().unwrap());
    }
    common::each_client_stored_once_in_order(stored, CLIENTS, ITEMS);
}
