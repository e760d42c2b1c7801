//! `fvdsim bench`: wall-clock figures of the simulator (and, later, the engine).
//!
//! Speed targets live here, printed as figures, never in timed tests.

use std::cell::RefCell;
use std::rc::Rc;
use std::time::Instant;

use fvd_engine::{BlockDevice, WriteFlags};
use fvd_sim::{AtomicUnit, CrashPlan, CrashStrategy, DeviceProfile, DiskConfig, RunError, Seed, Sim, SimDisk};
use serde::{Deserialize, Serialize};

/// Options of the sim benchmark.
#[derive(Debug, Clone, Copy)]
pub struct SimBenchOptions {
    /// Master seed.
    pub seed: Seed,
    /// 4 KiB writes in each run of a random-write figure.
    pub writes: u64,
    /// Concurrent writer tasks (queue depth offered to the disk).
    pub writers: u64,
    /// Writes per writer between guest flushes.
    pub writes_per_flush: u64,
    /// Crash-plus-reopen cycles in the crash figure.
    pub crash_cycles: u64,
    /// Measure only random writes of this payload on a device of this many bytes (no other
    /// sizes, no copy floor): for profiling one case.
    pub only: Option<(u64, BenchPayload)>,
    /// Runs of each random-write figure; the fastest is reported (the machine's noise only ever
    /// slows a run down), the slowest beside it.
    pub repeats: u32,
}

impl Default for SimBenchOptions {
    fn default() -> SimBenchOptions {
        SimBenchOptions {
            seed: Seed(1),
            writes: 1_000_000,
            writers: 32,
            writes_per_flush: 64,
            crash_cycles: 2_000,
            only: None,
            repeats: 3,
        }
    }
}

/// The random-write figure.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RandomWriteFigures {
    /// What was written.
    pub data: BenchPayload,
    /// Device size, bytes.
    pub device_bytes: u64,
    /// Untimed 4 KiB writes before the measured ones, every page once (so the measured writes
    /// replace resident pages, as in a long run, instead of paying the first touch of memory).
    pub fill_writes: u64,
    /// Wall time of the fill, seconds (in the reported run, which may reuse memory an earlier
    /// repeat freed: the first run's fill includes the first touch of the device's memory).
    pub fill_wall_seconds: f64,
    /// 4 KiB writes completed in the measured phase.
    pub writes: u64,
    /// Guest flushes completed.
    pub flushes: u64,
    /// Wall time of the fastest run, seconds.
    pub wall_seconds: f64,
    /// The headline: simulated 4 KiB writes per wall second in the fastest of the repeated runs
    /// (target ≥ 1,000,000).
    pub writes_per_wall_second: f64,
    /// The same in the slowest run (how noisy the machine was).
    pub slowest_writes_per_wall_second: f64,
    /// Runs measured.
    pub runs: u32,
    /// Simulated time the writes took on the `nvme` profile, seconds.
    pub simulated_seconds: f64,
    /// Events logged.
    pub events: u64,
    /// Disk memory at the end (pages plus volatile-cache bookkeeping), bytes.
    pub resident_bytes: u64,
}

/// The crash-cycle figure.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CrashCycleFigures {
    /// Device size, bytes.
    pub device_bytes: u64,
    /// Cycles run (each: a burst of concurrent writes and flushes, a crash at a random event,
    /// crash-state resolution, reopen and a 64 KiB read).
    pub cycles: u64,
    /// Unflushed writes resolved at crashes, in all.
    pub writes_resolved: u64,
    /// Wall time, seconds.
    pub wall_seconds: f64,
    /// The headline: crash-plus-reopen cycles per wall second.
    pub cycles_per_wall_second: f64,
}

/// Everything `fvdsim bench sim` measures ([`crate::schema::BENCH`] 3).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SimBenchReport {
    /// [`crate::schema::BENCH`].
    pub schema_version: u32,
    /// The master seed.
    pub seed: String,
    /// Random 4 KiB writes with the crash model on, for each device size (4 MiB, 64 MiB, 1 GiB)
    /// and payload (stamped sectors as workloads write, held as symbols; foreign bytes, held as
    /// bytes: the memory-bound case).
    pub random_write: Vec<RandomWriteFigures>,
    /// For each device size: the bare cost of keeping foreign data, 4 KiB copies into random
    /// resident pages of a buffer of that size (no simulator at all), measured in the same
    /// invocation: the ceiling of any simulator holding foreign bytes on this machine.
    pub copy_floor: Vec<CopyFloorFigures>,
    /// Crash-plus-reopen cycles on a 64 MiB device.
    pub crash_cycles: CrashCycleFigures,
}

