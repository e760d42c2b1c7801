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
use fvd_scenarios::campaign::output::{read_failure_file, repro_command, write_run_directory};
use fvd_scenarios::campaign::run::DEFAULT_LOG_TAIL;
use fvd_scenarios::campaign::run::RunOutcome;
use fvd_scenarios::campaign::{RunConfig, SCENARIOS, scenario};
use fvd_scenarios::say;
use fvd_scenarios::trace::TraceFormat;
use fvd_sim::Seed;

/// Exit code: a usage, configuration or input error.
const EXIT_USAGE: u8 = 3;

#[derive(Parser, Debug)]
#[command(
    name = "fvdsim",
    version,
    about = "Deterministic simulation and crash-consistency harness for FVD images",
    long_about = None,
    // `fvdsim` alone is `fvdsim run`, so its options work without the subcommand.
    args_conflicts_with_subcommands = true
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    run: RunArgs,
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
    /// Cut a failure down while the same failure class still occurs; writes FILE.min.json. Takes a
    /// run's failure file or a `fvdsim qemu` finding file (its script is cut to the fewest, shortest
    /// operations that still fail; the run is left in FILE.min/).
    Shrink {
        /// The failure file (`failure-….json`) or finding file (`finding-state-K.json`).
        file: PathBuf,
        /// Where to write the smaller case (default: FILE with .min.json).
        #[arg(long)]
        out: Option<PathBuf>,
        /// Most runs to try (runs get faster as the case shrinks).
        #[arg(long, default_value_t = 400)]
        max_runs: u32,
    },
    /// List the named scenarios.
    Scenarios,
    /// Crash-test QEMU's own image drivers: a seeded qemu-io script under blklogwrites, every
    /// crash state of its write log checked by qemu-img and judged sector by sector.
    Qemu(QemuArgs),
    /// Redraw the charts and index of a run or study directory from its saved JSON (no rerun).
    Redraw {
        /// A run directory (report.json) or a study directory (study.json).
        dir: PathBuf,
    },
    /// Prefetch tuning study: one setting, or a sweep, each against a no-prefetch baseline.
    PrefetchStudy(StudyArgs),
    /// Swarm campaign: each seed draws its whole configuration; failures go into a failing-seed
    /// database (OUT/failures.json) with the command that replays each.
    Swarm(SwarmArgs),
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
        /// `sim`: 4 KiB writes in each run of a random-write figure.
        #[arg(long, default_value_t = SimBenchOptions::default().writes, value_parser = clap::value_parser!(u64).range(1..))]
        writes: u64,
        /// `sim`: runs of each random-write figure (the fastest is reported, the slowest beside).
        #[arg(long, default_value_t = SimBenchOptions::default().repeats, value_parser = clap::value_parser!(u32).range(1..=100))]
        repeats: u32,
        /// Crash-plus-reopen cycles.
        #[arg(long, default_value_t = SimBenchOptions::default().crash_cycles)]
        crash_cycles: u64,
        /// `sim` only: measure random writes on a device of this many MiB only (with `--payload`),
        /// instead of every size and payload with the copy floor. Every page is written before
        /// timing, so foreign data holds about this much memory (hence at most 4 GiB).
        #[arg(long, value_parser = clap::value_parser!(u64).range(1..=4096))]
        device_mib: Option<u64>,
        /// `sim` only, with `--device-mib`: what the writes carry.
        #[arg(long, value_enum, default_value = "foreign", requires = "device_mib")]
        payload: fvd_scenarios::bench::BenchPayload,
        /// `scale` only: run one part in this process and print its JSON (what the parent runs).
        #[arg(long, hide = true)]
        part: Option<String>,
        /// `engine` only: benchmark our QED or Parallels engine beside QEMU's driver for the same
        /// format instead of FVD beside qcow2.
        #[arg(long, value_enum)]
        format: Option<fvd_scenarios::campaign::guest::FormatName>,
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
    /// Commit mode of the hardened profile: group (default; durable at guest flushes) or sync
    /// (a durable record per allocating write).
    #[arg(long, value_enum)]
    commit: Option<fvd_scenarios::campaign::config::CommitName>,
    /// Crashes to inject (0: none; at most 100,000). Spread over the whole workload; every one is
    /// applied.
    #[arg(long, value_parser = clap::value_parser!(u32).range(0..=100_000))]
    crashes: Option<u32>,
    /// Stop after this many workload requests (at least 1).
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    requests: Option<u64>,
    /// Replay this trace (plain or gzip) instead of the scenario's workload. The virtual disk and
    /// the base image are sized to the trace's extent unless --size says otherwise.
    #[arg(long)]
    trace: Option<PathBuf>,
    /// Format of --trace.
    #[arg(long, value_enum, default_value = "cloudphysics")]
    trace_format: TraceFormat,
    /// Virtual disk size (K, M, G, T suffixes). A trace that does not fit is refused unless
    /// --wrap.
    #[arg(long, value_parser = fvd_scenarios::img::parse_size)]
    size: Option<u64>,
    /// Fold trace requests beyond the disk onto it (counted in the report) instead of refusing.
    #[arg(long)]
    wrap: bool,
    /// Replay the trace closed-loop at this queue depth, at least 1 (default: open loop at
    /// recorded times).
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
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
    /// Run the configuration swarm seed S draws (`fvdsim swarm` prints it with every failure).
    #[arg(long)]
    swarm_seed: Option<Seed>,
    /// Print nothing but the verdict line and errors (no progress, no table).
    #[arg(long, short)]
    quiet: bool,
    /// Image format: fvd (default), qed or parallels. The scenario's named crash points become
    /// the format's own (QED: need-check-set, l2-update-in-flight, l1-update-in-flight;
    /// Parallels: bat-update-in-flight, in-use-set, in-use-cleared); QED and Parallels drop what
    /// they cannot do (prefetch, copy-on-read, a data file; Parallels a base image).
    #[arg(long, value_enum)]
    format: Option<fvd_scenarios::campaign::guest::FormatName>,
    /// QED and Parallels: after every crash, before recovery, judge the crash state with QEMU's
    /// tools (`qemu-img check`, `check -r all`, `convert`, every sector through the oracle) and
    /// compare our recovery with QEMU's repair. Needs `qemu-img`; runs on host files, so the
    /// simulated run (and its event log) is the same without it.
    #[arg(long)]
    qemu_judge: bool,
    /// Worker threads for crash-state enumeration (the exhaustive scenarios); the states
    /// verified and the verdict are the same for any number.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..=256))]
    jobs: u64,
}

