//! The workload side of a run: the state every workload task shares ([`Driver`]), the three
//! workload drivers (random testers, trace closed loop, trace open loop), one request with the
//! oracle told before and after, and the claim that arms each crash when its request comes.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::rc::Rc;

use super::guest::GuestImage;
use fvd_reports::latency::LatencyRecorder;
use fvd_sim::{RunError, SimHandle, SimRng};

use super::config::{CrashPoint, CrashSpec, ReplayMode};
use super::outcome::{Failure, FailureClass, PROGRESS_EVERY_REQUESTS, Progress, RunSummary, SectorFailure, Watcher};
use crate::oracle::{ORIGINAL, Oracle, TORN};
use crate::rig::Rig;
use crate::stamp::{SECTOR_BYTES, SectorValue, decode, stamp};
use crate::trace::{TraceOp, TraceRequest};

/// The workload's requests, resolved.
pub(super) enum Requests {
    Trace(Rc<Vec<TraceRequest>>, ReplayMode, TraceFacts),
    Random { testers: u32, total: u64, max_sectors: u64, read_per_mille: u32 },
}

/// What loading the trace noticed.
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct TraceFacts {
    pub(super) out_of_order: u64,
    pub(super) split: u64,
    pub(super) wrap: bool,
}

impl Requests {
    pub(super) fn total(&self) -> u64 {
        match self {
            Requests::Trace(trace, _, _) => trace.len() as u64,
            Requests::Random { total, .. } => *total,
        }
    }
}

/// The state every workload task shares.
pub(super) struct Driver {
    pub(super) oracle: Oracle,
    pub(super) seed: u64,
    pub(super) disk_sectors: u64,
    pub(super) base: Option<(fvd_sim::ProceduralContent, u64)>,
    pub(super) next_request: u64,
    pub(super) total: u64,
    pub(super) flush_every: u64,
    pub(super) faults_on: bool,
    pub(super) failure: Option<Failure>,
    pub(super) summary: RunSummary,
    pub(super) latency: LatencyRecorder,
    pub(super) rng: SimRng,
    pub(super) in_flight: BTreeMap<u64, (u64, u64)>,
    /// Requests as issued, by index.
    pub(super) issued_requests: BTreeMap<u64, TraceRequest>,
    /// Fold trace offsets that do not fit onto the disk (`--wrap`); otherwise they were refused
    /// before the run.
    pub(super) wrap: bool,
    pub(super) crashes_applied: usize,
    pub(super) crashes_planned: usize,
    pub(super) watcher: Option<Watcher>,
    pub(super) arm: Option<Arming>,
    pub(super) fired: Option<CrashPoint>,
    /// Event count when the first workload request was claimed.
    pub(super) first_event: u64,
    /// Events from the first workload request to the end of the workload.
    pub(super) workload_events: u64,
    pub(super) prefetch: Option<fvd_engine::PrefetchTelemetry>,
    /// The armed crash is at a point of the close or the open: the workload stops claiming
    /// requests so that the image can be closed cleanly and reopened.
    pub(super) restart_due: bool,
    /// Each applied crash's [`super::outcome::CrashStateKey`], in order, when
    /// `record_crash_state_keys` (hashing the image at every crash costs a walk over its pages).
    pub(super) crash_state_keys: Vec<super::outcome::CrashStateKey>,
    pub(super) record_crash_state_keys: bool,
}

/// A crash waiting for its request count, then for its point.
#[derive(Debug, Clone, Copy)]
pub(super) struct Arming {
    pub(super) spec: CrashSpec,
    pub(super) armed: bool,
    pub(super) fallback_at_request: u64,
}

pub(super) type Shared = Rc<RefCell<Driver>>;

impl Driver {
    /// Tells the watcher; false if it asks to stop.
    pub(super) fn report_progress(&mut self, handle: &SimHandle) -> bool {
        let progress = Progress {
            issued: self.summary.issued,
            total: self.total,
            crashes: self.crashes_applied,
            crashes_planned: self.crashes_planned,
            simulated_seconds: handle.now_ns() as f64 / 1e9,
            failed: self.failure.is_some(),
        };
        self.watcher.as_mut().is_none_or(|watch| watch(&progress))
    }

