//! What a run leaves behind: `report.json` (versioned), charts rendered from it, `index.html`,
//! and for a failure a self-contained failure file that `fvdsim repro` replays exactly.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use fvd_reports::chart::{Band, LineChart, Marker, Series, TickFormat, render_line_chart};
use fvd_reports::html::{FailureDetail, Index, SectorRow, render_index};
use fvd_reports::latency::{LatencyWindow, Percentiles};
use serde::{Deserialize, Serialize};

use super::config::RunConfig;
use super::run::{CrashSummary, Failure, RunOutcome, RunSummary};

/// The git commit this binary was built from (`-dirty` if the tree had changes).
pub const GIT_COMMIT: &str = env!("FVDSIM_GIT_COMMIT");

/// A failure, with everything needed to replay it: `fvdsim repro FILE`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FailureFile {
    /// [`crate::schema::FAILURE_FILE`].
    pub schema_version: u32,
    /// fvdsim version.
    pub tool_version: String,
    /// Commit the failing binary was built from.
    pub git_commit: String,
    /// The command that reproduces it.
    pub repro_command: String,
    /// The failure.
    pub failure: Failure,
    /// The full configuration, crash schedule included.
    pub config: RunConfig,
    /// Crashes applied before the failure.
    pub crashes: Vec<CrashSummary>,
    /// The last events of the log.
    pub last_events: Vec<String>,
    /// Event-log hash at the end of the run.
    pub log_hash: String,
}

/// Host facts kept apart so identical seeds give identical run records.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct HostFacts {
    /// Wall time of the run, seconds.
    pub wall_seconds: f64,
}

/// One prefetch telemetry record (see `fvd_engine::PrefetchSample`).
///
/// Throughputs and rates are stored in MB/s, MB = 10^6 bytes (the file format since schema 1);
/// the charts convert them to MiB/s, the unit the engine's KB/s settings (1 KB = 1,024 bytes)
/// map onto exactly.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PrefetchPoint {
    /// Simulated time, s.
    pub t_s: f64,
    /// What the record is; the other fields mean what the kind says.
    pub kind: PrefetchPointKind,
    /// Throughput (MB/s), pause length (ms) or rate (MB/s).
    pub value: f64,
    /// Moving average (MB/s), or the guest mean latency (µs) for `rate`.
    pub moving_average: f64,
    /// Threshold (MB/s), or the latency target (µs) for `rate`.
    pub threshold: f64,
    /// Bytes prefetched so far (since the image was opened).
    pub bytes_copied: u64,
    /// Bytes read from the base so far (since the image was opened); 0 in reports written before
    /// it was recorded.
    #[serde(default)]
    pub bytes_read: u64,
}

/// What a [`PrefetchPoint`] records (written lower-case: `"read"`, …).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PrefetchPointKind {
    /// v1 window of reads from the base: `value` its throughput, `moving_average` the average
    /// after it, `threshold` v1's minimum (MB/s).
    Read,
    /// v1 window of writes into the image, as `Read`.
    Write,
    /// v1 pause began: `value` its length (ms).
    Pause,
    /// AIMD rate change: `value` the new rate (MB/s), `moving_average` the guest's mean latency
    /// (µs), `threshold` the latency target (µs).
    Rate,
}

/// Prefetch activity of a run, for charts that redraw without a rerun.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PrefetchReport {
    /// `finished`, `running`, `waiting` or `disabled`.
    pub phase: String,
    /// Start and finish, simulated seconds.
    pub started_s: Option<f64>,
    /// Finish, simulated seconds.
    pub finished_s: Option<f64>,
    /// Pauses `(from_s, to_s)`.
    pub pauses: Vec<(f64, f64)>,
    /// Windows, pauses and rate changes.
    pub samples: Vec<PrefetchPoint>,
    /// Bytes stored.
    pub bytes_copied: u64,
    /// Bytes read from the base.
    pub bytes_read: u64,
    /// Bytes read but not stored.
    pub bytes_discarded: u64,
}

/// bytes per ms → MB/s.
const BYTES_PER_MS_TO_MB_S: f64 = 1000.0 / 1e6;
/// MB/s (as `report.json` stores throughput) → MiB/s (as the charts draw it).
const MB_S_TO_MIB_S: f64 = 1e6 / MIB;
/// Bytes in a MiB.
const MIB: f64 = 1_048_576.0;

impl PrefetchReport {
    /// Seconds from prefetch's start to its finish; `None` if it did not finish.
    pub fn time_to_finish_s(&self) -> Option<f64> {
        Some(self.finished_s? - self.started_s?)
    }

