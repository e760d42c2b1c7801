#![no_main]
//! `cargo +nightly fuzz run trace_cloudphysics`: see `fvd_scenarios::fuzz::trace_cloudphysics`.

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| fvd_scenarios::fuzz::trace_cloudphysics(data));
