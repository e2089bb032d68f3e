//! See `connwarden_fuzz::sink_line` for what is checked.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| connwarden_fuzz::sink_line(data));