    /// From the engine's telemetry.
    pub fn from_telemetry(t: &fvd_engine::PrefetchTelemetry) -> PrefetchReport {
        PrefetchReport {
            phase: t.phase.to_string(),
            started_s: t.started_ns.map(|n| n as f64 / 1e9),
            finished_s: t.finished_ns.map(|n| n as f64 / 1e9),
            pauses: t.pauses.iter().map(|(a, b)| (*a as f64 / 1e9, *b as f64 / 1e9)).collect(),
            samples: t
                .samples
                .iter()
                .map(|s| {
                    use fvd_engine::{PrefetchMeasure, WindowSide};
                    let (kind, value, moving_average, threshold) = match s.measure {
                        PrefetchMeasure::Window {
                            side,
                            bytes_per_ms,
                            moving_average_bytes_per_ms,
                            threshold_bytes_per_ms,
                        } => (
                            if side == WindowSide::Read { PrefetchPointKind::Read } else { PrefetchPointKind::Write },
                            bytes_per_ms * BYTES_PER_MS_TO_MB_S,
                            moving_average_bytes_per_ms * BYTES_PER_MS_TO_MB_S,
                            threshold_bytes_per_ms * BYTES_PER_MS_TO_MB_S,
                        ),
                        PrefetchMeasure::Pause { length_ms } => (PrefetchPointKind::Pause, length_ms, -1.0, 0.0),
                        PrefetchMeasure::Rate { bytes_per_ms, guest_mean_latency_us, target_latency_us } => (
                            PrefetchPointKind::Rate,
                            bytes_per_ms * BYTES_PER_MS_TO_MB_S,
                            guest_mean_latency_us,
                            target_latency_us,
                        ),
                    };
                    PrefetchPoint {
                        t_s: s.at_ns as f64 / 1e9,
                        kind,
                        value,
                        moving_average,
                        threshold,
                        bytes_copied: s.bytes_copied,
                        bytes_read: s.bytes_read,
                    }
                })
                .collect(),
            bytes_copied: t.bytes_copied,
            bytes_read: t.bytes_read,
            bytes_discarded: t.bytes_discarded,
        }
    }
}

/// A break in a chart line (see [`Series`]).
const BREAK: (f64, f64) = (f64::NAN, f64::NAN);

/// Achieved throughput (MiB/s) of the byte counter `bytes` as a step line: bytes moved between
/// telemetry samples divided by the simulated time between them, over intervals of at least
/// `min_interval_s`. A pause counts in the interval it falls in (it is part of what prefetch
/// achieves); the line breaks at a crash and at a reopening (the counter restarts), so time
/// without an open image is never averaged into a rate.
fn achieved(
    samples: &[PrefetchPoint],
    bytes: fn(&PrefetchPoint) -> u64,
    crashes_s: &[f64],
    min_interval_s: f64,
) -> Vec<(f64, f64)> {
    let mut points = Vec::new();
    let mut anchor: Option<(f64, u64)> = None;
    for sample in samples {
        let (t, b) = (sample.t_s, bytes(sample));
        let Some((t0, b0)) = anchor else {
            anchor = Some((t, b));
            continue;
        };
        if b < b0 || crashes_s.iter().any(|&c| c > t0 && c <= t) {
            points.push(BREAK);
            anchor = Some((t, b));
        } else if t - t0 >= min_interval_s {
            let rate = (b - b0) as f64 / MIB / (t - t0);
            points.extend([(t0, rate), (t, rate)]);
            anchor = Some((t, b));
        }
    }
    points
}

/// A MiB/s figure for a label: whole when it is (`5`), else two decimals (`39.06`).
fn mib_s_label(value: f64) -> String {
    if (value - value.round()).abs() < 0.005 { format!("{value:.0}") } else { format!("{value:.2}") }
}

/// The prefetch chart of a run (see [`prefetch_chart_with_crashes`]) without crash marks.
pub fn prefetch_chart(prefetch: &PrefetchReport, title: &str) -> LineChart {
    prefetch_chart_with_crashes(prefetch, title, &[])
}

