//! The admin API and `/metrics` of `connwarden serve`, after real scenarios through the binary:
//! orderly closes, resets, kicks, `server_full`, refused items, and an idle dead peer behind a
//! link taken down in a network namespace. Every exposition must pass `promtool check metrics`.

use connwarden_test_common as common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::{metric, promtool_check, Admin, NetnsPair, Proc, NETNS_SERVER_IP};

/// Starts `serve` on loopback ports of its own choosing, storing to a file of its own; its
/// admin API and data address.
fn serve_storing(extra: &[&str]) -> (Proc, Admin, String) {
    let dir = tempfile::tempdir().expect("tempdir");
    let started = common::serve()
        .sink_file(&dir.path().join("items.ndjson"))
        .args(extra)
        .start();
    // The directory lives as long as the process needs it: leaked on purpose for the test.
    std::mem::forget(dir);
    started
}

/// Reads one reply line.
fn line(reader: &mut BufReader<TcpStream>) -> serde_json::Value {
    let mut text = String::new();
    reader.read_line(&mut text).expect("reply line");
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text:?}"))
}

/// The id of the live connection whose peer is `peer`.
fn conn_id(admin: &Admin, peer: std::net::SocketAddr) -> u64 {
    let page = admin.json(&format!("/connections?peer={peer}"));
    assert_eq!(page["total"], 1, "{page}");
    page["items"][0]["id"].as_u64().expect("id")
}

