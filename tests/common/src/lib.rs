//! The test harness, in one place: a server on port 0, a raw client, waits on observable events
//! with bounded timeouts, a network-namespace fixture, and the binary for process tests. A
//! crate of its own (`tests/common/Cargo.toml`), compiled once; a test file names it
//! `use connwarden_test_common as common;`. Linux only, like the tests.
#![cfg(target_os = "linux")]

pub mod certs;
pub mod lostfs;
pub mod nats;

use std::net::SocketAddr;
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use connwarden::doctor::measure::Lab;
use connwarden::registry::ClosedConn;
use connwarden::server::ShutdownReport;
use connwarden::sink::{ChannelSink, Sink};
use connwarden::{CloseReason, Config, Record, Registry, Server};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{broadcast, mpsc, oneshot};
use tokio::task::JoinHandle;

/// Upper bound for anything that should happen "at once" on loopback.
pub const PROMPT: Duration = Duration::from_secs(10);

/// A configuration for tests: loopback, and short timers where a test does not set its own.
pub fn test_config() -> Config {
    Config {
        listen: vec!["127.0.0.1:0".parse().expect("valid address")],
        shutdown_grace: Duration::from_secs(5),
        // Tests run side by side: none may take the fixed admin port.
        admin: None,
        ..Config::default()
    }
}

/// A server running in this process on 127.0.0.1 with an OS-chosen port.
pub struct TestServer {
    pub addr: SocketAddr,
    pub registry: Registry,
    pub reloader: connwarden::Reloader,
    pub records: Option<mpsc::Receiver<Record>>,
    pub queue: connwarden::queue::Monitor<Record>,
    pub metrics: std::sync::Arc<connwarden::metrics::Metrics>,
    closes: broadcast::Receiver<ClosedConn>,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<ShutdownReport>>,
}

impl TestServer {
    /// Starts a server whose items arrive in `records`.
    pub async fn start(config: Config) -> TestServer {
        let (sink, records) = ChannelSink::new(1024);
        let mut server = TestServer::start_with_sink(config, sink).await;
        server.records = Some(records);
        server
    }

    /// Starts a server with the given sink.
    pub async fn start_with_sink(config: Config, sink: impl Sink) -> TestServer {
        // The production path: every option (buffers included) set before listen.
        let listener = connwarden::sockopt::bind_listener(
            config.listen[0],
            &connwarden::sockopt::ListenerOptions {
                reuse_port: false,
                backlog: 128,
            },
            &connwarden::sockopt::SocketOptions::from_config(&config),
        )
        .expect("bind");
        let listener = TcpListener::from_std(listener).expect("register listener");
        TestServer::start_on(config, sink, listener).await
    }

    /// Starts a server on a listener bound elsewhere (for example inside a network namespace).
    pub async fn start_on(config: Config, sink: impl Sink, listener: TcpListener) -> TestServer {
        let addr = listener.local_addr().expect("local addr");
        let server = Server::builder(config)
            .sink(sink)
            .build()
            .expect("valid config");
        let registry = server.registry();
        let reloader = server.reloader();
        let closes = registry.subscribe();
        let queue = server.queue();
        let metrics = server.metrics();
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            server
                .run(vec![listener], async {
                    let _ = stopped.await;
                })
                .await
                .expect("server runs")
        });
        TestServer {
            addr,
            registry,
            reloader,
            records: None,
            queue,
            metrics,
            closes,
            stop: Some(stop),
            task: Some(task),
        }
    }

    /// Connects a raw client.
    pub async fn connect(&self) -> Client {
        Client::connect(self.addr).await
    }

    /// The next record the sink received.
    pub async fn next_record(&mut self) -> Record {
        let records = self
            .records
            .as_mut()
            .expect("server started with a channel sink");
        tokio::time::timeout(PROMPT, records.recv())
            .await
            .expect("a record within the bound")
            .expect("sink open")
    }

    /// The next close event (subscribed at start, so none is missed).
    pub async fn next_close(&mut self) -> ClosedConn {
        next_close(&mut self.closes, PROMPT).await
    }

    /// Waits until `n` connections are registered.
    pub async fn wait_live(&self, n: usize) {
        wait_until(PROMPT, || self.registry.len() == n).await;
    }

    /// Stops the server and returns its report; the registry must then be empty.
    pub async fn shutdown(mut self) -> ShutdownReport {
        let _ = self.stop.take().expect("running").send(());
        let task = self.task.take().expect("running");
        let report = tokio::time::timeout(PROMPT, task)
            .await
            .expect("shutdown within the bound")
            .expect("server task");
        assert!(self.registry.is_empty(), "registry empty after shutdown");
        report
    }
}

