//! The seeded `qemu-io` script of a `fvdsim qemu` campaign and its model of legal sector values.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::Result;
use fvd_sim::SimRng;
use fvd_sim::disk::content::ProceduralContent;

use super::{FindingClass, QemuOptions};
use crate::stamp::{SECTOR, SectorValue, decode, stamp};

/// Stamp ids of flush markers start here (data writes count from 1).
const MARKER_BASE: u64 = 1 << 40;

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

/// One guest operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
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
    /// previous one, so they overlap), zero writes, discards (qcow2 honours them), flushes.
    pub fn generate(options: &QemuOptions) -> Script {
        let mut rng = SimRng::stream(options.seed, "qemu-script");
        let disk_sectors = options.disk_bytes / SECTOR;
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
        let base = options.backing.then_some(ProceduralContent { seed: options.seed.0 ^ 0xba5e });
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
        let mut data = vec![0u8; (count * SECTOR) as usize];
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
                    lines.push(format!("write -q -s w{id}.bin {} {}", first * SECTOR, count * SECTOR));
                }
                Op::Zero { first, count } => lines.push(format!("write -q -z {} {}", first * SECTOR, count * SECTOR)),
                Op::Discard { first, count } => lines.push(format!("discard -q {} {}", first * SECTOR, count * SECTOR)),
                Op::Flush { marker } => {
                    let last = self.disk_sectors - 1;
                    std::fs::write(out.join(format!("m{marker}.bin")), self.payload(marker, last, 1))?;
                    lines.push("flush".into());
                    lines.push(format!("write -q -s m{marker}.bin {} {SECTOR}", last * SECTOR));
                }
            }
        }
        std::fs::write(out.join("script.qemu-io"), lines.join("\n") + "\n")?;
        if let Some(base) = &self.base {
            let mut bytes = Vec::with_capacity((self.disk_sectors * SECTOR) as usize);
            for sector in 0..self.disk_sectors {
                bytes.extend_from_slice(&base.sector(sector));
            }
            std::fs::write(out.join("base.raw"), bytes)?;
        }
        Ok(())
    }

    /// Per written sector, its values in operation order (operation index, value).
    fn histories(&self) -> BTreeMap<u64, Vec<(usize, Value)>> {
        let mut histories: BTreeMap<u64, Vec<(usize, Value)>> = BTreeMap::new();
        for (index, op) in self.ops.iter().enumerate() {
            let (first, count, value) = match *op {
                Op::Write { id, first, count } => (first, count, Value::Write(id)),
                Op::Zero { first, count } | Op::Discard { first, count } => (first, count, Value::Zero),
                Op::Flush { .. } => continue,
            };
            for sector in first..first + count {
                histories.entry(sector).or_default().push((index, value));
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
            let at = (sector * SECTOR) as usize;
            let Some(bytes) = disk.get(at..at + SECTOR as usize) else {
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
            let required = match cutoff {
                Some(cut) => history.iter().rev().find(|(i, _)| *i < cut).map_or(Value::Original, |(_, v)| *v),
                None => Value::Original,
            };
            let later: Vec<Value> =
                history.iter().filter(|(i, _)| cutoff.is_none_or(|cut| *i > cut)).map(|(_, v)| *v).collect();
            let norm = |v: Value| if v == Value::Original && self.base.is_none() { Value::Zero } else { v };
            // A discard may leave the old value: Zero after a discard allows what was before.
            let allowed = |v: Value| norm(v) == norm(required) || later.iter().any(|l| norm(*l) == norm(v));
            if !allowed(found) {
                let earlier =
                    history.iter().any(|(_, v)| norm(*v) == norm(found)) || norm(found) == norm(Value::Original);
                let class = if earlier { FindingClass::DataLoss } else { FindingClass::WrongData };
                return Some((
                    class,
                    format!(
                        "sector {sector} holds {found:?} after {} completed guest flush(es); it must hold {required:?}{}",
                        cutoff.map_or(0, |c| self.ops[..=c].iter().filter(|o| matches!(o, Op::Flush { .. })).count()),
                        if later.is_empty() { String::new() } else { format!(" or one of {later:?}") }
                    ),
                ));
            }
        }
        None
    }
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
