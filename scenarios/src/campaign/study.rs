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
use fvd_reports::chart::{LabelledPoint, LineChart, Series, render_line_chart, render_scatter};
use fvd_reports::html::{Index, render_index};
use fvd_reports::latency::LatencyWindow;
use fvd_sim::Seed;
use serde::{Deserialize, Serialize};

use super::config::{CrashConfig, ImageConfig, PrefetchSpec, ProfileName, RunConfig, WorkloadConfig};
use super::output::{PrefetchReport, prefetch_chart};
use super::run::run;

/// One setting of a study.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StudySetting {
    /// Short label (chart point and file name).
    pub label: String,
    /// The prefetch settings.
    pub spec: PrefetchSpec,
}

/// Summary metrics of one setting.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StudyResult {
    /// The setting.
    pub setting: StudySetting,
    /// Seconds from prefetch start to finish (simulated); `None` if it did not finish.
    pub time_to_finish_s: Option<f64>,
    /// Foreground p99 latency with prefetch, µs.
    pub p99_us: f64,
    /// The same without prefetch (the baseline), µs.
    pub baseline_p99_us: f64,
    /// (p99 − baseline) / baseline, percent. Negative when prefetch made later reads local.
    pub p99_inflation_percent: f64,
    /// Foreground p99 while prefetch was running, µs (the cost while it works).
    pub p99_during_prefetch_us: f64,
    /// The baseline's p99 over the same interval, µs.
    pub baseline_p99_during_prefetch_us: f64,
    /// Bytes read from the base but not stored (copied or overwritten meanwhile): waste.
    pub bytes_wasted: u64,
    /// Bytes stored by prefetch.
    pub bytes_copied: u64,
    /// Pauses taken.
    pub pauses: u64,
    /// The run failed the oracle (should never happen).
    pub failure: Option<String>,
}

/// A study's output.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StudyReport {
    /// Version of this file.
    pub schema_version: u32,
    /// Master seed.
    pub seed: Seed,
    /// Per setting.
    pub results: Vec<StudyResult>,
}

/// The time series of one run (`<label>.json`).
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

/// The study world with `spec` (or no prefetch).
pub fn study_config(seed: Seed, spec: Option<PrefetchSpec>, requests: u64) -> RunConfig {
    RunConfig {
        scenario: "prefetch-study".into(),
        seed,
        profile: ProfileName::Hardened,
        commit: super::config::CommitName::Group,
        workload: WorkloadConfig::Random { testers: 8, requests, max_sectors: 64, read_per_mille: 600 },
        image: ImageConfig {
            size_bytes: 1 << 30,
            base_bytes: 512 << 20,
            compact: true,
            block_bytes: 64 << 10,
            chunk_bytes: 1 << 20,
            grow_unit_bytes: 64 << 20,
            journal_bytes: 1 << 20,
            separate_data: false,
            image_device: "nvme".into(),
            base_device: "nfs".into(),
        },
        crashes: CrashConfig { count: 0, points: Vec::new(), atomic_units: Vec::new(), schedule: Some(Vec::new()) },
        faults: Default::default(),
        flush_every_requests: 100,
        max_requests: None,
        verify_sample_sectors: 2_000,
        copy_on_read: false,
        prefetch: spec,
        format: super::guest::FormatName::Fvd,
        qemu_judge: false,
    }
}

