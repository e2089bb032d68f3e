//! The file sink starts new files under load without losing, tearing or repeating a record:
//! rotated by size (`sink_rotate_size`) and reopened on `SIGUSR1` after the file was moved
//! away (what `logrotate` does), while `send --ack` delivers items.

use connwarden_test_common as common;

use std::collections::HashMap;
use std::io::Write;
use std::path::Path;
use std::time::Duration;

use common::Proc;

const ITEMS: usize = 60_000;

#[test]
fn rotation_by_size_and_by_signal_keeps_every_acked_item_once_and_whole() {
    let dir = tempfile::tempdir().expect("temp dir");
    let sink = dir.path().join("items.ndjson");
    let input = dir.path().join("input.txt");
    let mut out = std::io::BufWriter::new(std::fs::File::create(&input).expect("input"));
    for i in 0..ITEMS {
        writeln!(out, "10.{}.{}.{}", i >> 16 & 255, i >> 8 & 255, i & 255).expect("write");
    }
    out.flush().expect("flush");
    drop(out);

    let sink_arg = format!("file:{}", sink.display());
    let mut server = Proc::spawn(&[
        "--listen",
        "127.0.0.1:0",
        "--sink",
        &sink_arg,
        "--sink-rotate-size",
        "64KiB",
        "--log-format",
        "json",
    ]);
    let listening = server.wait_log("listening").expect("listening");
    let addr = listening["addr"].as_str().expect("addr").to_owned();
    let mut send = Proc::connwarden(&[
        "send",
        "--to",
        &addr,
        "--ack",
        "--rate",
        "20000",
        input.to_str().expect("utf-8"),
    ]);

    // What logrotate does: move the file, then signal; the sink opens a new one.
    let mut moved = 0;
    while moved < 10 && send.child.try_wait().expect("try_wait").is_none() {
        common::poll_until(Duration::from_secs(10), "the sink file", || sink.exists());
        let to = dir.path().join(format!("moved-{moved}.ndjson"));
        if std::fs::rename(&sink, &to).is_ok() {
            moved += 1;
            // SAFETY: kill(2) on the pid of a child this test owns.
            assert_eq!(
                unsafe { libc::kill(server.child.id() as i32, libc::SIGUSR1) },
                0
            );
        }
        std::thread::sleep(Duration::from_millis(150));
    }
    assert!(send.wait_exit(Duration::from_secs(60)).success(), "send");
    server.terminate();
    assert!(server.wait_exit(Duration::from_secs(20)).success());
    let log = server.stderr_so_far();
    assert!(!log.contains("sink failed"), "no batch failed: {log}");

    let files: Vec<_> = std::fs::read_dir(dir.path())
        .expect("list")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.file_name().is_some_and(|n| n != "input.txt"))
        .collect();
    let rotated = files.iter().filter(|p| is_rotated(p)).count();
    assert_eq!(moved, 10, "files moved and reopened while items flowed");
    assert!(rotated >= 10, "{rotated} rotations by size");
    // Each item: where it is (file, connection).
    let mut seen: HashMap<u64, Vec<(String, u64)>> = HashMap::new();
    for file in &files {
        let text = std::fs::read_to_string(file).expect("read");
        let name = file
            .file_name()
            .expect("name")
            .to_string_lossy()
            .into_owned();
        for line in text.lines() {
            let record: serde_json::Value = serde_json::from_str(line)
                .unwrap_or_else(|e| panic!("a torn line in {name}: {e}: {line}"));
            let id = record["item"]["id"].as_u64().expect("id");
            let conn = record["conn"].as_u64().unwrap_or_default();
            seen.entry(id).or_default().push((name.clone(), conn));
        }
    }
    let twice: Vec<_> = seen.iter().filter(|(_, at)| at.len() > 1).take(5).collect();
    assert!(
        twice.is_empty(),
        "items stored twice (id: where): {twice:?}; send: {}",
        send.stderr_so_far()
    );
    assert_eq!(
        seen.len(),
        ITEMS,
        "every acked item, in {} files",
        files.len()
    );
    eprintln!(
        "{ITEMS} items in {} files: {rotated} rotated by size, {moved} moved and reopened",
        files.len()
    );
}

fn is_rotated(path: &Path) -> bool {
    path.file_name()
        .and_then(|n| n.to_str())
        .is_some_and(|n| n.starts_with("items.ndjson.") && n.contains('T'))
}
