//! A plain single-threaded executor on the wall clock, and [`HostEnv`] over it.

use std::cell::RefCell;
use std::collections::{BTreeMap, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Wake, Waker};
use std::time::{Duration, Instant};

use fvd_engine::{Env, Join, LocalFuture, Progress, ProgressPoint};
use fvd_sim::{Seed, SimRng};

type Task = Pin<Box<dyn Future<Output = ()>>>;

struct QueueWaker {
    id: u64,
    queue: Arc<Mutex<VecDeque<u64>>>,
}

impl Wake for QueueWaker {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }
    fn wake_by_ref(self: &Arc<Self>) {
        self.queue.lock().unwrap_or_else(|p| p.into_inner()).push_back(self.id);
    }
}

#[derive(Default)]
struct Shared {
    next_id: u64,
    tasks: BTreeMap<u64, Option<Task>>,
    /// Timers: (deadline, sequence) -> waker.
    timers: BTreeMap<(Instant, u64), Waker>,
    timer_seq: u64,
}

/// A FIFO single-threaded executor: polls woken tasks in wake order and sleeps the thread until
/// the next timer when nothing is ready.
#[derive(Clone, Default)]
pub struct HostExecutor {
    shared: Rc<RefCell<Shared>>,
    queue: Arc<Mutex<VecDeque<u64>>>,
}

impl std::fmt::Debug for HostExecutor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HostExecutor").finish_non_exhaustive()
    }
}

impl HostExecutor {
    /// A new executor with no tasks.
    pub fn new() -> HostExecutor {
        HostExecutor::default()
    }

    /// Starts `future` as a task; the returned [`Join`] resolves when it ends.
    pub fn spawn(&self, future: impl Future<Output = ()> + 'static) -> Join {
        let done = Rc::new(RefCell::new((false, None::<Waker>)));
        let marker = Rc::clone(&done);
        let task: Task = Box::pin(async move {
            future.await;
            let waiter = {
                let mut done = marker.borrow_mut();
                done.0 = true;
                done.1.take()
            };
            if let Some(waiter) = waiter {
                waiter.wake();
            }
        });
        let id = {
            let mut shared = self.shared.borrow_mut();
            let id = shared.next_id;
            shared.next_id += 1;
            shared.tasks.insert(id, Some(task));
            id
        };
        self.queue.lock().unwrap_or_else(|p| p.into_inner()).push_back(id);
        Box::pin(std::future::poll_fn(move |cx| {
            let mut done = done.borrow_mut();
            if done.0 {
                Poll::Ready(())
            } else {
                done.1 = Some(cx.waker().clone());
                Poll::Pending
            }
        }))
    }

    /// A future that completes after `duration`.
    pub fn sleep(&self, duration: Duration) -> LocalFuture<'static, ()> {
        let deadline = Instant::now() + duration;
        let shared = Rc::clone(&self.shared);
        let mut registered = false;
        Box::pin(std::future::poll_fn(move |cx| {
            if Instant::now() >= deadline {
                return Poll::Ready(());
            }
            if !registered {
                registered = true;
                let mut shared = shared.borrow_mut();
                let seq = shared.timer_seq;
                shared.timer_seq += 1;
                shared.timers.insert((deadline, seq), cx.waker().clone());
            }
            Poll::Pending
        }))
    }

    /// Runs until `future` completes. Panics if it can never complete (nothing ready, no timers):
    /// on real files that is a bug in the engine, not an operating error.
    pub fn block_on<T: 'static>(&self, future: impl Future<Output = T> + 'static) -> T {
        let slot = Rc::new(RefCell::new(None));
        let output = Rc::clone(&slot);
        let _join = self.spawn(async move {
            let value = future.await;
            *output.borrow_mut() = Some(value);
        });
        loop {
            if let Some(value) = slot.borrow_mut().take() {
                return value;
            }
            let next = self.queue.lock().unwrap_or_else(|p| p.into_inner()).pop_front();
            if let Some(id) = next {
                let task = self.shared.borrow_mut().tasks.get_mut(&id).and_then(Option::take);
                let Some(mut task) = task else { continue };
                let waker = Waker::from(Arc::new(QueueWaker { id, queue: Arc::clone(&self.queue) }));
                if task.as_mut().poll(&mut Context::from_waker(&waker)).is_pending() {
                    self.shared.borrow_mut().tasks.insert(id, Some(task));
                } else {
                    self.shared.borrow_mut().tasks.remove(&id);
                }
                continue;
            }
            let first_timer = self.shared.borrow().timers.keys().next().copied();
            let Some(key) = first_timer else {
                panic!("host executor: the main future waits on nothing that can ever wake it");
            };
            let now = Instant::now();
            if key.0 > now {
                std::thread::sleep(key.0 - now);
            }
            let waker = self.shared.borrow_mut().timers.remove(&key).expect("timer present");
            waker.wake();
        }
    }
}

/// [`Env`] on the host: wall-clock time since creation, a ChaCha stream seeded by the caller,
/// the [`HostExecutor`], and progress points that are counted but never halt anything.
pub struct HostEnv {
    executor: HostExecutor,
    start: Instant,
    rng: RefCell<SimRng>,
    /// Counts by [`ProgressPoint::ALL`] position (one add per point on the I/O path).
    progress: RefCell<[u64; ProgressPoint::ALL.len()]>,
}

impl std::fmt::Debug for HostEnv {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HostEnv").finish_non_exhaustive()
    }
}

impl HostEnv {
    /// An environment on `executor` whose randomness comes from `seed`'s `engine` stream.
    pub fn new(executor: &HostExecutor, seed: Seed) -> HostEnv {
        HostEnv {
            executor: executor.clone(),
            start: Instant::now(),
            rng: RefCell::new(SimRng::stream(seed, fvd_sim::streams::ENGINE)),
            progress: RefCell::new([0; ProgressPoint::ALL.len()]),
        }
    }

    /// How many times each progress point was reported.
    pub fn progress_counts(&self) -> BTreeMap<&'static str, u64> {
        let counts = self.progress.borrow();
        ProgressPoint::ALL.iter().zip(counts.iter()).filter(|(_, n)| **n > 0).map(|(p, n)| (p.as_str(), *n)).collect()
    }
}

impl Env for HostEnv {
    fn now_ns(&self) -> u64 {
        self.start.elapsed().as_nanos() as u64
    }

    fn sleep_ns(&self, duration_ns: u64) -> LocalFuture<'static, ()> {
        self.executor.sleep(Duration::from_nanos(duration_ns))
    }

    fn random_u64(&self) -> u64 {
        self.rng.borrow_mut().next_u64()
    }

    fn spawn(&self, _name: &str, task: LocalFuture<'static, ()>) -> Join {
        self.executor.spawn(task)
    }

    fn progress(&self, progress: Progress) {
        let index = ProgressPoint::ALL.iter().position(|p| *p == progress.point).expect("ALL lists every point");
        self.progress.borrow_mut()[index] += 1;
    }
}
