//! Whole-image adaptive prefetch (`fvd-v1.md` §4): copy the base image into the image in the
//! background, backing off when the copy would hurt the guest's own I/O.
//!
//! The state machine is v1's, callback for callback (§4.3): one base read and one image write in
//! flight at most, a ring of slots, read and write throughput measured over windows of accumulated
//! latency, an α moving average, minimum thresholds, and on a slow window a coin flip between
//! pausing (1 ms + U(0,1) × throttle) and re-measuring. Time, coin flips and pauses come from the
//! environment, so a seed replays them. Prefetch stores are copies (`copy.rs`): never journaled.
//!
//! The hardened profile fixes v1's two flaws (§4.4): after discarding every filled slot while a
//! pause was requested it pauses instead of stalling; and it finishes only once every block's
//! fresh bit is set, rescanning what a lock made it skip, instead of marking all blocks copied.
//! The `v1` profile keeps both.
//!
//! [`PrefetchPolicy::Aimd`] is a policy beyond v1's: a token bucket whose rate grows additively
//! while the guest's mean latency per window stays under a target and halves when it does not.

use super::FvdImage;
use super::copy::CopyKind;
use super::state::RangeLock;
use crate::device::WriteFlags;
use crate::error::FvdError;
use crate::format::SECTOR_BYTES;

const MS: u64 = 1_000_000;

/// How prefetch paces itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PrefetchPolicy {
    /// v1: throughput thresholds, coin flip, randomized pause.
    V1,
    /// Additive increase, multiplicative decrease of a token-bucket rate, driven by the guest's
    /// mean latency per window.
    Aimd {
        /// Guest mean latency the policy defends, µs.
        target_guest_latency_us: u64,
        /// Adjustment window, ms.
        window_ms: u64,
        /// Additive step, KB/s.
        step_kb_s: u64,
        /// Floor and ceiling of the rate, KB/s.
        min_kb_s: u64,
        /// Ceiling of the rate, KB/s.
        max_kb_s: u64,
    },
}

/// Prefetch settings (`fvd-v1.md` §4.1 units: ms and KB/s).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PrefetchConfig {
    /// Delay after open before prefetch starts, ms.
    pub start_delay_ms: u64,
    /// Slots (read buffers).
    pub slots: u32,
    /// Bytes per slot (rounded up to whole blocks).
    pub bytes_per_prefetch: u64,
    /// Read measurement window, ms of accumulated read latency.
    pub read_measure_ms: u64,
    /// Write measurement window, ms of accumulated write latency.
    pub write_measure_ms: u64,
    /// Moving-average weight of the past, percent (80 means α = 0.80).
    pub alpha_percent: u32,
    /// Minimum read throughput, KB/s (v1 converts with ×1024/1000 to bytes per ms).
    pub min_read_kb_s: u64,
    /// Minimum write throughput, KB/s.
    pub min_write_kb_s: u64,
    /// Longest pause, ms (0 disables throttling).
    pub throttle_ms: u64,
    /// Pacing policy.
    pub policy: PrefetchPolicy,
}

impl PrefetchConfig {
    /// v1's defaults (`fvd-v1.md` §4.1: 2 slots of 1 MiB, 100 ms windows, α = 0.8, 5,120 KB/s
    /// minimums, pauses up to 30 s, the v1 policy) after a start delay of `start_delay_ms`: the one
    /// place these numbers are written.
    pub const fn v1(start_delay_ms: u64) -> PrefetchConfig {
        PrefetchConfig {
            start_delay_ms,
            slots: 2,
            bytes_per_prefetch: 1 << 20,
            read_measure_ms: 100,
            write_measure_ms: 100,
            alpha_percent: 80,
            min_read_kb_s: 5120,
            min_write_kb_s: 5120,
            throttle_ms: 30_000,
            policy: PrefetchPolicy::V1,
        }
    }
}

impl Default for PrefetchConfig {
    /// [`PrefetchConfig::v1`] with a 1 s start delay.
    fn default() -> PrefetchConfig {
        PrefetchConfig::v1(1_000)
    }
}

/// Where prefetch is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PrefetchPhase {
    /// Waiting for the start delay.
    Waiting,
    /// Copying (possibly paused).
    Running,
    /// Every block is in the image; the bitmap is bypassed.
    Finished,
    /// Stopped by an error or a close.
    Disabled,
}