/// The prefetch chart, in MiB/s: achieved read (from the base) and write (into the image)
/// throughput, the policy's threshold (v1, with its per-window measures and moving averages) or
/// rate limit (AIMD), pauses shaded, the start, every crash in `crashes_s` (prefetch restarts
/// after each recovery) and the finish marked.
pub fn prefetch_chart_with_crashes(prefetch: &PrefetchReport, title: &str, crashes_s: &[f64]) -> LineChart {
    const READ: (u8, u8, u8) = (31, 119, 180);
    const WRITE: (u8, u8, u8) = (230, 110, 0);
    const READ_PALE: (u8, u8, u8) = (140, 190, 225);
    const WRITE_PALE: (u8, u8, u8) = (250, 180, 110);
    let samples = &prefetch.samples;
    let (first, last) = samples.iter().map(|p| p.t_s).fold((f64::MAX, f64::MIN), |(a, b), t| (a.min(t), b.max(t)));
    let span = if first <= last { last - first } else { 0.0 };
    let min_interval_s = (span / 150.0).max(0.1);
    let mut series = Vec::new();
    // AIMD: the rate limit holds until the next adjustment; it restarts at every open.
    let mut rate = Vec::new();
    let mut previous: Option<(f64, f64, u64)> = None;
    for p in samples.iter().filter(|p| p.kind == PrefetchPointKind::Rate) {
        let value = p.value * MB_S_TO_MIB_S;
        if let Some((t0, v0, b0)) = previous {
            if p.bytes_copied < b0 || crashes_s.iter().any(|&c| c > t0 && c <= p.t_s) {
                rate.push(BREAK);
            } else {
                rate.push((p.t_s, v0));
            }
        }
        rate.push((p.t_s, value));
        previous = Some((p.t_s, value, p.bytes_copied));
    }
    if !rate.is_empty() {
        series.push(Series {
            label: "AIMD rate limit".into(),
            points: rate,
            rgb: Some((170, 140, 210)),
            ..Series::default()
        });
    }
    let has_read_counter = samples.iter().any(|p| p.bytes_read > 0);
    if has_read_counter {
        series.push(Series {
            label: "read from base, achieved".into(),
            points: achieved(samples, |p| p.bytes_read, crashes_s, min_interval_s),
            rgb: Some(READ_PALE),
            width: 5,
            ..Series::default()
        });
    }
    series.push(Series {
        label: "written to image, achieved".into(),
        points: achieved(samples, |p| p.bytes_copied, crashes_s, min_interval_s),
        rgb: Some(WRITE),
        ..Series::default()
    });
    // v1: what the policy measures (bytes per ms of busy time per window), its moving average
    // and the threshold below which it may pause.
    let mut threshold: Option<f64> = None;
    for (kind, label, rgb, pale) in [
        (PrefetchPointKind::Read, "base read", READ, READ_PALE),
        (PrefetchPointKind::Write, "image write", WRITE, WRITE_PALE),
    ] {
        let points: Vec<&PrefetchPoint> = samples.iter().filter(|p| p.kind == kind).collect();
        if points.is_empty() {
            continue;
        }
        series.push(Series {
            label: format!("{label}, v1 window measure (bytes / busy time)"),
            points: points.iter().map(|p| (p.t_s, p.value * MB_S_TO_MIB_S)).collect(),
            points_only: true,
            rgb: Some(pale),
            ..Series::default()
        });
        series.push(Series {
            label: format!("{label}, v1 moving average"),
            points: points.iter().map(|p| (p.t_s, p.moving_average.max(0.0) * MB_S_TO_MIB_S)).collect(),
            rgb: Some(rgb),
            dashed: true,
            ..Series::default()
        });
        threshold = threshold.or(points.first().map(|p| p.threshold * MB_S_TO_MIB_S));
    }
    if let Some(threshold) = threshold {
        series.push(Series {
            label: format!("v1 minimum throughput {} MiB/s (may pause below it)", mib_s_label(threshold)),
            points: vec![(first, threshold), (last.max(prefetch.finished_s.unwrap_or(last)), threshold)],
            dashed: true,
            rgb: Some((0, 0, 0)),
            ..Series::default()
        });
    }
    // Outliers (a v1 window measure of a few fast requests) would squash the rest: the y axis
    // stops at twice the largest achieved, threshold or rate value, and says what it clipped.
    let lines_max = series
        .iter()
        .filter(|s| !s.points_only && !s.label.contains("moving average"))
        .flat_map(|s| s.points.iter().map(|p| p.1))
        .filter(|y| y.is_finite())
        .fold(0.0f64, f64::max);
    let mut notes = vec![format!(
        "Throughput in MiB/s (1 MiB = 1,048,576 bytes). Achieved: bytes moved between telemetry samples ÷ simulated time between them (≥ {} s, pauses included); lines break at crashes and reopenings.",
        fvd_reports::chart::format_tick(min_interval_s)
    )];
    let mut y_max = None;
    if lines_max > 0.0 {
        let ceiling = lines_max * 2.0;
        let clipped = series.iter().flat_map(|s| s.points.iter()).filter(|p| p.1.is_finite() && p.1 > ceiling).count();
        if clipped > 0 {
            y_max = Some(ceiling);
            notes.push(format!(
                "{clipped} v1 window measures or averages above {} MiB/s are drawn at the top edge.",
                fvd_reports::chart::format_tick(ceiling)
            ));
        }
    }
    let mib = |b: u64| format!("{:.1} MiB", b as f64 / MIB);
    let totals = format!(
        "{} copied into the image, {} read from the base, {} read but discarded",
        mib(prefetch.bytes_copied),
        mib(prefetch.bytes_read),
        mib(prefetch.bytes_discarded)
    );
    let mut markers = Vec::new();
    if let Some(started) = prefetch.started_s {
        markers.push(Marker {
            x: started,
            label: "prefetch started".into(),
            text: Some(format!("started {started:.1} s")),
            rgb: (110, 110, 110),
            dashed: true,
        });
    }
    markers.extend(crashes_s.iter().map(|&x| Marker {
        x,
        label: "crash (prefetch restarts after recovery)".into(),
        rgb: (214, 39, 40),
        ..Marker::default()
    }));
    match prefetch.finished_s {
        Some(finished) => {
            markers.push(Marker {
                x: finished,
                label: "prefetch finished".into(),
                text: Some(format!("finished {finished:.1} s")),
                rgb: (0, 140, 60),
                dashed: false,
            });
            notes.push(format!("Prefetch finished at {finished:.2} s: {totals}."));
        }
        None => notes.push(format!(
            "Prefetch did not finish (phase at the end: {}; stopped at close or by a crash): {totals}.",
            prefetch.phase
        )),
    }
    LineChart {
        title: title.into(),
        x_label: "simulated time (s)".into(),
        y_label: "throughput (MiB/s)".into(),
        series,
        bands: prefetch.pauses.iter().map(|(a, b)| Band { from: *a, to: *b }).collect(),
        band_label: "prefetch paused (v1)".into(),
        band_rgb: (160, 160, 160),
        y_max,
        markers,
        notes,
        ..LineChart::default()
    }
}

