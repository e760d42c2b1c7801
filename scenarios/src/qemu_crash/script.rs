//! The seeded `qemu-io` script of a `fvdsim qemu` campaign and its model of legal sector values.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{Result, bail};
use fvd_sim::SimRng;
use fvd_sim::disk::content::ProceduralContent;
use serde::{Deserialize, Serialize};

use super::{FindingClass, QemuOptions};
use crate::stamp::{SECTOR_BYTES, SectorValue, decode, stamp};

/// Stamp ids of flush markers start here (data writes count from 1).
const MARKER_BASE: u64 = 1 << 40;

/// The most sectors one operation of a script given outright may cover (32 MiB; generated
/// operations cover at most 256).
const MAX_OP_SECTORS: u64 = 1 << 16;

/// What a sector may hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Value {
    /// Never written: the backing file's data, or zeros.
    Original,
    /// Write `id`'s stamp.
    Write(u64),
    /// Zeros (a zero write or a discard).
    Zero,
}

/// One guest operation (as a finding file records it: `{"Write": {"id": 3, "first": 8, "count": 2}}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Op {
    /// A stamped write of `count` sectors at `first` (payload file `w{id}.bin`).
    Write {
        /// Stamp id.
        id: u64,
        /// First sector.
        first: u64,
        /// Sectors.
        count: u64,
    },
    /// `write -z`.
    Zero {
        /// First sector.
        first: u64,
        /// Sectors.
        count: u64,
    },
    /// `discard` (reads old data or zeros afterwards).
    Discard {
        /// First sector.
        first: u64,
        /// Sectors.
        count: u64,
    },
    /// `flush`, then a one-sector marker write of stamp `marker` at the last sector.
    Flush {
        /// The marker's stamp id.
        marker: u64,
    },
}

/// The script and what it implies.
#[derive(Debug, Clone)]
pub struct Script {
    seed: u64,
    disk_sectors: u64,
    base: Option<ProceduralContent>,
    /// The operations, in order.
    pub ops: Vec<Op>,
}

impl Script {
    /// Draws `options.ops` operations from the seed: stamped writes (half of them near the
    /// previous one, so they overlap), zero writes, discards (qcow2 honours them), flushes. Takes
    /// `options.script_ops` as they are when given (checked by [`validate`] first).
    pub fn generate(options: &QemuOptions) -> Script {
        let disk_sectors = options.disk_bytes / SECTOR_BYTES;
        let base = options.backing.then_some(ProceduralContent { seed: options.seed.0 ^ 0xba5e });
        if let Some(ops) = &options.script_ops {
            return Script { seed: options.seed.0, disk_sectors, base, ops: ops.clone() };
        }
        let mut rng = SimRng::stream(options.seed, "qemu-script");
        let usable = disk_sectors - 1; // the last sector takes the flush markers
        let mut ops = Vec::new();
        let (mut next_id, mut next_marker, mut last) = (1u64, MARKER_BASE, 0u64);
        for _ in 0..options.ops {
            let count = rng.range_inclusive(1, 256.min(usable));
            let first = if rng.ratio(1, 2) {
                last.saturating_sub(rng.below(count + 1)).min(usable - count)
            } else {
                rng.below(usable - count + 1)
            };
            let op = match rng.below(12) {
                0 | 1 => {
                    next_marker += 1;
                    Op::Flush { marker: next_marker }
                }
                2 => Op::Zero { first, count },
                3 if options.format == "qcow2" => Op::Discard { first, count },
                _ => {
                    next_id += 1;
                    Op::Write { id: next_id - 1, first, count }
                }
            };
            if let Op::Write { first, count, .. } | Op::Zero { first, count } | Op::Discard { first, count } = op {
                last = first + count;
            }
            ops.push(op);
        }
        Script { seed: options.seed.0, disk_sectors, base, ops }
    }