    /// A request ended: counts it.
    pub(super) fn ended(&mut self, ok: bool) {
        if ok {
            self.summary.completed += 1;
        } else {
            self.summary.failed += 1;
        }
    }

    /// A crash: every issued request that has not ended is dropped.
    pub(super) fn drop_outstanding(&mut self) {
        let s = &mut self.summary;
        s.dropped_at_crash = s.issued - s.completed - s.failed;
    }

    pub(super) fn fail(
        &mut self,
        handle: &SimHandle,
        class: FailureClass,
        message: String,
        sectors: Vec<SectorFailure>,
    ) {
        if self.failure.is_none() {
            self.failure = Some(Failure {
                class,
                message,
                sectors,
                at_request: self.summary.issued,
                after_crashes: self.crashes_applied,
            });
        }
        handle.halt();
    }

    pub(super) fn describe(&self, sector: u64, value: u32) -> String {
        if value == TORN {
            return "torn by an earlier crash (any content)".into();
        }
        if value == ORIGINAL {
            return if self.base.is_some_and(|(_, n)| sector < n) {
                "original (base image data)".into()
            } else {
                "original (zeros)".into()
            };
        }
        let (first, count) = self.oracle.write_range(value);
        format!("write #{value} (sectors {first}..{})", first + count)
    }

    /// Checks `bytes` read from `sector` against `allowed`; returns the value found.
    pub(super) fn judge(&self, sector: u64, bytes: &[u8], allowed: &[u32]) -> Result<u32, SectorFailure> {
        let found = match decode(self.seed, sector, bytes, self.base.as_ref().map(|(c, n)| (c, *n))) {
            SectorValue::Original => Some(ORIGINAL),
            SectorValue::Stamped { write_id, sector: meant } if meant == sector && write_id <= u64::from(u32::MAX) => {
                Some(write_id as u32)
            }
            _ => None,
        };
        if allowed.contains(&TORN) {
            return Ok(found.unwrap_or(TORN));
        }
        match found {
            Some(value) if allowed.contains(&value) => Ok(value),
            _ => Err(SectorFailure {
                sector,
                allowed: allowed.iter().map(|v| self.describe(sector, *v)).collect(),
                actual: decode(self.seed, sector, bytes, self.base.as_ref().map(|(c, n)| (c, *n))).to_string(),
            }),
        }
    }
}

/// Runs the workload until it ends, a crash fires or a failure halts the world.
pub(super) fn run_segment(rig: &Rig, requests: &Requests, driver: &Shared, image: &GuestImage) -> Result<(), RunError> {
    let handle = rig.sim.handle();
    let image = image.clone();
    let driver = Rc::clone(driver);
    match requests {
        Requests::Random { testers, max_sectors, read_per_mille, .. } => {
            let (testers, max_sectors, read_per_mille) = (*testers, *max_sectors, *read_per_mille);
            rig.sim.run(async move {
                let lanes: Vec<_> = (0..u64::from(testers))
                    .map(|lane| {
                        handle.spawn(
                            "tester",
                            random_lane(
                                lane,
                                Rc::clone(&driver),
                                image.clone(),
                                handle.clone(),
                                max_sectors,
                                read_per_mille,
                            ),
                        )
                    })
                    .collect();
                for lane in lanes {
                    lane.await;
                }
            })
        }
        Requests::Trace(trace, ReplayMode::ClosedLoop { queue_depth }, _) => {
            let (trace, depth) = (Rc::clone(trace), *queue_depth);
            rig.sim.run(async move {
                let lanes: Vec<_> = (0..u64::from(depth.max(1)))
                    .map(|lane| {
                        handle.spawn(
                            "replayer",
                            closed_lane(lane, Rc::clone(&driver), image.clone(), handle.clone(), Rc::clone(&trace)),
                        )
                    })
                    .collect();
                for lane in lanes {
                    lane.await;
                }
            })
        }
        Requests::Trace(trace, ReplayMode::OpenLoop { time_scale, max_in_flight }, _) => {
            let (trace, scale, cap) = (Rc::clone(trace), *time_scale, *max_in_flight);
            rig.sim.run(open_loop(driver, image, handle, trace, scale, cap))
        }
    }
}

