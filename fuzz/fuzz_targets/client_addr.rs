//! `cargo fuzz run client_addr`: see `trackproxy::fuzz_api::client_addr`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| trackproxy::fuzz_api::client_addr(data));
