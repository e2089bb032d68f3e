//! See `connwarden_fuzz::parse_frame` for what is checked.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| connwarden_fuzz::parse_frame(data));
