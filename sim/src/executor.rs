//! The seeded single-threaded executor and virtual clock.
//!
//! [`Sim`] owns the world: the clock in nanoseconds, the timeline of future wake-ups, the task
//! table and the event log. [`SimHandle`] is the cheap, weak handle that tasks, devices and the
//! engine environment hold. Among the tasks ready at one instant the executor picks by the
//! `scheduler` stream, so interleavings differ from seed to seed; timeline entries due at the same
//! instant are ordered by a tie-break drawn from the same stream. When nothing is ready it jumps
//! to the next timeline entry. When nothing is ready and the timeline is empty while tasks still
//! wait, the run is a liveness failure ([`RunError::Stall`]) naming every waiting task and what it
//! waits on.

use std::cell::{Cell, RefCell};
use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::future::Future;
use std::pin::Pin;
use std::rc::{Rc, Weak};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Wake, Waker};

use fvd_contract::{IoKind, Progress};

use crate::log::{Event, EventKind, EventLog, Source};
use crate::rng::{Seed, SimRng};

/// A task id: slot index in the low 32 bits, slot generation in the high 32.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct TaskId(u64);

impl TaskId {
    fn new(index: u32, generation: u32) -> TaskId {
        TaskId((u64::from(generation) << 32) | u64::from(index))
    }
    fn index(self) -> usize {
        (self.0 & 0xffff_ffff) as usize
    }
    /// The raw id, as logged.
    pub fn raw(self) -> u64 {
        self.0
    }
}

/// What a pending task waits on, for stall reports. Set by the leaf future that returned
/// `Pending` ([`SimHandle::note_wait`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WaitLabel {
    /// The task's leaf future did not say (an engine lock or channel, for example).
    Unlabelled,
    /// A timer.
    Sleep {
        /// When it fires.
        until_ns: u64,
    },
    /// A device request.
    Io {
        /// Device name.
        device: Rc<str>,
        /// Request number on that device.
        request: u64,
        /// Request kind.
        kind: IoKind,
    },
    /// Another task's end.
    Join {
        /// The awaited task.
        task: TaskId,
    },
    /// A named condition.
    Named(&'static str),
}

impl std::fmt::Display for WaitLabel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            WaitLabel::Unlabelled => f.write_str("an unlabelled future (lock, channel or custom)"),
            WaitLabel::Sleep { until_ns } => write!(f, "a timer at {until_ns} ns"),
            WaitLabel::Io { device, request, kind } => write!(f, "{kind} #{request} on {device}"),
            WaitLabel::Join { task } => write!(f, "the end of task {}", task.raw()),
            WaitLabel::Named(name) => f.write_str(name),
        }
    }
}

/// One waiting task in a [`StallReport`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WaitingTask {
    /// Task id.
    pub id: TaskId,
    /// Task name given at spawn.
    pub name: String,
    /// What it waits on.
    pub waiting_on: WaitLabel,
}

/// The waiting tasks of a run that can make no more progress.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StallReport {
    /// Virtual time of the stall.
    pub at_ns: u64,
    /// Every task still alive, in id order.
    pub waiting: Vec<WaitingTask>,
}

impl std::fmt::Display for StallReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} task(s) waiting at {} ns with nothing left to wake them:", self.waiting.len(), self.at_ns)?;
        for task in &self.waiting {
            write!(f, "\n  task {} {:?} waits on {}", task.id.raw(), task.name, task.waiting_on)?;
        }
        Ok(())
    }
}

/// Why a run stopped before its main future finished.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RunError {
    /// Liveness failure: tasks wait and no event can ever wake them.
    Stall(StallReport),
    /// Liveness failure: the virtual-time limit passed with the main future unfinished.
    TimeLimit(StallReport),
    /// The world was halted (a crash was requested) at this point.
    Halted(Halt),
}

