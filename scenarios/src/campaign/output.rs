//! What a run leaves behind: `report.json` (versioned), charts rendered from it, `index.html`,
//! and for a failure a self-contained failure file that `fvdsim repro` replays exactly.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use fvd_reports::chart::{Band, LineChart, Series, render_line_chart};
use fvd_reports::html::{Index, render_index};
use fvd_reports::latency::{LatencyWindow, Percentiles};
use serde::{Deserialize, Serialize};

use super::config::RunConfig;
use super::run::{CrashSummary, Failure, RunOutcome, RunSummary};

/// The git commit this binary was built from (`-dirty` if the tree had changes).
pub const GIT_COMMIT: &str = env!("FVDSIM_GIT_COMMIT");
/// Version of failure files.
pub const FAILURE_SCHEMA_VERSION: u32 = 1;

/// A failure, with everything needed to replay it: `fvdsim repro FILE`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FailureFile {
    /// [`FAILURE_SCHEMA_VERSION`].
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
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PrefetchPoint {
    /// Simulated time, s.
    pub t_s: f64,
    /// `read`, `write` (throughput windows), `pause`, or `rate` (AIMD).
    pub kind: String,
    /// Throughput (MB/s), pause length (ms) or rate (MB/s).
    pub value: f64,
    /// Moving average (MB/s), or the guest mean latency (µs) for `rate`.
    pub moving_average: f64,
    /// Threshold (MB/s), or the latency target (µs) for `rate`.
    pub threshold: f64,
    /// Bytes prefetched so far.
    pub bytes_copied: u64,
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

impl PrefetchReport {
    /// From the engine's telemetry.
    pub fn from_telemetry(t: &fvd_engine::PrefetchTelemetry) -> PrefetchReport {
        PrefetchReport {
            phase: format!("{:?}", t.phase).to_lowercase(),
            started_s: t.started_ns.map(|n| n as f64 / 1e9),
            finished_s: t.finished_ns.map(|n| n as f64 / 1e9),
            pauses: t.pauses.iter().map(|(a, b)| (*a as f64 / 1e9, *b as f64 / 1e9)).collect(),
            samples: t
                .samples
                .iter()
                .map(|s| {
                    let throughput = matches!(s.kind, "read" | "write" | "rate");
                    PrefetchPoint {
                        t_s: s.at_ns as f64 / 1e9,
                        kind: s.kind.to_string(),
                        value: if throughput { s.value * BYTES_PER_MS_TO_MB_S } else { s.value },
                        moving_average: if s.kind == "rate" {
                            s.moving_average
                        } else {
                            s.moving_average * BYTES_PER_MS_TO_MB_S
                        },
                        threshold: if s.kind == "rate" { s.threshold } else { s.threshold * BYTES_PER_MS_TO_MB_S },
                        bytes_copied: s.bytes_copied,
                    }
                })
                .collect(),
            bytes_copied: t.bytes_copied,
            bytes_read: t.bytes_read,
            bytes_discarded: t.bytes_discarded,
        }
    }
}

/// The prefetch chart: throughput per measurement window and its moving average, the minimum
/// threshold (dashed) and pauses shaded (v1 policy); or the AIMD rate.
pub fn prefetch_chart(prefetch: &PrefetchReport, title: &str) -> LineChart {
    let mut series = Vec::new();
    for (kind, label) in [("read", "base read"), ("write", "image write")] {
        let points: Vec<&PrefetchPoint> = prefetch.samples.iter().filter(|p| p.kind == kind).collect();
        if points.is_empty() {
            continue;
        }
        series.push(Series {
            label: format!("{label} throughput"),
            points: points.iter().map(|p| (p.t_s, p.value)).collect(),
            dashed: false,
        });
        series.push(Series {
            label: format!("{label} moving average"),
            points: points.iter().map(|p| (p.t_s, p.moving_average.max(0.0))).collect(),
            dashed: false,
        });
        if kind == "read" {
            series.push(Series {
                label: "minimum throughput".into(),
                points: points.iter().map(|p| (p.t_s, p.threshold)).collect(),
                dashed: true,
            });
        }
    }
    let rates: Vec<(f64, f64)> =
        prefetch.samples.iter().filter(|p| p.kind == "rate").map(|p| (p.t_s, p.value)).collect();
    if !rates.is_empty() {
        series.push(Series { label: "AIMD rate".into(), points: rates, dashed: false });
    }
    LineChart {
        title: title.into(),
        x_label: "simulated time (s)".into(),
        y_label: "MB/s".into(),
        series,
        bands: prefetch.pauses.iter().map(|(a, b)| Band { from: *a, to: *b }).collect(),
        band_label: "paused".into(),
        band_rgb: (160, 160, 160),
        log_y: false,
        y_floor: None,
    }
}

/// `report.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Report {
    /// [`fvd_reports::REPORT_SCHEMA_VERSION`].
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
        schema_version: FAILURE_SCHEMA_VERSION,
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
        file.schema_version == FAILURE_SCHEMA_VERSION,
        "{name}: failure file schema {} (this fvdsim reads {FAILURE_SCHEMA_VERSION})",
        file.schema_version
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
        schema_version: fvd_reports::REPORT_SCHEMA_VERSION,
        tool_version: env!("CARGO_PKG_VERSION").into(),
        git_commit: GIT_COMMIT.into(),
        outcome: match &outcome.failure {
            Some(f) => {
                serde_json::to_value(f.class).ok().and_then(|v| v.as_str().map(str::to_owned)).unwrap_or_default()
            }
            None if outcome.summary.interrupted => "interrupted".into(),
            None => "verified".into(),
        },
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
            "Guest latency over simulated time (p50 and p99 per second)".to_string(),
            "latency-over-time.svg".to_string(),
        ));
    }
    if let Some(prefetch) = &report.prefetch
        && prefetch.samples.iter().any(|p| p.kind != "pause")
    {
        let title = format!("Prefetch from the base image, {} seed {}", report.config.name(), report.config.seed);
        let mut chart = prefetch_chart(prefetch, &title);
        if chart.bands.is_empty() && !report.crashes.is_empty() {
            // No pauses (AIMD): shade the crashes instead; prefetch restarts after each recovery.
            chart.bands =
                report.crashes.iter().map(|c| Band { from: c.at_ns as f64 / 1e9, to: c.at_ns as f64 / 1e9 }).collect();
            chart.band_label = "crash (prefetch restarts after recovery)".into();
            chart.band_rgb = (214, 39, 40);
        }
        render_line_chart(&chart, &dir.join("prefetch.svg"))?;
        charts.push((
            "Whole-image prefetch: throughput or rate over simulated time, pauses shaded".to_string(),
            "prefetch.svg".to_string(),
        ));
    }
    report.charts = charts.iter().map(|(_, f)| f.clone()).collect();
    std::fs::write(dir.join("report.json"), serde_json::to_string_pretty(&report)?).context("writing report.json")?;
    let s = &report.summary;
    let mut summary = vec![
        ("outcome".to_string(), report.outcome.clone()),
        ("scenario".into(), report.config.scenario.clone()),
        ("workload".into(), report.config.workload_line().unwrap_or_else(|| "random testers".into())),
        ("seed".into(), report.config.seed.to_string()),
        ("profile".into(), format!("{:?}", report.config.profile).to_lowercase()),
        ("git commit".into(), report.git_commit.clone()),
        (
            "requests".into(),
            format!(
                "{} issued: {} completed, {} failed, {} dropped at crashes ({} reads, {} writes, {} flushes)",
                s.issued, s.completed, s.failed, s.dropped_at_crash, s.reads, s.writes, s.flushes
            ),
        ),
        (
            "trace".into(),
            format!("{} folded (--wrap), {} out of time order, {} split", s.folded, s.out_of_order, s.split),
        ),
        (
            "bytes".into(),
            format!(
                "{:.1} MiB read, {:.1} MiB written",
                s.read_bytes as f64 / 1048576.0,
                s.write_bytes as f64 / 1048576.0
            ),
        ),
        ("crashes".into(), crash_line(s)),
        ("sectors verified".into(), s.sectors_verified.to_string()),
        ("journal".into(), format!("{} writes, {} recycles", s.journal_writes, s.recycles)),
        ("simulated time".into(), format!("{:.3} s", s.simulated_seconds)),
        ("wall time".into(), format!("{:.3} s", report.host.wall_seconds)),
        ("event-log hash".into(), report.log_hash.clone()),
    ];
    if let Some(failure) = &report.failure {
        summary.insert(1, ("failure".into(), failure.message.clone()));
    }
    let index = Index {
        title: format!("fvdsim run: {} seed {}", report.config.name(), report.config.seed),
        summary,
        charts,
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
        report.schema_version == fvd_reports::REPORT_SCHEMA_VERSION,
        "{}: report schema {} (this fvdsim reads {})",
        path.display(),
        report.schema_version,
        fvd_reports::REPORT_SCHEMA_VERSION
    );
    render_report(dir, report)?;
    Ok(std::fs::read_dir(dir)?
        .filter_map(Result::ok)
        .filter(|e| e.path().extension().is_some_and(|x| x == "svg"))
        .count())
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

