//! `goaway`: a client told to reconnect stops sending new items, waits for the acks of those in
//! flight, closes, and connects again after a random delay inside the window the server gave,
//! so that a fleet told together comes back spread out (issue 29). Against a scripted server on
//! real sockets, with many library clients at once, and through the server itself.

use connwarden_test_common as common;

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{test_config, wait_until, TestServer, PROMPT};
use connwarden::client::{Client, ClientConfig, OutItem};
use connwarden::CloseReason;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;

/// What the scripted server saw of one client.
#[derive(Debug, Default)]
struct Seen {
    /// When each of its connections was accepted, and when the client closed it.
    connections: Vec<(Instant, Option<Instant>)>,
    /// Items received per connection, by their `n`.
    items: Vec<Vec<u64>>,
    /// Items that arrived on the first connection after its `goaway` was written.
    after_goaway: usize,
}

/// Acks every item; on each client's first connection, after `goaway_after` items, sends
/// `goaway` with `within`, then goes on acking what is in flight until the client closes.
async fn scripted_server(
    listener: TcpListener,
    goaway_after: usize,
    within: Duration,
    seen: Arc<Mutex<HashMap<String, Seen>>>,
) {
    loop {
        let (stream, _) = listener.accept().await.unwrap();
        let accepted = Instant::now();
        let seen = Arc::clone(&seen);
        tokio::spawn(async move {
            let (read, mut write) = stream.into_split();
            let mut lines = BufReader::new(read).lines();
            let (mut client, mut connection, mut on_this, mut told) = (String::new(), 0, 0, false);
            while let Some(line) = lines.next_line().await.unwrap() {
                let message: serde_json::Value = serde_json::from_str(&line).unwrap();
                if message["type"] == "hello" {
                    client = message["client_id"].as_str().unwrap().to_owned();
                    {
                        let mut seen = seen.lock().unwrap();
                        let entry = seen.entry(client.clone()).or_default();
                        entry.connections.push((accepted, None));
                        entry.items.push(Vec::new());
                        connection = entry.connections.len() - 1;
                    }
                    let hello = "{\"type\":\"hello\",\"heartbeat_ms\":0,\"max_frame\":65536}\n";
                    write.write_all(hello.as_bytes()).await.unwrap();
                    continue;
                }
                let id = message["id"].clone();
                {
                    let mut seen = seen.lock().unwrap();
                    let entry = seen.get_mut(&client).unwrap();
                    entry.items[connection].push(message["n"].as_u64().unwrap());
                    if told {
                        entry.after_goaway += 1;
                    }
                }
                let ack = format!("{{\"type\":\"ack\",\"id\":{id}}}\n");
                write.write_all(ack.as_bytes()).await.unwrap();
                on_this += 1;
                if connection == 0 && on_this == goaway_after {
                    let goaway = format!(
                        "{{\"type\":\"goaway\",\"reconnect_within_ms\":{}}}\n",
                        within.as_millis()
                    );
                    write.write_all(goaway.as_bytes()).await.unwrap();
                    told = true;
                }
            }
            let mut seen = seen.lock().unwrap();
            seen.get_mut(&client).unwrap().connections[connection].1 = Some(Instant::now());
        });
    }
}