#[test]
fn metrics_count_real_closes_refusals_and_items_and_pass_promtool() {
    let (mut server, admin, addr) = serve_storing(&["--max-connections", "3"]);

    // An orderly close after one good item (acked) and two bad ones.
    let orderly = common::connect_prompt(&addr);
    let mut reader = BufReader::new(orderly.try_clone().expect("clone"));
    (&orderly)
        .write_all(b"{\"ip\":\"192.0.2.1\",\"id\":1}\n{\"ip\":\"bad\"}\n{\"ip\":\n}\n")
        .expect("send");
    let mut codes = Vec::new();
    for _ in 0..3 {
        let reply = line(&mut reader);
        codes.push(reply["code"].as_str().unwrap_or("ack").to_owned());
    }
    codes.sort();
    assert_eq!(codes, ["ack", "invalid_ip", "invalid_json"]);
    orderly
        .shutdown(std::net::Shutdown::Write)
        .expect("half-close");
    assert_eq!(reader.read(&mut [0; 64]).expect("eof"), 0);
    server.wait_close("peer_closed");

    // A reset: SO_LINGER 0, then close.
    let reset = common::connect_prompt(&addr);
    (&reset)
        .write_all(b"{\"ip\":\"192.0.2.2\"}\n")
        .expect("send");
    common::poll_until(common::PROMPT, "the item arrives", || {
        metric(&admin.metrics(), "connwarden_items_received_total") == Some(2.0)
    });
    socket2::SockRef::from(&reset)
        .set_linger(Some(Duration::ZERO))
        .expect("linger 0");
    drop(reset);
    server.wait_close("reset");

    // A kick, through the CLI.
    let kicked = common::connect_prompt(&addr);
    let id = {
        let peer = kicked.local_addr().expect("local addr");
        common::poll_until(common::PROMPT, "the connection is listed", || {
            admin.json(&format!("/connections?peer={peer}"))["total"] == 1
        });
        conn_id(&admin, peer)
    };
    let out = std::process::Command::new(common::binary())
        .args(["kick", "--admin", &admin.addr, &id.to_string()])
        .output()
        .expect("connwarden kick");
    assert!(out.status.success(), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("kicked"),
        "{out:?}"
    );
    assert_eq!((&kicked).read(&mut [0; 64]).expect("eof after kick"), 0);
    // Who ended it, in the log line and in /closed.
    assert_eq!(server.wait_close("kicked")["ended_by"], "operator");
    let closed = admin.json("/closed?reason=kicked");
    assert_eq!(closed["items"][0]["ended_by"], "operator", "{closed}");
    let (status, _) = admin.request("GET", &format!("/connections/{id}"));
    assert_eq!(
        status, 404,
        "a kicked connection is gone once its kick returned"
    );

    // server_full: three live, the fourth refused.
    let live: Vec<TcpStream> = (0..3).map(|_| common::connect_prompt(&addr)).collect();
    common::poll_until(common::PROMPT, "three live", || {
        admin.json("/connections")["total"] == 3
    });
    let refused = common::connect_prompt(&addr);
    let mut reader = BufReader::new(refused);
    assert_eq!(line(&mut reader)["code"], "server_full");

    let text = admin.metrics();
    promtool_check(&text);
    let expect = [
        ("connwarden_connections_live", 3.0),
        ("connwarden_connections_opened_total", 6.0),
        (
            "connwarden_connections_closed_total{reason=\"peer_closed\"}",
            1.0,
        ),
        ("connwarden_connections_closed_total{reason=\"reset\"}", 1.0),
        (
            "connwarden_connections_closed_total{reason=\"kicked\"}",
            1.0,
        ),
        (
            "connwarden_connections_closed_total{reason=\"server_full\"}",
            0.0,
        ),
        (
            "connwarden_connections_refused_total{reason=\"server_full\"}",
            1.0,
        ),
        ("connwarden_items_received_total", 2.0),
        ("connwarden_items_refused_total{code=\"invalid_ip\"}", 1.0),
        ("connwarden_items_refused_total{code=\"invalid_json\"}", 1.0),
        ("connwarden_items_acknowledged_total", 1.0),
        ("connwarden_ack_latency_seconds_count", 1.0),
        (
            "connwarden_detection_delay_seconds_count{reason=\"peer_closed\"}",
            1.0,
        ),
        (
            "connwarden_detection_delay_seconds_count{reason=\"reset\"}",
            1.0,
        ),
        (
            "connwarden_detection_delay_seconds_count{reason=\"kicked\"}",
            1.0,
        ),
        (
            "connwarden_connection_lifetime_seconds_count{reason=\"kicked\"}",
            1.0,
        ),
        ("connwarden_queue_capacity_items", 65536.0),
        ("connwarden_sink_healthy", 1.0),
        (
            "connwarden_detection_bound_seconds{reason=\"keepalive_timeout\"}",
            60.0,
        ),
    ];
    for (selector, value) in expect {
        assert_eq!(
            metric(&text, selector),
            Some(value),
            "{selector} in\n{text}"
        );
    }
    assert!(metric(&text, "connwarden_sink_records_written_total") == Some(2.0));
    assert!(metric(&text, "process_open_fds").is_some_and(|fds| fds > 3.0));
    assert!(metric(&text, "process_resident_memory_bytes").is_some_and(|rss| rss > 1e6));
    // No label with unbounded values: no peer address, no connection id.
    assert!(!text.contains("127.0.0.1"), "{text}");
    drop(live);
}

#[test]
fn a_closed_connection_leaves_connections_and_enters_closed_as_its_close_is_logged() {
    let (mut server, admin, addr) = serve_storing(&["--closed-history", "2"]);
    let client = common::connect_prompt(&addr);
    (&client)
        .write_all(b"{\"ip\":\"192.0.2.9\"}\n")
        .expect("send");
    let peer = client.local_addr().expect("local addr");
    common::poll_until(common::PROMPT, "listed with its item", || {
        admin.json(&format!("/connections?peer={peer}"))["items"][0]["items"] == 1
    });
    let id = conn_id(&admin, peer);
    let one = admin.json(&format!("/connections/{id}"));
    assert_eq!(one["tcp"]["state"], "established", "{one}");
    assert_eq!(one["bytes_in"], 19);

    drop(client);
    let logged = server.wait_close("peer_closed");
    assert_eq!(logged["conn_id"], id);
    // At once, with no wait: the entry went before the line was written.
    let (status, body) = admin.request("GET", &format!("/connections/{id}"));
    assert_eq!(status, 404, "{body}");
    assert_eq!(admin.json("/connections")["total"], 0);
    let closed = admin.json("/closed?reason=peer_closed");
    assert_eq!(closed["items"][0]["id"], id, "{closed}");
    assert_eq!(closed["items"][0]["items"], 1);
    assert_eq!(admin.json("/closed?reason=kicked")["total"], 0);

    // The history is bounded: three more closes keep the two newest.
    for _ in 0..3 {
        drop(common::connect_prompt(&addr));
        server.wait_close("peer_closed");
    }
    let closed = admin.json("/closed");
    assert_eq!(closed["total"], 2, "{closed}");
    let newest = closed["items"][0]["id"].as_u64().unwrap();
    assert_eq!(newest, id + 3, "newest first");

    // Bad requests get the one JSON error shape.
    for (method, path, status) in [
        ("GET", "/connections?sort=colour", 400),
        ("GET", "/connections?limit=0", 400),
        ("GET", "/closed?reason=tired", 400),
        ("GET", "/connections/abc", 400),
        ("DELETE", "/connections/999", 404),
        ("GET", "/nowhere", 404),
        ("POST", "/connections", 405),
    ] {
        let (got, body) = admin.request(method, path);
        assert_eq!(got, status, "{method} {path}: {body}");
        let error: serde_json::Value = serde_json::from_str(&body).expect("JSON error");
        assert!(error["error"]["code"].is_string(), "{body}");
        assert!(error["error"]["message"].is_string(), "{body}");
    }
}

