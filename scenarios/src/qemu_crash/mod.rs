//! `fvdsim qemu`: crash-consistency testing of QEMU's own image drivers (issue #13;
//! `docs/qemu-drivers.md`). From a seed, a `qemu-io` script of stamped writes, zero writes,
//! discards and flushes runs on a fresh image under QEMU's `blklogwrites` filter; the write log
//! gives every request the driver issued, in order. Crash states follow the same model as
//! `SimDisk`: everything before the last logged FLUSH survives, the writes after it persist as any
//! subset, each whole or torn at 512 bytes. Each state is written to a file, checked with
//! `qemu-img check`, repaired as a read-write open would (`check -r all` for QED and Parallels),
//! read back with `qemu-img convert -O raw`, and every written sector judged: data written before
//! a completed guest flush must be there, others hold an old or a new value, nothing else.
//!
//! Guest flush completion is located in the log by a marker: after each `flush` the script
//! writes one sector whose stamp is unique to that flush, so the first log entry holding that
//! stamp is issued after the flush completed (`qemu-io` runs its commands one at a time).

pub mod campaign;
pub mod log;
mod script;
pub mod shrink;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};
use fvd_sim::{Seed, SimRng};
use serde::{Deserialize, Serialize};

use crate::qemu::{QemuCheck, QemuImg};
use crate::stamp::SECTOR_BYTES;
use log::{LogEntry, WriteLog};
pub use script::{Op, Script, Value};

/// Formats `fvdsim qemu` drives (`qemu-img create -f`).
pub const FORMATS: [&str; 6] = ["qcow2", "qed", "parallels", "vdi", "vmdk", "vhdx"];

/// Options of a campaign.
#[derive(Debug, Clone)]
pub struct QemuOptions {
    /// `qemu-img` format name (one of [`FORMATS`]).
    pub format: String,
    /// The seed of the script and the sampled crash states.
    pub seed: Seed,
    /// Guest operations in the script.
    pub ops: u64,
    /// A raw backing file with non-zero content (formats that take one: qcow2, qed, vmdk).
    pub backing: bool,
    /// Virtual disk size, bytes.
    pub disk_bytes: u64,
    /// Cluster size for formats that have one (`-o cluster_size`); `None`: QEMU's default.
    pub cluster_bytes: Option<u64>,
    /// Most crash states to judge (spread over the log when there are more).
    pub max_states: u64,
    /// Worker threads judging crash states.
    pub jobs: usize,
    /// Output directory (script, log, report, failing states).
    pub out: PathBuf,
    /// Judge only this crash state (its number in the report), keeping its files.
    pub only_state: Option<u64>,
    /// The atomic unit of the device, bytes (512 or 4096): a torn pending write keeps or loses
    /// whole units, aligned in the image file.
    pub atomic_unit_bytes: u64,
    /// A deliberate break of the log before crash states are drawn, to prove the judge catches
    /// what it should (a self-test; `None` in real campaigns).
    pub mutation: Option<LogMutation>,
    /// The script's operations given outright (a shrunk script, or one replayed from a finding
    /// file) instead of drawn from the seed; the seed still stamps the payloads.
    pub script_ops: Option<Vec<Op>>,
    /// Stop judging once a state shows a finding of this class (`fvdsim shrink` asks only
    /// whether the failure is still there).
    pub stop_at: Option<FindingClass>,
}

impl QemuOptions {
    /// A campaign of one run on `format` with the command line's defaults: seed 1, 40
    /// operations, a 16 MiB disk, QEMU's default cluster size, 2,000 states at most, 2 jobs,
    /// 512-byte atomic units, no backing file.
    pub fn new(format: &str, out: &Path) -> QemuOptions {
        QemuOptions {
            format: format.into(),
            seed: Seed(1),
            ops: 40,
            backing: false,
            disk_bytes: 16 << 20,
            cluster_bytes: None,
            max_states: 2_000,
            jobs: 2,
            out: out.to_path_buf(),
            only_state: None,
            atomic_unit_bytes: 512,
            mutation: None,
            script_ops: None,
            stop_at: None,
        }
    }
}

/// The `qemu-img create -o` option that sets `format`'s allocation unit and the sizes a
/// campaign of several runs draws from (`None`: the format has no such option: VDI's 1 MiB
/// blocks and VMDK's 64 KiB grains are fixed in QEMU).
pub fn cluster_option(format: &str) -> Option<(&'static str, &'static [u64])> {
    match format {
        "qcow2" => Some(("cluster_size", &[4 << 10, 16 << 10, 64 << 10, 256 << 10, 2 << 20])),
        "qed" => Some(("cluster_size", &[4 << 10, 64 << 10, 1 << 20])),
        "parallels" => Some(("cluster_size", &[64 << 10, 256 << 10, 1 << 20])),
        "vhdx" => Some(("block_size", &[1 << 20, 8 << 20, 32 << 20])),
        _ => None,
    }
}