/// `clients` library clients, each sending items `{"ip":…,"n":0..items}` one every 5 ms (so
/// that items keep coming while a goaway is handled), then finishing.
fn start_clients(
    clients: usize,
    addr: std::net::SocketAddr,
    items: u64,
) -> Vec<tokio::task::JoinHandle<connwarden::client::Summary>> {
    (0..clients)
        .map(|_| {
            tokio::spawn(async move {
                let client = Client::start(ClientConfig::new(addr.to_string()));
                for n in 0..items {
                    let item = format!("{{\"ip\":\"192.0.2.1\",\"n\":{n}}}");
                    client
                        .send(OutItem::from_json(item.into()).unwrap())
                        .await
                        .unwrap();
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                client.finish().await.unwrap()
            })
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_told_goaway_finish_in_flight_items_and_come_back_spread_over_the_window() {
    const CLIENTS: usize = 24;
    const ITEMS: u64 = 120;
    const GOAWAY_AFTER: usize = 30;
    let within = Duration::from_millis(1500);
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = Arc::new(Mutex::new(HashMap::new()));
    let server = tokio::spawn(scripted_server(
        listener,
        GOAWAY_AFTER,
        within,
        Arc::clone(&seen),
    ));
    let clients = start_clients(CLIENTS, addr, ITEMS);
    common::every_item_acked_over_two_connections(clients, ITEMS).await;
    server.abort();

    let seen = seen.lock().unwrap();
    assert_eq!(seen.len(), CLIENTS);
    let mut delays = Vec::new();
    for (client, seen) in seen.iter() {
        let [(_, Some(closed)), (reconnected, _)] = seen.connections[..] else {
            panic!("{client}: connections {:?}", seen.connections);
        };
        // The client closed the first connection itself, after its in-flight items were acked,
        // and came back after a delay inside the window.
        let delay = reconnected.saturating_duration_since(closed);
        assert!(
            delay <= within + Duration::from_millis(500),
            "{client}: {delay:?}"
        );
        delays.push(delay);
        // Every item once, in order, across both connections.
        let all: Vec<u64> = seen.items.concat();
        assert_eq!(all, (0..ITEMS).collect::<Vec<_>>(), "{client}");
        // After goaway, at most what was already on its way (the client's write buffer).
        assert!(
            seen.after_goaway <= 4,
            "{client}: {} after goaway",
            seen.after_goaway
        );
    }
    delays.sort();
    let spread = delays[CLIENTS - 1] - delays[0];
    eprintln!(
        "reconnect delays after goaway (window {within:?}): min {:?}, median {:?}, max {:?}",
        delays[0],
        delays[CLIENTS / 2],
        delays[CLIENTS - 1]
    );
    assert!(
        spread >= within / 3,
        "{CLIENTS} reconnects within {spread:?} of each other: {delays:?}"
    );
}

/// Through the server: `Registry::goaway_all` makes every live connection send `goaway` (a raw
/// client reads it as one line); library clients drain, close and come back on a new
/// connection, and every item is stored once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_server_tells_every_connection_goaway_and_clients_come_back_losing_nothing() {
    const CLIENTS: usize = 3;
    const ITEMS: u64 = 200;
    let mut server = TestServer::start(test_config()).await;
    let mut records = server.records.take().unwrap();
    let stored = tokio::spawn(async move {
        let mut by_client: BTreeMap<String, Vec<u64>> = BTreeMap::new();
        while let Some(record) = records.recv().await {
            let item: serde_json::Value = serde_json::from_slice(&record.item).unwrap();
            let client = record
                .client_id()
                .map(|c| c.to_string())
                .unwrap_or_default();
            by_client
                .entry(client)
                .or_default()
                .push(item["n"].as_u64().unwrap());
        }
        by_client
    });
    let mut raw = server.connect().await;
    raw.send(b"{\"type\":\"hello\"}\n").await;
    assert_eq!(raw.line().await["type"], "hello");
    let clients = start_clients(CLIENTS, server.addr, ITEMS);
    // Every client connected and sending.
    wait_until(PROMPT, || {
        let live = server.registry.snapshot();
        live.len() == CLIENTS + 1 && live.iter().filter(|c| c.items > 10).count() == CLIENTS
    })
    .await;
    assert_eq!(
        server.registry.goaway_all(Duration::from_millis(700)),
        CLIENTS + 1
    );
    let told = raw.line().await;
    assert_eq!(
        (told["type"].as_str(), told["reconnect_within_ms"].as_u64()),
        (Some("goaway"), Some(700))
    );
    common::every_item_acked_over_two_connections(clients, ITEMS).await;
    // The first connection of each ended by its client, in good order.
    for _ in 0..CLIENTS {
        assert_eq!(server.next_close().await.reason, CloseReason::PeerClosed);
    }
    drop(raw);
    server.shutdown().await;
    let stored = stored.await.unwrap();
    common::each_client_stored_once_in_order(stored, CLIENTS, ITEMS);
}

/// A refusal at accept that says when to come back (`retry_after_ms`) is honoured: the client
/// waits that long, not its own 100 ms backoff, and then delivers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refusal_with_retry_after_is_honoured() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(async move {
        let mut accepted = Vec::new();
        for attempt in 0..2 {
            let (stream, _) = listener.accept().await.unwrap();
            accepted.push(Instant::now());
            let (read, mut write) = stream.into_split();
            let mut lines = BufReader::new(read).lines();
            let hello = lines.next_line().await.unwrap().expect("hello");
            assert!(hello.contains("\"hello\""), "{hello}");
            if attempt == 0 {
                let refusal = "{\"type\":\"error\",\"code\":\"server_full\",\"message\":\"full\",\"retry_after_ms\":1500}\n";
                write.write_all(refusal.as_bytes()).await.unwrap();
                continue;
            }
            write
                .write_all(b"{\"type\":\"hello\",\"heartbeat_ms\":0,\"max_frame\":65536}\n")
                .await
                .unwrap();
            while let Ok(Some(line)) = lines.next_line().await {
                let item: serde_json::Value = serde_json::from_str(&line).unwrap();
                let ack = format!("{{\"type\":\"ack\",\"id\":{}}}\n", item["id"]);
                write.write_all(ack.as_bytes()).await.unwrap();
            }
            break;
        }
        accepted
    });
    let client = Client::start(ClientConfig::new(addr.to_string()));
    client
        .send(OutItem::from_json(br#"{"ip":"192.0.2.1"}"#.to_vec().into()).unwrap())
        .await
        .unwrap();
    let summary = tokio::time::timeout(PROMPT, client.finish())
        .await
        .expect("the client finishes")
        .unwrap();
    assert_eq!(
        (summary.acknowledged, summary.failed_attempts),
        (1, 1),
        "{summary:?}"
    );
    let accepted = server.await.unwrap();
    let waited = accepted[1] - accepted[0];
    assert!(
        waited >= Duration::from_millis(1500) && waited < Duration::from_millis(2500),
        "came back after {waited:?}; the server said 1500 ms"
    );
}
