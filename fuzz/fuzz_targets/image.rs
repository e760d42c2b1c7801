#![no_main]
//! `cargo +nightly fuzz run image`: see `fvd_scenarios::fuzz::image`.

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| fvd_scenarios::fuzz::image(data));
