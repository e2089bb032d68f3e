//! The PromQL of `docs/OPERATIONS.md` computes what the document says: each ```promql block
//! becomes a recording rule, and `promtool test rules` (Debian's `prometheus` package, which
//! `.ci/run` installs) evaluates it against series named and labelled as connwarden's, with
//! results worked out by hand here.

use std::process::Command;

/// The ```promql blocks of the operations guide, in order, one expression each.
fn documented_expressions() -> Vec<String> {
    let doc = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/OPERATIONS.md"))
        .expect("docs/OPERATIONS.md");
    let mut blocks = Vec::new();
    let mut rest = doc.as_str();
    while let Some(start) = rest.find("```promql\n") {
        let body = &rest[start + "```promql\n".len()..];
        let end = body.find("```").expect("closed block");
        blocks.push(body[..end].split_whitespace().collect::<Vec<_>>().join(" "));
        rest = &body[end + 3..];
    }
    blocks
}

/// What each documented expression must give at 15 minutes, as `promtool` writes expected
/// samples: (labels, value).
fn expected(index: usize) -> Vec<(&'static str, f64)> {
    match index {
        // Every delay in (3, 5]: the 99th percentile interpolates to 3 + 0.99 × 2, which is
        // 4.98 less one unit in the last place in binary floating point (promtool compares
        // exactly).
        0 => vec![(r#"{reason="keepalive_timeout"}"#, 4.979_999_999_999_999_5)],
        // The bound, as configured.
        1 => vec![(r#"{reason="keepalive_timeout"}"#, 5.0)],
        // 12 closes a minute with reason peer_closed, none kicked.
        2 => vec![
            (r#"{reason="kicked"}"#, 0.0),
            (r#"{reason="peer_closed"}"#, 12.0),
        ],
        // 6 refusals a minute: 0.1 a second.
        3 => vec![(r#"{code="invalid_ip"}"#, 0.1)],
        // 50 of 200.
        4 => vec![("{}", 0.25)],
        _ => panic!("a new promql block in docs/OPERATIONS.md: give it an expected result here"),
    }
}

/// One sample a minute for 30 minutes: five delays in (3 s, 5 s] a minute, a bound of 5 s,
/// 12 closes and 6 refused items a minute, a queue 50 of 200 full.
const INPUT_SERIES: &str = r#"
      - series: 'connwarden_detection_delay_seconds_bucket{reason="keepalive_timeout",le="1"}'
        values: '0x30'
      - series: 'connwarden_detection_delay_seconds_bucket{reason="keepalive_timeout",le="3"}'
        values: '0x30'
      - series: 'connwarden_detection_delay_seconds_bucket{reason="keepalive_timeout",le="5"}'
        values: '0+5x30'
      - series: 'connwarden_detection_delay_seconds_bucket{reason="keepalive_timeout",le="+Inf"}'
        values: '0+5x30'
      - series: 'connwarden_detection_bound_seconds{reason="keepalive_timeout"}'
        values: '5x30'
      - series: 'connwarden_connections_closed_total{reason="peer_closed"}'
        values: '0+12x30'
      - series: 'connwarden_connections_closed_total{reason="kicked"}'
        values: '0x30'
      - series: 'connwarden_items_refused_total{code="invalid_ip"}'
        values: '0+6x30'
      - series: 'connwarden_queue_items'
        values: '50x30'
      - series: 'connwarden_queue_capacity_items'
        values: '200x30'
"#;

#[test]
fn documented_promql_computes_what_the_guide_says() {
    let expressions = documented_expressions();
    assert_eq!(expressions.len(), 5, "{expressions:#?}");
    let dir = tempfile::tempdir().expect("tempdir");
    let mut rules = String::from("groups:\n  - name: documented\n    rules:\n");
    let mut tests = format!(
        "rule_files: [rules.yml]\nevaluation_interval: 1m\ntests:\n  - interval: 1m\n    input_series:{INPUT_SERIES}    promql_expr_test:\n"
    );
    for (index, expression) in expressions.iter().enumerate() {
        rules.push_str(&format!(
            "      - record: documented_{index}\n        expr: '{}'\n",
            expression.replace('\'', "''")
        ));
        tests.push_str(&format!(
            "      - expr: documented_{index}\n        eval_time: 15m\n        exp_samples:\n"
        ));
        for (labels, value) in expected(index) {
            tests.push_str(&format!(
                "          - labels: 'documented_{index}{labels}'\n            value: {value:?}\n"
            ));
        }
    }
    std::fs::write(dir.path().join("rules.yml"), &rules).expect("rules.yml");
    std::fs::write(dir.path().join("test.yml"), &tests).expect("test.yml");
    let out = Command::new("promtool")
        .args(["test", "rules", "test.yml"])
        .current_dir(dir.path())
        .output()
        .expect("promtool (apt-get install prometheus)");
    assert!(
        out.status.success(),
        "promtool test rules failed:\n{}{}\n--- rules.yml:\n{rules}\n--- test.yml:\n{tests}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
