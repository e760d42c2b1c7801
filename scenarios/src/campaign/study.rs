//! `fvdsim prefetch-study`: how prefetch settings trade time-to-finish against the foreground's
//! latency. A base image on a remote-like disk (the `nfs` profile: high latency, limited bandwidth,
//! contention phases), the image on a local NVMe disk, qemu-test-style testers running while
//! prefetch copies the base. Every setting runs against a no-prefetch baseline with the same seed.
//!
//! Per run it writes `<label>.json` (the time series: prefetch windows, moving averages,
//! thresholds, pauses, bytes copied; foreground percentiles per window) and two charts; a sweep
//! adds `tradeoff.svg` (time to finish against p99 inflation, one labelled point per setting),
//! `study.json` and `index.html`. Charts redraw from the JSON.

use std::path::Path;

use anyhow::{Context, Result};
use fvd_reports::campaign::Table;
use fvd_reports::chart::{LineChart, Series, TradeoffChart, TradeoffPoint, render_line_chart, render_tradeoff};
use fvd_reports::html::{Index, render_index};
use fvd_reports::latency::LatencyWindow;
use fvd_sim::Seed;
use serde::{Deserialize, Serialize};

use super::config::{CommitName, CrashConfig, ImageConfig, PrefetchSpec, ProfileName, RunConfig, WorkloadConfig};
use super::output::{PrefetchReport, prefetch_chart};
use super::run::run;

/// One setting of a study.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StudySetting {
    /// The setting named by its command-line flags that differ from the study's v1 defaults
    /// ([`label_of`]); chart point and file name.
    pub label: String,
    /// The prefetch settings.
    pub spec: PrefetchSpec,
}

impl StudySetting {
    /// `spec`, labelled by its flags.
    pub fn new(spec: PrefetchSpec) -> StudySetting {
        StudySetting { label: label_of(&spec), spec }
    }
}

/// What the study is for (issue #14): foreground p99 inflation at most `max_p99_inflation_percent`
/// while prefetch finishes within `max_finish_ratio` times the time it takes on an idle disk.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct StudyGoal {
    /// Highest mean p99 inflation over the seeds, percent.
    pub max_p99_inflation_percent: f64,
    /// Highest time to finish over the idle-disk time to finish.
    pub max_finish_ratio: f64,
}

/// The goal of issue #14: ≤ 10% p99 inflation, ≤ 1.5× the idle-disk time.
pub const GOAL: StudyGoal = StudyGoal { max_p99_inflation_percent: 10.0, max_finish_ratio: 1.5 };

/// The world and workload of a study.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StudyOptions {
    /// The first seed; runs use `seed`, `seed + 1`, … (`seeds` of them).
    pub seed: Seed,
    /// Seeds per setting (each against its own no-prefetch baseline).
    pub seeds: u64,
    /// Foreground requests per run (8 random testers, 60% reads).
    pub requests: u64,
    /// Device profile of the image (`fvdsim run --image-device`).
    pub image_device: String,
    /// Device profile of the base image.
    pub base_device: String,
    /// When metadata is made durable.
    pub commit: CommitName,
    /// The engine's profile.
    #[serde(default)]
    pub profile: ProfileName,
    /// Replay this trace (an absolute path, or [`crate::trace::BUILTIN_CLOUDPHYSICS`]) instead
    /// of the random testers: its first `requests` requests, 100× faster than recorded, folded
    /// onto the study's 1 GiB disk.
    #[serde(default)]
    pub trace: Option<(String, crate::trace::TraceFormat)>,
}

impl StudyOptions {
    /// One seed, 30,000 requests, the image on `nvme`, the base on `nfs`, group commit.
    pub fn new(seed: Seed) -> StudyOptions {
        StudyOptions {
            seed,
            seeds: 1,
            requests: 30_000,
            image_device: "nvme".into(),
            base_device: "nfs".into(),
            commit: CommitName::Group,
            profile: ProfileName::Hardened,
            trace: None,
        }
    }
}