impl std::fmt::Display for RunError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RunError::Stall(report) => write!(f, "stall: {report}"),
            RunError::TimeLimit(report) => write!(f, "virtual time limit passed: {report}"),
            RunError::Halted(halt) => write!(f, "halted at {} ns: {}", halt.at_ns, halt.cause),
        }
    }
}

/// Where and why the world was halted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Halt {
    /// Virtual time of the halt.
    pub at_ns: u64,
    /// Event count at the halt.
    pub at_event: u64,
    /// What asked for it.
    pub cause: HaltCause,
}

/// What asked for a halt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HaltCause {
    /// The progress hook asked for it at this engine point.
    Progress(Progress),
    /// The event budget set by [`SimHandle::halt_after_events`] was reached.
    EventCount(u64),
    /// A task called [`SimHandle::halt`].
    Requested,
}

impl std::fmt::Display for HaltCause {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            HaltCause::Progress(p) => write!(f, "engine point {} (detail {})", p.point, p.detail),
            HaltCause::EventCount(n) => write!(f, "event {n}"),
            HaltCause::Requested => f.write_str("requested"),
        }
    }
}

/// Receives timeline entries scheduled with [`SimHandle::schedule_sink`] (devices use it for
/// their execute and complete phases).
pub trait EventSink {
    /// Called when the entry `token` comes due; the world is not borrowed.
    fn on_timed(&self, token: u64);
}

enum Target {
    Waker(Waker),
    Sink { sink: u32, token: u64 },
}

struct Timed {
    at_ns: u64,
    tie: u64,
    seq: u64,
    target: Target,
}

impl PartialEq for Timed {
    fn eq(&self, other: &Timed) -> bool {
        self.seq == other.seq
    }
}
impl Eq for Timed {}
impl PartialOrd for Timed {
    fn partial_cmp(&self, other: &Timed) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Timed {
    fn cmp(&self, other: &Timed) -> std::cmp::Ordering {
        (self.at_ns, self.tie, self.seq).cmp(&(other.at_ns, other.tie, other.seq))
    }
}

type TaskFuture = Pin<Box<dyn Future<Output = ()>>>;

struct TaskEntry {
    name: Rc<str>,
    future: Option<TaskFuture>,
    waker: Waker,
    queued: bool,
    waiting: WaitLabel,
}

struct Slot {
    generation: u32,
    entry: Option<TaskEntry>,
}

struct TaskWaker {
    id: TaskId,
    queue: Arc<Mutex<Vec<TaskId>>>,
}

impl Wake for TaskWaker {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }
    fn wake_by_ref(self: &Arc<Self>) {
        self.queue.lock().unwrap_or_else(|poison| poison.into_inner()).push(self.id);
    }
}

type StepHook = Box<dyn FnMut(u64)>;
type ProgressHook = Box<dyn FnMut(Progress, u64) -> bool>;

struct World {
    seed: Seed,
    now_ns: Cell<u64>,
    scheduler: RefCell<SimRng>,
    timeline: RefCell<BinaryHeap<Reverse<Timed>>>,
    next_seq: Cell<u64>,
    slots: RefCell<Vec<Slot>>,
    free_slots: RefCell<Vec<u32>>,
    live_tasks: Cell<usize>,
    wake_queue: Arc<Mutex<Vec<TaskId>>>,
    ready: RefCell<Vec<TaskId>>,
    current: Cell<Option<TaskId>>,
    log: RefCell<EventLog>,
    halt: RefCell<Option<Halt>>,
    halt_at_event: Cell<Option<u64>>,
    time_limit_ns: Cell<Option<u64>>,
    sinks: RefCell<Vec<Weak<dyn EventSink>>>,
    progress_hook: RefCell<Option<ProgressHook>>,
    step_hook: RefCell<Option<StepHook>>,
    step_hook_seen: Cell<u64>,
    engine_source: Source,
    wake_scratch: RefCell<Vec<TaskId>>,
}

