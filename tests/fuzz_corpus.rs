//! The fuzz targets' properties, on stable: every input in `fuzz/seeds/` and every input that
//! once made a target fail (`fuzz/regressions/`), through all three checks. A seed is also
//! replayed with every control byte, so each meets every `max_frame` and several chunkings.
//! Fuzzing itself (libFuzzer, nightly) is `fuzz/run.sh`.

#[path = "../fuzz/src/lib.rs"]
mod checks;

use std::path::{Path, PathBuf};

fn inputs(dir: &str) -> Vec<(PathBuf, Vec<u8>)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz").join(dir);
    let mut inputs: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|entry| entry.expect("a directory entry").path())
        .filter(|path| path.is_file() && !path.ends_with(".gitkeep"))
        .map(|path| {
            let bytes = std::fs::read(&path).expect("readable input");
            (path, bytes)
        })
        .collect();
    inputs.sort();
    inputs
}

fn check_all(name: &Path, input: &[u8]) {
    for (target, check) in [
        ("decoder_chunks", checks::decoder_chunks as fn(&[u8])),
        ("parse_frame", checks::parse_frame),
        ("sink_line", checks::sink_line),
    ] {
        let outcome = std::panic::catch_unwind(|| check(input));
        assert!(
            outcome.is_ok(),
            "{target} failed on {} (rerun: cargo +nightly fuzz run {target} {0})",
            name.display()
        );
    }
}

#[test]
fn seeds_hold_with_every_control_byte() {
    let seeds = inputs("seeds");
    assert!(seeds.len() >= 10, "the seed corpus is missing");
    for (path, seed) in &seeds {
        let Some((_, stream)) = seed.split_last() else {
            continue;
        };
        for control in (0..=255u8).step_by(7) {
            let mut input = stream.to_vec();
            input.push(control);
            check_all(path, &input);
        }
    }
}

#[test]
fn every_past_failure_holds() {
    for (path, input) in inputs("regressions") {
        check_all(&path, &input);
    }
}

/// The checks can fail: a decoder that kept the whitespace of a pretty-printed object, or
/// accepted junk, would be caught.
#[test]
fn the_checks_catch_what_they_are_for() {
    let pretty = b"{\n  \"ip\": \"192.0.2.1\"\n}\n\x0f";
    checks::sink_line(pretty);
    let kept_whitespace = std::panic::catch_unwind(|| {
        checks::assert_compacted(
            b"{\n  \"ip\": \"192.0.2.1\"\n}",
            b"{\n\"ip\":\"192.0.2.1\"}",
        )
    });
    assert!(kept_whitespace.is_err());
    // The oracle for a broken object: what JSON could still continue is not broken.
    assert!(!checks::not_a_json_prefix(b"{\"ip\":\"10.0.0.1\",\"seq\":"));
    assert!(!checks::not_a_json_prefix(b"{\"a\":\"\\u12"));
    assert!(checks::not_a_json_prefix(b"{\"ip\":\"10.0.0.1\"\n{"));
    assert!(checks::not_a_json_prefix(b"{\"a\":\"\\u1\"i"));
    assert!(checks::not_a_json_prefix(b"{\"a\":\"x\n"));
    let changed_validity =
        std::panic::catch_unwind(|| checks::assert_compacted(b"{\"a\":1 2}", b"{\"a\":12}"));
    assert!(changed_validity.is_err());
}
