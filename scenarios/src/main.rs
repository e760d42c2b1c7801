//! `fvdsim`: the deterministic simulation and crash-consistency harness for FVD images.
//!
//! Exit codes: 0 all verified, 1 safety failure (wrong data, check, assertion), 2 liveness failure
//! (stall), 3 usage, configuration or input error.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use clap::{Args, Parser, Subcommand};
use fvd_scenarios::bench::{SimBenchOptions, run_sim_bench};
use fvd_scenarios::campaign::config::{ProfileName, ReplayMode, WorkloadConfig};
use fvd_scenarios::campaign::output::{crash_line, read_failure_file, repro_command, write_run_directory};
use fvd_scenarios::campaign::run::RunOutcome;
use fvd_scenarios::campaign::{RunConfig, SCENARIOS, run, scenario};
use fvd_scenarios::say;
use fvd_scenarios::trace::TraceFormat;
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
    /// Run a scenario (the default, with no subcommand: the CloudPhysics campaign).
    Run(RunArgs),
    /// Replay a failure file exactly: `fvdsim repro failure-….json`.
    Repro {
        /// The failure file a run wrote.
        file: PathBuf,
        /// Run directory for the replay's report.
        #[arg(long, default_value = "fvdsim-repro")]
        out: PathBuf,
        /// Write the last N events of the log to OUT/events.log (one line each, virtual time first).
        #[arg(long, default_value_t = 0)]
        log_events: usize,
    },
    /// Cut a failure down while the same failure class still occurs; writes FILE.min.json.
    Shrink {
        /// The failure file.
        file: PathBuf,
        /// Where to write the smaller case (default: FILE with .min.json).
        #[arg(long)]
        out: Option<PathBuf>,
        /// Most runs to try.
        #[arg(long, default_value_t = 60)]
        max_runs: u32,
    },
    /// List the named scenarios.
    Scenarios,
    /// Redraw the charts and index of a run or study directory from its saved JSON (no rerun).
    Redraw {
        /// A run directory (report.json) or a study directory (study.json).
        dir: PathBuf,
    },
    /// Prefetch tuning study: one setting, or a sweep, each against a no-prefetch baseline.
    PrefetchStudy(StudyArgs),
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

#[derive(Args, Debug)]
struct RunArgs {
    /// Scenario (see `fvdsim scenarios`).
    #[arg(long, default_value = "cloudphysics")]
    scenario: String,
    /// Master seed: decimal, 0x hex, or a 40-hex git commit.
    #[arg(long, default_value = "1", env = "FVD_SIM_SEED")]
    seed: Seed,
    /// Engine profile: hardened (default) or v1 (the 2011 behaviour, flaws included).
    #[arg(long, value_enum)]
    profile: Option<ProfileName>,
    /// Run directory for report.json, charts, index.html and failure files.
    #[arg(long, default_value = "fvdsim-out")]
    out: PathBuf,
    /// Crashes to inject.
    #[arg(long)]
    crashes: Option<u32>,
    /// Stop after this many workload requests.
    #[arg(long)]
    requests: Option<u64>,
    /// Replay this trace instead of the scenario's workload.
    #[arg(long)]
    trace: Option<PathBuf>,
    /// Format of --trace.
    #[arg(long, value_enum, default_value = "cloudphysics")]
    trace_format: TraceFormat,
    /// Replay the trace closed-loop at this queue depth (default: open loop at recorded times).
    #[arg(long)]
    queue_depth: Option<u32>,
    /// Open loop: multiply recorded times by this (0.01 replays 100 times faster).
    #[arg(long)]
    time_scale: Option<f64>,
    /// Run the seed twice and compare the event-log hash and the final image bytes.
    #[arg(long)]
    check_determinism: bool,
    /// Write the last N events of the log to OUT/events.log.
    #[arg(long, default_value_t = 0)]
    log_events: usize,
}

#[derive(Args, Debug)]
struct StudyArgs {
    /// Master seed (the same for every setting and the baseline).
    #[arg(long, default_value = "1")]
    seed: Seed,
    /// Output directory (study.json, per-setting JSON and charts, index.html).
    #[arg(long, default_value = "fvdsim-study")]
    out: PathBuf,
    /// Foreground requests per run.
    #[arg(long, default_value_t = 30_000)]
    requests: u64,
    /// Run the default sweep (v1 defaults, each knob moved, AIMD) instead of one setting.
    #[arg(long)]
    sweep: bool,
    /// Moving-average weight of the past, percent.
    #[arg(long, default_value_t = 80)]
    alpha: u32,
    /// Minimum read and write throughput, KB/s.
    #[arg(long, default_value_t = 60_000)]
    min_kb_s: u64,
    /// Longest pause, ms.
    #[arg(long, default_value_t = 2_000)]
    throttle_ms: u64,
    /// Prefetch slots.
    #[arg(long, default_value_t = 2)]
    slots: u32,
    /// Bytes per slot (K, M suffixes).
    #[arg(long, default_value = "1M", value_parser = fvd_scenarios::img::parse_size)]
    bytes_per_prefetch: u64,
    /// Use the AIMD policy with this guest mean-latency target, µs.
    #[arg(long)]
    aimd_target_us: Option<u64>,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug)]