impl std::fmt::Display for PrefetchPhase {
    /// The lower-case name (`waiting`, `running`, `finished`, `disabled`), as reports print it.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            PrefetchPhase::Waiting => "waiting",
            PrefetchPhase::Running => "running",
            PrefetchPhase::Finished => "finished",
            PrefetchPhase::Disabled => "disabled",
        })
    }
}

/// One telemetry record: a measurement window closed, a pause, or a rate change.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PrefetchSample {
    /// Virtual time, ns.
    pub at_ns: u64,
    /// What was measured.
    pub measure: PrefetchMeasure,
    /// Bytes stored by prefetch so far.
    pub bytes_copied: u64,
    /// Bytes read from the base by prefetch so far.
    pub bytes_read: u64,
}

/// The I/O a v1 measurement window covers (`fvd-v1.md` §4.1: reads from the base, writes into
/// the image, each measured on its own).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WindowSide {
    /// Reads from the base image.
    Read,
    /// Writes into the image.
    Write,
}

/// What one telemetry record measured.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum PrefetchMeasure {
    /// v1: a measurement window closed.
    Window {
        /// Which I/O.
        side: WindowSide,
        /// Bytes moved per ms of busy time in the window.
        bytes_per_ms: f64,
        /// The moving average after it, bytes per ms (-1: reset by the coin flip).
        moving_average_bytes_per_ms: f64,
        /// The minimum below which v1 may pause, bytes per ms.
        threshold_bytes_per_ms: f64,
    },
    /// v1: a pause began.
    Pause {
        /// Its length, ms.
        length_ms: f64,
    },
    /// AIMD: the rate limit was adjusted.
    Rate {
        /// The new rate limit, bytes per ms.
        bytes_per_ms: f64,
        /// The guest's mean latency over the adjustment window, µs.
        guest_mean_latency_us: f64,
        /// The target it was compared with, µs.
        target_latency_us: f64,
    },
}

/// What a prefetch run did (for studies and reports).
#[derive(Debug, Clone, PartialEq)]
pub struct PrefetchTelemetry {
    /// Phase now.
    pub phase: PrefetchPhase,
    /// When copying started and finished, ns.
    pub started_ns: Option<u64>,
    /// Finish time, ns.
    pub finished_ns: Option<u64>,
    /// Pauses `(start_ns, end_ns)`.
    pub pauses: Vec<(u64, u64)>,
    /// Windows, pauses and rate changes.
    pub samples: Vec<PrefetchSample>,
    /// Bytes stored.
    pub bytes_copied: u64,
    /// Bytes read from the base image.
    pub bytes_read: u64,
    /// Bytes read but never stored (the region was copied or written meanwhile).
    pub bytes_discarded: u64,
}

#[derive(Debug, Clone)]
struct Slot {
    buf: Vec<u8>,
    begin: u64,
    end: u64,
    start_ns: u64,
}

/// The prefetcher's state, inside the image state.
#[derive(Debug)]
pub(crate) struct Prefetcher {
    config: PrefetchConfig,
    pub(crate) phase: PrefetchPhase,
    slots: Vec<Slot>,
    next_read_slot: usize,
    filled: usize,
    pub(crate) read_active: bool,
    pub(crate) write_active: bool,
    /// The completion task (write-home, header flag) is running.
    pub(crate) finishing: bool,
    cursor: u64,
    pause_req: bool,
    paused: bool,
    rd_time_ns: u64,
    wr_time_ns: u64,
    rd_bytes: u64,
    wr_bytes: u64,
    rd_avg: f64,
    wr_avg: f64,
    error: bool,
    tokens: f64,
    rate_bytes_per_ms: f64,
    last_refill_ns: u64,
    last_adjust_ns: u64,
    guest_latency_sum_ns: u64,
    guest_requests: u64,
    waiting_tokens: bool,
    telemetry: PrefetchTelemetry,
}

impl Prefetcher {
    fn sectors_per_prefetch(&self, block_sectors: u64) -> u64 {
        (self.config.bytes_per_prefetch / SECTOR_BYTES).div_ceil(block_sectors).max(1) * block_sectors
    }

