//! The interim main job: a crash campaign on the raw simulated disk.
//!
//! qemu-test-style testers (`fvd-v1.md` §5.3) issue reads, writes and flushes concurrently, half
//! of them near another tester's request; a write never overlaps another tester's in-flight write
//! (qemu-test's `check_conflict`), so the last completed value of each sector is well defined.
//! Every written sector is stamped with its write id and its own sector number. The world is
//! crashed at a random event with a random strategy and atomic unit, and every sector is checked
//! against what the `BlockDevice` contract allows: the value as of the last completed flush, or
//! that of any write not completed before that flush was submitted. The FVD engine replaces the
//! raw disk here once it lands; the oracle grows into `oracle.rs`.

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};
use std::rc::Rc;
use std::time::Instant;

use fvd_engine::{BlockDevice, WriteFlags};
use fvd_sim::{
    AtomicUnit, CrashPlan, CrashStrategy, DeviceProfile, DiskConfig, RunError, Seed, Sim, SimDisk, SimHandle, SimRng,
};

const SECTOR: u64 = 512;
const DEVICE_SECTORS: u64 = 16 * 1024; // 8 MiB
const TESTERS: usize = 8;
const MAX_SECTORS: u64 = 64;

/// Options of the interim campaign.
#[derive(Debug, Clone, Copy)]
pub struct DemoOptions {
    /// Master seed.
    pub seed: Seed,
    /// Crashes to inject.
    pub crashes: u32,
}

/// What the campaign did.
#[derive(Debug, Clone, Default)]
pub struct DemoSummary {
    /// Master seed.
    pub seed: String,
    /// Requests completed, by kind.
    pub reads: u64,
    /// Writes completed.
    pub writes: u64,
    /// Flushes completed.
    pub flushes: u64,
    /// Bytes written.
    pub write_bytes: u64,
    /// Crashes by strategy name.
    pub crashes: BTreeMap<String, u64>,
    /// Sectors checked after crashes.
    pub sectors_verified: u64,
    /// Oracle violations, one line each.
    pub failures: Vec<String>,
    /// Simulated time, seconds.
    pub simulated_seconds: f64,
    /// Wall time, seconds.
    pub wall_seconds: f64,
    /// Rolling hash of the event log.
    pub log_hash: u64,
}

/// Per-sector knowledge of the oracle.
#[derive(Default)]
struct Oracle {
    /// Value every crash must preserve unless a later write replaced it.
    durable: BTreeMap<u64, u64>,
    /// Write ids per sector that may or may not have reached the media.
    since: BTreeMap<u64, BTreeSet<u64>>,
    /// Last completed write id per sector (0 = never written).
    completed: BTreeMap<u64, u64>,
    /// In-flight write ranges per tester.
    in_flight: BTreeMap<usize, (u64, u64)>,
    /// Writes completed so far (ids).
    completed_ids: BTreeSet<u64>,
    next_write_id: u64,
    counts: (u64, u64, u64, u64),
}

fn stamp(write_id: u64, first_sector: u64, sectors: u64) -> Vec<u8> {
    let mut data = vec![0u8; (sectors * SECTOR) as usize];
    for (i, chunk) in data.chunks_exact_mut(SECTOR as usize).enumerate() {
        chunk[..8].copy_from_slice(&write_id.to_le_bytes());
        chunk[8..16].copy_from_slice(&(first_sector + i as u64).to_le_bytes());
        chunk[16..24].copy_from_slice(b"FVDSIMv1");
    }
    data
}

/// Decodes a sector: `Some((write_id, sector))` for stamped data, `None` for never-written zeros.
fn decode(sector_bytes: &[u8]) -> Result<Option<(u64, u64)>, String> {
    if sector_bytes.iter().all(|b| *b == 0) {
        return Ok(None);
    }
    let id = u64::from_le_bytes(sector_bytes[..8].try_into().expect("8 bytes"));
    let sector = u64::from_le_bytes(sector_bytes[8..16].try_into().expect("8 bytes"));
    if &sector_bytes[16..24] != b"FVDSIMv1" || sector_bytes[24..].iter().any(|b| *b != 0) {
        return Err("garbage (neither zeros nor a whole stamped sector)".into());
    }
    Ok(Some((id, sector)))
}

