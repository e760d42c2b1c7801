//! Properties of the oracle itself: a correct device (a flat array with a volatile cache that
//! keeps flushed data and any subset of unflushed data at a crash) never fails it; a device that
//! drops a flushed write at a crash always does.

use fvd_scenarios::oracle::{ORIGINAL, Oracle};
use proptest::prelude::*;

#[derive(Debug, Clone)]
enum Op {
    Write { first: u64, count: u64 },
    Flush,
    Read { first: u64, count: u64 },
    Crash { keep_mask: u64 },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0u64..32, 1u64..6).prop_map(|(first, count)| Op::Write { first, count: count.min(32 - first) }),
        1 => Just(Op::Flush),
        2 => (0u64..32, 1u64..8).prop_map(|(first, count)| Op::Read { first, count: count.min(32 - first) }),
        1 => any::<u64>().prop_map(|keep_mask| Op::Crash { keep_mask }),
    ]
}

/// A flat array of sector values with a volatile cache: `media` is durable, `cache` holds unflushed
/// writes in order.
struct Device {
    media: Vec<u32>,
    cache: Vec<(u64, u64, u32)>,
}

impl Device {
    fn read(&self, sector: u64) -> u32 {
        self.cache
            .iter()
            .rev()
            .find(|(f, c, _)| (*f..f + c).contains(&sector))
            .map_or(self.media[sector as usize], |w| w.2)
    }
}

/// Runs `ops`; `drop_flushed` makes the device lose the last flushed write at each crash.
fn run(ops: &[Op], drop_flushed: bool) -> Result<(), String> {
    let mut oracle = Oracle::new();
    let mut device = Device { media: vec![ORIGINAL; 32], cache: Vec::new() };
    let mut last_flushed: Option<(u64, u64, u32, u32)> = None; // (first, count, id, value before)
    for op in ops {
        match *op {
            Op::Write { first, count } => {
                let id = oracle.write_submitted(first, count);
                device.cache.push((first, count, id));
                oracle.write_completed(id, true);
            }
            Op::Flush => {
                let ticket = oracle.flush_submitted();
                for (first, count, id) in device.cache.drain(..) {
                    let before = device.media[first as usize];
                    for s in first..first + count {
                        device.media[s as usize] = id;
                    }
                    last_flushed = Some((first, count, id, before));
                }
                oracle.flush_completed(ticket, true);
            }
            Op::Read { first, count } => {
                let ticket = oracle.read_submitted(first, count);
                let allowed = oracle.read_completed(ticket);
                for (i, s) in (first..first + count).enumerate() {
                    let value = device.read(s);
                    if !allowed[i].contains(&value) {
                        return Err(format!("read of sector {s} gave {value}, allowed {:?}", allowed[i]));
                    }
                }
            }
            Op::Crash { keep_mask } => {
                oracle.crashed();
                for (i, (first, count, id)) in device.cache.drain(..).enumerate() {
                    if keep_mask & (1 << (i % 64)) != 0 {
                        for s in first..first + count {
                            device.media[s as usize] = id;
                        }
                    }
                }
                if drop_flushed && let Some((first, count, id, before)) = last_flushed.take() {
                    for s in first..first + count {
                        if device.media[s as usize] == id {
                            device.media[s as usize] = before;
                        }
                    }
                }
                for s in 0..32 {
                    let value = device.media[s as usize];
                    if !oracle.allowed_after_crash(s).contains(&value) {
                        return Err(format!(
                            "after a crash sector {s} holds {value}, allowed {:?}",
                            oracle.allowed_after_crash(s)
                        ));
                    }
                    oracle.settle(s, value);
                }
                oracle.settled_all();
            }
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, failure_persistence: None, rng_seed: proptest::test_runner::RngSeed::Fixed(0x04ac1e), ..ProptestConfig::default() })]

    #[test]
    fn a_correct_device_never_fails_the_oracle(ops in proptest::collection::vec(op(), 1..60)) {
        prop_assert_eq!(run(&ops, false), Ok(()));
    }

    #[test]
    fn a_device_that_drops_a_flushed_write_always_fails_it(
        before in proptest::collection::vec(op(), 0..20),
        first in 0u64..32,
        count in 1u64..6,
    ) {
        let count = count.min(32 - first);
        // Whatever came before: a write, its flush, then a crash that loses it.
        let mut ops = before;
        ops.push(Op::Flush);
        ops.push(Op::Write { first, count });
        ops.push(Op::Flush);
        ops.push(Op::Crash { keep_mask: 0 });
        let result = run(&ops, true);
        prop_assert!(result.is_err(), "the oracle missed a lost flushed write: {:?}", ops);
    }
}