/// `report.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Report {
    /// [`crate::schema::RUN_REPORT`].
    pub schema_version: u32,
    /// fvdsim version.
    pub tool_version: String,
    /// Build commit.
    pub git_commit: String,
    /// `verified`, or the failure class.
    pub outcome: String,
    /// Process exit code.
    pub exit_code: u8,
    /// The configuration, crash schedule included.
    pub config: RunConfig,
    /// Counters.
    pub summary: RunSummary,
    /// Crashes applied.
    pub crashes: Vec<CrashSummary>,
    /// Simulated latency percentiles by request kind.
    pub latency: BTreeMap<String, Percentiles>,
    /// Simulated latency per one-second window.
    pub latency_windows: Vec<LatencyWindow>,
    /// The failure, if any.
    pub failure: Option<Failure>,
    /// The failure file, relative to the run directory.
    pub failure_file: Option<String>,
    /// Event-log hash.
    pub log_hash: String,
    /// Hash of the final image disk.
    pub image_hash: String,
    /// Prefetch activity over every open, if prefetch ran.
    #[serde(default)]
    pub prefetch: Option<PrefetchReport>,
    /// Charts, relative to the run directory.
    pub charts: Vec<String>,
    /// Host facts (not deterministic).
    pub host: HostFacts,
}

/// Failure files in `dir` other than `this_run`'s, sorted: a reused run directory keeps them, and
/// the index says so rather than hide them.
fn earlier_failure_files(dir: &Path, this_run: Option<&str>) -> Vec<String> {
    let mut files: Vec<String> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .filter_map(|entry| entry.ok().map(|e| e.file_name().to_string_lossy().into_owned()))
        .filter(|name| name.starts_with("failure-") && name.ends_with(".json") && Some(name.as_str()) != this_run)
        .collect();
    files.sort();
    files
}

/// The command that replays `file`.
pub fn repro_command(file: &Path) -> String {
    format!("fvdsim repro {}", file.display())
}

/// Builds the failure file of `outcome` (which must have failed).
pub fn failure_file(outcome: &RunOutcome, path: &Path) -> FailureFile {
    FailureFile {
        schema_version: crate::schema::FAILURE_FILE,
        tool_version: env!("CARGO_PKG_VERSION").into(),
        git_commit: GIT_COMMIT.into(),
        repro_command: repro_command(path),
        failure: outcome.failure.clone().expect("failure files describe failures"),
        config: outcome.config.clone(),
        crashes: outcome.crashes.clone(),
        last_events: outcome.last_events.clone(),
        log_hash: format!("{:#018x}", outcome.log_hash),
    }
}

/// Reads a failure file.
pub fn read_failure_file(path: &Path) -> Result<FailureFile> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    parse_failure_file(&text, &path.display().to_string())
}

/// Parses the text of a failure file; `name` names it in errors (the fuzz target's entry point).
pub fn parse_failure_file(text: &str, name: &str) -> Result<FailureFile> {
    let expected = "expected the failure-NAME-SEED.json file a failing run writes in its run directory";
    let value: serde_json::Value = serde_json::from_str(text)
        .map_err(|_| anyhow::anyhow!("{name} is not JSON, so not a fvdsim failure file ({expected})"))?;
    if value.get("latency_windows").is_some() && value.get("summary").is_some() {
        anyhow::bail!(
            "{name} is a run report (report.json), not a failure file ({expected}; a run that passed writes none)"
        );
    }
    if value.get("failure").is_none() || value.get("config").is_none() {
        anyhow::bail!("{name} is not a fvdsim failure file: it has no `failure` and `config` ({expected})");
    }
    let file: FailureFile = serde_json::from_value(value)
        .map_err(|e| anyhow::anyhow!("{name} looks like a failure file but does not read as one: {e} ({expected})"))?;
    anyhow::ensure!(
        file.schema_version == crate::schema::FAILURE_FILE,
        "{name}: failure file schema {} (this fvdsim reads {})",
        file.schema_version,
        crate::schema::FAILURE_FILE
    );
    Ok(file)
}

/// Writes the run directory: failure file (if any), report.json, charts, index.html. Returns the
/// failure file's path.
pub fn write_run_directory(outcome: &RunOutcome, dir: &Path, wall_seconds: f64) -> Result<Option<PathBuf>> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let failure_path = match &outcome.failure {
        Some(_) => {
            let path = dir.join(format!("failure-{}-{}.json", outcome.config.name(), outcome.config.seed));
            let file = failure_file(outcome, &path);
            std::fs::write(&path, serde_json::to_string_pretty(&file)?)
                .with_context(|| format!("writing {}", path.display()))?;
            Some(path)
        }
        None => None,
    };
    let report = Report {
        schema_version: crate::schema::RUN_REPORT,
        tool_version: env!("CARGO_PKG_VERSION").into(),
        git_commit: GIT_COMMIT.into(),
        outcome: outcome_name(outcome),
        exit_code: match &outcome.failure {
            Some(f) => f.class.exit_code(),
            None if outcome.summary.interrupted => 130,
            None => 0,
        },
        config: outcome.config.clone(),
        summary: outcome.summary.clone(),
        crashes: outcome.crashes.clone(),
        latency: outcome.latency.percentiles(),
        latency_windows: outcome.latency.windows(),
        failure: outcome.failure.clone(),
        failure_file: failure_path.as_ref().and_then(|p| p.file_name()).map(|n| n.to_string_lossy().into_owned()),
        log_hash: format!("{:#018x}", outcome.log_hash),
        image_hash: format!("{:#018x}", outcome.image_hash),
        prefetch: outcome.prefetch.as_ref().map(PrefetchReport::from_telemetry),
        charts: Vec::new(),
        host: HostFacts { wall_seconds },
    };
    render_report(dir, report)?;
    Ok(failure_path)
}