async fn tester(index: usize, disk: SimDisk, oracle: Rc<RefCell<Oracle>>, rng: Rc<RefCell<SimRng>>, handle: SimHandle) {
    loop {
        let (kind, first, sectors) = {
            let mut rng = rng.borrow_mut();
            let kind = rng.below(100);
            let sectors = rng.range_inclusive(1, MAX_SECTORS);
            let near = {
                let oracle = oracle.borrow();
                let others: Vec<u64> =
                    oracle.in_flight.iter().filter(|(t, _)| **t != index).map(|(_, r)| r.0).collect();
                (!others.is_empty() && rng.ratio(1, 2)).then(|| *rng.pick(&others))
            };
            let first = match near {
                Some(anchor) => {
                    (anchor + 2 * MAX_SECTORS).saturating_sub(rng.below(4 * MAX_SECTORS)).min(DEVICE_SECTORS - sectors)
                }
                None => rng.below(DEVICE_SECTORS - sectors + 1),
            };
            (kind, first, sectors)
        };
        if kind < 5 {
            let before: BTreeSet<u64> = oracle.borrow().completed_ids.clone();
            let snapshot: BTreeMap<u64, u64> = oracle.borrow().completed.clone();
            if disk.flush().await.is_err() {
                continue;
            }
            let mut oracle = oracle.borrow_mut();
            oracle.counts.2 += 1;
            // Flushes may complete out of order: a sector's durable value only moves forward
            // (its writes never overlap in flight, so later writes have larger ids).
            for (sector, id) in snapshot {
                let durable = oracle.durable.entry(sector).or_default();
                *durable = (*durable).max(id);
            }
            for ids in oracle.since.values_mut() {
                ids.retain(|id| !before.contains(id));
            }
        } else if kind < 50 {
            let mut buf = vec![0u8; (sectors * SECTOR) as usize];
            if disk.read_at(first * SECTOR, &mut buf).await.is_ok() {
                oracle.borrow_mut().counts.0 += 1;
            }
        } else {
            let conflict = oracle
                .borrow()
                .in_flight
                .iter()
                .any(|(t, (a, n))| *t != index && first < a + n && *a < first + sectors);
            if conflict {
                handle.sleep_ns(1_000).await;
                continue;
            }
            let id = {
                let mut oracle = oracle.borrow_mut();
                oracle.next_write_id += 1;
                let id = oracle.next_write_id;
                oracle.in_flight.insert(index, (first, sectors));
                for sector in first..first + sectors {
                    oracle.since.entry(sector).or_default().insert(id);
                }
                id
            };
            let data = stamp(id, first, sectors);
            let ok = disk.write_at(first * SECTOR, &data, WriteFlags::NONE).await.is_ok();
            let mut oracle = oracle.borrow_mut();
            oracle.in_flight.remove(&index);
            if ok {
                oracle.counts.1 += 1;
                oracle.counts.3 += sectors * SECTOR;
                oracle.completed_ids.insert(id);
                for sector in first..first + sectors {
                    oracle.completed.insert(sector, id);
                }
            }
        }
    }
}