    fn min_read(&self) -> f64 {
        self.config.min_read_kb_s as f64 * 1024.0 / 1000.0
    }

    fn min_write(&self) -> f64 {
        self.config.min_write_kb_s as f64 * 1024.0 / 1000.0
    }
}

/// Read or write window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Side {
    Read,
    Write,
}

impl FvdImage {
    /// Starts whole-image prefetch with `config` after its start delay (open does this when asked).
    pub(crate) fn start_prefetch(&self, config: PrefetchConfig) {
        let now = self.inner.env.now_ns();
        let telemetry = PrefetchTelemetry {
            phase: PrefetchPhase::Waiting,
            started_ns: None,
            finished_ns: None,
            pauses: Vec::new(),
            samples: Vec::new(),
            bytes_copied: 0,
            bytes_read: 0,
            bytes_discarded: 0,
        };
        let initial_rate = match config.policy {
            PrefetchPolicy::V1 => f64::INFINITY,
            PrefetchPolicy::Aimd { min_kb_s, .. } => min_kb_s as f64 * 1024.0 / 1000.0,
        };
        self.inner.state.borrow_mut().prefetch = Some(Prefetcher {
            config,
            phase: PrefetchPhase::Waiting,
            slots: Vec::new(),
            next_read_slot: 0,
            filled: 0,
            read_active: false,
            write_active: false,
            finishing: false,
            cursor: 0,
            pause_req: false,
            paused: false,
            rd_time_ns: 0,
            wr_time_ns: 0,
            rd_bytes: 0,
            wr_bytes: 0,
            rd_avg: -1.0,
            wr_avg: -1.0,
            error: false,
            tokens: 0.0,
            rate_bytes_per_ms: initial_rate,
            last_refill_ns: now,
            last_adjust_ns: now,
            guest_latency_sum_ns: 0,
            guest_requests: 0,
            waiting_tokens: false,
            telemetry,
        });
        let image = self.clone();
        self.inner.spawn_background(
            "prefetch-start",
            Box::pin(async move {
                // The delay ends early when prefetch is stopped (close), so the task never
                // outlives the image.
                let delay = image.inner.env.sleep_ns(config.start_delay_ms * MS);
                let stopped = image.inner.until("engine: the prefetch start delay", |s| {
                    s.prefetch.as_ref().is_none_or(|p| p.phase == PrefetchPhase::Disabled)
                });
                super::state::first_of(delay, stopped).await;
                let disabled =
                    image.inner.state.borrow().prefetch.as_ref().is_none_or(|p| p.phase == PrefetchPhase::Disabled);
                if !disabled {
                    image.init_prefetch();
                }
            }),
        );
    }

    /// Prefetch telemetry, if prefetch was started.
    pub fn prefetch_telemetry(&self) -> Option<PrefetchTelemetry> {
        let state = self.inner.state.borrow();
        state.prefetch.as_ref().map(|p| PrefetchTelemetry { phase: p.phase, ..p.telemetry.clone() })
    }

    /// Waits until prefetch finished or stopped (returns at once if it was never started).
    pub async fn wait_prefetch(&self) {
        self.inner
            .until("engine: prefetch to finish", |s| {
                s.prefetch.as_ref().is_none_or(|p| {
                    matches!(p.phase, PrefetchPhase::Finished | PrefetchPhase::Disabled)
                        && !p.read_active
                        && !p.write_active
                        && !p.finishing
                })
            })
            .await;
    }

    /// Stops prefetch and waits for its I/O to drain (close does this).
    pub(crate) async fn stop_prefetch(&self) {
        {
            let mut state = self.inner.state.borrow_mut();
            if let Some(p) = state.prefetch.as_mut()
                && p.phase != PrefetchPhase::Finished
            {
                p.phase = PrefetchPhase::Disabled;
                p.telemetry.phase = PrefetchPhase::Disabled;
            }
            state.wake_all();
        }
        self.inner
            .until("engine: prefetch I/O to drain", |s| {
                s.prefetch.as_ref().is_none_or(|p| !p.read_active && !p.write_active && !p.finishing)
            })
            .await;
    }

