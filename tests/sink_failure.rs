//! A sink that fails: its records are never acknowledged, each sender is told, and the failure
//! is counted; later records are stored and acknowledged as usual.

use connwarden_test_common as common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use common::{test_config, TestServer};
use connwarden::sink::{Sink, SinkError, SinkFuture};
use connwarden::Record;

/// Fails its first batch, then keeps the ids it stores.
struct FlakySink {
    batches: Arc<AtomicUsize>,
    stored: Arc<std::sync::Mutex<Vec<u64>>>,
}

impl Sink for FlakySink {
    fn write_batch<'a>(&'a mut self, batch: &'a [Record]) -> SinkFuture<'a> {
        Box::pin(async move {
            if self.batches.fetch_add(1, Ordering::SeqCst) == 0 {
                return Err(SinkError::Io {
                    sink: "flaky".into(),
                    source: std::io::Error::other("disk full"),
                });
            }
            let mut stored = self.stored.lock().unwrap();
            for record in batch {
                let item: serde_json::Value = serde_json::from_slice(&record.item).unwrap();
                stored.push(item["id"].as_u64().unwrap());
            }
            Ok(())
        })
    }

    fn name(&self) -> String {
        "flaky".into()
    }
}

#[tokio::test]
async fn failed_batch_is_reported_not_acknowledged_and_later_items_are_stored() {
    let stored = Arc::new(std::sync::Mutex::new(Vec::new()));
    let sink = FlakySink {
        batches: Arc::new(AtomicUsize::new(0)),
        stored: Arc::clone(&stored),
    };
    let server = TestServer::start_with_sink(test_config(), sink).await;
    let mut client = server.connect().await;
    client.send(b"{\"ip\":\"192.0.2.1\",\"id\":1}\n").await;
    let failed = client.line().await;
    assert_eq!(failed["type"], "error");
    assert_eq!(failed["code"], "sink_failed");
    assert_eq!(failed["id"], 1);
    client.send(b"{\"ip\":\"192.0.2.1\",\"id\":2}\n").await;
    let ack = client.line().await;
    assert_eq!(ack, serde_json::json!({"type": "ack", "id": 2}));
    drop(client);
    let report = server.shutdown().await;
    assert_eq!(report.failed, 1);
    assert_eq!(report.written, 1);
    assert_eq!(*stored.lock().unwrap(), vec![2]);
}