/// Deliberate breaks of the write log (self-tests of the judge).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize, Deserialize)]
pub enum LogMutation {
    /// Remove every FLUSH entry: crash states may then lose writes a completed guest flush made
    /// durable, which the judge must report as data loss.
    DropFlushes,
}

/// What went wrong in a crash state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum FindingClass {
    /// `qemu-img check` reported corruption where the format promises none.
    Corruption,
    /// `qemu-img check` aborted (killed by a signal).
    CheckCrash,
    /// The repair a read-write open runs left corruption, or the image could not be read.
    RepairFailure,
    /// A write completed before a completed guest flush is gone (an older value is there).
    DataLoss,
    /// A sector holds data no write put there (another offset's data, garbage).
    WrongData,
}

/// One crash state: the log prefix it starts from and what of the pending writes it keeps.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct CrashState {
    /// The crash comes after this many log entries.
    pub position: usize,
    /// Per pending write (log entry index after the last FLUSH before `position`): `None` lost,
    /// `Some(u64::MAX)` kept whole, `Some(mask)` kept in the atomic units (512 B or 4 KiB,
    /// aligned in the file; counted from the write's first) whose bit is set (of the first 64
    /// units; the rest lost).
    pub kept: Vec<(usize, Option<u64>)>,
}

/// One finding.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Finding {
    /// The class.
    pub class: FindingClass,
    /// The crash state's number (for `--state`).
    pub state: u64,
    /// The state itself.
    pub crash_state: CrashState,
    /// One line.
    pub message: String,
    /// The command that judges this state again.
    pub repro_command: String,
}

/// What a campaign did.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct QemuReport {
    /// Report version.
    pub schema_version: u32,
    /// `qemu-img --version`, first line.
    pub qemu_version: String,
    /// The format.
    pub format: String,
    /// The seed.
    pub seed: String,
    /// Guest operations run.
    pub ops: u64,
    /// With a backing file.
    pub backing: bool,
    /// The cluster (VHDX: block) size the image was created with; `None`: QEMU's default.
    #[serde(default)]
    pub cluster_bytes: Option<u64>,
    /// Log entries (writes, flushes, discards).
    pub log_entries: u64,
    /// Log FLUSH entries.
    pub log_flushes: u64,
    /// Bytes the driver grew the image file by without a logged write (a truncate, which
    /// blklogwrites does not log): when not 0, every state is padded to the file's final length,
    /// as if that growth had reached the disk (the log cannot say when it happened).
    #[serde(default)]
    pub unlogged_growth_bytes: u64,
    /// States were padded to the image file's final length (unlogged growth, or a format known to
    /// grow its file by truncating: VHDX).
    #[serde(default)]
    pub padded_to_final_length: bool,
    /// Crash states judged.
    pub crash_states: u64,
    /// Wall seconds judging them.
    pub judge_seconds: f64,
    /// Crash states judged per second.
    pub states_per_second: f64,
    /// `qemu-img check` exit codes over the states (0, 1, 2, 3, or "abort").
    pub check_exit_codes: BTreeMap<String, u64>,
    /// Findings by class.
    pub findings_by_class: BTreeMap<String, u64>,
    /// The findings (the first 50).
    pub findings: Vec<Finding>,
}

fn qemu_io(format: &str, image: &Path, log: &Path, script: &Path) -> Result<()> {
    // QEMU's option syntax separates options with commas; a comma inside a value is doubled.
    let escape = |path: &Path| path.display().to_string().replace(',', ",,");
    let opts = format!(
        "driver={format},file.driver=blklogwrites,file.file.filename={},file.log.filename={},file.log-sector-size=512,\
         file.log-super-update-interval=1",
        escape(image),
        escape(log)
    );
    let output = Command::new("qemu-io")
        .arg("--image-opts")
        .arg(&opts)
        .stdin(std::fs::File::open(script).context("open the script")?)
        .current_dir(script.parent().expect("the script lies in the output directory"))
        .output()
        .context("running qemu-io (apt-get install qemu-utils)")?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    if !output.status.success() || stdout.contains("error") || stdout.contains("failed") {
        bail!(
            "qemu-io on {}: {} {}{}",
            image.display(),
            output.status,
            stdout.trim(),
            String::from_utf8_lossy(&output.stderr)
        );
    }
    Ok(())
}

fn qemu_img(args: &[&str], dir: &Path) -> Result<()> {
    let output = Command::new("qemu-img").args(args).current_dir(dir).output().context("running qemu-img")?;
    if !output.status.success() {
        bail!("qemu-img {}: {}", args.join(" "), String::from_utf8_lossy(&output.stderr).trim());
    }
    Ok(())
}

