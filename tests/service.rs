//! Running as a service: systemd's readiness, stopping and watchdog notifications through a
//! `NOTIFY_SOCKET` datagram socket the test owns, and the shell completions and man pages.

use connwarden_test_common as common;

use std::os::unix::net::UnixDatagram;
use std::process::Command;
use std::time::{Duration, Instant};

use common::{binary, Proc};

/// The next notification datagram that contains `what`, within `bound`; every one read is kept
/// in `seen`.
fn wait_notification(socket: &UnixDatagram, what: &str, bound: Duration, seen: &mut Vec<String>) {
    let deadline = Instant::now() + bound;
    let mut buf = [0u8; 4096];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        assert!(
            !left.is_zero(),
            "no {what:?} within {bound:?}; got {seen:?}"
        );
        socket.set_read_timeout(Some(left)).expect("timeout");
        match socket.recv(&mut buf) {
            Ok(n) => {
                let message = String::from_utf8_lossy(&buf[..n]).into_owned();
                let found = message.lines().any(|line| line == what);
                seen.push(message);
                if found {
                    return;
                }
            }
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(e) => panic!("recv: {e}"),
        }
    }
}

#[test]
fn serve_tells_systemd_it_is_ready_once_listening_then_stopping_and_feeds_the_watchdog() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("notify.sock");
    let socket = UnixDatagram::bind(&path).expect("bind the notify socket");
    let mut server = Proc::spawn_with_env(
        common::LOOPBACK_TO_NULL,
        &[
            ("NOTIFY_SOCKET", path.as_os_str()),
            // 200 ms: a WATCHDOG=1 every 100 ms.
            ("WATCHDOG_USEC", std::ffi::OsStr::new("200000")),
        ],
    );
    let mut seen = Vec::new();
    wait_notification(&socket, "READY=1", Duration::from_secs(10), &mut seen);
    // Ready means listening: the log line came first, and the port takes connections.
    let listening = server.wait_log("listening").expect("listening");
    let addr = listening["addr"].as_str().expect("addr");
    std::net::TcpStream::connect(addr).expect("connect once ready");
    wait_notification(&socket, "WATCHDOG=1", Duration::from_secs(5), &mut seen);
    server.terminate();
    wait_notification(&socket, "STOPPING=1", Duration::from_secs(10), &mut seen);
    assert!(server.wait_exit(Duration::from_secs(20)).success());
    let ready_at = seen.iter().position(|m| m.contains("READY=1"));
    let stopping_at = seen.iter().position(|m| m.contains("STOPPING=1"));
    assert!(ready_at < stopping_at, "{seen:?}");
}

#[test]
fn completions_and_man_pages_come_from_the_command_line_definitions() {
    for (shell, marker) in [
        ("bash", "_connwarden()"),
        ("zsh", "#compdef connwarden"),
        ("fish", "complete -c connwarden"),
    ] {
        let out = Command::new(binary())
            .args(["completions", shell])
            .output()
            .expect("run");
        assert!(out.status.success(), "{shell}");
        let script = String::from_utf8_lossy(&out.stdout);
        assert!(script.contains(marker), "{shell}: {script}");
        assert!(
            script.contains("keepalive-idle"),
            "{shell} completes serve's flags"
        );
    }
    let out = Command::new(binary()).arg("man").output().expect("run");
    let page = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && page.contains(".TH connwarden 1"),
        "{page}"
    );
    let dir = tempfile::tempdir().expect("temp dir");
    let status = Command::new(binary())
        .args(["man", "--dir"])
        .arg(dir.path())
        .status()
        .expect("run");
    assert!(status.success());
    let serve =
        std::fs::read_to_string(dir.path().join("connwarden-serve.1")).expect("serve's page");
    assert!(serve.contains("keepalive\\-idle"), "{serve}");
}

#[test]
fn check_config_validates_without_starting() {
    let check = |args: &[&str]| {
        Command::new(binary())
            .args(["serve", "--check-config", "--listen", "127.0.0.1:0"])
            .args(args)
            .output()
            .expect("run")
    };
    let ok = check(&[]);
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    for bad in [
        &["--keepalive-idle", "0s"][..],
        &["--admin-token-file", "/nonexistent/token"][..],
    ] {
        let out = check(bad);
        assert_eq!(out.status.code(), Some(2), "{bad:?}");
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("error"),
            "{bad:?}: a reason is given"
        );
    }
}

