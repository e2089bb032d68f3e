//! Configuration through the real binary: precedence, printing, and errors that name the key
//! before anything listens.

use connwarden_test_common as common;

use std::process::{Command, Output};

use common::binary;

fn run_serve(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut command = Command::new(binary());
    command.arg("serve").args(args);
    for (k, v) in env {
        command.env(k, v);
    }
    command.output().expect("run connwarden")
}

fn printed(output: &Output) -> toml::Table {
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout)
        .parse()
        .expect("printed config is TOML")
}

#[test]
fn print_config_shows_defaults() {
    let config = printed(&run_serve(&["--print-config"], &[]));
    assert_eq!(
        config["listen"].as_array().unwrap()[0].as_str(),
        Some("0.0.0.0:7000")
    );
    assert_eq!(config["keepalive_idle"].as_str(), Some("30s"));
    assert_eq!(config["keepalive_interval"].as_str(), Some("1s"));
    assert_eq!(config["keepalive_count"].as_integer(), Some(30));
    assert_eq!(config["queue"].as_integer(), Some(65536));
    assert_eq!(config["max_frame"].as_integer(), Some(65536));
}

#[test]
fn flags_beat_environment_which_beats_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("connwarden.toml");
    std::fs::write(&file, "keepalive_idle = \"11s\"\nkeepalive_interval = \"4s\"\nqueue = 100\nlisten = [\"127.0.0.1:9001\"]\n").unwrap();
    let output = run_serve(
        &[
            "--config",
            file.to_str().unwrap(),
            "--print-config",
            "--queue",
            "300",
            "--listen",
            "127.0.0.1:9100",
            "--listen",
            "[::1]:9100",
        ],
        &[
            ("CONNWARDEN_KEEPALIVE_IDLE", "22s"),
            ("CONNWARDEN_QUEUE", "200"),
        ],
    );
    let config = printed(&output);
    assert_eq!(
        config["keepalive_idle"].as_str(),
        Some("22s"),
        "env over file"
    );
    assert_eq!(
        config["keepalive_interval"].as_str(),
        Some("4s"),
        "file over default"
    );
    assert_eq!(config["queue"].as_integer(), Some(300), "flag over env");
    let listen: Vec<&str> = config["listen"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert_eq!(listen, ["127.0.0.1:9100", "[::1]:9100"]);
}

#[test]
fn invalid_values_and_contradictions_exit_2_naming_the_key() {
    /// Flags, environment, and the name the error must mention.
    type Case<'a> = (&'a [&'a str], &'a [(&'a str, &'a str)], &'a str);
    let cases: &[Case] = &[
        (&["--queue", "0"], &[], "queue"),
        (&["--keepalive-idle", "soon"], &[], "--keepalive-idle"),
        (
            &[],
            &[("CONNWARDEN_KEEPALIVE_COUNT", "lots")],
            "CONNWARDEN_KEEPALIVE_COUNT",
        ),
        (
            &["--heartbeat-interval", "30s", "--idle-timeout", "20s"],
            &[],
            "heartbeat_interval",
        ),
        (
            &["--user-timeout", "2s", "--keepalive-interval", "5s"],
            &[],
            "user_timeout",
        ),
        (&["--overflow", "maybe"], &[], "--overflow"),
    ];
    for (args, env, key) in cases {
        // --listen on a port that would otherwise serve: an error must come before listening.
        let mut all = vec!["--listen", "127.0.0.1:0"];
        all.extend_from_slice(args);
        let output = run_serve(&all, env);
        assert_eq!(output.status.code(), Some(2), "{args:?} {env:?}");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(stderr.contains(key), "{key} not named in: {stderr}");
        assert!(!stderr.contains("listening"), "{stderr}");
    }
}

#[test]
fn unknown_key_in_file_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("c.toml");
    std::fs::write(&file, "keepalive_idel = \"3s\"\n").unwrap();
    let output = run_serve(&["--config", file.to_str().unwrap(), "--print-config"], &[]);
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("keepalive_idel"));
}

/// `--print-config` of the defaults and of a file setting every key is byte for byte what it
/// printed before the keys were declared in one table (`tests/fixtures/config/*.printed.toml`,
/// written by the binary of 22af0b0), with the keys added since (`takeover`, `flap_threshold`,
/// `proxy_protocol`, `proxy_trusted`, `max_handshakes`, `park_after`) in their rows' places.
#[test]
fn print_config_is_byte_for_byte_what_it_was() {
    let fixtures = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/config");
    let full = fixtures.join("full.toml");
    let cases = [
        (vec!["--print-config"], "default.printed.toml"),
        (
            vec!["--config", full.to_str().unwrap(), "--print-config"],
            "full.printed.toml",
        ),
    ];
    for (args, expected) in cases {
        let output = run_serve(&args, &[]);
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
        let expected = std::fs::read_to_string(fixtures.join(expected)).unwrap();
        assert_eq!(
            String::from_utf8_lossy(&output.stdout),
            expected,
            "{args:?}"
        );
    }
}

/// A value that breaks a rule is refused naming the key, its value and where it came from:
/// the file, the environment, a flag, or the default (for a key nobody set).
#[test]
fn a_refusal_names_where_the_value_came_from() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("c.toml");
    std::fs::write(&file, "queue = 0\n").unwrap();
    let file = file.to_str().unwrap();
    type Case<'a> = (&'a [&'a str], &'a [(&'a str, &'a str)], String);
    let cases: &[Case] = &[
        (
            &["--config", file],
            &[],
            format!("queue = 0 (from {file}): "),
        ),
        (
            &[],
            &[("CONNWARDEN_QUEUE", "0")],
            "queue = 0 (from environment variable CONNWARDEN_QUEUE): ".into(),
        ),
        (
            &["--queue", "0"],
            &[],
            "queue = 0 (from flag --queue): ".into(),
        ),
        (
            &["--tls-cert", "/tmp/cert.pem"],
            &[],
            "tls_key = \"off\" (default): TLS needs both".into(),
        ),
    ];
    for (args, env, expected) in cases {
        let mut all = vec!["--listen", "127.0.0.1:0", "--check-config"];
        all.extend_from_slice(args);
        let output = run_serve(&all, env);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{args:?} {env:?}: {stderr}");
        assert!(
            stderr.contains(expected.as_str()),
            "{expected:?} not in: {stderr}"
        );
    }
}

/// `serve --help` has a flag for every key, with the key's documentation and its default:
/// the flags are made from the table of keys, not written beside it.
#[test]
fn every_key_has_its_flag_in_serve_help() {
    let output = run_serve(&["--help"], &[]);
    assert!(output.status.success());
    let help = String::from_utf8_lossy(&output.stdout);
    for &key in connwarden::config::Key::ALL {
        assert!(
            help.contains(&key.flag()),
            "{} missing from --help",
            key.flag()
        );
    }
    // The documentation and the default of one, as the table declares them.
    let key = connwarden::config::Key::KeepaliveIdle;
    let first_words: String = key
        .doc()
        .split_whitespace()
        .take(4)
        .collect::<Vec<_>>()
        .join(" ");
    assert!(help.contains(&first_words), "{first_words:?} not in --help");
    assert!(help.contains("[default: 30s]"), "{help}");
}
