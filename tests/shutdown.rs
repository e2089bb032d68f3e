//! The real binary: SIGTERM stops accepting, writes every queued item to the file sink, closes
//! connections as `shutdown`, and exits 0 within the grace period.

use connwarden_test_common as common;

use std::io::{BufRead, BufReader, Read};
use std::os::unix::fs::OpenOptionsExt;
use std::process::Command;
use std::time::{Duration, Instant};

use common::Serve;

/// Starts `serve` on an OS-chosen loopback port with JSON logs; returns it and the port.
fn start(args: &[&str]) -> (Serve, u16) {
    let mut all = vec!["--listen", "127.0.0.1:0", "--log-format", "json"];
    all.extend_from_slice(args);
    let mut serve = Serve::spawn(&all);
    let listening = serve.wait_log("listening").expect("serve starts listening");
    let addr: std::net::SocketAddr = listening["addr"].as_str().unwrap().parse().unwrap();
    (serve, addr.port())
}

/// Receive and send queues of the established loopback connections on `port`, both ends.
fn socket_queues(port: u16) -> Vec<(u64, u64)> {
    let out = Command::new("ss")
        .args([
            "-Htn",
            "state",
            "established",
            &format!("( sport = :{port} or dport = :{port} )"),
        ])
        .output()
        .expect("run ss (install iproute2)");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| {
            let mut cols = l.split_whitespace();
            Some((cols.next()?.parse().ok()?, cols.next()?.parse().ok()?))
        })
        .collect()
}

#[test]
fn sigterm_writes_every_queued_item_to_the_file_sink_and_exits_zero() {
    const ITEMS: usize = 30_000;
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("sink.fifo");
    let c_path = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
    // SAFETY: mkfifo with a valid NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(c_path.as_ptr(), 0o600) }, 0);
    // The sink writes into a pipe nobody drains yet: it stalls, and items pile up in the queue.
    let mut drain = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(&fifo)
        .unwrap();
    let sink = format!("file:{}", fifo.display());
    let (mut serve, port) = start(&["--sink", &sink, "--shutdown-grace", "20s"]);

    let mut client = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    let mut payload = String::new();
    for i in 0..ITEMS {
        payload.push_str(&format!(
            "{{\"ip\":\"198.51.100.{}\",\"seq\":{i}}}\n",
            i % 250
        ));
    }
    std::io::Write::write_all(&mut client, payload.as_bytes()).unwrap();
    // Wait until the server has read every byte: both ends' queues empty.
    common::poll_until(
        Duration::from_secs(10),
        "the server read every byte",
        || {
            let queues = socket_queues(port);
            queues.len() == 2 && queues.iter().all(|&(recv, send)| recv == 0 && send == 0)
        },
    );

    serve.terminate();
    serve.wait_log("shutting down").expect("shutdown begins");
    // Now drain the pipe until the server closes it.
    let mut written = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut chunk = [0u8; 65536];
    loop {
        match drain.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => written.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(2))
            }
            Err(e) => panic!("read fifo: {e}"),
        }
        assert!(
            Instant::now() < deadline,
            "sink not closed within the grace"
        );
    }
    let status = serve.wait_exit(Duration::from_secs(20));
    assert!(status.success(), "exit status {status:?}");
    let lines: Vec<serde_json::Value> = String::from_utf8(written)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), ITEMS);
    for (i, line) in lines.iter().enumerate() {
        assert_eq!(line["item"]["seq"], i);
        assert!(
            line["conn_id"].as_u64().is_some()
                && line["peer"].is_string()
                && line["received_at"].is_string()
        );
    }
}

#[test]
fn sigterm_closes_connections_as_shutdown_and_exits_zero() {
    let (mut serve, port) = start(&[]);
    let mut client = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    std::io::Write::write_all(&mut client, b"{\"type\":\"hello\"}\n").unwrap();
    let mut reader = BufReader::new(client.try_clone().unwrap());
    let mut hello = String::new();
    reader.read_line(&mut hello).unwrap();
    assert!(hello.contains("\"hello\""));
    serve.terminate();
    let closed = serve.wait_log("connection closed").expect("a close line");
    assert_eq!(closed["reason"], "shutdown");
    let mut rest = String::new();
    reader.read_to_string(&mut rest).unwrap();
    assert!(rest.contains("shutting_down"), "{rest}");
    assert!(serve.wait_exit(Duration::from_secs(15)).success());
}