/// Claims the next request index (arming a crash on the way); `None` when the workload is done.
pub(super) fn claim(driver: &Shared, handle: &SimHandle) -> Option<u64> {
    let mut d = driver.borrow_mut();
    if d.next_request >= d.total || d.failure.is_some() || handle.halted() || d.restart_due {
        return None;
    }
    let index = d.next_request;
    if d.arm.as_ref().is_some_and(|a| !a.armed && a.spec.point.at_restart() && index + 1 >= a.spec.after_request) {
        // A point of the close or the open: the workload pauses here until the image has been
        // closed cleanly and reopened with the crash armed (`run_until_crash`).
        d.restart_due = true;
        return None;
    }
    if index == 0 {
        d.first_event = handle.event_count();
    }
    d.next_request += 1;
    d.summary.issued += 1;
    if d.summary.issued.is_multiple_of(PROGRESS_EVERY_REQUESTS) && !d.report_progress(handle) {
        d.summary.interrupted = true;
        handle.halt();
        return None;
    }
    let mut to_arm = None;
    if let Some(arm) = d.arm.as_mut() {
        if !arm.armed && index + 1 >= arm.spec.after_request {
            arm.armed = true;
            to_arm = Some(arm.spec);
        } else if arm.armed && index >= arm.fallback_at_request && arm.spec.point != CrashPoint::RandomEvent {
            // The named point did not come: crash at a random event shortly.
            let events = 1 + d.rng.below(200);
            handle.halt_after_events(Some(handle.event_count() + events));
            d.arm = None;
            d.fired = Some(CrashPoint::RandomEvent);
        }
    }
    drop(d);
    if let Some(spec) = to_arm {
        arm_crash(driver, handle, spec);
    }
    Some(index)
}

pub(super) fn arm_crash(driver: &Shared, handle: &SimHandle, spec: CrashSpec) {
    let Some((wanted, detail)) = spec.point.progress() else {
        handle.halt_after_events(Some(handle.event_count() + spec.occurrence));
        driver.borrow_mut().fired = Some(CrashPoint::RandomEvent);
        return;
    };
    let mut seen = 0u64;
    let hook_driver = Rc::clone(driver);
    handle.set_progress_hook(move |progress, _| {
        if progress.point != wanted || detail.is_some_and(|d| d != progress.detail) {
            return false;
        }
        seen += 1;
        if seen < spec.occurrence {
            return false;
        }
        let mut d = hook_driver.try_borrow_mut().expect("the driver is never borrowed across engine calls");
        d.fired = Some(spec.point);
        d.arm = None;
        true
    });
}