/// Runs the campaign.
pub fn run_demo(options: DemoOptions) -> DemoSummary {
    let started = Instant::now();
    let sim = Sim::new(options.seed);
    let disk = SimDisk::new(&sim.handle(), "image", DEVICE_SECTORS * SECTOR, DiskConfig::new(DeviceProfile::ssd()));
    let mut control = sim.stream("crash-points");
    let workload = Rc::new(RefCell::new(sim.stream("workload")));
    let oracle = Rc::new(RefCell::new(Oracle::default()));
    let mut summary = DemoSummary { seed: options.seed.to_string(), ..DemoSummary::default() };
    for crash in 0..options.crashes {
        sim.halt_after_events(Some(sim.event_count() + 200 + control.below(3_000)));
        let handle = sim.handle();
        let (run_disk, run_oracle, run_rng) = (disk.clone(), Rc::clone(&oracle), Rc::clone(&workload));
        let outcome = sim.run(async move {
            let joins: Vec<_> = (0..TESTERS)
                .map(|i| {
                    handle.spawn(
                        "tester",
                        tester(i, run_disk.clone(), Rc::clone(&run_oracle), Rc::clone(&run_rng), handle.clone()),
                    )
                })
                .collect();
            for join in joins {
                join.await;
            }
        });
        if let Err(error) = &outcome
            && !matches!(error, RunError::Halted(_))
        {
            summary.failures.push(format!("crash {crash}: run stopped: {error}"));
            break;
        }
        sim.halt_after_events(None);
        sim.abort_all_tasks();
        let strategy = match control.below(3) {
            0 => CrashStrategy::RANDOM,
            1 => CrashStrategy::Prefix,
            _ => CrashStrategy::Clean,
        };
        let atomic_unit = *control.pick(&[AtomicUnit::Sector, AtomicUnit::Page]);
        let record = disk.crash(CrashPlan { strategy, atomic_unit });
        let name = match strategy {
            CrashStrategy::RandomSubset { .. } => "random-subset",
            CrashStrategy::Prefix => "prefix",
            CrashStrategy::Clean => "clean",
        };
        *summary.crashes.entry(name.to_string()).or_default() += 1;
        let mut oracle = oracle.borrow_mut();
        let mut buf = vec![0u8; SECTOR as usize];
        let mut after = BTreeMap::new();
        for sector in 0..DEVICE_SECTORS {
            disk.peek(sector * SECTOR, &mut buf);
            summary.sectors_verified += 1;
            let durable = oracle.durable.get(&sector).copied().unwrap_or(0);
            let since = oracle.since.get(&sector);
            let verdict = match decode(&buf) {
                Err(why) => Err(why),
                Ok(None) if durable == 0 => Ok(0),
                Ok(Some((id, stamped_sector))) if stamped_sector != sector => {
                    Err(format!("holds write {id}'s data for sector {stamped_sector}"))
                }
                Ok(Some((id, _))) if id == durable || since.is_some_and(|s| s.contains(&id)) => Ok(id),
                Ok(found) => {
                    Err(format!("holds {found:?}, durable value is write {durable}, unflushed candidates {since:?}"))
                }
            };
            match verdict {
                Ok(id) => {
                    if id != 0 {
                        after.insert(sector, id);
                    }
                }
                Err(why) => summary.failures.push(format!(
                    "crash {crash} ({name}, {} writes resolved): sector {sector} {why}",
                    record.writes.len()
                )),
            }
        }
        // After a crash the media content is all durable.
        oracle.durable = after.clone();
        oracle.completed = after;
        oracle.since.clear();
        oracle.in_flight.clear();
        if !summary.failures.is_empty() {
            break;
        }
    }
    let oracle = oracle.borrow();
    (summary.reads, summary.writes, summary.flushes, summary.write_bytes) = oracle.counts;
    summary.simulated_seconds = sim.now_ns() as f64 / 1e9;
    summary.log_hash = sim.log_hash();
    summary.wall_seconds = started.elapsed().as_secs_f64();
    summary
}

impl std::fmt::Display for DemoSummary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(f, "fvdsim: crash campaign on the raw simulated disk (the FVD engine joins with issue #3)")?;
        writeln!(f, "  seed               {}", self.seed)?;
        writeln!(
            f,
            "  requests           {} reads, {} writes ({:.1} MiB), {} flushes",
            self.reads,
            self.writes,
            self.write_bytes as f64 / 1048576.0,
            self.flushes
        )?;
        let crashes: Vec<String> = self.crashes.iter().map(|(k, v)| format!("{v} {k}")).collect();
        writeln!(f, "  crashes            {}", crashes.join(", "))?;
        writeln!(f, "  sectors verified   {}", self.sectors_verified)?;
        writeln!(f, "  failures           {}", self.failures.len())?;
        writeln!(f, "  simulated time     {:.3} s", self.simulated_seconds)?;
        writeln!(f, "  wall time          {:.3} s", self.wall_seconds)?;
        write!(f, "  event-log hash     {:#018x}", self.log_hash)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_campaign_verifies_every_sector_and_replays_exactly() {
        let options = DemoOptions { seed: Seed(3), crashes: 4 };
        let first = run_demo(options);
        assert!(first.failures.is_empty(), "{:?}", first.failures);
        assert_eq!(first.sectors_verified, 4 * DEVICE_SECTORS);
        assert!(first.writes > 0 && first.flushes > 0);
        assert_eq!(first.log_hash, run_demo(options).log_hash);
    }

    #[test]
    fn garbage_and_misplaced_sectors_are_told_apart() {
        assert_eq!(decode(&[0u8; 512]), Ok(None));
        let data = stamp(7, 100, 2);
        assert_eq!(decode(&data[512..]), Ok(Some((7, 101))));
        let mut torn = data[..512].to_vec();
        torn[300] = 1;
        assert!(decode(&torn).is_err());
    }
}
