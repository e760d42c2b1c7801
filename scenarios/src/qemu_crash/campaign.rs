//! A `fvdsim qemu` campaign: one or more formats, one or more runs of each (seeds S, S+1, …;
//! with several runs, each draws its cluster size from the format's sizes unless one is given),
//! each run in its own directory, and over them `campaign.json` and `index.html`: per format the
//! operations run, crash states judged, `qemu-img check` exit codes, findings by class, and each
//! distinct finding with the command that judges it again.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{Context, Result, bail};
use fvd_reports::campaign::{CampaignPage, FailureRow, Table};
use fvd_sim::{Seed, SimRng};
use serde::{Deserialize, Serialize};

use super::{FORMATS, QemuOptions, QemuReport, cluster_option, takes_backing};
use crate::campaign::swarm::without_numbers;
use crate::img::human_size;

/// What a campaign runs.
#[derive(Debug, Clone)]
pub struct CampaignOptions {
    /// Formats, in order (each one of [`FORMATS`]).
    pub formats: Vec<String>,
    /// Runs per format (seeds `template.seed`, +1, …).
    pub runs: u64,
    /// The options every run starts from (its `out` is the campaign's directory).
    pub template: QemuOptions,
}

/// One run of a campaign.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CampaignRun {
    /// Its directory, relative to the campaign's (`.` for a campaign of one run).
    pub dir: String,
    /// Its report (also in `dir/report.json`).
    pub report: QemuReport,
}

/// `campaign.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CampaignReport {
    /// Report version.
    pub schema_version: u32,
    /// `qemu-img --version`, first line.
    pub qemu_version: String,
    /// The first run's seed.
    pub seed: String,
    /// The formats.
    pub formats: Vec<String>,
    /// Runs per format.
    pub runs_per_format: u64,
    /// Crash states judged over all runs.
    pub crash_states: u64,
    /// Findings over all runs (states that broke a rule; one state may break several).
    pub findings: u64,
    /// Wall seconds of the whole campaign.
    pub wall_seconds: f64,
    /// The runs, in order.
    pub runs: Vec<CampaignRun>,
}

/// The options of every run of `options`, in order, each with its directory.
///
/// Errors: an unknown format, no format, no run, `--state` over more than one run.
pub fn plan(options: &CampaignOptions) -> Result<Vec<QemuOptions>> {
    if options.formats.is_empty() || options.runs == 0 {
        bail!("a campaign needs a format and a run");
    }
    for format in &options.formats {
        if !FORMATS.contains(&format.as_str()) {
            bail!("--format {format}: one of {}, or all", FORMATS.join(", "));
        }
    }
    let single = options.formats.len() == 1 && options.runs == 1;
    if options.template.only_state.is_some() && !single {
        bail!("--state judges one state of one run: give one format and --runs 1");
    }
    let several_formats = options.formats.len() > 1;
    let mut runs = Vec::new();
    for format in &options.formats {
        for index in 0..options.runs {
            let seed = Seed(options.template.seed.0.wrapping_add(index));
            let sizes = cluster_option(format).map(|(_, sizes)| sizes);
            let cluster_bytes = match (options.template.cluster_bytes, sizes) {
                // Several formats: a size given applies where the format has one.
                (Some(_), None) if several_formats => None,
                (Some(size), _) => Some(size),
                (None, Some(sizes)) if options.runs > 1 => {
                    let mut rng = SimRng::stream(seed, "qemu-cluster-size");
                    Some(sizes[rng.below(sizes.len() as u64) as usize])
                }
                (None, _) => None,
            };
            let backing = options.template.backing && (!several_formats || takes_backing(format));
            let out = if single {
                options.template.out.clone()
            } else {
                options.template.out.join(run_dir_name(format, seed, cluster_bytes))
            };
            runs.push(QemuOptions {
                format: format.clone(),
                seed,
                cluster_bytes,
                backing,
                out,
                ..options.template.clone()
            });
        }
    }
    Ok(runs)
}

/// `qcow2-seed1-cluster64KiB`.
fn run_dir_name(format: &str, seed: Seed, cluster_bytes: Option<u64>) -> String {
    let mut name = format!("{format}-seed{}", seed.0);
    if let Some(bytes) = cluster_bytes {
        name += &format!("-cluster{}", human_size(bytes).replace(' ', ""));
    }
    name
}

