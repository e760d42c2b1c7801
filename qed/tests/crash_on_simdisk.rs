//! QED's allocating-write order under crashes, on the simulated disk, in the format's own crate:
//! a run of sequential writes and flushes is cut at a random event, the volatile cache resolves a
//! random subset of unflushed writes, and every written sector must then read as its value at
//! the last completed flush or as a write made since (never zeros where the backing file has data,
//! never another write's data).

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::rc::Rc;

use fvd_contract::BlockDevice;
use fvd_qed::{QedCreateOptions, QedImage, create};
use fvd_sim::{
    AtomicUnit, CrashPlan, CrashStrategy, DeviceProfile, DiskConfig, ProceduralContent, RunError, Seed, Sim, SimDisk,
    SimRng,
};

const DISK: u64 = 4 << 20;

thread_local! {
    /// Crash states whose check was compared with `qemu-img check`.
    static CHECKED_WITH_QEMU: std::cell::Cell<u32> = const { std::cell::Cell::new(0) };
    /// Of those, states where qemu-img found leaks or corruptions.
    static DIRTY_STATES: std::cell::Cell<u32> = const { std::cell::Cell::new(0) };
}
const CLUSTER: u64 = 4096;

/// Per sector: the value at the last completed flush and those written since (0 = original:
/// backing data or zeros; `n` = write `n`'s fill byte).
#[derive(Default)]
struct Model {
    sectors: BTreeMap<u64, (u8, Vec<u8>)>,
}

/// `qemu-img check`'s corruptions and leaks for the image bytes `bytes` (backing file
/// `base.raw` beside it when given); `None` without qemu-img.
fn qemu_check(dir: &std::path::Path, bytes: &[u8], base: Option<&[u8]>) -> Option<(u64, u64)> {
    let image = dir.join("crash.qed");
    std::fs::write(&image, bytes).ok()?;
    if let Some(base) = base {
        std::fs::write(dir.join("base.raw"), base).ok()?;
    }
    let output = std::process::Command::new("qemu-img")
        .args(["check", "-f", "qed", "--output=json"])
        .arg(&image)
        .output()
        .ok()?;
    let report: serde_json::Value = serde_json::from_slice(&output.stdout).ok()?;
    let field = |name: &str| report.get(name).and_then(serde_json::Value::as_u64).unwrap_or(0);
    Some((field("corruptions"), field("leaks")))
}

fn run_case(seed: u64, with_backing: bool) -> Result<(), String> {
    let sim = Sim::new(Seed(seed));
    let handle = sim.handle();
    let image = SimDisk::new(&handle, "image", 0, DiskConfig::new(DeviceProfile::ssd()));
    let content = ProceduralContent { seed };
    let backing = with_backing.then(|| {
        SimDisk::with_content(&handle, "base", DISK * 3 / 4, DiskConfig::new(DeviceProfile::ssd()), Rc::new(content))
    });
    let device: Rc<dyn BlockDevice> = Rc::new(image.clone());
    let backing_device = backing.clone().map(|b| Rc::new(b) as Rc<dyn BlockDevice>);
    let model = Rc::new(RefCell::new(Model::default()));
    let options = QedCreateOptions {
        cluster_bytes: CLUSTER,
        backing_name: with_backing.then(|| "base.raw".to_string()),
        ..QedCreateOptions::new(DISK)
    };
    let (d, b) = (Rc::clone(&device), backing_device.clone());
    sim.run(async move {
        create(&*d, &options).await.expect("create");
        let _ = QedImage::open_writable(d, b).await.expect("open");
    })
    .map_err(|e| format!("create: {e}"))?;
    let mut control = SimRng::stream(Seed(seed), "qed-crash");
    let halt_at = sim.event_count() + control.range_inclusive(1, 600);
    sim.halt_after_events(Some(halt_at));
    let (d, b, m) = (Rc::clone(&device), backing_device.clone(), Rc::clone(&model));
    let mut rng = SimRng::stream(Seed(seed), "qed-workload");
    let workload = sim.run(async move {
        let qed = QedImage::open_writable(d, b).await.expect("open");
        for write in 1..=40u8 {
            if rng.below(5) == 0 {
                qed.flush().await.expect("flush");
                for (durable, since) in m.borrow_mut().sectors.values_mut() {
                    if let Some(last) = since.last() {
                        *durable = *last;
                    }
                    since.clear();
                }
            }
            let sectors = rng.range_inclusive(1, 3 * CLUSTER / 512);
            let first = rng.below(DISK / 512 - sectors + 1);
            for sector in first..first + sectors {
                m.borrow_mut().sectors.entry(sector).or_default().1.push(write);
            }
            qed.write(first * 512, &vec![write; (sectors * 512) as usize]).await.expect("write");
        }
    });
    match workload {
        Ok(()) | Err(RunError::Halted(_)) => {}
        Err(other) => return Err(format!("workload: {other}")),
    }
    sim.halt_after_events(None);
    sim.abort_all_tasks();
    let plan = CrashPlan { strategy: CrashStrategy::RANDOM, atomic_unit: AtomicUnit::Sector };
    image.crash(plan);
    if let Some(b) = &backing {
        b.crash(CrashPlan { strategy: CrashStrategy::Clean, atomic_unit: AtomicUnit::Sector });
    }
    // The crash state as QEMU sees it: `qemu-img check` (no repair) and ours must agree on the
    // corruptions and leaks (every fourth seed: each check is a process).
    if seed.is_multiple_of(4) {
        let mut bytes = vec![0u8; device.len_bytes() as usize];
        image.peek(0, &mut bytes);
        let base = with_backing.then(|| {
            let mut base = vec![0u8; (DISK * 3 / 4) as usize];
            backing.as_ref().expect("a backing disk").peek(0, &mut base);
            base
        });
        let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
        if let Some((corruptions, leaks)) = qemu_check(dir.path(), &bytes, base.as_deref()) {
            let (d, b) = (Rc::clone(&device), backing_device.clone());
            let ours = sim
                .run(async move {
                    let qed = QedImage::open(d, b).await.map_err(|e| e.to_string())?;
                    qed.check(false).await.map_err(|e| e.to_string())
                })
                .map_err(|e| format!("check: {e}"))??;
            if (ours.corruptions, ours.leaks) != (corruptions, leaks) {
                return Err(format!(
                    "check disagrees with qemu-img: ours {} corruptions, {} leaks ({:?}); qemu-img {corruptions}, {leaks}",
                    ours.corruptions, ours.leaks, ours.messages
                ));
            }
            CHECKED_WITH_QEMU.with(|c| c.set(c.get() + 1));
            if corruptions + leaks > 0 {
                DIRTY_STATES.with(|c| c.set(c.get() + 1));
            }
        }
    }
    // Recovery: a writable open (check and repair when NEED_CHECK is set, as QEMU does).
    let sectors: Vec<u64> = model.borrow().sectors.keys().copied().collect();
    let (d, b) = (Rc::clone(&device), backing_device);
    let read = sim
        .run(async move {
            let qed = match QedImage::open_writable(d, b).await {
                Ok(qed) => qed,
                // A crash before the image was ever written leaves nothing to read.
                Err(error) => return Err(format!("open after the crash: {error}")),
            };
            let mut out = Vec::new();
            for sector in sectors {
                let mut buf = vec![0u8; 512];
                qed.read(sector * 512, &mut buf).await.map_err(|e| format!("read sector {sector}: {e}"))?;
                out.push((sector, buf));
            }
            Ok(out)
        })
        .map_err(|e| format!("read back: {e}"))??;
    let model = model.borrow();
    for (sector, bytes) in read {
        let (durable, since) = &model.sectors[&sector];
        let allowed: Vec<u8> = std::iter::once(*durable).chain(since.iter().copied()).collect();
        let original =
            if with_backing && sector * 512 < DISK * 3 / 4 { content.sector(sector).to_vec() } else { vec![0u8; 512] };
        let ok = allowed.iter().any(|&v| if v == 0 { bytes == original } else { bytes.iter().all(|b| *b == v) });
        if !ok {
            return Err(format!(
                "sector {sector} holds {:02x?}.. where only {allowed:?} (0 = original) are allowed",
                &bytes[..8]
            ));
        }
    }
    Ok(())
}

