//! Developer tasks for fvdsim, the rust-analyzer way: `cargo xtask <task>`.
//!
//! - `cargo xtask ci`: what CI runs (`.ci/run` calls it): formatting, clippy with warnings denied,
//!   the README's test command, a determinism self-check, and the main job.
//! - `cargo xtask nightly [--seed S]`: the fault-injection sweep: property tests with a seed taken
//!   from the commit (or `--seed`), and every random scenario over 50 seeds with 40 crashes each.

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
    Ok(())
}

fn git_commit() -> Result<String> {
    let output = Command::new("git").args(["rev-parse", "HEAD"]).current_dir(project_root()).output()?;
    Ok(String::from_utf8_lossy(&output.stdout).trim().to_owned())
}

fn nightly(seed: Option<String>) -> Result<()> {
    let seed = match seed {
        Some(seed) => seed,
        None => git_commit()?,
    };
    eprintln!("xtask: nightly with seed {seed}");
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
    let mut failures = Vec::new();
    for offset in 0..50u64 {
        let run_seed = format!("{:#x}", proptest_seed.wrapping_add(offset));
        if let Err(error) = run(
            &format!("main job {run_seed}"),
            cargo().args([
                "run",
                "--release",
                "--quiet",
                "--bin",
                "fvdsim",
                "--",
                "run",
                "--crashes",
                "40",
                "--seed",
                &run_seed,
            ]),
        ) {
            failures.push(format!("{run_seed}: {error}"));
        }
    }
    if !failures.is_empty() {
        bail!("nightly found {} failing seed(s):\n{}", failures.len(), failures.join("\n"));
    }
    eprintln!("xtask: nightly passed");
    Ok(())
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.iter().map(String::as_str).collect::<Vec<_>>().as_slice() {
        ["ci"] => ci(),
        ["nightly"] => nightly(None),
        ["nightly", "--seed", seed] => nightly(Some((*seed).to_owned())),
        _ => bail!("usage: cargo xtask ci | cargo xtask nightly [--seed S]"),
    }
}