/// Options of a simulated world.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SimOptions {
    /// How many recent events the log keeps for failure reports.
    pub log_tail_capacity: usize,
    /// Keep every event (for `repro` dumps); memory grows with the run.
    pub record_all_events: bool,
}

impl Default for SimOptions {
    fn default() -> SimOptions {
        SimOptions { log_tail_capacity: 256, record_all_events: false }
    }
}

/// The owning handle of a simulated world. Dropping it drops every task and timeline entry.
pub struct Sim {
    world: Rc<World>,
    handle: SimHandle,
}

impl std::fmt::Debug for Sim {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sim").field("seed", &self.world.seed).field("now_ns", &self.world.now_ns.get()).finish()
    }
}

impl Drop for Sim {
    fn drop(&mut self) {
        self.abort_all_tasks();
    }
}

impl std::ops::Deref for Sim {
    type Target = SimHandle;
    fn deref(&self) -> &SimHandle {
        &self.handle
    }
}

impl Sim {
    /// A new world at virtual time 0 driven by `seed`.
    pub fn new(seed: Seed) -> Sim {
        Sim::with_options(seed, SimOptions::default())
    }

    /// A new world with explicit options.
    pub fn with_options(seed: Seed, options: SimOptions) -> Sim {
        let world = Rc::new(World {
            seed,
            now_ns: Cell::new(0),
            scheduler: RefCell::new(SimRng::stream(seed, crate::rng::streams::SCHEDULER)),
            timeline: RefCell::new(BinaryHeap::new()),
            next_seq: Cell::new(0),
            slots: RefCell::new(Vec::new()),
            free_slots: RefCell::new(Vec::new()),
            live_tasks: Cell::new(0),
            wake_queue: Arc::new(Mutex::new(Vec::new())),
            ready: RefCell::new(Vec::new()),
            current: Cell::new(None),
            log: RefCell::new(EventLog::new(options.log_tail_capacity, options.record_all_events)),
            halt: RefCell::new(None),
            halt_at_event: Cell::new(None),
            time_limit_ns: Cell::new(None),
            sinks: RefCell::new(Vec::new()),
            progress_hook: RefCell::new(None),
            step_hook: RefCell::new(None),
            step_hook_seen: Cell::new(0),
            engine_source: Source::new("engine"),
            wake_scratch: RefCell::new(Vec::new()),
        });
        let handle = SimHandle { world: Rc::downgrade(&world) };
        Sim { world, handle }
    }

    /// A weak handle for tasks, devices and environments.
    pub fn handle(&self) -> SimHandle {
        self.handle.clone()
    }

