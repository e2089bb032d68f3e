//! Items arrive whole however the stream is cut, and bad items cost only themselves.

use connwarden_test_common as common;

use common::{test_config, TestServer};

#[tokio::test]
async fn objects_back_to_back_without_delimiter_all_arrive() {
    let mut server = TestServer::start(test_config()).await;
    let mut client = server.connect().await;
    client
        .send(br#"{"ip":"192.0.2.1","n":1}{"ip":"192.0.2.2","n":2}{"ip":"2001:db8::3","n":3}"#)
        .await;
    for n in 1..=3 {
        let record = server.next_record().await;
        let item: serde_json::Value = serde_json::from_slice(&record.item).unwrap();
        assert_eq!(item["n"], n);
    }
    drop(client);
    server.shutdown().await;
}

#[tokio::test]
async fn objects_split_byte_by_byte_arrive_unchanged() {
    let mut server = TestServer::start(test_config()).await;
    let mut client = server.connect().await;
    let stream = "{\"ip\":\"198.51.100.7\",\"note\":\"braces } { and \\\" quotes\"}\n{\"IP\":\"::1\",\"nested\":{\"a\":[1,{\"b\":null}]}}";
    for byte in stream.as_bytes() {
        client.send(&[*byte]).await;
        client.writer.flush_now().await;
    }
    let first = server.next_record().await;
    assert_eq!(
        &first.item[..],
        br#"{"ip":"198.51.100.7","note":"braces } { and \" quotes"}"#
    );
    let second = server.next_record().await;
    assert_eq!(
        &second.item[..],
        br#"{"IP":"::1","nested":{"a":[1,{"b":null}]}}"#
    );
    assert_eq!(second.ip, "::1".parse::<std::net::IpAddr>().unwrap());
    drop(client);
    server.shutdown().await;
}

#[tokio::test]
async fn go_style_ip_keys_are_accepted_and_kept_as_sent() {
    let mut server = TestServer::start(test_config()).await;
    let mut client = server.connect().await;
    client
        .send(b"{\"IP\":\"10.1.2.3\"}\n{\"Ip\":\"10.1.2.4\",\"Extra\":true}\n")
        .await;
    let a = server.next_record().await;
    let b = server.next_record().await;
    assert_eq!(&a.item[..], br#"{"IP":"10.1.2.3"}"#);
    assert_eq!(&b.item[..], br#"{"Ip":"10.1.2.4","Extra":true}"#);
    drop(client);
    server.shutdown().await;
}

#[tokio::test]
async fn invalid_items_get_errors_and_later_valid_items_still_arrive() {
    let mut server = TestServer::start(test_config()).await;
    let mut client = server.connect().await;
    client
        .send(b"not json at all\n{\"ip\":\"1.2.3.4\",}\n{\"ip\":\"300.1.1.1\",\"id\":7}\n{\"host\":\"x\"}\n{\"ip\":\"203.0.113.9\",\"id\":8}\n")
        .await;
    let codes: Vec<String> = {
        let mut codes = Vec::new();
        for _ in 0..4 {
            codes.push(client.line().await["code"].as_str().unwrap().to_owned());
        }
        codes
    };
    assert_eq!(
        codes,
        ["invalid_json", "invalid_json", "invalid_ip", "missing_ip"]
    );
    let ack = client.line().await;
    assert_eq!(ack, serde_json::json!({"type": "ack", "id": 8}));
    let record = server.next_record().await;
    assert_eq!(
        record.ip,
        "203.0.113.9".parse::<std::net::IpAddr>().unwrap()
    );
    let snapshot = server.registry.snapshot();
    assert_eq!(snapshot[0].errors, 4);
    assert_eq!(snapshot[0].items, 1);
    drop(client);
    server.shutdown().await;
}

#[tokio::test]
async fn every_item_with_an_id_is_acknowledged_in_order() {
    let mut server = TestServer::start(test_config()).await;
    let mut client = server.connect().await;
    let mut batch = String::new();
    for i in 0..500 {
        batch.push_str(&format!("{{\"ip\":\"192.0.2.{}\",\"id\":{i}}}\n", i % 250));
    }
    client.send(batch.as_bytes()).await;
    for i in 0..500 {
        let ack = client.line().await;
        assert_eq!(ack["type"], "ack");
        assert_eq!(ack["id"], i);
        server.next_record().await;
    }
    drop(client);
    server.shutdown().await;
}

#[tokio::test]
async fn hello_and_ping_are_answered() {
    let server = TestServer::start(test_config()).await;
    let mut client = server.connect().await;
    client
        .send(b"{\"type\":\"hello\",\"client\":\"test\"}\n{\"type\":\"ping\"}\n")
        .await;
    let hello = client.line().await;
    assert_eq!(hello["type"], "hello");
    assert_eq!(hello["heartbeat_ms"], 15000);
    assert_eq!(client.line().await["type"], "pong");
    drop(client);
    server.shutdown().await;
}

/// Writes each byte in its own segment (Nagle would glue them).
trait FlushNow {
    async fn flush_now(&mut self);
}

impl FlushNow for tokio::net::tcp::OwnedWriteHalf {
    async fn flush_now(&mut self) {
        use tokio::io::AsyncWriteExt;
        self.flush().await.unwrap();
        tokio::task::yield_now().await;
    }
}

#[tokio::test]
async fn ipv4_and_ipv6_listeners_both_take_items() {
    let mut config = test_config();
    config.listen = vec!["127.0.0.1:0".parse().unwrap(), "[::1]:0".parse().unwrap()];
    let (sink, mut records) = connwarden::sink::ChannelSink::new(16);
    let server = connwarden::Server::builder(config)
        .sink(sink)
        .build()
        .unwrap();
    let listeners = server.bind().unwrap();
    let addrs: Vec<_> = listeners.iter().map(|l| l.local_addr().unwrap()).collect();
    assert!(addrs[0].is_ipv4() && addrs[1].is_ipv6());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(server.run(listeners, async {
        let _ = stopped.await;
    }));
    for addr in &addrs {
        let mut client = common::Client::connect(*addr).await;
        client.send(b"{\"ip\":\"2001:db8::7\",\"id\":1}\n").await;
        assert_eq!(client.line().await["type"], "ack");
        let record = records.recv().await.unwrap();
        assert_eq!(record.peer().is_ipv6(), addr.is_ipv6());
    }
    stop.send(()).unwrap();
    task.await.unwrap().unwrap();
}