#[derive(Args, Debug)]
struct SwarmArgs {
    /// Run this many seeds.
    #[arg(long, conflicts_with = "time", value_parser = clap::value_parser!(u64).range(1..))]
    seeds: Option<u64>,
    /// Run seeds for this long (wall time: 30s, 10m, 2h).
    #[arg(long, value_parser = parse_duration)]
    time: Option<std::time::Duration>,
    /// Simulations run at once (each one single-threaded and deterministic).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..=256))]
    jobs: u64,
    /// Run only seed indices i with i % N == I (`--shard I/N`), so shards never overlap.
    #[arg(long, value_parser = parse_shard)]
    shard: Option<(u64, u64)>,
    /// The campaign's base seed (seed i is derived from it and i).
    #[arg(long, default_value = "1", env = "FVD_SIM_SEED")]
    seed: Seed,
    /// Also draw the v1 profile (one seed in eight): its known flaws show as failures.
    #[arg(long)]
    with_v1: bool,
    /// Replay every failure recorded in this database first (a fix confirmed, a regression
    /// caught), and merge it into OUT/failures.json.
    #[arg(long)]
    replay_db: Option<PathBuf>,
    /// Only merge these failing-seed databases (shards, nights) into OUT/failures.json; run
    /// nothing.
    #[arg(long, num_args = 1..)]
    merge: Vec<PathBuf>,
    /// Campaign directory: failures.json, swarm.json, failure files.
    #[arg(long, default_value = "fvdsim-swarm")]
    out: PathBuf,
    /// No progress output.
    #[arg(long, short)]
    quiet: bool,
}

fn parse_duration(text: &str) -> Result<std::time::Duration, String> {
    let (number, unit) = text.split_at(text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len()));
    let value: u64 = number.parse().map_err(|_| format!("{text:?}: expected a number and s, m or h (30s, 10m)"))?;
    let seconds = match unit {
        "" | "s" => value,
        "m" => value.saturating_mul(60),
        "h" => value.saturating_mul(3600),
        other => return Err(format!("{text:?}: unknown unit {other:?} (s, m or h)")),
    };
    Ok(std::time::Duration::from_secs(seconds))
}

fn parse_shard(text: &str) -> Result<(u64, u64), String> {
    let (index, count) = text.split_once('/').ok_or_else(|| format!("{text:?}: expected I/N, for example 0/4"))?;
    let index: u64 = index.parse().map_err(|_| format!("{text:?}: I is not a number"))?;
    let count: u64 = count.parse().map_err(|_| format!("{text:?}: N is not a number"))?;
    if count == 0 || index >= count {
        return Err(format!("{text:?}: needs 0 <= I < N"));
    }
    Ok((index, count))
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
    /// AIMD: the highest rate it may reach, KB/s.
    #[arg(long, default_value_t = 64 << 10)]
    aimd_max_kb_s: u64,
    /// AIMD: the additive step per window without a latency breach, KB/s (default: a sixteenth
    /// of the highest rate).
    #[arg(long)]
    aimd_step_kb_s: Option<u64>,
    /// Seeds per setting (seed, seed+1, …), each against its own no-prefetch baseline: the
    /// inflation is reported as a mean with its spread.
    #[arg(long, default_value_t = 1)]
    seeds: u64,
    /// Device profile of the image (nvme, ssd, hdd, nfs, …).
    #[arg(long, default_value = "nvme")]
    image_device: String,
    /// Device profile of the base image.
    #[arg(long, default_value = "nfs")]
    base_device: String,
    /// When the engine makes metadata durable.
    #[arg(long, value_enum, default_value = "group")]
    commit: fvd_scenarios::campaign::config::CommitName,
    /// The engine's profile.
    #[arg(long, value_enum, default_value = "hardened")]
    profile: fvd_scenarios::campaign::config::ProfileName,
    /// Tune on a real workload: replay this trace (plain or gzip; `cloudphysics` for the built-in
    /// one) instead of the random testers, its first --requests requests.
    #[arg(long)]
    trace: Option<PathBuf>,
    /// Format of --trace.
    #[arg(long, value_enum, default_value = "cloudphysics")]
    trace_format: TraceFormat,
}

/// Options of `fvdsim qemu`.
#[derive(clap::Args, Debug)]
struct QemuArgs {
    /// QEMU image formats, comma-separated: qcow2, qed, parallels, vdi, vmdk, vhdx, or all.
    #[arg(long, short = 'f', value_delimiter = ',', required_unless_present = "from")]
    format: Vec<String>,
    /// Runs per format, seeds S, S+1, …; with more than one, each run draws its cluster size
    /// from the format's sizes (unless --cluster-size is given).
    #[arg(long, default_value_t = 1)]
    runs: u64,
    /// Run a finding file's script again (its operations written out, as `fvdsim shrink`
    /// leaves them) and judge its state (or --state K).
    #[arg(long, conflicts_with_all = ["format", "runs", "seed", "ops", "backing", "size", "cluster_size"])]
    from: Option<PathBuf>,
    /// Seed of the script and of the sampled crash states.
    #[arg(long, default_value = "1")]
    seed: Seed,
    /// Guest operations in the script.
    #[arg(long, default_value_t = 40)]
    ops: u64,
    /// A raw backing file with non-zero content (qcow2, qed, vmdk).
    #[arg(long)]
    backing: bool,
    /// Virtual disk size (K, M, G suffixes).
    #[arg(long, default_value = "16M", value_parser = fvd_scenarios::img::parse_size)]
    size: u64,
    /// Cluster size (K, M suffixes; VHDX: its block size); QEMU's default for the format when
    /// left out (one run) or drawn per run (several).
    #[arg(long, value_parser = fvd_scenarios::img::parse_size)]
    cluster_size: Option<u64>,
    /// Most crash states to judge (spread over the log).
    #[arg(long, default_value_t = 2_000)]
    max_states: u64,
    /// Worker threads judging crash states.
    #[arg(long, default_value_t = 2)]
    jobs: u64,
    /// Output directory: script, payloads, write log, report.json, the states of findings.
    #[arg(long, default_value = "fvdsim-qemu")]
    out: PathBuf,
    /// Judge only crash state K (as numbered in the report), keeping its image and raw read.
    #[arg(long)]
    state: Option<u64>,
    /// The device's atomic unit, bytes: 512 or 4096 (a torn write keeps or loses whole units).
    #[arg(long, default_value_t = 512)]
    atomic_unit: u64,
    /// Self-test: break the write log before drawing crash states (the judge must report it).
    #[arg(long, value_enum, hide = true)]
    mutate: Option<fvd_scenarios::qemu_crash::LogMutation>,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug)]
enum BenchKind {
    /// The simulator: random writes and crash cycles.
    Sim,
    /// The FVD engine on real files: allocating writes and rewrites over a base image.
    Engine,
    /// Memory and wall time at real scale: the CloudPhysics trace at its recorded timing, RSS per
    /// GiB of foreign data and of base copies, a three-day idle gap (each in its own process).
    Scale,
    /// Crash-state enumeration on the exhaustive workloads: states recovered and verified per
    /// second, beside one re-run per event.
    CrashStates,
}