/// The default sweep: v1's defaults, each knob moved, and the AIMD policy.
pub fn default_sweep() -> Vec<StudySetting> {
    // The threshold sits inside the base read throughput observed on the `nfs` profile (60–80 MB/s),
    // so contention phases and foreground load push the moving average under it.
    let base =
        PrefetchSpec { start_delay_ms: 500, min_kb_s: 60_000, throttle_ms: 2_000, ..PrefetchSpec::v1_defaults() };
    let mut settings = vec![StudySetting { label: "v1".into(), spec: base }];
    let mut add = |label: &str, spec: PrefetchSpec| settings.push(StudySetting { label: label.into(), spec });
    add("alpha=0.5", PrefetchSpec { alpha_percent: 50, ..base });
    add("alpha=0.95", PrefetchSpec { alpha_percent: 95, ..base });
    add("min=40MB/s", PrefetchSpec { min_kb_s: 40_000, ..base });
    add("min=80MB/s", PrefetchSpec { min_kb_s: 80_000, ..base });
    add("throttle=0.5s", PrefetchSpec { throttle_ms: 500, ..base });
    add("throttle=10s", PrefetchSpec { throttle_ms: 10_000, ..base });
    add("slots=1", PrefetchSpec { slots: 1, ..base });
    add("slots=8", PrefetchSpec { slots: 8, ..base });
    add("chunk=256K", PrefetchSpec { bytes_per_prefetch: 256 << 10, ..base });
    add("chunk=4M", PrefetchSpec { bytes_per_prefetch: 4 << 20, ..base });
    add("aimd 2ms 64MB/s", PrefetchSpec { aimd_target_us: Some(2_000), aimd_max_kb_s: 64 << 10, ..base });
    add("aimd 10ms 64MB/s", PrefetchSpec { aimd_target_us: Some(10_000), aimd_max_kb_s: 64 << 10, ..base });
    settings
}

fn p99_between(windows: &[LatencyWindow], from_s: f64, to_s: f64) -> f64 {
    // The worst per-window p99 inside the interval (windows are 100 ms).
    windows
        .iter()
        .filter(|w| w.start_s >= from_s && w.start_s <= to_s)
        .filter_map(|w| w.kinds.get("guest").map(|k| k.2))
        .fold(0.0, f64::max)
}

/// Runs `settings` against one baseline; writes everything under `out`. `note` hears one line
/// per setting.
pub fn run_study(
    seed: Seed,
    settings: &[StudySetting],
    requests: u64,
    out: &Path,
    mut note: impl FnMut(&StudyResult),
) -> Result<StudyReport> {
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    let baseline = run(&study_config(seed, None, requests)).map_err(|e| anyhow::anyhow!("{e}"))?;
    let baseline_windows = windows_of(&baseline);
    let baseline_p99 = baseline.latency.percentiles().get("guest").map_or(0.0, |p| p.p99_us);
    let mut results = Vec::new();
    for setting in settings {
        let outcome = run(&study_config(seed, Some(setting.spec), requests)).map_err(|e| anyhow::anyhow!("{e}"))?;
        let prefetch = outcome.prefetch.as_ref().map(PrefetchReport::from_telemetry);
        let foreground = windows_of(&outcome);
        let p99 = outcome.latency.percentiles().get("guest").map_or(0.0, |p| p.p99_us);
        let (from, to) =
            prefetch.as_ref().map_or((0.0, 0.0), |p| (p.started_s.unwrap_or(0.0), p.finished_s.unwrap_or(f64::MAX)));
        let result = StudyResult {
            setting: setting.clone(),
            time_to_finish_s: prefetch.as_ref().and_then(|p| Some(p.finished_s? - p.started_s?)),
            p99_us: p99,
            baseline_p99_us: baseline_p99,
            p99_inflation_percent: if baseline_p99 > 0.0 { (p99 - baseline_p99) / baseline_p99 * 100.0 } else { 0.0 },
            p99_during_prefetch_us: p99_between(&foreground, from, to),
            baseline_p99_during_prefetch_us: p99_between(&baseline_windows, from, to),
            bytes_wasted: prefetch.as_ref().map_or(0, |p| p.bytes_discarded),
            bytes_copied: prefetch.as_ref().map_or(0, |p| p.bytes_copied),
            pauses: prefetch.as_ref().map_or(0, |p| p.pauses.len() as u64),
            failure: outcome.failure.as_ref().map(|f| f.message.clone()),
        };
        note(&result);
        let series = StudySeries { setting: setting.clone(), prefetch, foreground, baseline: baseline_windows.clone() };
        let file = file_name(&setting.label);
        std::fs::write(out.join(format!("{file}.json")), serde_json::to_string_pretty(&series)?)?;
        render_series_charts(&series, out, &file)?;
        results.push(result);
    }
    let report = StudyReport { schema_version: 1, seed, results };
    std::fs::write(out.join("study.json"), serde_json::to_string_pretty(&report)?)?;
    render_study_index(&report, out)?;
    Ok(report)
}