/// One setting on one seed. Latency figures are of the foreground requests that completed while
/// prefetch ran (from its start to its finish, or to the end of the run), in the setting's run
/// and, over the same interval, in the baseline's: exact percentiles, not a maximum of windows.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SeedResult {
    /// The seed.
    pub seed: Seed,
    /// Seconds from prefetch start to finish (simulated); `None` if it did not finish.
    pub time_to_finish_s: Option<f64>,
    /// What prefetch takes on an idle disk with nothing holding it back (one foreground request,
    /// [`idle_reference`]), the same seed, seconds: the yardstick of [`GOAL`]'s finish ratio.
    pub idle_time_to_finish_s: Option<f64>,
    /// Foreground requests in the interval, with prefetch.
    pub requests_during_prefetch: u64,
    /// Foreground p50 in the interval with prefetch, µs.
    pub p50_us: f64,
    /// Foreground p99 in the interval with prefetch, µs.
    pub p99_us: f64,
    /// The baseline's p50 over the same interval, µs.
    pub baseline_p50_us: f64,
    /// The baseline's p99 over the same interval, µs.
    pub baseline_p99_us: f64,
    /// Bytes read from the base but not stored (copied or overwritten meanwhile): waste.
    pub bytes_wasted: u64,
    /// Bytes stored by prefetch.
    pub bytes_copied: u64,
    /// Pauses taken.
    pub pauses: u64,
    /// The run failed the oracle (should never happen).
    pub failure: Option<String>,
}

impl SeedResult {
    /// (p − baseline) / baseline, percent (0 without a baseline figure).
    fn inflation(p: f64, baseline: f64) -> f64 {
        if baseline > 0.0 { (p - baseline) / baseline * 100.0 } else { 0.0 }
    }

    /// p99 inflation, percent.
    pub fn p99_inflation_percent(&self) -> f64 {
        Self::inflation(self.p99_us, self.baseline_p99_us)
    }

    /// p50 inflation, percent.
    pub fn p50_inflation_percent(&self) -> f64 {
        Self::inflation(self.p50_us, self.baseline_p50_us)
    }
}

/// One setting over every seed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StudyResult {
    /// The setting.
    pub setting: StudySetting,
    /// Per seed.
    pub seeds: Vec<SeedResult>,
    /// Mean time to finish, s; `None` if a seed did not finish.
    pub time_to_finish_s: Option<f64>,
    /// Mean idle-disk time to finish, s.
    pub idle_time_to_finish_s: Option<f64>,
    /// `time_to_finish_s / idle_time_to_finish_s`.
    pub finish_ratio: Option<f64>,
    /// Mean p50 inflation over the seeds, percent.
    pub p50_inflation_percent: f64,
    /// Mean p99 inflation over the seeds, percent.
    pub p99_inflation_percent: f64,
    /// Lowest and highest p99 inflation over the seeds, percent.
    pub p99_inflation_range_percent: (f64, f64),
    /// Mean bytes wasted.
    pub bytes_wasted: u64,
    /// Mean pauses.
    pub pauses: f64,
    /// Meets [`GOAL`] (mean p99 inflation and finish ratio).
    pub meets_goal: bool,
    /// A run failed the oracle (should never happen).
    pub failure: Option<String>,
}

impl StudyResult {
    fn of(setting: StudySetting, seeds: Vec<SeedResult>) -> StudyResult {
        let n = seeds.len().max(1) as f64;
        let mean = |f: &dyn Fn(&SeedResult) -> f64| seeds.iter().map(f).sum::<f64>() / n;
        let all = |f: &dyn Fn(&SeedResult) -> Option<f64>| -> Option<f64> {
            let values: Option<Vec<f64>> = seeds.iter().map(f).collect();
            values.map(|v| v.iter().sum::<f64>() / n)
        };
        let time_to_finish_s = all(&|s| s.time_to_finish_s);
        let idle_time_to_finish_s = all(&|s| s.idle_time_to_finish_s);
        let finish_ratio = time_to_finish_s.zip(idle_time_to_finish_s).map(|(t, i)| t / i.max(1e-9));
        let p99 = mean(&|s| s.p99_inflation_percent());
        let range = seeds
            .iter()
            .map(SeedResult::p99_inflation_percent)
            .fold((f64::MAX, f64::MIN), |(a, b), v| (a.min(v), b.max(v)));
        let failure = seeds.iter().find_map(|s| s.failure.clone());
        StudyResult {
            time_to_finish_s,
            idle_time_to_finish_s,
            finish_ratio,
            p50_inflation_percent: mean(&|s| s.p50_inflation_percent()),
            p99_inflation_percent: p99,
            p99_inflation_range_percent: range,
            bytes_wasted: mean(&|s| s.bytes_wasted as f64) as u64,
            pauses: mean(&|s| s.pauses as f64),
            meets_goal: failure.is_none()
                && p99 <= GOAL.max_p99_inflation_percent
                && finish_ratio.is_some_and(|r| r <= GOAL.max_finish_ratio),
            failure,
            setting,
            seeds,
        }
    }

