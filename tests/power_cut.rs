//! What an acknowledgement is worth when the machine loses power, and when `fsync` fails.
//!
//! `serve` writes its `file:` sink onto LostFs (`tests/common/src/lostfs.rs`), a FUSE filesystem that
//! keeps written-but-unsynced data apart and forgets it on a simulated power cut. `send --ack`
//! delivers numbered items; mid-run the power goes (every operation fails from that instant),
//! `serve` is killed, the power comes back with only what was durable (or with a torn part of
//! the rest), and `serve` starts again on what is left. `send` reconnects and sends again what
//! was not acknowledged. At the end the power is cut once more and what is durable is read:
//! every item must be there.
//!
//! First the fault injector is checked: with `--fsync never` (acks before `fsync`) the same
//! run must lose acknowledged items, or the test could not tell a durable ack from a hopeful one.
//!
//! Needs root and FUSE (`/dev/fuse`, `fusermount3` from Debian's fuse3); skipped with a message
//! where they are missing, unless `CW_TEST_REQUIRE_FUSE=1` (as in CI).
#![cfg(target_os = "linux")]

use common::lostfs;
use connwarden_test_common as common;

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use common::{free_port, poll_until, Admin, Proc};
use lostfs::{Cut, LostFs};

/// Items per run.
const ITEMS: u64 = 30_000;
const SINK: &str = "sink.ndjson";

/// What one run left behind.
#[derive(Debug)]
struct Outcome {
    /// Items (of those `send` had acknowledged, and so never sent again) missing from every
    /// durable file.
    missing: u64,
    /// Items stored more than once (sent again after the cut).
    duplicates: u64,
    /// Lines that are not a whole record.
    torn_lines: usize,
    /// Bytes the power cut forgot.
    forgotten: u64,
    /// What `send` said at the end.
    send_summary: String,
    send_ok: bool,
}

fn write_items(path: &Path) {
    let text: String = (0..ITEMS)
        .map(|n| format!("{{\"ip\":\"192.0.2.1\",\"n\":{n}}}\n"))
        .collect();
    std::fs::write(path, text).expect("write the items");
}

/// `serve` on `port`, its sink on the mounted filesystem.
fn serve_on_mount(port: u16, mount: &Path, fsync: &str) -> (Proc, Admin) {
    let (server, admin, _addr) = common::serve()
        .port(port)
        .sink_file(&mount.join(SINK))
        .args(&["--fsync", fsync])
        .within(Duration::from_secs(20))
        .start();
    (server, admin)
}

fn lines_now(fs: &LostFs) -> usize {
    fs.contents(SINK)
        .map_or(0, |c| c.iter().filter(|b| **b == b'\n').count())
}

/// The power goes and `serve` dies with it; the power comes back.
fn power_cut(fs: &LostFs, server: &mut Proc, cut: Cut) -> u64 {
    fs.power_cut();
    server.child.kill().expect("kill serve");
    server.child.wait().expect("reap serve");
    fs.power_on(cut)
}

/// Every record in every file that survived, by item number; and the lines that are not whole
/// records.
fn stored(fs: &LostFs) -> (BTreeMap<u64, u64>, usize) {
    let mut seen = BTreeMap::new();
    let mut torn = 0;
    for name in fs.names() {
        let contents = fs.contents(&name).expect("listed");
        for line in contents.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
            match serde_json::from_slice::<serde_json::Value>(line) {
                Ok(record) => {
                    let n = record["item"]["n"].as_u64().expect("an item number");
                    *seen.entry(n).or_insert(0) += 1;
                }
                Err(_) => torn += 1,
            }
        }
    }
    (seen, torn)
}

/// One run: items sent with acks, the power cut once a third is stored, `serve` started again,
/// then the power cut once more after `send` ends; what is durable then is counted.
fn run(fsync: &str, cut: Cut) -> Outcome {
    let dir = tempfile::tempdir().expect("temp dir");
    let mount_dir = dir.path().join("mnt");
    std::fs::create_dir(&mount_dir).expect("mount point");
    let mounted = LostFs::mount(&mount_dir);
    let fs = mounted.fs.clone();
    let input = dir.path().join("items.ndjson");
    write_items(&input);
    let port = free_port();
    let (mut server, _admin) = serve_on_mount(port, &mount_dir, fsync);

    let to = format!("127.0.0.1:{port}");
    let mut send = Proc::connwarden(&[
        "send",
        "--ack",
        "--to",
        &to,
        "--backoff-max",
        "200ms",
        "--rate",
        "20000",
        input.to_str().expect("utf-8 path"),
    ]);
    // A third stored, and something written that is not yet synced (so the cut forgets).
    poll_until(
        Duration::from_secs(60),
        "a third of the items stored",
        || lines_now(&fs) as u64 >= ITEMS / 3 && fs.unsynced_bytes(SINK) > 1,
    );
    let forgotten = power_cut(&fs, &mut server, cut);
    let (mut server, _admin) = serve_on_mount(port, &mount_dir, fsync);

    let status = send.wait_exit(Duration::from_secs(120));
    let send_summary = send
        .stderr_so_far()
        .lines()
        .find(|l| l.starts_with("sent "))
        .unwrap_or("(no summary)")
        .to_owned();
    // Whatever `send` was told is acknowledged must be durable now.
    power_cut(&fs, &mut server, Cut::Clean);
    let (seen, torn_lines) = stored(&fs);
    let missing = (0..ITEMS).filter(|n| !seen.contains_key(n)).count() as u64;
    let duplicates = seen.values().filter(|c| **c > 1).count() as u64;
    let outcome = Outcome {
        missing,
        duplicates,
        torn_lines,
        forgotten,
        send_summary,
        send_ok: status.success(),
    };
    eprintln!("fsync {fsync}, {cut:?} cut: {outcome:?}");
    outcome
}