    /// Runs the world until `future` finishes, the world halts, or no progress is possible.
    ///
    /// Errors: [`RunError::Stall`] and [`RunError::TimeLimit`] (liveness failures) and
    /// [`RunError::Halted`] (a requested crash point). Panics inside tasks propagate.
    pub fn run<T: 'static>(&self, future: impl Future<Output = T> + 'static) -> Result<T, RunError> {
        // A halt belongs to the run it interrupts: one requested as the previous run finished
        // anyway is moot.
        *self.world.halt.borrow_mut() = None;
        let main = self.handle.spawn("main", future);
        loop {
            self.call_step_hook();
            if let Some(value) = main.try_take() {
                return Ok(value);
            }
            if let Some(halt) = self.world.halt.borrow_mut().take() {
                return Err(RunError::Halted(halt));
            }
            self.collect_wakes();
            let ready_count = self.world.ready.borrow().len() as u64;
            let next_due_now =
                self.world.timeline.borrow().peek().is_some_and(|Reverse(t)| t.at_ns <= self.world.now_ns.get());
            // Entries due at this very instant race with ready tasks: pick among them by seed.
            let take_timed =
                ready_count == 0 || (next_due_now && self.world.scheduler.borrow_mut().below(ready_count + 1) == 0);
            if !take_timed {
                let index = self.world.scheduler.borrow_mut().below(ready_count) as usize;
                let id = self.world.ready.borrow_mut().swap_remove(index);
                self.poll_task(id);
                continue;
            }
            let next = self.world.timeline.borrow_mut().pop();
            let Some(Reverse(timed)) = next else {
                return Err(RunError::Stall(self.stall_report()));
            };
            if let Some(limit) = self.world.time_limit_ns.get()
                && timed.at_ns > limit
            {
                self.world.timeline.borrow_mut().push(Reverse(timed));
                return Err(RunError::TimeLimit(self.stall_report()));
            }
            let now = self.world.now_ns.get().max(timed.at_ns);
            self.world.now_ns.set(now);
            match timed.target {
                Target::Waker(waker) => waker.wake(),
                Target::Sink { sink, token } => {
                    let sink = self.world.sinks.borrow()[sink as usize].upgrade();
                    if let Some(sink) = sink {
                        sink.on_timed(token);
                    }
                }
            }
        }
    }

    /// Calls the step hook if the last step logged events (nothing of the world is borrowed).
    fn call_step_hook(&self) {
        if self.world.step_hook.borrow().is_none() {
            return;
        }
        let count = self.world.log.borrow().count();
        if count == self.world.step_hook_seen.get() {
            return;
        }
        self.world.step_hook_seen.set(count);
        let hook = self.world.step_hook.borrow_mut().take();
        if let Some(mut hook) = hook {
            hook(count);
            let mut slot = self.world.step_hook.borrow_mut();
            if slot.is_none() {
                *slot = Some(hook);
            }
        }
    }

    /// Drops every task and timeline entry (after a crash the old world's tasks are gone).
    /// Virtual time, the event log and the random streams carry on.
    pub fn abort_all_tasks(&self) {
        let entries: Vec<TaskEntry> =
            self.world.slots.borrow_mut().iter_mut().filter_map(|slot| slot.entry.take()).collect();
        let mut free = self.world.free_slots.borrow_mut();
        free.clear();
        for (index, slot) in self.world.slots.borrow_mut().iter_mut().enumerate() {
            slot.generation = slot.generation.wrapping_add(1);
            free.push(index as u32);
        }
        drop(free);
        self.world.live_tasks.set(0);
        self.world.ready.borrow_mut().clear();
        self.world.wake_queue.lock().unwrap_or_else(|p| p.into_inner()).clear();
        let timeline = std::mem::take(&mut *self.world.timeline.borrow_mut());
        // Dropping futures may run destructors that use the handle: drop with nothing borrowed.
        drop(entries);
        drop(timeline);
        *self.world.halt.borrow_mut() = None;
    }

    fn collect_wakes(&self) {
        let mut woken = self.world.wake_scratch.borrow_mut();
        std::mem::swap(&mut *woken, &mut *self.world.wake_queue.lock().unwrap_or_else(|p| p.into_inner()));
        if woken.is_empty() {
            return;
        }
        let mut slots = self.world.slots.borrow_mut();
        let mut ready = self.world.ready.borrow_mut();
        for id in woken.drain(..) {
            let Some(slot) = slots.get_mut(id.index()) else { continue };
            if slot.generation != (id.0 >> 32) as u32 {
                continue;
            }
            if let Some(entry) = &mut slot.entry
                && !entry.queued
            {
                entry.queued = true;
                ready.push(id);
            }
        }
    }

    fn poll_task(&self, id: TaskId) {
        let (mut future, waker) = {
            let mut slots = self.world.slots.borrow_mut();
            let entry = slots[id.index()].entry.as_mut().expect("a ready task has a live slot");
            entry.queued = false;
            entry.waiting = WaitLabel::Unlabelled;
            (entry.future.take().expect("a task is never polled re-entrantly"), entry.waker.clone())
        };
        self.world.current.set(Some(id));
        let mut context = Context::from_waker(&waker);
        let poll = future.as_mut().poll(&mut context);
        self.world.current.set(None);
        match poll {
            Poll::Pending => {
                let mut slots = self.world.slots.borrow_mut();
                if let Some(entry) = slots[id.index()].entry.as_mut() {
                    entry.future = Some(future);
                }
            }
            Poll::Ready(()) => {
                let entry = self.world.slots.borrow_mut()[id.index()].entry.take();
                if entry.is_some() {
                    let mut slots = self.world.slots.borrow_mut();
                    slots[id.index()].generation = slots[id.index()].generation.wrapping_add(1);
                    self.world.free_slots.borrow_mut().push(id.index() as u32);
                    self.world.live_tasks.set(self.world.live_tasks.get() - 1);
                }
                drop(future);
                drop(entry);
                let source = Source::new(&format!("task:{}", id.index()));
                self.handle.log(Event {
                    at_ns: self.world.now_ns.get(),
                    source,
                    kind: EventKind::TaskEnd,
                    request: id.raw(),
                    offset_bytes: 0,
                    len_bytes: 0,
                });
            }
        }
    }

    fn stall_report(&self) -> StallReport {
        let slots = self.world.slots.borrow();
        let waiting = slots
            .iter()
            .enumerate()
            .filter_map(|(index, slot)| {
                slot.entry.as_ref().map(|entry| WaitingTask {
                    id: TaskId::new(index as u32, slot.generation),
                    name: entry.name.to_string(),
                    waiting_on: entry.waiting.clone(),
                })
            })
            .collect();
        StallReport { at_ns: self.world.now_ns.get(), waiting }
    }

    /// The rolling hash of the event log.
    pub fn log_hash(&self) -> u64 {
        self.world.log.borrow().hash()
    }

    /// Runs `f` on the event log.
    pub fn with_log<R>(&self, f: impl FnOnce(&EventLog) -> R) -> R {
        f(&self.world.log.borrow())
    }

    /// How many tasks are alive.
    pub fn live_tasks(&self) -> usize {
        self.world.live_tasks.get()
    }
}

