//! A full queue slows clients (backpressure) or drops with a count and a reply (drop policies);
//! it never loses an item silently.

use connwarden_test_common as common;

use std::collections::HashSet;

use common::{test_config, wait_until, TestServer, PROMPT};
use connwarden::config::Overflow;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncWriteExt};

#[tokio::test]
async fn tiny_queue_with_backpressure_delivers_every_item_in_order() {
    const ITEMS: usize = 20_000;
    let mut config = test_config();
    config.queue = 2;
    config.overflow = Overflow::Backpressure;
    let mut server = TestServer::start(config).await;
    let client = server.connect().await;
    let mut writer = client.writer;
    let sender = tokio::spawn(async move {
        let mut batch = String::new();
        for i in 0..ITEMS {
            batch.push_str(&format!("{{\"ip\":\"192.0.2.{}\",\"seq\":{i}}}\n", i % 200));
            if batch.len() > 8192 {
                writer.write_all(batch.as_bytes()).await.unwrap();
                batch.clear();
            }
        }
        writer.write_all(batch.as_bytes()).await.unwrap();
        writer
    });
    // The sink's channel holds 1024 records; the queue 2: the server must pause reading.
    for i in 0..ITEMS {
        let record = server.next_record().await;
        let item: serde_json::Value = serde_json::from_slice(&record.item).unwrap();
        assert_eq!(item["seq"], i, "items arrive in order, none missing");
    }
    let _writer = tokio::time::timeout(PROMPT, sender).await.unwrap().unwrap();
    let stats = server.queue.stats();
    assert_eq!(stats.dropped, 0);
    assert_eq!(stats.pushed, ITEMS as u64);
    server.shutdown().await;
}

/// `n` items with ids 0..n, one per line.
fn items_with_ids(n: usize) -> String {
    (0..n)
        .map(|i| format!("{{\"ip\":\"192.0.2.1\",\"id\":{i}}}\n"))
        .collect()
}

#[tokio::test]
async fn drop_newest_counts_drops_and_tells_the_sender() {
    const ITEMS: usize = 200;
    let mut config = test_config();
    config.queue = 1;
    config.overflow = Overflow::DropNewest;
    let mut server = TestServer::start(config).await;
    let mut records = server.records.take().unwrap();
    let mut client = server.connect().await;
    client.send(items_with_ids(ITEMS).as_bytes()).await;
    // Nobody reads the sink's channel yet, so the sink stalls and the queue overflows.
    wait_until(PROMPT, || server.queue.stats().dropped > 0).await;
    let reader = tokio::spawn(async move {
        let mut acked = HashSet::new();
        let mut dropped = HashSet::new();
        while acked.len() + dropped.len() < ITEMS {
            let reply = client.line().await;
            let id = reply["id"].as_u64().expect("every reply names its item");
            match reply["type"].as_str() {
                Some("ack") => assert!(acked.insert(id)),
                Some("error") => {
                    assert_eq!(reply["code"], "queue_full");
                    assert!(dropped.insert(id));
                }
                other => panic!("unexpected reply {other:?}"),
            }
        }
        (acked, dropped, client)
    });
    let drainer = tokio::spawn(async move {
        let mut ids = HashSet::new();
        while let Some(record) = records.recv().await {
            let item: serde_json::Value = serde_json::from_slice(&record.item).unwrap();
            ids.insert(item["id"].as_u64().unwrap());
        }
        ids
    });
    let (acked, dropped, client) = tokio::time::timeout(PROMPT, reader).await.unwrap().unwrap();
    assert!(acked.is_disjoint(&dropped));
    assert!(!dropped.is_empty());
    assert_eq!(server.queue.stats().dropped, dropped.len() as u64);
    drop(client);
    server.shutdown().await;
    let stored = drainer.await.unwrap();
    assert_eq!(stored, acked, "exactly the acknowledged items were stored");
}

#[tokio::test]
async fn drop_oldest_tells_the_sender_of_the_evicted_item() {
    const ITEMS: usize = 200;
    let mut config = test_config();
    config.queue = 1;
    config.overflow = Overflow::DropOldest;
    let mut server = TestServer::start(config).await;
    let mut records = server.records.take().unwrap();
    let mut client = server.connect().await;
    client.send(items_with_ids(ITEMS).as_bytes()).await;
    wait_until(PROMPT, || server.queue.stats().dropped > 0).await;
    let drainer = tokio::spawn(async move {
        let mut n = 0;
        while records.recv().await.is_some() {
            n += 1;
        }
        n
    });
    let mut replies = 0;
    let mut evicted = 0;
    while replies < ITEMS {
        let reply = client.line().await;
        replies += 1;
        if reply["type"] == "error" {
            assert_eq!(reply["code"], "queue_full");
            evicted += 1;
        }
    }
    assert!(evicted > 0);
    assert_eq!(server.queue.stats().dropped, evicted as u64);
    drop(client);
    server.shutdown().await;
    assert_eq!(drainer.await.unwrap(), ITEMS - evicted);
}

/// What the sink has not yet answered is bounded per connection by `max_pending_replies`, not
/// by the queue: with the sink stalled, a connection stops taking items once that many of its
/// own wait for an answer, and goes on, acknowledging every item once and in order, as soon as
/// the sink moves again.
#[tokio::test]
async fn unanswered_items_stop_at_max_pending_replies_until_the_sink_moves() {
    const ITEMS: usize = 5_000;
    const PENDING: usize = 16;
    // The test server's channel sink takes this many records before it waits for the test.
    const SINK_CHANNEL: usize = 1024;
    let mut config = test_config();
    config.max_pending_replies = PENDING;
    let mut server = TestServer::start(config).await;
    let mut records = server.records.take().unwrap();
    let client = server.connect().await;
    let (mut reader, mut writer) = (client.reader, client.writer);
    let sender = tokio::spawn(async move {
        writer
            .write_all(items_with_ids(ITEMS).as_bytes())
            .await
            .unwrap();
        writer
    });
    server.wait_live(1).await;
    let items = || server.registry.snapshot()[0].items as usize;
    // The sink fills its channel, then waits: answers stop, and so does the connection.
    wait_until(PROMPT, || items() >= SINK_CHANNEL - PENDING).await;
    let deadline = tokio::time::Instant::now() + Duration::from_millis(300);
    while tokio::time::Instant::now() < deadline {
        let taken = items();
        assert!(
            taken <= SINK_CHANNEL + PENDING,
            "{taken} items taken with {SINK_CHANNEL} answered at most"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let drainer = tokio::spawn(async move {
        let mut n = 0;
        while n < ITEMS && records.recv().await.is_some() {
            n += 1;
        }
        (n, records)
    });
    let mut line = String::new();
    for expected in 0..ITEMS {
        line.clear();
        tokio::time::timeout(PROMPT, reader.read_line(&mut line))
            .await
            .expect("an ack within the bound")
            .unwrap();
        let reply: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(reply["type"], "ack", "{line}");
        assert_eq!(reply["id"], expected, "acks in order, each once");
    }
    let (stored, _records) = drainer.await.unwrap();
    assert_eq!((stored, items()), (ITEMS, ITEMS));
    drop(sender.await.unwrap());
    drop(reader);
    server.shutdown().await;
}
