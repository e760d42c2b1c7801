#![no_main]
//! `cargo +nightly fuzz run trace_msr`: see `fvd_scenarios::fuzz::trace_msr`.

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| fvd_scenarios::fuzz::trace_msr(data));
