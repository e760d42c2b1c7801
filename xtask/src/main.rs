//! Developer tasks for fvdsim, the rust-analyzer way: `cargo xtask <task>`.
//!
//! - `cargo xtask ci`: what CI runs (`.ci/run` calls it): formatting, clippy with warnings denied,
//!   the README's test command, a determinism self-check, and the main job.
//! - `cargo xtask nightly [--seed S] [--time D] [--shard I/N]`: property tests with a seed taken
//!   from the commit (or `--seed`) and 2,048 cases each, then `fvdsim swarm` for D (10m by
//!   default), replaying the failures an earlier night recorded first.
//! - `cargo xtask fuzz [--time D] [--target NAME]`: every cargo-fuzz target (`fuzz/`) for `D`
//!   each (`30s`, `10m`, `1h`; default 60 s; the nightly setting is 10 m), one at a time, from
//!   the seed corpus of `fvd_scenarios::fuzz` (written to `fuzz/corpus/<target>/`). Installs
//!   cargo-fuzz if missing; needs the nightly toolchain. Reports executions and crash artifacts
//!   per target, and fails if any target found one.

use std::path::PathBuf;
use std::process::Command;

use anyhow::{Context, Result, bail};

fn project_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).parent().expect("xtask lives one level below the root").to_path_buf()
}

fn cargo() -> Command {
    let mut command = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    command.current_dir(project_root());
    command
}

fn run(step: &str, command: &mut Command) -> Result<String> {
    eprintln!("xtask: {step}: {command:?}");
    let output = command.output().with_context(|| format!("{step}: could not start {command:?}"))?;
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    eprint!("{}", String::from_utf8_lossy(&output.stderr));
    print!("{stdout}");
    if !output.status.success() {
        bail!("{step} failed ({})", output.status);
    }
    Ok(stdout)
}

fn ci() -> Result<()> {
    run("format", cargo().args(["fmt", "--all", "--", "--check"]))?;
    run("clippy", cargo().args(["clippy", "--workspace", "--all-targets", "--", "-D", "warnings"]))?;
    run("tests", cargo().args(["test", "--workspace"]))?;
    // Determinism self-check: the same seed twice gives the same event log and image bytes.
    for args in [["--scenario", "random", "--seed", "1"], ["--scenario", "cloudphysics", "--requests", "20000"]] {
        run(
            "determinism",
            cargo()
                .args(["run", "--release", "--quiet", "--bin", "fvdsim", "--", "run", "--check-determinism"])
                .args(args),
        )?;
    }
    // The main job, as the README runs it.
    run(
        "main job",
        cargo().args(["run", "--release", "--quiet", "--bin", "fvdsim", "--", "run", "--out", "target/fvdsim-out"]),
    )?;
    campaigns()?;
    eprintln!("xtask: ci passed");
    Ok(())
}