    /// The marker stamp ids, in flush order.
    pub fn markers(&self) -> impl Iterator<Item = u64> + '_ {
        self.ops.iter().filter_map(|op| match op {
            Op::Flush { marker } => Some(*marker),
            _ => None,
        })
    }

    fn payload(&self, id: u64, first: u64, count: u64) -> Vec<u8> {
        let mut data = vec![0u8; (count * SECTOR_BYTES) as usize];
        stamp(self.seed, id, first, &mut data);
        data
    }

    /// Writes `script.qemu-io`, the payload files and, with a backing file, `base.raw`.
    ///
    /// Errors: the files cannot be written.
    pub fn write_files(&self, out: &Path) -> Result<()> {
        let mut lines = Vec::new();
        for op in &self.ops {
            match *op {
                Op::Write { id, first, count } => {
                    std::fs::write(out.join(format!("w{id}.bin")), self.payload(id, first, count))?;
                    lines.push(format!("write -q -s w{id}.bin {} {}", first * SECTOR_BYTES, count * SECTOR_BYTES));
                }
                Op::Zero { first, count } => {
                    lines.push(format!("write -q -z {} {}", first * SECTOR_BYTES, count * SECTOR_BYTES))
                }
                Op::Discard { first, count } => {
                    lines.push(format!("discard -q {} {}", first * SECTOR_BYTES, count * SECTOR_BYTES))
                }
                Op::Flush { marker } => {
                    let last = self.disk_sectors - 1;
                    std::fs::write(out.join(format!("m{marker}.bin")), self.payload(marker, last, 1))?;
                    lines.push("flush".into());
                    lines.push(format!("write -q -s m{marker}.bin {} {SECTOR_BYTES}", last * SECTOR_BYTES));
                }
            }
        }
        std::fs::write(out.join("script.qemu-io"), lines.join("\n") + "\n")?;
        if let Some(base) = &self.base {
            let mut bytes = Vec::with_capacity((self.disk_sectors * SECTOR_BYTES) as usize);
            for sector in 0..self.disk_sectors {
                bytes.extend_from_slice(&base.sector(sector));
            }
            std::fs::write(out.join("base.raw"), bytes)?;
        }
        Ok(())
    }

    /// Per written sector, its values in operation order (operation index, value). A discard
    /// adds several values under one index: zeros, the backing file's data (qcow2 drops the
    /// cluster) and the values before it (a discard that does not cover a whole cluster changes
    /// nothing).
    fn histories(&self) -> BTreeMap<u64, Vec<(usize, Value)>> {
        let mut histories: BTreeMap<u64, Vec<(usize, Value)>> = BTreeMap::new();
        for (index, op) in self.ops.iter().enumerate() {
            let (first, count, value, discard) = match *op {
                Op::Write { id, first, count } => (first, count, Value::Write(id), false),
                Op::Zero { first, count } => (first, count, Value::Zero, false),
                Op::Discard { first, count } => (first, count, Value::Zero, true),
                Op::Flush { .. } => continue,
            };
            for sector in first..first + count {
                let history = histories.entry(sector).or_default();
                if discard {
                    let before: Vec<Value> = match history.last() {
                        Some(&(last, _)) => history.iter().filter(|(i, _)| *i == last).map(|(_, v)| *v).collect(),
                        None => vec![Value::Original],
                    };
                    history.push((index, Value::Original));
                    history.extend(before.into_iter().map(|v| (index, v)));
                }
                history.push((index, value));
            }
        }
        histories
    }

    /// Judges the guest disk `disk` (QEMU's raw read of a crash state) when the first
    /// `completed_flushes` guest flushes had completed: the first sector that breaks a rule, as
    /// a finding.
    pub fn judge(&self, disk: &[u8], completed_flushes: usize) -> Option<(FindingClass, String)> {
        let cutoff = match completed_flushes {
            0 => None,
            k => {
                self.ops.iter().enumerate().filter(|(_, op)| matches!(op, Op::Flush { .. })).nth(k - 1).map(|(i, _)| i)
            }
        };
        self.judge_after(disk, cutoff)
    }

    fn judge_after(&self, disk: &[u8], cutoff: Option<usize>) -> Option<(FindingClass, String)> {
        let base = self.base.as_ref().map(|b| (b, self.disk_sectors));
        for (sector, history) in self.histories() {
            let at = (sector * SECTOR_BYTES) as usize;
            let Some(bytes) = disk.get(at..at + SECTOR_BYTES as usize) else {
                return Some((FindingClass::WrongData, format!("sector {sector} lies beyond QEMU's read of the disk")));
            };
            let found = match decode(self.seed, sector, bytes, base) {
                _ if bytes.iter().all(|b| *b == 0) && self.base.is_some() => Value::Zero,
                SectorValue::Original if self.base.is_none() => Value::Zero,
                SectorValue::Original => Value::Original,
                SectorValue::Stamped { write_id, sector: meant } if meant == sector => Value::Write(write_id),
                other => {
                    return Some((
                        FindingClass::WrongData,
                        format!("sector {sector} holds {other}, which no write put there"),
                    ));
                }
            };
            // The values of the last operation before the last completed flush (several for a
            // discard), or the original content.
            let last_before = cutoff.and_then(|cut| history.iter().rev().find(|(i, _)| *i < cut).map(|(i, _)| *i));
            let required: Vec<Value> = match last_before {
                Some(op) => history.iter().filter(|(i, _)| *i == op).map(|(_, v)| *v).collect(),
                None => vec![Value::Original],
            };
            let later: Vec<Value> =
                history.iter().filter(|(i, _)| cutoff.is_none_or(|cut| *i > cut)).map(|(_, v)| *v).collect();
            let norm = |v: Value| if v == Value::Original && self.base.is_none() { Value::Zero } else { v };
            let allowed = |v: Value| required.iter().chain(&later).any(|r| norm(*r) == norm(v));
            if !allowed(found) {
                let earlier =
                    history.iter().any(|(_, v)| norm(*v) == norm(found)) || norm(found) == norm(Value::Original);
                let class = if earlier { FindingClass::DataLoss } else { FindingClass::WrongData };
                return Some((
                    class,
                    format!(
                        "sector {sector} holds {found:?} after {} completed guest flush(es); it must hold one of {required:?}{}",
                        cutoff.map_or(0, |c| self.ops[..=c].iter().filter(|o| matches!(o, Op::Flush { .. })).count()),
                        if later.is_empty() { String::new() } else { format!(" or one of {later:?}") }
                    ),
                ));
            }
        }
        None
    }
}

