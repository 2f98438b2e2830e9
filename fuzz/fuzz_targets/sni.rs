//! `cargo fuzz run sni`: see `trackproxy::fuzz_api::sni`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| trackproxy::fuzz_api::sni(data));