fn windows_of(outcome: &super::run::RunOutcome) -> Vec<LatencyWindow> {
    outcome.latency.windows()
}

/// A label made safe for a file name.
pub fn file_name(label: &str) -> String {
    label.chars().map(|c| if c.is_ascii_alphanumeric() || c == '.' { c } else { '_' }).collect()
}

/// Renders the two charts of one run from its series (also used to redraw).
pub fn render_series_charts(series: &StudySeries, out: &Path, file: &str) -> Result<()> {
    if let Some(prefetch) = &series.prefetch {
        let title = format!("Prefetch throughput, setting {}", series.setting.label);
        render_line_chart(&prefetch_chart(prefetch, &title), &out.join(format!("{file}-prefetch.svg")))?;
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
        y_label: "guest latency per 1 s window (µs, log scale)".into(),
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
        ..LineChart::default()
    };
    render_line_chart(&chart, &out.join(format!("{file}-latency.svg")))
}

/// Redraws every chart and the index of a study directory from its JSON (no rerun).
pub fn redraw_study(dir: &Path) -> Result<usize> {
    let text = std::fs::read_to_string(dir.join("study.json"))
        .with_context(|| format!("reading {}", dir.join("study.json").display()))?;
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
    let points: Vec<LabelledPoint> = report
        .results
        .iter()
        .filter_map(|r| {
            r.time_to_finish_s.map(|t| LabelledPoint {
                x: t,
                y: r.p99_during_prefetch_us / r.baseline_p99_during_prefetch_us.max(1.0) * 100.0 - 100.0,
                label: r.setting.label.clone(),
            })
        })
        .collect();
    let mut charts = Vec::new();
    if !points.is_empty() {
        render_scatter(
            "Prefetch trade-off: time to finish vs foreground p99 inflation while prefetching",
            "time to finish prefetch (simulated s)",
            "p99 inflation while prefetching (% over no-prefetch)",
            &points,
            &out.join("tradeoff.svg"),
        )?;
        charts.push((
            "Each setting: time to finish against foreground p99 inflation during prefetch".to_string(),
            "tradeoff.svg".to_string(),
        ));
    }
    for r in &report.results {
        let file = file_name(&r.setting.label);
        charts.push((format!("{}: prefetch throughput and pauses", r.setting.label), format!("{file}-prefetch.svg")));
        charts.push((
            format!("{}: foreground latency with and without prefetch", r.setting.label),
            format!("{file}-latency.svg"),
        ));
    }
    let summary = report
        .results
        .iter()
        .map(|r| {
            (
                r.setting.label.clone(),
                format!(
                    "finish {}, p99 during prefetch {:.0} µs (baseline {:.0}), whole-run p99 {:+.1}%, {} pauses, {:.1} MiB wasted{}",
                    r.time_to_finish_s.map_or("never".into(), |t| format!("{t:.2} s")),
                    r.p99_during_prefetch_us,
                    r.baseline_p99_during_prefetch_us,
                    r.p99_inflation_percent,
                    r.pauses,
                    r.bytes_wasted as f64 / 1048576.0,
                    r.failure.as_ref().map_or(String::new(), |f| format!(", FAILURE: {f}"))
                ),
            )
        })
        .collect();
    let index = Index {
        title: format!("fvdsim prefetch study, seed {}", report.seed),
        summary,
        charts,
        failures: Vec::new(),
        files: vec![("summary of every setting".into(), "study.json".into())],
        ..Index::default()
    };
    std::fs::write(out.join("index.html"), render_index(&index))?;
    Ok(())
}