/// A weak, cloneable handle on the world, held by tasks, devices and environments.
///
/// Every method panics if the [`Sim`] was dropped: using a world after its end is a broken
/// invariant, not an operating error.
#[derive(Clone)]
pub struct SimHandle {
    world: Weak<World>,
}

impl std::fmt::Debug for SimHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SimHandle")
    }
}

impl SimHandle {
    fn world(&self) -> Rc<World> {
        self.world.upgrade().expect("the simulated world was dropped while a handle was in use")
    }

    /// Sets the hook called at every engine progress point with the point and the current time;
    /// returning `true` halts the world there (a crash at a named point).
    pub fn set_progress_hook(&self, hook: impl FnMut(Progress, u64) -> bool + 'static) {
        *self.world().progress_hook.borrow_mut() = Some(Box::new(hook));
    }

    /// Sets the hook called between steps of [`Sim::run`] whenever the last step logged events,
    /// with the event count: the world as a halt at that count would leave it (a task's poll or
    /// a device's timed event has finished; nothing is borrowed). Crash-state enumeration
    /// observes every moment of a run through it. The hook must not change the world.
    pub fn set_step_hook(&self, hook: impl FnMut(u64) + 'static) {
        let world = self.world();
        world.step_hook_seen.set(world.log.borrow().count());
        *world.step_hook.borrow_mut() = Some(Box::new(hook));
    }

    /// Removes the step hook.
    pub fn clear_step_hook(&self) {
        *self.world().step_hook.borrow_mut() = None;
    }

    /// Removes the progress hook.
    pub fn clear_progress_hook(&self) {
        *self.world().progress_hook.borrow_mut() = None;
    }

    /// Halts the world once the event log reaches `count` events (a crash at a chosen event);
    /// `None` clears it.
    pub fn halt_after_events(&self, count: Option<u64>) {
        self.world().halt_at_event.set(count);
    }

