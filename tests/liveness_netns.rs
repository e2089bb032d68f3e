//! The examples of the liveness layer, run as their own processes in a network namespace, with
//! their clients in another across a veth pair: an idle peer whose link goes down is closed as
//! `keepalive_timeout` within the keep-alive bound, a peer whose process is stopped (its kernel
//! alive) as `heartbeat_timeout`, a kick through the admin API is recorded with its reason, and
//! the admin API lists the connections. Needs root and iproute2 (skipped with a line saying
//! so without them, unless `CW_TEST_REQUIRE_NETNS=1`, as in CI) and python3 for the frozen peer.

use connwarden_test_common as common;

use std::io::{BufRead, Read, Write};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::{example, NetnsPair, NETNS_SERVER_IP, PROMPT};
use connwarden::doctor::measure::Lab;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Slack on each bound: timer granularity, the kernel's probe scheduling, a loaded machine.
const SLACK: Duration = Duration::from_secs(1);

/// A child process whose standard output is read line by line on a thread; killed on drop.
struct Lines {
    child: Child,
    lines: mpsc::Receiver<String>,
}

impl Lines {
    fn spawn(mut command: Command) -> Lines {
        let mut child = command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .spawn()
            .expect("start the process");
        let stdout = child.stdout.take().expect("piped");
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stdout)
                .lines()
                .map_while(Result::ok)
            {
                let _ = tx.send(line);
            }
        });
        Lines { child, lines }
    }

    /// The next line containing `text`, within `bound`.
    fn wait_for(&self, text: &str, bound: Duration) -> String {
        let deadline = Instant::now() + bound;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) if line.contains(text) => return line,
                Ok(_) => {}
                Err(_) => panic!("no line with {text:?} within {bound:?}"),
            }
        }
    }

    fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .args([signal, &self.child.id().to_string()])
            .status()
            .expect("kill");
        assert!(status.success());
    }
}