/// The log positions where each guest flush is known complete: the index of the first entry
/// holding its marker's stamp (`usize::MAX` if it never reached the log).
fn flush_positions(log: &WriteLog, script: &Script) -> Vec<usize> {
    let mut found: BTreeMap<u64, usize> = BTreeMap::new();
    let markers: BTreeSet<u64> = script.markers().collect();
    for (index, entry) in log.entries.iter().enumerate() {
        let LogEntry::Write { data, .. } = entry else { continue };
        for chunk in data.chunks_exact(SECTOR_BYTES as usize) {
            if &chunk[16..24] == fvd_sim::disk::content::STAMP_MAGIC {
                let id = u64::from_le_bytes(chunk[0..8].try_into().expect("8 bytes"));
                if markers.contains(&id) {
                    found.entry(id).or_insert(index);
                }
            }
        }
    }
    script.markers().map(|id| found.get(&id).copied().unwrap_or(usize::MAX)).collect()
}

/// Crash states of `log`: at every position, every subset of up to 5 pending writes, else every
/// prefix of them and 16 seeded subsets with torn writes; deduplicated; at most `max` (spread).
fn crash_states(log: &WriteLog, rng: &mut SimRng, max: u64) -> Vec<CrashState> {
    let mut states: BTreeSet<CrashState> = BTreeSet::new();
    let mut pending: Vec<usize> = Vec::new();
    for position in 0..=log.entries.len() {
        if position > 0 {
            match &log.entries[position - 1] {
                LogEntry::Flush => pending.clear(),
                LogEntry::Write { fua: true, .. } => {}
                LogEntry::Write { .. } | LogEntry::Discard { .. } => pending.push(position - 1),
            }
        }
        if pending.len() <= 5 {
            for bits in 0u32..(1 << pending.len()) {
                let kept =
                    pending.iter().enumerate().map(|(i, &e)| (e, (bits & (1 << i) != 0).then_some(u64::MAX))).collect();
                states.insert(CrashState { position, kept });
            }
        } else {
            for cut in 0..=pending.len() {
                let kept = pending.iter().enumerate().map(|(i, &e)| (e, (i < cut).then_some(u64::MAX))).collect();
                states.insert(CrashState { position, kept });
            }
            for _ in 0..16 {
                let kept = pending
                    .iter()
                    .map(|&e| {
                        let choice = match rng.below(4) {
                            0 => None,
                            1 => Some(rng.next_u64()),
                            _ => Some(u64::MAX),
                        };
                        (e, choice)
                    })
                    .collect();
                states.insert(CrashState { position, kept });
            }
        }
    }
    let all: Vec<CrashState> = states.into_iter().collect();
    if all.len() as u64 <= max {
        return all;
    }
    let step = all.len() as f64 / max as f64;
    (0..max).map(|i| all[(i as f64 * step) as usize].clone()).collect()
}

/// The image file of `state`: the fresh image, every write before the last FLUSH, the kept
/// pending writes (whole or by atomic unit of `unit_bytes`).
fn build_image(initial: &[u8], log: &WriteLog, state: &CrashState, unit_bytes: u64) -> Vec<u8> {
    assert!(unit_bytes >= SECTOR_BYTES && unit_bytes.is_multiple_of(SECTOR_BYTES), "atomic units are whole sectors");
    let mut image = initial.to_vec();
    let apply = |image: &mut Vec<u8>, offset: u64, data: &[u8], mask: u64| {
        let end = offset as usize + data.len();
        if image.len() < end {
            image.resize(end, 0);
        }
        for (index, chunk) in data.chunks(SECTOR_BYTES as usize).enumerate() {
            let at = offset + index as u64 * SECTOR_BYTES;
            let unit = at / unit_bytes - offset / unit_bytes;
            if mask == u64::MAX || (unit < 64 && mask & (1 << unit) != 0) {
                image[at as usize..at as usize + chunk.len()].copy_from_slice(chunk);
            }
        }
    };
    let first_pending = state.kept.first().map_or(state.position, |(e, _)| *e);
    for entry in &log.entries[..first_pending.min(state.position)] {
        match entry {
            LogEntry::Write { offset_bytes, data, .. } => apply(&mut image, *offset_bytes, data, u64::MAX),
            LogEntry::Discard { offset_bytes, len_bytes } => {
                let zeros = vec![0u8; *len_bytes as usize];
                apply(&mut image, *offset_bytes, &zeros, u64::MAX);
            }
            LogEntry::Flush => {}
        }
    }
    // FUA writes among the pending ones are durable.
    for (index, entry) in log.entries.iter().enumerate().take(state.position).skip(first_pending) {
        let kept = state.kept.iter().find(|(e, _)| *e == index).map(|(_, k)| *k);
        let mask = match (entry, kept) {
            (LogEntry::Write { fua: true, .. }, _) => u64::MAX,
            (_, Some(Some(mask))) => mask,
            _ => continue,
        };
        match entry {
            LogEntry::Write { offset_bytes, data, .. } => apply(&mut image, *offset_bytes, data, mask),
            LogEntry::Discard { offset_bytes, len_bytes } => {
                let zeros = vec![0u8; (*len_bytes).min(64 << 20) as usize];
                apply(&mut image, *offset_bytes, &zeros, mask);
            }
            LogEntry::Flush => {}
        }
    }
    image
}

