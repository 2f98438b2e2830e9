//! `cargo fuzz run config`: see `trackproxy::fuzz_api::config_load`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| trackproxy::fuzz_api::config_load(data));
