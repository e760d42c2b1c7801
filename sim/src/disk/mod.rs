//! `SimDisk`: the simulated disk, blksim's successor.
//!
//! Every request goes through two phases, as in blksim: it *executes* at a time drawn from the
//! device profile after submission (its data lands in the volatile cache and becomes visible to
//! reads), and its *completion* is delivered at a random later time. Submission, execution and
//! completion orders all differ. Executed writes stay volatile until a flush executes (or they
//! were FUA); [`SimDisk::crash`] resolves them into a crash state (see [`crash`]). Faults come from
//! the [`FaultPlan`]. Every phase is logged to the world's event log.
//!
//! The volatile-cache bookkeeping (what a crash may keep or lose) lives in [`cache`].

mod cache;
pub mod content;
pub mod crash;
pub mod fault;
pub mod page;
pub mod profile;
mod requests;
pub mod store;

use std::cell::{Cell, RefCell};
use std::collections::BTreeSet;

use cache::{VolatileCache, WriteData, page_span};
use requests::RequestTable;
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll, Waker};

use fvd_contract::{BlockDevice, DeviceError, IoFuture, IoKind, SECTOR_BYTES, WriteFlags};

use crate::executor::{EventSink, SimHandle, WaitLabel};
use crate::log::{Event, EventKind, FaultKind, Source};
use crate::rng::SimRng;
use content::ContentSource;
use crash::{CrashPlan, CrashRecord, unit_pieces};
use fault::{FaultEffect, FaultOp, FaultPlan};
use page::PageData;
use profile::{DeviceProfile, LatencyRange};
use store::SparseStore;

/// Configuration of one simulated disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiskConfig {
    /// Timing model.
    pub profile: DeviceProfile,
    /// Faults to inject.
    pub faults: FaultPlan,
    /// Refuse writes and length changes (a base image).
    pub read_only: bool,
}

impl DiskConfig {
    /// A writable disk with `profile` and no faults.
    pub fn new(profile: DeviceProfile) -> DiskConfig {
        DiskConfig { profile, faults: FaultPlan::default(), read_only: false }
    }
}

/// Counters of one disk, for benchmarks and reports.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DiskStats {
    /// Requests submitted, by kind.
    pub reads: u64,
    /// Writes submitted.
    pub writes: u64,
    /// Flushes submitted.
    pub flushes: u64,
    /// Bytes read.
    pub read_bytes: u64,
    /// Bytes written.
    pub write_bytes: u64,
    /// Writes destaged by cache pressure.
    pub destaged_writes: u64,
    /// Faults injected.
    pub faults: u64,
    /// Crashes applied.
    pub crashes: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Queued,
    InService,
    Executed,
    Done,
}

struct Request {
    kind: IoKind,
    offset_bytes: u64,
    len_bytes: u64,
    /// Write data, copied at submission; taken when the write executes.
    write: Option<WriteData>,
    /// Read result, filled when the read executes: its first `len_bytes` (a reused buffer may be
    /// longer).
    read: Vec<u8>,
    fua: bool,
    fault: Option<FaultEffect>,
    phase: Phase,
    result: Result<(), DeviceError>,
    waker: Option<Waker>,
    abandoned: bool,
}

struct ContentionState {
    phase_end_ns: u64,
    slowdown_per_mille: u64,
    rng: SimRng,
}

struct DiskState {
    store: SparseStore,
    len_bytes: u64,
    durable_len_bytes: u64,
    timing: SimRng,
    faults_rng: SimRng,
    crash_rng: SimRng,
    requests: RequestTable<Request>,
    next_request: u64,
    in_service: u32,
    waiting: Vec<u64>,
    bandwidth_free_at_ns: u64,
    cache: VolatileCache,
    latent: BTreeSet<u64>,
    contention: ContentionState,
    stats: DiskStats,
    /// Buffers of completed reads, for reuse: a read's bytes are staged here between its
    /// execution and its completion, and allocating (and zeroing) them afresh for every read
    /// was a tenth of crash-state enumeration's time. Every byte a read returns is overwritten.
    read_buffers: Vec<Vec<u8>>,
}

/// Read buffers kept for reuse at most, and the largest kept (bytes).
const READ_BUFFERS_KEPT: usize = 16;
const READ_BUFFER_MAX_BYTES: usize = 1 << 20;

struct DiskInner {
    name: Rc<str>,
    source: Source,
    sim: SimHandle,
    sink: Cell<u32>,
    config: RefCell<DiskConfig>,
    content: Option<Rc<dyn ContentSource>>,
    state: RefCell<DiskState>,
    /// See [`SimDisk::crash_generation`].
    crash_generation: Cell<u64>,
    /// `(crash generation, sum of the store's page terms)`: the store's hash terms, kept while
    /// the generation stands (crash-state enumeration hashes many states of one moment).
    page_term_sum: Cell<Option<(u64, u64)>>,
}

