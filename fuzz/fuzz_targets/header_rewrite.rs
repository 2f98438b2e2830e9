//! `cargo fuzz run header_rewrite`: see `trackproxy::fuzz_api::header_rewrite`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| trackproxy::fuzz_api::header_rewrite(data));