/// Real campaigns beyond the tests (a few minutes): every crash scenario on fixed seeds in both
/// commit modes, the exhaustive scenarios, and the main job at its recorded timing (7,200 s
/// simulated, prefetch copying the whole base).
fn campaigns() -> Result<()> {
    let fvdsim = |args: &[&str]| {
        let mut command = cargo();
        command.args(["run", "--release", "--quiet", "--bin", "fvdsim", "--", "run", "--quiet"]).args(args);
        command
    };
    let scenarios =
        ["random", "random-faults", "torn", "tiny-journal", "plain", "prefetch", "prefetch-dense", "rare-flush"];
    for scenario in scenarios {
        for seed in ["1", "2", "3"] {
            for commit in ["group", "sync"] {
                let out = format!("target/ci-campaigns/{scenario}-{seed}-{commit}");
                run(
                    &format!("campaign {scenario} seed {seed} commit {commit}"),
                    &mut fvdsim(&["--scenario", scenario, "--seed", seed, "--commit", commit, "--out", &out]),
                )?;
            }
        }
    }
    // The formats' own scenarios: crashes at QED's and Parallels' named points.
    for scenario in ["qed", "qed-backing", "parallels", "qed-exhaustive"] {
        for seed in ["1", "2", "3"] {
            let out = format!("target/ci-campaigns/{scenario}-{seed}");
            run(
                &format!("campaign {scenario} seed {seed}"),
                &mut fvdsim(&["--scenario", scenario, "--seed", seed, "--jobs", "2", "--out", &out]),
            )?;
        }
    }
    // QEMU as the judge of every crash state of QED and Parallels runs (skipped, with a notice,
    // where qemu-img is missing; `.ci/run` installs it).
    let qemu = Command::new("qemu-img").arg("--version").output().is_ok_and(|o| o.status.success());
    if qemu {
        for (scenario, format) in [("qed", "qed"), ("parallels", "parallels"), ("random", "qed"), ("torn", "parallels")]
        {
            run(
                &format!("campaign {scenario} format {format} judged by QEMU"),
                &mut fvdsim(&[
                    "--scenario",
                    scenario,
                    "--format",
                    format,
                    "--seed",
                    "1",
                    "--requests",
                    "4000",
                    "--crashes",
                    "8",
                    "--qemu-judge",
                    "--out",
                    &format!("target/ci-campaigns/judged-{scenario}-{format}"),
                ]),
            )?;
        }
        // QEMU's own drivers crash-tested from their blklogwrites logs (`fvdsim qemu`): qcow2 and
        // QED, two runs each (seeds 1 and 2, cluster sizes drawn per run), and QED over a backing
        // file; each must show no finding (~10 s a run).
        for (formats, runs, backing) in [("qcow2,qed", "2", false), ("qed", "1", true)] {
            let mut command = cargo();
            command.args(["run", "--release", "--quiet", "--bin", "fvdsim", "--", "qemu", "--format", formats]);
            command.args(["--runs", runs, "--ops", "40", "--max-states", "400", "--jobs", "2"]);
            command.args(["--out", &format!("target/ci-qemu/{formats}{}", if backing { "-backing" } else { "" })]);
            if backing {
                command.arg("--backing");
            }
            run(&format!("fvdsim qemu {formats}{}", if backing { " with a backing file" } else { "" }), &mut command)?;
        }
    } else {
        eprintln!("xtask: NOTICE: qemu-img is not installed: the QEMU-judged campaigns are skipped");
    }
    // QED and Parallels through the FVD scenarios (their named points translated, QEMU's repair
    // at open).
    for format in ["qed", "parallels"] {
        for scenario in ["random", "torn", "random-faults", "rare-flush"] {
            for seed in ["1", "2", "3"] {
                let out = format!("target/ci-campaigns/{scenario}-{seed}-{format}");
                run(
                    &format!("campaign {scenario} seed {seed} format {format}"),
                    &mut fvdsim(&["--scenario", scenario, "--seed", seed, "--format", format, "--out", &out]),
                )?;
            }
        }
    }
    // Enumerated crash states on QED and Parallels (sector-atomic: QED relies on it, docs/qed.md).
    for format in ["qed", "parallels"] {
        for seed in ["1", "2", "3"] {
            run(
                &format!("campaign exhaustive seed {seed} format {format}"),
                &mut fvdsim(&[
                    "--scenario",
                    "exhaustive",
                    "--seed",
                    seed,
                    "--format",
                    format,
                    "--jobs",
                    "2",
                    "--out",
                    "target/ci-campaigns/exhaustive",
                ]),
            )?;
        }
    }
    // Crash-state enumeration: every moment of a short run, many crash states each (~0.6 s a seed with two workers).
    for scenario in ["exhaustive", "exhaustive-torn"] {
        for seed in 1..=10 {
            let seed = seed.to_string();
            run(
                &format!("campaign {scenario} seed {seed}"),
                &mut fvdsim(&[
                    "--scenario",
                    scenario,
                    "--seed",
                    &seed,
                    "--jobs",
                    "2",
                    "--out",
                    "target/ci-campaigns/exhaustive",
                ]),
            )?;
        }
    }
    run(
        "campaign: the main job at its recorded timing",
        &mut fvdsim(&["--time-scale", "1", "--out", "target/ci-campaigns/realtime"]),
    )?;
    // About a minute of swarm: a fixed seed count, so CI is as deterministic as the runs.
    run(
        "swarm",
        cargo().args([
            "run",
            "--release",
            "--quiet",
            "--bin",
            "fvdsim",
            "--",
            "swarm",
            "--seeds",
            "300",
            "--jobs",
            "2",
            "--quiet",
            "--out",
            "target/ci-swarm",
        ]),
    )?;
    Ok(())
}

fn git_commit() -> Result<String> {
    let output = Command::new("git").args(["rev-parse", "HEAD"]).current_dir(project_root()).output()?;
    Ok(String::from_utf8_lossy(&output.stdout).trim().to_owned())
}