/// A simulated disk. Cloning gives another handle on the same disk.
#[derive(Clone)]
pub struct SimDisk {
    inner: Rc<DiskInner>,
}

impl std::fmt::Debug for SimDisk {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SimDisk")
            .field("name", &self.inner.name)
            .field("len_bytes", &self.inner.state.borrow().len_bytes)
            .finish()
    }
}

const EXECUTE: u64 = 0;
const COMPLETE: u64 = 1;

impl SimDisk {
    /// A zero-filled disk of `len_bytes` named `name` in the world of `sim`. Its random streams
    /// are `disk/<name>`, `faults/<name>`, `crash/<name>` and `contention/<name>`.
    ///
    /// Panics if the profile is invalid (validate profiles from user input first).
    pub fn new(sim: &SimHandle, name: &str, len_bytes: u64, config: DiskConfig) -> SimDisk {
        SimDisk::build(sim, name, len_bytes, config, None)
    }

    /// A read-only disk of `len_bytes` whose bytes come from `content` (a base image too large
    /// to store).
    pub fn with_content(
        sim: &SimHandle,
        name: &str,
        len_bytes: u64,
        mut config: DiskConfig,
        content: Rc<dyn ContentSource>,
    ) -> SimDisk {
        config.read_only = true;
        SimDisk::build(sim, name, len_bytes, config, Some(content))
    }

    fn build(
        sim: &SimHandle,
        name: &str,
        len_bytes: u64,
        config: DiskConfig,
        content: Option<Rc<dyn ContentSource>>,
    ) -> SimDisk {
        if let Err(message) = config.profile.validate() {
            panic!("invalid device profile for {name}: {message}");
        }
        let mut contention_rng = sim.stream(&crate::rng::streams::contention(name));
        let first_phase = draw_phase(&config.profile, &mut contention_rng, 0);
        let state = DiskState {
            store: SparseStore::new(),
            len_bytes,
            durable_len_bytes: len_bytes,
            timing: sim.stream(&crate::rng::streams::disk(name)),
            faults_rng: sim.stream(&crate::rng::streams::faults(name)),
            crash_rng: sim.stream(&crate::rng::streams::crash(name)),
            requests: RequestTable::default(),
            next_request: 0,
            in_service: 0,
            waiting: Vec::new(),
            bandwidth_free_at_ns: 0,
            cache: VolatileCache::default(),
            latent: config.faults.latent_sectors.iter().copied().collect(),
            contention: ContentionState {
                phase_end_ns: first_phase.0,
                slowdown_per_mille: first_phase.1,
                rng: contention_rng,
            },
            stats: DiskStats::default(),
            read_buffers: Vec::new(),
        };
        let inner = Rc::new(DiskInner {
            name: Rc::from(name),
            source: Source::new(name),
            sim: sim.clone(),
            sink: Cell::new(0),
            config: RefCell::new(config),
            content,
            state: RefCell::new(state),
            crash_generation: Cell::new(0),
            page_term_sum: Cell::new(None),
        });
        let weak: std::rc::Weak<dyn EventSink> = Rc::downgrade(&inner) as std::rc::Weak<dyn EventSink>;
        inner.sink.set(sim.register_sink(weak));
        SimDisk { inner }
    }

    /// Replaces the fault plan (for example to run recovery without faults).
    pub fn set_faults(&self, faults: FaultPlan) {
        self.inner.state.borrow_mut().latent.extend(faults.latent_sectors.iter().copied());
        self.inner.config.borrow_mut().faults = faults;
    }

    /// Counters so far.
    pub fn stats(&self) -> DiskStats {
        self.inner.state.borrow().stats
    }

    /// Bytes of memory held by written pages and the volatile-cache bookkeeping.
    pub fn resident_bytes(&self) -> u64 {
        let state = self.inner.state.borrow();
        state.store.resident_bytes() + state.cache.resident_bytes()
    }

    /// Bytes of unflushed writes in the volatile cache.
    pub fn unflushed_bytes(&self) -> u64 {
        self.inner.state.borrow().cache.pending_bytes()
    }

    /// Requests submitted and not yet completed.
    pub fn in_flight(&self) -> usize {
        self.inner.state.borrow().requests.values().filter(|r| r.phase != Phase::Done).count()
    }

    /// The visible bytes at `offset_bytes` right now, bypassing timing and faults (for oracles
    /// and checks, never for the engine).
    pub fn peek(&self, offset_bytes: u64, buf: &mut [u8]) {
        let state = self.inner.state.borrow();
        state.store.read(offset_bytes, buf, self.inner.content.as_deref());
    }

    /// The durable bytes at `offset_bytes`: what a crash that drops every unflushed write would
    /// leave.
    pub fn peek_durable(&self, offset_bytes: u64, buf: &mut [u8]) {
        let state = self.inner.state.borrow();
        let content = self.inner.content.as_deref();
        state.store.read(offset_bytes, buf, content);
        state.cache.overlay_durable(offset_bytes, buf, content);
    }