/// The next close event within `bound`.
pub async fn next_close(
    closes: &mut broadcast::Receiver<ClosedConn>,
    bound: Duration,
) -> ClosedConn {
    tokio::time::timeout(bound, closes.recv())
        .await
        .expect("a close event within the bound")
        .expect("close events flowing")
}

/// Polls a condition every few milliseconds until it holds, failing after `bound`.
/// Polls `condition` (every 20 ms, from a plain thread) until it holds; fails naming `what`
/// after `bound`.
pub fn poll_until(bound: Duration, what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + bound;
    while !condition() {
        assert!(
            std::time::Instant::now() < deadline,
            "{what} not within {bound:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

pub async fn wait_until(bound: Duration, mut condition: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + bound;
    while !condition() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "condition not met within {bound:?}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Asserts a close with `reason` and an empty registry afterwards.
pub async fn expect_close(server: &mut TestServer, reason: CloseReason) -> ClosedConn {
    let closed = server.next_close().await;
    assert_eq!(closed.reason, reason, "close reason");
    wait_until(PROMPT, || server.registry.is_empty()).await;
    closed
}

/// A plain TCP client that speaks the protocol by hand.
pub struct Client {
    pub reader: BufReader<OwnedReadHalf>,
    pub writer: OwnedWriteHalf,
}

impl Client {
    pub async fn connect(addr: SocketAddr) -> Client {
        let stream = TcpStream::connect(addr).await.expect("connect");
        stream.set_nodelay(true).expect("nodelay");
        Client::from_stream(stream)
    }

    pub fn from_stream(stream: TcpStream) -> Client {
        let (read, write) = stream.into_split();
        Client {
            reader: BufReader::new(read),
            writer: write,
        }
    }

    pub async fn send(&mut self, bytes: &[u8]) {
        self.writer.write_all(bytes).await.expect("send");
    }

    /// The next line from the server, parsed.
    pub async fn line(&mut self) -> serde_json::Value {
        let mut line = String::new();
        let n = tokio::time::timeout(PROMPT, self.reader.read_line(&mut line))
            .await
            .expect("a line within the bound")
            .expect("read");
        assert!(n > 0, "server closed instead of sending a line");
        serde_json::from_str(&line)
            .unwrap_or_else(|e| panic!("server sent invalid JSON {line:?}: {e}"))
    }

    /// Reads lines until one whose `type` is `kind`, returning it.
    pub async fn line_of_type(&mut self, kind: &str) -> serde_json::Value {
        loop {
            let line = self.line().await;
            if line["type"] == kind {
                return line;
            }
        }
    }

    /// Reads until the server closes, returning what came.
    pub async fn until_closed(&mut self) -> String {
        let mut rest = Vec::new();
        let _ = tokio::time::timeout(PROMPT, self.reader.read_to_end(&mut rest))
            .await
            .expect("server closes within the bound");
        String::from_utf8_lossy(&rest).into_owned()
    }
}

/// A port that was free a moment ago (for a test that must name its port before it listens:
/// a restart on the same address, two processes sharing one).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

/// The one way the tests start `connwarden serve`: data and admin API on loopback ports of its
/// own choosing, items to `/dev/null`, JSON logs; each part changed by a method, then
/// [`ServeCmd::start`] (waits until it listens) or [`ServeCmd::spawn`].
///
/// ```ignore
/// let (server, admin, addr) = common::serve().sink_file(&path).args(&["--fsync", "always"]).start();
/// ```
#[must_use]
pub struct ServeCmd {
    listen: String,
    sink: String,
    extra: Vec<String>,
    stdout: bool,
    bound: Duration,
}

/// Starts describing a `serve` process ([`ServeCmd`]).
pub fn serve() -> ServeCmd {
    ServeCmd {
        listen: "127.0.0.1:0".into(),
        sink: "file:/dev/null".into(),
        extra: Vec::new(),
        stdout: false,
        bound: Duration::from_secs(10),
    }
}

impl ServeCmd {
    /// Listens on `addr` instead of a loopback port of its own choosing.
    pub fn listen(mut self, addr: &str) -> Self {
        self.listen = addr.to_owned();
        self
    }

    /// Listens on loopback `port`.
    pub fn port(self, port: u16) -> Self {
        self.listen(&format!("127.0.0.1:{port}"))
    }

    /// Items go to `sink` (`stdout`, `file:PATH`, `jetstream`).
    pub fn sink(mut self, sink: &str) -> Self {
        self.sink = sink.to_owned();
        self
    }

    /// Items are appended to the file at `path`.
    pub fn sink_file(self, path: &std::path::Path) -> Self {
        self.sink(&format!("file:{}", path.display()))
    }

    /// More flags, after the others (a flag given twice: the later wins).
    pub fn args(mut self, extra: &[&str]) -> Self {
        self.extra.extend(extra.iter().map(|a| a.to_string()));
        self
    }

    /// Its standard output in `child.stdout` (for `sink = "stdout"`).
    pub fn stdout(mut self) -> Self {
        self.stdout = true;
        self
    }

    /// Waits up to `bound` for it to listen (10 s unless said).
    pub fn within(mut self, bound: Duration) -> Self {
        self.bound = bound;
        self
    }

    /// The flags, as `connwarden serve` takes them.
    pub fn flags(&self) -> Vec<String> {
        let mut flags: Vec<String> = [
            "--listen",
            &self.listen,
            "--admin",
            "127.0.0.1:0",
            "--sink",
            &self.sink,
            "--log-format",
            "json",
        ]
        .map(str::to_owned)
        .into();
        flags.extend(self.extra.iter().cloned());
        flags
    }

    /// Starts it, without waiting.
    pub fn spawn(self) -> Proc {
        let flags = self.flags();
        let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
        match self.stdout {
            true => Proc::spawn_with_stdout(&flags),
            false => Proc::spawn(&flags),
        }
    }

    /// Stores to `items.ndjson` in `dir`, with `extra` flags, then [starts](ServeCmd::start)
    /// within [`PROMPT`].
    pub fn start_in(self, dir: &std::path::Path, extra: &[&str]) -> (Proc, Admin, String) {
        self.sink_file(&dir.join("items.ndjson"))
            .args(extra)
            .within(PROMPT)
            .start()
    }

    /// Starts it and waits until it listens: the process, its admin API and its data address.
    pub fn start(self) -> (Proc, Admin, String) {
        let bound = self.bound;
        let mut server = self.spawn();
        let admin = Admin::of(&mut server);
        let listening = server
            .wait_log_within("listening", bound)
            .expect("listening");
        let addr = listening["addr"].as_str().expect("addr").to_owned();
        (server, admin, addr)
    }
}

/// Path of the `connwarden` binary built for these tests: beside the directory of the test
/// binary that runs (`target/debug/deps/admin-…` → `target/debug/connwarden`); cargo builds the
/// crate's binary before it runs an integration test.
pub fn binary() -> &'static str {
    static BINARY: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    BINARY.get_or_init(|| {
        let test = std::env::current_exe().expect("the test binary's path");
        let profile = test
            .parent()
            .and_then(|deps| deps.parent())
            .expect("the test binary lives in target/PROFILE/deps");
        let binary = profile.join("connwarden");
        assert!(
            binary.exists(),
            "no connwarden binary at {}",
            binary.display()
        );
        binary.to_str().expect("a UTF-8 path").to_owned()
    })
}

/// The binary of example `name` (`examples/NAME.rs`), built beside the crate's binary: `cargo
/// test` builds every example before it runs a test; a run of one test file builds it here.
pub fn example(name: &str) -> std::path::PathBuf {
    let dir = std::path::Path::new(binary())
        .parent()
        .expect("the binary's directory")
        .join("examples");
    let path = dir.join(name);
    if !path.exists() {
        let release = dir.parent().is_some_and(|p| p.ends_with("release"));
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let mut build = Command::new(cargo);
        build.args(["build", "--example", name]);
        if release {
            build.arg("--release");
        }
        let status = build.status().expect("run cargo build --example");
        assert!(status.success(), "cargo build --example {name}");
    }
    path
}

/// A `connwarden serve` process (see [`Proc`]).
pub type Serve = Proc;

/// A `connwarden` process whose standard error is read line by line on a thread (so the
/// pipe never fills or closes under it); killed on drop if still running.
pub struct Proc {
    pub child: std::process::Child,
    stderr_lines: std::sync::mpsc::Receiver<String>,
    /// Lines already read by `wait_log`.
    seen: Vec<String>,
}

impl Proc {
    /// Starts `connwarden serve ARGS`.
    pub fn spawn(args: &[&str]) -> Proc {
        let mut command = Command::new(binary());
        command.arg("serve").args(args);
        Proc::start(command)
    }

    /// Starts `connwarden ARGS` inside network namespace `ns` (`ip netns exec`).
    pub fn spawn_in_netns(ns: &str, args: &[&str]) -> Proc {
        let mut command = Command::new("ip");
        command.args(["netns", "exec", ns, binary()]).args(args);
        Proc::start(command)
    }

    /// Starts `program ARGS` (a copy of the binary, for a test that replaces it) with extra
    /// environment variables.
    pub fn spawn_program(
        program: &std::path::Path,
        args: &[impl AsRef<std::ffi::OsStr>],
        env: &[(&str, &std::ffi::OsStr)],
    ) -> Proc {
        let mut command = Command::new(program);
        command.args(args).envs(env.iter().copied());
        Proc::start(command)
    }

    /// Starts `connwarden ARGS`.
    pub fn connwarden(args: &[&str]) -> Proc {
        let mut command = Command::new(binary());
        command.args(args);
        Proc::start(command)
    }

    /// Starts `connwarden serve ARGS` with extra environment variables.
    pub fn spawn_with_env(args: &[&str], env: &[(&str, &std::ffi::OsStr)]) -> Proc {
        let mut command = Command::new(binary());
        command.arg("serve").args(args);
        command.envs(env.iter().copied());
        Proc::start(command)
    }

    /// Starts `connwarden serve ARGS` allowed at most `files` open files (its soft and hard
    /// `RLIMIT_NOFILE`, set in the child before it runs).
    pub fn spawn_with_file_limit(files: u64, args: &[&str]) -> Proc {
        use std::os::unix::process::CommandExt;
        let mut command = Command::new(binary());
        command.arg("serve").args(args);
        // SAFETY: setrlimit(2) is async-signal-safe; the closure runs in the child between fork
        // and exec and touches nothing else.
        unsafe {
            command.pre_exec(move || {
                let limit = libc::rlimit {
                    rlim_cur: files,
                    rlim_max: files,
                };
                if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        Proc::start(command)
    }

    /// Starts `connwarden serve ARGS` with its standard output in `child.stdout`.
    pub fn spawn_with_stdout(args: &[&str]) -> Proc {
        let mut command = Command::new(binary());
        command.arg("serve").args(args);
        Proc::start_with(command, std::process::Stdio::piped())
    }

    fn start(command: Command) -> Proc {
        Proc::start_with(command, std::process::Stdio::null())
    }

    fn start_with(mut command: Command, stdout: std::process::Stdio) -> Proc {
        use std::io::BufRead;
        // Servers run side by side in the tests: each admin API on a port of its own choosing,
        // unless the test names one (a flag wins over the environment).
        if std::env::var_os("CONNWARDEN_ADMIN").is_none() {
            command.env("CONNWARDEN_ADMIN", "127.0.0.1:0");
        }
        let mut child = command
            .stdin(std::process::Stdio::null())
            .stdout(stdout)
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("start connwarden");
        let stderr = child.stderr.take().expect("piped stderr");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            // Lines are read as bytes: a line that is not UTF-8 must not end the reading (and
            // with it every later wait) early.
            for line in std::io::BufReader::new(stderr)
                .split(b'\n')
                .map_while(Result::ok)
            {
                // Keep draining even when nobody listens any more.
                let _ = tx.send(String::from_utf8_lossy(&line).into_owned());
            }
        });
        Proc {
            child,
            stderr_lines: rx,
            seen: Vec::new(),
        }
    }

    /// The next JSON log line whose message is `message`; `None` when the process's standard
    /// error ends first. Fails after 10 s.
    pub fn wait_log(&mut self, message: &str) -> Option<serde_json::Value> {
        self.wait_log_within(message, Duration::from_secs(10))
    }

    /// The next "connection closed" log line with this reason (others are passed over).
    pub fn wait_close(&mut self, reason: &str) -> serde_json::Value {
        loop {
            let closed = self.wait_log("connection closed").expect("close logged");
            if closed["reason"] == reason {
                return closed;
            }
        }
    }

    /// Like [`Proc::wait_log`], failing after `bound`.
    pub fn wait_log_within(&mut self, message: &str, bound: Duration) -> Option<serde_json::Value> {
        let deadline = std::time::Instant::now() + bound;
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match self.stderr_lines.recv_timeout(left) {
                Ok(line) => {
                    let value: serde_json::Value = serde_json::from_str(&line).unwrap_or_default();
                    self.seen.push(line);
                    if value["message"] == message {
                        return Some(value);
                    }
                }
                Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
                    // The process closed its stderr (it exited, most likely): what it said is
                    // the diagnosis when a caller expected the line, and is shown only then.
                    eprintln!(
                        "no {message:?} log line: stderr ended; it said:\n{}",
                        self.seen.join("\n")
                    );
                    return None;
                }
                Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
                    panic!(
                        "no {message:?} log line within {bound:?}; stderr so far:\n{}",
                        self.seen.join("\n")
                    )
                }
            }
        }
    }

    /// Sends SIGTERM.
    /// Sends `SIGHUP` (reload).
    pub fn sighup(&self) {
        // SAFETY: kill(2) on the pid of a child this struct owns and has not reaped.
        let rc = unsafe { libc::kill(self.child.id() as i32, libc::SIGHUP) };
        assert_eq!(rc, 0, "SIGHUP");
    }

    pub fn terminate(&self) {
        // SAFETY: kill(2) on the pid of a child this struct owns and has not reaped.
        let rc = unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        assert_eq!(rc, 0);
    }

    /// Waits for the process to exit, failing after `bound`.
    pub fn wait_exit(&mut self, bound: Duration) -> std::process::ExitStatus {
        let deadline = std::time::Instant::now() + bound;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                // Its last lines may still be on their way from the reading thread: take them
                // all (until that thread meets the end of the pipe), so that what it wrote
                // last is in `stderr_so_far` (a summary printed just before exit was missed).
                let rest = std::time::Instant::now() + PROMPT;
                while let Some(left) = rest.checked_duration_since(std::time::Instant::now()) {
                    match self.stderr_lines.recv_timeout(left) {
                        Ok(line) => self.seen.push(line),
                        Err(_) => break,
                    }
                }
                return status;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "process did not exit within {bound:?}"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Everything the process wrote to standard error so far (non-blocking).
    pub fn stderr_so_far(&mut self) -> String {
        self.seen.extend(self.stderr_lines.try_iter());
        self.seen.join("\n")
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Set to `1` (as `.ci/run` does, running as root), a test that needs network namespaces fails
/// where they cannot be made instead of skipping, as `CW_TEST_REQUIRE_FUSE` does for FUSE
/// (`lostfs.rs`). Not a `CONNWARDEN_` name: those are configuration keys of `serve`.
const REQUIRE_NETNS: &str = "CW_TEST_REQUIRE_NETNS";

/// True when this process runs as root.
pub fn is_root() -> bool {
    // SAFETY: geteuid(2) has no preconditions and always succeeds.
    unsafe { libc::geteuid() == 0 }
}

/// Why network namespaces cannot be made here, if they cannot: `ip netns add` and the veth
/// links need root (`CAP_SYS_ADMIN`, `CAP_NET_ADMIN`) and `ip` from iproute2.
pub fn netns_unavailable() -> Option<String> {
    if !is_root() {
        return Some("this process is not root".into());
    }
    let found = std::env::var_os("PATH")
        .is_some_and(|path| std::env::split_paths(&path).any(|dir| dir.join("ip").is_file()));
    if !found {
        return Some("ip is not installed (Debian: iproute2)".into());
    }
    None
}

/// Whether a test that needs network namespaces should go on: false, after one line saying
/// why, where they cannot be made, unless `CW_TEST_REQUIRE_NETNS=1`, where that fails the test.
/// The line goes to the standard error itself rather than through `eprintln!`, which the test
/// harness keeps to itself for a test that passes.
pub fn netns_or_skip(test: &str) -> bool {
    let Some(why) = netns_unavailable() else {
        return true;
    };
    if std::env::var_os(REQUIRE_NETNS).is_some_and(|v| v == "1") {
        panic!("{test}: network namespaces are required ({REQUIRE_NETNS}=1) but {why}");
    }
    use std::io::Write as _;
    let _ = writeln!(
        std::io::stderr(),
        "SKIPPED {test}: network namespaces cannot be made here ({why}); run the tests as root"
    );
    false
}

/// Two network namespaces joined by a veth pair, the library's own fixture
/// ([`connwarden::doctor::measure::Lab`]): a server host at 10.232.0.1 and a client host at
/// 10.232.0.2. Names are unique per process and fixture; dropping it deletes both namespaces,
/// which deletes the veth pair with them.
pub struct NetnsPair(Lab);

pub const NETNS_SERVER_IP: &str = "10.232.0.1";

static NETNS_SEQ: AtomicU32 = AtomicU32::new(0);

impl std::ops::Deref for NetnsPair {
    type Target = Lab;
    fn deref(&self) -> &Lab {
        &self.0
    }
}

impl NetnsPair {
    /// The pair, for `test`; `None` where namespaces cannot be made (see [`netns_or_skip`]):
    /// the test then returns, passed.
    pub fn create(test: &str) -> Option<NetnsPair> {
        if !netns_or_skip(test) {
            return None;
        }
        let tag = format!(
            "{}x{}",
            std::process::id(),
            NETNS_SEQ.fetch_add(1, Ordering::Relaxed)
        );
        let lab = Lab::create(&tag).expect("create network namespaces (root, iproute2)");
        Some(NetnsPair(lab))
    }

    /// A listener in the server namespace, ready for Tokio.
    pub fn server_listener(&self, port: u16) -> TcpListener {
        let addr: SocketAddr = format!("{NETNS_SERVER_IP}:{port}")
            .parse()
            .expect("address");
        let listener = Lab::in_ns(&self.server_ns, move || std::net::TcpListener::bind(addr))
            .expect("bind in netns");
        listener.set_nonblocking(true).expect("nonblocking");
        TcpListener::from_std(listener).expect("register listener")
    }

    /// A client connection from the client namespace, ready for Tokio.
    pub fn client_connect(&self, port: u16) -> TcpStream {
        let addr: SocketAddr = format!("{NETNS_SERVER_IP}:{port}")
            .parse()
            .expect("address");
        let stream = Lab::in_ns(&self.client_ns, move || {
            std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(5))
        })
        .expect("connect in netns");
        stream.set_nonblocking(true).expect("nonblocking");
        TcpStream::from_std(stream).expect("register stream")
    }

    /// Cuts the client host off: its end of the link goes down, so nothing it would send or
    /// answer reaches the server, and nothing the server sends reaches it.
    pub fn client_link_down(&self) {
        self.client_link(false).expect("client link down");
    }

    /// Cuts the server host off (its end of the link goes down), or brings it back.
    pub fn server_link(&self, up: bool) {
        self.0.server_link(up).expect("server link");
    }
}

/// JSON text written the ways clients write it, token by token, so that number text and
/// escapes stay exactly as they were.
pub mod json_text {
    /// The tokens of a compact JSON text: strings whole, punctuation, and literals.
    pub fn tokens(compact: &str) -> Vec<&str> {
        let bytes = compact.as_bytes();
        let mut out = Vec::new();
        let mut at = 0;
        while at < bytes.len() {
            let start = at;
            match bytes[at] {
                b'"' => {
                    at += 1;
                    while bytes[at] != b'"' {
                        at += if bytes[at] == b'\\' { 2 } else { 1 };
                    }
                    at += 1;
                }
                b'{' | b'}' | b'[' | b']' | b':' | b',' => at += 1,
                _ => {
                    while !b"{}[]:,\"".contains(&bytes[at]) {
                        at += 1;
                    }
                }
            }
            out.push(&compact[start..at]);
        }
        out
    }

    /// Pretty-prints `compact` token by token (so number text and escapes stay as they are), with
    /// `indent` spaces per level and `newline` between lines.
    pub fn pretty(compact: &str, indent: &str, newline: &str) -> String {
        let mut out = String::new();
        let mut depth = 0;
        let line = |out: &mut String, depth: usize| {
            out.push_str(newline);
            out.push_str(&indent.repeat(depth));
        };
        for token in tokens(compact) {
            match token {
                "{" | "[" => {
                    out.push_str(token);
                    depth += 1;
                    line(&mut out, depth);
                }
                "}" | "]" => {
                    depth -= 1;
                    line(&mut out, depth);
                    out.push_str(token);
                }
                "," => {
                    out.push_str(token);
                    line(&mut out, depth);
                }
                ":" => out.push_str(": "),
                _ => out.push_str(token),
            }
        }
        out
    }
}

/// A client of a server's admin API (blocking: call it from a plain thread or a namespace
/// thread, or through `spawn_blocking`).
#[derive(Clone, Debug)]
pub struct Admin {
    pub addr: String,
    pub token: Option<String>,
}

impl Admin {
    /// The admin address a `serve --log-format json` process logged. Call it before waiting
    /// for "listening": the admin listener is logged first.
    pub fn of(serve: &mut Proc) -> Admin {
        let line = serve.wait_log("admin listening").expect("admin listening");
        Admin {
            addr: line["addr"].as_str().expect("addr").to_owned(),
            token: None,
        }
    }

    /// Calls `method path`; the status and the body.
    pub fn request(&self, method: &str, path: &str) -> (u16, String) {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(30)))
            .build()
            .into();
        let mut request = ureq::http::Request::builder()
            .method(method)
            .uri(format!("http://{}{path}", self.addr));
        if let Some(token) = &self.token {
            request = request.header("Authorization", format!("Bearer {token}"));
        }
        let mut response = agent
            .run(request.body(()).expect("request"))
            .unwrap_or_else(|e| panic!("{method} {path}: {e}"));
        let status = response.status().as_u16();
        let body = response.body_mut().read_to_string().expect("body");
        (status, body)
    }

    /// `GET path` as JSON, which must answer 200.
    pub fn json(&self, path: &str) -> serde_json::Value {
        let (status, body) = self.request("GET", path);
        assert_eq!(status, 200, "GET {path}: {body}");
        serde_json::from_str(&body).unwrap_or_else(|e| panic!("GET {path}: {e}: {body}"))
    }

    /// The `/metrics` exposition.
    pub fn metrics(&self) -> String {
        let (status, body) = self.request("GET", "/metrics");
        assert_eq!(status, 200, "{body}");
        body
    }
}

/// The value of the sample written exactly `selector` (`name` or `name{labels}`) in a
/// Prometheus text exposition.
pub fn metric(exposition: &str, selector: &str) -> Option<f64> {
    exposition.lines().find_map(|line| {
        let rest = line.strip_prefix(selector)?.strip_prefix(' ')?;
        rest.trim().parse().ok()
    })
}

/// Checks an exposition with `promtool check metrics` (Debian's `prometheus` package, which
/// `.ci/run` installs): it must parse and pass the linter.
pub fn promtool_check(exposition: &str) {
    use std::io::Write;
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("promtool (apt-get install prometheus)");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(exposition.as_bytes())
        .expect("write to promtool");
    let out = child.wait_with_output().expect("promtool");
    assert!(
        out.status.success(),
        "promtool check metrics failed:\n{}{}\n--- exposition:\n{exposition}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Runs `connwarden doctor --json` with `args`; it must succeed. Its report.
pub fn doctor_json(args: &[&str]) -> serde_json::Value {
    let out = Command::new(binary())
        .arg("doctor")
        .arg("--json")
        .args(args)
        .output()
        .expect("run doctor");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("doctor --json prints JSON")
}

/// `serve` flags for a server on a loopback port of its own choosing, items to /dev/null,
/// JSON logs (read with [`Proc::wait_log`]).
pub const LOOPBACK_TO_NULL: &[&str] = &[
    "--listen",
    "127.0.0.1:0",
    "--sink",
    "file:/dev/null",
    "--log-format",
    "json",
];

/// A plain connection seen from the client's side, line by line.
pub struct LinePeer {
    pub reader: std::io::BufReader<std::net::TcpStream>,
}

impl LinePeer {
    /// Connects to `addr`; reads wait at most [`PROMPT`].
    pub fn connect(addr: &str) -> LinePeer {
        let stream = std::net::TcpStream::connect(addr).expect("connect");
        stream.set_read_timeout(Some(PROMPT)).expect("read timeout");
        LinePeer {
            reader: std::io::BufReader::new(stream),
        }
    }

    /// Sends one line.
    pub fn send(&mut self, line: &str) {
        use std::io::Write;
        self.reader
            .get_mut()
            .write_all(format!("{line}\n").as_bytes())
            .expect("send");
    }

    /// The server's next line.
    pub fn line(&mut self) -> serde_json::Value {
        use std::io::BufRead;
        let mut text = String::new();
        self.reader.read_line(&mut text).expect("a line");
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text:?}"))
    }

    /// Sends one line and returns the server's next one.
    pub fn say(&mut self, line: &str) -> serde_json::Value {
        self.send(line);
        self.line()
    }

    /// True once the server closed (end of stream after whatever it sent).
    pub fn closed(&mut self) -> bool {
        let mut rest = Vec::new();
        std::io::Read::read_to_end(&mut self.reader, &mut rest).is_ok()
    }
}

/// Each library client finished (within 30 s) with every one of its `items` acknowledged, none
/// resent, over two connections: the first, and the one it came back on after a `goaway`.
pub async fn every_item_acked_over_two_connections(
    clients: Vec<tokio::task::JoinHandle<connwarden::client::Summary>>,
    items: u64,
) {
    for client in clients {
        let summary = tokio::time::timeout(Duration::from_secs(30), client)
            .await
            .expect("every client finishes")
            .unwrap();
        assert_eq!(
            (summary.acknowledged, summary.resent, summary.connections),
            (items, 0, 2),
            "{summary:?}"
        );
    }
}

/// A blocking connection to `addr` whose reads wait at most [`PROMPT`].
pub fn connect_prompt(addr: &str) -> std::net::TcpStream {
    let stream = std::net::TcpStream::connect(addr).expect("connect");
    stream.set_read_timeout(Some(PROMPT)).expect("read timeout");
    stream
}

/// Each of `clients` stored every one of its items `0..items` once, in order (`stored`: the
/// items' `n` by client).
pub fn each_client_stored_once_in_order(
    stored: std::collections::BTreeMap<String, Vec<u64>>,
    clients: usize,
    items: u64,
) {
    assert_eq!(stored.len(), clients);
    for (client, ns) in stored {
        assert_eq!(
            ns,
            (0..items).collect::<Vec<_>>(),
            "{client}: once each, in order"
        );
    }
}