/// Writes `bytes` to `path`, leaving all-zero 64 KiB runs as holes (QEMU's Parallels driver
/// preallocates 128 MiB of zeros, which its log holds as data).
fn write_sparse(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::{Seek, SeekFrom, Write};
    let mut file = std::fs::File::create(path)?;
    for (index, chunk) in bytes.chunks(64 << 10).enumerate() {
        if chunk.iter().any(|b| *b != 0) {
            file.seek(SeekFrom::Start(index as u64 * (64 << 10)))?;
            file.write_all(chunk)?;
        }
    }
    file.set_len(bytes.len() as u64)
}

/// What judging one state gave: QEMU's check before any repair, and the findings (none when the
/// state is legal).
struct StateVerdict {
    check: QemuCheck,
    findings: Vec<(FindingClass, String)>,
}

/// What `qemu-img check` says of a crash state's image file before any repair, as findings: an
/// abort (QEMU 10.0.2's Parallels check asserts on a BAT entry beyond the end of the file) is a
/// check crash; a check that cannot complete (exit 1, such as Parallels' "Device or resource
/// busy" on duplicate BAT entries, or a VMDK grain table entry beyond the end of the file) is
/// corruption, except a VHDX log waiting to be replayed; corruption in an image that says it is
/// clean is corruption (QED's NEED_CHECK, Parallels' `in_use`, qcow2's dirty bit, a VHDX log to
/// replay say it may not be).
///
/// Errors: `qemu-img` cannot run or gives output that cannot be read; the image cannot be read.
pub fn check_findings(qemu: &QemuImg, format: &str, image: &Path) -> Result<(QemuCheck, Vec<(FindingClass, String)>)> {
    let mut findings = Vec::new();
    let check = qemu.check(format, image, false)?;
    // VHDX refuses a read-only open while its log needs replaying: a read-write open (the
    // repair step of judging) replays it.
    let log_to_replay = check.stderr.contains("needs to be replayed");
    let mut header = Vec::with_capacity(512);
    {
        use std::io::Read;
        let file = std::fs::File::open(image).with_context(|| format!("{}", image.display()))?;
        file.take(512).read_to_end(&mut header)?;
    }
    let dirty = log_to_replay || script::dirty_flag(format, &header);
    if check.aborted() {
        findings.push((FindingClass::CheckCrash, format!("qemu-img check aborted: {}", check.stderr)));
    } else if check.check_errors > 0 && !log_to_replay {
        findings.push((FindingClass::Corruption, format!("qemu-img check could not complete: {}", check.stderr)));
    } else if check.corruptions > 0 && !dirty {
        findings.push((
            FindingClass::Corruption,
            format!(
                "qemu-img check finds {} corruption(s) in an image that says it is clean: {}",
                check.corruptions, check.stderr
            ),
        ));
    }
    Ok((check, findings))
}

/// Judges one state in `dir`.
#[allow(clippy::too_many_arguments)]
fn judge_state(
    qemu: &QemuImg,
    options: &QemuOptions,
    script: &Script,
    flushes: &[usize],
    initial: &[u8],
    log: &WriteLog,
    number: u64,
    state: &CrashState,
    dir: &Path,
    pad_to: Option<u64>,
) -> Result<StateVerdict> {
    let format = options.format.as_str();
    let image = dir.join(format!("state-{number}.{format}"));
    let mut bytes = build_image(initial, log, state, options.atomic_unit_bytes);
    if let Some(len) = pad_to
        && (bytes.len() as u64) < len
    {
        bytes.resize(len as usize, 0);
    }
    write_sparse(&image, &bytes)?;
    let (check, mut findings) = check_findings(qemu, format, &image)?;
    // As a read-write open would: QED and Parallels repair a dirty image, VHDX replays its log.
    if matches!(format, "qed" | "parallels" | "vhdx") {
        let fixed = qemu.check(format, &image, true)?;
        if fixed.aborted() || fixed.corruptions > 0 || fixed.check_errors > 0 {
            findings.push((
                FindingClass::RepairFailure,
                format!(
                    "the repair a read-write open runs (`qemu-img check -r all`) fails or leaves {} corruption(s): {}",
                    fixed.corruptions, fixed.stderr
                ),
            ));
            return Ok(StateVerdict { check, findings });
        }
    }
    let raw = dir.join(format!("state-{number}.raw"));
    if let Err(error) = qemu.convert_to_raw(format, &image, &raw) {
        findings.push((FindingClass::RepairFailure, format!("qemu-img convert cannot read the state: {error}")));
        return Ok(StateVerdict { check, findings });
    }
    let bytes = std::fs::read(&raw)?;
    let completed = flushes.iter().filter(|&&at| at < state.position).count();
    if let Some((class, message)) = script.judge(&bytes, completed) {
        findings.push((class, message));
    }
    if options.only_state.is_none() {
        let _ = std::fs::remove_file(&image);
        let _ = std::fs::remove_file(&raw);
    }
    Ok(StateVerdict { check, findings })
}