/// Renders charts and index.html from `report` and writes report.json (also used to redraw an
/// existing directory).
pub fn render_report(dir: &Path, mut report: Report) -> Result<()> {
    let mut charts = Vec::new();
    let chart = latency_chart(&report);
    if !chart.series.is_empty() {
        render_line_chart(&chart, &dir.join("latency-over-time.svg"))?;
        charts.push((
            "Guest latency over simulated time: p50 and p99 per 1 s window; a gap is a window without completions"
                .to_string(),
            "latency-over-time.svg".to_string(),
        ));
    }
    if let Some(prefetch) = &report.prefetch
        && prefetch.samples.iter().any(|p| p.kind != PrefetchPointKind::Pause)
    {
        let title = format!("Prefetch from the base image, {} seed {}", report.config.name(), report.config.seed);
        let crashes_s: Vec<f64> = report.crashes.iter().map(|c| c.at_ns as f64 / 1e9).collect();
        let chart = prefetch_chart_with_crashes(prefetch, &title, &crashes_s);
        render_line_chart(&chart, &dir.join("prefetch.svg"))?;
        charts.push((
            "Whole-image prefetch: achieved read and write throughput (MiB/s), the policy's threshold or rate, pauses shaded, start, crashes and finish marked"
                .to_string(),
            "prefetch.svg".to_string(),
        ));
    }
    report.charts = charts.iter().map(|(_, f)| f.clone()).collect();
    std::fs::write(dir.join("report.json"), serde_json::to_string_pretty(&report)?).context("writing report.json")?;
    let summary = summary_rows(&SummaryFacts {
        outcome: &report.outcome,
        config: &report.config,
        summary: &report.summary,
        failure: report.failure.as_ref(),
        git_commit: &report.git_commit,
        log_hash: &report.log_hash,
        wall_seconds: report.host.wall_seconds,
    });
    let failure = report.failure.as_ref().zip(report.failure_file.as_ref()).map(|(failure, file)| {
        let path = dir.join(file);
        FailureDetail {
            class: report.outcome.clone(),
            message: failure.message.clone(),
            context: format!(
                "Found at workload request {} after {} crash(es).",
                failure.at_request, failure.after_crashes
            ),
            sectors: failure
                .sectors
                .iter()
                .map(|s| SectorRow { sector: s.sector, allowed: s.allowed.clone(), actual: s.actual.clone() })
                .collect(),
            repro_command: read_failure_file(&path).map_or_else(|_| repro_command(&path), |f| f.repro_command),
            file: file.clone(),
        }
    });
    let index = Index {
        title: format!("fvdsim run: {} seed {}", report.config.name(), report.config.seed),
        summary,
        tables: Vec::new(),
        charts,
        failure,
        failures: report
            .failure_file
            .iter()
            .map(|f| (report.failure.as_ref().map_or(String::new(), |x| x.message.clone()), f.clone()))
            .chain(
                earlier_failure_files(dir, report.failure_file.as_deref())
                    .into_iter()
                    .map(|f| ("from an earlier run in this directory, not this one".to_string(), f)),
            )
            .collect(),
        files: vec![(
            "versioned run report (schema ".to_string() + &report.schema_version.to_string() + ")",
            "report.json".to_string(),
        )],
    };
    std::fs::write(dir.join("index.html"), render_index(&index)).context("writing index.html")?;
    Ok(())
}

/// Redraws the charts and index of a run directory from its report.json (no rerun).
pub fn redraw_run(dir: &Path) -> Result<usize> {
    let path = dir.join("report.json");
    let report: Report =
        serde_json::from_str(&std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?)
            .with_context(|| format!("{} is not a fvdsim report", path.display()))?;
    anyhow::ensure!(
        report.schema_version == crate::schema::RUN_REPORT,
        "{}: report schema {} (this fvdsim reads {})",
        path.display(),
        report.schema_version,
        crate::schema::RUN_REPORT
    );
    render_report(dir, report)?;
    Ok(std::fs::read_dir(dir)?
        .filter_map(Result::ok)
        .filter(|e| e.path().extension().is_some_and(|x| x == "svg"))
        .count())
}

/// What the QEMU judge saw, one line (`None` when it did not run).
/// What the summary of a run is made from (a finished run, or a saved report).
#[derive(Debug, Clone, Copy)]
pub struct SummaryFacts<'a> {
    /// `verified`, `interrupted` or the failure class.
    pub outcome: &'a str,
    /// The configuration.
    pub config: &'a RunConfig,
    /// The counters.
    pub summary: &'a RunSummary,
    /// The failure.
    pub failure: Option<&'a Failure>,
    /// The build's git commit.
    pub git_commit: &'a str,
    /// The event-log hash, `0x…`.
    pub log_hash: &'a str,
    /// Wall seconds of the run.
    pub wall_seconds: f64,
}