fn usage(message: impl std::fmt::Display) -> ExitCode {
    eprintln!("fvdsim: {message}");
    ExitCode::from(EXIT_USAGE)
}

fn config_for(args: &RunArgs) -> Result<RunConfig, String> {
    let scenario = scenario(&args.scenario)
        .ok_or_else(|| format!("unknown scenario {:?}; `fvdsim scenarios` lists them", args.scenario))?;
    let mut config = match args.swarm_seed {
        Some(seed) => {
            fvd_scenarios::campaign::swarm::swarm_config(seed, fvd_scenarios::campaign::swarm::SwarmProfiles::Hardened)
        }
        None => (scenario.build)(args.seed),
    };
    if let Some(profile) = args.profile {
        config.profile = profile;
    }
    if let Some(format) = args.format {
        config = config.on_format(format);
    }
    config.qemu_judge |= args.qemu_judge;
    if let Some(commit) = args.commit {
        config.commit = commit;
    }
    if let Some(crashes) = args.crashes {
        config.crashes.count = crashes;
    }
    config.max_requests = args.requests.or(config.max_requests);
    if let Some(size) = args.size {
        if size == 0 || !size.is_multiple_of(512) {
            return Err(format!("--size {size}: must be a positive multiple of 512 bytes"));
        }
        config.image.size_bytes = size;
        config.image.base_bytes = config.image.base_bytes.min(size);
    }
    if let Some(trace) = &args.trace {
        let mode = match &config.workload {
            WorkloadConfig::Trace { mode, .. } | WorkloadConfig::Inline { mode, .. } => *mode,
            WorkloadConfig::Random { .. } => ReplayMode::ClosedLoop { queue_depth: 16 },
        };
        let path = std::fs::canonicalize(trace).map_err(|e| format!("--trace {}: {e}", trace.display()))?;
        let loaded = fvd_scenarios::trace::load(&path, args.trace_format).map_err(|e| format!("trace: {e}"))?;
        if args.size.is_none() {
            // The disk the trace was recorded on, as far as the trace shows it: its extent,
            // rounded up to a MiB; the base image covers all of it.
            const MIB: u64 = 1 << 20;
            let size = (loaded.extent_sectors * 512).div_ceil(MIB).max(1) * MIB;
            config.image.size_bytes = size;
            config.image.base_bytes = size;
        }
        config.workload = WorkloadConfig::Trace {
            path: path.display().to_string(),
            format: args.trace_format,
            mode,
            wrap: args.wrap,
        };
    } else if args.wrap
        && let WorkloadConfig::Trace { wrap, .. } = &mut config.workload
    {
        *wrap = true;
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
    use fvd_scenarios::campaign::output::{SummaryFacts, outcome_name, summary_rows};
    let c = &outcome.config;
    say!("fvdsim {} seed {} ({} profile)", c.name(), c.seed, c.profile);
    let rows = summary_rows(&SummaryFacts {
        outcome: &outcome_name(outcome),
        config: c,
        summary: &outcome.summary,
        failure: outcome.failure.as_ref(),
        git_commit: fvd_scenarios::campaign::output::GIT_COMMIT,
        log_hash: &format!("{:#018x}", outcome.log_hash),
        wall_seconds,
    });
    // The title says what the scenario row says.
    for (name, value) in rows.into_iter().filter(|(name, _)| name != "scenario") {
        say!("  {name:<19} {value}");
    }
}

/// Checks that `out` can be a run directory before a run spends minutes: creates it and writes
/// a probe file.
fn check_out_dir(out: &Path) -> Result<(), String> {
    if out.exists() && !out.is_dir() {
        return Err(format!("--out {}: exists and is not a directory", out.display()));
    }
    std::fs::create_dir_all(out).map_err(|e| format!("--out {}: cannot create the directory: {e}", out.display()))?;
    let probe = out.join(".fvdsim-write-probe");
    std::fs::write(&probe, b"").map_err(|e| format!("--out {}: not writable: {e}", out.display()))?;
    let _ = std::fs::remove_file(&probe);
    Ok(())
}

/// Progress on stderr while a run goes: a bar on a terminal, a plain line every 10 s otherwise,
/// nothing when quiet. Ctrl-C stops the run at the next request; the partial report is written.
fn watcher(quiet: bool) -> Option<fvd_scenarios::campaign::run::Watcher> {
    use std::io::IsTerminal as _;
    use std::sync::atomic::{AtomicBool, Ordering};
    static INTERRUPTED: AtomicBool = AtomicBool::new(false);
    static HANDLER: std::sync::Once = std::sync::Once::new();
    HANDLER.call_once(|| {
        // The first Ctrl-C stops the run at its next request; a second one exits at once.
        let _ = ctrlc::set_handler(|| {
            if INTERRUPTED.swap(true, Ordering::SeqCst) {
                std::process::exit(130);
            }
        });
    });
    let interrupted = &INTERRUPTED;
    let bar = (!quiet && std::io::stderr().is_terminal()).then(|| {
        let bar = indicatif::ProgressBar::new(0);
        bar.set_style(
            indicatif::ProgressStyle::with_template("{elapsed_precise} [{bar:30}] {pos}/{len} requests  {msg}")
                .expect("a valid template")
                .progress_chars("=> "),
        );
        bar
    });
    let mut last_line = Instant::now();
    Some(Box::new(move |p: &fvd_scenarios::campaign::run::Progress| {
        let message = format!(
            "crashes {}/{}  simulated {:.0} s  failures {}",
            p.crashes,
            p.crashes_planned,
            p.simulated_seconds,
            u8::from(p.failed)
        );
        match &bar {
            Some(bar) => {
                bar.set_length(p.total);
                bar.set_position(p.issued);
                bar.set_message(message);
                if p.issued >= p.total {
                    bar.finish_and_clear();
                }
            }
            None if !quiet && last_line.elapsed().as_secs() >= 10 => {
                last_line = Instant::now();
                eprintln!("fvdsim: {}/{} requests, {message}", p.issued, p.total);
            }
            None => {}
        }
        if interrupted.load(Ordering::SeqCst) {
            if let Some(bar) = &bar {
                bar.abandon();
            }
            return false;
        }
        true
    }))
}

/// Runs a configuration, writes the run directory, prints the table; returns the exit code.
/// If the run directory cannot be written, the verdict and the repro command are still printed
/// (the failure file goes to the current directory) and the verdict's exit code is kept.
fn run_and_report(config: &RunConfig, out: &Path, log_events: usize, quiet: bool) -> Result<RunOutcome, ExitCode> {
    if let Err(error) = check_out_dir(out) {
        return Err(usage(error));
    }
    let started = Instant::now();
    let outcome = match fvd_scenarios::campaign::run::run_watched(
        config,
        log_events.max(fvd_scenarios::campaign::run::DEFAULT_LOG_TAIL),
        watcher(quiet),
    ) {
        Ok(outcome) => outcome,
        Err(error) => return Err(usage(error)),
    };
    let wall = started.elapsed().as_secs_f64();
    if !quiet {
        print_table(&outcome, wall);
    }
    let failure_path = match write_run_directory(&outcome, out, wall) {
        Ok(path) => path,
        Err(error) => {
            eprintln!("fvdsim: writing {}: {error:#}", out.display());
            // Keep the verdict: a failure file beside us, so the repro command still works.
            outcome.failure.as_ref().and_then(|_| {
                let path = PathBuf::from(format!("failure-{}-{}.json", outcome.config.name(), outcome.config.seed));
                let file = fvd_scenarios::campaign::output::failure_file(&outcome, &path);
                std::fs::write(&path, serde_json::to_string_pretty(&file).expect("failure files serialise"))
                    .ok()
                    .map(|()| path)
            })
        }
    };
    if !quiet {
        say!("  report              {}", out.join("index.html").display());
    }
    if log_events > 0 {
        let path = out.join("events.log");
        let mut text = outcome.last_events.join("\n");
        text.push('\n');
        match std::fs::write(&path, text) {
            Ok(()) => say!("  events              {} ({} lines)", path.display(), outcome.last_events.len()),
            Err(error) => eprintln!("fvdsim: writing {}: {error}", path.display()),
        }
    }
    if outcome.summary.interrupted {
        eprintln!(
            "INTERRUPTED after {} of {} requests: the report in {} covers what ran",
            outcome.summary.issued,
            config.max_requests.map_or("all".to_string(), |m| m.to_string()),
            out.display()
        );
    }
    if let Some(failure) = &outcome.failure {
        eprintln!(
            "FAILURE ({}): {}",
            serde_json::to_value(failure.class).ok().and_then(|v| v.as_str().map(str::to_owned)).unwrap_or_default(),
            failure.message
        );
        for sector in failure.sectors.iter().take(4) {
            eprintln!("  sector {}: held {}; allowed: {}", sector.sector, sector.actual, sector.allowed.join(" | "));
        }
        match &failure_path {
            Some(path) => eprintln!("reproduce with: {}", repro_command(path)),
            None => eprintln!("the failure file could not be written anywhere; rerun with a writable --out"),
        }
    } else if quiet && !outcome.summary.interrupted {
        say!(
            "verified: {} seed {}, event-log hash {:#018x}",
            outcome.config.name(),
            outcome.config.seed,
            outcome.log_hash
        );
    }
    Ok(outcome)
}

/// The exit code of a finished run.
fn exit_code(outcome: &RunOutcome) -> ExitCode {
    match (&outcome.failure, outcome.summary.interrupted) {
        (Some(failure), _) => ExitCode::from(failure.class.exit_code()),
        (None, true) => ExitCode::from(130),
        (None, false) => ExitCode::SUCCESS,
    }
}

/// Crash-state enumeration over a short run (see `campaign::enumerate`); reports the first
/// failure like a run, through its replay by the ordinary runner.
fn exhaustive(config: &RunConfig, out: &Path, jobs: usize) -> ExitCode {
    let started = Instant::now();
    let outcome = match fvd_scenarios::campaign::enumerate::run_enumerated(config, jobs, |_, _| {}) {
        Ok(outcome) => outcome,
        Err(error) => return usage(error),
    };
    let wall = started.elapsed().as_secs_f64();
    if let Some(failure) = &outcome.clean.failure {
        say!("fvdsim {} seed {}: the run without crashes failed", config.name(), config.seed);
        return match write_run_directory(&outcome.clean, out, wall) {
            Ok(Some(path)) => {
                eprintln!("FAILURE: {}", failure.message);
                eprintln!("reproduce with: {}", repro_command(&path));
                ExitCode::from(failure.class.exit_code())
            }
            Ok(None) => ExitCode::from(1),
            Err(error) => usage(format!("writing {}: {error:#}", out.display())),
        };
    }
    let figures = format!(
        "{} events, {} distinct moments, {} crash states recovered and verified ({} duplicates skipped, {} sectors judged), {:.1} s, {:.0} states/s",
        outcome.events,
        outcome.moments,
        outcome.crash_states,
        outcome.duplicate_states,
        outcome.sectors_verified,
        wall,
        outcome.crash_states as f64 / wall.max(1e-9)
    );
    let Some(found) = outcome.failure else {
        say!("fvdsim {} seed {}: every crash state recovered and verified: {figures}", config.name(), config.seed);
        return ExitCode::SUCCESS;
    };
    say!(
        "fvdsim {} seed {}: a crash state at event {} failed: {}",
        config.name(),
        config.seed,
        found.spec.occurrence,
        found.message
    );
    say!("  ({figures})");
    match write_run_directory(&found.replay, out, wall) {
        Ok(Some(path)) => {
            let failure = found.replay.failure.as_ref().expect("a failing outcome");
            eprintln!("FAILURE: {}", failure.message);
            eprintln!("reproduce with: {}", repro_command(&path));
            ExitCode::from(failure.class.exit_code())
        }
        Ok(None) => {
            eprintln!(
                "FAILURE: {} (the ordinary runner, crashing at event {} with strategy {}, did not reproduce it: \
                 its recovery world differs; the crash state is named above)",
                found.message,
                found.spec.occurrence,
                serde_json::to_string(&found.spec.strategy).unwrap_or_default()
            );
            ExitCode::from(1)
        }
        Err(error) => usage(format!("writing {}: {error:#}", out.display())),
    }
}

fn check_determinism(config: &RunConfig, quiet: bool) -> ExitCode {
    let mut outcomes = Vec::new();
    for _ in 0..2 {
        match fvd_scenarios::campaign::run::run_watched(config, DEFAULT_LOG_TAIL, watcher(quiet)) {
            Ok(outcome) if outcome.summary.interrupted => {
                eprintln!("INTERRUPTED: the determinism check did not finish");
                return ExitCode::from(130);
            }
            Ok(outcome) => outcomes.push(outcome),
            Err(error) => return usage(error),
        }
    }
    let (first, second) = (&outcomes[0], &outcomes[1]);
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

/// What differs between a recorded failure and its replay, or `None` if it reproduced exactly.
fn repro_differences(recorded: &fvd_scenarios::campaign::output::FailureFile, replay: &RunOutcome) -> Option<String> {
    let mut differences = Vec::new();
    match &replay.failure {
        None => differences.push("the replay found no failure".to_string()),
        Some(failure) if failure.class != recorded.failure.class => {
            differences.push(format!("failure class {:?}, recorded {:?}", failure.class, recorded.failure.class))
        }
        Some(failure) if failure.message != recorded.failure.message => {
            differences.push(format!("failure {:?}, recorded {:?}", failure.message, recorded.failure.message))
        }
        Some(_) => {}
    }
    let hash = format!("{:#018x}", replay.log_hash);
    if hash != recorded.log_hash {
        differences.push(format!("event-log hash {hash}, recorded {}", recorded.log_hash));
    }
    if recorded.git_commit != fvd_scenarios::campaign::output::GIT_COMMIT && !differences.is_empty() {
        differences.push(format!(
            "recorded at commit {}, replayed with {}: a different build may run differently",
            recorded.git_commit,
            fvd_scenarios::campaign::output::GIT_COMMIT
        ));
    }
    (!differences.is_empty()).then(|| differences.join("; "))
}

/// `fvdsim swarm`: seeds drawn configurations until the count or the time is reached.
fn swarm(args: &SwarmArgs) -> ExitCode {
    use fvd_scenarios::campaign::swarm::{FailureDb, SwarmProfiles, SwarmSummary, run_seeds};
    use std::sync::atomic::{AtomicBool, Ordering};
    if let Err(error) = check_out_dir(&args.out) {
        return usage(error);
    }
    let profiles = if args.with_v1 { SwarmProfiles::WithV1 } else { SwarmProfiles::Hardened };
    let mut db = FailureDb::default();
    if !args.merge.is_empty() {
        let target = args.out.join("failures.json");
        if target.exists() {
            match FailureDb::read(&target) {
                Ok(existing) => db.merge(existing),
                Err(error) => return usage(format!("{error:#}")),
            }
        }
        for path in &args.merge {
            match FailureDb::read(path) {
                Ok(other) => db.merge(other),
                Err(error) => return usage(format!("{error:#}")),
            }
        }
        if let Err(error) = db.write(&target) {
            return usage(format!("{error:#}"));
        }
        // The shards' totals (swarm.json beside each database), for the merged page.
        let mut merged = SwarmSummary::default();
        for path in &args.merge {
            let totals = path.with_file_name("swarm.json");
            if let Ok(text) = std::fs::read_to_string(&totals) {
                match serde_json::from_str::<SwarmSummary>(&text) {
                    Ok(summary) => merged.merge(&summary),
                    Err(error) => eprintln!("fvdsim swarm: {} is not a swarm summary: {error}", totals.display()),
                }
            }
        }
        let page = merged.page(&format!("fvdsim swarm: {} campaigns merged", args.merge.len()), &db);
        let written =
            std::fs::write(args.out.join("swarm.json"), serde_json::to_string_pretty(&merged).unwrap_or_default())
                .and_then(|()| {
                    std::fs::write(args.out.join("index.html"), fvd_reports::campaign::render_campaign_page(&page))
                });
        if let Err(error) = written {
            return usage(format!("writing {}: {error}", args.out.display()));
        }
        say!(
            "merged {} database(s) into {}: {} distinct failure(s)",
            args.merge.len(),
            target.display(),
            db.failures.len()
        );
        for failure in db.failures.values() {
            say!("  {} x{}: {}", failure.signature, failure.count, failure.repro_command);
        }
        return ExitCode::SUCCESS;
    }
    let mut summary = SwarmSummary::default();
    let started = Instant::now();
    // The campaign's label in the database (first and last seen): when it started, UTC.
    let label = humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string();
    let mut regressions = 0u64;
    if let Some(path) = &args.replay_db {
        let known = match FailureDb::read(path) {
            Ok(db) => db,
            Err(error) => return usage(format!("{error:#}")),
        };
        say!("replaying {} recorded failure(s) from {}", known.failures.len(), path.display());
        for failure in known.failures.values() {
            let Some(file) = failure.repro_command.strip_prefix("fvdsim repro ") else { continue };
            let replayed =
                read_failure_file(Path::new(file)).ok().and_then(|f| fvd_scenarios::campaign::run::run(&f.config).ok());
            let still = replayed.as_ref().and_then(|o| o.failure.as_ref()).is_some();
            regressions += u64::from(still);
            say!("  {}: {}", if still { "STILL FAILS" } else { "passes now" }, failure.signature);
        }
        db.merge(known);
    }
    let deadline = args.time.map(|t| started + t);
    let count = args.seeds.unwrap_or(if args.time.is_some() { u64::MAX } else { 100 });
    let (shard, shards) = args.shard.unwrap_or((0, 1));
    let indices = (0..count).map(move |k| k * shards + shard);
    static STOP: AtomicBool = AtomicBool::new(false);
    let _ = ctrlc::set_handler(|| STOP.store(true, Ordering::SeqCst));
    let keep_going = move || !STOP.load(Ordering::SeqCst) && deadline.is_none_or(|d| Instant::now() < d);
    let bar = (!args.quiet && std::io::IsTerminal::is_terminal(&std::io::stderr())).then(|| {
        let bar = indicatif::ProgressBar::new_spinner();
        bar.enable_steady_tick(std::time::Duration::from_millis(200));
        bar
    });
    let mut last_line = Instant::now();
    let out = args.out.clone();
    let quiet = args.quiet;
    run_seeds(args.seed, profiles, indices, args.jobs as usize, &keep_going, &mut |result| {
        let outcome = match result.outcome {
            Ok(outcome) => outcome,
            Err(error) => {
                eprintln!("fvdsim swarm: seed index {}: configuration error (a swarm bug): {error}", result.index);
                return;
            }
        };
        summary.add(&outcome, result.crash_states);
        if outcome.failure.is_some() {
            let path = out.join(format!("failure-swarm-{}.json", outcome.config.seed));
            let file = fvd_scenarios::campaign::output::failure_file(&outcome, &path);
            let _ = std::fs::write(&path, serde_json::to_string_pretty(&file).expect("failure files serialise"));
            let command = repro_command(&path);
            db.record(&outcome, &command, &label);
            let line = format!(
                "FAILURE seed {} ({}): {}\n  replay: {command}   or: fvdsim run --swarm-seed {}{}",
                outcome.config.seed,
                fvd_scenarios::campaign::swarm::signature(&outcome).unwrap_or_default(),
                outcome.failure.as_ref().map_or("", |f| f.message.as_str()),
                outcome.config.seed,
                if outcome.config.profile == fvd_scenarios::campaign::config::ProfileName::V1 {
                    " --profile v1"
                } else {
                    ""
                }
            );
            match &bar {
                Some(bar) => bar.println(line),
                None => eprintln!("{line}"),
            }
        }
        let minutes = started.elapsed().as_secs_f64() / 60.0;
        let message = format!(
            "{} seeds ({:.0}/min), {} crash states verified, {} failing seeds, {} distinct",
            summary.seeds,
            summary.seeds as f64 / minutes.max(1e-9),
            summary.crashes_verified,
            summary.failing_seeds,
            db.failures.len()
        );
        match &bar {
            Some(bar) => bar.set_message(message),
            None if !quiet && last_line.elapsed().as_secs() >= 10 => {
                last_line = Instant::now();
                eprintln!("fvdsim swarm: {message}");
            }
            None => {}
        }
    });
    if let Some(bar) = bar {
        bar.finish_and_clear();
    }
    summary.wall_seconds = started.elapsed().as_secs_f64();
    summary.distinct_failures = db.failures.len();
    let written = db
        .write(&args.out.join("failures.json"))
        .and_then(|()| Ok(std::fs::write(args.out.join("swarm.json"), serde_json::to_string_pretty(&summary)?)?))
        .and_then(|()| {
            let title = format!("fvdsim swarm: seed {}, started {label}", args.seed);
            let page = summary.page(&title, &db);
            Ok(std::fs::write(args.out.join("index.html"), fvd_reports::campaign::render_campaign_page(&page))?)
        });
    if let Err(error) = written {
        eprintln!("fvdsim swarm: writing {}: {error:#}", args.out.display());
    }
    say!(
        "swarm: {} seeds in {:.1} s ({:.0} per minute), {} crash states verified ({:.0}/s), {} sectors verified",
        summary.seeds,
        summary.wall_seconds,
        summary.seeds as f64 * 60.0 / summary.wall_seconds.max(1e-9),
        summary.crashes_verified,
        summary.crashes_verified as f64 / summary.wall_seconds.max(1e-9),
        summary.sectors_verified
    );
    let paths = fvd_scenarios::campaign::coverage::PATHS.len();
    say!("  coverage: {} of {paths} paths reached", paths - summary.never_reached.len());
    for path in &summary.never_reached {
        say!("    never reached: {path}");
    }
    say!(
        "  failures: {} failing seeds, {} distinct (database {})",
        summary.failing_seeds,
        db.failures.len(),
        args.out.join("failures.json").display()
    );
    for failure in db.failures.values() {
        say!("    {} x{}: {}", failure.signature, failure.count, failure.repro_command);
    }
    if summary.failing_seeds > 0 || regressions > 0 { ExitCode::from(1) } else { ExitCode::SUCCESS }
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
    // No subcommand: `fvdsim run` with the options given (the main job by default).
    let command = cli.command.unwrap_or(Command::Run(cli.run));
    match command {
        Command::Run(args) => {
            let config = match config_for(&args) {
                Ok(config) => config,
                Err(error) => return usage(error),
            };
            if args.check_determinism {
                check_determinism(&config, args.quiet)
            } else if config.enumerates() {
                exhaustive(&config, &args.out, args.jobs as usize)
            } else {
                match run_and_report(&config, &args.out, args.log_events, args.quiet) {
                    Ok(outcome) => exit_code(&outcome),
                    Err(code) => code,
                }
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
                let outcome = match run_and_report(&failure.config, &out, log_events, false) {
                    Ok(outcome) => outcome,
                    Err(code) => return code,
                };
                let hash = format!("{:#018x}", outcome.log_hash);
                match repro_differences(&failure, &outcome) {
                    None => say!("reproduced: same failure, same event-log hash {hash}"),
                    Some(differences) => say!("NOT reproduced: {differences}"),
                }
                exit_code(&outcome)
            }
            Err(error) => usage(format!("{error:#}")),
        },
        Command::Shrink { file, out, max_runs } if is_qemu_finding(&file) => shrink_qemu_finding(&file, out, max_runs),
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
                    // What the shrunk run actually issued, not a setting that may be stale.
                    let requests = shrunk.outcome.summary.issued;
                    let crashes: u64 = shrunk.outcome.summary.crashes_by_point.values().sum();
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
            use fvd_scenarios::campaign::study::{StudyOptions, StudySetting, default_sweep, run_study, study_v1};
            if args.seeds == 0 || args.seeds > 1_000 {
                return usage(format!("--seeds {}: from 1 to 1000", args.seeds));
            }
            let settings = if args.sweep {
                default_sweep()
            } else {
                vec![StudySetting::new(PrefetchSpec {
                    slots: args.slots,
                    bytes_per_prefetch: args.bytes_per_prefetch,
                    alpha_percent: args.alpha.min(100),
                    min_kb_s: args.min_kb_s,
                    throttle_ms: args.throttle_ms,
                    aimd_target_us: args.aimd_target_us,
                    aimd_max_kb_s: args.aimd_max_kb_s,
                    aimd_step_kb_s: args.aimd_step_kb_s,
                    ..study_v1()
                })]
            };
            let options = StudyOptions {
                seeds: args.seeds,
                requests: args.requests,
                image_device: args.image_device.clone(),
                base_device: args.base_device.clone(),
                commit: args.commit,
                profile: args.profile,
                trace: match &args.trace {
                    None => None,
                    Some(path) if path.as_os_str() == "cloudphysics" => {
                        Some((fvd_scenarios::trace::BUILTIN_CLOUDPHYSICS.to_string(), TraceFormat::Cloudphysics))
                    }
                    Some(path) => match std::fs::canonicalize(path) {
                        Ok(path) => Some((path.display().to_string(), args.trace_format)),
                        Err(error) => return usage(format!("--trace {}: {error}", path.display())),
                    },
                },
                ..StudyOptions::new(args.seed)
            };
            let width = settings.iter().map(|s| s.label.len()).max().unwrap_or(8).max(8);
            say!(
                "{:<width$} {:>9} {:>9} {:>8} {:>9} {:>9} {:>17} {:>7} {:>10}",
                "setting",
                "finish s",
                "idle s",
                "ratio",
                "p50 infl",
                "p99 infl",
                "p99 min..max",
                "pauses",
                "wasted"
            );
            let report = run_study(&options, &settings, &args.out, |r| {
                say!(
                    "{:<width$} {:>9} {:>9} {:>8} {:>+8.1}% {:>+8.1}% {:>+7.1}%..{:>+6.1}% {:>7.1} {:>6.1} MiB  {}",
                    r.setting.label,
                    r.time_to_finish_s.map_or("never".into(), |t| format!("{t:.2}")),
                    r.idle_time_to_finish_s.map_or("never".into(), |t| format!("{t:.2}")),
                    r.finish_ratio.map_or("-".into(), |x| format!("{x:.2}x")),
                    r.p50_inflation_percent,
                    r.p99_inflation_percent,
                    r.p99_inflation_range_percent.0,
                    r.p99_inflation_range_percent.1,
                    r.pauses,
                    r.bytes_wasted as f64 / 1048576.0,
                    match (&r.failure, r.meets_goal) {
                        (Some(f), _) => format!("FAILURE: {f}"),
                        (None, true) => "meets the goal".into(),
                        (None, false) => String::new(),
                    }
                );
            });
            match report {
                Ok(report) => {
                    if let Some(best) = report
                        .results
                        .iter()
                        .filter(|r| r.failure.is_none())
                        .min_by(|a, b| a.goal_distance().total_cmp(&b.goal_distance()))
                    {
                        say!(
                            "closest to the goal (p99 inflation <= {}%, finish <= {}x idle): {}",
                            report.goal.max_p99_inflation_percent,
                            report.goal.max_finish_ratio,
                            best.setting.label
                        );
                    }
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
        Command::Swarm(args) => swarm(&args),
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
        Command::Qemu(args) => qemu_command(&args),
        Command::Scenarios => {
            let width = SCENARIOS.iter().map(|s| s.name.len()).max().unwrap_or(0);
            for s in SCENARIOS {
                say!("{:<width$}  {}", s.name, s.description);
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
        Command::Bench { which: BenchKind::Engine, json, format: Some(format), .. }
            if format != fvd_scenarios::campaign::guest::FormatName::Fvd =>
        {
            use fvd_scenarios::bench_formats::{format_header, format_row_line, run_format_bench};
            let options = fvd_scenarios::bench_engine::EngineBenchOptions::default();
            if !json {
                let qemu = fvd_scenarios::qemu::QemuImg::find().ok();
                say!("{}", format_header(&options, format, qemu.as_ref().map(|q| q.version())));
            }
            match run_format_bench(&options, format, |row| {
                if !json {
                    say!("{}", format_row_line(row));
                }
            }) {
                Ok(report) => {
                    if json {
                        say!("{}", serde_json::to_string(&report).expect("bench report serialises"));
                    }
                    ExitCode::SUCCESS
                }
                Err(error) => usage(format!("bench engine --format {format}: {error:#}")),
            }
        }
        Command::Bench { which: BenchKind::Engine, json, .. } => {
            use fvd_scenarios::bench_engine::{EngineBenchOptions, header, row_line, run_engine_bench};
            let options = EngineBenchOptions::default();
            if !json {
                let qemu = fvd_scenarios::qemu::QemuImg::find().ok();
                say!("{}", header(&options, qemu.as_ref().map(|q| q.version())));
            }
            match run_engine_bench(&options, |row| {
                if !json {
                    say!("{}", row_line(row));
                }
            }) {
                Ok(report) => {
                    if json {
                        say!("{}", serde_json::to_string(&report).expect("bench report serialises"));
                    }
                    ExitCode::SUCCESS
                }
                Err(error) => usage(format!("bench engine: {error:#}")),
            }
        }
        Command::Bench { which: BenchKind::Scale, json, part, .. } => {
            use fvd_scenarios::bench_scale::{run_all, run_part};
            if let Some(part) = part {
                return match run_part(&part) {
                    Ok(figures) => {
                        say!("{}", serde_json::to_string(&figures).expect("figures serialise"));
                        ExitCode::SUCCESS
                    }
                    Err(error) => usage(format!("bench scale --part {part}: {error:#}")),
                };
            }
            if !json {
                say!("scale benchmark: each part in its own process (peak RSS is VmHWM)");
            }
            let parts = run_all(|p| {
                if !json {
                    say!(
                        "  {:<22} {:<44} target {:<22} {}\n  {:<22} {}",
                        p.part,
                        p.figure,
                        p.target,
                        if p.met { "met" } else { "NOT MET" },
                        "",
                        p.what
                    );
                }
            });
            match parts {
                Ok(parts) => {
                    if json {
                        say!("{}", serde_json::to_string(&parts).expect("figures serialise"));
                    }
                    ExitCode::SUCCESS
                }
                Err(error) => usage(format!("bench scale: {error:#}")),
            }
        }
        Command::Bench { which: BenchKind::CrashStates, json, .. } => {
            use fvd_scenarios::bench_crash_states::{header, row_line, run_crash_state_bench};
            let jobs = std::thread::available_parallelism().map_or(1, usize::from);
            if !json {
                say!("{}", header(jobs));
            }
            match run_crash_state_bench(3, jobs, |row| {
                if !json {
                    say!("{}", row_line(row));
                }
            }) {
                Ok(rows) => {
                    if json {
                        say!("{}", serde_json::to_string(&rows).expect("rows serialise"));
                    } else {
                        let states: u64 = rows.iter().map(|r| r.enumerated_states).sum();
                        let seconds: f64 = rows.iter().map(|r| r.enumerated_seconds).sum();
                        let rerun: u64 = rows.iter().map(|r| r.rerun_states).sum();
                        let reruns: u64 = rows.iter().map(|r| r.rerun_runs).sum();
                        let rerun_seconds: f64 = rows.iter().map(|r| r.rerun_seconds).sum();
                        let parallel_seconds: f64 = rows.iter().map(|r| r.enumerated_parallel_seconds).sum();
                        let rerun_rate = rerun as f64 / rerun_seconds.max(1e-9);
                        say!(
                            "  total: {states} distinct crash states in {seconds:.2} s on one core ({:.0} states/s; target 5,000); re-run: {rerun} distinct in {reruns} runs, {rerun_seconds:.2} s ({rerun_rate:.0}/s)",
                            states as f64 / seconds.max(1e-9),
                        );
                        say!(
                            "  per wall second, enumeration verifies {:.1}x the re-run's distinct states on one core and {:.1}x with {jobs} workers",
                            states as f64 / seconds.max(1e-9) / rerun_rate.max(1e-9),
                            states as f64 / parallel_seconds.max(1e-9) / rerun_rate.max(1e-9),
                        );
                        // The target per seed: 20x the distinct states in no more wall time.
                        let worst = |f: &dyn Fn(&fvd_scenarios::bench_crash_states::CrashStateRow) -> f64| {
                            rows.iter().map(f).fold(f64::NAN, f64::min)
                        };
                        let highest = |f: &dyn Fn(&fvd_scenarios::bench_crash_states::CrashStateRow) -> f64| {
                            rows.iter().map(f).fold(f64::NAN, f64::max)
                        };
                        let states_ratio = worst(&|r| r.matched_states as f64 / r.rerun_states.max(1) as f64);
                        let time_one = highest(&|r| r.matched_seconds / r.rerun_seconds.max(1e-9));
                        let time_jobs = highest(&|r| r.matched_parallel_seconds / r.rerun_seconds.max(1e-9));
                        say!(
                            "  per seed, with {} samples per moment: at least {states_ratio:.1}x the re-run's distinct states, in at most {time_one:.2}x its wall time on one core and {time_jobs:.2}x with {jobs} workers (target: 20x the states in no more wall time)",
                            fvd_scenarios::bench_crash_states::MATCHED_SAMPLES,
                        );
                    }
                    ExitCode::SUCCESS
                }
                Err(error) => usage(format!("bench crash-states: {error:#}")),
            }
        }
        Command::Bench {
            which: BenchKind::Sim,
            json,
            seed,
            writes,
            crash_cycles,
            device_mib,
            payload,
            repeats,
            ..
        } => {
            let only = device_mib.map(|mib| (mib << 20, payload));
            let report = run_sim_bench(SimBenchOptions {
                seed,
                writes,
                crash_cycles,
                only,
                repeats,
                ..SimBenchOptions::default()
            });
            if json {
                say!("{}", serde_json::to_string(&report).expect("bench report serialises"));
            } else {
                say!("{report}");
            }
            ExitCode::SUCCESS
        }
    }
}

/// True if `file` is a `fvdsim qemu` finding file (by its `kind`).
fn is_qemu_finding(file: &std::path::Path) -> bool {
    let kind = std::fs::read_to_string(file)
        .ok()
        .and_then(|text| serde_json::from_str::<serde_json::Value>(&text).ok())
        .and_then(|value| value.get("kind").and_then(|k| k.as_str()).map(String::from));
    kind.as_deref() == Some(fvd_scenarios::qemu_crash::FINDING_KIND)
}

/// `fvdsim shrink finding-state-K.json`.
fn shrink_qemu_finding(file: &std::path::Path, out: Option<PathBuf>, max_runs: u32) -> ExitCode {
    use fvd_scenarios::qemu_crash::{FindingFile, shrink::shrink};
    let finding = match FindingFile::read(file) {
        Ok(finding) => finding,
        Err(error) => return usage(format!("{error:#}")),
    };
    let out = out.unwrap_or_else(|| file.with_extension("min.json"));
    let dir = out.with_extension("");
    say!(
        "shrinking {} ({} {:?}, {} operations): {}",
        file.display(),
        finding.run.format,
        finding.finding.class,
        finding.ops.len(),
        finding.finding.message
    );
    match shrink(&finding, &dir, max_runs, |line| say!("  {line}")) {
        Ok(shrunk) => {
            if let Err(error) = std::fs::copy(&shrunk.path, &out) {
                return usage(format!("writing {}: {error}", out.display()));
            }
            say!(
                "shrunk in {} runs from {} to {} operations: {}",
                shrunk.runs,
                shrunk.ops_before,
                shrunk.file.ops.len(),
                shrunk.file.finding.message
            );
            say!("  the run is in {}", dir.display());
            say!("reproduce with: fvdsim qemu --from {}", out.display());
            ExitCode::SUCCESS
        }
        Err(error) => usage(format!("shrink: {error:#}")),
    }
}

/// `fvdsim qemu`: one run, a campaign of several, or a finding file's script again.
fn qemu_command(args: &QemuArgs) -> ExitCode {
    use fvd_scenarios::qemu_crash::campaign::{CampaignOptions, CampaignRun, run_campaign};
    use fvd_scenarios::qemu_crash::{FORMATS, FindingFile, QemuOptions};
    let started = std::time::Instant::now();
    let mut template = QemuOptions {
        seed: args.seed,
        ops: args.ops,
        backing: args.backing,
        disk_bytes: args.size,
        cluster_bytes: args.cluster_size,
        max_states: args.max_states,
        jobs: args.jobs.clamp(1, 64) as usize,
        only_state: args.state,
        mutation: args.mutate,
        atomic_unit_bytes: args.atomic_unit,
        ..QemuOptions::new("", &args.out)
    };
    let mut formats: Vec<String> = args.format.iter().map(|f| f.trim().to_ascii_lowercase()).collect();
    if formats.iter().any(|f| f == "all") {
        formats = FORMATS.iter().map(|f| f.to_string()).collect();
    }
    if let Some(from) = &args.from {
        let finding = match FindingFile::read(from).and_then(|f| Ok((f.options(&args.out)?, f))) {
            Ok(found) => found,
            Err(error) => return usage(format!("qemu: {error:#}")),
        };
        template = QemuOptions { jobs: template.jobs, only_state: args.state.or(finding.0.only_state), ..finding.0 };
        formats = vec![finding.1.run.format.clone()];
        say!(
            "judging state {} of {} again: {}",
            template.only_state.unwrap_or(0),
            from.display(),
            finding.1.finding.message
        );
    }
    let campaign = CampaignOptions { formats, runs: args.runs, template };
    let mut last = std::time::Instant::now();
    let report = match run_campaign(&campaign, |run, runs, done, total| {
        if last.elapsed().as_secs() >= 5 {
            eprintln!("fvdsim qemu: run {}/{runs}: {done}/{total} crash states judged", run + 1);
            last = std::time::Instant::now();
        }
    }) {
        Ok(report) => report,
        Err(error) => return usage(format!("qemu: {error:#}")),
    };
    for CampaignRun { dir, report } in &report.runs {
        say!("fvdsim qemu {} seed {} ({})", report.format, report.seed, report.qemu_version);
        say!(
            "  script              {} operations{}{}; write log: {} entries, {} flushes",
            report.ops,
            report.cluster_bytes.map_or_else(String::new, |c| format!(", cluster size {c}")),
            if report.backing { " over a raw backing file" } else { "" },
            report.log_entries,
            report.log_flushes
        );
        if report.padded_to_final_length {
            say!(
                "  note                the driver grows its file with truncates, which blklogwrites does not log \
                 ({} bytes beyond the last logged write): states are padded to the file's final length",
                report.unlogged_growth_bytes
            );
        }
        say!(
            "  crash states        {} judged in {:.1} s ({:.0}/s, {} jobs)",
            report.crash_states,
            report.judge_seconds,
            report.states_per_second,
            campaign.template.jobs
        );
        let codes: Vec<String> = report.check_exit_codes.iter().map(|(c, n)| format!("{n} × {c}")).collect();
        say!("  qemu-img check      exit codes {}", codes.join(", "));
        let classes: Vec<String> = report.findings_by_class.iter().map(|(c, n)| format!("{n} {c}")).collect();
        say!("  findings            {}", if classes.is_empty() { "none".into() } else { classes.join(", ") });
        for finding in report.findings.iter().take(3) {
            say!("  state {}: {:?}: {}", finding.state, finding.class, finding.message);
            say!("    reproduce with: {}", finding.repro_command);
        }
        let dir = if dir == "." { campaign.template.out.clone() } else { campaign.template.out.join(dir) };
        say!("  report              {}", dir.join("report.json").display());
    }
    say!(
        "campaign: {} run(s), {} crash states, {} finding(s), {:.1} s; page {}",
        report.runs.len(),
        report.crash_states,
        report.findings,
        started.elapsed().as_secs_f64(),
        campaign.template.out.join("index.html").display()
    );
    if report.findings == 0 { ExitCode::SUCCESS } else { ExitCode::from(1) }
}
