//! The Parallels header and BAT: pure decoding (`docs/parallels.md` §1).

/// Magic of images whose BAT counts clusters (what QEMU creates).
pub const MAGIC_EXT: &[u8; 16] = b"WithouFreSpacExt";
/// Magic of old images whose BAT counts sectors.
pub const MAGIC_OLD: &[u8; 16] = b"WithoutFreeSpace";
/// Header size, bytes; the BAT follows.
pub const HEADER_BYTES: u64 = 64;
/// `in_use` while a writer has the image open ("Ynot").
pub const IN_USE: u32 = 0x746F_6E59;
/// Largest cluster QEMU accepts, sectors (`tracks`); bounds every allocation by a cluster.
pub const MAX_CLUSTER_SECTORS: u64 = 1 << 16;
use fvd_contract::SECTOR_BYTES;

/// Why an image cannot be used, naming the field, its value and the rule.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParallelsError {
    /// A header field or BAT entry breaks a rule.
    #[error("corrupt Parallels image: {field} = {value}: {rule}")]
    Corrupt {
        /// The field at fault.
        field: String,
        /// Its value.
        value: String,
        /// The rule it breaks.
        rule: String,
    },
    /// A device request failed.
    #[error("Parallels {what}: {source}")]
    Io {
        /// What the engine was doing.
        what: &'static str,
        /// The device error.
        source: fvd_contract::DeviceError,
    },
    /// A request outside the guest disk.
    #[error("request of {len_bytes} bytes at {offset_bytes} is beyond the {disk_bytes}-byte disk")]
    OutOfRange {
        /// Start.
        offset_bytes: u64,
        /// Length.
        len_bytes: u64,
        /// The guest disk's size.
        disk_bytes: u64,
    },
}

pub(crate) fn corrupt(
    field: impl Into<String>,
    value: impl std::fmt::Display,
    rule: impl Into<String>,
) -> ParallelsError {
    ParallelsError::Corrupt { field: field.into(), value: value.to_string(), rule: rule.into() }
}

/// The decoded header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParallelsHeader {
    /// True for "WithouFreSpacExt" (BAT entries count clusters), false for the old magic
    /// (BAT entries count sectors).
    pub ext: bool,
    /// Geometry: heads.
    pub heads: u32,
    /// Geometry: cylinders.
    pub cylinders: u32,
    /// Cluster size, sectors (`tracks`).
    pub cluster_sectors: u64,
    /// BAT entries (clusters of the guest disk).
    pub bat_entries: u64,
    /// Guest disk size, sectors.
    pub disk_sectors: u64,
    /// `in_use` field ([`IN_USE`] while open read-write).
    pub in_use: u32,
    /// Start of the data area, sectors.
    pub data_off_sectors: u64,
    /// Flags (bit 0: empty image).
    pub flags: u32,
    /// Format extension offset, sectors (0: none).
    pub ext_off_sectors: u64,
}

impl ParallelsHeader {
    /// Cluster size, bytes.
    pub fn cluster_bytes(&self) -> u64 {
        self.cluster_sectors * SECTOR_BYTES
    }

    /// Guest disk size, bytes.
    pub fn disk_bytes(&self) -> u64 {
        self.disk_sectors * SECTOR_BYTES
    }

    /// Bytes of the BAT region (header included), as it lies before the data area.
    pub fn bat_end_bytes(&self) -> u64 {
        HEADER_BYTES + 4 * self.bat_entries
    }

    /// The smallest legal `data_off`, sectors (QEMU's `min_off`): the end of the BAT rounded up
    /// to a sector, and to a cluster for the Ext magic.
    pub fn min_data_off_sectors(&self) -> u64 {
        let sectors = self.bat_end_bytes().div_ceil(SECTOR_BYTES);
        if self.ext { sectors.div_ceil(self.cluster_sectors) * self.cluster_sectors } else { sectors }
    }

    /// The byte offset a BAT entry's value names (0 for an unallocated entry).
    pub fn entry_offset(&self, entry: u32) -> u64 {
        u64::from(entry) * if self.ext { self.cluster_sectors } else { 1 } * SECTOR_BYTES
    }

    /// The BAT value of host byte offset `offset`.
    pub fn entry_value(&self, offset: u64) -> u32 {
        (offset / SECTOR_BYTES / if self.ext { self.cluster_sectors } else { 1 }) as u32
    }

    /// True while a writer has (or had, before a crash) the image open.
    pub fn in_use(&self) -> bool {
        self.in_use == IN_USE
    }

