//! Single-threaded async primitives the formats share (no OS threads: tasks of one executor).

use std::cell::{Cell, RefCell};
use std::future::poll_fn;
use std::task::{Poll, Waker};

/// A lock held across awaits by one task at a time. Releasing it wakes every waiter and the first
/// to run takes it, so the order comes from the executor (deterministic in the simulator) and a
/// waiter that gives up (its future dropped) never blocks the others. QED and Parallels serialise
/// allocating writes with it, as QEMU does.
#[derive(Debug, Default)]
pub struct AsyncLock {
    held: Cell<bool>,
    waiters: RefCell<Vec<Waker>>,
}

/// Holds an [`AsyncLock`] until dropped.
#[derive(Debug)]
pub struct AsyncLockGuard<'a> {
    lock: &'a AsyncLock,
}

impl AsyncLock {
    /// A free lock.
    pub fn new() -> AsyncLock {
        AsyncLock::default()
    }

    /// Waits for the lock.
    pub async fn lock(&self) -> AsyncLockGuard<'_> {
        poll_fn(|cx| {
            if self.held.get() {
                self.waiters.borrow_mut().push(cx.waker().clone());
                Poll::Pending
            } else {
                self.held.set(true);
                Poll::Ready(())
            }
        })
        .await;
        AsyncLockGuard { lock: self }
    }

    /// True while some task holds the lock.
    pub fn is_held(&self) -> bool {
        self.held.get()
    }
}

impl Drop for AsyncLockGuard<'_> {
    fn drop(&mut self) {
        assert!(self.lock.held.get(), "a guard exists only while its lock is held");
        self.lock.held.set(false);
        let waiters = std::mem::take(&mut *self.lock.waiters.borrow_mut());
        for waker in waiters {
            waker.wake();
        }
    }
}
