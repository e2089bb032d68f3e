//! Several `serve` processes share one port with `--reuse-port` (the way past one process's
//! open-file limit); without it, the second one fails with a message naming address and step.

mod common;

use std::time::Duration;

use common::Serve;

/// A port that was free a moment ago.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn serve(port: u16, extra: &[&str]) -> Serve {
    let listen = format!("127.0.0.1:{port}");
    let mut args = vec!["--listen", listen.as_str(), "--log-format", "json"];
    args.extend_from_slice(extra);
    Serve::spawn(&args)
}

#[test]
fn two_processes_share_a_port_with_reuse_port() {
    let port = free_port();
    let mut first = serve(port, &["--reuse-port"]);
    assert!(first.wait_log("listening").is_some());
    let mut second = serve(port, &["--reuse-port"]);
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
    let mut first = serve(port, &[]);
    assert!(first.wait_log("listening").is_some());
    let mut second = serve(port, &[]);
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