/// Runs a campaign: the script under blklogwrites, the crash states, the judging. Writes
/// `script.qemu-io`, `write.log`, `report.json` in `options.out`.
///
/// Errors: QEMU's tools missing or failing to run the script, a log that does not parse, an
/// output directory that cannot be written.
pub fn run(options: &QemuOptions, mut progress: impl FnMut(u64, u64)) -> Result<QemuReport> {
    if !FORMATS.contains(&options.format.as_str()) {
        bail!("--format {}: one of {}", options.format, FORMATS.join(", "));
    }
    if options.atomic_unit_bytes != 512 && options.atomic_unit_bytes != 4096 {
        bail!("--atomic-unit {}: 512 or 4096", options.atomic_unit_bytes);
    }
    if options.backing && !takes_backing(&options.format) {
        bail!("--backing: {} takes no backing file here (qcow2, qed, vmdk do)", options.format);
    }
    if options.disk_bytes < 1 << 20 || options.disk_bytes > 4 << 30 || !options.disk_bytes.is_multiple_of(SECTOR_BYTES)
    {
        // The backing file and every crash state are built in memory.
        bail!("--size {}: from 1 MiB to 4 GiB, a multiple of 512", options.disk_bytes);
    }
    if options.cluster_bytes.is_some() && cluster_option(&options.format).is_none() {
        bail!("--cluster-size: QEMU's {} driver has no cluster size to choose", options.format);
    }
    if let Some(ops) = &options.script_ops {
        script::validate(ops, options.disk_bytes)?;
    }
    let qemu = QemuImg::find()?;
    // Absolute: qemu-io runs in the output directory (the script names its payloads relatively).
    let out = &std::path::absolute(&options.out).with_context(|| format!("{}", options.out.display()))?;
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    let script = Script::generate(options);
    script.write_files(out)?;
    let format = options.format.as_str();
    let image = out.join(format!("image.{format}"));
    let _ = std::fs::remove_file(&image);
    let size = options.disk_bytes.to_string();
    let mut create: Vec<String> = vec!["create".into(), "-q".into(), "-f".into(), format.into()];
    if let (Some(cluster), Some((option, _))) = (options.cluster_bytes, cluster_option(format)) {
        create.extend(["-o".into(), format!("{option}={cluster}")]);
    }
    if options.backing {
        create.extend(["-b".into(), "base.raw".into(), "-F".into(), "raw".into()]);
    }
    create.extend([image.file_name().expect("a file name").to_string_lossy().into_owned(), size]);
    qemu_img(&create.iter().map(String::as_str).collect::<Vec<_>>(), out)?;
    let initial = std::fs::read(&image)?;
    let log_path = out.join("write.log");
    let _ = std::fs::remove_file(&log_path);
    qemu_img(&["create", "-q", "-f", "raw", "write.log", "0"], out)?;
    qemu_io(format, &image, &log_path, &out.join("script.qemu-io"))?;
    let mut log = log::parse(&std::fs::read(&log_path)?)?;
    let logged_end = log
        .entries
        .iter()
        .filter_map(|e| match e {
            LogEntry::Write { offset_bytes, data, .. } => Some(offset_bytes + data.len() as u64),
            _ => None,
        })
        .fold(initial.len() as u64, u64::max);
    // blklogwrites logs no truncate: a driver that grows its file that way (VHDX allocates blocks
    // with a truncate) would leave every reconstructed state shorter than the file was. Such
    // states are padded to the file's final length, as if the growth had reached the disk.
    let final_len = std::fs::metadata(&image)?.len();
    let pad_to = (final_len > logged_end || format == "vhdx").then_some(final_len);
    // Marker positions come from the true log: the mutation breaks only the crash model's view.
    let flushes = flush_positions(&log, &script);
    if options.mutation == Some(LogMutation::DropFlushes) {
        log.entries.retain(|e| !matches!(e, LogEntry::Flush));
    }
    let mut rng = SimRng::stream(options.seed, "qemu-crash-states");
    let states = crash_states(&log, &mut rng, options.max_states);
    let chosen: Vec<(u64, CrashState)> = match options.only_state {
        Some(k) => {
            let state =
                states.get(k as usize).with_context(|| format!("--state {k}: the log has {} states", states.len()))?;
            vec![(k, state.clone())]
        }
        None => states.into_iter().enumerate().map(|(i, s)| (i as u64, s)).collect(),
    };
    let total = chosen.len() as u64;
    let started = std::time::Instant::now();
    let jobs = options.jobs.max(1);
    let work = std::sync::Mutex::new(chosen.iter());
    let results = std::sync::Mutex::new(Vec::new());
    let done = std::sync::atomic::AtomicU64::new(0);
    let stop = std::sync::atomic::AtomicBool::new(false);
    std::thread::scope(|scope| -> Result<()> {
        let mut handles = Vec::new();
        for worker in 0..jobs {
            let (work, results, done, stop, qemu, script, flushes, initial, log) =
                (&work, &results, &done, &stop, &qemu, &script, &flushes, &initial, &log);
            let dir = out.join(format!("judge-{worker}"));
            handles.push(scope.spawn(move || -> Result<()> {
                std::fs::create_dir_all(&dir)?;
                if options.backing {
                    // The image names its backing file relative to itself.
                    let _ = std::fs::remove_file(dir.join("base.raw"));
                    std::os::unix::fs::symlink(std::path::absolute(out.join("base.raw"))?, dir.join("base.raw"))?;
                }
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let Some((number, state)) = work.lock().expect("no worker panics").next() else { break };
                    let judged =
                        judge_state(qemu, options, script, flushes, initial, log, *number, state, &dir, pad_to)?;
                    if judged.findings.iter().any(|(class, _)| Some(*class) == options.stop_at) {
                        stop.store(true, std::sync::atomic::Ordering::Relaxed);
                    }
                    results.lock().expect("no worker panics").push((*number, judged));
                    done.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
                if options.only_state.is_none() {
                    let _ = std::fs::remove_dir_all(&dir);
                }
                Ok(())
            }));
        }
        loop {
            let finished = handles.iter().all(|h| h.is_finished());
            progress(done.load(std::sync::atomic::Ordering::Relaxed), total);
            if finished {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(200));
        }
        for handle in handles {
            handle.join().expect("no worker panics")?;
        }
        Ok(())
    })?;
    let judge_seconds = started.elapsed().as_secs_f64();
    let mut results = results.into_inner().expect("no worker panics");
    results.sort_by_key(|(n, _)| *n);
    let mut report = QemuReport {
        schema_version: crate::schema::QEMU_REPORT,
        qemu_version: qemu.version().to_string(),
        format: format.into(),
        seed: options.seed.to_string(),
        ops: script.ops.len() as u64,
        backing: options.backing,
        cluster_bytes: options.cluster_bytes,
        log_entries: log.entries.len() as u64,
        log_flushes: log.entries.iter().filter(|e| matches!(e, LogEntry::Flush)).count() as u64,
        unlogged_growth_bytes: pad_to.map_or(0, |len| len.saturating_sub(logged_end)),
        padded_to_final_length: pad_to.is_some(),
        crash_states: results.len() as u64,
        judge_seconds,
        states_per_second: results.len() as f64 / judge_seconds.max(1e-9),
        check_exit_codes: BTreeMap::new(),
        findings_by_class: BTreeMap::new(),
        findings: Vec::new(),
    };
    let states_by_number: BTreeMap<u64, &CrashState> = chosen.iter().map(|(n, s)| (*n, s)).collect();
    for (number, StateVerdict { check, findings }) in results {
        let code = if check.aborted() { "abort".into() } else { format!("{}", check.exit_code.unwrap_or(-1)) };
        *report.check_exit_codes.entry(code).or_default() += 1;
        for (class, message) in findings {
            let name = serde_json::to_value(class).expect("a class").as_str().unwrap_or("").to_string();
            *report.findings_by_class.entry(name).or_default() += 1;
            if report.findings.len() < 50 {
                report.findings.push(Finding {
                    class,
                    state: number,
                    crash_state: states_by_number[&number].clone(),
                    message,
                    repro_command: repro_command(options, number, out),
                });
            }
        }
    }
    std::fs::write(out.join("report.json"), serde_json::to_string_pretty(&report)?)?;
    // One file per finding: what it is, the state, how to judge it again (the script and the
    // log it came from are beside it).
    for finding in &report.findings {
        let file = FindingFile {
            kind: FINDING_KIND.into(),
            schema_version: crate::schema::QEMU_FINDING,
            qemu_version: report.qemu_version.clone(),
            run: RunSpec::of(options),
            ops: script.ops.clone(),
            script: "script.qemu-io".into(),
            write_log: "write.log".into(),
            finding: finding.clone(),
        };
        std::fs::write(finding_path(out, finding.state), serde_json::to_string_pretty(&file)?)?;
    }
    Ok(report)
}

