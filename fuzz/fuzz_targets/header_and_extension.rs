#![no_main]
//! `cargo +nightly fuzz run header_and_extension`: see `fvd_scenarios::fuzz::header_and_extension`.

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| fvd_scenarios::fuzz::header_and_extension(data));