    /// A hash of the visible image: every written page (its index and content) and the length;
    /// the same for the same content however its pages are held (see `image_hash`).
    pub fn image_hash(&self) -> u64 {
        let state = self.inner.state.borrow();
        image_hash(&state.store, state.len_bytes)
    }

    /// Power loss: resolves every unflushed and in-flight write per `plan`, forgets every
    /// outstanding request (their futures fail with [`DeviceError::Crashed`]), and leaves the
    /// disk holding the crash state, ready for reopening. Drop the world's tasks
    /// ([`crate::Sim::abort_all_tasks`]) alongside.
    pub fn crash(&self, plan: CrashPlan) -> CrashRecord {
        let inner = &self.inner;
        let now = inner.sim.now_ns();
        let mut guard = inner.state.borrow_mut();
        let state = &mut *guard;
        let content = inner.content.as_deref();
        // Writes still in flight (submitted, not executed) may or may not land.
        let in_flight: Vec<(u64, u64, WriteData)> = state
            .requests
            .drain()
            .filter(|(_, r)| may_land(r))
            .filter_map(|(number, r)| r.write.map(|data| (number, r.offset_bytes, data)))
            .collect();
        let outcome = state.cache.crash(&mut state.store, content, plan, &mut state.crash_rng, in_flight);
        let len_bytes_before = state.len_bytes;
        let keep =
            keep_length(plan, outcome.all_kept, state.durable_len_bytes == state.len_bytes, &mut state.crash_rng);
        if !keep {
            if state.durable_len_bytes < state.len_bytes {
                state.store.discard_from(state.durable_len_bytes);
            }
            state.len_bytes = state.durable_len_bytes;
        }
        state.durable_len_bytes = state.len_bytes;
        state.in_service = 0;
        state.waiting.clear();
        state.bandwidth_free_at_ns = now;
        state.stats.crashes += 1;
        let record = CrashRecord {
            device: inner.name.to_string(),
            at_ns: now,
            plan,
            len_bytes_before,
            len_bytes_after: state.len_bytes,
            writes: outcome.fates,
        };
        drop(guard);
        inner.log(EventKind::Crash, 0, 0, record.writes.len() as u64);
        record
    }

    /// The crash state `plan` would leave, as a new disk in the world of `world`, leaving this
    /// disk untouched: what [`SimDisk::crash`] would make of it now, resolved on a copy (the
    /// same unit fates for the same crash-stream state). Crash-state enumeration derives many
    /// states from one moment of a run this way instead of re-running the run for each.
    ///
    /// The copy costs a few bytes per symbolic page and 4 KiB per byte page.
    pub fn crash_state(&self, world: &SimHandle, plan: CrashPlan) -> (SimDisk, CrashRecord) {
        let image = self.crash_image(plan);
        let record = image.record.clone();
        (image.into_disk(world), record)
    }

    /// The crash state `plan` would leave, resolved but not yet a disk (see
    /// [`SimDisk::crash_state`]): its content can be hashed, to tell it from states already
    /// seen, before a world is chosen for it ([`CrashImage::into_disk`]).
    ///
    /// Only the pages a crash can change (those of unflushed and in-flight writes) are copied
    /// and resolved here, and the hash is this disk's (kept per crash generation) with their
    /// terms replaced: a state is known for a duplicate before anything else is copied. The
    /// rest of the store is copied by [`CrashImage::into_disk`], which must therefore run
    /// before this disk changes (panics otherwise: a broken invariant).
    pub fn crash_image(&self, plan: CrashPlan) -> CrashImage {
        let inner = &self.inner;
        let state = inner.state.borrow();
        let content = inner.content.as_deref();
        let mut changed = SparseStore::new();
        let mut cache = state.cache.deep_clone(&mut changed.pool);
        let in_flight: Vec<(u64, u64, WriteData)> = state
            .requests
            .iter()
            .filter(|(_, r)| may_land(r))
            .filter_map(|(number, r)| {
                r.write.as_ref().map(|data| (number, r.offset_bytes, data.clone_in(&mut changed.pool)))
            })
            .collect();
        // The pages the crash can change, each copied as it stands now.
        let mut pages: Vec<u64> = cache.shadow_pages().collect();
        for (_, offset_bytes, data) in &in_flight {
            if data.len_bytes() > 0 {
                pages.extend(page_span(*offset_bytes, data.len_bytes()));
            }
        }
        pages.sort_unstable();
        pages.dedup();
        for &page in &pages {
            if let Some(now) = state.store.page(page) {
                let copy = now.clone_in(&mut changed.pool);
                changed.replace_page(page, Some(copy));
            }
        }
        let mut rng = state.crash_rng.clone();
        let outcome = cache.crash(&mut changed, content, plan, &mut rng, in_flight);
        let length_kept = keep_length(plan, outcome.all_kept, state.durable_len_bytes == state.len_bytes, &mut rng);
        let len_bytes = if length_kept { state.len_bytes } else { state.durable_len_bytes };
        let record = CrashRecord {
            device: inner.name.to_string(),
            at_ns: inner.sim.now_ns(),
            plan,
            len_bytes_before: state.len_bytes,
            len_bytes_after: len_bytes,
            writes: outcome.fates,
        };
        let mut sum = inner.page_term_sum(&state.store);
        let mut delta = Vec::with_capacity(pages.len());
        for page in pages {
            if let Some(now) = state.store.page(page) {
                sum = sum.wrapping_sub(page_term(page, now));
            }
            let after = changed.replace_page(page, None);
            if let Some(after) = &after {
                sum = sum.wrapping_add(page_term(page, after));
            }
            delta.push((page, after));
        }
        let latent = state.latent.clone();
        drop(state);
        let mut image = CrashImage {
            name: Rc::clone(&inner.name),
            config: inner.config.borrow().clone(),
            content: inner.content.clone(),
            store: StateStore::Delta { source: Rc::clone(inner), generation: inner.crash_generation.get(), delta },
            hash: finish_image_hash(sum, len_bytes),
            len_bytes,
            latent,
            record,
        };
        if !length_kept && len_bytes < image.record.len_bytes_before {
            // A grow lost: the pages beyond the durable length go too (rare: built and hashed
            // whole).
            let mut store = image.store.materialise();
            store.discard_from(len_bytes);
            image.hash = image_hash(&store, len_bytes);
            image.store = StateStore::Whole(store);
        }
        image
    }