/// The `kind` of a finding file.
pub const FINDING_KIND: &str = "fvdsim-qemu-finding";

/// Formats whose QEMU driver takes a backing file here.
pub fn takes_backing(format: &str) -> bool {
    matches!(format, "qcow2" | "qed" | "vmdk")
}

/// Where the finding of state `number` is written.
pub fn finding_path(out: &Path, number: u64) -> PathBuf {
    out.join(format!("finding-state-{number}.json"))
}

/// What a run was, as a finding file records it (everything but where it ran).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunSpec {
    /// [`QemuOptions::format`].
    pub format: String,
    /// [`QemuOptions::seed`], as `0x…`.
    pub seed: String,
    /// [`QemuOptions::ops`].
    pub ops: u64,
    /// [`QemuOptions::backing`].
    pub backing: bool,
    /// [`QemuOptions::disk_bytes`].
    pub disk_bytes: u64,
    /// [`QemuOptions::cluster_bytes`].
    pub cluster_bytes: Option<u64>,
    /// [`QemuOptions::max_states`].
    pub max_states: u64,
    /// [`QemuOptions::atomic_unit_bytes`].
    pub atomic_unit_bytes: u64,
    /// [`QemuOptions::mutation`].
    pub mutation: Option<LogMutation>,
    /// The operations were given outright (the finding file's `ops`), not drawn from the seed.
    pub explicit_ops: bool,
}

