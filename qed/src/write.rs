//! Creating QED images and writing them as QEMU does (`docs/qed.md` §2).

use std::rc::Rc;

use fvd_contract::{BlockDevice, ProgressPoint, WriteFlags};

use crate::format::{
    F_BACKING_FILE, F_BACKING_FORMAT_NO_PROBE, F_NEED_CHECK, HEADER_BYTES, QED_MAGIC, QedError, QedHeader,
};
use crate::image::{ClusterState, QedImage, io};

/// How to create an image (QEMU's `qemu-img create -f qed` options).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QedCreateOptions {
    /// Guest disk size, bytes (a multiple of 512).
    pub size_bytes: u64,
    /// Cluster size, bytes (QEMU's default 64 KiB).
    pub cluster_bytes: u64,
    /// Table size, clusters (QEMU's default 4).
    pub table_clusters: u64,
    /// A raw backing file's name, recorded in the header (with "raw, do not probe").
    pub backing_name: Option<String>,
}

impl QedCreateOptions {
    /// QEMU's defaults for a disk of `size_bytes`.
    pub fn new(size_bytes: u64) -> QedCreateOptions {
        QedCreateOptions { size_bytes, cluster_bytes: 64 << 10, table_clusters: 4, backing_name: None }
    }
}

impl QedHeader {
    /// The 64 header bytes.
    pub fn encode(&self) -> [u8; HEADER_BYTES] {
        let mut out = [0u8; HEADER_BYTES];
        out[0..4].copy_from_slice(&QED_MAGIC.to_le_bytes());
        out[4..8].copy_from_slice(&(self.cluster_bytes as u32).to_le_bytes());
        out[8..12].copy_from_slice(&(self.table_clusters as u32).to_le_bytes());
        out[12..16].copy_from_slice(&(self.header_clusters as u32).to_le_bytes());
        out[16..24].copy_from_slice(&self.features.to_le_bytes());
        out[24..32].copy_from_slice(&self.compat_features.to_le_bytes());
        out[32..40].copy_from_slice(&self.autoclear_features.to_le_bytes());
        out[40..48].copy_from_slice(&self.l1_offset.to_le_bytes());
        out[48..56].copy_from_slice(&self.image_bytes.to_le_bytes());
        out[56..60].copy_from_slice(&self.backing_name_offset.to_le_bytes());
        out[60..64].copy_from_slice(&self.backing_name_bytes.to_le_bytes());
        out
    }
}

/// Creates an image on `image` (its old content is replaced): the header cluster (the backing
/// file name at byte 64) and an empty L1 table in the next `table_clusters` clusters, as QEMU lays
/// them out. The device is flushed.
///
/// Errors: [`QedError::Corrupt`] for options the format cannot hold, [`QedError::Io`].
pub async fn create(image: &dyn BlockDevice, options: &QedCreateOptions) -> Result<(), QedError> {
    let name = options.backing_name.as_deref().unwrap_or("");
    let header = QedHeader {
        cluster_bytes: options.cluster_bytes,
        table_clusters: options.table_clusters,
        header_clusters: 1,
        features: if name.is_empty() { 0 } else { F_BACKING_FILE | F_BACKING_FORMAT_NO_PROBE },
        compat_features: 0,
        autoclear_features: 0,
        l1_offset: options.cluster_bytes,
        image_bytes: options.size_bytes,
        // QEMU records no name offset without a backing file.
        backing_name_offset: if name.is_empty() { 0 } else { HEADER_BYTES as u32 },
        backing_name_bytes: name.len() as u32,
    };
    let file_bytes = (1 + options.table_clusters) * options.cluster_bytes;
    let mut first = vec![0u8; options.cluster_bytes as usize];
    first[..HEADER_BYTES].copy_from_slice(&header.encode());
    if HEADER_BYTES + name.len() > first.len() {
        return Err(crate::format::corrupt("backing file name", name.len(), "does not fit in the header cluster"));
    }
    first[HEADER_BYTES..HEADER_BYTES + name.len()].copy_from_slice(name.as_bytes());
    // The same rules an open applies.
    QedHeader::decode(&first, file_bytes)?;
    image.set_len(0).await.map_err(io("truncate"))?;
    image.set_len(file_bytes).await.map_err(io("size the new image"))?;
    image.write_at(0, &first, WriteFlags::NONE).await.map_err(io("write header"))?;
    image.flush().await.map_err(io("flush the new image"))
}

impl QedImage {
    fn writable_or_err(&self) -> Result<(), QedError> {
        if self.writable {
            Ok(())
        } else {
            Err(crate::format::corrupt("open mode", "read-only", "the image was opened read-only"))
        }
    }