enum BenchKind {
    /// The simulator: random writes and crash cycles.
    Sim,
    /// The FVD engine on real files: allocating writes and rewrites over a base image.
    Engine,
}

fn usage(message: impl std::fmt::Display) -> ExitCode {
    eprintln!("fvdsim: {message}");
    ExitCode::from(EXIT_USAGE)
}

fn config_for(args: &RunArgs) -> Result<RunConfig, String> {
    let scenario = scenario(&args.scenario)
        .ok_or_else(|| format!("unknown scenario {:?}; `fvdsim scenarios` lists them", args.scenario))?;
    let mut config = (scenario.build)(args.seed);
    if let Some(profile) = args.profile {
        config.profile = profile;
    }
    if let Some(crashes) = args.crashes {
        config.crashes.count = crashes;
    }
    config.max_requests = args.requests.or(config.max_requests);
    if let Some(trace) = &args.trace {
        let mode = match &config.workload {
            WorkloadConfig::Trace { mode, .. } => *mode,
            WorkloadConfig::Random { .. } => ReplayMode::ClosedLoop { queue_depth: 16 },
        };
        let path = std::fs::canonicalize(trace).map_err(|e| format!("--trace {}: {e}", trace.display()))?;
        config.workload = WorkloadConfig::Trace { path: path.display().to_string(), format: args.trace_format, mode };
    }
    if let WorkloadConfig::Trace { mode, .. } = &mut config.workload {
        if let Some(depth) = args.queue_depth {
            *mode = ReplayMode::ClosedLoop { queue_depth: depth };
        } else if let Some(scale) = args.time_scale {
            let cap = match mode {
                ReplayMode::OpenLoop { max_in_flight, .. } => *max_in_flight,
                ReplayMode::ClosedLoop { .. } => 64,
            };
            if !(scale.is_finite() && scale > 0.0) {
                return Err(format!("--time-scale {scale} must be a positive number"));
            }
            *mode = ReplayMode::OpenLoop { time_scale: scale, max_in_flight: cap };
        }
    }
    Ok(config)
}

fn print_table(outcome: &RunOutcome, wall_seconds: f64) {
    let s = &outcome.summary;
    let c = &outcome.config;
    say!("fvdsim {} seed {} ({} profile)", c.scenario, c.seed, format!("{:?}", c.profile).to_lowercase());
    say!(
        "  requests replayed   {} ({} reads, {} writes, {} flushes, {} I/O errors injected)",
        s.requests,
        s.reads,
        s.writes,
        s.flushes,
        s.io_errors
    );
    say!(
        "  bytes replayed      {:.1} MiB read, {:.1} MiB written",
        s.read_bytes as f64 / 1048576.0,
        s.write_bytes as f64 / 1048576.0
    );
    say!("  crashes             {}", crash_line(s));
    say!("  sectors verified    {}", s.sectors_verified);
    say!("  journal             {} writes, {} recycles", s.journal_writes, s.recycles);
    say!("  failures            {}", u8::from(outcome.failure.is_some()));
    say!("  simulated time      {:.3} s", s.simulated_seconds);
    say!("  wall time           {wall_seconds:.3} s");
    say!("  event-log hash      {:#018x}", outcome.log_hash);
}

/// Runs a configuration, writes the run directory, prints the table; returns the exit code.
fn run_and_report(config: &RunConfig, out: &Path, log_events: usize) -> ExitCode {
    let started = Instant::now();
    let outcome = match fvd_scenarios::campaign::run::run_with(
        config,
        log_events.max(fvd_scenarios::campaign::run::DEFAULT_LOG_TAIL),
    ) {
        Ok(outcome) => outcome,
        Err(error) => return usage(error),
    };
    let wall = started.elapsed().as_secs_f64();
    print_table(&outcome, wall);
    let failure_path = match write_run_directory(&outcome, out, wall) {
        Ok(path) => path,
        Err(error) => return usage(format!("writing {}: {error:#}", out.display())),
    };
    say!("  report              {}", out.join("index.html").display());
    if log_events > 0 {
        let path = out.join("events.log");
        let mut text = outcome.last_events.join("\n");
        text.push('\n');
        if let Err(error) = std::fs::write(&path, text) {
            return usage(format!("writing {}: {error}", path.display()));
        }
        say!("  events              {} ({} lines)", path.display(), outcome.last_events.len());
    }
    match (&outcome.failure, failure_path) {
        (Some(failure), Some(path)) => {
            eprintln!(
                "FAILURE ({}): {}",
                serde_json::to_value(failure.class)
                    .ok()
                    .and_then(|v| v.as_str().map(str::to_owned))
                    .unwrap_or_default(),
                failure.message
            );
            for sector in failure.sectors.iter().take(4) {
                eprintln!(
                    "  sector {}: held {}; allowed: {}",
                    sector.sector,
                    sector.actual,
                    sector.allowed.join(" | ")
                );
            }
            eprintln!("reproduce with: {}", repro_command(&path));
            ExitCode::from(failure.class.exit_code())
        }
        _ => ExitCode::SUCCESS,
    }
}

