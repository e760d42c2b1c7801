//! The write log of QEMU's `blklogwrites` filter (the Linux dm-log-writes layout,
//! `docs/qemu-drivers.md` §1): a superblock sector, then per entry one sector of `u64 sector`
//! (in log sectors), `u64 nr_sectors`, `u64 flags` (1 FLUSH, 2 FUA, 4 DISCARD, 8 MARK),
//! `u64 data_len`, followed by `nr_sectors` data sectors (none for a discard).
//!
//! The log is input: every count is checked against the file's length before anything is sized
//! by it, and a broken log is a typed error naming the entry and the rule.

/// Magic of the superblock (`WRITE_LOG_MAGIC`).
pub const LOG_MAGIC: u64 = 0x006a_7366_7773_6872;
/// The only version there is.
pub const LOG_VERSION: u64 = 1;
const FLAG_FLUSH: u64 = 1;
const FLAG_FUA: u64 = 2;
const FLAG_DISCARD: u64 = 4;
const FLAG_MARK: u64 = 8;

/// Why a log cannot be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("write log: {what}: {rule}")]
pub struct LogError {
    /// The field or entry at fault.
    pub what: String,
    /// The rule it breaks.
    pub rule: String,
}

fn broken(what: impl Into<String>, rule: impl Into<String>) -> LogError {
    LogError { what: what.into(), rule: rule.into() }
}

/// One logged request, in the order the driver issued it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LogEntry {
    /// A write of `data` at `offset_bytes` of the image file; `fua` if it was durable on
    /// completion.
    Write {
        /// Byte offset in the image file.
        offset_bytes: u64,
        /// The bytes (a whole number of log sectors).
        data: Vec<u8>,
        /// Force unit access.
        fua: bool,
    },
    /// A flush: every write completed before it is durable.
    Flush,
    /// A discard of `len_bytes` at `offset_bytes` (reads old data or zeros afterwards).
    Discard {
        /// Byte offset.
        offset_bytes: u64,
        /// Bytes.
        len_bytes: u64,
    },
}

/// A parsed log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WriteLog {
    /// Log sector size, bytes (512 or 4096).
    pub sector_bytes: u64,
    /// The entries, marks dropped.
    pub entries: Vec<LogEntry>,
}

fn u64_at(bytes: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(bytes[at..at + 8].try_into().expect("8 bytes"))
}

