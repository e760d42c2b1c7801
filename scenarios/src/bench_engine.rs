//! `fvdsim bench engine`: the FVD engine on real files against QEMU's qcow2 in the same
//! invocation (`qemu-img bench`, when `qemu-img` is installed), and a raw file as the ceiling.
//!
//! Every row: 4 KiB writes at a 64 KiB stride over a sparse raw base (one write per block, so each
//! allocates and copies the rest of its block from the base), buffered I/O, `fdatasync` where the
//! engine or QEMU flushes. Workloads: allocating writes with no guest flush, with a guest flush
//! every 1, 16 and 256 writes (`qemu-img bench --flush-interval`), and rewrites of the same blocks
//! (no metadata). FVD rows: bitmap and compact layouts, group and sync commit, queue depth 1 and
//! 16. Ratios are IOPS over qcow2's in the same run (rewrites: over the raw file's).

use std::cell::Cell;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::time::Instant;

use anyhow::{Context, Result};
use fvd_engine::{BaseImage, BlockDevice, CommitMode, CreateOptions, Devices, FvdImage, JournalSize, OpenOptions};
use serde::Serialize;

use crate::host::{FileDevice, HostEnv, HostExecutor};

/// Options of the engine benchmark.
#[derive(Debug, Clone)]
pub struct EngineBenchOptions {
    /// Directory for the temporary files.
    pub dir: PathBuf,
    /// Base image size, bytes (one write per block: `base_bytes / block_bytes` writes).
    pub base_bytes: u64,
    /// Block size (compact: chunk size; qcow2: cluster size), bytes; the write stride.
    pub block_bytes: u64,
}

impl Default for EngineBenchOptions {
    fn default() -> EngineBenchOptions {
        EngineBenchOptions { dir: std::env::temp_dir(), base_bytes: 256 << 20, block_bytes: 64 << 10 }
    }
}

/// What a row does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Workload {
    /// Allocating writes with a guest flush every `flush_every` writes (0: none).
    Allocating {
        /// Writes between guest flushes (0: no flush).
        flush_every: u64,
    },
    /// The same writes again over allocated blocks, no flush.
    Rewrite,
}

impl Workload {
    fn label(self) -> String {
        match self {
            Workload::Allocating { flush_every: 0 } => "allocating, no flush".into(),
            Workload::Allocating { flush_every } => format!("allocating, flush/{flush_every}"),
            Workload::Rewrite => "rewrite".into(),
        }
    }
}

/// Rewrite rows repeat the pass this many times (one pass of 4,096 writes takes a few ms on a
/// page cache: too short to time steadily).
pub const REWRITE_PASSES: u64 = 16;

/// The workloads of the table, in order.
pub const WORKLOADS: [Workload; 5] = [
    Workload::Allocating { flush_every: 0 },
    Workload::Allocating { flush_every: 1 },
    Workload::Allocating { flush_every: 16 },
    Workload::Allocating { flush_every: 256 },
    Workload::Rewrite,
];

/// One row of the table.
#[derive(Debug, Clone, Serialize)]
pub struct EngineRow {
    /// The workload.
    pub workload: Workload,
    /// Queue depth.
    pub queue_depth: u32,
    /// FVD layout: `bitmap` or `compact`.
    pub layout: String,
    /// FVD, group commit, IOPS.
    pub fvd_group_iops: f64,
    /// FVD, sync commit, IOPS.
    pub fvd_sync_iops: f64,
    /// qcow2 (qemu-img bench, writeback), IOPS; `None` without qemu-img.
    pub qcow2_iops: Option<f64>,
    /// Raw file, IOPS (rewrite rows: the ceiling).
    pub raw_iops: Option<f64>,
    /// `fvd_group_iops / qcow2_iops` (rewrites: `/ raw_iops`).
    pub group_ratio: Option<f64>,
    /// `fvd_sync_iops / qcow2_iops` (rewrites: `/ raw_iops`).
    pub sync_ratio: Option<f64>,
    /// Journal writes of the group-commit run.
    pub group_journal_writes: u64,
}