#[test]
fn without_the_token_every_endpoint_but_healthz_answers_401() {
    let dir = tempfile::tempdir().expect("tempdir");
    let token = "t0ken-9f3a-never-shown";
    let file = dir.path().join("admin.token");
    std::fs::write(&file, format!("{token}\n")).expect("token file");
    let file_arg = file.display().to_string();
    let (mut server, mut admin, _addr) = serve_storing(&["--admin-token-file", &file_arg]);

    let guarded = [
        "/readyz",
        "/connections",
        "/connections/1",
        "/closed",
        "/metrics",
    ];
    for wrong in [None, Some("wrong".to_owned()), Some(format!("{token}x"))] {
        admin.token = wrong.clone();
        for path in guarded {
            let (status, body) = admin.request("GET", path);
            assert_eq!(status, 401, "GET {path} with {wrong:?}: {body}");
            assert!(body.contains("\"unauthorized\""), "{body}");
        }
        let (status, _) = admin.request("DELETE", "/connections/1");
        assert_eq!(status, 401);
        assert_eq!(admin.request("GET", "/healthz").0, 200);
    }
    admin.token = Some(token.to_owned());
    for path in ["/readyz", "/connections", "/closed", "/metrics", "/healthz"] {
        assert_eq!(admin.request("GET", path).0, 200, "GET {path}");
    }

    // The CLI: refused without the token, served with the file.
    let conns = |extra: &[&str]| {
        std::process::Command::new(common::binary())
            .args(["conns", "--admin", &admin.addr])
            .args(extra)
            .env_remove("CONNWARDEN_ADMIN_TOKEN_FILE")
            .output()
            .expect("connwarden conns")
    };
    let refused = conns(&[]);
    assert!(!refused.status.success());
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("401"),
        "{refused:?}"
    );
    let served = conns(&["--admin-token-file", &file_arg]);
    assert!(served.status.success(), "{served:?}");
    assert!(String::from_utf8_lossy(&served.stdout).contains("0 of 0 connections"));

    // Nowhere in the process's command line or its logs.
    let cmdline = std::fs::read(format!("/proc/{}/cmdline", server.child.id())).expect("cmdline");
    assert!(!String::from_utf8_lossy(&cmdline).contains(token));
    assert!(!server.stderr_so_far().contains(token));
}