    /// Records a guest request's latency (the AIMD policy's input).
    pub(crate) fn note_guest_latency(&self, latency_ns: u64) {
        if let Some(p) = self.inner.state.borrow_mut().prefetch.as_mut() {
            p.guest_latency_sum_ns += latency_ns;
            p.guest_requests += 1;
        }
    }

    fn init_prefetch(&self) {
        let now = self.inner.env.now_ns();
        let block_sectors = self.inner.layout.block_sectors();
        {
            let mut state = self.inner.state.borrow_mut();
            if state.header.all_data_in_fvd_img {
                return;
            }
            let Some(p) = state.prefetch.as_mut() else { return };
            if p.phase != PrefetchPhase::Waiting {
                return;
            }
            let slot_bytes = (p.sectors_per_prefetch(block_sectors) * SECTOR_BYTES) as usize;
            p.slots = (0..p.config.slots.max(1))
                .map(|_| Slot { buf: vec![0u8; slot_bytes], begin: 0, end: 0, start_ns: 0 })
                .collect();
            p.phase = PrefetchPhase::Running;
            p.telemetry.phase = PrefetchPhase::Running;
            p.telemetry.started_ns = Some(now);
            p.last_refill_ns = now;
        }
        self.next_read();
    }

    /// v1 `next_read`: find the next copyable range from the cursor and read it from the base.
    fn next_read(&self) {
        let inner = &self.inner;
        let now = inner.env.now_ns();
        let layout = inner.layout;
        let block_sectors = layout.block_sectors();
        let base_end = layout.base_sectors();
        let (begin, end, slot_index) = {
            let mut guard = inner.state.borrow_mut();
            let state = &mut *guard;
            let Some(p) = state.prefetch.as_mut() else { return };
            debug_assert!(!p.read_active && p.filled < p.slots.len() && !p.pause_req, "next_read preconditions");
            if p.phase != PrefetchPhase::Running || p.waiting_tokens {
                return;
            }
            // AIMD: spend tokens for one slot, or come back when there are enough.
            if let PrefetchPolicy::Aimd { .. } = p.config.policy {
                adjust_rate(p, now);
                p.tokens = (p.tokens + (now - p.last_refill_ns) as f64 / MS as f64 * p.rate_bytes_per_ms)
                    .min(p.rate_bytes_per_ms * 1000.0 + (p.sectors_per_prefetch(block_sectors) * SECTOR_BYTES) as f64);
                p.last_refill_ns = now;
                let need = (p.sectors_per_prefetch(block_sectors) * SECTOR_BYTES) as f64;
                if p.tokens < need {
                    let wait_ns = ((need - p.tokens) / p.rate_bytes_per_ms * MS as f64).ceil() as u64;
                    p.waiting_tokens = true;
                    drop(guard);
                    let image = self.clone();
                    inner.spawn_background(
                        "prefetch-pace",
                        Box::pin(async move {
                            image.inner.env.sleep_ns(wait_ns.max(1)).await;
                            let ready = image.inner.state.borrow_mut().prefetch.as_mut().is_some_and(|p| {
                                p.waiting_tokens = false;
                                // The slots may have filled or a read started meanwhile.
                                p.phase == PrefetchPhase::Running
                                    && !p.read_active
                                    && !p.pause_req
                                    && p.filled < p.slots.len()
                            });
                            if ready {
                                image.next_read();
                            }
                        }),
                    );
                    return;
                }
                p.tokens -= need;
            }
            let span = p.sectors_per_prefetch(block_sectors);
            let mut begin = p.cursor;
            let found = loop {
                if begin >= base_end {
                    break None;
                }
                let end = (begin + span).min(base_end);
                match self.find_region(state, begin, end) {
                    Some(region) => break Some(region),
                    None => begin = end,
                }
            };
            let p = state.prefetch.as_mut().expect("checked above");
            match found {
                None => {
                    p.cursor = base_end;
                    if p.filled == 0 {
                        drop(guard);
                        self.terminate(PrefetchPhase::Finished);
                    }
                    return;
                }
                Some((begin, end)) => {
                    let slot_index = p.next_read_slot;
                    let slot = &mut p.slots[slot_index];
                    slot.begin = begin;
                    slot.end = end;
                    slot.start_ns = now;
                    p.cursor = end;
                    p.read_active = true;
                    (begin, end, slot_index)
                }
            }
        };
        let image = self.clone();
        inner.spawn_background(
            "prefetch-read",
            Box::pin(async move {
                let base = image.inner.devices.base.clone().expect("prefetch runs only with a base image");
                let mut buf = vec![0u8; ((end - begin) * SECTOR_BYTES) as usize];
                let result = base.read_at(begin * SECTOR_BYTES, &mut buf).await;
                image.on_read_done(slot_index, buf, result.is_ok());
            }),
        );
    }

