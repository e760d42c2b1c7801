//! The QED header and table entries: pure decoding, no I/O (`docs/qed.md` §1).

/// `'Q','E','D',0` little-endian.
pub const QED_MAGIC: u32 = u32::from_le_bytes(*b"QED\0");
/// The header's size in bytes (`sizeof(QEDHeader)`).
pub const HEADER_BYTES: usize = 64;
/// Feature bit: the image has a backing file.
pub const F_BACKING_FILE: u64 = 0x01;
/// Feature bit: the image may be inconsistent (a crash during allocation); check before use.
pub const F_NEED_CHECK: u64 = 0x02;
/// Feature bit: the backing file is raw, not to be probed.
pub const F_BACKING_FORMAT_NO_PROBE: u64 = 0x04;
/// Every feature bit this reader knows; others refuse the open (QEMU does the same).
pub const KNOWN_FEATURES: u64 = F_BACKING_FILE | F_NEED_CHECK | F_BACKING_FORMAT_NO_PROBE;
/// Smallest and largest cluster sizes (`QED_MIN_CLUSTER_SIZE`, `QED_MAX_CLUSTER_SIZE`).
pub const CLUSTER_BYTES_RANGE: std::ops::RangeInclusive<u64> = 4096..=(64 << 20);
/// Largest table size in clusters (`QED_MAX_TABLE_SIZE`).
pub const MAX_TABLE_CLUSTERS: u64 = 16;
/// The L2 entry of a zero cluster: reads zeros, stops backing-file fall-through.
pub const ZERO_CLUSTER: u64 = 1;

/// Why a QED image cannot be used, naming the field, its value and the rule.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QedError {
    /// A header field or table entry breaks a rule of the format.
    #[error("corrupt QED image: {field} = {value}: {rule}")]
    Corrupt {
        /// The field (or table entry) at fault.
        field: String,
        /// Its value.
        value: String,
        /// The rule it breaks.
        rule: String,
    },
    /// A device request failed.
    #[error("QED {what}: {source}")]
    Io {
        /// What the reader was doing.
        what: &'static str,
        /// The device error.
        source: fvd_contract::DeviceError,
    },
    /// A read outside the guest disk.
    #[error("read of {len_bytes} bytes at {offset_bytes} is beyond the {image_bytes}-byte disk")]
    OutOfRange {
        /// Start of the read.
        offset_bytes: u64,
        /// Its length.
        len_bytes: u64,
        /// The guest disk's size.
        image_bytes: u64,
    },
}

pub(crate) fn corrupt(field: impl Into<String>, value: impl std::fmt::Display, rule: impl Into<String>) -> QedError {
    QedError::Corrupt { field: field.into(), value: value.to_string(), rule: rule.into() }
}

/// The decoded header (`docs/qed.md` §1.1: 64 bytes, little-endian).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QedHeader {
    /// Cluster size, bytes (a power of two in [`CLUSTER_BYTES_RANGE`]).
    pub cluster_bytes: u64,
    /// L1 and L2 table size, clusters (a power of two, 1..=16).
    pub table_clusters: u64,
    /// Header size, clusters (the header plus extra data before the first table or data cluster).
    pub header_clusters: u64,
    /// Feature bits ([`KNOWN_FEATURES`]).
    pub features: u64,
    /// Compatible features (none defined; ignored).
    pub compat_features: u64,
    /// Auto-clear features (none defined).
    pub autoclear_features: u64,
    /// Byte offset of the L1 table (cluster-aligned).
    pub l1_offset: u64,
    /// Guest disk size, bytes (a multiple of 512).
    pub image_bytes: u64,
    /// Byte offset of the backing file name.
    pub backing_name_offset: u32,
    /// Length of the backing file name, bytes.
    pub backing_name_bytes: u32,
}

impl QedHeader {
    /// Entries per table (`table_clusters * cluster_bytes / 8`).
    pub fn table_entries(&self) -> u64 {
        self.table_clusters * self.cluster_bytes / 8
    }