    /// Makes [`Sim::run`] fail with [`RunError::TimeLimit`] instead of passing `limit_ns`.
    pub fn set_time_limit_ns(&self, limit_ns: Option<u64>) {
        self.world().time_limit_ns.set(limit_ns);
    }

    /// The run's master seed.
    pub fn seed(&self) -> Seed {
        self.world().seed
    }

    /// The named random stream of this run (see [`SimRng::stream`]).
    pub fn stream(&self, name: &str) -> SimRng {
        SimRng::stream(self.seed(), name)
    }

    /// Current virtual time in nanoseconds.
    pub fn now_ns(&self) -> u64 {
        self.world().now_ns.get()
    }

    /// A future that completes at virtual time `now + duration_ns`.
    pub fn sleep_ns(&self, duration_ns: u64) -> Sleep {
        Sleep { handle: self.clone(), until_ns: self.now_ns().saturating_add(duration_ns), registered: false }
    }

    /// Spawns `future` as a task named `name`.
    pub fn spawn<T: 'static>(&self, name: &str, future: impl Future<Output = T> + 'static) -> JoinHandle<T> {
        let world = self.world();
        let state = Rc::new(RefCell::new(JoinState { result: None, waiter: None }));
        let task_state = Rc::clone(&state);
        let wrapped = async move {
            let value = future.await;
            let waiter = {
                let mut state = task_state.borrow_mut();
                state.result = Some(value);
                state.waiter.take()
            };
            if let Some(waiter) = waiter {
                waiter.wake();
            }
        };
        let index = world.free_slots.borrow_mut().pop().unwrap_or_else(|| {
            let mut slots = world.slots.borrow_mut();
            slots.push(Slot { generation: 0, entry: None });
            (slots.len() - 1) as u32
        });
        let generation = world.slots.borrow()[index as usize].generation;
        let id = TaskId::new(index, generation);
        let waker = Waker::from(Arc::new(TaskWaker { id, queue: Arc::clone(&world.wake_queue) }));
        world.slots.borrow_mut()[index as usize].entry = Some(TaskEntry {
            name: Rc::from(name),
            future: Some(Box::pin(wrapped)),
            waker: waker.clone(),
            queued: false,
            waiting: WaitLabel::Unlabelled,
        });
        world.live_tasks.set(world.live_tasks.get() + 1);
        waker.wake();
        self.log(Event {
            at_ns: world.now_ns.get(),
            source: Source::new(&format!("task:{index}")),
            kind: EventKind::Spawn,
            request: id.raw(),
            offset_bytes: 0,
            len_bytes: 0,
        });
        JoinHandle { state, task: id, handle: self.clone() }
    }

    /// The number of events logged so far.
    pub fn event_count(&self) -> u64 {
        self.world().log.borrow().count()
    }

    /// Records what the current task's leaf future waits on (for stall reports).
    pub fn note_wait(&self, label: WaitLabel) {
        let world = self.world();
        if let Some(id) = world.current.get()
            && let Some(entry) = world.slots.borrow_mut()[id.index()].entry.as_mut()
        {
            entry.waiting = label;
        }
    }

    /// Appends `event` to the log and applies an event-count halt if one is due.
    pub fn log(&self, event: Event) {
        let world = self.world();
        let count = {
            let mut log = world.log.borrow_mut();
            log.push(event);
            log.count()
        };
        if world.halt_at_event.get() == Some(count) {
            world.halt_at_event.set(None);
            self.halt_with(&world, HaltCause::EventCount(count));
        }
    }

    fn halt_with(&self, world: &World, cause: HaltCause) {
        let mut halt = world.halt.borrow_mut();
        if halt.is_none() {
            *halt = Some(Halt { at_ns: world.now_ns.get(), at_event: world.log.borrow().count(), cause });
        }
    }

    /// Halts the world: [`Sim::run`] returns [`RunError::Halted`] once the running task yields.
    pub fn halt(&self) {
        let world = self.world();
        self.halt_with(&world, HaltCause::Requested);
    }

    /// True once a halt was requested and not yet returned by [`Sim::run`].
    pub fn halted(&self) -> bool {
        self.world().halt.borrow().is_some()
    }

    /// Logs an engine progress point and asks the progress hook whether to halt here.
    pub fn report_progress(&self, progress: Progress) {
        let world = self.world();
        let now = world.now_ns.get();
        self.log(Event {
            at_ns: now,
            source: world.engine_source.clone(),
            kind: EventKind::Progress(progress.point),
            request: progress.detail,
            offset_bytes: 0,
            len_bytes: 0,
        });
        let hook = world.progress_hook.borrow_mut().take();
        if let Some(mut hook) = hook {
            let halt = hook(progress, now);
            let mut slot = world.progress_hook.borrow_mut();
            if slot.is_none() {
                *slot = Some(hook);
            }
            drop(slot);
            if halt {
                self.halt_with(&world, HaltCause::Progress(progress));
            }
        }
    }

    /// Registers a device (or any timed component); returns its sink number.
    pub fn register_sink(&self, sink: Weak<dyn EventSink>) -> u32 {
        let world = self.world();
        let mut sinks = world.sinks.borrow_mut();
        sinks.push(sink);
        (sinks.len() - 1) as u32
    }

    /// Schedules `sink.on_timed(token)` at `at_ns` (not before now). Entries due at the same
    /// instant run in an order drawn from the scheduler stream.
    pub fn schedule_sink(&self, at_ns: u64, sink: u32, token: u64) {
        self.schedule(at_ns, Target::Sink { sink, token });
    }

    fn schedule(&self, at_ns: u64, target: Target) {
        let world = self.world();
        let at_ns = at_ns.max(world.now_ns.get());
        let tie = world.scheduler.borrow_mut().next_u64();
        let seq = world.next_seq.get();
        world.next_seq.set(seq + 1);
        world.timeline.borrow_mut().push(Reverse(Timed { at_ns, tie, seq, target }));
    }
}

