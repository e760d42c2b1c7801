#![no_main]
//! `cargo +nightly fuzz run journal`: see `fvd_scenarios::fuzz::journal`.

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| fvd_scenarios::fuzz::journal(data));
