//! [`SimEnv`]: the engine's environment handle inside the simulated world.

use std::cell::RefCell;

use fvd_contract::{Env, Join, LocalFuture, Progress};

use crate::executor::SimHandle;
use crate::rng::SimRng;

/// Virtual time, the run's `engine` random stream, the seeded executor, and progress points
/// routed to the world's progress hook (so a scenario can crash at a named engine point).
pub struct SimEnv {
    handle: SimHandle,
    rng: RefCell<SimRng>,
}

impl std::fmt::Debug for SimEnv {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SimEnv").finish_non_exhaustive()
    }
}

impl SimEnv {
    /// The environment of `handle`'s world, drawing from its `engine` stream.
    pub fn new(handle: &SimHandle) -> SimEnv {
        SimEnv { handle: handle.clone(), rng: RefCell::new(handle.stream(crate::rng::streams::ENGINE)) }
    }
}

impl Env for SimEnv {
    fn now_ns(&self) -> u64 {
        self.handle.now_ns()
    }

    fn sleep_ns(&self, duration_ns: u64) -> LocalFuture<'static, ()> {
        Box::pin(self.handle.sleep_ns(duration_ns))
    }

    fn random_u64(&self) -> u64 {
        self.rng.borrow_mut().next_u64()
    }

    fn spawn(&self, name: &str, task: LocalFuture<'static, ()>) -> Join {
        Box::pin(self.handle.spawn(name, task))
    }

    fn progress(&self, progress: Progress) {
        self.handle.report_progress(progress);
    }

    fn waiting_on(&self, what: &'static str) {
        self.handle.note_wait(crate::executor::WaitLabel::Named(what));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Seed, Sim};
    use std::rc::Rc;

    #[test]
    fn engine_sees_virtual_time_and_seeded_randomness() {
        let run = |seed| {
            let sim = Sim::new(Seed(seed));
            let env: Rc<dyn Env> = Rc::new(SimEnv::new(&sim.handle()));
            sim.run(async move {
                let background = Rc::clone(&env);
                let join = env.spawn("bg", Box::pin(async move { background.sleep_ns(1_000).await }));
                join.await;
                (env.now_ns(), env.random_u64(), env.random_below(10))
            })
            .unwrap()
        };
        let (now, first, small) = run(11);
        assert_eq!(now, 1_000);
        assert!(small < 10);
        assert_eq!(run(11), (now, first, small));
        assert_ne!(run(12).1, first);
    }
}