/// Checks operations given outright (a finding file's, which a person may have edited): every
/// range inside the disk and before its last sector (the flush markers' sector), write stamp ids
/// unique and below the markers', marker ids unique and from the markers' range.
///
/// Errors: the first operation that breaks a rule, by index.
pub fn validate(ops: &[Op], disk_bytes: u64) -> Result<()> {
    let usable = (disk_bytes / SECTOR_BYTES).saturating_sub(1);
    let mut ids = std::collections::BTreeSet::new();
    for (index, op) in ops.iter().enumerate() {
        match *op {
            Op::Write { first, count, .. } | Op::Zero { first, count } | Op::Discard { first, count }
                if count == 0 || count > MAX_OP_SECTORS || first.checked_add(count).is_none_or(|end| end > usable) =>
            {
                bail!("operation {index} ({op:?}): 1 to {MAX_OP_SECTORS} sectors inside the disk's first {usable}");
            }
            Op::Write { id, .. } if id == 0 || id >= MARKER_BASE || !ids.insert(id) => {
                bail!("operation {index} ({op:?}): write ids are unique, from 1 to {}", MARKER_BASE - 1);
            }
            Op::Flush { marker } if marker <= MARKER_BASE || !ids.insert(marker) => {
                bail!("operation {index} ({op:?}): flush markers are unique and above {MARKER_BASE}");
            }
            _ => {}
        }
    }
    Ok(())
}