/// Crashes a short run at every one of its events; reports the first failure like a run.
fn exhaustive(config: &RunConfig, out: &Path) -> ExitCode {
    let started = Instant::now();
    let outcome = match fvd_scenarios::campaign::run::run_exhaustive(config, |_, _| {}) {
        Ok(outcome) => outcome,
        Err(error) => return usage(error),
    };
    match outcome.failure {
        None => {
            say!(
                "fvdsim exhaustive seed {}: crashed at every one of {} events, each recovered and verified ({} runs, {:.1} s)",
                config.seed,
                outcome.events,
                outcome.runs,
                started.elapsed().as_secs_f64()
            );
            ExitCode::SUCCESS
        }
        Some((event, failing)) => {
            say!("fvdsim exhaustive seed {}: the crash at event {event} of {} failed", config.seed, outcome.events);
            let wall = started.elapsed().as_secs_f64();
            match write_run_directory(&failing, out, wall) {
                Ok(Some(path)) => {
                    let failure = failing.failure.as_ref().expect("a failing outcome");
                    eprintln!("FAILURE: {}", failure.message);
                    eprintln!("reproduce with: {}", repro_command(&path));
                    ExitCode::from(failure.class.exit_code())
                }
                Ok(None) => ExitCode::from(1),
                Err(error) => usage(format!("writing {}: {error:#}", out.display())),
            }
        }
    }
}

fn check_determinism(config: &RunConfig) -> ExitCode {
    let first = match run(config) {
        Ok(o) => o,
        Err(error) => return usage(error),
    };
    let second = match run(config) {
        Ok(o) => o,
        Err(error) => return usage(error),
    };
    say!("first run:  event-log hash {:#018x}, image hash {:#018x}", first.log_hash, first.image_hash);
    say!("second run: event-log hash {:#018x}, image hash {:#018x}", second.log_hash, second.image_hash);
    if (first.log_hash, first.image_hash) == (second.log_hash, second.image_hash) {
        say!("deterministic: the seed replayed exactly");
        ExitCode::SUCCESS
    } else {
        eprintln!("NONDETERMINISM: the same seed and build gave different runs");
        ExitCode::from(1)
    }
}