    /// Decodes and checks the header against the file length: every rule QEMU's open applies
    /// that bounds what is read later (the BAT lies inside the file).
    ///
    /// Errors: [`ParallelsError::Corrupt`] naming the first field at fault.
    pub fn decode(bytes: &[u8], file_bytes: u64) -> Result<ParallelsHeader, ParallelsError> {
        if bytes.len() < HEADER_BYTES as usize || file_bytes < HEADER_BYTES {
            return Err(corrupt("file length", file_bytes, "shorter than the 64-byte Parallels header"));
        }
        let u32_at = |at: usize| u32::from_le_bytes(bytes[at..at + 4].try_into().expect("4 bytes"));
        let ext = match &bytes[0..16] {
            m if m == MAGIC_EXT => true,
            m if m == MAGIC_OLD => false,
            m => {
                return Err(corrupt(
                    "magic",
                    String::from_utf8_lossy(m),
                    "is neither WithouFreSpacExt nor WithoutFreeSpace",
                ));
            }
        };
        let version = u32_at(16);
        if version != 2 {
            return Err(corrupt("version", version, "must be 2"));
        }
        let nb_sectors = u64::from_le_bytes(bytes[36..44].try_into().expect("8 bytes"));
        let header = ParallelsHeader {
            ext,
            heads: u32_at(20),
            cylinders: u32_at(24),
            cluster_sectors: u64::from(u32_at(28)),
            bat_entries: u64::from(u32_at(32)),
            disk_sectors: if ext { nb_sectors } else { nb_sectors & 0xffff_ffff },
            in_use: u32_at(44),
            data_off_sectors: u64::from(u32_at(48)),
            flags: u32_at(52),
            ext_off_sectors: u64::from_le_bytes(bytes[56..64].try_into().expect("8 bytes")),
        };
        if header.cluster_sectors == 0 || header.cluster_sectors > MAX_CLUSTER_SECTORS {
            return Err(corrupt(
                "tracks",
                header.cluster_sectors,
                format!("cluster size must be 1 to {MAX_CLUSTER_SECTORS} sectors"),
            ));
        }
        if header.bat_entries < header.disk_sectors.div_ceil(header.cluster_sectors) {
            return Err(corrupt(
                "nb_bat_entries",
                header.bat_entries,
                format!("too few for {} sectors of {}-sector clusters", header.disk_sectors, header.cluster_sectors),
            ));
        }
        if header.bat_end_bytes() > file_bytes {
            return Err(corrupt(
                "nb_bat_entries",
                header.bat_entries,
                format!("the BAT ends beyond the {file_bytes}-byte file"),
            ));
        }
        Ok(header)
    }

    /// The 64 header bytes.
    pub fn encode(&self) -> [u8; HEADER_BYTES as usize] {
        let mut out = [0u8; HEADER_BYTES as usize];
        out[0..16].copy_from_slice(if self.ext { MAGIC_EXT } else { MAGIC_OLD });
        out[16..20].copy_from_slice(&2u32.to_le_bytes());
        out[20..24].copy_from_slice(&self.heads.to_le_bytes());
        out[24..28].copy_from_slice(&self.cylinders.to_le_bytes());
        out[28..32].copy_from_slice(&(self.cluster_sectors as u32).to_le_bytes());
        out[32..36].copy_from_slice(&(self.bat_entries as u32).to_le_bytes());
        out[36..44].copy_from_slice(&self.disk_sectors.to_le_bytes());
        out[44..48].copy_from_slice(&self.in_use.to_le_bytes());
        out[48..52].copy_from_slice(&(self.data_off_sectors as u32).to_le_bytes());
        out[52..56].copy_from_slice(&self.flags.to_le_bytes());
        out[56..64].copy_from_slice(&self.ext_off_sectors.to_le_bytes());
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `qemu-img create -f parallels p.prl 64M` (docs/parallels.md §1).
    fn qemu_header() -> Vec<u8> {
        let mut h = vec![0u8; 64];
        h[0..16].copy_from_slice(MAGIC_EXT);
        h[16..20].copy_from_slice(&2u32.to_le_bytes());
        h[20..24].copy_from_slice(&16u32.to_le_bytes());
        h[24..28].copy_from_slice(&256u32.to_le_bytes());
        h[28..32].copy_from_slice(&2048u32.to_le_bytes());
        h[32..36].copy_from_slice(&64u32.to_le_bytes());
        h[36..44].copy_from_slice(&0x20000u64.to_le_bytes());
        h[48..52].copy_from_slice(&2048u32.to_le_bytes());
        h
    }

    #[test]
    fn qemus_header_decodes_and_encodes_back() {
        let header = ParallelsHeader::decode(&qemu_header(), 1 << 20).unwrap();
        assert_eq!((header.cluster_bytes(), header.bat_entries, header.disk_bytes()), (1 << 20, 64, 64 << 20));
        assert_eq!(header.min_data_off_sectors(), 2048);
        assert_eq!(header.entry_offset(2), 2 << 20);
        assert_eq!(header.encode().to_vec(), qemu_header());
    }

    #[test]
    fn every_broken_rule_is_named() {
        let cases: [(usize, &[u8], &str); 4] = [
            (0, b"WithouFreSpacExX", "magic"),
            (16, &3u32.to_le_bytes(), "version"),
            (28, &0u32.to_le_bytes(), "tracks"),
            (32, &1u32.to_le_bytes(), "nb_bat_entries"),
        ];
        for (at, bytes, field) in cases {
            let mut h = qemu_header();
            h[at..at + bytes.len()].copy_from_slice(bytes);
            match ParallelsHeader::decode(&h, 1 << 20) {
                Err(ParallelsError::Corrupt { field: f, .. }) => assert_eq!(f, field),
                other => panic!("{field}: {other:?}"),
            }
        }
        let mut h = qemu_header();
        h[32..36].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(ParallelsHeader::decode(&h, 1 << 20).is_err(), "a BAT beyond the file is refused before it is read");
    }
}
