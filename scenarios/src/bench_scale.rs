//! `fvdsim bench scale`: memory and wall time at real scale (issue #8's targets), each figure
//! measured in a child process of its own so its peak RSS is its own.
//!
//! Parts (each `fvdsim bench scale --part NAME` prints one JSON object):
//! - `cloudphysics-realtime`: the main job at its recorded timing (`--time-scale 1`, 7,200 s
//!   simulated) with prefetch copying the whole base. Targets: ≤ 4 GiB RSS, ≤ 60 s wall.
//! - `foreign-data`: 1 GiB of random (non-regenerable) bytes written to a simulated disk, with
//!   flushes. Target: RSS per GiB written ≤ 1.1 GiB.
//! - `base-copy`: 4 GiB copied from a procedural base disk to an image disk, as prefetch does.
//!   Target: RSS per GiB copied ≤ 0.05 GiB.
//! - `idle-gap`: a two-line trace whose requests are three days apart, through the main job's
//!   settings. Targets: ≤ 2 s wall, ≤ 200 MB RSS.

use std::time::Instant;

use anyhow::{Context, Result};
use fvd_engine::{BlockDevice, WriteFlags};
use fvd_sim::{DeviceProfile, DiskConfig, ProceduralContent, Seed, Sim, SimDisk};
use serde::{Deserialize, Serialize};

use crate::campaign::config::{ReplayMode, WorkloadConfig};
use crate::campaign::run::run;
use crate::campaign::scenario;
use crate::trace::TraceFormat;

/// The parts, in the order they run.
pub const PARTS: [&str; 4] = ["cloudphysics-realtime", "foreign-data", "base-copy", "idle-gap"];

/// One part's figures.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ScalePart {
    /// The part's name.
    pub part: String,
    /// What it did, one line.
    pub what: String,
    /// Wall time, seconds.
    pub wall_seconds: f64,
    /// Peak resident set of the process, bytes (`VmHWM`).
    pub peak_rss_bytes: u64,
    /// Resident set before the measured work, bytes (`VmRSS`).
    pub baseline_rss_bytes: u64,
    /// Bytes the part wrote or copied (for per-GiB figures).
    pub bytes: u64,
    /// The figure the target is about, and the target, as text.
    pub figure: String,
    /// The target.
    pub target: String,
    /// Whether the figure meets the target.
    pub met: bool,
}

fn proc_status_bytes(field: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find(|l| l.starts_with(field))
                .and_then(|l| l.split_whitespace().nth(1).and_then(|kb| kb.parse::<u64>().ok()).map(|kb| kb * 1024))
        })
        .unwrap_or(0)
}

const GIB: f64 = (1u64 << 30) as f64;

