#![no_main]
//! `cargo +nightly fuzz run trace_plain`: see `fvd_scenarios::fuzz::trace_plain`.

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| fvd_scenarios::fuzz::trace_plain(data));