    /// Writes a crash now would resolve: unflushed executed writes plus writes in flight.
    pub fn unflushed_writes(&self) -> usize {
        let state = self.inner.state.borrow();
        state.cache.pending_writes() + state.requests.values().filter(|r| may_land(r) && r.write.is_some()).count()
    }

    /// A number that changes whenever what a crash could leave changes (a write submitted,
    /// executed or destaged, a flush, a length change, a crash). Equal numbers at two moments
    /// of one run mean the same crash states.
    pub fn crash_generation(&self) -> u64 {
        self.inner.crash_generation.get()
    }
}

/// The SplitMix64 finaliser: a 64-bit mix.
fn mix64(word: u64) -> u64 {
    let mut z = word.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// One written page's term of an image hash: its index and content (the same for the same
/// content however the page is held), mixed.
fn page_term(page_index: u64, page: &PageData) -> u64 {
    let mut hash = 0xcbf2_9ce4_8422_2325u64 ^ page_index.wrapping_mul(0x9e37_79b9_7f4a_7c15);
    page.hash_into(&mut hash);
    mix64(hash ^ page_index)
}

/// An image hash from the sum of its pages' terms and its length.
fn finish_image_hash(term_sum: u64, len_bytes: u64) -> u64 {
    mix64(term_sum ^ mix64(len_bytes ^ 0x6a09_e667_f3bc_c908))
}

/// A hash of an image: the sum of every written page's term ([`page_term`]) and the length (the
/// same for the same content however its pages are held). A sum, so a crash state's hash is its
/// disk's with the terms of the pages the crash changed replaced ([`SimDisk::crash_image`]).
fn image_hash(store: &SparseStore, len_bytes: u64) -> u64 {
    finish_image_hash(page_term_sum(store), len_bytes)
}

fn page_term_sum(store: &SparseStore) -> u64 {
    store.page_indices().fold(0u64, |sum, page_index| {
        let page = store.page(page_index).expect("listed pages exist");
        sum.wrapping_add(page_term(page_index, page))
    })
}

/// A crash state's pages: the changed ones over a disk's store (copied whole when the state
/// becomes a disk), or a whole store.
enum StateStore {
    /// The pages a crash changed (`None`: unwritten), over `source`'s store as it stands at
    /// crash generation `generation`.
    Delta { source: Rc<DiskInner>, generation: u64, delta: Vec<(u64, Option<PageData>)> },
    /// Every page.
    Whole(SparseStore),
}

impl StateStore {
    /// The whole store: `source`'s copied with the delta applied.
    ///
    /// Panics if `source` changed since the delta was taken (the delta is only valid over the
    /// store it was resolved from).
    fn materialise(&mut self) -> SparseStore {
        match std::mem::replace(self, StateStore::Whole(SparseStore::new())) {
            StateStore::Whole(store) => store,
            StateStore::Delta { source, generation, delta } => {
                assert_eq!(
                    source.crash_generation.get(),
                    generation,
                    "a crash image of {} became a disk after its disk changed",
                    source.name
                );
                let mut store = source.state.borrow().store.deep_clone();
                for (page, after) in delta {
                    if let Some(old) = store.replace_page(page, after) {
                        old.recycle(&mut store.pool);
                    }
                }
                store
            }
        }
    }
}

/// A crash state resolved from a disk ([`SimDisk::crash_image`]), not yet in any world.
pub struct CrashImage {
    name: Rc<str>,
    config: DiskConfig,
    content: Option<Rc<dyn ContentSource>>,
    store: StateStore,
    hash: u64,
    len_bytes: u64,
    latent: BTreeSet<u64>,
    /// What the crash did to each unflushed write.
    pub record: CrashRecord,
}

impl std::fmt::Debug for CrashImage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CrashImage").field("name", &self.name).field("len_bytes", &self.len_bytes).finish()
    }
}