/// One request: the oracle sees it before and after; reads are judged sector by sector.
pub(super) async fn perform(
    driver: &Shared,
    image: &GuestImage,
    handle: &SimHandle,
    first: u64,
    count: u64,
    op: TraceOp,
    lane: u64,
) {
    let started = handle.now_ns();
    match op {
        TraceOp::Write => {
            let (id, seed) = {
                let mut d = driver.borrow_mut();
                d.in_flight.insert(lane, (first, count));
                (d.oracle.write_submitted(first, count), d.seed)
            };
            let mut data = vec![0u8; (count * SECTOR_BYTES) as usize];
            stamp(seed, u64::from(id), first, &mut data);
            let result = image.write(first * SECTOR_BYTES, &data).await;
            let mut d = driver.borrow_mut();
            d.in_flight.remove(&lane);
            d.oracle.write_completed(id, result.is_ok());
            d.latency.record("write", handle.now_ns(), handle.now_ns() - started);
            d.latency.record("guest", handle.now_ns(), handle.now_ns() - started);
            d.ended(result.is_ok());
            match result {
                Ok(()) => {
                    d.summary.writes += 1;
                    d.summary.write_bytes += count * SECTOR_BYTES;
                }
                Err(error) => unexpected(&mut d, handle, &error, "write"),
            }
        }
        TraceOp::Read => {
            let ticket = {
                let mut d = driver.borrow_mut();
                d.in_flight.insert(lane, (first, count));
                d.oracle.read_submitted(first, count)
            };
            let mut buf = vec![0u8; (count * SECTOR_BYTES) as usize];
            let result = image.read(first * SECTOR_BYTES, &mut buf).await;
            let mut d = driver.borrow_mut();
            d.in_flight.remove(&lane);
            let allowed = d.oracle.read_completed(ticket);
            d.latency.record("read", handle.now_ns(), handle.now_ns() - started);
            d.latency.record("guest", handle.now_ns(), handle.now_ns() - started);
            d.ended(result.is_ok());
            match result {
                Ok(()) => {
                    d.summary.reads += 1;
                    d.summary.read_bytes += count * SECTOR_BYTES;
                    d.summary.sectors_verified += count;
                    let bad: Vec<SectorFailure> = (0..count)
                        .filter_map(|i| {
                            d.judge(
                                first + i,
                                &buf[(i * SECTOR_BYTES) as usize..((i + 1) * SECTOR_BYTES) as usize],
                                &allowed[i as usize],
                            )
                            .err()
                        })
                        .take(16)
                        .collect();
                    if !bad.is_empty() {
                        let message = format!(
                            "a read of sectors {first}..{} returned data no rule allows ({} bad sector(s), first: sector {} held {})",
                            first + count,
                            bad.len(),
                            bad[0].sector,
                            bad[0].actual
                        );
                        d.fail(handle, FailureClass::WrongData, message, bad);
                    }
                }
                Err(error) => unexpected(&mut d, handle, &error, "read"),
            }
        }
    }
}

pub(super) fn unexpected(d: &mut Driver, handle: &SimHandle, error: &dyn std::fmt::Display, what: &str) {
    if d.faults_on {
        d.summary.io_errors += 1;
        let path = match what {
            "read" => "guest: read failed",
            "write" => "guest: write failed",
            _ => "guest: flush failed",
        };
        super::coverage::add(&mut d.summary.coverage, path, 1);
    } else {
        d.fail(
            handle,
            FailureClass::UnexpectedError,
            format!("guest {what} failed with no fault injected: {error}"),
            Vec::new(),
        );
    }
}

pub(super) async fn guest_flush(driver: &Shared, image: &GuestImage, handle: &SimHandle) {
    let started = handle.now_ns();
    let ticket = driver.borrow_mut().oracle.flush_submitted();
    let result = image.flush().await;
    let mut d = driver.borrow_mut();
    d.oracle.flush_completed(ticket, result.is_ok());
    d.latency.record("flush", handle.now_ns(), handle.now_ns() - started);
    match result {
        Ok(()) => d.summary.flushes += 1,
        Err(error) => unexpected(&mut d, handle, &error, "flush"),
    }
}

/// Folds `[offset, offset + len)` (sectors) onto the disk: random testers aim near the end.
pub(super) fn wrap(driver: &Shared, offset: u64, len: u64) -> (u64, u64) {
    let sectors = driver.borrow().disk_sectors;
    let len = len.min(sectors);
    let offset = if offset.saturating_add(len) > sectors { offset % (sectors - len + 1) } else { offset };
    (offset, len)
}

/// Where a trace request goes: where it was recorded. One that does not fit was refused before
/// the run unless `--wrap` asked to fold it (and it is counted).
pub(super) fn place(driver: &Shared, request: &TraceRequest) -> (u64, u64) {
    let (offset, len) = (request.offset_sectors, request.len_sectors);
    let mut d = driver.borrow_mut();
    if offset.saturating_add(len) <= d.disk_sectors {
        return (offset, len);
    }
    assert!(d.wrap, "trace requests beyond the disk are refused before the run unless --wrap");
    d.summary.folded += 1;
    drop(d);
    wrap(driver, offset, len)
}

pub(super) fn record_issued(driver: &Shared, index: u64, request: TraceRequest) {
    driver.borrow_mut().issued_requests.insert(index, request);
}