/// The bare memory cost of foreign data at one size.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CopyFloorFigures {
    /// Buffer size, bytes (all of it resident before timing).
    pub device_bytes: u64,
    /// 4 KiB copies per wall second, fastest of the runs.
    pub copies_per_wall_second: f64,
}

/// Device sizes every figure is measured at.
pub const DEVICE_SIZES_BYTES: [u64; 3] = [4 << 20, 64 << 20, 1 << 30];

/// Runs the sim benchmark.
pub fn run_sim_bench(options: SimBenchOptions) -> SimBenchReport {
    let cases: Vec<(u64, BenchPayload)> = match options.only {
        Some(case) => vec![case],
        None => DEVICE_SIZES_BYTES
            .iter()
            .flat_map(|&size| [(size, BenchPayload::Stamped), (size, BenchPayload::Foreign)])
            .collect(),
    };
    let random_write = cases.into_iter().map(|(size, data)| best_of(options, size, data)).collect();
    let copy_floor = match options.only {
        Some(_) => Vec::new(),
        None => DEVICE_SIZES_BYTES
            .iter()
            .map(|&size| CopyFloorFigures {
                device_bytes: size,
                copies_per_wall_second: (0..options.repeats.max(1))
                    .map(|_| copy_floor(size, options.writes))
                    .fold(0.0, f64::max),
            })
            .collect(),
    };
    SimBenchReport {
        schema_version: crate::schema::BENCH,
        seed: options.seed.to_string(),
        random_write,
        copy_floor,
        crash_cycles: crash_cycles(options),
    }
}

/// The fastest of `options.repeats` runs of one random-write figure (the simulated run is the
/// same each time: only the wall clock differs).
fn best_of(options: SimBenchOptions, device_bytes: u64, data: BenchPayload) -> RandomWriteFigures {
    let runs: Vec<RandomWriteFigures> =
        (0..options.repeats.max(1)).map(|_| random_writes(options, device_bytes, data)).collect();
    let slowest = runs.iter().map(|r| r.writes_per_wall_second).fold(f64::INFINITY, f64::min);
    let count = runs.len() as u32;
    let mut best = runs
        .into_iter()
        .max_by(|a, b| a.writes_per_wall_second.total_cmp(&b.writes_per_wall_second))
        .expect("at least one run");
    best.slowest_writes_per_wall_second = slowest;
    best.runs = count;
    best
}

/// 4 KiB copies per wall second into random pages of a resident buffer of `bytes`: what keeping
/// foreign data costs before any simulation.
fn copy_floor(bytes: u64, copies: u64) -> f64 {
    let pages = (bytes / 4096).max(1) as usize;
    let mut memory: Vec<Box<[u8; 4096]>> = (0..pages).map(|i| Box::new([i as u8; 4096])).collect();
    let mut rng = fvd_sim::SimRng::stream(Seed(1), fvd_sim::streams::BENCH_COPY_FLOOR);
    let source = [0x5au8; 4096];
    let started = Instant::now();
    for _ in 0..copies {
        let page = rng.below(pages as u64) as usize;
        memory[page].copy_from_slice(&source);
    }
    let seconds = started.elapsed().as_secs_f64();
    std::hint::black_box(&memory);
    copies as f64 / seconds
}

/// Device size of the crash-cycle figure.
const CRASH_CYCLE_DEVICE_BYTES: u64 = 64 << 20;

/// What the random-write figure writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum BenchPayload {
    /// Stamped sectors, as every fvdsim workload writes (held as symbols by the disk).
    Stamped,
    /// A constant byte per writer, held as bytes (foreign data: the memory-bound case).
    Foreign,
}

/// Which pages a writer of [`write_phase`] writes.
#[derive(Debug, Clone, Copy)]
enum PagePattern {
    /// Writer `w` of `W` writes pages `w, w + W, w + 2W, ...` once each (the fill).
    Every,
    /// Uniformly random pages (the measured phase).
    Random,
}

