//! Connections accepted in one burst do not probe in one burst: each gets a keep-alive phase
//! over the idle period, and keeps it (src/phase.rs).
//!
//! Observed from the server's side, as an operator would: `since_ack_ms` of every connection
//! in the admin API (`TCP_INFO`'s time since the peer's last ACK). On an idle connection that
//! ACK is the answer to a keep-alive probe, so sampling it gives the moment each probe was
//! answered. The peers are this test's own sockets on loopback, alive throughout: the kernel
//! answers every probe, and no connection may close.

mod common;

use std::collections::BTreeMap;
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::{metric, Admin, Proc};

const PEERS: usize = 240;
const IDLE: u64 = 8;

/// Answers seen per connection id, as times since the burst was accepted.
fn sample(admin: &Admin, since: Instant, answers: &mut BTreeMap<u64, Vec<f64>>) -> usize {
    let listed = admin.json(&format!("/connections?limit={}", PEERS + 10));
    let at = since.elapsed().as_secs_f64();
    let items = listed["items"].as_array().expect("items");
    for conn in items {
        let id = conn["id"].as_u64().expect("id");
        let since_ack = conn["tcp"]["since_ack_ms"].as_u64().expect("since_ack_ms") as f64 / 1e3;
        let answered = at - since_ack;
        // Past the handshake, and not the answer seen at the last sample.
        let seen = answers.entry(id).or_default();
        if answered > 0.5 && seen.last().is_none_or(|last| answered - last > 0.5) {
            seen.push(answered);
        }
    }
    items.len()
}

#[test]
fn a_burst_of_connections_probes_spread_over_the_idle_period_and_keeps_its_phases() {
    let idle = format!("{IDLE}s");
    let mut args = common::LOOPBACK_TO_NULL.to_vec();
    args.extend([
        "--keepalive-idle",
        &idle,
        "--keepalive-interval",
        "1s",
        "--keepalive-count",
        "3",
    ]);
    let mut server = Proc::spawn(&args);
    let admin = Admin::of(&mut server);
    let listening = server.wait_log("listening").expect("listening");
    let addr = listening["addr"].as_str().expect("addr").to_owned();

    let peers: Vec<TcpStream> = (0..PEERS)
        .map(|_| TcpStream::connect(&addr).expect("connect"))
        .collect();
    let accepted = Instant::now();
    common::poll_until(common::PROMPT, "every peer accepted", || {
        metric(&admin.metrics(), "connwarden_connections_live") == Some(PEERS as f64)
    });

    // Three idle periods, sampled four times a second.
    let mut answers: BTreeMap<u64, Vec<f64>> = BTreeMap::new();
    while accepted.elapsed() < Duration::from_secs(3 * IDLE) {
        let live = sample(&admin, accepted, &mut answers);
        assert_eq!(live, PEERS, "a healthy peer was closed");
        std::thread::sleep(Duration::from_millis(250));
    }

    // The first answers, by the second of the idle period they fell in.
    let mut per_second = [0usize; IDLE as usize + 2];
    for seen in answers.values() {
        let first = seen
            .first()
            .expect("every connection was probed at least once");
        per_second[(*first as usize).min(IDLE as usize + 1)] += 1;
    }
    eprintln!("first probe answers per second after the burst: {per_second:?}");
    let even = PEERS / IDLE as usize;
    let busiest = *per_second.iter().max().expect("seconds");
    let seconds_used = per_second.iter().filter(|&&n| n > 0).count();
    // Without phases, every first probe leaves at the idle, in one or two seconds.
    assert!(
        seconds_used >= IDLE as usize - 1 && busiest <= 2 * even,
        "the first probes were not spread: {per_second:?} (even: {even} a second)"
    );

    // Once its idle is back, a connection is probed once per idle period, keeping its phase:
    // no two answers closer than the idle (less the kernel's timer rounding).
    let mut gaps = Vec::new();
    for (id, seen) in &answers {
        for pair in seen.windows(2) {
            if pair[0] >= IDLE as f64 + 1.0 {
                let gap = pair[1] - pair[0];
                assert!(
                    gap >= IDLE as f64 - 1.0,
                    "connection {id} probed {gap:.2} s apart, its answers: {seen:?}"
                );
                gaps.push(gap);
            }
        }
    }
    gaps.sort_by(f64::total_cmp);
    assert!(
        gaps.len() >= PEERS / 2,
        "too few probe cycles seen: {}",
        gaps.len()
    );
    eprintln!(
        "{} probe cycles after the first: median {:.2} s apart, shortest {:.2} s",
        gaps.len(),
        gaps[gaps.len() / 2],
        gaps[0]
    );

    let text = admin.metrics();
    assert_eq!(
        metric(
            &text,
            "connwarden_connections_closed_total{reason=\"keepalive_timeout\"}"
        )
        .unwrap_or(0.0),
        0.0
    );
    drop(peers);
    server.terminate();
    assert!(server.wait_exit(Duration::from_secs(20)).success());
}