/// Runs every run of `options` in order, writing `campaign.json` and `index.html` into the
/// campaign's directory; `progress` hears (run number from 0, runs, states judged, states).
///
/// Errors: those of [`plan`] and of [`super::run`] (a run that cannot run stops the campaign;
/// findings do not).
pub fn run_campaign(
    options: &CampaignOptions,
    mut progress: impl FnMut(usize, usize, u64, u64),
) -> Result<CampaignReport> {
    let runs = plan(options)?;
    let started = std::time::Instant::now();
    let out = &options.template.out;
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    let mut report = CampaignReport {
        schema_version: crate::schema::QEMU_CAMPAIGN,
        qemu_version: String::new(),
        seed: options.template.seed.to_string(),
        formats: options.formats.clone(),
        runs_per_format: options.runs,
        crash_states: 0,
        findings: 0,
        wall_seconds: 0.0,
        runs: Vec::new(),
    };
    for (index, run) in runs.iter().enumerate() {
        let run_report = super::run(run, |done, total| progress(index, runs.len(), done, total))
            .with_context(|| format!("{} seed {}", run.format, run.seed))?;
        report.qemu_version = run_report.qemu_version.clone();
        report.crash_states += run_report.crash_states;
        report.findings += run_report.findings_by_class.values().sum::<u64>();
        let dir = run.out.strip_prefix(out).map_or_else(|_| run.out.display().to_string(), |d| d.display().to_string());
        report.runs.push(CampaignRun { dir: if dir.is_empty() { ".".into() } else { dir }, report: run_report });
    }
    report.wall_seconds = started.elapsed().as_secs_f64();
    write(&report, out)?;
    Ok(report)
}

/// Writes `campaign.json` and `index.html` of `report` into `out`.
///
/// Errors: the files cannot be written.
pub fn write(report: &CampaignReport, out: &Path) -> Result<()> {
    std::fs::write(out.join("campaign.json"), serde_json::to_string_pretty(report)?)?;
    let html = fvd_reports::campaign::render_campaign_page(&page(report));
    std::fs::write(out.join("index.html"), html).with_context(|| format!("writing {}/index.html", out.display()))
}

/// `0x1` for `0x0000000000000001` (a seed as reports write it).
fn short_seed(seed: &str) -> String {
    seed.parse::<Seed>().map_or_else(|_| seed.to_string(), |s| format!("{:#x}", s.0))
}

/// The first `n` characters of `text` (a finding's message holds `qemu-img`'s whole stderr).
fn first_chars(text: &str, n: usize) -> String {
    text.chars().take(n).collect()
}

