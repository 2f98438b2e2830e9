//! `cargo fuzz run proxy_header`: see `trackproxy::fuzz_api::proxy_header`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| trackproxy::fuzz_api::proxy_header(data));