fn latency_chart(report: &Report) -> LineChart {
    let mut series = Vec::new();
    for kind in ["read", "write"] {
        for (label, pick) in [("p50", 0usize), ("p99", 1)] {
            let points: Vec<(f64, f64)> = report
                .latency_windows
                .iter()
                .filter_map(|w| w.kinds.get(kind).map(|(_, p50, p99)| (w.start_s, if pick == 0 { *p50 } else { *p99 })))
                .collect();
            if !points.is_empty() {
                series.push(Series { label: format!("{kind} {label}"), points, dashed: pick == 1 });
            }
        }
    }
    LineChart {
        title: format!(
            "Guest latency, {} seed {} ({} profile)",
            report.config.scenario,
            report.config.seed,
            format!("{:?}", report.config.profile).to_lowercase()
        ),
        x_label: "simulated time (s)".into(),
        y_label: "latency per 1 s window (µs, log scale, floor 1 µs)".into(),
        series,
        bands: report
            .crashes
            .iter()
            .map(|c| Band { from: c.at_ns as f64 / 1e9, to: c.at_ns as f64 / 1e9 + 0.6 })
            .collect(),
        band_label: "crash and recovery".into(),
        band_rgb: (214, 39, 40),
        log_y: true,
        y_floor: Some(1.0),
    }
}