impl RunSpec {
    /// The spec of `options`.
    pub fn of(options: &QemuOptions) -> RunSpec {
        RunSpec {
            format: options.format.clone(),
            seed: options.seed.to_string(),
            ops: options.ops,
            backing: options.backing,
            disk_bytes: options.disk_bytes,
            cluster_bytes: options.cluster_bytes,
            max_states: options.max_states,
            atomic_unit_bytes: options.atomic_unit_bytes,
            mutation: options.mutation,
            explicit_ops: options.script_ops.is_some(),
        }
    }
}

/// A finding file (`finding-state-K.json`): everything needed to judge the state again without
/// the seed's generator (the operations are written out), and what was found.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FindingFile {
    /// [`FINDING_KIND`].
    pub kind: String,
    /// [`crate::schema::QEMU_FINDING`].
    pub schema_version: u32,
    /// `qemu-img --version`, first line.
    pub qemu_version: String,
    /// The run.
    pub run: RunSpec,
    /// The script's operations.
    pub ops: Vec<Op>,
    /// The script file beside it.
    pub script: String,
    /// The write log beside it.
    pub write_log: String,
    /// The finding.
    pub finding: Finding,
}

impl FindingFile {
    /// Reads a finding file.
    ///
    /// Errors: the file cannot be read, is not JSON of this shape, or is of another kind.
    pub fn read(path: &Path) -> Result<FindingFile> {
        let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        let file: FindingFile = serde_json::from_str(&text)
            .with_context(|| format!("{}: not a `fvdsim qemu` finding file", path.display()))?;
        if file.kind != FINDING_KIND {
            bail!("{}: kind {:?}, not {FINDING_KIND:?}", path.display(), file.kind);
        }
        if file.schema_version != crate::schema::QEMU_FINDING {
            bail!(
                "{}: finding file schema {} (this fvdsim reads {})",
                path.display(),
                file.schema_version,
                crate::schema::QEMU_FINDING
            );
        }
        Ok(file)
    }

    /// The options that run the finding's script again into `out`, judging only its state.
    ///
    /// Errors: a seed that does not parse.
    pub fn options(&self, out: &Path) -> Result<QemuOptions> {
        let run = &self.run;
        Ok(QemuOptions {
            seed: run.seed.parse().with_context(|| format!("seed {:?}", run.seed))?,
            ops: self.ops.len() as u64,
            backing: run.backing,
            disk_bytes: run.disk_bytes,
            cluster_bytes: run.cluster_bytes,
            max_states: run.max_states,
            only_state: Some(self.finding.state),
            atomic_unit_bytes: run.atomic_unit_bytes,
            mutation: run.mutation,
            script_ops: Some(self.ops.clone()),
            ..QemuOptions::new(&run.format, out)
        })
    }
}