#[test]
fn an_idle_dead_peer_is_measured_within_its_bound_in_a_network_namespace() {
    let Some(net) =
        NetnsPair::create("an_idle_dead_peer_is_measured_within_its_bound_in_a_network_namespace")
    else {
        return;
    };
    let data = format!("{NETNS_SERVER_IP}:7000");
    let dir = tempfile::tempdir().expect("tempdir");
    let sink = format!("file:{}", dir.path().join("items.ndjson").display());
    let mut server = Proc::spawn_in_netns(
        &net.server_ns,
        &[
            "serve",
            "--listen",
            &data,
            "--admin",
            "127.0.0.1:0",
            "--sink",
            &sink,
            "--keepalive-idle",
            "1s",
            "--keepalive-interval",
            "1s",
            "--keepalive-count",
            "2",
            "--heartbeat",
            "off",
            "--log-format",
            "json",
        ],
    );
    let admin = Admin::of(&mut server);
    server.wait_log("listening").expect("listening");
    // The admin API listens on the server host's own loopback: ask from inside it.
    let in_server_ns = |path: &'static str| {
        let admin = admin.clone();
        connwarden::doctor::measure::Lab::in_ns(&net.server_ns, move || Ok(admin.json(path)))
            .expect("admin request in the server namespace")
    };
    let metrics_in_ns = || {
        let admin = admin.clone();
        connwarden::doctor::measure::Lab::in_ns(&net.server_ns, move || Ok(admin.metrics()))
            .expect("scrape in the server namespace")
    };

    let to: std::net::SocketAddr = data.parse().expect("address");
    let client = connwarden::doctor::measure::Lab::in_ns(&net.client_ns, move || {
        TcpStream::connect_timeout(&to, common::PROMPT)
    })
    .expect("connect from the client namespace");
    (&client)
        .write_all(b"{\"ip\":\"10.232.0.2\"}\n")
        .expect("send");
    common::poll_until(common::PROMPT, "the item arrives", || {
        in_server_ns("/connections")["items"][0]["items"] == 1
    });
    // A healthy peer beside it, on the server host's side of the link: it answers its probes.
    let _healthy = connwarden::doctor::measure::Lab::in_ns(&net.server_ns, move || {
        TcpStream::connect_timeout(&to, common::PROMPT)
    })
    .expect("connect inside the server namespace");
    common::poll_until(common::PROMPT, "two connections", || {
        in_server_ns("/connections")["total"] == 2
    });
    net.client_link_down();
    let cut = Instant::now();

    // The kernel's probes are visible while they go unanswered.
    common::poll_until(
        Duration::from_secs(10),
        "keep-alive probes in flight",
        || {
            let text = metrics_in_ns();
            metric(&text, "connwarden_connections_probing") == Some(1.0)
                && metric(&text, "connwarden_keepalive_probes").is_some_and(|p| p >= 1.0)
        },
    );
    // Sorted by probes, the dead peer comes first (unless it has been closed meanwhile).
    let listed = in_server_ns("/connections?sort=probes");
    let first = &listed["items"][0];
    if listed["total"] == 2 {
        assert!(
            first["peer"]
                .as_str()
                .is_some_and(|p| p.starts_with("10.232.0.2:"))
                && first["tcp"]["probes"].as_u64().is_some_and(|p| p >= 1),
            "{listed}"
        );
    } else {
        assert_eq!(listed["total"], 1, "only the healthy peer left: {listed}");
    }

    let closed = server
        .wait_log_within("connection closed", Duration::from_secs(20))
        .expect("close logged");
    assert_eq!(closed["reason"], "keepalive_timeout", "{closed}");
    println!("closed {:?} after the link went down", cut.elapsed());

    let text = metrics_in_ns();
    promtool_check(&text);
    let bound = 3.0; // idle 1 s + 2 probes × 1 s
    let sel = |suffix: &str| {
        format!("connwarden_detection_delay_seconds_{suffix}{{reason=\"keepalive_timeout\"}}")
    };
    assert_eq!(metric(&text, &sel("count")), Some(1.0), "{text}");
    let delay = metric(&text, &sel("sum")).expect("sum");
    assert!(
        (bound - 0.5..=bound + 1.0).contains(&delay),
        "detection delay {delay} s, bound {bound} s"
    );
    assert_eq!(
        metric(
            &text,
            "connwarden_detection_bound_seconds{reason=\"keepalive_timeout\"}"
        ),
        Some(bound)
    );
    // The bucket at the bound plus a tenth holds it when it came within that (the kernel gives
    // up at the bound; a loaded machine may wake the server a little later, which the range
    // above allows): the histogram's buckets agree with the delay measured.
    let within_a_tenth = if delay <= bound * 1.1 { 1.0 } else { 0.0 };
    assert_eq!(
        metric(
            &text,
            "connwarden_detection_delay_seconds_bucket{reason=\"keepalive_timeout\",le=\"3.3\"}"
        ),
        Some(within_a_tenth),
        "{text}"
    );
    assert_eq!(
        metric(
            &text,
            "connwarden_detection_delay_seconds_bucket{reason=\"keepalive_timeout\",le=\"5\"}"
        ),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        metric(
            &text,
            "connwarden_connections_closed_total{reason=\"keepalive_timeout\"}"
        ),
        Some(1.0)
    );
    assert_eq!(metric(&text, "connwarden_connections_probing"), Some(0.0));
    let closed = in_server_ns("/closed?reason=keepalive_timeout");
    assert_eq!(closed["items"][0]["ended_by"], "kernel", "{closed}");
    let reported = closed["items"][0]["detection_delay_s"]
        .as_f64()
        .expect("delay");
    assert!((reported - delay).abs() < 0.01, "{closed}");
}