    /// How far from [`GOAL`]: the larger of p99 inflation and finish ratio, each over its limit
    /// (≤ 1 meets it).
    pub fn goal_distance(&self) -> f64 {
        let ratio = self.finish_ratio.unwrap_or(f64::INFINITY) / GOAL.max_finish_ratio;
        let inflation = self.p99_inflation_percent.max(0.0) / GOAL.max_p99_inflation_percent;
        ratio.max(inflation)
    }
}

/// A study's output (`study.json`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StudyReport {
    /// Version of this file (2: per-seed results, the goal, exact interval percentiles).
    pub schema_version: u32,
    /// The world and workload.
    pub options: StudyOptions,
    /// The goal the verdicts use.
    pub goal: StudyGoal,
    /// Per setting.
    pub results: Vec<StudyResult>,
}

/// The time series of one run (`<label>.json`; the first seed's).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StudySeries {
    /// The setting.
    pub setting: StudySetting,
    /// Prefetch activity.
    pub prefetch: Option<PrefetchReport>,
    /// Foreground latency per 1 s window, with prefetch.
    pub foreground: Vec<LatencyWindow>,
    /// The same without prefetch.
    pub baseline: Vec<LatencyWindow>,
}

/// The study world with `spec` (or no prefetch); `requests` foreground requests.
pub fn study_config(options: &StudyOptions, seed: Seed, spec: Option<PrefetchSpec>, requests: u64) -> RunConfig {
    RunConfig {
        scenario: "prefetch-study".into(),
        seed,
        profile: options.profile,
        commit: options.commit,
        workload: match &options.trace {
            None => WorkloadConfig::Random {
                testers: 8.min(requests.max(1) as u32),
                requests,
                max_sectors: 64,
                read_per_mille: 600,
            },
            Some((path, format)) => WorkloadConfig::Trace {
                path: path.clone(),
                format: *format,
                mode: super::config::ReplayMode::OpenLoop { time_scale: 0.01, max_in_flight: 64 },
                wrap: true,
            },
        },
        image: ImageConfig {
            size_bytes: 1 << 30,
            base_bytes: 512 << 20,
            compact: true,
            block_bytes: 64 << 10,
            chunk_bytes: 1 << 20,
            grow_unit_bytes: 64 << 20,
            journal_bytes: 1 << 20,
            separate_data: false,
            image_device: options.image_device.clone(),
            base_device: options.base_device.clone(),
        },
        crashes: CrashConfig { count: 0, points: Vec::new(), atomic_units: Vec::new(), schedule: Some(Vec::new()) },
        faults: Default::default(),
        flush_every_requests: 100,
        max_requests: options.trace.is_some().then_some(requests),
        verify_sample_sectors: 2_000,
        copy_on_read: false,
        prefetch: spec,
        format: super::guest::FormatName::Fvd,
        qemu_judge: false,
    }
}

/// The study's v1 setting: v1's defaults with a 500 ms start delay and a threshold inside the
/// base read throughput the `nfs` profile gives (60–80 MB/s), so contention phases and foreground
/// load push the moving average under it.
pub fn study_v1() -> PrefetchSpec {
    PrefetchSpec { start_delay_ms: 500, min_kb_s: 60_000, throttle_ms: 2_000, ..PrefetchSpec::v1_defaults() }
}

/// The yardstick of the finish ratio: [`study_v1`] with no minimum throughput (it never
/// pauses), run on an idle disk. A setting's own idle time would not do: a policy that pauses on
/// an idle disk (small chunks measure as slow on a high-latency base) would look fast beside it.
pub fn idle_reference() -> PrefetchSpec {
    PrefetchSpec { min_kb_s: 0, ..study_v1() }
}