/// Everything `fvdsim bench engine` measures.
#[derive(Debug, Clone, Serialize)]
pub struct EngineBenchReport {
    /// [`crate::schema::BENCH`].
    pub schema_version: u32,
    /// Base image size, bytes.
    pub base_bytes: u64,
    /// Block size and write stride, bytes.
    pub block_bytes: u64,
    /// Writes per run.
    pub writes: u64,
    /// `qemu-img --version`'s first line, or why qcow2 was skipped.
    pub qemu: String,
    /// The rows.
    pub rows: Vec<EngineRow>,
}

fn run_fvd(
    options: &EngineBenchOptions,
    dir: &Path,
    base_path: &Path,
    compact: bool,
    commit: CommitMode,
    queue_depth: u32,
    workload: Workload,
) -> Result<(f64, u64)> {
    let image_path = dir.join("image.fvd");
    let _ = std::fs::remove_file(&image_path);
    let executor = HostExecutor::new();
    let image: Rc<dyn BlockDevice> = Rc::new(FileDevice::create(&image_path, 0)?);
    let base: Rc<dyn BlockDevice> = Rc::new(FileDevice::open(base_path, false)?);
    let devices = Devices { image, data: None, base: Some(base) };
    let mut create = CreateOptions::new(options.base_bytes);
    create.base =
        Some(BaseImage { name: base_path.display().to_string(), format: "raw".into(), len_bytes: options.base_bytes });
    create.block_size = Some(options.block_bytes);
    create.compact = compact;
    create.chunk_size = Some(options.block_bytes);
    create.storage_grow_unit = Some(64 << 20);
    create.journal = JournalSize::Bytes(1 << 20);
    let env = Rc::new(HostEnv::new(&executor, fvd_sim::Seed(1)));
    let spawner = Rc::clone(&env);
    let (block, writes) = (options.block_bytes, options.base_bytes / options.block_bytes);
    let result: Result<(f64, u64), fvd_engine::FvdError> = executor.block_on(async move {
        FvdImage::create(&devices, &create).await?;
        let image = FvdImage::open(devices, env, OpenOptions { commit, ..OpenOptions::default() }).await?;
        let flush_every = match workload {
            Workload::Rewrite => {
                for i in 0..writes {
                    image.write(i * block, &[0x5au8; 4096]).await?;
                }
                image.flush().await?;
                0
            }
            Workload::Allocating { flush_every } => flush_every,
        };
        let journal_before = image.stats().journal_writes;
        let image_for_lanes = image.clone();
        let total = if workload == Workload::Rewrite { writes * REWRITE_PASSES } else { writes };
        let started = Instant::now();
        run_lanes(&*spawner, queue_depth, total, move |i| {
            let image = image_for_lanes.clone();
            Box::pin(async move {
                image.write(i % writes * block, &[0xa5u8; 4096]).await.expect("benchmark write");
                if flush_every > 0 && (i + 1).is_multiple_of(flush_every) {
                    image.flush().await.expect("benchmark flush");
                }
            })
        })
        .await;
        let seconds = started.elapsed().as_secs_f64();
        let journal = image.stats().journal_writes - journal_before;
        image.close().await?;
        Ok((total as f64 / seconds, journal))
    });
    let _ = std::fs::remove_file(&image_path);
    result.map_err(|e| anyhow::anyhow!("{e}"))
}

/// Runs `total` requests on `queue_depth` lanes spawned through `env`: each lane takes the next
/// index and awaits `request(index)` until none is left.
pub(crate) async fn run_lanes(
    env: &dyn fvd_engine::Env,
    queue_depth: u32,
    total: u64,
    request: impl Fn(u64) -> fvd_engine::LocalFuture<'static, ()> + Clone + 'static,
) {
    let next = Rc::new(Cell::new(0u64));
    let lanes: Vec<_> = (0..queue_depth)
        .map(|_| {
            let (next, request) = (Rc::clone(&next), request.clone());
            env.spawn(
                "lane",
                Box::pin(async move {
                    loop {
                        let i = next.get();
                        if i >= total {
                            break;
                        }
                        next.set(i + 1);
                        request(i).await;
                    }
                }),
            )
        })
        .collect();
    for lane in lanes {
        lane.await;
    }
}