    async fn write_header(&self, header: &QedHeader) -> Result<(), QedError> {
        let bytes = header.encode();
        self.image.write_at(0, &bytes, WriteFlags::NONE).await.map_err(io("write header"))
    }

    /// Appends `clusters` clusters at the end of the file; returns the first one's offset.
    async fn append(&self, clusters: u64) -> Result<u64, QedError> {
        let cluster = self.header.borrow().cluster_bytes;
        let at = self.file_bytes.get();
        let end = at + clusters * cluster;
        if end > self.image.len_bytes() {
            self.image.set_len(end).await.map_err(io("grow the image"))?;
        }
        self.file_bytes.set(end);
        Ok(at)
    }

    /// Writes guest bytes at `offset`: in place where clusters are allocated; elsewhere whole new
    /// clusters (the rest copied from the backing file, or zeros) appended at the end of the file,
    /// a run of them per L2 table, then the tables (`docs/qed.md` §2).
    ///
    /// Errors: [`QedError::OutOfRange`], [`QedError::Corrupt`] (read-only, or a table entry that
    /// breaks a rule), [`QedError::Io`].
    pub async fn write(&self, offset: u64, data: &[u8]) -> Result<(), QedError> {
        self.writable_or_err()?;
        let len = data.len() as u64;
        self.check_range(offset, len)?;
        let header = self.header();
        let cluster = header.cluster_bytes;
        let mut done = 0u64;
        while done < len {
            let at = offset + done;
            match self.cluster_state(at).await? {
                ClusterState::Data(host) => {
                    let n = (cluster - at % cluster).min(len - done);
                    self.image
                        .write_at(host + at % cluster, &data[done as usize..(done + n) as usize], WriteFlags::NONE)
                        .await
                        .map_err(io("write data"))?;
                    done += n;
                }
                _ => {
                    // Allocating writes run one at a time; the state is read again under the
                    // lock, as another write may have allocated the cluster meanwhile.
                    let _allocating = self.allocating.lock().await;
                    let first_state = self.cluster_state(at).await?;
                    if matches!(first_state, ClusterState::Data(_)) {
                        continue;
                    }
                    // The run of clusters with the same state, inside one L2 table, up to the end
                    // of this write.
                    let (l1_index, l2_index, _) = header.split(at);
                    let end = offset + len;
                    let mut clusters = 1u64;
                    while l2_index + clusters < header.table_entries()
                        && (at / cluster + clusters) * cluster < end
                        && self.cluster_state((at / cluster + clusters) * cluster).await? == first_state
                    {
                        clusters += 1;
                    }
                    let run_end = ((at / cluster + clusters) * cluster).min(end);
                    self.allocate(at, &data[done as usize..(run_end - offset) as usize], clusters, l1_index, l2_index)
                        .await?;
                    done = run_end - offset;
                }
            }
        }
        Ok(())
    }

