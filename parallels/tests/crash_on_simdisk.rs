//! Parallels under crashes, on the simulated disk, in the format's own crate: a run of sequential
//! writes and flushes is cut at a random event, the volatile cache resolves a random subset of
//! unflushed writes, a writable open repairs (as QEMU's does), and every written sector must then
//! read as its value at the last completed flush or as a write made since (never another write's
//! data). Every fourth crash state also goes to `qemu-img check`, whose findings ours must match.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::rc::Rc;

use fvd_contract::BlockDevice;
use fvd_parallels::{ParallelsImage, create};
use fvd_sim::{AtomicUnit, CrashPlan, CrashStrategy, DeviceProfile, DiskConfig, RunError, Seed, Sim, SimDisk, SimRng};

const DISK: u64 = 4 << 20;

thread_local! {
    /// Crash states whose check was compared with `qemu-img check`.
    static CHECKED_WITH_QEMU: std::cell::Cell<u32> = const { std::cell::Cell::new(0) };
    /// Of those, states where qemu-img found leaks or corruptions.
    static DIRTY_STATES: std::cell::Cell<u32> = const { std::cell::Cell::new(0) };
}
const CLUSTER: u64 = 64 << 10;

/// Per sector: the value at the last completed flush and those written since (0 = original:
/// backing data or zeros; `n` = write `n`'s fill byte).
#[derive(Default)]
struct Model {
    sectors: BTreeMap<u64, (u8, Vec<u8>)>,
}

/// `qemu-img check`'s corruptions and leaks for the image bytes `bytes`; `None` without
/// qemu-img (or when it aborts: a known QEMU 10.0.2 bug, docs/parallels.md).
fn qemu_check(dir: &std::path::Path, bytes: &[u8]) -> Option<(u64, u64)> {
    let image = dir.join("crash.prl");
    std::fs::write(&image, bytes).ok()?;
    let output = std::process::Command::new("qemu-img")
        .args(["check", "-f", "parallels", "--output=json"])
        .arg(&image)
        .output()
        .ok()?;
    let report: serde_json::Value = serde_json::from_slice(&output.stdout).ok()?;
    let field = |name: &str| report.get(name).and_then(serde_json::Value::as_u64).unwrap_or(0);
    Some((field("corruptions"), field("leaks")))
}

/// The world of seed `seed` after its crash: the simulator, the image disk, the engine's view of
/// it, and the model of legal sector values.
struct Crashed {
    sim: Sim,
    image: SimDisk,
    device: Rc<dyn BlockDevice>,
    model: Rc<RefCell<Model>>,
}

