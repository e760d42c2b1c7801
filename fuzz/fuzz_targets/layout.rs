#![no_main]
//! `cargo +nightly fuzz run layout`: see `fvd_scenarios::fuzz::layout`.

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| fvd_scenarios::fuzz::layout(data));