impl CrashImage {
    /// The hash [`SimDisk::image_hash`] of the disk this becomes will give.
    pub fn image_hash(&self) -> u64 {
        self.hash
    }

    /// The crash state as a disk in the world of `world` (its streams drawn from that world's
    /// seed), a crash logged there.
    ///
    /// Panics if the disk it was resolved from changed since [`SimDisk::crash_image`].
    pub fn into_disk(mut self, world: &SimHandle) -> SimDisk {
        let store = self.store.materialise();
        // One state in 16 (hashing the whole store costs what the delta saves): the delta's hash
        // is the whole store's, so the store did not change without its generation moving.
        if cfg!(debug_assertions) && self.hash.is_multiple_of(16) {
            assert_eq!(image_hash(&store, self.len_bytes), self.hash, "the delta's hash is the whole store's");
        }
        let disk = SimDisk::build(world, &self.name, self.len_bytes, self.config, self.content);
        {
            let mut state = disk.inner.state.borrow_mut();
            state.store = store;
            state.latent = self.latent;
        }
        disk.inner.log(EventKind::Crash, 0, 0, self.record.writes.len() as u64);
        disk
    }
}

/// True for a request whose write may still land at a crash: submitted, not executed, not
/// failed by an injected fault.
fn may_land(r: &Request) -> bool {
    r.kind == IoKind::Write && matches!(r.phase, Phase::Queued | Phase::InService) && r.fault.is_none()
}

/// Whether a crash keeps the length the device had (a grow not yet flushed may be lost).
fn keep_length(plan: CrashPlan, all_kept: bool, length_durable: bool, rng: &mut SimRng) -> bool {
    match plan.strategy {
        crash::CrashStrategy::Clean => true,
        crash::CrashStrategy::Prefix
        | crash::CrashStrategy::Subset { .. }
        | crash::CrashStrategy::PrefixAt { .. }
        | crash::CrashStrategy::Sampled { .. } => all_kept,
        crash::CrashStrategy::RandomSubset { .. } => length_durable || rng.ratio(1, 2),
    }
}

/// Draws the next contention phase starting at `start_ns`: `(end_ns, slowdown_per_mille)`.
fn draw_phase(profile: &DeviceProfile, rng: &mut SimRng, start_ns: u64) -> (u64, u64) {
    let contention = &profile.contention;
    let length = rng.range_inclusive(contention.phase_min_ns, contention.phase_max_ns);
    let slowdown = u64::from(*rng.pick(&contention.slowdown_per_mille));
    (start_ns.saturating_add(length), slowdown)
}

fn sample(rng: &mut SimRng, range: LatencyRange) -> u64 {
    rng.range_inclusive(range.min_ns, range.max_ns)
}

impl DiskInner {
    /// The sum of `store`'s page terms (`store` is this disk's), computed once per crash
    /// generation: every change to the store is logged as an event that moves it.
    fn page_term_sum(&self, store: &SparseStore) -> u64 {
        let generation = self.crash_generation.get();
        if let Some((at, sum)) = self.page_term_sum.get()
            && at == generation
        {
            return sum;
        }
        let sum = page_term_sum(store);
        self.page_term_sum.set(Some((generation, sum)));
        sum
    }

    fn log(&self, kind: EventKind, request: u64, offset_bytes: u64, len_bytes: u64) {
        let changes_crash_state = match kind {
            EventKind::Submit(kind) | EventKind::Execute(kind) => kind != IoKind::Read,
            EventKind::Destage | EventKind::Crash | EventKind::Fault(_) => true,
            _ => false,
        };
        if changes_crash_state {
            self.crash_generation.set(self.crash_generation.get() + 1);
        }
        self.sim.log(Event {
            at_ns: self.sim.now_ns(),
            source: self.source.clone(),
            kind,
            request,
            offset_bytes,
            len_bytes,
        });
    }

    fn error(&self, kind: IoKind, offset_bytes: u64, len_bytes: u64) -> DeviceError {
        DeviceError::Media { device: self.name.to_string(), kind, offset_bytes, len_bytes }
    }