/// Parses `bytes`, a whole log file.
///
/// Errors: [`LogError`] for a wrong magic or version, a sector size other than 512 or 4096, an
/// entry count or an entry that runs past the end of the file, or unknown flags.
pub fn parse(bytes: &[u8]) -> Result<WriteLog, LogError> {
    if bytes.len() < 28 {
        return Err(broken("superblock", format!("{} bytes: needs 28", bytes.len())));
    }
    let magic = u64_at(bytes, 0);
    if magic != LOG_MAGIC {
        return Err(broken("magic", format!("{magic:#x}: expected {LOG_MAGIC:#x}")));
    }
    let version = u64_at(bytes, 8);
    if version != LOG_VERSION {
        return Err(broken("version", format!("{version}: only {LOG_VERSION} exists")));
    }
    let count = u64_at(bytes, 16);
    let sector = u64::from(u32::from_le_bytes(bytes[24..28].try_into().expect("4 bytes")));
    if sector != 512 && sector != 4096 {
        return Err(broken("sector size", format!("{sector}: must be 512 or 4096")));
    }
    let len = bytes.len() as u64;
    // Every entry takes at least one sector: a count beyond that is a lie, not an allocation.
    if count > len / sector {
        return Err(broken("entry count", format!("{count} entries cannot fit in {len} bytes")));
    }
    let mut entries = Vec::with_capacity(count as usize);
    let mut at = sector;
    for index in 0..count {
        let entry_at = at;
        let what = move || format!("entry {index} at byte {entry_at}");
        if at + sector > len {
            return Err(broken(what(), "its header runs past the end of the log"));
        }
        let head = &bytes[at as usize..(at + sector) as usize];
        let (first, sectors, flags) = (u64_at(head, 0), u64_at(head, 8), u64_at(head, 16));
        if flags & !(FLAG_FLUSH | FLAG_FUA | FLAG_DISCARD | FLAG_MARK) != 0 {
            return Err(broken(what(), format!("unknown flags {flags:#x}")));
        }
        let offset_bytes =
            first.checked_mul(sector).ok_or_else(|| broken(what(), format!("sector {first} overflows")))?;
        at += sector;
        if flags & FLAG_MARK != 0 {
            at = at.saturating_add(sectors.saturating_mul(sector));
            continue;
        }
        if flags & FLAG_DISCARD != 0 {
            let len_bytes =
                sectors.checked_mul(sector).ok_or_else(|| broken(what(), format!("{sectors} sectors overflow")))?;
            entries.push(LogEntry::Discard { offset_bytes, len_bytes });
            continue;
        }
        if sectors > 0 {
            let data_len = sectors
                .checked_mul(sector)
                .filter(|n| at.checked_add(*n).is_some_and(|end| end <= len))
                .ok_or_else(|| broken(what(), format!("{sectors} data sectors run past the end of the log")))?;
            entries.push(LogEntry::Write {
                offset_bytes,
                data: bytes[at as usize..(at + data_len) as usize].to_vec(),
                fua: flags & FLAG_FUA != 0,
            });
            at += data_len;
        }
        if flags & FLAG_FLUSH != 0 {
            entries.push(LogEntry::Flush);
        }
    }
    Ok(WriteLog { sector_bytes: sector, entries })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn log(sector: u64, entries: &[(u64, u64, u64)]) -> Vec<u8> {
        let mut out = vec![0u8; sector as usize];
        out[0..8].copy_from_slice(&LOG_MAGIC.to_le_bytes());
        out[8..16].copy_from_slice(&LOG_VERSION.to_le_bytes());
        out[16..24].copy_from_slice(&(entries.len() as u64).to_le_bytes());
        out[24..28].copy_from_slice(&(sector as u32).to_le_bytes());
        for (i, &(first, sectors, flags)) in entries.iter().enumerate() {
            let mut head = vec![0u8; sector as usize];
            head[0..8].copy_from_slice(&first.to_le_bytes());
            head[8..16].copy_from_slice(&sectors.to_le_bytes());
            head[16..24].copy_from_slice(&flags.to_le_bytes());
            out.extend(head);
            if flags & FLAG_DISCARD == 0 {
                out.extend(vec![i as u8 + 1; (sectors * sector) as usize]);
            }
        }
        out
    }

    #[test]
    fn writes_flushes_discards_and_marks_parse() {
        let bytes =
            log(512, &[(8, 2, 0), (0, 0, FLAG_FLUSH), (3, 1, FLAG_FUA), (16, 4, FLAG_DISCARD), (0, 0, FLAG_MARK)]);
        let parsed = parse(&bytes).unwrap();
        assert_eq!(parsed.entries.len(), 4, "{parsed:?}");
        assert_eq!(parsed.entries[0], LogEntry::Write { offset_bytes: 4096, data: vec![1; 1024], fua: false });
        assert_eq!(parsed.entries[1], LogEntry::Flush);
        assert!(matches!(parsed.entries[2], LogEntry::Write { offset_bytes: 1536, fua: true, .. }));
        assert_eq!(parsed.entries[3], LogEntry::Discard { offset_bytes: 8192, len_bytes: 2048 });
    }

    #[test]
    fn broken_logs_are_named() {
        let good = log(512, &[(8, 2, 0)]);
        let mut bad = good.clone();
        bad[0] ^= 1;
        assert!(parse(&bad).unwrap_err().to_string().contains("magic"));
        let mut bad = good.clone();
        bad[16..24].copy_from_slice(&u64::MAX.to_le_bytes());
        assert!(parse(&bad).unwrap_err().to_string().contains("entry count"));
        let truncated = &good[..good.len() - 100];
        assert!(parse(truncated).unwrap_err().to_string().contains("past the end"));
    }

    proptest! {
        #[test]
        fn no_byte_string_panics_or_allocates_beyond_its_length(bytes in proptest::collection::vec(any::<u8>(), 0..4096)) {
            let mut bytes = bytes;
            if bytes.len() >= 28 {
                bytes[0..8].copy_from_slice(&LOG_MAGIC.to_le_bytes());
                bytes[8..16].copy_from_slice(&LOG_VERSION.to_le_bytes());
                bytes[24..28].copy_from_slice(&512u32.to_le_bytes());
            }
            if let Ok(parsed) = parse(&bytes) {
                let data: usize = parsed.entries.iter().map(|e| match e { LogEntry::Write { data, .. } => data.len(), _ => 0 }).sum();
                prop_assert!(data <= bytes.len());
            }
        }
    }
}
