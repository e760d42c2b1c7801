//! `fvdsim bench engine --format qed|parallels`: our QED or Parallels engine on real files beside
//! QEMU's driver for the same format in the same invocation (`qemu-img bench`), same geometry
//! (64 KiB clusters, 4 KiB writes at a 64 KiB stride: every write allocates a cluster), same
//! cache mode (writeback: buffered I/O, `fdatasync` only where the driver flushes), no backing
//! file. Rows: allocating writes and rewrites of the allocated clusters, at queue depth 1 and 16.
//! The ratio is our IOPS over QEMU's.

use std::path::Path;
use std::rc::Rc;
use std::time::Instant;

use anyhow::Result;
use fvd_engine::BlockDevice;
use serde::Serialize;

use crate::bench_engine::{EngineBenchOptions, REWRITE_PASSES, qemu, qemu_bench_iops};
use crate::campaign::guest::{FormatName, GuestImage};
use crate::host::{FileDevice, HostEnv, HostExecutor};

/// What a row does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FormatWorkload {
    /// One 4 KiB write per cluster of a fresh image: each allocates.
    Allocating,
    /// The same writes again, [`REWRITE_PASSES`] times, over the allocated clusters.
    Rewrite,
}

/// One row.
#[derive(Debug, Clone, Serialize)]
pub struct FormatRow {
    /// The workload.
    pub workload: FormatWorkload,
    /// Queue depth.
    pub queue_depth: u32,
    /// Our engine, IOPS.
    pub ours_iops: f64,
    /// QEMU's driver (`qemu-img bench`), IOPS; `None` without qemu-img.
    pub qemu_iops: Option<f64>,
    /// `ours_iops / qemu_iops`.
    pub ratio: Option<f64>,
    /// `qemu-img bench` on a raw file with the same writes, IOPS: QEMU's own I/O path without a
    /// format, the most its driver could reach.
    pub qemu_raw_iops: Option<f64>,
}

/// Everything `fvdsim bench engine --format` measures.
#[derive(Debug, Clone, Serialize)]
pub struct FormatBenchReport {
    /// [`crate::schema::BENCH`].
    pub schema_version: u32,
    /// `qed` or `parallels`.
    pub format: String,
    /// Virtual disk size, bytes.
    pub disk_bytes: u64,
    /// Cluster size and write stride, bytes.
    pub cluster_bytes: u64,
    /// `qemu-img --version`'s first line, or why QEMU's rows are missing.
    pub qemu: String,
    /// The rows.
    pub rows: Vec<FormatRow>,
}

fn qemu_name(format: FormatName) -> &'static str {
    match format {
        FormatName::Qed => "qed",
        FormatName::Parallels => "parallels",
        FormatName::Fvd => unreachable!("FVD has its own table (bench engine without --format)"),
    }
}

/// Our engine: create a fresh image, then the workload with `queue_depth` writers.
fn run_ours(
    options: &EngineBenchOptions,
    dir: &Path,
    format: FormatName,
    queue_depth: u32,
    workload: FormatWorkload,
) -> Result<f64> {
    let path = dir.join(format!("ours.{}", qemu_name(format)));
    let _ = std::fs::remove_file(&path);
    let executor = HostExecutor::new();
    let device: Rc<dyn BlockDevice> = Rc::new(FileDevice::create(&path, 0)?);
    let env = Rc::new(HostEnv::new(&executor, fvd_sim::Seed(1)));
    let (size, cluster) = (options.base_bytes, options.block_bytes);
    let writes = size / cluster;
    let result: Result<f64, String> = executor.block_on(async move {
        let image = match format {
            FormatName::Qed => {
                let create =
                    fvd_qed::QedCreateOptions { cluster_bytes: cluster, ..fvd_qed::QedCreateOptions::new(size) };
                fvd_qed::create(&*device, &create).await.map_err(|e| e.to_string())?;
                GuestImage::Qed(Rc::new(
                    fvd_qed::QedImage::open_writable(device, None).await.map_err(|e| e.to_string())?,
                ))
            }
            _ => {
                fvd_parallels::create(&*device, size, cluster).await.map_err(|e| e.to_string())?;
                GuestImage::Parallels(Rc::new(
                    fvd_parallels::ParallelsImage::open_writable(device).await.map_err(|e| e.to_string())?,
                ))
            }
        };
        if workload == FormatWorkload::Rewrite {
            for i in 0..writes {
                image.write(i * cluster, &[0x5a; 4096]).await.map_err(|e| e.to_string())?;
            }
            image.flush().await.map_err(|e| e.to_string())?;
        }
        let total = if workload == FormatWorkload::Rewrite { writes * REWRITE_PASSES } else { writes };
        let started = Instant::now();
        let lanes_image = image.clone();
        crate::bench_engine::run_lanes(&*env, queue_depth, total, move |i| {
            let image = lanes_image.clone();
            Box::pin(async move { image.write(i % writes * cluster, &[0xa5u8; 4096]).await.expect("benchmark write") })
        })
        .await;
        let seconds = started.elapsed().as_secs_f64();
        image.close().await.map_err(|e| e.to_string())?;
        Ok(total as f64 / seconds)
    });
    let _ = std::fs::remove_file(&path);
    result.map_err(|e| anyhow::anyhow!("{e}"))
}