    /// v1 `on_read_done`.
    fn on_read_done(&self, slot_index: usize, data: Vec<u8>, ok: bool) {
        let inner = &self.inner;
        let now = inner.env.now_ns();
        let mut start_write = None;
        let mut call_next_read = false;
        let mut call_pause = false;
        let mut terminate = None;
        {
            let mut guard = inner.state.borrow_mut();
            let state = &mut *guard;
            let Some(p) = state.prefetch.as_mut() else { return };
            p.read_active = false;
            if p.phase == PrefetchPhase::Disabled {
                if p.filled == 0 {
                    terminate = Some(PrefetchPhase::Disabled);
                }
            } else if !ok {
                p.error = true;
                p.phase = PrefetchPhase::Disabled;
                if p.filled == 0 {
                    terminate = Some(PrefetchPhase::Disabled);
                }
            } else {
                let slot = &mut p.slots[slot_index];
                let len = data.len();
                slot.buf[..len].copy_from_slice(&data);
                p.rd_time_ns += now - p.slots[slot_index].start_ns;
                p.rd_bytes += len as u64;
                p.telemetry.bytes_read += len as u64;
                let n = p.slots.len();
                let paused = self.maybe_throttle(p, Side::Read, now);
                call_pause |= paused;
                if p.filled > 0 {
                    p.filled += 1;
                    p.next_read_slot = (p.next_read_slot + 1) % n;
                } else {
                    let (begin, end) = (p.slots[slot_index].begin, p.slots[slot_index].end);
                    match self.find_region(state, begin, end) {
                        Some(region) => {
                            let p = state.prefetch.as_mut().expect("present");
                            p.slots[slot_index].start_ns = now;
                            p.filled += 1;
                            p.next_read_slot = (p.next_read_slot + 1) % n;
                            start_write = Some((slot_index, region));
                        }
                        None => {
                            let p = state.prefetch.as_mut().expect("present");
                            p.telemetry.bytes_discarded += len as u64;
                        }
                    }
                }
                let p = state.prefetch.as_mut().expect("present");
                if p.filled < p.slots.len() {
                    if p.pause_req {
                        if p.filled == 0 && start_write.is_none() {
                            call_pause = true;
                        }
                    } else {
                        call_next_read = true;
                    }
                }
            }
            // `read_active` changed: a close waiting for prefetch I/O to drain re-checks (without
            // this, a read completing after the stop left close waiting forever; found by
            // `fvdsim swarm`).
            state.wake_all();
        }
        if let Some(phase) = terminate {
            self.terminate(phase);
            return;
        }
        if let Some((slot_index, region)) = start_write {
            self.start_prefetch_write(slot_index, region);
        }
        if call_pause && self.pause_pending() {
            self.pause();
        } else if call_next_read {
            self.next_read();
        }
    }

    fn pause_pending(&self) -> bool {
        self.inner
            .state
            .borrow()
            .prefetch
            .as_ref()
            .is_some_and(|p| p.pause_req && !p.paused && p.filled == 0 && !p.read_active && !p.write_active)
    }

    /// Takes a copy lock on `region` and stores the slot's bytes for it.
    fn start_prefetch_write(&self, slot_index: usize, region: (u64, u64)) {
        let inner = &self.inner;
        let (lock, data) = {
            let mut guard = inner.state.borrow_mut();
            let state = &mut *guard;
            let lock = RangeLock { id: state.lock_id(), start: region.0, end: region.1 };
            state.copy_locks.insert(lock);
            let p = state.prefetch.as_mut().expect("present");
            p.write_active = true;
            let slot = &p.slots[slot_index];
            let from = ((region.0 - slot.begin) * SECTOR_BYTES) as usize;
            let to = ((region.1 - slot.begin) * SECTOR_BYTES) as usize;
            (lock, slot.buf[from..to].to_vec())
        };
        let image = self.clone();
        inner.spawn_background(
            "prefetch-write",
            Box::pin(async move {
                let result = image.store_copy(CopyKind::Prefetch, region.0, &data, lock).await;
                image.on_write_done(slot_index, region, result);
            }),
        );
    }