/// True if the image says it may be inconsistent, so its check may find corruption by design:
/// QED's NEED_CHECK, Parallels' `in_use`, qcow2's dirty bit (lazy refcounts).
pub fn dirty_flag(format: &str, image: &[u8]) -> bool {
    match format {
        "qed" => image.len() >= 24 && u64::from_le_bytes(image[16..24].try_into().expect("8 bytes")) & 2 != 0,
        "parallels" => {
            image.len() >= 48 && u32::from_le_bytes(image[44..48].try_into().expect("4 bytes")) == 0x746F_6E59
        }
        "qcow2" => {
            image.len() >= 80 && u64::from_le_bytes(image[72..80].try_into().expect("8 bytes")).swap_bytes() & 1 != 0
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn script(ops: Vec<Op>, backing: bool) -> Script {
        Script { seed: 7, disk_sectors: 64, base: backing.then_some(ProceduralContent { seed: 9 }), ops }
    }

    fn disk(script: &Script, fill: impl Fn(u64, &mut [u8])) -> Vec<u8> {
        let mut bytes = vec![0u8; (script.disk_sectors * SECTOR_BYTES) as usize];
        for (sector, chunk) in bytes.chunks_mut(SECTOR_BYTES as usize).enumerate() {
            fill(sector as u64, chunk);
        }
        bytes
    }

    #[test]
    fn flushed_writes_must_survive_and_a_discard_may_leave_old_data_zeros_or_the_backing_file() {
        let ops = vec![
            Op::Write { id: 1, first: 0, count: 8 },
            Op::Discard { first: 4, count: 4 },
            Op::Flush { marker: MARKER_BASE + 1 },
            Op::Write { id: 2, first: 0, count: 2 },
        ];
        for backing in [false, true] {
            let s = script(ops.clone(), backing);
            let base = s.base;
            let original = |sector: u64, out: &mut [u8]| match &base {
                Some(b) => out.copy_from_slice(&b.sector(sector)),
                None => out.fill(0),
            };
            // Write 1 everywhere it went (the discard left it): legal after the flush.
            let all_write_1 = disk(&s, |sector, out| {
                if sector < 8 {
                    let mut w = vec![0u8; 8 * 512];
                    stamp(7, 1, 0, &mut w);
                    out.copy_from_slice(&w[(sector * 512) as usize..((sector + 1) * 512) as usize]);
                } else {
                    original(sector, out)
                }
            });
            assert_eq!(s.judge(&all_write_1, 1), None, "backing {backing}: the discard may change nothing");
            // Sectors 4..8 read zeros (or the backing file): legal, the discard dropped them.
            let discarded = disk(&s, |sector, out| {
                let mut w = vec![0u8; 8 * 512];
                stamp(7, 1, 0, &mut w);
                match sector {
                    0..4 => out.copy_from_slice(&w[(sector * 512) as usize..((sector + 1) * 512) as usize]),
                    4..8 => out.fill(0),
                    _ => original(sector, out),
                }
            });
            assert_eq!(s.judge(&discarded, 1), None, "backing {backing}: zeros after a discard");
            // Sector 1 back to its original content after the flush: write 1 was lost.
            let lost = disk(&s, |sector, out| {
                let mut w = vec![0u8; 8 * 512];
                stamp(7, 1, 0, &mut w);
                match sector {
                    1 => original(sector, out),
                    0..8 => out.copy_from_slice(&w[(sector * 512) as usize..((sector + 1) * 512) as usize]),
                    _ => original(sector, out),
                }
            });
            let finding = s.judge(&lost, 1).expect("a flushed write lost");
            assert_eq!(finding.0, FindingClass::DataLoss, "{finding:?}");
            // Before the flush completed, the same disk is legal.
            assert_eq!(s.judge(&lost, 0), None);
        }
    }
}
