#![no_main]
//! `cargo +nightly fuzz run failure_file`: see `fvd_scenarios::fuzz::failure_file`.

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| fvd_scenarios::fuzz::failure_file(data));
