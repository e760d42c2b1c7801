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
    /// 4 KiB writes in the random-write figure.
    pub writes: u64,
    /// Concurrent writer tasks (queue depth offered to the disk).
    pub writers: u64,
    /// Writes per writer between guest flushes.
    pub writes_per_flush: u64,
    /// Crash-plus-reopen cycles in the crash figure.
    pub crash_cycles: u64,
    /// Measure only random writes of this payload on a device of this many bytes (no figures by
    /// device size): for profiling one case.
    pub only: Option<(u64, BenchPayload)>,
}

impl Default for SimBenchOptions {
    fn default() -> SimBenchOptions {
        SimBenchOptions {
            seed: Seed(1),
            writes: 2_000_000,
            writers: 32,
            writes_per_flush: 64,
            crash_cycles: 2_000,
            only: None,
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
    /// 4 KiB writes completed.
    pub writes: u64,
    /// Guest flushes completed.
    pub flushes: u64,
    /// Wall time, seconds.
    pub wall_seconds: f64,
    /// The headline: simulated 4 KiB writes per wall second (target ≥ 1,000,000).
    pub writes_per_wall_second: f64,
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

/// Everything `fvdsim bench sim` measures.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SimBenchReport {
    /// [`crate::schema::BENCH`].
    pub schema_version: u32,
    /// The master seed.
    pub seed: String,
    /// Random 4 KiB writes with the crash model on, 64 MiB device (the headline figure).
    pub random_write: RandomWriteFigures,
    /// The same workload on other device sizes and with foreign data: with foreign bytes the
    /// rate falls as the store outgrows the CPU caches (each write brings 4 KiB of new data into
    /// the store); stamped sectors are held as symbols.
    pub random_write_by_device_size: Vec<RandomWriteFigures>,
    /// Crash-plus-reopen cycles on a 64 MiB device.
    pub crash_cycles: CrashCycleFigures,
}

/// Runs the sim benchmark.
pub fn run_sim_bench(options: SimBenchOptions) -> SimBenchReport {
    if let Some((device_bytes, data)) = options.only {
        return SimBenchReport {
            schema_version: crate::schema::BENCH,
            seed: options.seed.to_string(),
            random_write: random_writes(options, device_bytes, options.writes, data),
            random_write_by_device_size: Vec::new(),
            crash_cycles: crash_cycles(options),
        };
    }
    SimBenchReport {
        schema_version: crate::schema::BENCH,
        seed: options.seed.to_string(),
        random_write: random_writes(options, HEADLINE_DEVICE_BYTES, options.writes, BenchPayload::Foreign),
        random_write_by_device_size: [
            (4 << 20, BenchPayload::Foreign),
            (1 << 30, BenchPayload::Foreign),
            (4 << 20, BenchPayload::Stamped),
            (HEADLINE_DEVICE_BYTES, BenchPayload::Stamped),
            (1 << 30, BenchPayload::Stamped),
        ]
        .into_iter()
        .map(|(size, data)| random_writes(options, size, options.writes / 2, data))
        .collect(),
        crash_cycles: crash_cycles(options),
    }
}

/// Device size of the headline figures.
const HEADLINE_DEVICE_BYTES: u64 = 64 << 20;

/// What the random-write figure writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum BenchPayload {
    /// Stamped sectors, as every fvdsim workload writes (held as symbols by the disk).
    Stamped,
    /// A constant byte per writer, held as bytes (foreign data: the memory-bound case).
    Foreign,
}

fn random_writes(
    options: SimBenchOptions,
    device_bytes: u64,
    total_writes: u64,
    data: BenchPayload,
) -> RandomWriteFigures {
    let seed = options.seed;
    let sim = Sim::new(options.seed);
    let disk = SimDisk::new(&sim.handle(), "image", device_bytes, DiskConfig::new(DeviceProfile::nvme()));
    let rng = Rc::new(RefCell::new(sim.stream(fvd_sim::streams::WORKLOAD)));
    let flushes = Rc::new(RefCell::new(0u64));
    let per_writer = total_writes / options.writers;
    let handle = sim.handle();
    let started = Instant::now();
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
                    for i in 0..per_writer {
                        let page = rng.borrow_mut().below(device_bytes / 4096);
                        if data == BenchPayload::Stamped {
                            // What every fvdsim workload writes: a stamp naming the write and sector.
                            let write_id = writer * per_writer + i + 1;
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
    let wall_seconds = started.elapsed().as_secs_f64();
    let writes = per_writer * options.writers;
    RandomWriteFigures {
        data,
        device_bytes,
        writes,
        flushes: *flushes.borrow(),
        wall_seconds,
        writes_per_wall_second: writes as f64 / wall_seconds,
        simulated_seconds: sim.now_ns() as f64 / 1e9,
        events: sim.event_count(),
        resident_bytes: disk.resident_bytes(),
    }
}

fn crash_cycles(options: SimBenchOptions) -> CrashCycleFigures {
    const DEVICE_BYTES: u64 = HEADLINE_DEVICE_BYTES;
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
        let w = &self.random_write;
        let c = &self.crash_cycles;
        writeln!(f, "sim benchmark (seed {})", self.seed)?;
        writeln!(
            f,
            "  random 4 KiB writes ({}), crash model on, nvme profile, {} MiB device, {} writers, a flush every {} writes per writer",
            match w.data {
                BenchPayload::Stamped => "stamped sectors, as workloads write: generated and recognised",
                BenchPayload::Foreign => "a constant byte per writer: foreign data",
            },
            w.device_bytes >> 20,
            SimBenchOptions::default().writers,
            SimBenchOptions::default().writes_per_flush
        )?;
        writeln!(f, "    writes                 {:>14}", w.writes)?;
        writeln!(f, "    guest flushes          {:>14}", w.flushes)?;
        writeln!(f, "    wall time              {:>14.3} s", w.wall_seconds)?;
        writeln!(f, "    writes per wall second {:>14.0}   (target >= 1,000,000)", w.writes_per_wall_second)?;
        writeln!(f, "    simulated time         {:>14.3} s", w.simulated_seconds)?;
        writeln!(f, "    events logged          {:>14}", w.events)?;
        writeln!(f, "    disk memory            {:>14.1} MiB", w.resident_bytes as f64 / (1024.0 * 1024.0))?;
        for other in &self.random_write_by_device_size {
            writeln!(
                f,
                "    same on {:>5} MiB device {:>12.0} writes per wall second ({})",
                other.device_bytes >> 20,
                other.writes_per_wall_second,
                match other.data {
                    BenchPayload::Stamped => "stamped sectors, as workloads write: generated and recognised",
                    BenchPayload::Foreign => "foreign bytes",
                }
            )?;
        }
        writeln!(f, "  crash + reopen cycles, ssd profile, {} MiB device", c.device_bytes >> 20)?;
        writeln!(f, "    cycles                 {:>14}", c.cycles)?;
        writeln!(f, "    writes resolved        {:>14}", c.writes_resolved)?;
        writeln!(f, "    wall time              {:>14.3} s", c.wall_seconds)?;
        write!(f, "    cycles per wall second {:>14.0}", c.cycles_per_wall_second)
    }
}