impl Outcome {
    /// Items `send` sent again after a lost connection (its summary's count).
    fn resent(&self) -> u64 {
        let after = self.send_summary.split("resent ").nth(1).unwrap_or("");
        after
            .split(',')
            .next()
            .and_then(|n| n.trim().parse().ok())
            .unwrap_or_else(|| panic!("no resent count in {:?}", self.send_summary))
    }

    /// What a sink that acknowledges only durable items must show: every item stored, `send`
    /// done with nothing refused, and every item stored twice one that `send` sent again.
    fn assert_nothing_acknowledged_was_lost(&self) {
        assert!(self.send_ok, "send completes with resends only: {self:?}");
        assert!(self.send_summary.contains("rejected 0"), "{self:?}");
        assert_eq!(self.missing, 0, "{self:?}");
        assert!(self.duplicates <= self.resent(), "{self:?}");
    }
}

#[test]
fn the_injector_catches_a_sink_that_acks_before_fsync() {
    if !lostfs::available_or_skip("power_cut") {
        return;
    }
    // `--fsync never` acknowledges once the kernel has the bytes: the power cut must cost
    // acknowledged items, and `send`, told they were stored, does not send them again.
    let outcome = run("never", Cut::Clean);
    assert!(outcome.forgotten > 0, "{outcome:?}");
    assert!(
        outcome.missing > 0,
        "a power cut lost no acknowledged item of a sink that does not sync: the injector \
         cannot tell durable acks from hopeful ones: {outcome:?}"
    );
}

#[test]
fn no_acknowledged_item_is_lost_to_a_power_cut_with_group_commit() {
    if !lostfs::available_or_skip("power_cut") {
        return;
    }
    let outcome = run("batch", Cut::Clean);
    assert!(
        outcome.forgotten > 0,
        "the cut forgot something: {outcome:?}"
    );
    outcome.assert_nothing_acknowledged_was_lost();
    assert!(outcome.torn_lines <= 1, "{outcome:?}");
}

#[test]
fn no_acknowledged_item_is_lost_to_a_power_cut_with_fsync_always() {
    if !lostfs::available_or_skip("power_cut") {
        return;
    }
    let outcome = run("always", Cut::Clean);
    assert!(
        outcome.forgotten > 0,
        "the cut forgot something: {outcome:?}"
    );
    outcome.assert_nothing_acknowledged_was_lost();
    assert!(outcome.torn_lines <= 1, "{outcome:?}");
}

#[test]
fn a_torn_write_leaves_one_torn_line_and_loses_no_acknowledged_item() {
    if !lostfs::available_or_skip("power_cut") {
        return;
    }
    let outcome = run("batch", Cut::Torn);
    outcome.assert_nothing_acknowledged_was_lost();
    // The torn tail became a line of its own at the restart, and only that one.
    assert_eq!(outcome.torn_lines, 1, "{outcome:?}");
}

#[test]
fn a_failed_fsync_is_never_retried_on_its_file_and_loses_no_acknowledged_item() {
    if !lostfs::available_or_skip("power_cut") {
        return;
    }
    let dir = tempfile::tempdir().expect("temp dir");
    let mount_dir = dir.path().join("mnt");
    std::fs::create_dir(&mount_dir).expect("mount point");
    let mounted = LostFs::mount(&mount_dir);
    let fs = mounted.fs.clone();
    let input = dir.path().join("items.ndjson");
    write_items(&input);
    let port = free_port();
    let (mut server, admin) = serve_on_mount(port, &mount_dir, "batch");
    let to = format!("127.0.0.1:{port}");
    let mut send = Proc::connwarden(&[
        "send",
        "--ack",
        "--to",
        &to,
        "--rate",
        "20000",
        input.to_str().expect("utf-8 path"),
    ]);
    poll_until(
        Duration::from_secs(60),
        "a third of the items stored",
        || lines_now(&fs) as u64 >= ITEMS / 3,
    );
    fs.fail_next_fsyncs(1);
    poll_until(Duration::from_secs(30), "the failed fsync", || {
        fs.sync_counts().1 == 1
    });
    let status = send.wait_exit(Duration::from_secs(120));
    let summary = send.stderr_so_far();
    assert!(status.success(), "{summary}");
    assert_eq!(
        fs.fsyncs_after_failure(),
        0,
        "a file whose fsync failed was synced again"
    );

    // The records of the failed fsync were written again by the server: no client saw an error.
    assert!(summary.contains("rejected 0"), "{summary}");

    let metrics = admin.metrics();
    let value = |name: &str| common::metric(&metrics, name).unwrap_or(-1.0);
    assert_eq!(value("connwarden_sink_fsync_failures_total"), 1.0);
    assert_eq!(value("connwarden_sink_files_abandoned_total"), 1.0);
    assert_eq!(value("connwarden_sink_healthy"), 1.0, "healthy again");
    let names = fs.names();
    assert_eq!(
        names.len(),
        2,
        "the given-up file and the new one: {names:?}"
    );

    power_cut(&fs, &mut server, Cut::Clean);
    let (seen, torn) = stored(&fs);
    let missing: Vec<u64> = (0..ITEMS).filter(|n| !seen.contains_key(n)).collect();
    assert!(
        missing.is_empty(),
        "{} acknowledged items lost, first {:?}",
        missing.len(),
        &missing[..missing.len().min(10)]
    );
    assert!(torn <= 1, "{torn} torn lines");
    eprintln!(
        "fsync failure: {} items stored, {} twice, {} torn lines; send: {}",
        seen.len(),
        seen.values().filter(|c| **c > 1).count(),
        torn,
        summary
            .lines()
            .find(|l| l.starts_with("sent "))
            .unwrap_or("")
    );
}