/// The nightly campaign: property tests on a seed from the commit with many more cases, then a
/// swarm for `time` (sharded with `--shard I/N`), replaying the failures recorded by earlier
/// nights first when their database is there.
fn nightly(seed: Option<String>, time: &str, shard: Option<&str>) -> Result<()> {
    let seed = match seed {
        Some(seed) => seed,
        None => git_commit()?,
    };
    eprintln!("xtask: nightly with seed {seed}, swarm for {time}");
    let proptest_seed =
        u64::from_str_radix(&seed.chars().filter(char::is_ascii_hexdigit).take(15).collect::<String>(), 16)
            .unwrap_or(1);
    run(
        "property tests",
        cargo()
            .args(["test", "--workspace", "--release"])
            .env("PROPTEST_RNG_SEED", proptest_seed.to_string())
            .env("PROPTEST_CASES", "2048"),
    )?;
    let out = match shard {
        Some(shard) => format!("target/nightly-swarm-{}", shard.replace('/', "-of-")),
        None => "target/nightly-swarm".to_string(),
    };
    let mut command = cargo();
    command.args(["run", "--release", "--quiet", "--bin", "fvdsim", "--", "swarm", "--time", time, "--jobs", "2"]);
    command.args(["--seed", &format!("{proptest_seed:#x}"), "--out", &out]);
    if let Some(shard) = shard {
        command.args(["--shard", shard]);
    }
    let known = project_root().join(&out).join("failures.json");
    if known.exists() {
        command.arg("--replay-db").arg(&known);
    }
    let swarm = run("swarm", &mut command);
    eprintln!("xtask: the campaign's page: {}", project_root().join(&out).join("index.html").display());
    swarm?;
    eprintln!("xtask: nightly passed");
    Ok(())
}

/// The cargo-fuzz targets (`fuzz/fuzz_targets/<name>.rs`), by name; the `fuzz_cases` test checks
/// that every harness of `fvd_scenarios::fuzz::TARGETS` has its file.
fn fuzz_targets() -> Result<Vec<String>> {
    let dir = project_root().join("fuzz/fuzz_targets");
    let mut names: Vec<String> = std::fs::read_dir(&dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .filter_map(|entry| entry.ok()?.file_name().to_str()?.strip_suffix(".rs").map(str::to_owned))
        .collect();
    names.sort();
    Ok(names)
}

/// `30s`, `10m`, `1h` or a number of seconds.
fn parse_duration(text: &str) -> Result<u64> {
    let (number, unit) = match text.find(|c: char| !c.is_ascii_digit()) {
        Some(at) => text.split_at(at),
        None => (text, "s"),
    };
    let number: u64 = number.parse().with_context(|| format!("duration {text:?}: expected e.g. 30s, 10m or 1h"))?;
    let scale = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        _ => bail!("duration {text:?}: the unit must be s, m or h"),
    };
    number.checked_mul(scale).filter(|s| *s > 0).with_context(|| format!("duration {text:?} must be positive"))
}

/// `cargo` through rustup, so `+nightly` works (`$CARGO` is the stable toolchain's own binary).
fn rustup_cargo() -> Command {
    let mut command = Command::new("cargo");
    command.current_dir(project_root());
    command
}

/// What one cargo-fuzz run reported.
struct FuzzResult {
    target: String,
    runs: Option<u64>,
    seconds: f64,
    artifacts: Vec<PathBuf>,
    status: String,
}

