//! `fvdsim shrink` of a `fvdsim qemu` finding: cuts the script to the fewest, shortest
//! operations whose crash states still show a finding of the same class. Each try runs the
//! candidate script under blklogwrites and judges its crash states until one shows the class
//! (`QemuOptions::stop_at`). Steps: the shortest failing prefix (binary search), then delta
//! debugging over the operations (chunks of half, a quarter, … one operation removed while the
//! failure stays), then each range halved while it still fails. The result is a finding file
//! whose operations are written out, replayed by `fvdsim qemu --from FILE`.

use std::path::{Path, PathBuf};

use anyhow::{Result, bail};

use super::{Finding, FindingFile, Op, QemuOptions, finding_path, run};

/// What a shrink gave.
#[derive(Debug)]
pub struct QemuShrunk {
    /// Operations in the finding's script.
    pub ops_before: usize,
    /// The smallest failing run's finding file (its operations written out), in `out`.
    pub path: PathBuf,
    /// Its contents.
    pub file: FindingFile,
    /// Runs of QEMU tried.
    pub runs: u32,
}

/// Shrinks the finding of `file`; the smallest failing run is left in `out` (script, write log,
/// report, finding files). `note` hears one line per accepted step.
///
/// Errors: the finding does not reproduce, QEMU cannot run, `out` cannot be written.
pub fn shrink(file: &FindingFile, out: &Path, max_runs: u32, mut note: impl FnMut(&str)) -> Result<QemuShrunk> {
    let class = file.finding.class;
    std::fs::create_dir_all(out)?;
    let mut base = file.options(out)?;
    base.only_state = None;
    let mut runs = 0u32;
    // Does `ops` still fail with `class`? Judges until the first such state.
    let attempt = |ops: &[Op], runs: &mut u32| -> Result<bool> {
        *runs += 1;
        let scratch = tempfile::tempdir_in(out)?;
        let options = QemuOptions {
            ops: ops.len() as u64,
            script_ops: Some(ops.to_vec()),
            stop_at: Some(class),
            out: scratch.path().to_path_buf(),
            ..base.clone()
        };
        Ok(run(&options, |_, _| {})?.findings.iter().any(|f| f.class == class))
    };
    let mut ops = file.ops.clone();
    if !attempt(&ops, &mut runs)? {
        bail!("the finding ({class:?}) did not reproduce; nothing to shrink");
    }
    // 1. The shortest failing prefix.
    let (mut low, mut high) = (1usize, ops.len());
    while low < high && runs < max_runs {
        let mid = low + (high - low) / 2;
        if attempt(&ops[..mid], &mut runs)? {
            note(&format!("operations: the first {mid} still fail"));
            high = mid;
        } else {
            low = mid + 1;
        }
    }
    ops.truncate(high);
    // 2. Remove chunks of operations, halving the chunk down to one operation.
    let mut chunk = ops.len() / 2;
    while chunk >= 1 && runs < max_runs {
        let mut start = 0;
        while start < ops.len() && runs < max_runs {
            let end = (start + chunk).min(ops.len());
            let candidate: Vec<Op> = ops[..start].iter().chain(&ops[end..]).copied().collect();
            if !candidate.is_empty() && attempt(&candidate, &mut runs)? {
                note(&format!("operations: {} still fail (removed {}..{end})", candidate.len(), start));
                ops = candidate;
            } else {
                start = end;
            }
        }
        chunk /= 2;
    }
    // 3. Shorter ranges: halve each while the failure stays.
    let mut changed = true;
    while changed && runs < max_runs {
        changed = false;
        for index in 0..ops.len() {
            if runs >= max_runs {
                break;
            }
            let shorter = match ops[index] {
                Op::Write { id, first, count } if count > 1 => Op::Write { id, first, count: count / 2 },
                Op::Zero { first, count } if count > 1 => Op::Zero { first, count: count / 2 },
                Op::Discard { first, count } if count > 1 => Op::Discard { first, count: count / 2 },
                _ => continue,
            };
            let mut candidate = ops.clone();
            candidate[index] = shorter;
            if attempt(&candidate, &mut runs)? {
                note(&format!("operation {index}: {shorter:?} still fails"));
                ops = candidate;
                changed = true;
            }
        }
    }
    // The result, judged whole so that its numbering and findings do not depend on which
    // worker got to which state first.
    runs += 1;
    let options = QemuOptions { ops: ops.len() as u64, script_ops: Some(ops.clone()), out: out.to_path_buf(), ..base };
    let report = run(&options, |_, _| {})?;
    let Some(finding): Option<&Finding> = report.findings.iter().find(|f| f.class == class) else {
        bail!("the shrunk script did not fail again when judged whole (a flaky finding?)");
    };
    let path = finding_path(out, finding.state);
    let shrunk = FindingFile::read(&path)?;
    Ok(QemuShrunk { ops_before: file.ops.len(), path, file: shrunk, runs })
}
