//! Both sides of the keep-alive judgment on lossy paths, in network namespaces with nftables
//! dropping packets at random each way (`doctor --measure --loss`, which removes its
//! namespaces on every path):
//!
//! - with the defaults (30 s + 1 s × 30), 500 healthy idle peers at 10 % loss for 6 minutes:
//!   none closed; then their link goes down, and every one is closed within the bound + 1 s;
//! - with the fragile split 2 s + 1 s × 3, at 5 % and at 10 % loss, the measured false closes
//!   agree with doctor's prediction within a factor of 3 (and there are some: the measurement
//!   can tell a fragile split from a robust one).
//!
//! The three run at once, each in its own namespaces. Needs root, `ip` and `nft` (.ci/run
//! installs nftables); skipped without root or `ip`, unless `CW_TEST_REQUIRE_NETNS=1` (CI).

use connwarden_test_common as common;

use std::process::{Command, Output};
use std::thread;

use common::binary;

fn doctor_loss(args: &[&str]) -> serde_json::Value {
    let out: Output = Command::new(binary())
        .args(["doctor", "--measure", "--json"])
        .args(args)
        .output()
        .expect("run doctor --measure --loss");
    let stderr = String::from_utf8_lossy(&out.stderr);
    let report: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{e}; status {}; stderr: {stderr}", out.status));
    let loss = report["loss"].clone();
    eprintln!("{args:?}: {loss}");
    assert!(
        loss.is_object(),
        "no loss report: {report}; stderr: {stderr}"
    );
    loss
}

#[test]
fn lossy_paths_close_no_healthy_peer_with_the_defaults_and_as_predicted_with_a_fragile_split() {
    if !common::netns_or_skip(
        "lossy_paths_close_no_healthy_peer_with_the_defaults_and_as_predicted_with_a_fragile_split",
    ) {
        return;
    }
    let robust = thread::spawn(|| {
        doctor_loss(&[
            "--loss",
            "10",
            "--loss-peers",
            "500",
            "--loss-duration",
            "6m",
        ])
    });
    // The split 2 s + 1 s x 3, 500 peers for 2 minutes, at `loss` per cent each way.
    let fragile = |loss: &'static str| {
        thread::spawn(move || {
            doctor_loss(&[
                "--loss",
                loss,
                "--loss-peers",
                "500",
                "--loss-duration",
                "2m",
                "--keepalive-idle",
                "2s",
                "--keepalive-interval",
                "1s",
                "--keepalive-count",
                "3",
            ])
        })
    };
    let (at_5, at_10) = (fragile("5"), fragile("10"));

    for (name, fragile) in [("5 %", at_5), ("10 %", at_10)] {
        let m = fragile.join().expect("fragile measurement");
        let (measured, predicted) = (
            m["false_closes"].as_f64().unwrap(),
            m["predicted"].as_f64().unwrap(),
        );
        assert!(
            predicted >= 10.0,
            "{name}: the fragile split predicts few closes: {m}"
        );
        assert!(
            m["agrees"] == true && measured * 3.0 >= predicted && measured <= predicted * 3.0,
            "{name}: measured {measured} false closes, predicted {predicted:.1}: {m}"
        );
        // Dead peers are closed within the (short) bound whatever the loss.
        assert_eq!(m["dead_closed_in_bound"], m["dead_peers"], "{name}: {m}");
    }

    let m = robust.join().expect("default measurement");
    assert_eq!(m["split"], "30s + 1s x 30", "{m}");
    assert_eq!(
        m["false_closes"], 0,
        "healthy peers closed with the defaults: {m}"
    );
    assert_eq!(m["dead_peers"], 500, "{m}");
    assert_eq!(m["dead_closed_in_bound"], 500, "{m}");
    assert!(m["dead_slowest_ms"].as_u64().unwrap() <= 61_000, "{m}");
    assert_eq!(m["pass"], true, "{m}");
}