/// `writes_per_writer` 4 KiB writes by each of `options.writers` concurrent writers, a guest
/// flush every `options.writes_per_flush` of them; stamped writes number their stamps from
/// `first_write_id`. Returns the flushes completed.
fn write_phase(
    sim: &Sim,
    disk: &SimDisk,
    options: SimBenchOptions,
    data: BenchPayload,
    pattern: PagePattern,
    writes_per_writer: u64,
    first_write_id: u64,
) -> u64 {
    let seed = options.seed;
    let pages = disk.len_bytes() / 4096;
    let rng = Rc::new(RefCell::new(sim.stream(fvd_sim::streams::WORKLOAD)));
    let flushes = Rc::new(RefCell::new(0u64));
    let handle = sim.handle();
    let tasks_disk = disk.clone();
    let tasks_flushes = Rc::clone(&flushes);
    sim.run(async move {
        let joins: Vec<_> = (0..options.writers)
            .map(|writer| {
                let disk = tasks_disk.clone();
                let rng = Rc::clone(&rng);
                let flushes = Rc::clone(&tasks_flushes);
                handle.spawn("writer", async move {
                    let mut buffer = [writer as u8; 4096];
                    for i in 0..writes_per_writer {
                        let page = match pattern {
                            PagePattern::Every => writer + i * options.writers,
                            PagePattern::Random => rng.borrow_mut().below(pages),
                        };
                        if data == BenchPayload::Stamped {
                            // What every fvdsim workload writes: a stamp naming the write and sector.
                            let write_id = first_write_id + writer * writes_per_writer + i;
                            fvd_sim::disk::content::fill_stamp(seed.0, write_id, page * 8, &mut buffer);
                        }
                        disk.write_at(page * 4096, &buffer, WriteFlags::NONE)
                            .await
                            .expect("no faults in the benchmark");
                        if (i + 1) % options.writes_per_flush == 0 {
                            disk.flush().await.expect("no faults in the benchmark");
                            *flushes.borrow_mut() += 1;
                        }
                    }
                })
            })
            .collect();
        for join in joins {
            join.await;
        }
    })
    .expect("the benchmark workload cannot stall");
    *flushes.borrow()
}

fn random_writes(options: SimBenchOptions, device_bytes: u64, data: BenchPayload) -> RandomWriteFigures {
    let sim = Sim::new(options.seed);
    let disk = SimDisk::new(&sim.handle(), "image", device_bytes, DiskConfig::new(DeviceProfile::nvme()));
    // Fill: every page written once, so the measured writes replace resident pages (the steady
    // state of a long run, and what the copy floor measures) instead of paying the first touch
    // of fresh memory.
    // (A device of whole MiB has a multiple of 32 pages: with the default 32 writers, all.)
    let fill_per_writer = device_bytes / 4096 / options.writers;
    let fill_started = Instant::now();
    write_phase(&sim, &disk, options, data, PagePattern::Every, fill_per_writer, 1);
    let fill_wall_seconds = fill_started.elapsed().as_secs_f64();
    let fill_writes = fill_per_writer * options.writers;
    let (events_before, simulated_before_ns) = (sim.event_count(), sim.now_ns());
    let per_writer = options.writes / options.writers;
    let started = Instant::now();
    let flushes = write_phase(&sim, &disk, options, data, PagePattern::Random, per_writer, 1 + fill_writes);
    let wall_seconds = started.elapsed().as_secs_f64();
    let writes = per_writer * options.writers;
    RandomWriteFigures {
        data,
        device_bytes,
        fill_writes,
        fill_wall_seconds,
        writes,
        flushes,
        wall_seconds,
        writes_per_wall_second: writes as f64 / wall_seconds,
        slowest_writes_per_wall_second: writes as f64 / wall_seconds,
        runs: 1,
        simulated_seconds: (sim.now_ns() - simulated_before_ns) as f64 / 1e9,
        events: sim.event_count() - events_before,
        resident_bytes: disk.resident_bytes(),
    }
}