/// `spec` named by the `fvdsim prefetch-study` flags that differ from [`study_v1`]
/// (`--min-kb-s 80000 --throttle-ms 500`); `v1 defaults` when none do.
pub fn label_of(spec: &PrefetchSpec) -> String {
    let base = study_v1();
    let mut flags = Vec::new();
    if let Some(target) = spec.aimd_target_us {
        flags.push(format!("--aimd-target-us {target}"));
        flags.push(format!("--aimd-max-kb-s {}", spec.aimd_max_kb_s));
        if let Some(step) = spec.aimd_step_kb_s {
            flags.push(format!("--aimd-step-kb-s {step}"));
        }
    }
    if spec.alpha_percent != base.alpha_percent {
        flags.push(format!("--alpha {}", spec.alpha_percent));
    }
    if spec.min_kb_s != base.min_kb_s {
        flags.push(format!("--min-kb-s {}", spec.min_kb_s));
    }
    if spec.throttle_ms != base.throttle_ms {
        flags.push(format!("--throttle-ms {}", spec.throttle_ms));
    }
    if spec.slots != base.slots {
        flags.push(format!("--slots {}", spec.slots));
    }
    if spec.bytes_per_prefetch != base.bytes_per_prefetch {
        let b = spec.bytes_per_prefetch;
        flags.push(match b {
            b if b.is_multiple_of(1 << 20) => format!("--bytes-per-prefetch {}M", b >> 20),
            b if b.is_multiple_of(1 << 10) => format!("--bytes-per-prefetch {}K", b >> 10),
            b => format!("--bytes-per-prefetch {b}"),
        });
    }
    if flags.is_empty() { "v1 defaults".into() } else { flags.join(" ") }
}

/// The default sweep: v1's defaults, each knob moved, and the AIMD policy.
pub fn default_sweep() -> Vec<StudySetting> {
    let base = study_v1();
    [
        base,
        PrefetchSpec { alpha_percent: 50, ..base },
        PrefetchSpec { alpha_percent: 95, ..base },
        PrefetchSpec { min_kb_s: 40_000, ..base },
        PrefetchSpec { min_kb_s: 80_000, ..base },
        PrefetchSpec { throttle_ms: 500, ..base },
        PrefetchSpec { throttle_ms: 10_000, ..base },
        PrefetchSpec { slots: 1, ..base },
        PrefetchSpec { slots: 8, ..base },
        PrefetchSpec { bytes_per_prefetch: 256 << 10, ..base },
        PrefetchSpec { bytes_per_prefetch: 4 << 20, ..base },
        PrefetchSpec { aimd_target_us: Some(2_000), aimd_max_kb_s: 64 << 10, ..base },
        PrefetchSpec { aimd_target_us: Some(10_000), aimd_max_kb_s: 64 << 10, ..base },
        PrefetchSpec { aimd_target_us: Some(10_000), aimd_max_kb_s: 128 << 10, ..base },
        PrefetchSpec { aimd_target_us: Some(2_000), aimd_max_kb_s: 256 << 10, ..base },
        PrefetchSpec { aimd_target_us: Some(2_000), aimd_max_kb_s: 256 << 10, aimd_step_kb_s: Some(128 << 10), ..base },
    ]
    .into_iter()
    .map(StudySetting::new)
    .collect()
}

