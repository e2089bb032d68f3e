//! See `connwarden_fuzz::decoder_chunks` for what is checked.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| connwarden_fuzz::decoder_chunks(data));
