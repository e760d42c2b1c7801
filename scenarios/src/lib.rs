//! Scenarios, the oracle, benchmarks and the `fvdsim` command line.

/// Prints a line to stdout, ignoring a closed pipe (`fvdsim … | head` must not panic).
#[macro_export]
macro_rules! say {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stdout(), $($arg)*);
    }};
}

pub mod bench;
pub mod bench_crash_states;
pub mod bench_engine;
pub mod bench_formats;
pub mod bench_scale;
pub mod campaign;
pub mod fuzz;
pub mod host;
pub mod img;
pub mod oracle;
pub mod qemu;
pub mod qemu_crash;
pub mod rig;
pub mod schema;
pub mod stamp;
pub mod trace;