    /// v1 `on_write_done`.
    fn on_write_done(&self, slot_index: usize, region: (u64, u64), result: Result<(), FvdError>) {
        let inner = &self.inner;
        let now = inner.env.now_ns();
        let base_end = inner.layout.base_sectors();
        let hardened = inner.hardened();
        let mut next_write = None;
        let mut call_next_read = false;
        let mut call_pause = false;
        let mut terminate = None;
        {
            let mut guard = inner.state.borrow_mut();
            let state = &mut *guard;
            let Some(p) = state.prefetch.as_mut() else { return };
            p.write_active = false;
            if result.is_err() {
                p.filled = 0;
                p.error = true;
                p.phase = PrefetchPhase::Disabled;
                if !p.read_active {
                    terminate = Some(PrefetchPhase::Disabled);
                }
            } else {
                p.telemetry.bytes_copied += (region.1 - region.0) * SECTOR_BYTES;
                p.wr_time_ns += now - p.slots[slot_index].start_ns;
                p.wr_bytes += (region.1 - region.0) * SECTOR_BYTES;
                call_pause |= self.maybe_throttle(p, Side::Write, now);
                let written_end = region.1;
                let slot_end = p.slots[slot_index].end;
                let rest = if written_end < slot_end { self.find_region(state, written_end, slot_end) } else { None };
                let p = state.prefetch.as_mut().expect("present");
                if let Some(rest) = rest {
                    // v1 does not reset the slot's start time here (§4.4, quirk 3).
                    next_write = Some((slot_index, rest));
                } else {
                    p.filled -= 1;
                    if p.phase == PrefetchPhase::Disabled {
                        if p.filled == 0 && !p.read_active {
                            terminate = Some(PrefetchPhase::Disabled);
                        }
                    } else if written_end >= base_end {
                        terminate = Some(PrefetchPhase::Finished);
                    } else if p.pause_req && p.filled == 0 {
                        call_pause = !p.read_active;
                    } else {
                        let n = p.slots.len();
                        loop {
                            let p = state.prefetch.as_ref().expect("present");
                            if p.filled == 0 {
                                break;
                            }
                            let oldest = (p.next_read_slot + n - p.filled) % n;
                            let (b, e) = (p.slots[oldest].begin, p.slots[oldest].end);
                            let region = self.find_region(state, b, e);
                            let p = state.prefetch.as_mut().expect("present");
                            match region {
                                Some(region) => {
                                    p.slots[oldest].start_ns = now;
                                    next_write = Some((oldest, region));
                                    break;
                                }
                                None => {
                                    p.telemetry.bytes_discarded += (e - b) * SECTOR_BYTES;
                                    p.filled -= 1;
                                }
                            }
                        }
                        let p = state.prefetch.as_mut().expect("present");
                        if next_write.is_none() && p.filled == 0 && p.pause_req && !p.read_active && hardened {
                            // The v1 stall (§4.4, flaw 1): every filled slot was discarded while a
                            // pause was requested, and v1 neither pauses nor reads again.
                            call_pause = true;
                        } else if !p.read_active && !p.pause_req && (next_write.is_none() || p.filled < p.slots.len()) {
                            call_next_read = true;
                        }
                    }
                }
            }
            state.wake_all();
        }
        if let Some(phase) = terminate {
            self.terminate(phase);
            return;
        }
        if let Some((slot, region)) = next_write {
            self.start_prefetch_write(slot, region);
        }
        if call_pause && self.pause_pending() {
            self.pause();
        } else if call_next_read && !self.inner.state.borrow().prefetch.as_ref().is_some_and(|p| p.read_active) {
            self.next_read();
        }
    }

