//! Several `serve` processes share one port with `--reuse-port` (the way past one process's
//! open-file limit); without it, the second one fails with a message naming address and step.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};

use common::binary;

/// A port that was free a moment ago.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn serve(port: u16, extra: &[&str]) -> Child {
    Command::new(binary())
        .args([
            "serve",
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--log-format",
            "json",
        ])
        .args(extra)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start serve")
}

/// Reads stderr until the "listening" line; false when the process ended first.
fn wait_listening(child: &mut Child) -> bool {
    let stderr = child.stderr.take().unwrap();
    let mut lines = BufReader::new(stderr).lines().map_while(Result::ok);
    lines.any(|line| line.contains("\"message\":\"listening\""))
}

struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn two_processes_share_a_port_with_reuse_port() {
    let port = free_port();
    let mut first = serve(port, &["--reuse-port"]);
    assert!(wait_listening(&mut first));
    let _first = Killed(first);
    let mut second = serve(port, &["--reuse-port"]);
    assert!(wait_listening(&mut second));
    let _second = Killed(second);
}

#[test]
fn second_process_without_reuse_port_fails_naming_the_address() {
    let port = free_port();
    let mut first = serve(port, &[]);
    assert!(wait_listening(&mut first));
    let _first = Killed(first);
    let output = serve(port, &[]).wait_with_output().unwrap();
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains(&format!("cannot listen on 127.0.0.1:{port}: bind failed")),
        "{stderr}"
    );
}
