//! The event log: every submit, execute, completion, flush, fault, crash, task start and end and
//! engine progress point, stamped with virtual time, folded into a rolling 64-bit hash.
//!
//! Two runs with the same seed and build give the same sequence of events and so the same hash;
//! `fvdsim run --check-determinism` compares it. The log keeps the last `tail_capacity` events
//! for failure reports, and every event when `record_all` is set (for `fvdsim repro` dumps).
//!
//! # Line format
//!
//! [`Event`]'s `Display` prints one line per event, in fixed columns:
//!
//! ```text
//! <at_ns:>15> <source:<10> <kind:<22> #<request> off=<offset_bytes> len=<len_bytes>
//! ```
//!
//! `source` is a device name (`image`, `base`) or `task:<id>`; `kind` is `submit.write`,
//! `execute.flush`, `complete.read`, `failed.write`, `fault.media-write`, `crash`, `spawn`,
//! `task-end`, `progress.journal-write-submitted` and so on; `request` is the device's request
//! number (or a task id, or a progress detail).

use std::collections::VecDeque;

use fvd_contract::{IoKind, ProgressPoint};

/// What happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventKind {
    /// A request was submitted to a device.
    Submit(IoKind),
    /// A request took effect: its data is in the volatile cache (writes), was read (reads), or the
    /// cache was drained (flushes).
    Execute(IoKind),
    /// A request's completion was delivered successfully.
    Complete(IoKind),
    /// A request's completion was delivered with an error.
    Failed(IoKind),
    /// A fault was injected.
    Fault(FaultKind),
    /// Volatile-cache pressure made the oldest pending write durable.
    Destage,
    /// The device crashed (power loss); `len_bytes` is the number of pending writes resolved.
    Crash,
    /// A task started; `request` is its id.
    Spawn,
    /// A task finished; `request` is its id.
    TaskEnd,
    /// The engine reported a progress point; `request` is the detail.
    Progress(ProgressPoint),
}

/// An injected fault.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FaultKind {
    /// A request failed with a media error.
    Media(IoKind),
    /// A read hit a latent sector error.
    LatentSector,
    /// A sector became latently unreadable.
    LatentSectorCreated,
    /// A write landed at the wrong offset (`offset_bytes` is where it landed).
    Misdirected,
}

impl EventKind {
    fn code(self) -> u64 {
        let io = |kind: IoKind| kind as u64;
        match self {
            EventKind::Submit(k) => 0x10 + io(k),
            EventKind::Execute(k) => 0x20 + io(k),
            EventKind::Complete(k) => 0x30 + io(k),
            EventKind::Failed(k) => 0x40 + io(k),
            EventKind::Fault(FaultKind::Media(k)) => 0x50 + io(k),
            EventKind::Fault(FaultKind::LatentSector) => 0x60,
            EventKind::Fault(FaultKind::LatentSectorCreated) => 0x61,
            EventKind::Fault(FaultKind::Misdirected) => 0x62,
            EventKind::Destage => 0x70,
            EventKind::Crash => 0x71,
            EventKind::Spawn => 0x72,
            EventKind::TaskEnd => 0x73,
            EventKind::Progress(p) => 0x100 + p as u64,
        }
    }
}

impl std::fmt::Display for EventKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            EventKind::Submit(k) => write!(f, "submit.{k}"),
            EventKind::Execute(k) => write!(f, "execute.{k}"),
            EventKind::Complete(k) => write!(f, "complete.{k}"),
            EventKind::Failed(k) => write!(f, "failed.{k}"),
            EventKind::Fault(FaultKind::Media(k)) => write!(f, "fault.media-{k}"),
            EventKind::Fault(FaultKind::LatentSector) => f.write_str("fault.latent-sector"),
            EventKind::Fault(FaultKind::LatentSectorCreated) => f.write_str("fault.latent-created"),
            EventKind::Fault(FaultKind::Misdirected) => f.write_str("fault.misdirected"),
            EventKind::Destage => f.write_str("destage"),
            EventKind::Crash => f.write_str("crash"),
            EventKind::Spawn => f.write_str("spawn"),
            EventKind::TaskEnd => f.write_str("task-end"),
            EventKind::Progress(p) => write!(f, "progress.{p}"),
        }
    }
}

/// Who logged an event: a name and its hash, computed once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Source {
    name: std::rc::Rc<str>,
    hash: u64,
}

impl Source {
    /// A source called `name`.
    pub fn new(name: &str) -> Source {
        Source { name: std::rc::Rc::from(name), hash: hash_str(name) }
    }

    /// The name.
    pub fn name(&self) -> &str {
        &self.name
    }
}

impl std::fmt::Display for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.name)
    }
}

/// One logged event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    /// Virtual time in nanoseconds.
    pub at_ns: u64,
    /// Who: a device name or `task:<id>` or `engine`.
    pub source: Source,
    /// What happened.
    pub kind: EventKind,
    /// Request number, task id or progress detail.
    pub request: u64,
    /// Byte offset (0 where none).
    pub offset_bytes: u64,
    /// Byte length (0 where none).
    pub len_bytes: u64,
}