    /// Validates and submits a request; returns its number.
    fn submit(
        &self,
        kind: IoKind,
        offset_bytes: u64,
        len_bytes: u64,
        write: Option<&[u8]>,
        fua: bool,
    ) -> Result<u64, DeviceError> {
        let config = self.config.borrow();
        let mut state = self.state.borrow_mut();
        if config.read_only && matches!(kind, IoKind::Write | IoKind::SetLen) {
            return Err(DeviceError::ReadOnly { device: self.name.to_string(), kind, offset_bytes });
        }
        if matches!(kind, IoKind::Read | IoKind::Write)
            && offset_bytes.checked_add(len_bytes).is_none_or(|end| end > state.len_bytes)
        {
            return Err(DeviceError::OutOfRange {
                device: self.name.to_string(),
                kind,
                offset_bytes,
                len_bytes,
                device_len_bytes: state.len_bytes,
            });
        }
        let number = state.next_request;
        state.next_request += 1;
        let fault_op = match kind {
            IoKind::Read => Some(FaultOp::Read),
            IoKind::Write => Some(FaultOp::Write),
            IoKind::Flush => Some(FaultOp::Flush),
            IoKind::SetLen => None,
        };
        let fault =
            fault_op.and_then(|op| config.faults.decide(&mut state.faults_rng, op, number, offset_bytes, len_bytes));
        match kind {
            IoKind::Read => {
                state.stats.reads += 1;
                state.stats.read_bytes += len_bytes;
            }
            IoKind::Write => {
                state.stats.writes += 1;
                state.stats.write_bytes += len_bytes;
            }
            IoKind::Flush => state.stats.flushes += 1,
            IoKind::SetLen => {}
        }
        if kind == IoKind::Write && len_bytes > 0 {
            for page in page_span(offset_bytes, len_bytes) {
                state.store.prefetch_slot(page);
            }
        }
        let write = write.map(|data| WriteData::copy_from(offset_bytes, data, &mut state.store.pool));
        state.requests.insert(
            number,
            Request {
                kind,
                offset_bytes,
                len_bytes,
                write,
                read: Vec::new(),
                fua,
                fault,
                phase: Phase::Queued,
                result: Ok(()),
                waker: None,
                abandoned: false,
            },
        );
        let start_now = state.in_service < config.profile.queue_depth;
        if !start_now {
            state.waiting.push(number);
        }
        drop(state);
        drop(config);
        self.log(EventKind::Submit(kind), number, offset_bytes, len_bytes);
        if start_now {
            self.start(number);
        }
        Ok(number)
    }

    /// Puts a request in service and schedules its execution.
    fn start(&self, number: u64) {
        let config = self.config.borrow();
        let profile = &config.profile;
        let now = self.sim.now_ns();
        let mut guard = self.state.borrow_mut();
        let state = &mut *guard;
        while now >= state.contention.phase_end_ns {
            let (end, slowdown) = draw_phase(profile, &mut state.contention.rng, state.contention.phase_end_ns);
            state.contention.phase_end_ns = end;
            state.contention.slowdown_per_mille = slowdown;
        }
        let slowdown = state.contention.slowdown_per_mille;
        let request = state.requests.get_mut(&number).expect("a started request exists");
        debug_assert_eq!(request.phase, Phase::Queued);
        request.phase = Phase::InService;
        let (latency, transfer_bytes) = match request.kind {
            IoKind::Read => (sample(&mut state.timing, profile.read_latency_ns), request.len_bytes),
            IoKind::Write => (sample(&mut state.timing, profile.write_latency_ns), request.len_bytes),
            IoKind::Flush | IoKind::SetLen => (sample(&mut state.timing, profile.flush_latency_ns), 0),
        };
        let transfer_ns = (u128::from(transfer_bytes) * 1_000_000_000 * u128::from(slowdown)
            / (u128::from(profile.bandwidth_bytes_per_sec) * 1000)) as u64;
        let transfer_start = now.max(state.bandwidth_free_at_ns);
        let transfer_end = transfer_start + transfer_ns;
        if transfer_ns > 0 {
            state.bandwidth_free_at_ns = transfer_end;
        }
        let execute_at = transfer_end + latency * slowdown / 1000;
        state.in_service += 1;
        drop(guard);
        self.sim.schedule_sink(execute_at, self.sink.get(), number << 1 | EXECUTE);
    }

