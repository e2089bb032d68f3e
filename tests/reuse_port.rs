//! Several `serve` processes share one port with `--reuse-port` (the way past one process's
//! open-file limit); without it, the second one fails with a message naming address and step.

use connwarden_test_common as common;

use std::time::Duration;

use common::Serve;

use common::free_port;

/// `serve` on loopback `port`, not yet listening.
fn serve_on(port: u16, extra: &[&str]) -> Serve {
    common::serve().port(port).args(extra).spawn()
}

#[test]
fn two_processes_share_a_port_with_reuse_port() {
    let port = free_port();
    let mut first = serve_on(port, &["--reuse-port"]);
    assert!(first.wait_log("listening").is_some());
    let mut second = serve_on(port, &["--reuse-port"]);
    assert!(
        second.wait_log("listening").is_some(),
        "{}",
        second.stderr_so_far()
    );
    assert!(
        first.child.try_wait().unwrap().is_none(),
        "first process still serving"
    );
}

#[test]
fn second_process_without_reuse_port_fails_naming_the_address() {
    let port = free_port();
    let mut first = serve_on(port, &[]);
    assert!(first.wait_log("listening").is_some());
    let mut second = serve_on(port, &[]);
    assert!(
        second.wait_log("listening").is_none(),
        "second process must not listen"
    );
    let status = second.wait_exit(Duration::from_secs(10));
    assert_eq!(status.code(), Some(1));
    let stderr = second.stderr_so_far();
    assert!(
        stderr.contains(&format!("cannot listen on 127.0.0.1:{port}: bind failed")),
        "{stderr}"
    );
}
