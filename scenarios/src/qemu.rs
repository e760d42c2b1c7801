//! QEMU's image tools as an external oracle: `qemu-img check` (with and without repair) and
//! `qemu-img convert -O raw`, run as child processes on image files. Used by the runner's QEMU
//! judge (`fvdsim run --qemu-judge`, `campaign::qemu_judge`); what `qemu-img check` verifies and
//! its exit codes are in docs/qed.md and docs/parallels.md (after QEMU's `qemu-img.c`: 0 clean,
//! 1 check not completed, 2 corruptions, 3 leaks only).

use std::path::{Path, PathBuf};
use std::process::Command;

/// Errors of running a QEMU tool.
#[derive(Debug, thiserror::Error)]
pub enum QemuError {
    /// The tool is not installed (or does not run).
    #[error("{tool} is not installed or does not run ({detail}); apt-get install qemu-utils")]
    Missing {
        /// `qemu-img`.
        tool: &'static str,
        /// What starting it said.
        detail: String,
    },
    /// The tool ran and failed.
    #[error("{command} failed ({status}): {stderr}")]
    Failed {
        /// The command line.
        command: String,
        /// Exit status as text.
        status: String,
        /// Its standard error, trimmed.
        stderr: String,
    },
    /// Its output could not be read.
    #[error("{command}: unreadable output: {detail}")]
    Output {
        /// The command line.
        command: String,
        /// What was wrong.
        detail: String,
    },
}

/// What `qemu-img check --output=json` reported.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct QemuCheck {
    /// Exit code; `None` when it was killed by a signal (an assertion in QEMU).
    pub exit_code: Option<i32>,
    /// Corruptions found (after repair: those left).
    pub corruptions: u64,
    /// Leaked clusters found (after repair: those left).
    pub leaks: u64,
    /// Errors that stopped the check.
    pub check_errors: u64,
    /// Corruptions fixed (with `-r all`).
    pub corruptions_fixed: u64,
    /// Leaks fixed (with `-r all`).
    pub leaks_fixed: u64,
    /// Standard error, trimmed (QEMU names each finding there).
    pub stderr: String,
}

impl QemuCheck {
    /// True if QEMU aborted (killed by a signal, or exit 134 from `abort()`).
    pub fn aborted(&self) -> bool {
        self.exit_code.is_none() || self.exit_code == Some(134)
    }
}

/// `qemu-img`, found on the `PATH`.
#[derive(Debug, Clone)]
pub struct QemuImg {
    binary: PathBuf,
    version: String,
}

impl QemuImg {
    /// Finds `qemu-img` and reads its version.
    ///
    /// Errors: [`QemuError::Missing`].
    pub fn find() -> Result<QemuImg, QemuError> {
        let binary = PathBuf::from("qemu-img");
        let output = Command::new(&binary)
            .arg("--version")
            .output()
            .map_err(|e| QemuError::Missing { tool: "qemu-img", detail: e.to_string() })?;
        if !output.status.success() {
            return Err(QemuError::Missing { tool: "qemu-img", detail: format!("--version: {}", output.status) });
        }
        let text = String::from_utf8_lossy(&output.stdout);
        let version = text.lines().next().unwrap_or("qemu-img (unknown version)").trim().to_string();
        Ok(QemuImg { binary, version })
    }

    /// The first line of `qemu-img --version` (for reports and failure messages).
    pub fn version(&self) -> &str {
        &self.version
    }

    /// `qemu-img check -f FORMAT --output=json [-r all] IMAGE`. A check that finds corruption or
    /// leaks, or aborts, is a result, not an error.
    ///
    /// Errors: [`QemuError::Missing`] if it cannot start; [`QemuError::Output`] if it exits
    /// normally with output that is not its JSON report.
    pub fn check(&self, format: &str, image: &Path, repair: bool) -> Result<QemuCheck, QemuError> {
        let mut command = Command::new(&self.binary);
        command.args(["check", "-f", format, "--output=json"]);
        if repair {
            command.args(["-r", "all"]);
        }
        command.arg(image);
        let shown = format!("{command:?}");
        let output = command.output().map_err(|e| QemuError::Missing { tool: "qemu-img", detail: e.to_string() })?;
        let stderr = String::from_utf8_lossy(&output.stderr).trim().to_string();
        let exit_code = output.status.code();
        let parsed: Option<serde_json::Value> = serde_json::from_slice(&output.stdout).ok();
        let Some(report) = parsed else {
            // Aborted, or the check could not complete (exit 1: it names why on stderr, such as
            // an entry pointing beyond the end of the file, or a log to replay first).
            if exit_code.is_none() || exit_code == Some(134) || exit_code == Some(1) {
                return Ok(QemuCheck {
                    exit_code,
                    corruptions: 0,
                    leaks: 0,
                    check_errors: u64::from(exit_code == Some(1)),
                    corruptions_fixed: 0,
                    leaks_fixed: 0,
                    stderr,
                });
            }
            return Err(QemuError::Output {
                command: shown,
                detail: format!("exit {exit_code:?}, no JSON report; stderr: {stderr}"),
            });
        };
        let field = |name: &str| report.get(name).and_then(serde_json::Value::as_u64).unwrap_or(0);
        Ok(QemuCheck {
            exit_code,
            corruptions: field("corruptions"),
            leaks: field("leaks"),
            check_errors: field("check-errors"),
            corruptions_fixed: field("corruptions-fixed"),
            leaks_fixed: field("leaks-fixed"),
            stderr,
        })
    }

    /// `qemu-img convert -f FORMAT -O raw IMAGE OUT`: the guest disk as QEMU reads it.
    ///
    /// Errors: [`QemuError::Failed`], [`QemuError::Missing`].
    pub fn convert_to_raw(&self, format: &str, image: &Path, out: &Path) -> Result<(), QemuError> {
        let mut command = Command::new(&self.binary);
        command.args(["convert", "-f", format, "-O", "raw"]).arg(image).arg(out);
        let shown = format!("{command:?}");
        let output = command.output().map_err(|e| QemuError::Missing { tool: "qemu-img", detail: e.to_string() })?;
        if !output.status.success() {
            return Err(QemuError::Failed {
                command: shown,
                status: output.status.to_string(),
                stderr: String::from_utf8_lossy(&output.stderr).trim().to_string(),
            });
        }
        Ok(())
    }
}