    /// The request takes effect.
    fn execute(&self, number: u64) {
        let now = self.sim.now_ns();
        let mut guard = self.state.borrow_mut();
        let state = &mut *guard;
        let Some(request) = state.requests.get_mut(&number) else { return };
        debug_assert_eq!(request.phase, Phase::InService);
        request.phase = Phase::Executed;
        let (kind, offset, len, fua, fault) =
            (request.kind, request.offset_bytes, request.len_bytes, request.fua, request.fault);
        state.in_service -= 1;
        let mut faults_logged = Vec::new();
        match kind {
            IoKind::Read => {
                let first_sector = offset / SECTOR_BYTES;
                let end_sector = (offset + len).div_ceil(SECTOR_BYTES);
                let latent_hit = state.latent.range(first_sector..end_sector).next().copied();
                if fault == Some(FaultEffect::MediaError) {
                    faults_logged.push((FaultKind::Media(kind), offset, len));
                    state.requests.get_mut(&number).expect("request exists").result =
                        Err(self.error(kind, offset, len));
                } else if let Some(sector) = latent_hit {
                    faults_logged.push((FaultKind::LatentSector, sector * SECTOR_BYTES, SECTOR_BYTES));
                    state.requests.get_mut(&number).expect("request exists").result =
                        Err(self.error(kind, offset, len));
                } else {
                    let mut data = state.read_buffers.pop().unwrap_or_default();
                    if data.len() < len as usize {
                        data.resize(len as usize, 0);
                    }
                    // (Longer from an earlier read: only the first `len` bytes are this read's.)
                    state.store.read(offset, &mut data[..len as usize], self.content.as_deref());
                    state.requests.get_mut(&number).expect("request exists").read = data;
                }
            }
            IoKind::Write => {
                let data = state
                    .requests
                    .get_mut(&number)
                    .expect("request exists")
                    .write
                    .take()
                    .expect("a write carries data until it executes");
                match fault {
                    Some(FaultEffect::MediaError) => {
                        faults_logged.push((FaultKind::Media(kind), offset, len));
                        // A failed write lands on some sectors and not others.
                        for (start, piece_len) in unit_pieces(offset, len, crash::AtomicUnit::Sector) {
                            if state.faults_rng.ratio(1, 2) {
                                let piece = WriteData::Bytes(data.slice(start - offset, piece_len).into_owned());
                                self.land(state, number, start, piece, false);
                            }
                        }
                        state.requests.get_mut(&number).expect("request exists").result =
                            Err(self.error(kind, offset, len));
                    }
                    Some(FaultEffect::Misdirect) => {
                        let sectors = (state.len_bytes - len) / SECTOR_BYTES;
                        let target = state.faults_rng.range_inclusive(0, sectors) * SECTOR_BYTES;
                        faults_logged.push((FaultKind::Misdirected, target, len));
                        self.land(state, number, target, WriteData::Bytes(data.into_bytes()), fua);
                    }
                    Some(FaultEffect::LatentSector) => {
                        let sector = offset / SECTOR_BYTES + state.faults_rng.below(len.div_ceil(SECTOR_BYTES));
                        self.land(state, number, offset, data, fua);
                        state.latent.insert(sector);
                        faults_logged.push((FaultKind::LatentSectorCreated, sector * SECTOR_BYTES, SECTOR_BYTES));
                    }
                    None => self.land(state, number, offset, data, fua),
                }
            }
            IoKind::Flush => {
                if fault == Some(FaultEffect::MediaError) {
                    faults_logged.push((FaultKind::Media(kind), 0, 0));
                    state.requests.get_mut(&number).expect("request exists").result = Err(self.error(kind, 0, 0));
                } else {
                    state.cache.flush(&mut state.store.pool);
                    state.durable_len_bytes = state.len_bytes;
                }
            }
            IoKind::SetLen => {
                let new_len = offset;
                if new_len < state.len_bytes {
                    state.store.discard_from(new_len);
                    state.latent.retain(|sector| sector * SECTOR_BYTES < new_len);
                    // A shrink is durable at once (see the BlockDevice contract).
                    state.durable_len_bytes = state.durable_len_bytes.min(new_len);
                }
                state.len_bytes = new_len;
            }
        }
        state.stats.faults += faults_logged.len() as u64;
        let delay = state.timing.range_inclusive(0, self.config.borrow().profile.completion_delay_max_ns);
        let next = if state.waiting.is_empty() {
            None
        } else {
            let index = state.timing.below(state.waiting.len() as u64) as usize;
            Some(state.waiting.swap_remove(index))
        };
        drop(guard);
        self.log(EventKind::Execute(kind), number, offset, len);
        for (fault, at, fault_len) in faults_logged {
            self.log(EventKind::Fault(fault), number, at, fault_len);
        }
        self.sim.schedule_sink(now + delay, self.sink.get(), number << 1 | COMPLETE);
        if let Some(next) = next {
            self.start(next);
        }
        self.destage_over_capacity();
    }

    /// Lands write data in the volatile cache (visible now, durable later).
    fn land(&self, state: &mut DiskState, request: u64, offset_bytes: u64, data: WriteData, fua: bool) {
        let len = data.len_bytes();
        if len == 0 {
            return;
        }
        let first_full = offset_bytes.div_ceil(SECTOR_BYTES);
        let end_full = (offset_bytes + len) / SECTOR_BYTES;
        if first_full < end_full && state.latent.range(first_full..end_full).next().is_some() {
            let rewritten: Vec<u64> = state.latent.range(first_full..end_full).copied().collect();
            for sector in rewritten {
                state.latent.remove(&sector);
            }
        }
        state.cache.land(&mut state.store, self.content.as_deref(), request, offset_bytes, data, fua);
        if cfg!(debug_assertions) && state.stats.writes.is_multiple_of(4096) {
            state.cache.assert_invariants();
        }
    }