/// Runs `settings` over `options.seeds` seeds, each seed against its own baseline; writes
/// everything under `out`. `note` hears one line per setting.
///
/// Errors: a configuration the runner refuses, `out` not writable.
pub fn run_study(
    options: &StudyOptions,
    settings: &[StudySetting],
    out: &Path,
    mut note: impl FnMut(&StudyResult),
) -> Result<StudyReport> {
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    let seeds: Vec<Seed> = (0..options.seeds.max(1)).map(|i| Seed(options.seed.0.wrapping_add(i))).collect();
    let baselines: Vec<super::run::RunOutcome> = seeds
        .iter()
        .map(|seed| run(&study_config(options, *seed, None, options.requests)).map_err(|e| anyhow::anyhow!("{e}")))
        .collect::<Result<_>>()?;
    let idle_times: Vec<Option<f64>> = seeds
        .iter()
        .map(|seed| {
            let idle =
                run(&study_config(options, *seed, Some(idle_reference()), 1)).map_err(|e| anyhow::anyhow!("{e}"))?;
            Ok(idle.prefetch.as_ref().map(PrefetchReport::from_telemetry).and_then(|p| p.time_to_finish_s()))
        })
        .collect::<Result<_>>()?;
    let mut results = Vec::new();
    for setting in settings {
        let mut per_seed = Vec::new();
        for (index, ((seed, baseline), idle_time)) in seeds.iter().zip(&baselines).zip(&idle_times).enumerate() {
            let outcome = run(&study_config(options, *seed, Some(setting.spec), options.requests))
                .map_err(|e| anyhow::anyhow!("{e}"))?;
            let prefetch = outcome.prefetch.as_ref().map(PrefetchReport::from_telemetry);
            // While prefetch ran: from its start to its finish, or to the end of the run.
            let ns = |s: f64| (s * 1e9) as u64;
            let (from_ns, to_ns) =
                prefetch.as_ref().map_or((0, 0), |p| (p.started_s.map_or(0, ns), p.finished_s.map_or(u64::MAX, ns)));
            let between = |latency: &fvd_reports::latency::LatencyRecorder| {
                latency.percentiles_between(from_ns, to_ns).with_context(|| {
                    format!(
                        "seed {seed}: more than {} foreground requests, too many to measure one by one: use fewer --requests",
                        fvd_reports::latency::MAX_SAMPLES
                    )
                })
            };
            let with = between(&outcome.latency)?;
            let without = between(&baseline.latency)?;
            per_seed.push(SeedResult {
                seed: *seed,
                time_to_finish_s: prefetch.as_ref().and_then(PrefetchReport::time_to_finish_s),
                idle_time_to_finish_s: *idle_time,
                requests_during_prefetch: with.0,
                p50_us: with.1,
                p99_us: with.2,
                baseline_p50_us: without.1,
                baseline_p99_us: without.2,
                bytes_wasted: prefetch.as_ref().map_or(0, |p| p.bytes_discarded),
                bytes_copied: prefetch.as_ref().map_or(0, |p| p.bytes_copied),
                pauses: prefetch.as_ref().map_or(0, |p| p.pauses.len() as u64),
                failure: outcome.failure.as_ref().map(|f| f.message.clone()),
            });
            if index == 0 {
                let series = StudySeries {
                    setting: setting.clone(),
                    prefetch,
                    foreground: windows_of(&outcome),
                    baseline: windows_of(baseline),
                };
                let file = file_name(&setting.label);
                std::fs::write(out.join(format!("{file}.json")), serde_json::to_string_pretty(&series)?)?;
                render_series_charts(&series, out, &file)?;
            }
        }
        let result = StudyResult::of(setting.clone(), per_seed);
        note(&result);
        results.push(result);
    }
    let report = StudyReport { schema_version: crate::schema::STUDY, options: options.clone(), goal: GOAL, results };
    std::fs::write(out.join("study.json"), serde_json::to_string_pretty(&report)?)?;
    render_study_index(&report, out)?;
    Ok(report)
}

fn windows_of(outcome: &super::run::RunOutcome) -> Vec<LatencyWindow> {
    outcome.latency.windows()
}

/// A label made safe for a file name.
pub fn file_name(label: &str) -> String {
    let name: String =
        label.chars().map(|c| if c.is_ascii_alphanumeric() || c == '.' || c == '-' { c } else { '_' }).collect();
    name.trim_start_matches('-').replace("_--", "_").to_string()
}