    /// One allocating write: `clusters` new clusters for guest bytes from `at` (`data` covers
    /// `at..at + data.len()`, inside them), mapped by L2 entries from `l2_index` of table
    /// `l1_index`.
    async fn allocate(
        &self,
        at: u64,
        data: &[u8],
        clusters: u64,
        l1_index: u64,
        l2_index: u64,
    ) -> Result<(), QedError> {
        assert!(self.allocating.is_held(), "allocating writes run under the allocation lock");
        let header = self.header();
        let cluster = header.cluster_bytes;
        let has_backing = self.backing.is_some();
        // NEED_CHECK before the first allocating write, without a backing file (QEMU's rule),
        // and durable before it: QEMU writes the header with no flush, so when the allocation goes
        // into an existing L2 table (no flush either) a crash can keep the new L2 entry and lose
        // both the header and the file's growth: an entry beyond the end of the file in an image
        // that says it needs no check. Found by `fvdsim swarm --seed 7` (seed
        // 0xe6baa4db2acc66ce, docs/qed.md); this flush is the fix, once per clean period.
        //
        // Memory says NEED_CHECK only once the header saying it is durable: with memory
        // updated first, a failed header write (or flush) left every later allocation believing
        // the flag was on disk, and a crash then kept an L2 entry beyond the end of the file in
        // an image no repair would look at. Found by the swarm (`fvdsim run --swarm-seed
        // 0xc9362beda7950804`, an injected media error on the header write).
        if !has_backing && !header.needs_check() {
            let mut flagged = header.clone();
            flagged.features |= F_NEED_CHECK;
            self.write_header(&flagged).await?;
            self.progress(ProgressPoint::NeedCheckWritten, 1);
            self.image.flush().await.map_err(io("flush NEED_CHECK"))?;
            self.header.borrow_mut().features |= F_NEED_CHECK;
        }
        debug_assert!(has_backing || self.header.borrow().needs_check(), "NEED_CHECK is durable before allocating");
        // The clusters' whole content: the rest from the backing file (or zeros), then the data.
        let first_guest = at / cluster * cluster;
        let mut content = vec![0u8; (clusters * cluster) as usize];
        self.read_backing(first_guest, &mut content).await?;
        let from = (at - first_guest) as usize;
        content[from..from + data.len()].copy_from_slice(data);
        let host = self.append(clusters).await?;
        self.image.write_at(host, &content, WriteFlags::NONE).await.map_err(io("write new clusters"))?;
        if has_backing {
            // The data must be durable before an L2 entry points at it.
            self.image.flush().await.map_err(io("flush data before L2"))?;
        }
        let existing = self.l2_table(l1_index).await?;
        let mut table = existing.as_deref().cloned().unwrap_or_else(|| vec![0u64; header.table_entries() as usize]);
        for i in 0..clusters {
            table[(l2_index + i) as usize] = host + i * cluster;
        }
        let l2_offset = if existing.is_some() {
            let l2_offset = self.l1.borrow()[l1_index as usize];
            // The sectors holding the changed entries.
            let first_byte = l2_index * 8 / 512 * 512;
            let end_byte = ((l2_index + clusters) * 8).div_ceil(512) * 512;
            let bytes: Vec<u8> = table[(first_byte / 8) as usize..(end_byte / 8) as usize]
                .iter()
                .flat_map(|e| e.to_le_bytes())
                .collect();
            let update = self.image.write_at(l2_offset + first_byte, &bytes, WriteFlags::NONE);
            self.progress(ProgressPoint::L2UpdateSubmitted, l2_offset);
            update.await.map_err(io("update L2"))?;
            l2_offset
        } else {
            let l2_offset = self.append(header.table_clusters).await?;
            let bytes: Vec<u8> = table.iter().flat_map(|e| e.to_le_bytes()).collect();
            let write = self.image.write_at(l2_offset, &bytes, WriteFlags::NONE);
            self.progress(ProgressPoint::L2UpdateSubmitted, l2_offset);
            write.await.map_err(io("write new L2"))?;
            // The table must be durable before the L1 entry points at it.
            self.image.flush().await.map_err(io("flush L2 before L1"))?;
            // The L1 sector with the new entry; memory takes the entry only once the write has
            // succeeded. Found by the swarm (`fvdsim run --swarm-seed 0x309619aa82b4790c`, an
            // injected media error on the L1 write): with memory updated first, a failed L1
            // write left later allocations in a table no on-disk L1 entry reached, and a crash
            // lost flushed writes.
            let sector = l1_index * 8 / 512 * 512;
            let first_entry = (sector / 8) as usize;
            let mut entries = self.l1.borrow()[first_entry..first_entry + 64].to_vec();
            entries[l1_index as usize - first_entry] = l2_offset;
            let bytes: Vec<u8> = entries.iter().flat_map(|e| e.to_le_bytes()).collect();
            let update = self.image.write_at(header.l1_offset + sector, &bytes, WriteFlags::NONE);
            self.progress(ProgressPoint::L1UpdateSubmitted, l1_index);
            update.await.map_err(io("update L1"))?;
            assert_eq!(self.l1.borrow()[l1_index as usize], 0, "L1 entries change only under the allocation lock");
            self.l1.borrow_mut()[l1_index as usize] = l2_offset;
            l2_offset
        };
        self.cache_l2(l2_offset, Rc::new(table));
        Ok(())
    }

    /// Makes every completed write durable.
    ///
    /// Errors: [`QedError::Io`].
    pub async fn flush(&self) -> Result<(), QedError> {
        self.image.flush().await.map_err(io("flush"))
    }

    /// Closes the image: flush, clear NEED_CHECK in the header, flush (QEMU's `bdrv_qed_close`).
    ///
    /// Errors: [`QedError::Io`].
    pub async fn close(&self) -> Result<(), QedError> {
        if !self.writable {
            return Ok(());
        }
        self.flush().await?;
        if self.header.borrow().needs_check() {
            // Memory clears the flag first: if the write fails, the disk still says NEED_CHECK,
            // the safe side.
            self.header.borrow_mut().features &= !F_NEED_CHECK;
            let header = self.header();
            self.write_header(&header).await?;
            self.progress(ProgressPoint::NeedCheckWritten, 0);
            self.flush().await?;
        }
        Ok(())
    }
}
