//! Developer tasks for fvdsim, the rust-analyzer way: `cargo xtask <task>`.
//!
//! - `cargo xtask ci`: what CI runs (`.ci/run` calls it): formatting, clippy with warnings denied,
//!   the README's test command, a determinism self-check, and the main job.
//! - `cargo xtask nightly [--seed S] [--time D] [--shard I/N]`: property tests with a seed taken
//!   from the commit (or `--seed`) and 2,048 cases each, then `fvdsim swarm` for D (10m by
//!   default), replaying the failures an earlier night recorded first.

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
    for (scenario, seed) in [("exhaustive", "1"), ("exhaustive", "2"), ("exhaustive-torn", "1")] {
        run(
            &format!("campaign {scenario} seed {seed}"),
            &mut fvdsim(&["--scenario", scenario, "--seed", seed, "--out", "target/ci-campaigns/exhaustive"]),
        )?;
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
    run("swarm", &mut command)?;
    eprintln!("xtask: nightly passed");
    Ok(())
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
        _ => bail!("usage: cargo xtask ci | cargo xtask nightly [--seed S] [--time D] [--shard I/N]"),
    }
}