/// Renders the two charts of one run from its series (also used to redraw).
pub fn render_series_charts(series: &StudySeries, out: &Path, file: &str) -> Result<()> {
    // Both charts share one time axis: from 0 to the later of the last window and the finish.
    let last_window = series.foreground.iter().chain(&series.baseline).map(|w| w.start_s + 1.0).fold(0.0, f64::max);
    let end = series.prefetch.as_ref().and_then(|p| p.finished_s).map_or(last_window, |f| f.max(last_window));
    let x_range = Some((0.0, end));
    if let Some(prefetch) = &series.prefetch {
        let title = format!("Prefetch throughput, setting {}", series.setting.label);
        let chart = LineChart { x_range, ..prefetch_chart(prefetch, &title) };
        render_line_chart(&chart, &out.join(format!("{file}-prefetch.svg")))?;
    }
    let line = |windows: &[LatencyWindow], pick: usize| -> Vec<(f64, f64)> {
        windows
            .iter()
            .filter_map(|w| w.kinds.get("guest").map(|k| (w.start_s, if pick == 0 { k.1 } else { k.2 })))
            .collect()
    };
    let chart = LineChart {
        title: format!("Foreground latency with and without prefetch, setting {}", series.setting.label),
        x_label: "simulated time (s)".into(),
        y_label: "guest latency per 1 s window (log scale)".into(),
        y_ticks: fvd_reports::chart::TickFormat::LatencyUs,
        series: vec![
            Series {
                label: "p50 with prefetch".into(),
                points: line(&series.foreground, 0),
                dashed: false,
                ..Series::default()
            },
            Series {
                label: "p99 with prefetch".into(),
                points: line(&series.foreground, 1),
                dashed: false,
                ..Series::default()
            },
            Series {
                label: "p50 without".into(),
                points: line(&series.baseline, 0),
                dashed: true,
                ..Series::default()
            },
            Series {
                label: "p99 without".into(),
                points: line(&series.baseline, 1),
                dashed: true,
                ..Series::default()
            },
        ],
        bands: series.prefetch.as_ref().map_or(Vec::new(), |p| {
            p.pauses.iter().map(|(a, b)| fvd_reports::chart::Band { from: *a, to: *b }).collect()
        }),
        band_label: "prefetch paused".into(),
        band_rgb: (160, 160, 160),
        log_y: true,
        y_floor: Some(1.0),
        x_range,
        ..LineChart::default()
    };
    render_line_chart(&chart, &out.join(format!("{file}-latency.svg")))
}

/// Redraws every chart and the index of a study directory from its JSON (no rerun).
pub fn redraw_study(dir: &Path) -> Result<usize> {
    let text = std::fs::read_to_string(dir.join("study.json"))
        .with_context(|| format!("reading {}", dir.join("study.json").display()))?;
    let version = serde_json::from_str::<serde_json::Value>(&text).ok().and_then(|v| v["schema_version"].as_u64());
    anyhow::ensure!(
        version == Some(u64::from(crate::schema::STUDY)),
        "{}: study schema {version:?} (this fvdsim reads {}; rerun the study)",
        dir.join("study.json").display(),
        crate::schema::STUDY
    );
    let report: StudyReport = serde_json::from_str(&text).context("study.json is not a fvdsim study")?;
    for result in &report.results {
        let file = file_name(&result.setting.label);
        let series_path = dir.join(format!("{file}.json"));
        let series: StudySeries = serde_json::from_str(
            &std::fs::read_to_string(&series_path).with_context(|| format!("reading {}", series_path.display()))?,
        )
        .with_context(|| format!("{} is not a study series", series_path.display()))?;
        render_series_charts(&series, dir, &file)?;
    }
    render_study_index(&report, dir)?;
    Ok(report.results.len() * 2 + 1)
}