/// The campaign's page.
pub fn page(report: &CampaignReport) -> CampaignPage {
    let states_per_second = report.crash_states as f64 / report.wall_seconds.max(1e-9);
    let failing_runs = report.runs.iter().filter(|r| !r.report.findings_by_class.is_empty()).count();
    let mut per_format: BTreeMap<&str, (u64, u64, u64)> = BTreeMap::new();
    for run in &report.runs {
        let entry = per_format.entry(run.report.format.as_str()).or_default();
        entry.0 += run.report.ops;
        entry.1 += run.report.crash_states;
        entry.2 += run.report.findings_by_class.values().sum::<u64>();
    }
    let summary = vec![
        ("QEMU".into(), report.qemu_version.clone()),
        ("formats".into(), report.formats.join(", ")),
        (
            "runs".into(),
            match report.runs_per_format {
                1 => format!("1 per format (seed {})", short_seed(&report.seed)),
                n => format!(
                    "{n} per format (seeds {} to {:#x})",
                    short_seed(&report.seed),
                    report.seed.parse::<Seed>().map_or(0, |s| s.0.wrapping_add(n - 1))
                ),
            },
        ),
        (
            "crash states judged".into(),
            format!("{} ({states_per_second:.0} per second over the campaign)", report.crash_states),
        ),
        ("findings".into(), format!("{} in {failing_runs} of {} runs", report.findings, report.runs.len())),
        ("wall time".into(), format!("{:.1} s", report.wall_seconds)),
    ];
    let formats = Table {
        heading: "Per format".into(),
        columns: ["format", "operations run", "crash states judged", "findings"].map(String::from).to_vec(),
        rows: per_format
            .iter()
            .map(|(format, (ops, states, findings))| {
                vec![(*format).to_string(), ops.to_string(), states.to_string(), findings.to_string()]
            })
            .collect(),
    };
    let runs = Table {
        heading: "Runs".into(),
        columns: [
            "format",
            "seed",
            "cluster",
            "backing",
            "operations",
            "log entries (flushes)",
            "crash states",
            "states/s",
            "qemu-img check: states by exit code",
            "findings",
            "report",
        ]
        .map(String::from)
        .to_vec(),
        rows: report
            .runs
            .iter()
            .map(|run| {
                let r = &run.report;
                let codes: Vec<String> = r.check_exit_codes.iter().map(|(c, n)| format!("{c}: {n}")).collect();
                let classes: Vec<String> = r.findings_by_class.iter().map(|(c, n)| format!("{n} {c}")).collect();
                vec![
                    r.format.clone(),
                    short_seed(&r.seed),
                    r.cluster_bytes.map_or_else(|| "QEMU's default".into(), human_size),
                    if r.backing { "yes" } else { "no" }.into(),
                    r.ops.to_string(),
                    format!("{} ({})", r.log_entries, r.log_flushes),
                    r.crash_states.to_string(),
                    format!("{:.0}", r.states_per_second),
                    codes.join(", "),
                    if classes.is_empty() { "none".into() } else { classes.join(", ") },
                    format!("{}/report.json", run.dir),
                ]
            })
            .collect(),
    };
    // Distinct findings: format, class and message without its numbers; counted in runs, with
    // the states of each run's report (its first 50 findings) that show it.
    let mut failures: BTreeMap<String, (FailureRow, Vec<u64>)> = BTreeMap::new();
    for run in &report.runs {
        let mut seen_in_run = std::collections::BTreeSet::new();
        for finding in &run.report.findings {
            let class = serde_json::to_value(finding.class).ok().and_then(|v| v.as_str().map(String::from));
            let signature = format!(
                "{} {}: {}",
                run.report.format,
                class.unwrap_or_default(),
                without_numbers(&first_chars(&finding.message, 160))
            );
            let (row, states) = failures.entry(signature.clone()).or_insert_with(|| {
                let row = FailureRow {
                    signature: signature.clone(),
                    count: 0,
                    first_seed: short_seed(&run.report.seed),
                    seen: String::new(),
                    message: finding.message.clone(),
                    repro_command: finding.repro_command.clone(),
                };
                (row, Vec::new())
            });
            if seen_in_run.insert(signature) {
                row.count += 1;
            }
            states.push(finding.state);
        }
    }
    let failures = failures
        .into_values()
        .map(|(mut row, states)| {
            let shown: Vec<String> = states.iter().take(6).map(u64::to_string).collect();
            row.seen = format!(
                "{} state(s){} (of each run's first 50 findings): {}{}",
                states.len(),
                if row.count > 1 { " over those runs" } else { "" },
                shown.join(", "),
                if states.len() > shown.len() { ", …" } else { "" }
            );
            row
        })
        .collect();
    CampaignPage {
        title: format!("fvdsim qemu: {}", report.formats.join(", ")),
        summary,
        tables: vec![formats, runs],
        coverage: Vec::new(),
        failures,
        files: vec![("every run's report, the campaign's totals".into(), "campaign.json".into())],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn options(formats: &[&str], runs: u64) -> CampaignOptions {
        CampaignOptions {
            formats: formats.iter().map(|f| f.to_string()).collect(),
            runs,
            template: QemuOptions::new("qcow2", Path::new("/tmp/c")),
        }
    }

    #[test]
    fn several_runs_draw_cluster_sizes_from_their_own_seeds_and_get_their_own_directories() {
        let runs = plan(&options(&["qcow2", "vdi"], 8)).unwrap();
        assert_eq!(runs.len(), 16);
        let qcow2: Vec<_> = runs.iter().filter(|r| r.format == "qcow2").collect();
        let sizes: std::collections::BTreeSet<_> = qcow2.iter().map(|r| r.cluster_bytes.unwrap()).collect();
        assert!(sizes.len() >= 2, "8 runs drew one size: {sizes:?}");
        assert!(sizes.iter().all(|s| cluster_option("qcow2").unwrap().1.contains(s)));
        assert!(runs.iter().filter(|r| r.format == "vdi").all(|r| r.cluster_bytes.is_none()));
        assert_eq!(qcow2[3].seed, Seed(4));
        let dirs: std::collections::BTreeSet<_> = runs.iter().map(|r| r.out.clone()).collect();
        assert_eq!(dirs.len(), 16, "every run has its own directory");
        // The same campaign plans the same runs.
        assert_eq!(
            plan(&options(&["qcow2", "vdi"], 8)).unwrap().iter().map(|r| r.cluster_bytes).collect::<Vec<_>>(),
            runs.iter().map(|r| r.cluster_bytes).collect::<Vec<_>>()
        );
    }

    #[test]
    fn one_run_keeps_the_directory_and_qemus_default_cluster_size() {
        let runs = plan(&options(&["qed"], 1)).unwrap();
        assert_eq!(runs.len(), 1);
        assert_eq!(runs[0].out, Path::new("/tmp/c"));
        assert_eq!(runs[0].cluster_bytes, None);
        assert!(plan(&options(&["qcow3"], 1)).is_err());
        let mut one_state = options(&["qed", "qcow2"], 1);
        one_state.template.only_state = Some(3);
        assert!(plan(&one_state).is_err(), "--state over two runs");
    }

    #[test]
    fn messages_that_differ_only_in_numbers_share_a_signature() {
        assert_eq!(
            without_numbers("ERROR: allocated blocks mismatch, is 0, should be 1"),
            without_numbers("ERROR: allocated blocks mismatch, is 12, should be 13")
        );
        assert_ne!(without_numbers("sector 1 lost"), without_numbers("sector 1 garbage"));
        // Hexadecimal literals are numbers too, whatever their letters.
        assert_eq!(
            without_numbers("L2[0][3187] = 0x2ff0000: beyond the 50266112-byte file"),
            without_numbers("L2[75][1961] = 0x5f0000: beyond the 6205440-byte file")
        );
        assert_eq!(without_numbers("L2[0] = 0xab here"), "L#[#] = # here");
        assert_eq!(without_numbers("a 0x, 0xg and box"), "a #x, #xg and box", "not literals");
    }
}