    /// v1 `maybe_throttle`: closes a measurement window; may request a pause (coin flip).
    fn maybe_throttle(&self, p: &mut Prefetcher, side: Side, now: u64) -> bool {
        if p.config.policy != PrefetchPolicy::V1 || p.config.throttle_ms == 0 || p.pause_req {
            return false;
        }
        let (time_ns, bytes, measure_ms, threshold) = match side {
            Side::Read => (p.rd_time_ns, p.rd_bytes, p.config.read_measure_ms, p.min_read()),
            Side::Write => (p.wr_time_ns, p.wr_bytes, p.config.write_measure_ms, p.min_write()),
        };
        if time_ns <= measure_ms * MS {
            return false;
        }
        let this = bytes as f64 / (time_ns as f64 / MS as f64);
        let alpha = f64::from(p.config.alpha_percent) / 100.0;
        let avg = match side {
            Side::Read => &mut p.rd_avg,
            Side::Write => &mut p.wr_avg,
        };
        *avg = if *avg < 0.0 { this } else { alpha * *avg + (1.0 - alpha) * this };
        let moving_average = *avg;
        let mut requested = false;
        if moving_average < threshold {
            // The coin flip keeps several instances from backing off in lock step (paper §3.4.2).
            if self.inner.env.random_below(2) == 1 {
                p.pause_req = true;
                requested = true;
            } else {
                *avg = -1.0;
            }
        }
        p.telemetry.samples.push(PrefetchSample {
            at_ns: now,
            measure: PrefetchMeasure::Window {
                side: if side == Side::Read { WindowSide::Read } else { WindowSide::Write },
                bytes_per_ms: this,
                moving_average_bytes_per_ms: moving_average,
                threshold_bytes_per_ms: threshold,
            },
            bytes_copied: p.telemetry.bytes_copied,
            bytes_read: p.telemetry.bytes_read,
        });
        match side {
            Side::Read => {
                p.rd_time_ns = 0;
                p.rd_bytes = 0;
            }
            Side::Write => {
                p.wr_time_ns = 0;
                p.wr_bytes = 0;
            }
        }
        requested
    }

    /// v1 `pause`: a timer of 1 ms + U(0,1) × throttle, then `resume`.
    fn pause(&self) {
        let inner = &self.inner;
        let now = inner.env.now_ns();
        let throttle_ms = inner.state.borrow().prefetch.as_ref().map_or(0, |p| p.config.throttle_ms);
        let pause_ns = MS + inner.env.random_below(throttle_ms * MS + 1);
        if let Some(p) = inner.state.borrow_mut().prefetch.as_mut() {
            p.paused = true;
            p.telemetry.pauses.push((now, now + pause_ns));
            p.telemetry.samples.push(PrefetchSample {
                at_ns: now,
                measure: PrefetchMeasure::Pause { length_ms: pause_ns as f64 / MS as f64 },
                bytes_copied: p.telemetry.bytes_copied,
                bytes_read: p.telemetry.bytes_read,
            });
        }
        let image = self.clone();
        inner.spawn_background(
            "prefetch-pause",
            Box::pin(async move {
                image.inner.env.sleep_ns(pause_ns).await;
                image.resume();
            }),
        );
    }

    /// v1 `resume`.
    fn resume(&self) {
        {
            let mut state = self.inner.state.borrow_mut();
            let Some(p) = state.prefetch.as_mut() else { return };
            p.paused = false;
            if p.phase != PrefetchPhase::Running {
                return;
            }
            p.pause_req = false;
            p.rd_avg = -1.0;
            p.wr_avg = -1.0;
            p.rd_time_ns = 0;
            p.wr_time_ns = 0;
            p.rd_bytes = 0;
            p.wr_bytes = 0;
            if p.read_active || p.filled >= p.slots.len() {
                return;
            }
        }
        self.next_read();
    }