fn crash_cycles(options: SimBenchOptions) -> CrashCycleFigures {
    const DEVICE_BYTES: u64 = CRASH_CYCLE_DEVICE_BYTES;
    let sim = Sim::new(options.seed);
    let disk = SimDisk::new(&sim.handle(), "image", DEVICE_BYTES, DiskConfig::new(DeviceProfile::ssd()));
    let mut control = sim.stream(fvd_sim::streams::BENCH_CRASH_POINTS);
    let rng = Rc::new(RefCell::new(sim.stream(fvd_sim::streams::WORKLOAD)));
    let mut writes_resolved = 0u64;
    let started = Instant::now();
    for _ in 0..options.crash_cycles {
        // A burst: 8 writers, 16 writes each with a flush halfway, crashed at a random event.
        let halt_at = sim.event_count() + 1 + control.below(300);
        sim.halt_after_events(Some(halt_at));
        let handle = sim.handle();
        let burst_disk = disk.clone();
        let burst_rng = Rc::clone(&rng);
        let outcome = sim.run(async move {
            let joins: Vec<_> = (0..8u8)
                .map(|writer| {
                    let disk = burst_disk.clone();
                    let rng = Rc::clone(&burst_rng);
                    handle.spawn("writer", async move {
                        let buffer = [writer; 4096];
                        for i in 0..16 {
                            let page = rng.borrow_mut().below(DEVICE_BYTES / 4096);
                            let _ = disk.write_at(page * 4096, &buffer, WriteFlags::NONE).await;
                            if i == 8 {
                                let _ = disk.flush().await;
                            }
                        }
                    })
                })
                .collect();
            for join in joins {
                join.await;
            }
        });
        assert!(matches!(outcome, Ok(()) | Err(RunError::Halted(_))), "burst ended with {outcome:?}");
        sim.halt_after_events(None);
        sim.abort_all_tasks();
        let record = disk.crash(CrashPlan { strategy: CrashStrategy::RANDOM, atomic_unit: AtomicUnit::Sector });
        writes_resolved += record.writes.len() as u64;
        // Reopen: read the first 64 KiB, as an engine reads its header and bitmap.
        let reader = disk.clone();
        sim.run(async move {
            let mut header = vec![0u8; 64 * 1024];
            reader.read_at(0, &mut header).await.expect("no faults in the benchmark");
        })
        .expect("reopen read cannot stall");
    }
    let wall_seconds = started.elapsed().as_secs_f64();
    CrashCycleFigures {
        device_bytes: DEVICE_BYTES,
        cycles: options.crash_cycles,
        writes_resolved,
        wall_seconds,
        cycles_per_wall_second: options.crash_cycles as f64 / wall_seconds,
    }
}

impl std::fmt::Display for SimBenchReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let c = &self.crash_cycles;
        let defaults = SimBenchOptions::default();
        writeln!(f, "sim benchmark (seed {})", self.seed)?;
        if let Some(first) = self.random_write.first() {
            writeln!(
                f,
                "  random 4 KiB writes, crash model on, nvme profile, {} writers, a flush every {} writes per writer, {} writes a run, fastest of {} runs (slowest in brackets); target >= 1,000,000 per second at every size",
                defaults.writers, defaults.writes_per_flush, first.writes, first.runs
            )?;
        }
        writeln!(
            f,
            "    {:>9}  {:<8} {:>12} {:>12} {:>13} {:>11} {:>14}",
            "device", "payload", "writes/s", "(slowest)", "disk memory", "copy floor", "fill writes/s"
        )?;
        for w in &self.random_write {
            let floor = self.copy_floor.iter().find(|c| c.device_bytes == w.device_bytes);
            let floor = match (w.data, floor) {
                (BenchPayload::Foreign, Some(floor)) => format!("{:.0}/s", floor.copies_per_wall_second),
                _ => "-".to_string(),
            };
            writeln!(
                f,
                "    {:>5} MiB  {:<8} {:>12.0} {:>12} {:>9.1} MiB {:>11} {:>14.0}",
                w.device_bytes >> 20,
                match w.data {
                    BenchPayload::Stamped => "stamped",
                    BenchPayload::Foreign => "foreign",
                },
                w.writes_per_wall_second,
                format!("({:.0})", w.slowest_writes_per_wall_second),
                w.resident_bytes as f64 / (1024.0 * 1024.0),
                floor,
                w.fill_writes as f64 / w.fill_wall_seconds
            )?;
        }
        writeln!(
            f,
            "    stamped: what every fvdsim workload writes (generated by the benchmark and recognised by the disk, held as symbols)"
        )?;
        writeln!(
            f,
            "    foreign: a constant byte per writer held as bytes; copy floor: bare 4 KiB copies into random resident pages of that size, no simulator (this machine's ceiling for foreign data)"
        )?;
        writeln!(
            f,
            "    measured after an untimed fill that writes every page once (the steady state of a long run); fill writes/s: that fill, first touch of the device's memory included"
        )?;
        writeln!(f, "  crash + reopen cycles, ssd profile, {} MiB device", c.device_bytes >> 20)?;
        writeln!(f, "    cycles                 {:>14}", c.cycles)?;
        writeln!(f, "    writes resolved        {:>14}", c.writes_resolved)?;
        writeln!(f, "    wall time              {:>14.3} s", c.wall_seconds)?;
        write!(f, "    cycles per wall second {:>14.0}", c.cycles_per_wall_second)
    }
}
