//! `connwarden bench` against a real `serve`: each workload completes, counts what it did and
//! reports JSON that scripts can read.

use connwarden_test_common as common;

use std::process::Command;

use common::{binary, Proc};

/// `serve` to `/dev/null`: its process and data address.
fn serve_to_null() -> (Proc, String) {
    let (serve, _admin, addr) = common::serve().start();
    (serve, addr)
}

fn bench(args: &[&str]) -> serde_json::Value {
    let out = Command::new(binary())
        .arg("bench")
        .args(args)
        .arg("--json")
        .output()
        .expect("run bench");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_str(stdout.trim()).expect("one JSON object")
}

#[test]
fn flood_with_acks_gets_every_item_acknowledged_and_reports_latency() {
    let (_serve, addr) = serve_to_null();
    let report = bench(&[
        "flood", "--to", &addr, "--conns", "8", "--items", "5000", "--ack",
    ]);
    assert_eq!(report["sent"], 40_000);
    assert_eq!(report["acknowledged"], 40_000);
    assert_eq!(report["ack_latency"]["count"], 40_000);
    assert!(report["ack_latency"]["p50_ms"].as_f64().unwrap() > 0.0);
    assert!(report["items_per_second"].as_f64().unwrap() > 0.0);
}

#[test]
fn churn_and_idle_complete_from_spread_source_addresses() {
    let (_serve, addr) = serve_to_null();
    let churn = bench(&["churn", "--to", &addr, "--cycles", "2000", "--sources", "4"]);
    assert_eq!(churn["completed"], 2000);
    assert_eq!(churn["cycle_latency"]["count"], 2000);
    let idle = bench(&[
        "idle",
        "--to",
        &addr,
        "--conns",
        "500",
        "--sources",
        "4",
        "--hold",
        "200ms",
    ]);
    assert_eq!(idle["opened"], 500);
    assert_eq!(idle["closed_by_server"], 0);
}