#[test]
fn every_sector_holds_a_legal_value_after_a_crash_at_any_point_of_allocating_writes() {
    let mut failures = Vec::new();
    for seed in 1..=120u64 {
        for with_backing in [false, true] {
            if let Err(message) = run_case(seed, with_backing) {
                failures.push(format!("seed {seed} backing {with_backing}: {message}"));
            }
        }
    }
    assert!(failures.is_empty(), "{} of 240 failed:\n{}", failures.len(), failures.join("\n"));
    let compared = CHECKED_WITH_QEMU.with(std::cell::Cell::get);
    if compared == 0 {
        eprintln!("NOTICE: qemu-img is not installed: crash states were not compared with qemu-img check");
    } else {
        assert_eq!(compared, 60, "every fourth seed, both kinds of image");
        let dirty = DIRTY_STATES.with(std::cell::Cell::get);
        eprintln!("{compared} crash states compared with qemu-img check, {dirty} with leaks or corruptions");
        assert!(dirty > 0, "no compared crash state had leaks or corruptions: the comparison proved nothing");
    }
}

#[test]
fn a_failed_need_check_write_is_written_again_before_the_next_allocation() {
    // Found by a 10-minute swarm (`fvdsim run --swarm-seed 0xc9362beda7950804`, and
    // 0x14af9d8dbacd3362): the header write setting NEED_CHECK failed (an injected media error)
    // after memory had taken the flag, so every later allocation skipped it, and a crash kept an
    // L2 entry beyond the end of the file in an image that no repair looked at.
    use fvd_sim::{FaultEffect, FaultOp, FaultPlan, FaultRule};
    let sim = Sim::new(Seed(1));
    let handle = sim.handle();
    let image = SimDisk::new(&handle, "image", 0, DiskConfig::new(DeviceProfile::ssd()));
    let device: Rc<dyn BlockDevice> = Rc::new(image.clone());
    let header_fails = FaultPlan {
        rules: vec![FaultRule {
            op: Some(FaultOp::Write),
            request_range: None,
            offset_range_bytes: Some((0, 512)),
            effect: FaultEffect::MediaError,
        }],
        ..FaultPlan::default()
    };
    let durable_needs_check = |image: &SimDisk| {
        let mut bytes = vec![0u8; 512];
        image.peek_durable(0, &mut bytes);
        fvd_qed::QedHeader::decode(&bytes, image.len_bytes()).expect("a valid header").needs_check()
    };
    let (d, disk) = (Rc::clone(&device), image.clone());
    sim.run(async move {
        create(&*d, &QedCreateOptions { cluster_bytes: CLUSTER, ..QedCreateOptions::new(DISK) }).await.expect("create");
        let qed = QedImage::open_writable(Rc::clone(&d), None).await.expect("open");
        disk.set_faults(header_fails);
        qed.write(0, &[1u8; 4096]).await.expect_err("the header write fails, so does the allocation");
        disk.set_faults(FaultPlan::default());
        qed.write(CLUSTER * 7, &[2u8; 4096]).await.expect("the next allocation");
    })
    .expect("no stall");
    assert!(durable_needs_check(&image), "NEED_CHECK is durable before the next allocation's L2 update");
}
