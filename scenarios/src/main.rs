//! `fvdsim`: the deterministic simulation and crash-consistency harness for FVD images.

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use fvd_scenarios::bench::{SimBenchOptions, run_sim_bench};
use fvd_scenarios::demo::{DemoOptions, run_demo};
use fvd_sim::Seed;

/// Exit code: a usage, configuration or input error.
const EXIT_USAGE: u8 = 3;

#[derive(Parser, Debug)]
#[command(name = "fvdsim", version, about = "Deterministic simulation and crash-consistency harness for FVD images", long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// The main job (the default with no subcommand): crash campaign on the simulated disk.
    Run {
        /// Master seed: decimal, 0x hex, or a 40-hex git commit.
        #[arg(long, default_value = "1", env = "FVD_SIM_SEED")]
        seed: Seed,
        /// Crashes to inject.
        #[arg(long, default_value_t = 20)]
        crashes: u32,
    },
    /// Create, inspect, check, read and write FVD images on real files (like qemu-img and qemu-io).
    Img {
        #[command(subcommand)]
        command: fvd_scenarios::img::ImgCommand,
    },
    /// Wall-clock benchmarks; prints figures (and one JSON object with --json).
    Bench {
        /// Which benchmark.
        #[arg(value_enum, default_value = "sim")]
        which: BenchKind,
        /// Print one JSON object instead of the table.
        #[arg(long)]
        json: bool,
        /// Master seed.
        #[arg(long, default_value = "1")]
        seed: Seed,
        /// 4 KiB writes in the random-write figure.
        #[arg(long, default_value_t = SimBenchOptions::default().writes)]
        writes: u64,
        /// Crash-plus-reopen cycles.
        #[arg(long, default_value_t = SimBenchOptions::default().crash_cycles)]
        crash_cycles: u64,
    },
}

#[derive(clap::ValueEnum, Clone, Copy, Debug)]
enum BenchKind {
    /// The simulator: random writes and crash cycles.
    Sim,
    /// The FVD engine on real files: allocating writes and rewrites over a base image.
    Engine,
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(error) => {
            let code = if error.use_stderr() { EXIT_USAGE } else { 0 };
            let _ = error.print();
            return ExitCode::from(code);
        }
    };
    match cli.command.unwrap_or(Command::Run { seed: Seed(1), crashes: 20 }) {
        Command::Run { seed, crashes } => {
            let summary = run_demo(DemoOptions { seed, crashes });
            println!("{summary}");
            if summary.failures.is_empty() {
                ExitCode::SUCCESS
            } else {
                for failure in summary.failures.iter().take(10) {
                    eprintln!("FAILURE: {failure}");
                }
                if summary.failures.len() > 10 {
                    eprintln!("... and {} more", summary.failures.len() - 10);
                }
                eprintln!("reproduce with: fvdsim run --seed {} --crashes {}", seed, crashes);
                ExitCode::from(1)
            }
        }
        Command::Img { command } => match fvd_scenarios::img::run(command) {
            Ok(code) => ExitCode::from(code),
            Err(error) => {
                eprintln!("fvdsim img: {}", error.message);
                ExitCode::from(error.code)
            }
        },
        Command::Bench { which: BenchKind::Engine, json, .. } => {
            match fvd_scenarios::bench::run_engine_bench(&fvd_scenarios::bench::EngineBenchOptions::default()) {
                Ok(report) => {
                    if json {
                        println!("{}", serde_json::to_string(&report).expect("bench report serialises"));
                    } else {
                        println!("{report}");
                    }
                    ExitCode::SUCCESS
                }
                Err(error) => {
                    eprintln!("fvdsim bench engine: {error:#}");
                    ExitCode::from(EXIT_USAGE)
                }
            }
        }
        Command::Bench { which: BenchKind::Sim, json, seed, writes, crash_cycles } => {
            let report = run_sim_bench(SimBenchOptions { seed, writes, crash_cycles, ..SimBenchOptions::default() });
            if json {
                println!("{}", serde_json::to_string(&report).expect("bench report serialises"));
            } else {
                println!("{report}");
            }
            ExitCode::SUCCESS
        }
    }
}