/// A virtual-time timer; see [`SimHandle::sleep_ns`].
pub struct Sleep {
    handle: SimHandle,
    until_ns: u64,
    registered: bool,
}

impl Future for Sleep {
    type Output = ();
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.handle.now_ns() >= self.until_ns {
            return Poll::Ready(());
        }
        if !self.registered {
            self.registered = true;
            self.handle.schedule(self.until_ns, Target::Waker(cx.waker().clone()));
        }
        self.handle.note_wait(WaitLabel::Sleep { until_ns: self.until_ns });
        Poll::Pending
    }
}

struct JoinState<T> {
    result: Option<T>,
    waiter: Option<Waker>,
}

/// Resolves to a spawned task's output. Dropping it does not cancel the task.
pub struct JoinHandle<T> {
    state: Rc<RefCell<JoinState<T>>>,
    task: TaskId,
    handle: SimHandle,
}

impl<T> JoinHandle<T> {
    /// The task's id.
    pub fn id(&self) -> TaskId {
        self.task
    }

    /// Takes the output if the task has finished.
    pub fn try_take(&self) -> Option<T> {
        self.state.borrow_mut().result.take()
    }
}

impl<T> Future for JoinHandle<T> {
    type Output = T;
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<T> {
        let mut state = self.state.borrow_mut();
        if let Some(value) = state.result.take() {
            return Poll::Ready(value);
        }
        state.waiter = Some(cx.waker().clone());
        drop(state);
        self.handle.note_wait(WaitLabel::Join { task: self.task });
        Poll::Pending
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sleeps_advance_virtual_time_and_order_wakeups() {
        let sim = Sim::new(Seed(1));
        let handle = sim.handle();
        let order = Rc::new(RefCell::new(Vec::new()));
        let result = sim.run({
            let order = Rc::clone(&order);
            async move {
                let mut joins = Vec::new();
                for delay in [300u64, 100, 200] {
                    let h = handle.clone();
                    let order = Rc::clone(&order);
                    joins.push(handle.spawn("sleeper", async move {
                        h.sleep_ns(delay).await;
                        order.borrow_mut().push((delay, h.now_ns()));
                        delay * 2
                    }));
                }
                let mut outputs = Vec::new();
                for join in joins {
                    outputs.push(join.await);
                }
                outputs
            }
        });
        assert_eq!(result.unwrap(), vec![600, 200, 400]);
        assert_eq!(*order.borrow(), vec![(100, 100), (200, 200), (300, 300)]);
        assert_eq!(sim.now_ns(), 300);
    }

    #[test]
    fn a_task_waiting_forever_is_reported_as_a_stall_with_its_label() {
        let sim = Sim::new(Seed(2));
        let handle = sim.handle();
        let error = sim
            .run(async move {
                let never = handle.spawn("stuck-worker", std::future::pending::<()>());
                never.await;
            })
            .unwrap_err();
        let RunError::Stall(report) = error else { panic!("expected a stall, got {error:?}") };
        assert_eq!(report.waiting.len(), 2);
        assert_eq!(report.waiting[0].name, "main");
        assert!(matches!(report.waiting[0].waiting_on, WaitLabel::Join { .. }));
        assert_eq!(report.waiting[1].name, "stuck-worker");
        assert_eq!(report.waiting[1].waiting_on, WaitLabel::Unlabelled);
        assert!(report.to_string().contains("stuck-worker"));
    }

    #[test]
    fn interleavings_depend_on_the_seed_and_replay_exactly() {
        fn order_for(seed: u64) -> Vec<u32> {
            let sim = Sim::new(Seed(seed));
            let handle = sim.handle();
            let order = Rc::new(RefCell::new(Vec::new()));
            let recorded = Rc::clone(&order);
            sim.run(async move {
                let joins: Vec<_> = (0..6u32)
                    .map(|i| {
                        let order = Rc::clone(&recorded);
                        handle.spawn("t", async move { order.borrow_mut().push(i) })
                    })
                    .collect();
                for join in joins {
                    join.await;
                }
            })
            .unwrap();
            order.take()
        }
        let orders: std::collections::BTreeSet<Vec<u32>> = (0..20).map(order_for).collect();
        assert!(orders.len() > 5, "seeds should give different interleavings, got {orders:?}");
        assert_eq!(order_for(5), order_for(5));
    }

    #[test]
    fn progress_hook_and_event_count_halt_the_world() {
        let sim = Sim::new(Seed(3));
        let handle = sim.handle();
        sim.set_progress_hook(|progress, _| progress.detail == 2);
        let error = sim
            .run(async move {
                for detail in 0..5 {
                    handle.report_progress(Progress { point: fvd_contract::ProgressPoint::GuestAck, detail });
                    handle.sleep_ns(10).await;
                }
            })
            .unwrap_err();
        let RunError::Halted(halt) = error else { panic!("expected a halt") };
        assert_eq!(halt.at_ns, 20);
        assert!(matches!(halt.cause, HaltCause::Progress(p) if p.detail == 2));
        sim.abort_all_tasks();
        assert_eq!(sim.live_tasks(), 0);
        sim.clear_progress_hook();
        let start = sim.event_count();
        sim.halt_after_events(Some(start + 1));
        let handle = sim.handle();
        let error = sim.run(async move { handle.sleep_ns(5).await }).unwrap_err();
        assert!(matches!(error, RunError::Halted(Halt { cause: HaltCause::EventCount(_), .. })));
    }

    #[test]
    fn time_limit_is_a_liveness_failure() {
        let sim = Sim::new(Seed(4));
        sim.set_time_limit_ns(Some(1_000));
        let handle = sim.handle();
        let error = sim.run(async move { handle.sleep_ns(5_000).await }).unwrap_err();
        assert!(matches!(error, RunError::TimeLimit(_)));
    }
}