/// `qemu-img bench` on a fresh image of `format` (`None`: a sparse raw file, QEMU's I/O path
/// without a format): IOPS of `workload` at `queue_depth`.
fn run_qemu(
    options: &EngineBenchOptions,
    dir: &Path,
    format: Option<FormatName>,
    queue_depth: u32,
    workload: FormatWorkload,
) -> Result<f64> {
    let fmt = format.map_or("raw", qemu_name);
    let image = dir.join(format!("qemu.{fmt}"));
    let _ = std::fs::remove_file(&image);
    let image_s = image.display().to_string();
    let size = options.base_bytes.to_string();
    match format {
        Some(_) => {
            let cluster = format!("cluster_size={}", options.block_bytes);
            qemu(&["create", "-q", "-f", fmt, "-o", &cluster, &image_s, &size])?
        }
        None => qemu(&["create", "-q", "-f", "raw", &image_s, &size])?,
    };
    let writes = options.base_bytes / options.block_bytes;
    let (depth, stride) = (queue_depth.to_string(), options.block_bytes.to_string());
    let bench = |count: u64| -> Result<f64> {
        let count_s = count.to_string();
        let args = [
            "bench",
            "-w",
            "-d",
            &depth,
            "-c",
            &count_s,
            "-s",
            "4096",
            "-S",
            &stride,
            "-t",
            "writeback",
            "-f",
            fmt,
            &image_s,
        ];
        qemu_bench_iops(&args, count)
    };
    let iops = match workload {
        FormatWorkload::Allocating => bench(writes)?,
        FormatWorkload::Rewrite => {
            bench(writes)?;
            // qemu-img bench wraps around the image: the passes rewrite the same clusters.
            bench(writes * REWRITE_PASSES)?
        }
    };
    std::fs::remove_file(&image)?;
    Ok(iops)
}

/// Runs the table for `format`. `each` sees every row as it is measured.
pub fn run_format_bench(
    options: &EngineBenchOptions,
    format: FormatName,
    mut each: impl FnMut(&FormatRow),
) -> Result<FormatBenchReport> {
    let dir = options.dir.join(format!("fvdsim-bench-{}-{}", qemu_name(format), std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let qemu = crate::qemu::QemuImg::find().ok().map(|q| q.version().to_string());
    let mut rows = Vec::new();
    for queue_depth in [1u32, 16] {
        for workload in [FormatWorkload::Allocating, FormatWorkload::Rewrite] {
            let (qemu_iops, qemu_raw_iops) = match &qemu {
                Some(_) => (
                    Some(run_qemu(options, &dir, Some(format), queue_depth, workload)?),
                    Some(run_qemu(options, &dir, None, queue_depth, workload)?),
                ),
                None => (None, None),
            };
            let ours_iops = run_ours(options, &dir, format, queue_depth, workload)?;
            let row = FormatRow {
                workload,
                queue_depth,
                ours_iops,
                qemu_iops,
                ratio: qemu_iops.map(|q| ours_iops / q),
                qemu_raw_iops,
            };
            each(&row);
            rows.push(row);
        }
    }
    std::fs::remove_dir_all(&dir)?;
    Ok(FormatBenchReport {
        schema_version: crate::schema::BENCH,
        format: qemu_name(format).into(),
        disk_bytes: options.base_bytes,
        cluster_bytes: options.block_bytes,
        qemu: qemu.unwrap_or_else(|| "qemu-img not installed: QEMU's rows skipped".into()),
        rows,
    })
}

/// The table header line.
pub fn format_header(options: &EngineBenchOptions, format: FormatName, qemu: Option<&str>) -> String {
    format!(
        "engine benchmark, {}: {} MiB disk, {} KiB clusters, {} writes of 4 KiB per pass at a cluster stride, real \
         files, no backing file\n  QEMU: {} (qemu-img bench -t writeback, same format and cluster size; `QEMU raw`: the same \
         writes on a raw file, QEMU's I/O path without a format)\n  {:<12} {:>3} {:>10} {:>10} {:>8} {:>10}",
        qemu_name(format),
        options.base_bytes >> 20,
        options.block_bytes >> 10,
        options.base_bytes / options.block_bytes,
        qemu.unwrap_or("qemu-img not installed: QEMU's rows skipped"),
        "workload",
        "qd",
        "ours",
        "QEMU",
        "ours ×",
        "QEMU raw"
    )
}

/// One row as a table line (IOPS).
pub fn format_row_line(row: &FormatRow) -> String {
    format!(
        "  {:<12} {:>3} {:>10.0} {:>10} {:>8} {:>10}",
        match row.workload {
            FormatWorkload::Allocating => "allocating",
            FormatWorkload::Rewrite => "rewrite",
        },
        row.queue_depth,
        row.ours_iops,
        row.qemu_iops.map_or("-".into(), |q| format!("{q:.0}")),
        row.ratio.map_or("-".into(), |r| format!("{r:.2}")),
        row.qemu_raw_iops.map_or("-".into(), |q| format!("{q:.0}"))
    )
}