/// Raw-file ceiling: the same pwrites on a preallocated raw file, no metadata, no flush.
fn run_raw(options: &EngineBenchOptions, dir: &Path) -> Result<f64> {
    use std::os::unix::fs::FileExt as _;
    let path = dir.join("ceiling.raw");
    let file = std::fs::OpenOptions::new().read(true).write(true).create(true).truncate(true).open(&path)?;
    file.set_len(options.base_bytes)?;
    let writes = options.base_bytes / options.block_bytes;
    for i in 0..writes {
        file.write_all_at(&[1u8; 4096], i * options.block_bytes)?;
    }
    file.sync_data()?;
    let started = Instant::now();
    for i in 0..writes * REWRITE_PASSES {
        file.write_all_at(&[2u8; 4096], i % writes * options.block_bytes)?;
    }
    let seconds = started.elapsed().as_secs_f64();
    drop(file);
    std::fs::remove_file(&path)?;
    Ok((writes * REWRITE_PASSES) as f64 / seconds)
}

/// Runs `qemu-img ARGS`; its standard output.
///
/// Errors: qemu-img missing, or failing (its standard error).
pub(crate) fn qemu(args: &[&str]) -> Result<String> {
    let output = std::process::Command::new("qemu-img").args(args).output().context("running qemu-img")?;
    anyhow::ensure!(
        output.status.success(),
        "qemu-img {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&output.stderr).trim()
    );
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// Runs `qemu-img bench ARGS` of `requests` requests: requests per second, from the time it
/// prints ("Run completed in S seconds").
///
/// Errors: as [`qemu`], or no time in its output.
pub(crate) fn qemu_bench_iops(args: &[&str], requests: u64) -> Result<f64> {
    let out = qemu(args)?;
    let seconds: f64 = out
        .split("Run completed in ")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|s| s.parse().ok())
        .with_context(|| format!("qemu-img bench printed no time: {out}"))?;
    Ok(requests as f64 / seconds)
}

/// `qemu-img bench` on a fresh qcow2 over the base: IOPS of `workload` at `queue_depth`.
fn run_qcow2(
    options: &EngineBenchOptions,
    dir: &Path,
    base_path: &Path,
    queue_depth: u32,
    workload: Workload,
) -> Result<f64> {
    let image = dir.join("q.qcow2");
    let _ = std::fs::remove_file(&image);
    let (image_s, base_s) = (image.display().to_string(), base_path.display().to_string());
    let cluster = format!("cluster_size={}", options.block_bytes);
    qemu(&["create", "-q", "-f", "qcow2", "-b", &base_s, "-F", "raw", "-o", &cluster, &image_s])?;
    let writes = (options.base_bytes / options.block_bytes).to_string();
    let (depth, stride) = (queue_depth.to_string(), options.block_bytes.to_string());
    let bench = |flush: Option<String>| -> Result<f64> {
        let mut args = vec!["bench", "-w", "-d", &depth, "-c", &writes, "-s", "4096", "-S", &stride, "-t", "writeback"];
        let flush_arg;
        if let Some(flush) = flush {
            flush_arg = format!("--flush-interval={flush}");
            args.push(&flush_arg);
        }
        args.extend(["-f", "qcow2", &image_s]);
        qemu_bench_iops(&args, writes.parse().expect("a count"))
    };
    let iops = match workload {
        Workload::Allocating { flush_every: 0 } => bench(None)?,
        Workload::Allocating { flush_every } => bench(Some(flush_every.to_string()))?,
        Workload::Rewrite => {
            bench(None)?;
            bench(None)?
        }
    };
    std::fs::remove_file(&image)?;
    Ok(iops)
}