/// Runs one part in this process.
pub fn run_part(name: &str) -> Result<ScalePart> {
    let baseline = proc_status_bytes("VmRSS:");
    let started = Instant::now();
    let (what, bytes) = match name {
        "cloudphysics-realtime" => {
            let mut config = (scenario("cloudphysics").expect("the main job").build)(Seed(1));
            if let WorkloadConfig::Trace { mode, .. } = &mut config.workload {
                *mode = ReplayMode::OpenLoop { time_scale: 1.0, max_in_flight: 64 };
            }
            let outcome = run(&config).map_err(|e| anyhow::anyhow!("{e}"))?;
            anyhow::ensure!(outcome.failure.is_none(), "the run failed: {:?}", outcome.failure);
            let prefetch = outcome.prefetch.context("the main job prefetches")?;
            (
                format!(
                    "CloudPhysics trace at --time-scale 1 ({:.0} s simulated), prefetch {} ({:.1} GiB copied over {} opens)",
                    outcome.summary.simulated_seconds,
                    prefetch.phase,
                    prefetch.bytes_copied as f64 / GIB,
                    outcome.crashes.len() + 1
                ),
                prefetch.bytes_copied,
            )
        }
        "foreign-data" => {
            let sim = Sim::new(Seed(1));
            let disk = SimDisk::new(&sim.handle(), "image", 1 << 30, DiskConfig::new(DeviceProfile::nvme()));
            let mut rng = sim.stream(fvd_sim::streams::WORKLOAD);
            let writer = disk.clone();
            sim.run(async move {
                let mut data = vec![0u8; 1 << 20];
                for mib in 0..1024u64 {
                    rng.fill_bytes(&mut data);
                    writer.write_at(mib << 20, &data, WriteFlags::NONE).await.expect("no faults");
                    if mib % 16 == 15 {
                        writer.flush().await.expect("no faults");
                    }
                }
            })
            .map_err(|e| anyhow::anyhow!("{e}"))?;
            ("1 GiB of random bytes written in 1 MiB writes, a flush every 16 MiB".into(), 1 << 30)
        }
        "base-copy" => {
            const COPY: u64 = 4 << 30;
            let sim = Sim::new(Seed(1));
            let base = SimDisk::with_content(
                &sim.handle(),
                "base",
                COPY,
                DiskConfig::new(DeviceProfile::nvme()),
                std::rc::Rc::new(ProceduralContent { seed: 7 }),
            );
            let image = SimDisk::new(&sim.handle(), "image", COPY + (1 << 20), DiskConfig::new(DeviceProfile::nvme()));
            sim.run(async move {
                let mut buf = vec![0u8; 1 << 20];
                for mib in 0..COPY >> 20 {
                    base.read_at(mib << 20, &mut buf).await.expect("no faults");
                    // Shifted by 3 sectors, as a compact image's chunks sit.
                    image.write_at((mib << 20) + 1536, &buf, WriteFlags::NONE).await.expect("no faults");
                    if mib % 64 == 63 {
                        image.flush().await.expect("no faults");
                    }
                }
            })
            .map_err(|e| anyhow::anyhow!("{e}"))?;
            ("4 GiB read from a procedural base and written to an image disk in 1 MiB pieces".into(), COPY)
        }
        "idle-gap" => {
            let dir = std::env::temp_dir().join(format!("fvdsim-bench-idle-gap-{}", std::process::id()));
            std::fs::create_dir_all(&dir)?;
            let path = dir.join("two-lines.txt");
            std::fs::write(&path, "0 0 8 w\n259200000 16 8 r\n")?;
            let mut config = (scenario("cloudphysics").expect("the main job").build)(Seed(1));
            config.workload = WorkloadConfig::Trace {
                path: path.display().to_string(),
                format: TraceFormat::Plain,
                mode: ReplayMode::OpenLoop { time_scale: 1.0, max_in_flight: 64 },
                wrap: false,
            };
            // As `fvdsim run --trace` sizes it: the trace's extent, rounded up to a MiB.
            config.image.size_bytes = 1 << 20;
            config.image.base_bytes = 1 << 20;
            let outcome = run(&config).map_err(|e| anyhow::anyhow!("{e}"))?;
            let _ = std::fs::remove_dir_all(&dir);
            anyhow::ensure!(outcome.failure.is_none(), "the run failed: {:?}", outcome.failure);
            (
                format!(
                    "two requests three days apart ({:.0} s simulated), {} crashes",
                    outcome.summary.simulated_seconds,
                    outcome.crashes.len()
                ),
                0,
            )
        }
        other => anyhow::bail!("unknown part {other:?} (parts: {})", PARTS.join(", ")),
    };
    let wall_seconds = started.elapsed().as_secs_f64();
    let peak = proc_status_bytes("VmHWM:");
    let per_gib = if bytes > 0 { peak.saturating_sub(baseline) as f64 / bytes as f64 } else { 0.0 };
    let (figure, target, met) = match name {
        "cloudphysics-realtime" => (
            format!("{:.2} GiB peak RSS, {wall_seconds:.1} s wall", peak as f64 / GIB),
            "<= 4 GiB and <= 60 s".to_string(),
            peak as f64 <= 4.0 * GIB && wall_seconds <= 60.0,
        ),
        "foreign-data" => (format!("{per_gib:.3} GiB RSS per GiB written"), "<= 1.1".to_string(), per_gib <= 1.1),
        "base-copy" => (format!("{per_gib:.4} GiB RSS per GiB copied"), "<= 0.05".to_string(), per_gib <= 0.05),
        _ => (
            format!("{wall_seconds:.3} s wall, {:.0} MB peak RSS", peak as f64 / 1e6),
            "<= 2 s and <= 200 MB".to_string(),
            wall_seconds <= 2.0 && peak <= 200_000_000,
        ),
    };
    Ok(ScalePart {
        part: name.into(),
        what,
        wall_seconds,
        peak_rss_bytes: peak,
        baseline_rss_bytes: baseline,
        bytes,
        figure,
        target,
        met,
    })
}

/// Runs every part, each in a child process of this executable; prints a line per part.
pub fn run_all(mut each: impl FnMut(&ScalePart)) -> Result<Vec<ScalePart>> {
    let exe = std::env::current_exe().context("finding the fvdsim executable")?;
    let mut parts = Vec::new();
    for name in PARTS {
        let output = std::process::Command::new(&exe)
            .args(["bench", "scale", "--part", name])
            .output()
            .with_context(|| format!("running part {name}"))?;
        anyhow::ensure!(
            output.status.success(),
            "part {name} failed: {}",
            String::from_utf8_lossy(&output.stderr).trim()
        );
        let part: ScalePart = serde_json::from_slice(&output.stdout)
            .with_context(|| format!("part {name} printed no figures: {}", String::from_utf8_lossy(&output.stdout)))?;
        each(&part);
        parts.push(part);
    }
    Ok(parts)
}