fn crashed(seed: u64) -> Result<Crashed, String> {
    let sim = Sim::new(Seed(seed));
    let handle = sim.handle();
    let image = SimDisk::new(&handle, "image", 0, DiskConfig::new(DeviceProfile::ssd()));
    let device: Rc<dyn BlockDevice> = Rc::new(image.clone());
    let model = Rc::new(RefCell::new(Model::default()));
    let d = Rc::clone(&device);
    sim.run(async move {
        create(&*d, DISK, CLUSTER).await.expect("create");
    })
    .map_err(|e| format!("create: {e}"))?;
    let mut control = SimRng::stream(Seed(seed), "parallels-crash");
    let halt_at = sim.event_count() + control.range_inclusive(1, 500);
    sim.halt_after_events(Some(halt_at));
    let (d, m) = (Rc::clone(&device), Rc::clone(&model));
    let mut rng = SimRng::stream(Seed(seed), "parallels-workload");
    let workload = sim.run(async move {
        let prl = ParallelsImage::open_writable(d).await.expect("open");
        for write in 1..=40u8 {
            if rng.below(5) == 0 {
                prl.flush().await.expect("flush");
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
            prl.write(first * 512, &vec![write; (sectors * 512) as usize]).await.expect("write");
        }
    });
    match workload {
        Ok(()) | Err(RunError::Halted(_)) => {}
        Err(other) => return Err(format!("workload: {other}")),
    }
    sim.halt_after_events(None);
    sim.abort_all_tasks();
    image.crash(CrashPlan { strategy: CrashStrategy::RANDOM, atomic_unit: AtomicUnit::Sector });
    Ok(Crashed { sim, image, device, model })
}

fn run_case(seed: u64) -> Result<(), String> {
    let Crashed { sim, image, device, model } = crashed(seed)?;
    // The BAT is written only after the clusters it names are durable: no crash state has an
    // entry beyond the end of the file (QEMU's order can leave one; its check aborts on it).
    let d = Rc::clone(&device);
    let before_repair = sim
        .run(async move {
            let prl = ParallelsImage::open(d).await.map_err(|e| e.to_string())?;
            prl.check(false).await.map_err(|e| e.to_string())
        })
        .map_err(|e| format!("check: {e}"))??;
    if let Some(outside) = before_repair.messages.iter().find(|m| m.contains("outside image")) {
        return Err(format!("the crash state has a BAT entry beyond the end of the file: {outside}"));
    }
    if seed.is_multiple_of(4) {
        let mut bytes = vec![0u8; device.len_bytes() as usize];
        image.peek(0, &mut bytes);
        let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
        if let Some((corruptions, leaks)) = qemu_check(dir.path(), &bytes) {
            let d = Rc::clone(&device);
            let ours = sim
                .run(async move {
                    let prl = ParallelsImage::open(d).await.map_err(|e| e.to_string())?;
                    prl.check(false).await.map_err(|e| e.to_string())
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
    // Recovery: a writable open (repair of an image left in use, as QEMU's read-write open does).
    let sectors: Vec<u64> = model.borrow().sectors.keys().copied().collect();
    let d = Rc::clone(&device);
    let read = sim
        .run(async move {
            let prl = ParallelsImage::open_writable(d).await.map_err(|e| format!("open after the crash: {e}"))?;
            let mut out = Vec::new();
            for sector in sectors {
                let mut buf = vec![0u8; 512];
                prl.read(sector * 512, &mut buf).await.map_err(|e| format!("read sector {sector}: {e}"))?;
                out.push((sector, buf));
            }
            Ok::<_, String>(out)
        })
        .map_err(|e| format!("read back: {e}"))??;
    let model = model.borrow();
    for (sector, bytes) in read {
        let (durable, since) = &model.sectors[&sector];
        let allowed: Vec<u8> = std::iter::once(*durable).chain(since.iter().copied()).collect();
        if !allowed.iter().any(|&v| bytes.iter().all(|b| *b == v)) {
            return Err(format!(
                "sector {sector} holds {:02x?}.. where only {allowed:?} (0 = zeros) are allowed",
                &bytes[..8]
            ));
        }
    }
    Ok(())
}

#[test]
fn every_sector_holds_a_legal_value_after_a_crash_and_a_repairing_open() {
    let mut failures = Vec::new();
    for seed in 1..=240u64 {
        if let Err(message) = run_case(seed) {
            failures.push(format!("seed {seed}: {message}"));
        }
    }
    assert!(failures.is_empty(), "{} of 240 failed:\n{}", failures.len(), failures.join("\n"));
    let compared = CHECKED_WITH_QEMU.with(std::cell::Cell::get);
    if compared == 0 {
        eprintln!("NOTICE: qemu-img is not installed: crash states were not compared with qemu-img check");
    } else {
        assert!(compared >= 30, "only {compared} of 60 crash states were checked by qemu-img (it aborts on some)");
        let dirty = DIRTY_STATES.with(std::cell::Cell::get);
        eprintln!("{compared} crash states compared with qemu-img check, {dirty} with leaks or corruptions");
        assert!(dirty > 0, "no compared crash state had leaks or corruptions: the comparison proved nothing");
    }
}

#[test]
fn qemu_img_check_aborts_on_a_crash_state_that_our_repair_handles() {
    // The crash state QEMU's own order can leave (its driver writes the BAT at a flush with
    // nothing ordering it after the file's growth): an image in use whose BAT names two clusters
    // beyond the end of the file. Our engine flushed before its BAT writes until the seed-129
    // crash state of this file's workload showed it (docs/parallels.md); here it is made by hand.
    // QEMU 10.0.2's `qemu-img check` aborts on it (`parallels_check_duplicate: Assertion ret !=
    // -E2BIG`); our check names it and our repair zeroes the entries.
    let sim = Sim::new(Seed(1));
    let image = SimDisk::new(&sim.handle(), "image", 0, DiskConfig::new(DeviceProfile::ssd()));
    let device: Rc<dyn BlockDevice> = Rc::new(image.clone());
    let d = Rc::clone(&device);
    sim.run(async move {
        create(&*d, DISK, CLUSTER).await.unwrap();
        let prl = ParallelsImage::open_writable(Rc::clone(&d)).await.unwrap();
        prl.write(0, &vec![7u8; 2 * CLUSTER as usize]).await.unwrap();
        prl.close().await.unwrap();
        // In use, and BAT[5], BAT[6] name the two clusters after the end of the file.
        let header = ParallelsImage::open(Rc::clone(&d)).await.unwrap().header();
        let end = d.len_bytes();
        let mut head = vec![0u8; 64];
        d.read_at(0, &mut head).await.unwrap();
        head[44..48].copy_from_slice(&fvd_parallels::format::IN_USE.to_le_bytes());
        d.write_at(0, &head, fvd_contract::WriteFlags::NONE).await.unwrap();
        for (index, host) in [(5u64, end), (6, end + CLUSTER)] {
            let entry = header.entry_value(host).to_le_bytes();
            d.write_at(64 + 4 * index, &entry, fvd_contract::WriteFlags::NONE).await.unwrap();
        }
        d.flush().await.unwrap();
    })
    .unwrap();
    let mut bytes = vec![0u8; device.len_bytes() as usize];
    image.peek(0, &mut bytes);
    let d = Rc::clone(&device);
    let report = sim.run(async move { ParallelsImage::open(d).await.unwrap().check(false).await.unwrap() }).unwrap();
    assert_eq!(report.corruptions, 3, "{report:?}");
    assert_eq!(report.messages.iter().filter(|m| m.contains("outside image")).count(), 2, "{report:?}");
    let d = Rc::clone(&device);
    let repaired = sim.run(async move { ParallelsImage::open_writable(d).await.unwrap().check(false).await.unwrap() });
    assert_eq!(repaired.unwrap().corruptions, 1, "after the repair only the open's own in_use remains");
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("a.prl"), &bytes).unwrap();
    match std::process::Command::new("qemu-img")
        .args(["check", "-f", "parallels"])
        .arg(dir.path().join("a.prl"))
        .output()
    {
        Ok(output) => {
            let stderr = String::from_utf8_lossy(&output.stderr);
            let aborted = output.status.code().is_none() || output.status.code() == Some(134);
            eprintln!("qemu-img check on the crash state: {:?} {stderr}", output.status.code());
            // QEMU 10.0.2 aborts; a fixed QEMU must at least report the corruption (rc 2).
            assert!(aborted || output.status.code() == Some(2), "{:?}: {stderr}", output.status);
        }
        Err(_) => eprintln!("NOTICE: qemu-img is not installed: QEMU's side of this finding was not run"),
    }
}

#[test]
fn a_failed_bat_write_leaves_the_bat_dirty_for_the_next_flush() {
    // Found by a 10-minute swarm (`fvdsim run --swarm-seed 0x2a39cbbee3ee015c`): the flush
    // before the BAT write failed (an injected media error) after the BAT had been marked clean,
    // so every later guest flush skipped the BAT and completed, and a write acknowledged before
    // one of them lost its cluster's entry at the next crash.
    use fvd_sim::{FaultEffect, FaultOp, FaultPlan, FaultRule};
    let sim = Sim::new(Seed(1));
    let handle = sim.handle();
    let image = SimDisk::new(&handle, "image", 0, DiskConfig::new(DeviceProfile::ssd()));
    let device: Rc<dyn BlockDevice> = Rc::new(image.clone());
    let flushes_fail = FaultPlan {
        rules: vec![FaultRule {
            op: Some(FaultOp::Flush),
            request_range: None,
            offset_range_bytes: None,
            effect: FaultEffect::MediaError,
        }],
        ..FaultPlan::default()
    };
    let (d, disk) = (Rc::clone(&device), image.clone());
    sim.run(async move {
        create(&*d, DISK, CLUSTER).await.expect("create");
        let prl = ParallelsImage::open_writable(Rc::clone(&d)).await.expect("open");
        prl.write(CLUSTER * 5, &[7u8; 4096]).await.expect("an allocating write");
        disk.set_faults(flushes_fail);
        prl.flush().await.expect_err("the flush before the BAT fails");
        disk.set_faults(FaultPlan::default());
        prl.flush().await.expect("a guest flush that completes");
    })
    .expect("no stall");
    // Power loss: only what the completed flush made durable is left.
    sim.abort_all_tasks();
    image.crash(CrashPlan { strategy: CrashStrategy::Prefix, atomic_unit: AtomicUnit::Sector });
    let mut back = vec![0u8; 4096];
    let d = Rc::clone(&device);
    let back = sim
        .run(async move {
            let prl = ParallelsImage::open_writable(d).await.expect("open after the crash");
            prl.read(CLUSTER * 5, &mut back).await.expect("read");
            back
        })
        .expect("no stall");
    assert!(back.iter().all(|b| *b == 7), "a write acknowledged before a completed flush survives the crash");
}