    /// Bytes of one table.
    pub fn table_bytes(&self) -> u64 {
        self.table_clusters * self.cluster_bytes
    }

    /// Guest bytes one L2 table maps.
    pub fn l2_span_bytes(&self) -> u64 {
        self.table_entries() * self.cluster_bytes
    }

    /// `(L1 index, L2 index, byte in cluster)` of guest byte `offset`.
    pub fn split(&self, offset: u64) -> (u64, u64, u64) {
        let cluster = offset / self.cluster_bytes;
        (cluster / self.table_entries(), cluster % self.table_entries(), offset % self.cluster_bytes)
    }

    /// True if the image names a backing file.
    pub fn has_backing_file(&self) -> bool {
        self.features & F_BACKING_FILE != 0
    }

    /// True if the image may be inconsistent (NEED_CHECK).
    pub fn needs_check(&self) -> bool {
        self.features & F_NEED_CHECK != 0
    }

    /// Decodes and checks the header against the image file's length: every rule QEMU's open
    /// applies (`bdrv_qed_do_open`), so nothing later is sized by an unchecked number.
    ///
    /// Errors: [`QedError::Corrupt`] naming the first field that breaks a rule.
    pub fn decode(bytes: &[u8], file_bytes: u64) -> Result<QedHeader, QedError> {
        if bytes.len() < HEADER_BYTES || file_bytes < HEADER_BYTES as u64 {
            return Err(corrupt("file length", file_bytes, "shorter than the 64-byte QED header"));
        }
        let u32_at = |at: usize| u32::from_le_bytes(bytes[at..at + 4].try_into().expect("4 bytes"));
        let u64_at = |at: usize| u64::from_le_bytes(bytes[at..at + 8].try_into().expect("8 bytes"));
        let magic = u32_at(0);
        if magic != QED_MAGIC {
            return Err(corrupt("magic", format!("{magic:#010x}"), "is not QED\\0"));
        }
        let header = QedHeader {
            cluster_bytes: u64::from(u32_at(4)),
            table_clusters: u64::from(u32_at(8)),
            header_clusters: u64::from(u32_at(12)),
            features: u64_at(16),
            compat_features: u64_at(24),
            autoclear_features: u64_at(32),
            l1_offset: u64_at(40),
            image_bytes: u64_at(48),
            backing_name_offset: u32_at(56),
            backing_name_bytes: u32_at(60),
        };
        header.validate(file_bytes)?;
        Ok(header)
    }

    fn validate(&self, file_bytes: u64) -> Result<(), QedError> {
        let cluster = self.cluster_bytes;
        if !cluster.is_power_of_two() || !CLUSTER_BYTES_RANGE.contains(&cluster) {
            return Err(corrupt("cluster_size", cluster, "must be a power of two from 4 KiB to 64 MiB"));
        }
        if !self.table_clusters.is_power_of_two() || self.table_clusters > MAX_TABLE_CLUSTERS {
            return Err(corrupt("table_size", self.table_clusters, "must be a power of two from 1 to 16 clusters"));
        }
        if self.header_clusters == 0 || self.header_clusters > file_bytes / cluster + 1 {
            return Err(corrupt("header_size", self.header_clusters, "must be at least 1 cluster and within the file"));
        }
        let unknown = self.features & !KNOWN_FEATURES;
        if unknown != 0 {
            return Err(corrupt("features", format!("{:#x}", self.features), format!("unknown bits {unknown:#x}")));
        }
        if !self.image_bytes.is_multiple_of(512) {
            return Err(corrupt("image_size", self.image_bytes, "must be a multiple of 512"));
        }
        let max_image = self.table_entries().saturating_mul(self.l2_span_bytes());
        if self.image_bytes > max_image {
            return Err(corrupt(
                "image_size",
                self.image_bytes,
                format!("exceeds what one L1 table maps ({max_image})"),
            ));
        }
        let header_end = self.header_clusters * cluster;
        if !self.l1_offset.is_multiple_of(cluster) || self.l1_offset < header_end {
            return Err(corrupt(
                "l1_table_offset",
                self.l1_offset,
                format!("must be cluster-aligned and after the {header_end}-byte header"),
            ));
        }
        if self.l1_offset.saturating_add(self.table_bytes()) > file_bytes {
            return Err(corrupt(
                "l1_table_offset",
                self.l1_offset,
                format!("the {}-byte L1 table ends beyond the {file_bytes}-byte file", self.table_bytes()),
            ));
        }
        let name_end = u64::from(self.backing_name_offset) + u64::from(self.backing_name_bytes);
        if self.has_backing_file() && (self.backing_name_bytes == 0 || name_end > header_end) {
            return Err(corrupt(
                "backing_filename",
                format!("{}+{}", self.backing_name_offset, self.backing_name_bytes),
                format!("must be non-empty and lie within the {header_end}-byte header"),
            ));
        }
        Ok(())
    }
}