impl std::fmt::Display for Event {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{:>15} {:<10} {:<22} #{} off={} len={}",
            self.at_ns,
            self.source.name(),
            self.kind.to_string(),
            self.request,
            self.offset_bytes,
            self.len_bytes
        )
    }
}

/// A 64-bit mixing step (the SplitMix64 finaliser) for the rolling hash.
fn mix(hash: u64, word: u64) -> u64 {
    let mut z = (hash ^ word).wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

fn hash_str(text: &str) -> u64 {
    text.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3))
}

/// The run's event log and its rolling hash.
#[derive(Debug)]
pub struct EventLog {
    hash: u64,
    count: u64,
    tail: VecDeque<Event>,
    tail_capacity: usize,
    all: Option<Vec<Event>>,
}

impl EventLog {
    /// A log keeping the last `tail_capacity` events, and every event if `record_all`.
    pub fn new(tail_capacity: usize, record_all: bool) -> EventLog {
        EventLog {
            hash: 0,
            count: 0,
            tail: VecDeque::with_capacity(tail_capacity.min(4096)),
            tail_capacity,
            all: record_all.then(Vec::new),
        }
    }

    /// Appends `event` and folds it into the hash.
    pub fn push(&mut self, event: Event) {
        // Two words, each folding three fields with distinct odd multipliers (independent of
        // the running hash, so they are computed beside the chain), then two mixing steps on
        // the chain: a third of the serial multiplications of one step per field.
        let when_who_what = event.at_ns.wrapping_mul(0xd6e8_feb8_6659_fd93)
            ^ event.source.hash
            ^ event.kind.code().wrapping_mul(0xa076_1d64_78bd_642f);
        let where_ = event.request.wrapping_mul(0xe703_7ed1_a0b4_28db)
            ^ event.offset_bytes.wrapping_mul(0x8ebc_6af0_9c88_c6e3).rotate_left(23)
            ^ event.len_bytes.wrapping_mul(0x5899_65cc_7537_4cc3).rotate_left(47);
        self.hash = mix(mix(self.hash, when_who_what), where_);
        self.count += 1;
        if let Some(all) = &mut self.all {
            all.push(event.clone());
        }
        if self.tail_capacity > 0 {
            if self.tail.len() == self.tail_capacity {
                self.tail.pop_front();
            }
            self.tail.push_back(event);
        }
    }

    /// The rolling hash of every event so far.
    pub fn hash(&self) -> u64 {
        self.hash
    }

    /// How many events were logged.
    pub fn count(&self) -> u64 {
        self.count
    }

    /// The most recent events, oldest first.
    pub fn tail(&self) -> impl Iterator<Item = &Event> {
        self.tail.iter()
    }

    /// Every event, if the log was created with `record_all`.
    pub fn all(&self) -> Option<&[Event]> {
        self.all.as_deref()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(at_ns: u64, kind: EventKind) -> Event {
        Event { at_ns, source: Source::new("image"), kind, request: 1, offset_bytes: 4096, len_bytes: 512 }
    }

    #[test]
    fn hash_depends_on_every_field_and_on_order() {
        let a = event(10, EventKind::Submit(IoKind::Write));
        let b = event(20, EventKind::Execute(IoKind::Write));
        let mut first = EventLog::new(4, false);
        first.push(a.clone());
        first.push(b.clone());
        let mut swapped = EventLog::new(4, false);
        swapped.push(b.clone());
        swapped.push(a.clone());
        assert_ne!(first.hash(), swapped.hash());
        // Changing any one field of the second event, by one unit or by swapping two fields'
        // values, changes the hash.
        let variants = [
            Event { at_ns: 21, ..b.clone() },
            Event { source: Source::new("base"), ..b.clone() },
            Event { kind: EventKind::Complete(IoKind::Write), ..b.clone() },
            Event { request: 2, ..b.clone() },
            Event { offset_bytes: 4097, ..b.clone() },
            Event { len_bytes: 1024, ..b.clone() },
            Event { offset_bytes: 512, len_bytes: 4096, ..b.clone() },
            Event { request: 4096, offset_bytes: 1, ..b.clone() },
        ];
        let mut hashes = vec![first.hash()];
        for variant in variants {
            let mut other = EventLog::new(4, false);
            other.push(a.clone());
            other.push(variant.clone());
            assert_ne!(first.hash(), other.hash(), "{variant:?}");
            hashes.push(other.hash());
        }
        hashes.sort_unstable();
        hashes.dedup();
        assert_eq!(hashes.len(), 9, "every variant hashes differently");
        let mut same = EventLog::new(0, true);
        same.push(a);
        same.push(b);
        assert_eq!(first.hash(), same.hash());
        assert_eq!(same.all().unwrap().len(), 2);
        assert_eq!(same.tail().count(), 0);
    }

    #[test]
    fn tail_keeps_the_most_recent_events() {
        let mut log = EventLog::new(2, false);
        for t in 0..5 {
            log.push(event(t, EventKind::Spawn));
        }
        let times: Vec<u64> = log.tail().map(|e| e.at_ns).collect();
        assert_eq!(times, vec![3, 4]);
        assert_eq!(log.count(), 5);
        let line = event(7, EventKind::Submit(IoKind::Write)).to_string();
        assert_eq!(line, "              7 image      submit.write           #1 off=4096 len=512");
    }
}