fn render_study_index(report: &StudyReport, out: &Path) -> Result<()> {
    let results = &report.results;
    let policy = |r: &StudyResult| if r.setting.spec.aimd_target_us.is_some() { "AIMD" } else { "v1" };
    let points: Vec<TradeoffPoint> = results
        .iter()
        .enumerate()
        .filter_map(|(i, r)| {
            let (low, high) = r.p99_inflation_range_percent;
            r.finish_ratio.map(|x| TradeoffPoint {
                x,
                y: r.p99_inflation_percent,
                y_spread: (r.seeds.len() > 1).then_some((low, high)),
                label: (i + 1).to_string(),
                group: format!("{} policy", policy(r)),
            })
        })
        .collect();
    let mut charts = Vec::new();
    if !points.is_empty() {
        let seeds = report.options.seeds;
        render_tradeoff(
            &TradeoffChart {
                title: "Prefetch trade-off: time to finish against foreground p99 inflation".into(),
                x_label: "time to finish ÷ unthrottled prefetch's time on an idle disk".into(),
                y_label: format!(
                    "p99 inflation while prefetching (%, mean{} over seeds)",
                    if seeds > 1 { ", whisker: min–max" } else { "" }
                ),
                points,
                goal: Some((
                    report.goal.max_finish_ratio,
                    report.goal.max_p99_inflation_percent,
                    format!(
                        "goal: ≤ {}% p99 inflation, ≤ {}× the idle time",
                        report.goal.max_p99_inflation_percent, report.goal.max_finish_ratio
                    ),
                )),
            },
            &out.join("tradeoff.svg"),
        )?;
        charts.push((
            "Each setting by its number in the table: lower-left is better on both axes; the shaded corner meets the goal"
                .to_string(),
            "tradeoff.svg".to_string(),
        ));
    }
    if let Some(first) = results.first() {
        let file = file_name(&first.setting.label);
        charts.push((
            format!("{}: prefetch throughput and pauses (first seed)", first.setting.label),
            format!("{file}-prefetch.svg"),
        ));
        charts.push((
            format!("{}: foreground latency with and without prefetch (first seed)", first.setting.label),
            format!("{file}-latency.svg"),
        ));
    }
    let table = Table {
        heading: "Settings (click a column to sort)".into(),
        columns: [
            "#",
            "setting (flags)",
            "finish s",
            "idle finish s",
            "finish ÷ idle",
            "p50 inflation",
            "p99 inflation",
            "p99 inflation min–max",
            "MiB wasted",
            "pauses",
            "goal",
            "charts (first seed)",
        ]
        .map(String::from)
        .to_vec(),
        rows: results
            .iter()
            .enumerate()
            .map(|(i, r)| {
                let file = file_name(&r.setting.label);
                vec![
                    (i + 1).to_string(),
                    r.setting.label.replace(" --", "\n--"),
                    r.time_to_finish_s.map_or("never".into(), |t| format!("{t:.2}")),
                    r.idle_time_to_finish_s.map_or("never".into(), |t| format!("{t:.2}")),
                    r.finish_ratio.map_or("–".into(), |x| format!("{x:.2}×")),
                    format!("{:+.1}%", r.p50_inflation_percent),
                    format!("{:+.1}%", r.p99_inflation_percent),
                    format!("{:+.1}% to {:+.1}%", r.p99_inflation_range_percent.0, r.p99_inflation_range_percent.1),
                    format!("{:.1}", r.bytes_wasted as f64 / 1048576.0),
                    format!("{:.1}", r.pauses),
                    match (&r.failure, r.meets_goal) {
                        (Some(f), _) => format!("FAILURE: {f}"),
                        (None, true) => "meets".into(),
                        (None, false) => format!("misses ({:.2})", r.goal_distance()),
                    },
                    format!("[prefetch]({file}-prefetch.svg) [latency]({file}-latency.svg)"),
                ]
            })
            .collect(),
    };
    let closest =
        results.iter().filter(|r| r.failure.is_none()).min_by(|a, b| a.goal_distance().total_cmp(&b.goal_distance()));
    let options = &report.options;
    let mut summary = vec![
        (
            "world".to_string(),
            format!(
                "image on {}, base on {}, {} profile, {} commit, {}, {} requests per run",
                options.image_device,
                options.base_device,
                options.profile,
                match options.commit {
                    CommitName::Group => "group",
                    CommitName::Sync => "sync",
                },
                match &options.trace {
                    None => "8 random testers".to_string(),
                    Some((path, _)) => format!("trace {path} (100× faster, folded onto 1 GiB)"),
                },
                options.requests
            ),
        ),
        ("seeds".to_string(), format!("{} from {:#x}", options.seeds, options.seed.0)),
        (
            "goal".to_string(),
            format!(
                "foreground p99 inflation ≤ {}% while prefetch finishes within {}× its time on an idle disk",
                report.goal.max_p99_inflation_percent, report.goal.max_finish_ratio
            ),
        ),
        (
            "measure".to_string(),
            "p50/p99 of the foreground requests that completed between prefetch's start and finish, against the no-prefetch baseline of the same seed over the same interval (exact, from every request)".to_string(),
        ),
        (
            "meet the goal".to_string(),
            match results.iter().filter(|r| r.meets_goal).map(|r| r.setting.label.clone()).collect::<Vec<_>>() {
                v if v.is_empty() => "none".to_string(),
                v => v.join("; "),
            },
        ),
    ];
    if let Some(best) = closest {
        summary.push((
            "closest to the goal".to_string(),
            format!(
                "{} (p99 {:+.1}%, finish {:.2}× idle)",
                best.setting.label,
                best.p99_inflation_percent,
                best.finish_ratio.unwrap_or(f64::NAN)
            ),
        ));
    }
    let index = Index {
        title: format!("fvdsim prefetch study, seed {:#x}", options.seed.0),
        summary,
        tables: vec![table],
        charts,
        failures: Vec::new(),
        files: vec![("every setting and seed".into(), "study.json".into())],
        ..Index::default()
    };
    std::fs::write(out.join("index.html"), render_index(&index))?;
    Ok(())
}