fn main() -> ExitCode {
    // A panic inside a run is a found bug: the runner catches it and writes a failure file with
    // the assertion, so one line on stderr is enough (RUST_BACKTRACE=1 for the full trace).
    if std::env::var_os("RUST_BACKTRACE").is_none() {
        std::panic::set_hook(Box::new(|info| eprintln!("fvdsim: {info}")));
    }
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(error) => {
            let code = if error.use_stderr() { EXIT_USAGE } else { 0 };
            let _ = error.print();
            return ExitCode::from(code);
        }
    };
    // No subcommand: the main job, `fvdsim run` with its defaults.
    let command = cli.command.or_else(|| Cli::parse_from(["fvdsim", "run"]).command).expect("`fvdsim run` parses");
    match command {
        Command::Run(args) => {
            let config = match config_for(&args) {
                Ok(config) => config,
                Err(error) => return usage(error),
            };
            if args.check_determinism {
                check_determinism(&config)
            } else if config.scenario.starts_with("exhaustive") {
                exhaustive(&config, &args.out)
            } else {
                run_and_report(&config, &args.out, args.log_events)
            }
        }
        Command::Repro { file, out, log_events } => match read_failure_file(&file) {
            Ok(failure) => {
                say!(
                    "replaying {} (recorded at commit {}; this build is {})",
                    file.display(),
                    failure.git_commit,
                    fvd_scenarios::campaign::output::GIT_COMMIT
                );
                say!("recorded failure: {}", failure.failure.message);
                run_and_report(&failure.config, &out, log_events)
            }
            Err(error) => usage(format!("{error:#}")),
        },
        Command::Shrink { file, out, max_runs } => {
            let failure = match read_failure_file(&file) {
                Ok(f) => f,
                Err(error) => return usage(format!("{error:#}")),
            };
            let shrunk =
                fvd_scenarios::campaign::shrink::shrink(&failure.config, failure.failure.class, max_runs, |line| {
                    say!("  {line}")
                });
            match shrunk {
                Ok(shrunk) => {
                    let out = out.unwrap_or_else(|| file.with_extension("min.json"));
                    let file = fvd_scenarios::campaign::output::failure_file(&shrunk.outcome, &out);
                    if let Err(error) =
                        std::fs::write(&out, serde_json::to_string_pretty(&file).expect("failure files serialise"))
                    {
                        return usage(format!("writing {}: {error}", out.display()));
                    }
                    let requests = shrunk.outcome.config.max_requests.map_or("all".into(), |m| m.to_string());
                    let crashes = shrunk.outcome.config.crashes.schedule.as_ref().map_or(0, Vec::len);
                    say!(
                        "shrunk in {} runs to {requests} requests and {crashes} crash(es): {}",
                        shrunk.runs,
                        file.failure.message
                    );
                    say!("reproduce with: {}", file.repro_command);
                    ExitCode::SUCCESS
                }
                Err(error) => usage(error),
            }
        }
        Command::PrefetchStudy(args) => {
            use fvd_scenarios::campaign::config::PrefetchSpec;
            use fvd_scenarios::campaign::study::{StudySetting, default_sweep, run_study};
            let settings = if args.sweep {
                default_sweep()
            } else {
                let spec = PrefetchSpec {
                    start_delay_ms: 500,
                    slots: args.slots,
                    bytes_per_prefetch: args.bytes_per_prefetch,
                    alpha_percent: args.alpha.min(100),
                    min_kb_s: args.min_kb_s,
                    throttle_ms: args.throttle_ms,
                    aimd_target_us: args.aimd_target_us,
                    aimd_max_kb_s: 64 << 10,
                    ..PrefetchSpec::v1_defaults()
                };
                vec![StudySetting { label: "setting".into(), spec }]
            };
            say!(
                "{:<18} {:>10} {:>14} {:>14} {:>10} {:>7} {:>9}",
                "setting",
                "finish s",
                "p99 prefetch",
                "p99 baseline",
                "whole p99",
                "pauses",
                "wasted"
            );
            let report = run_study(args.seed, &settings, args.requests, &args.out, |r| {
                say!(
                    "{:<18} {:>10} {:>11.0} µs {:>11.0} µs {:>+9.1}% {:>7} {:>6.1} MiB{}",
                    r.setting.label,
                    r.time_to_finish_s.map_or("never".into(), |t| format!("{t:.2}")),
                    r.p99_during_prefetch_us,
                    r.baseline_p99_during_prefetch_us,
                    r.p99_inflation_percent,
                    r.pauses,
                    r.bytes_wasted as f64 / 1048576.0,
                    r.failure.as_ref().map_or(String::new(), |f| format!("  FAILURE: {f}"))
                );
            });
            match report {
                Ok(report) => {
                    say!("study written to {}", args.out.join("index.html").display());
                    if report.results.iter().any(|r| r.failure.is_some()) {
                        ExitCode::from(1)
                    } else {
                        ExitCode::SUCCESS
                    }
                }
                Err(error) => usage(format!("prefetch-study: {error:#}")),
            }
        }
        Command::Redraw { dir } => {
            let drawn = if dir.join("study.json").exists() {
                fvd_scenarios::campaign::study::redraw_study(&dir)
            } else {
                fvd_scenarios::campaign::output::redraw_run(&dir)
            };
            match drawn {
                Ok(count) => {
                    say!("redrew {count} chart(s) and index.html in {}", dir.display());
                    ExitCode::SUCCESS
                }
                Err(error) => usage(format!("redraw: {error:#}")),
            }
        }
        Command::Scenarios => {
            for s in SCENARIOS {
                say!("{:<14} {}", s.name, s.description);
            }
            ExitCode::SUCCESS
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
                        say!("{}", serde_json::to_string(&report).expect("bench report serialises"));
                    } else {
                        say!("{report}");
                    }
                    ExitCode::SUCCESS
                }
                Err(error) => usage(format!("bench engine: {error:#}")),
            }
        }
        Command::Bench { which: BenchKind::Sim, json, seed, writes, crash_cycles } => {
            let report = run_sim_bench(SimBenchOptions { seed, writes, crash_cycles, ..SimBenchOptions::default() });
            if json {
                say!("{}", serde_json::to_string(&report).expect("bench report serialises"));
            } else {
                say!("{report}");
            }
            ExitCode::SUCCESS
        }
    }
}