/// A service manager that never reads its socket (busy or wedged) must not freeze the server:
/// a datagram socket's queue holds about ten messages, and a blocking send then waits for ever on
/// a runtime worker thread (two such sends hold both workers of a 2-core machine). Fifty
/// reloads each try to send two notifications; every reload completes, the messages that do not
/// fit are dropped, counted and logged once, a new client is acknowledged, and `SIGTERM` ends the
/// server with exit 0 within its grace.
#[test]
fn a_notify_socket_nobody_reads_never_freezes_the_server() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("notify.sock");
    // Bound and never read until the end.
    let socket = UnixDatagram::bind(&path).expect("bind the notify socket");
    let mut server = Proc::spawn_with_env(
        &[
            "--listen",
            "127.0.0.1:0",
            "--admin",
            "127.0.0.1:0",
            "--sink",
            "file:/dev/null",
            "--shutdown-grace",
            "5s",
            "--log-format",
            "json",
        ],
        &[("NOTIFY_SOCKET", path.as_os_str())],
    );
    let admin = common::Admin::of(&mut server);
    let listening = server.wait_log("listening").expect("listening");
    let addr = listening["addr"].as_str().expect("addr").to_owned();
    const RELOADS: usize = 50;
    for reload in 0..RELOADS {
        server.sighup();
        // Each reload finishes (a blocked notification would stop the handler here).
        server
            .wait_log_within("configuration reloaded", Duration::from_secs(10))
            .unwrap_or_else(|| panic!("reload {reload} never finished"));
    }
    let mut peer = common::LinePeer::connect(&addr);
    let ack = peer.say(r#"{"ip":"192.0.2.1","id":7}"#);
    assert_eq!(ack, serde_json::json!({"type": "ack", "id": 7}));

    // READY=1 once, then RELOADING=1 and READY=1 per reload: all but what the queue held were
    // dropped, each counted.
    let queue: u64 = std::fs::read_to_string("/proc/sys/net/unix/max_dgram_qlen")
        .ok()
        .and_then(|text| text.trim().parse().ok())
        .unwrap_or(10);
    let tried = 1 + 2 * RELOADS as u64;
    let dropped = common::metric(
        &admin.metrics(),
        "connwarden_service_notifications_dropped_total",
    )
    .expect("the dropped notifications counter") as u64;
    assert!(
        dropped >= tried.saturating_sub(queue + 1) && dropped < tried,
        "{dropped} of {tried} notifications dropped with a queue of {queue}"
    );
    let stderr = server.stderr_so_far();
    let warnings = stderr
        .matches("notification to the service manager dropped")
        .count();
    assert_eq!(
        warnings, 1,
        "logged once, however many were dropped:\n{stderr}"
    );

    let asked = Instant::now();
    server.terminate();
    let status = server.wait_exit(Duration::from_secs(10));
    assert!(status.success(), "exit {status:?} after SIGTERM");
    assert!(asked.elapsed() < Duration::from_secs(10));
    // What fitted was sent: every notification either waits in the queue or was counted.
    socket.set_nonblocking(true).expect("nonblocking");
    let mut buf = [0u8; 4096];
    let mut queued = Vec::new();
    while let Ok(n) = socket.recv(&mut buf) {
        queued.push(String::from_utf8_lossy(&buf[..n]).into_owned());
    }
    // SIGTERM's STOPPING=1 was one more try.
    let dropped_in_all = tried + 1 - queued.len() as u64;
    assert!(dropped_in_all >= dropped, "{queued:?}");
    assert!(
        queued
            .iter()
            .any(|m| m.lines().any(|line| line == "READY=1")),
        "{queued:?}"
    );
}

/// A standard error nobody reads (a wedged journald, a full pipe) must not freeze the server:
/// a pipe holds 64 KiB, and a log line written by the thread that logs would then block it, on
/// a runtime worker. Here stderr is a pipe the test holds open and never reads, while a peer
/// sends junk that the server logs line by line (`item refused`): the log thread falls behind,
/// lines are dropped and counted, and the server goes on answering /metrics, acknowledging a
/// new client and stopping on `SIGTERM` with exit 0 within its grace.
#[test]
fn a_standard_error_nobody_reads_never_freezes_the_server() {
    use std::io::Write;
    let free = || {
        std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .to_string()
    };
    let (listen, admin_addr) = (free(), free());
    let mut child = Command::new(binary())
        .args(["serve", "--listen", &listen, "--admin", &admin_addr])
        .args(["--sink", "file:/dev/null", "--error-budget", "4000000000"])
        .args(["--shutdown-grace", "5s", "--log-format", "json"])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("start connwarden");
    struct KillOnDrop(std::process::Child);
    impl Drop for KillOnDrop {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    // Held open and never read.
    let _unread_stderr = child.stderr.take().expect("piped stderr");
    let mut child = KillOnDrop(child);
    common::poll_until(Duration::from_secs(10), "the server listening", || {
        std::net::TcpStream::connect(&listen).is_ok()
            && std::net::TcpStream::connect(&admin_addr).is_ok()
    });
    let admin = common::Admin {
        addr: admin_addr,
        token: None,
    };

    // The flood: junk lines, each refused and logged; its replies are read and thrown away.
    let flood = std::net::TcpStream::connect(&listen).expect("connect");
    let mut replies = flood.try_clone().expect("clone");
    let drain = std::thread::spawn(move || std::io::copy(&mut replies, &mut std::io::sink()));
    let writer = {
        let mut flood = flood.try_clone().expect("clone");
        std::thread::spawn(move || {
            let chunk = "not an object\n".repeat(1000);
            // Until the test shuts the socket down.
            while flood.write_all(chunk.as_bytes()).is_ok() {}
        })
    };
    let dropped =
        || common::metric(&admin.metrics(), "connwarden_log_lines_dropped_total").unwrap_or(0.0);
    common::poll_until(Duration::from_secs(60), "log lines dropped", || {
        dropped() > 0.0
    });
    // Still dropping, not frozen: the count goes on rising while the flood goes on.
    let first = dropped();
    common::poll_until(Duration::from_secs(30), "more log lines dropped", || {
        dropped() > first
    });
    flood
        .shutdown(std::net::Shutdown::Both)
        .expect("end the flood");
    writer.join().expect("writer");
    let _ = drain.join();

    let mut peer = common::LinePeer::connect(&listen);
    let ack = peer.say(r#"{"ip":"192.0.2.1","id":7}"#);
    assert_eq!(ack, serde_json::json!({"type": "ack", "id": 7}));

    let asked = Instant::now();
    // SAFETY: kill(2) on the pid of a child this test owns and has not reaped.
    assert_eq!(unsafe { libc::kill(child.0.id() as i32, libc::SIGTERM) }, 0);
    let status = loop {
        if let Some(status) = child.0.try_wait().expect("wait") {
            break status;
        }
        assert!(
            asked.elapsed() < Duration::from_secs(10),
            "still running 10 s after SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success(), "exit {status:?} after SIGTERM");
}