pub(super) fn wants_flush(driver: &Shared, index: u64) -> bool {
    let every = driver.borrow().flush_every;
    every > 0 && (index + 1).is_multiple_of(every)
}

pub(super) async fn random_lane(
    lane: u64,
    driver: Shared,
    image: GuestImage,
    handle: SimHandle,
    max_sectors: u64,
    read_per_mille: u32,
) {
    while let Some(index) = claim(&driver, &handle) {
        let (first, count, op) = {
            let mut d = driver.borrow_mut();
            let op = if d.rng.below(1000) < u64::from(read_per_mille) { TraceOp::Read } else { TraceOp::Write };
            let count = d.rng.range_inclusive(1, max_sectors);
            let others: Vec<u64> = d.in_flight.iter().filter(|(l, _)| **l != lane).map(|(_, r)| r.0).collect();
            let first = if !others.is_empty() && d.rng.ratio(1, 2) {
                // Near another tester's request, so requests overlap and race (qemu-test).
                let anchor = *d.rng.pick(&others);
                (anchor + 2 * max_sectors).saturating_sub(d.rng.below(4 * max_sectors))
            } else {
                let sectors = d.disk_sectors;
                d.rng.below(sectors)
            };
            (first, count, op)
        };
        let (first, count) = wrap(&driver, first, count);
        record_issued(&driver, index, TraceRequest { time_ns: 0, offset_sectors: first, len_sectors: count, op });
        perform(&driver, &image, &handle, first, count, op, lane).await;
        if wants_flush(&driver, index) {
            guest_flush(&driver, &image, &handle).await;
        }
    }
}

pub(super) async fn closed_lane(
    lane: u64,
    driver: Shared,
    image: GuestImage,
    handle: SimHandle,
    trace: Rc<Vec<TraceRequest>>,
) {
    while let Some(index) = claim(&driver, &handle) {
        let request = trace[index as usize];
        let (first, count) = place(&driver, &request);
        record_issued(&driver, index, TraceRequest { offset_sectors: first, len_sectors: count, ..request });
        perform(&driver, &image, &handle, first, count, request.op, lane).await;
        if wants_flush(&driver, index) {
            guest_flush(&driver, &image, &handle).await;
        }
    }
}

pub(super) async fn open_loop(
    driver: Shared,
    image: GuestImage,
    handle: SimHandle,
    trace: Rc<Vec<TraceRequest>>,
    scale: f64,
    cap: u32,
) {
    let in_flight = Rc::new(RefCell::new(0u32));
    let origin = {
        let next = driver.borrow().next_request.min(trace.len() as u64 - 1);
        handle.now_ns().saturating_sub((trace[next as usize].time_ns as f64 * scale) as u64)
    };
    let mut lane = 0u64;
    let mut tasks = Vec::new();
    loop {
        // Respect the cap on requests in flight.
        while *in_flight.borrow() >= cap.max(1) {
            handle.sleep_ns(10_000).await;
        }
        let Some(index) = claim(&driver, &handle) else { break };
        let request = trace[index as usize];
        let due = origin.saturating_add((request.time_ns as f64 * scale) as u64);
        let now = handle.now_ns();
        if due > now {
            handle.sleep_ns(due - now).await;
        }
        let (first, count) = place(&driver, &request);
        record_issued(&driver, index, TraceRequest { offset_sectors: first, len_sectors: count, ..request });
        lane += 1;
        *in_flight.borrow_mut() += 1;
        let (d, img, h, counter) = (Rc::clone(&driver), image.clone(), handle.clone(), Rc::clone(&in_flight));
        let flush = wants_flush(&driver, index);
        tasks.push(handle.spawn("request", async move {
            perform(&d, &img, &h, first, count, request.op, lane).await;
            if flush {
                guest_flush(&d, &img, &h).await;
            }
            *counter.borrow_mut() -= 1;
        }));
        if tasks.len() > 4096 {
            tasks.retain(|t| t.try_take().is_none());
        }
    }
    for task in tasks {
        task.await;
    }
}