    /// Makes the oldest unflushed writes durable while the cache is over capacity.
    fn destage_over_capacity(&self) {
        let capacity = self.config.borrow().profile.cache_bytes;
        loop {
            let mut guard = self.state.borrow_mut();
            if guard.cache.pending_bytes() <= capacity {
                return;
            }
            let state = &mut *guard;
            let (request, offset, len) = state
                .cache
                .destage_oldest(self.content.as_deref(), &mut state.store.pool)
                .expect("pending bytes imply a pending write");
            state.stats.destaged_writes += 1;
            drop(guard);
            self.log(EventKind::Destage, request, offset, len);
        }
    }

    fn complete(&self, number: u64) {
        let mut state = self.state.borrow_mut();
        let Some(request) = state.requests.get_mut(&number) else { return };
        debug_assert_eq!(request.phase, Phase::Executed);
        request.phase = Phase::Done;
        let (kind, offset, len, ok) = (request.kind, request.offset_bytes, request.len_bytes, request.result.is_ok());
        let waker = request.waker.take();
        if request.abandoned {
            state.requests.remove(&number);
        }
        drop(state);
        self.log(if ok { EventKind::Complete(kind) } else { EventKind::Failed(kind) }, number, offset, len);
        if let Some(waker) = waker {
            waker.wake();
        }
    }
}

impl EventSink for DiskInner {
    fn on_timed(&self, token: u64) {
        match token & 1 {
            EXECUTE => self.execute(token >> 1),
            _ => self.complete(token >> 1),
        }
    }
}

/// The future of one submitted request.
struct IoWait<'a> {
    disk: &'a DiskInner,
    request: u64,
    kind: IoKind,
    read_into: Option<&'a mut [u8]>,
}

impl Future for IoWait<'_> {
    type Output = Result<(), DeviceError>;
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let disk = self.disk;
        let mut state = disk.state.borrow_mut();
        let Some(request) = state.requests.get_mut(&self.request) else {
            return Poll::Ready(Err(DeviceError::Crashed { device: disk.name.to_string(), kind: self.kind }));
        };
        if request.phase != Phase::Done {
            request.waker = Some(cx.waker().clone());
            drop(state);
            disk.sim.note_wait(WaitLabel::Io { device: Rc::clone(&disk.name), request: self.request, kind: self.kind });
            return Poll::Pending;
        }
        let Request { read, result, .. } = state.requests.remove(&self.request).expect("request is present");
        if let (Some(buf), Ok(())) = (self.read_into.as_mut(), &result) {
            buf.copy_from_slice(&read[..buf.len()]);
        }
        if read.capacity() > 0
            && read.capacity() <= READ_BUFFER_MAX_BYTES
            && state.read_buffers.len() < READ_BUFFERS_KEPT
        {
            state.read_buffers.push(read);
        }
        Poll::Ready(result)
    }
}

impl Drop for IoWait<'_> {
    fn drop(&mut self) {
        let mut state = self.disk.state.borrow_mut();
        if let Some(request) = state.requests.get_mut(&self.request) {
            if request.phase == Phase::Done {
                state.requests.remove(&self.request);
            } else {
                request.abandoned = true;
                request.waker = None;
            }
        }
    }
}

impl SimDisk {
    fn wait<'a>(
        &'a self,
        submitted: Result<u64, DeviceError>,
        kind: IoKind,
        read_into: Option<&'a mut [u8]>,
    ) -> IoFuture<'a, ()> {
        match submitted {
            Ok(request) => Box::pin(IoWait { disk: &self.inner, request, kind, read_into }),
            Err(error) => Box::pin(std::future::ready(Err(error))),
        }
    }
}

impl BlockDevice for SimDisk {
    fn name(&self) -> &str {
        &self.inner.name
    }

    fn len_bytes(&self) -> u64 {
        self.inner.state.borrow().len_bytes
    }

    fn read_at<'a>(&'a self, offset_bytes: u64, buf: &'a mut [u8]) -> IoFuture<'a, ()> {
        let submitted = self.inner.submit(IoKind::Read, offset_bytes, buf.len() as u64, None, false);
        self.wait(submitted, IoKind::Read, Some(buf))
    }

    fn write_at<'a>(&'a self, offset_bytes: u64, data: &'a [u8], flags: WriteFlags) -> IoFuture<'a, ()> {
        let submitted = self.inner.submit(IoKind::Write, offset_bytes, data.len() as u64, Some(data), flags.fua);
        self.wait(submitted, IoKind::Write, None)
    }

    fn flush(&self) -> IoFuture<'_, ()> {
        let submitted = self.inner.submit(IoKind::Flush, 0, 0, None, false);
        self.wait(submitted, IoKind::Flush, None)
    }

    fn set_len(&self, len_bytes: u64) -> IoFuture<'_, ()> {
        // The new length travels in the offset field of the request.
        let submitted = self.inner.submit(IoKind::SetLen, len_bytes, 0, None, false);
        self.wait(submitted, IoKind::SetLen, None)
    }
}