/// From SIGTERM until the queue is drained, `/readyz` answers 503 "draining" (a load balancer
/// stops sending new clients) while `/healthz` still answers 200, and the admin API stays up.
/// The sink is a FIFO whose reader waits, so that the drain lasts until the test lets it go;
/// then every item sent before the signal is written.
#[test]
fn readyz_answers_draining_from_sigterm_until_the_queue_is_stored() {
    let dir = tempfile::tempdir().expect("tempdir");
    let fifo = dir.path().join("sink.fifo");
    let made = std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .expect("mkfifo");
    assert!(made.success());
    let (release, released) = std::sync::mpsc::channel::<()>();
    let reader_path = fifo.clone();
    let reader = std::thread::spawn(move || {
        // Opening blocks until the server opens the FIFO for writing, then nothing is read
        // until the test says so: the pipe's 64 KiB fill up and the sink's write blocks.
        let mut pipe = std::fs::File::open(&reader_path).expect("open fifo");
        released.recv().expect("release");
        let mut text = String::new();
        pipe.read_to_string(&mut text).expect("read fifo");
        text.lines().count()
    });
    let sink = format!("file:{}", fifo.display());
    let (mut server, admin, addr) = common::serve()
        .sink(&sink)
        .args(&["--fsync", "never", "--shutdown-grace", "30s"])
        .start();
    let ready = |admin: &Admin| {
        let (status, body) = admin.request("GET", "/readyz");
        let body: serde_json::Value = serde_json::from_str(&body).expect("readyz json");
        (
            status,
            body["state"].as_str().unwrap_or_default().to_owned(),
        )
    };
    common::poll_until(common::PROMPT, "ready", || {
        ready(&admin) == (200, "ready".to_owned())
    });

    // 2,000 items of ~100 bytes: three times what the pipe holds.
    const ITEMS: usize = 2_000;
    let client = common::connect_prompt(&addr);
    let mut batch = String::new();
    for n in 0..ITEMS {
        batch.push_str(&format!(
            "{{\"ip\":\"192.0.2.{}\",\"n\":{n},\"pad\":\"{}\"}}\n",
            n % 250,
            "x".repeat(60)
        ));
    }
    (&client).write_all(batch.as_bytes()).expect("send");
    common::poll_until(common::PROMPT, "every item received", || {
        metric(&admin.metrics(), "connwarden_items_received_total") == Some(ITEMS as f64)
    });

    server.terminate();
    common::poll_until(common::PROMPT, "draining", || {
        let (status, state) = ready(&admin);
        assert!(
            status == 200 || state == "draining",
            "before draining: {state}"
        );
        status == 503
    });
    assert_eq!(admin.request("GET", "/healthz").0, 200);
    // Still draining a moment later: the sink cannot finish while the reader waits.
    assert_eq!(ready(&admin), (503, "draining".to_owned()));
    assert_eq!(admin.json("/connections")["total"], 1);

    release.send(()).expect("release the reader");
    let status = server.wait_exit(Duration::from_secs(40));
    assert!(status.success(), "{status:?}");
    assert_eq!(reader.join().expect("reader"), ITEMS);
    drop(client);
}