fn fuzz(seconds: u64, only: Option<&str>) -> Result<()> {
    let root = project_root();
    let mut targets = fuzz_targets()?;
    if let Some(only) = only {
        anyhow::ensure!(targets.iter().any(|t| t == only), "no fuzz target {only:?} (targets: {})", targets.join(", "));
        targets.retain(|t| t == only);
    }
    let has_fuzz = rustup_cargo().args(["fuzz", "--version"]).output().is_ok_and(|o| o.status.success());
    if !has_fuzz {
        run("install cargo-fuzz", rustup_cargo().args(["install", "cargo-fuzz", "--locked"]))?;
    }
    let corpus = root.join("fuzz/corpus");
    run(
        "seed corpus",
        cargo()
            .args(["test", "-p", "fvd-scenarios", "--test", "fuzz_cases", "--", "--ignored", "--exact", "write_corpus"])
            .env("FUZZ_CORPUS_DIR", &corpus),
    )?;
    // The fuzz crate builds into $CARGO_TARGET_DIR/fuzz when a target directory is set. Safe Rust
    // only in fvdsim, so no sanitizer: more executions for the panics, hangs and allocations
    // the targets look for (release, with debug assertions and overflow checks).
    let mut build_args: Vec<String> = vec!["+nightly".into(), "fuzz".into()];
    let target_dir = std::env::var_os("CARGO_TARGET_DIR").map(|dir| PathBuf::from(dir).join("fuzz"));
    let common = |args: &mut Vec<String>| {
        args.extend(["--sanitizer".into(), "none".into()]);
        if let Some(dir) = &target_dir {
            args.extend(["--target-dir".into(), dir.display().to_string()]);
        }
    };
    build_args.push("build".into());
    common(&mut build_args);
    run("build fuzz targets", rustup_cargo().args(&build_args))?;
    let logs = root.join("fuzz/logs");
    std::fs::create_dir_all(&logs).with_context(|| format!("creating {}", logs.display()))?;
    let mut results = Vec::new();
    for target in &targets {
        let artifacts = root.join("fuzz/artifacts").join(target);
        let before = list_files(&artifacts);
        let mut args: Vec<String> = vec!["+nightly".into(), "fuzz".into(), "run".into(), target.clone()];
        common(&mut args);
        args.extend([
            "--".into(),
            format!("-max_total_time={seconds}"),
            "-rss_limit_mb=2048".into(),
            "-malloc_limit_mb=2048".into(),
            "-timeout=10".into(),
            "-print_final_stats=1".into(),
        ]);
        eprintln!("xtask: fuzz {target} for {seconds} s (log: fuzz/logs/{target}.log)");
        let started = std::time::Instant::now();
        let output = rustup_cargo().args(&args).output().with_context(|| format!("running cargo fuzz run {target}"))?;
        let log = String::from_utf8_lossy(&output.stderr).into_owned();
        std::fs::write(logs.join(format!("{target}.log")), &log)?;
        let runs = log
            .lines()
            .rev()
            .find_map(|line| line.strip_prefix("stat::number_of_executed_units:"))
            .and_then(|n| n.trim().parse().ok());
        let artifacts: Vec<PathBuf> = list_files(&artifacts).into_iter().filter(|f| !before.contains(f)).collect();
        let status = if output.status.success() { "ok".to_owned() } else { format!("failed ({})", output.status) };
        let result =
            FuzzResult { target: target.clone(), runs, seconds: started.elapsed().as_secs_f64(), artifacts, status };
        eprintln!(
            "xtask: fuzz {target}: {} runs in {:.0} s, {}, {} new artifact(s)",
            result.runs.map_or("?".into(), |r| r.to_string()),
            result.seconds,
            result.status,
            result.artifacts.len()
        );
        results.push(result);
    }
    println!("{:<22} {:>12} {:>8}  result", "target", "executions", "seconds");
    for r in &results {
        println!(
            "{:<22} {:>12} {:>8.0}  {}",
            r.target,
            r.runs.map_or("?".into(), |r| r.to_string()),
            r.seconds,
            if r.artifacts.is_empty() {
                r.status.clone()
            } else {
                format!(
                    "{}: {}",
                    r.status,
                    r.artifacts.iter().map(|a| a.display().to_string()).collect::<Vec<_>>().join(", ")
                )
            }
        );
    }
    let failed: Vec<&str> =
        results.iter().filter(|r| r.status != "ok" || !r.artifacts.is_empty()).map(|r| r.target.as_str()).collect();
    if !failed.is_empty() {
        bail!(
            "fuzzing found problems in {}: replay an artifact with `cargo +nightly fuzz run TARGET ARTIFACT`",
            failed.join(", ")
        );
    }
    eprintln!("xtask: fuzz passed");
    Ok(())
}

fn list_files(dir: &std::path::Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> =
        std::fs::read_dir(dir).into_iter().flatten().filter_map(|e| e.ok().map(|e| e.path())).collect();
    files.sort();
    files
}

const USAGE: &str = "usage: cargo xtask ci | cargo xtask nightly [--seed S] [--time D] [--shard I/N] | cargo xtask fuzz [--time D] [--target NAME]";

fn fuzz_command(args: &[&str]) -> Result<()> {
    let mut seconds = 60;
    let mut target = None;
    let mut rest = args;
    while let [flag, value, tail @ ..] = rest {
        match *flag {
            "--time" => seconds = parse_duration(value)?,
            "--target" => target = Some(*value),
            _ => bail!("{USAGE}"),
        }
        rest = tail;
    }
    if !rest.is_empty() {
        bail!("{USAGE}");
    }
    fuzz(seconds, target)
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.iter().map(String::as_str).collect::<Vec<_>>().as_slice() {
        ["ci"] => ci(),
        ["nightly", rest @ ..] => {
            let mut seed = None;
            let mut time = "10m".to_string();
            let mut shard = None;
            let mut it = rest.iter();
            while let Some(flag) = it.next() {
                match (*flag, it.next()) {
                    ("--seed", Some(value)) => seed = Some((*value).to_owned()),
                    ("--time", Some(value)) => time = (*value).to_owned(),
                    ("--shard", Some(value)) => shard = Some((*value).to_owned()),
                    _ => bail!("usage: cargo xtask nightly [--seed S] [--time D] [--shard I/N]"),
                }
            }
            nightly(seed, &time, shard.as_deref())
        }
        ["fuzz", rest @ ..] => fuzz_command(rest),
        _ => bail!("{USAGE}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_seconds_minutes_and_hours() {
        assert_eq!(parse_duration("30s").unwrap(), 30);
        assert_eq!(parse_duration("10m").unwrap(), 600);
        assert_eq!(parse_duration("1h").unwrap(), 3600);
        assert_eq!(parse_duration("45").unwrap(), 45);
        for bad in ["", "0s", "m", "10x", "-1s", "99999999999999999999h"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
    }
}