/// The command that judges state `number` of a run writing into `out` again (keeping its
/// files): the seed's command line, or, for a script given outright, `--from` its finding file.
pub fn repro_command(options: &QemuOptions, number: u64, out: &Path) -> String {
    if options.script_ops.is_some() {
        return format!("fvdsim qemu --from {}", finding_path(out, number).display());
    }
    let mut command = format!(
        "fvdsim qemu --format {} --seed {:#x} --ops {} --size {} --max-states {}",
        options.format, options.seed.0, options.ops, options.disk_bytes, options.max_states
    );
    if let Some(cluster) = options.cluster_bytes {
        command += &format!(" --cluster-size {cluster}");
    }
    if options.backing {
        command += " --backing";
    }
    if options.atomic_unit_bytes != 512 {
        command += &format!(" --atomic-unit {}", options.atomic_unit_bytes);
    }
    if let Some(name) = options.mutation.and_then(|m| clap::ValueEnum::to_possible_value(&m)) {
        command += &format!(" --mutate {}", name.get_name());
    }
    command + &format!(" --state {number}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn write(offset: u64, byte: u8) -> LogEntry {
        LogEntry::Write { offset_bytes: offset * 512, data: vec![byte; 1024], fua: false }
    }

    fn arbitrary_log() -> impl Strategy<Value = WriteLog> {
        proptest::collection::vec((0u8..4, 0u64..16), 0..24).prop_map(|ops| WriteLog {
            sector_bytes: 512,
            entries: ops
                .into_iter()
                .enumerate()
                .map(|(i, (kind, at))| if kind == 0 { LogEntry::Flush } else { write(at, i as u8 + 1) })
                .collect(),
        })
    }

    proptest! {
        #[test]
        fn every_state_is_one_the_crash_model_allows_and_every_prefix_is_there(log in arbitrary_log(), seed in any::<u64>()) {
            let mut rng = SimRng::stream(Seed(seed), "test");
            let states = crash_states(&log, &mut rng, u64::MAX);
            for state in &states {
                let last_flush = log.entries[..state.position].iter().rposition(|e| matches!(e, LogEntry::Flush));
                for (entry, _) in &state.kept {
                    // Only writes after the last FLUSH before the crash are undecided.
                    prop_assert!(*entry < state.position);
                    prop_assert!(last_flush.is_none_or(|f| *entry > f), "{state:?}");
                    let is_write = matches!(log.entries[*entry], LogEntry::Write { .. });
                    prop_assert!(is_write, "entry {} is not a write", entry);
                }
            }
            // Every prefix of the log is a state (all pending writes kept).
            for position in 0..=log.entries.len() {
                prop_assert!(
                    states.iter().any(|s| s.position == position && s.kept.iter().all(|(_, k)| *k == Some(u64::MAX))),
                    "no prefix state at {position}"
                );
            }
        }
    }

    #[test]
    fn a_torn_write_keeps_whole_aligned_atomic_units() {
        // A 12 KiB write starting 1 KiB into a 4 KiB unit touches units 0..=3 of the file.
        let log = WriteLog {
            sector_bytes: 512,
            entries: vec![LogEntry::Write { offset_bytes: 1024, data: vec![9u8; 12 << 10], fua: false }],
        };
        let state = CrashState { position: 1, kept: vec![(0, Some(0b0101))] };
        let image = build_image(&[], &log, &state, 4096);
        assert_eq!(&image[1024..4096], &[9u8; 3072][..], "unit 0 kept (from the write's start)");
        assert_eq!(&image[4096..8192], &[0u8; 4096][..], "unit 1 lost whole");
        assert_eq!(&image[8192..12288], &[9u8; 4096][..], "unit 2 kept whole");
        assert_eq!(&image[12288..13312], &[0u8; 1024][..], "unit 3 lost");
    }

    #[test]
    fn a_state_keeps_the_flushed_writes_and_only_the_chosen_pending_ones() {
        let log = WriteLog { sector_bytes: 512, entries: vec![write(0, 1), LogEntry::Flush, write(2, 2), write(4, 3)] };
        let state = CrashState { position: 4, kept: vec![(2, None), (3, Some(0b10))] };
        let image = build_image(&[], &log, &state, 512);
        assert_eq!(&image[..1024], &[1u8; 1024][..], "the write before the flush survives");
        assert_eq!(&image[1024..2048], &[0u8; 1024][..], "the dropped write left nothing");
        assert_eq!(&image[2048..2560], &[0u8; 512][..], "unit 0 of the torn write lost");
        assert_eq!(&image[2560..3072], &[3u8; 512][..], "unit 1 of the torn write kept");
    }
}