/// The run's figures as `(name, value)` rows: what the terminal prints after a run and what
/// `index.html`'s summary table shows (one formatting for both).
pub fn summary_rows(facts: &SummaryFacts<'_>) -> Vec<(String, String)> {
    let s = facts.summary;
    let config = facts.config;
    let mut rows = vec![("outcome".to_string(), facts.outcome.to_string())];
    if let Some(failure) = facts.failure {
        rows.push(("failure".into(), failure.message.clone()));
    }
    rows.extend([
        ("scenario".to_string(), format!("{} (seed {}, {} profile)", config.name(), config.seed, config.profile)),
        ("workload".into(), config.workload_line().unwrap_or_else(|| "random testers".into())),
        (
            "requests".into(),
            format!(
                "{} issued: {} completed, {} failed (injected I/O errors), {} dropped at crashes; {} reads, {} writes, {} guest flushes",
                s.issued, s.completed, s.failed, s.dropped_at_crash, s.reads, s.writes, s.flushes
            ),
        ),
    ]);
    if s.folded + s.out_of_order + s.split > 0 {
        rows.push((
            "trace".into(),
            format!(
                "{} folded onto the disk (--wrap), {} out of time order, {} split (longer than {} KiB)",
                s.folded,
                s.out_of_order,
                s.split,
                crate::trace::MAX_REQUEST_BYTES >> 10
            ),
        ));
    }
    rows.extend([
        (
            "bytes replayed".to_string(),
            format!(
                "{:.1} MiB read, {:.1} MiB written",
                s.read_bytes as f64 / 1048576.0,
                s.write_bytes as f64 / 1048576.0
            ),
        ),
        ("crashes".into(), crash_line(s)),
        ("sectors verified".into(), s.sectors_verified.to_string()),
    ]);
    if let Some(line) = qemu_line(s) {
        rows.push(("qemu judge".into(), line));
    }
    rows.extend([
        ("journal".to_string(), format!("{} writes, {} recycles", s.journal_writes, s.recycles)),
        ("simulated time".into(), format!("{:.3} s", s.simulated_seconds)),
        ("wall time".into(), format!("{:.3} s", facts.wall_seconds)),
        ("event-log hash".into(), facts.log_hash.to_string()),
        ("git commit".into(), facts.git_commit.to_string()),
    ]);
    rows
}

/// The outcome's name: the failure class, `interrupted` or `verified`.
pub fn outcome_name(outcome: &RunOutcome) -> String {
    match &outcome.failure {
        Some(f) => serde_json::to_value(f.class).ok().and_then(|v| v.as_str().map(str::to_owned)).unwrap_or_default(),
        None if outcome.summary.interrupted => "interrupted".into(),
        None => "verified".into(),
    }
}

pub fn qemu_line(summary: &RunSummary) -> Option<String> {
    let q = summary.qemu.as_ref()?;
    let findings = match q.format.as_str() {
        "parallels" => format!("in_use only {}", q.check_in_use),
        _ => format!(
            "corrupt under NEED_CHECK {}, QEMU overcounted leaks in {} (docs/qed.md)",
            q.check_need_check, q.qemu_leak_overcount
        ),
    };
    Some(format!(
        "{} crash states judged by {}: qemu-img check clean {}, leaks only {}, {findings} ({} leaked clusters); {} \
         sectors of QEMU's repair judged, {} compared with our recovery: all agree",
        q.crash_states, q.version, q.check_clean, q.check_leaks_only, q.leaks, q.sectors_judged, q.sectors_compared
    ))
}

/// Crashes by point, one line.
pub fn crash_line(summary: &RunSummary) -> String {
    let total: u64 = summary.crashes_by_point.values().sum();
    if total == 0 && summary.crashes_planned == 0 {
        return "none planned".into();
    }
    let parts: Vec<String> = summary.crashes_by_point.iter().map(|(k, v)| format!("{v} {k}")).collect();
    let mut line = format!("{total} of {} planned", summary.crashes_planned);
    if !parts.is_empty() {
        line += &format!(" ({})", parts.join(", "));
    }
    if let Some(note) = &summary.crashes_note {
        line += &format!("; {note}");
    }
    line
}

/// Width of a latency window (`LatencyRecorder::new(1_000_000_000)`; report.json's windows are
/// one second).
const LATENCY_WINDOW_S: f64 = 1.0;
/// Lowest latency the latency chart shows: a read answered without device I/O takes less.
const LATENCY_FLOOR_US: f64 = 1.0;

