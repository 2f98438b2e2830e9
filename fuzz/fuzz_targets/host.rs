//! `cargo fuzz run host`: see `trackproxy::fuzz_api::host`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| trackproxy::fuzz_api::host(data));