    /// v1 `terminate`. Finishing marks every block as in the image, writes the metadata home and
    /// sets `all_data_in_fvd_img`; the hardened profile first checks that every block really was
    /// copied and rescans from the first that was not.
    fn terminate(&self, phase: PrefetchPhase) {
        let inner = &self.inner;
        let now = inner.env.now_ns();
        let restart_at = {
            let mut guard = inner.state.borrow_mut();
            let state = &mut *guard;
            let Some(p) = state.prefetch.as_mut() else { return };
            let phase = if phase == PrefetchPhase::Finished && p.error { PrefetchPhase::Disabled } else { phase };
            let missing = if phase == PrefetchPhase::Finished && inner.hardened() {
                (0..state.fresh.blocks()).find(|&b| !state.fresh.get(b))
            } else {
                None
            };
            let p = state.prefetch.as_mut().expect("present");
            match missing {
                Some(block) => {
                    // Flaw 2 fixed: a lock made the scan skip this block, or its copy failed.
                    p.cursor = block * (inner.layout.block_sectors());
                    Some(())
                }
                None => {
                    p.phase = phase;
                    p.telemetry.phase = phase;
                    p.slots.clear();
                    if phase == PrefetchPhase::Finished {
                        p.telemetry.finished_ns = Some(now);
                        // v1 marks every block, copied or not (§4.4, flaw 2).
                        state.fresh.set_all();
                    }
                    None
                }
            }
        };
        if restart_at.is_some() {
            let image = self.clone();
            inner.spawn_background(
                "prefetch-rescan",
                Box::pin(async move {
                    image.inner.env.sleep_ns(10 * MS).await;
                    let (idle, pause_req) = image.inner.state.borrow().prefetch.as_ref().map_or((false, false), |p| {
                        (
                            p.phase == PrefetchPhase::Running && !p.read_active && !p.write_active && p.filled == 0,
                            p.pause_req,
                        )
                    });
                    if idle && pause_req {
                        // A pause was requested meanwhile: honour it rather than read.
                        image.pause();
                    } else if idle {
                        image.next_read();
                    }
                }),
            );
            return;
        }
        self.inner.state.borrow_mut().wake_all();
        if phase == PrefetchPhase::Finished {
            if let Some(p) = self.inner.state.borrow_mut().prefetch.as_mut() {
                p.finishing = true;
            }
            let image = self.clone();
            inner.spawn_background(
                "prefetch-finish",
                Box::pin(async move {
                    if image.write_metadata_home().await.is_ok() {
                        let sector = {
                            let mut state = image.inner.state.borrow_mut();
                            state.header.all_data_in_fvd_img = true;
                            let encoded = state.header.encode();
                            let mut sector = [0u8; 512];
                            sector.copy_from_slice(&encoded[..512]);
                            sector
                        };
                        let flags = if image.inner.hardened() { WriteFlags::FUA } else { WriteFlags::NONE };
                        let _ = image.inner.devices.image.write_at(0, &sector, flags).await;
                    }
                    let mut state = image.inner.state.borrow_mut();
                    if let Some(p) = state.prefetch.as_mut() {
                        p.finishing = false;
                    }
                    state.wake_all();
                }),
            );
        }
    }
}

/// AIMD: once per window, halve the rate if the guest's mean latency exceeded the target, else
/// add the step.
fn adjust_rate(p: &mut Prefetcher, now: u64) {
    let PrefetchPolicy::Aimd { target_guest_latency_us, window_ms, step_kb_s, min_kb_s, max_kb_s } = p.config.policy
    else {
        return;
    };
    if now < p.last_adjust_ns + window_ms * MS {
        return;
    }
    let to_bytes_per_ms = |kb_s: u64| kb_s as f64 * 1024.0 / 1000.0;
    let mean_us =
        if p.guest_requests == 0 { 0.0 } else { p.guest_latency_sum_ns as f64 / p.guest_requests as f64 / 1000.0 };
    p.rate_bytes_per_ms = if mean_us > target_guest_latency_us as f64 {
        p.rate_bytes_per_ms / 2.0
    } else {
        p.rate_bytes_per_ms + to_bytes_per_ms(step_kb_s)
    };
    p.rate_bytes_per_ms = p.rate_bytes_per_ms.clamp(to_bytes_per_ms(min_kb_s), to_bytes_per_ms(max_kb_s));
    p.telemetry.samples.push(PrefetchSample {
        at_ns: now,
        measure: PrefetchMeasure::Rate {
            bytes_per_ms: p.rate_bytes_per_ms,
            guest_mean_latency_us: mean_us,
            target_latency_us: target_guest_latency_us as f64,
        },
        bytes_copied: p.telemetry.bytes_copied,
        bytes_read: p.telemetry.bytes_read,
    });
    p.guest_latency_sum_ns = 0;
    p.guest_requests = 0;
    p.last_adjust_ns = now;
}