/// The latency chart: p50 and p99 per window and kind, in human units on a log axis. A line
/// breaks at windows without completions of its kind (a gap is never bridged); windows whose
/// read p50 is under the 1 µs floor (answered without device I/O) are dots at the floor, apart
/// from the line; crashes are marked.
pub fn latency_chart(report: &Report) -> LineChart {
    let windows = &report.latency_windows;
    let mut series = Vec::new();
    let mut notes = Vec::new();
    let spanned = match (windows.first(), windows.last()) {
        (Some(a), Some(b)) => ((b.start_s - a.start_s) / LATENCY_WINDOW_S).round() as usize + 1,
        _ => 0,
    };
    let mut with_data = Vec::new();
    for (kind, colors) in [("read", [(31, 119, 180), (120, 180, 230)]), ("write", [(215, 95, 0), (250, 170, 90)])] {
        let mut lines = [Vec::new(), Vec::new()];
        let mut below_floor = Vec::new();
        let mut previous: Option<f64> = None;
        let mut count = 0;
        for w in windows {
            let Some(&(_, p50, p99)) = w.kinds.get(kind) else { continue };
            count += 1;
            let gap = previous.is_some_and(|p| w.start_s - p > LATENCY_WINDOW_S * 1.5);
            for (line, value) in lines.iter_mut().zip([p50, p99]) {
                if gap {
                    line.push(BREAK);
                }
                line.push(if value < LATENCY_FLOOR_US { BREAK } else { (w.start_s, value) });
            }
            if p50 < LATENCY_FLOOR_US {
                below_floor.push((w.start_s, LATENCY_FLOOR_US));
            }
            previous = Some(w.start_s);
        }
        if count == 0 {
            continue;
        }
        with_data.push(format!("{kind}s in {count}"));
        for ((line, label), rgb) in lines.into_iter().zip(["p50", "p99"]).zip(colors) {
            series.push(Series { label: format!("{kind} {label}"), points: line, rgb: Some(rgb), ..Series::default() });
        }
        if !below_floor.is_empty() {
            notes.push(format!(
                "{} window(s) with {kind} p50 under 1 µs: {kind}s answered without device I/O (a never-written region reads as zeros), drawn as dots at the 1 µs floor.",
                below_floor.len()
            ));
            series.push(Series {
                label: format!("{kind} p50 under 1 µs (no device I/O)"),
                points: below_floor,
                points_only: true,
                rgb: Some((0, 0, 0)),
                ..Series::default()
            });
        }
    }
    if spanned > 0 {
        notes.insert(
            0,
            format!(
                "One point per 1 s window of simulated time; lines break at windows without completions of their kind ({} of {spanned} windows had completions).",
                with_data.join(", ")
            ),
        );
    }
    LineChart {
        title: format!(
            "Guest latency, {} seed {} ({} profile)",
            report.config.scenario, report.config.seed, report.config.profile
        ),
        x_label: "simulated time (s)".into(),
        y_label: "latency per 1 s window (log scale)".into(),
        series,
        markers: report
            .crashes
            .iter()
            .map(|c| Marker { x: c.at_ns as f64 / 1e9, label: "crash".into(), rgb: (214, 39, 40), ..Marker::default() })
            .collect(),
        log_y: true,
        y_floor: Some(LATENCY_FLOOR_US),
        y_ticks: TickFormat::LatencyUs,
        notes,
        ..LineChart::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report_with(windows: Vec<LatencyWindow>) -> Report {
        Report {
            schema_version: crate::schema::RUN_REPORT,
            tool_version: "test".into(),
            git_commit: "test".into(),
            outcome: "verified".into(),
            exit_code: 0,
            config: (super::super::config::scenario("random").unwrap().build)(fvd_sim::Seed(1)),
            summary: RunSummary::default(),
            crashes: Vec::new(),
            latency: BTreeMap::new(),
            latency_windows: windows,
            failure: None,
            failure_file: None,
            log_hash: String::new(),
            image_hash: String::new(),
            prefetch: None,
            charts: Vec::new(),
            host: HostFacts { wall_seconds: 0.0 },
        }
    }

    fn window(start_s: f64, kinds: &[(&str, f64, f64)]) -> LatencyWindow {
        LatencyWindow { start_s, kinds: kinds.iter().map(|&(k, p50, p99)| (k.to_string(), (10, p50, p99))).collect() }
    }

    fn series<'a>(chart: &'a LineChart, label: &str) -> &'a Series {
        chart.series.iter().find(|s| s.label == label).unwrap_or_else(|| panic!("no series {label:?}"))
    }

    #[test]
    fn latency_lines_break_at_windows_without_completions_and_sub_microsecond_reads_sit_apart() {
        let report = report_with(vec![
            window(0.0, &[("read", 50.0, 900.0), ("write", 200.0, 4_000.0)]),
            window(1.0, &[("read", 60.0, 800.0)]),
            // Seconds 2 and 3: no completions at all. Second 4: writes only.
            window(4.0, &[("write", 300.0, 5_000.0)]),
            window(5.0, &[("read", 0.001, 700.0), ("write", 250.0, 3_000.0)]),
            window(6.0, &[("read", 40.0, 600.0)]),
        ]);
        let chart = latency_chart(&report);
        let read_p50 = &series(&chart, "read p50").points;
        let finite: Vec<(f64, f64)> = read_p50.iter().copied().filter(|p| p.1.is_finite()).collect();
        assert_eq!(finite, vec![(0.0, 50.0), (1.0, 60.0), (6.0, 40.0)]);
        // Between second 1 and 5 there is a break: no line from 1 to 5.
        let after_1 = read_p50.iter().position(|p| p.0 == 1.0).unwrap();
        assert!(read_p50[after_1 + 1].1.is_nan(), "{read_p50:?}");
        // The read p99 of second 5 is a real value, on a line of its own after the gap.
        let read_p99 = &series(&chart, "read p99").points;
        assert!(read_p99.windows(2).any(|w| w[0].1.is_nan() && w[1] == (5.0, 700.0)), "{read_p99:?}");
        // Write: seconds 4 and 5 join, 0 and 4 do not.
        let write_p50 = &series(&chart, "write p50").points;
        assert!(write_p50.windows(2).any(|w| w[0] == (4.0, 300.0) && w[1] == (5.0, 250.0)), "{write_p50:?}");
        assert!(!write_p50.windows(2).any(|w| w[0] == (0.0, 200.0) && w[1] == (4.0, 300.0)), "{write_p50:?}");
        // The read answered without I/O is a dot at the floor, named in the legend and a note.
        let below = series(&chart, "read p50 under 1 µs (no device I/O)");
        assert!(below.points_only);
        assert_eq!(below.points, vec![(5.0, 1.0)]);
        assert!(chart.notes.iter().any(|n| n.contains("1 window(s) with read p50 under 1 µs")), "{:?}", chart.notes);
        assert!(chart.notes[0].contains("reads in 4, writes in 3 of 7 windows"), "{:?}", chart.notes);
        assert_eq!(chart.y_ticks, TickFormat::LatencyUs);
        // Drawn: the read p50 line is two pieces plus a dot, with tick labels in units.
        let dir = std::env::temp_dir().join(format!("fvd-latency-chart-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("latency.svg");
        render_line_chart(&chart, &path).unwrap();
        let svg = std::fs::read_to_string(&path).unwrap();
        assert!(svg.contains(">\n1 ms\n</text>") && svg.contains(">\n100 µs\n</text>"), "{svg}");
        assert!(svg.contains("read p50 under 1 µs (no device I/O)"));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn the_prefetch_chart_draws_achieved_throughput_the_threshold_in_mib_and_the_finish() {
        use fvd_engine::{PrefetchMeasure, PrefetchPhase, PrefetchSample, PrefetchTelemetry, WindowSide};
        const MIB: u64 = 1 << 20;
        // v1's 5,120 KB/s minimum: 5,242.88 bytes per ms, exactly 5 MiB/s.
        let threshold = 5120.0 * 1024.0 / 1000.0;
        let sample = |s: f64, side: WindowSide, value: f64, copied: u64| PrefetchSample {
            at_ns: (s * 1e9) as u64,
            measure: PrefetchMeasure::Window {
                side,
                bytes_per_ms: value,
                moving_average_bytes_per_ms: value,
                threshold_bytes_per_ms: threshold,
            },
            bytes_copied: copied,
            bytes_read: copied,
        };
        let telemetry = PrefetchTelemetry {
            phase: PrefetchPhase::Finished,
            started_ns: Some(500_000_000),
            finished_ns: Some(9_000_000_000),
            pauses: vec![(2_000_000_000, 2_500_000_000)],
            samples: vec![
                sample(1.0, WindowSide::Read, 8_000.0, 0),
                sample(2.0, WindowSide::Read, 4_000.0, 4 * MIB),
                sample(4.0, WindowSide::Read, 8_000.0, 10 * MIB),
                // A crash at 5 s: the reopened image counts from zero again.
                sample(6.0, WindowSide::Read, 8_000.0, MIB),
                sample(8.0, WindowSide::Read, 8_000.0, 9 * MIB),
            ],
            bytes_copied: 19 * MIB,
            bytes_read: 19 * MIB,
            bytes_discarded: 0,
        };
        let prefetch = PrefetchReport::from_telemetry(&telemetry);
        let chart = prefetch_chart_with_crashes(&prefetch, "prefetch", &[5.0]);
        assert_eq!(chart.y_label, "throughput (MiB/s)");
        let line = series(&chart, "v1 minimum throughput 5 MiB/s (may pause below it)");
        assert!(line.points.iter().all(|p| (p.1 - 5.0).abs() < 1e-9), "{:?}", line.points);
        // Achieved: 4 MiB in 1 s, 6 MiB in 2 s (the pause counts), a break at the crash, 8 MiB
        // in 2 s.
        let written = &series(&chart, "written to image, achieved").points;
        let finite: Vec<(f64, f64)> = written.iter().copied().filter(|p| p.1.is_finite()).collect();
        assert_eq!(finite, vec![(1.0, 4.0), (2.0, 4.0), (2.0, 3.0), (4.0, 3.0), (6.0, 4.0), (8.0, 4.0)]);
        let crash_gap = written.iter().position(|p| p.0 == 4.0).unwrap();
        assert!(written[crash_gap + 1].1.is_nan(), "no line across the crash: {written:?}");
        assert!(series(&chart, "read from base, achieved").points.iter().any(|p| p.1 == 4.0));
        assert_eq!(chart.bands.len(), 1);
        let finished = chart.markers.iter().find(|m| m.label == "prefetch finished").unwrap();
        assert_eq!(finished.x, 9.0);
        assert!(chart.markers.iter().any(|m| m.label.starts_with("crash") && m.x == 5.0));
        assert!(chart.notes.iter().any(|n| n.contains("1 MiB = 1,048,576 bytes")), "{:?}", chart.notes);
        assert!(chart.notes.iter().any(|n| n.contains("Prefetch finished at 9.00 s")), "{:?}", chart.notes);
    }

    #[test]
    fn a_report_without_per_sample_read_bytes_still_reads() {
        let old =
            r#"{"t_s":1.0,"kind":"rate","value":0.65536,"moving_average":1216.0,"threshold":20000.0,"bytes_copied":0}"#;
        let point: PrefetchPoint = serde_json::from_str(old).unwrap();
        assert_eq!(point.bytes_read, 0);
    }
}