/// The little-endian u64 entries of a table.
pub fn table_entries(bytes: &[u8]) -> Vec<u64> {
    let mut entries = Vec::with_capacity(bytes.len() / 8);
    table_entries_into(bytes, &mut entries);
    entries
}

/// [`table_entries`] into `entries` (cleared first), reusing its allocation.
pub fn table_entries_into(bytes: &[u8], entries: &mut Vec<u64>) {
    entries.clear();
    entries.extend(bytes.chunks_exact(8).map(|e| u64::from_le_bytes(e.try_into().expect("8 bytes"))));
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `qemu-img create -f qed a.qed 64M` (docs/qed.md §1.1).
    fn qemu_default_header() -> Vec<u8> {
        let mut h = vec![0u8; 64];
        h[0..4].copy_from_slice(b"QED\0");
        h[4..8].copy_from_slice(&0x10000u32.to_le_bytes());
        h[8..12].copy_from_slice(&4u32.to_le_bytes());
        h[12..16].copy_from_slice(&1u32.to_le_bytes());
        h[40..48].copy_from_slice(&0x10000u64.to_le_bytes());
        h[48..56].copy_from_slice(&(64u64 << 20).to_le_bytes());
        h
    }

    #[test]
    fn qemus_default_header_decodes_with_its_geometry() {
        let header = QedHeader::decode(&qemu_default_header(), 327_680).unwrap();
        assert_eq!(header.table_entries(), 32_768);
        assert_eq!(header.l2_span_bytes(), 2 << 30);
        assert_eq!(header.split((2 << 30) + 0x10000 + 5), (1, 1, 5));
        assert!(!header.has_backing_file() && !header.needs_check());
    }

    #[test]
    fn every_broken_rule_is_named() {
        let cases: [(usize, &[u8], &str); 6] = [
            (0, b"QEE\0", "magic"),
            (4, &3000u32.to_le_bytes(), "cluster_size"),
            (8, &3u32.to_le_bytes(), "table_size"),
            (16, &0x10u64.to_le_bytes(), "features"),
            (40, &0x12345u64.to_le_bytes(), "l1_table_offset"),
            (48, &1000u64.to_le_bytes(), "image_size"),
        ];
        for (at, bytes, field) in cases {
            let mut h = qemu_default_header();
            h[at..at + bytes.len()].copy_from_slice(bytes);
            match QedHeader::decode(&h, 327_680) {
                Err(QedError::Corrupt { field: f, .. }) => assert_eq!(f, field),
                other => panic!("{field}: {other:?}"),
            }
        }
        // An L1 table beyond the file's end is refused before anything is allocated for it.
        assert!(matches!(QedHeader::decode(&qemu_default_header(), 100_000), Err(QedError::Corrupt { .. })));
        assert!(QedHeader::decode(&[0u8; 10], 10).is_err());
    }
}