/// Runs the table. `each` sees every row as it is measured.
pub fn run_engine_bench(options: &EngineBenchOptions, mut each: impl FnMut(&EngineRow)) -> Result<EngineBenchReport> {
    let dir = options.dir.join(format!("fvdsim-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let base_path = dir.join("base.raw");
    FileDevice::create(&base_path, options.base_bytes)?;
    let qemu_version = crate::qemu::QemuImg::find().ok().map(|q| q.version().to_string());
    let raw = run_raw(options, &dir)?;
    let mut rows = Vec::new();
    for queue_depth in [1u32, 16] {
        for workload in WORKLOADS {
            let qcow2 = match (&qemu_version, workload) {
                // qemu-img bench refuses a flush interval below the queue depth.
                (_, Workload::Allocating { flush_every })
                    if flush_every > 0 && flush_every < u64::from(queue_depth) =>
                {
                    None
                }
                (Some(_), _) => Some(run_qcow2(options, &dir, &base_path, queue_depth, workload)?),
                (None, _) => None,
            };
            for (layout, compact) in [("bitmap", false), ("compact", true)] {
                let (group, journal) =
                    run_fvd(options, &dir, &base_path, compact, CommitMode::Group, queue_depth, workload)?;
                let (sync, _) = run_fvd(options, &dir, &base_path, compact, CommitMode::Sync, queue_depth, workload)?;
                let reference = if workload == Workload::Rewrite { Some(raw) } else { qcow2 };
                let row = EngineRow {
                    workload,
                    queue_depth,
                    layout: layout.into(),
                    fvd_group_iops: group,
                    fvd_sync_iops: sync,
                    qcow2_iops: qcow2,
                    raw_iops: (workload == Workload::Rewrite).then_some(raw),
                    group_ratio: reference.map(|r| group / r),
                    sync_ratio: reference.map(|r| sync / r),
                    group_journal_writes: journal,
                };
                each(&row);
                rows.push(row);
            }
        }
    }
    std::fs::remove_dir_all(&dir)?;
    Ok(EngineBenchReport {
        schema_version: crate::schema::BENCH,
        base_bytes: options.base_bytes,
        block_bytes: options.block_bytes,
        writes: options.base_bytes / options.block_bytes,
        qemu: qemu_version.unwrap_or_else(|| "qemu-img not installed: qcow2 rows skipped".into()),
        rows,
    })
}

/// The table header line.
pub fn header(options: &EngineBenchOptions, qemu: Option<&str>) -> String {
    format!(
        "engine benchmark: {} MiB sparse raw base, {} KiB blocks/clusters, {} writes of 4 KiB per run, real files\n  qcow2: {} (writeback; `-` where qemu-img bench refuses a flush interval below the queue depth)\n  IOPS of FVD with group and sync commit; the reference is qcow2, or the raw file for rewrites\n  {:<22} {:>3} {:<8} {:>10} {:>10} {:>10} {:>8} {:>8}",
        options.base_bytes >> 20,
        options.block_bytes >> 10,
        options.base_bytes / options.block_bytes,
        qemu.unwrap_or("qemu-img not installed: qcow2 rows skipped"),
        "workload",
        "qd",
        "layout",
        "group",
        "sync",
        "reference",
        "group ×",
        "sync ×"
    )
}

/// One row as a table line (IOPS; the reference is qcow2, or the raw file for rewrites).
pub fn row_line(row: &EngineRow) -> String {
    let reference = if row.workload == Workload::Rewrite { row.raw_iops } else { row.qcow2_iops };
    let ratio = |r: Option<f64>| r.map_or("-".into(), |r| format!("{r:.2}"));
    format!(
        "  {:<22} {:>3} {:<8} {:>10.0} {:>10.0} {:>10} {:>8} {:>8}",
        row.workload.label(),
        row.queue_depth,
        row.layout,
        row.fvd_group_iops,
        row.fvd_sync_iops,
        reference
            .map_or("-".into(), |r| format!("{r:.0}{}", if row.workload == Workload::Rewrite { " raw" } else { "" })),
        ratio(row.group_ratio),
        ratio(row.sync_ratio)
    )
}