impl Drop for Lines {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// An HTTP/1.1 request to the admin API from inside `ns`: the status and the body.
fn admin(ns: &str, method: &'static str, port: u16, path: &str) -> (u16, String) {
    let request = format!("{method} {path} HTTP/1.1\r\nHost: admin\r\nConnection: close\r\n\r\n");
    let response = Lab::in_ns(ns, move || {
        let mut stream = std::net::TcpStream::connect((NETNS_SERVER_IP, port))?;
        stream.write_all(request.as_bytes())?;
        let mut response = String::new();
        stream.read_to_string(&mut response)?;
        Ok(response)
    })
    .expect("admin request");
    let status = response[9..12].parse().expect("a status code");
    let body = response.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    (status, body.to_owned())
}

/// How one example's protocol says a message, and how its goodbye reads.
struct Words {
    example: &'static str,
    peer_mode: &'static str,
    message: &'static [u8],
    bye_kicked: &'static [u8],
}

const LINES: Words = Words {
    example: "line_echo",
    peer_mode: "lines",
    message: b"hello\n",
    bye_kicked: b"BYE kicked\n",
};

const FRAMES: Words = Words {
    example: "length_prefixed",
    peer_mode: "frames",
    message: b"\0\0\0\x06Dhello",
    bye_kicked: b"\0\0\0\x07Bkicked",
};

/// A connection from the client namespace that sent one message and read its echo.
async fn echoed_peer(net: &NetnsPair, port: u16, words: &Words) -> TcpStream {
    let mut stream = net.client_connect(port);
    stream.write_all(words.message).await.expect("send");
    let mut echo = vec![0; words.message.len()];
    tokio::time::timeout(PROMPT, stream.read_exact(&mut echo))
        .await
        .expect("echo within the bound")
        .expect("echo");
    assert_eq!(echo, words.message);
    stream
}

async fn dead_frozen_and_kicked_peers_close_with_their_reasons(test: &str, words: Words) {
    let Some(net) = NetnsPair::create(test) else {
        return;
    };
    let (port, admin_port) = (7430, 7431);
    let listen = format!("--listen={NETNS_SERVER_IP}:{port}");
    let admin_addr = format!("--admin={NETNS_SERVER_IP}:{admin_port}");
    let mut command = Command::new("ip");
    command
        .args(["netns", "exec", &net.server_ns])
        .arg(example(words.example))
        .args([&listen, &admin_addr])
        .args(["--keepalive-idle", "2s", "--keepalive-interval", "1s"])
        .args(["--keepalive-count", "3", "--heartbeat", "negotiated"])
        .args(["--heartbeat-interval", "1s", "--heartbeat-misses", "3"]);
    let server = Lines::spawn(command);
    server.wait_for("listening on", PROMPT);

    let idle = echoed_peer(&net, port, &words).await;
    let mut kicked = echoed_peer(&net, port, &words).await;
    let mut command = Command::new("ip");
    command
        .args(["netns", "exec", &net.client_ns, "python3"])
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/peers/liveness_peer.py"
        ))
        .args([words.peer_mode, NETNS_SERVER_IP, &port.to_string()]);
    let frozen = Lines::spawn(command);
    frozen.wait_for("P", PROMPT);

    // The admin API lists the three, from the client's address.
    let (status, body) = admin(&net.client_ns, "GET", admin_port, "/connections");
    assert_eq!(status, 200, "{body}");
    let listed: serde_json::Value = serde_json::from_str(&body).expect("JSON");
    assert_eq!(listed["total"], 3, "{body}");
    let kicked_addr = kicked.local_addr().expect("address").to_string();
    let entry = listed["items"]
        .as_array()
        .expect("items")
        .iter()
        .find(|c| c["peer"] == kicked_addr.as_str())
        .expect("the kicked peer is listed");
    assert_eq!(entry["items"], 1, "one message counted: {entry}");
    let id = entry["id"].as_u64().expect("an id");

    // A kick: told in the protocol's words, recorded with its reason.
    let path = format!("/connections/{id}");
    let (status, body) = admin(&net.client_ns, "DELETE", admin_port, &path);
    assert!(status == 200 || status == 202, "{status} {body}");
    let mut bye = vec![0; words.bye_kicked.len()];
    tokio::time::timeout(PROMPT, kicked.read_exact(&mut bye))
        .await
        .expect("bye within the bound")
        .expect("bye");
    assert_eq!(bye, words.bye_kicked);
    server.wait_for(&format!("closed {id} {kicked_addr} kicked"), PROMPT);

    // A frozen process: its kernel still acknowledges, only the heartbeat sees it.
    frozen.signal("-STOP");
    let stopped = Instant::now();
    let line = server.wait_for("heartbeat_timeout", Duration::from_secs(20));
    let detected = stopped.elapsed();
    let bound = Duration::from_secs(3) + SLACK;
    assert!(detected <= bound, "{line}: {detected:?}, bound {bound:?}");
    println!(
        "{}: frozen peer closed {detected:?} after SIGSTOP (bound {bound:?})",
        words.example
    );
    frozen.signal("-CONT");

    // An idle peer whose link goes down: keep-alive, 2 s + 1 s x 3.
    let cut = Instant::now();
    net.client_link_down();
    let line = server.wait_for("keepalive_timeout", Duration::from_secs(20));
    let detected = cut.elapsed();
    let bound = Duration::from_secs(5) + SLACK;
    assert!(detected <= bound, "{line}: {detected:?}, bound {bound:?}");
    println!(
        "{}: dead idle peer closed {detected:?} after link down (bound {bound:?})",
        words.example
    );
    assert!(line.contains(&idle.local_addr().expect("address").to_string()));
}

#[tokio::test]
async fn line_echo_closes_dead_frozen_and_kicked_peers_with_their_reasons() {
    dead_frozen_and_kicked_peers_close_with_their_reasons(
        "line_echo_closes_dead_frozen_and_kicked_peers_with_their_reasons",
        LINES,
    )
    .await;
}

#[tokio::test]
async fn length_prefixed_closes_dead_frozen_and_kicked_peers_with_their_reasons() {
    dead_frozen_and_kicked_peers_close_with_their_reasons(
        "length_prefixed_closes_dead_frozen_and_kicked_peers_with_their_reasons",
        FRAMES,
    )
    .await;
}
