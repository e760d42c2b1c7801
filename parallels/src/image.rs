//! An open Parallels image: reads and writes through the BAT, QEMU's allocation and `in_use`
//! protocol (`docs/parallels.md` §2).

use std::cell::{Cell, RefCell};
use std::rc::Rc;

use fvd_contract::{BlockDevice, Env, Progress, ProgressPoint, WriteFlags};

use crate::format::{HEADER_BYTES, IN_USE, ParallelsError, ParallelsHeader, corrupt};

pub(crate) fn io(what: &'static str) -> impl Fn(fvd_contract::DeviceError) -> ParallelsError {
    move |source| ParallelsError::Io { what, source }
}

/// An open Parallels image.
///
/// Writes allocate a cluster at the end of the data area (QEMU's first-free choice, as no cluster
/// is ever freed here), one allocation at a time; the BAT is updated in memory and written at
/// flush and close, after a flush that makes the clusters it names durable (QEMU writes it with
/// no such flush: docs/parallels.md). A writable open sets
/// `in_use`; close writes the BAT, clears `in_use`, flushes and truncates the file to the end of
/// the data. A writable open of an image left in use (or otherwise inconsistent) repairs it first.
pub struct ParallelsImage {
    pub(crate) image: Rc<dyn BlockDevice>,
    pub(crate) header: RefCell<ParallelsHeader>,
    pub(crate) bat: RefCell<Vec<u32>>,
    pub(crate) writable: bool,
    /// End of the data, bytes: the next cluster is allocated here.
    pub(crate) data_end: Cell<u64>,
    pub(crate) bat_dirty: Cell<bool>,
    /// Serialises allocations: a cluster is handed out only once the file has grown to hold it.
    pub(crate) allocating: fvd_contract::AsyncLock,
    /// Serialises flushes: a flush that finds the BAT clean must not complete before another
    /// flush's BAT write (whose snapshot may hold this flush's entries) is durable.
    pub(crate) flushing: fvd_contract::AsyncLock,
    /// Where named progress points are reported (the simulator crashes the world at them);
    /// `None` reports nothing.
    pub(crate) env: Option<Rc<dyn Env>>,
}

impl std::fmt::Debug for ParallelsImage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ParallelsImage").field("header", &self.header.borrow()).finish_non_exhaustive()
    }
}

/// Creates an image on `image` as `qemu-img create -f parallels` lays it out: the Ext magic,
/// geometry 16 heads x 32 sectors, the BAT after the header, the data area from the first cluster
/// boundary after it (which is also the file's length).
///
/// Errors: [`ParallelsError::Corrupt`] for a size or cluster size the format cannot hold,
/// [`ParallelsError::Io`].
pub async fn create(image: &dyn BlockDevice, size_bytes: u64, cluster_bytes: u64) -> Result<(), ParallelsError> {
    if !cluster_bytes.is_multiple_of(512) || cluster_bytes == 0 {
        return Err(corrupt("cluster size", cluster_bytes, "must be a positive multiple of 512"));
    }
    if !size_bytes.is_multiple_of(512) {
        return Err(corrupt("size", size_bytes, "must be a multiple of 512"));
    }
    let cluster_sectors = cluster_bytes / 512;
    let bat_entries = size_bytes.div_ceil(cluster_bytes);
    if bat_entries > u64::from(u32::MAX) / 4 {
        return Err(corrupt("size", size_bytes, "needs more BAT entries than the format holds"));
    }
    let mut header = ParallelsHeader {
        ext: true,
        heads: 16,
        cylinders: (size_bytes / 512 / 16 / 32) as u32,
        cluster_sectors,
        bat_entries,
        disk_sectors: size_bytes / 512,
        in_use: 0,
        data_off_sectors: 0,
        flags: 0,
        ext_off_sectors: 0,
    };
    header.data_off_sectors = header.min_data_off_sectors();
    let file_bytes = header.data_off_sectors * 512;
    ParallelsHeader::decode(&header.encode(), file_bytes)?;
    image.set_len(0).await.map_err(io("truncate"))?;
    image.set_len(file_bytes).await.map_err(io("size the new image"))?;
    image.write_at(0, &header.encode(), WriteFlags::NONE).await.map_err(io("write header"))?;
    image.flush().await.map_err(io("flush the new image"))
}

impl ParallelsImage {
    /// Opens `image` read-only.
    ///
    /// Errors: [`ParallelsError::Corrupt`] for a header that breaks a rule, or a bad `data_off`
    /// (named), [`ParallelsError::Io`].
    pub async fn open(image: Rc<dyn BlockDevice>) -> Result<ParallelsImage, ParallelsError> {
        ParallelsImage::open_with(image, false, None).await
    }

    /// Opens `image` for reading and writing: repairs an image left in use or inconsistent (as a
    /// read-write QEMU open does), then sets `in_use`.
    ///
    /// Errors: as [`ParallelsImage::open`].
    pub async fn open_writable(image: Rc<dyn BlockDevice>) -> Result<ParallelsImage, ParallelsError> {
        ParallelsImage::open_with(image, true, None).await
    }

    /// [`ParallelsImage::open_writable`], reporting the named progress points (BAT write
    /// submitted, `in_use` written) to `env`, where a simulation may crash the world.
    ///
    /// Errors: as [`ParallelsImage::open_writable`].
    pub async fn open_writable_with_env(
        image: Rc<dyn BlockDevice>,
        env: Rc<dyn Env>,
    ) -> Result<ParallelsImage, ParallelsError> {
        ParallelsImage::open_with(image, true, Some(env)).await
    }

    /// Reports `point` to the environment, if there is one.
    pub(crate) fn progress(&self, point: ProgressPoint, detail: u64) {
        if let Some(env) = &self.env {
            env.progress(Progress { point, detail });
        }
    }

    async fn open_with(
        image: Rc<dyn BlockDevice>,
        writable: bool,
        env: Option<Rc<dyn Env>>,
    ) -> Result<ParallelsImage, ParallelsError> {
        let file_bytes = image.len_bytes();
        let mut bytes = vec![0u8; (HEADER_BYTES as usize).min(file_bytes as usize)];
        image.read_at(0, &mut bytes).await.map_err(io("read header"))?;
        let mut header = ParallelsHeader::decode(&bytes, file_bytes)?;
        if !header.ext && header.data_off_sectors == 0 {
            header.data_off_sectors = header.min_data_off_sectors();
        }
        // Bounded: decode checked that the BAT lies inside the file.
        let mut bat_bytes = vec![0u8; (4 * header.bat_entries) as usize];
        image.read_at(HEADER_BYTES, &mut bat_bytes).await.map_err(io("read BAT"))?;
        let bat: Vec<u32> =
            bat_bytes.chunks_exact(4).map(|e| u32::from_le_bytes(e.try_into().expect("4 bytes"))).collect();
        let cluster = header.cluster_bytes();
        let data_end = bat
            .iter()
            .filter(|e| **e != 0)
            .map(|e| header.entry_offset(*e) + cluster)
            .max()
            .unwrap_or(0)
            .max(header.data_off_sectors * 512);
        let needs_repair = header.in_use() || data_end > file_bytes || !data_off_valid(&header, file_bytes);
        let parallels = ParallelsImage {
            image,
            header: RefCell::new(header),
            bat: RefCell::new(bat),
            writable,
            data_end: Cell::new(data_end),
            bat_dirty: Cell::new(false),
            allocating: fvd_contract::AsyncLock::new(),
            flushing: fvd_contract::AsyncLock::new(),
            env,
        };
        if writable {
            if needs_repair || parallels.has_duplicates() {
                let report = parallels.check(true).await?;
                assert!(report.is_consistent(), "a repair leaves nothing corrupt: {report:?}");
            }
            parallels.header.borrow_mut().in_use = IN_USE;
            parallels.write_header().await?;
            parallels.progress(ProgressPoint::InUseWritten, 1);
            parallels.image.flush().await.map_err(io("flush in_use"))?;
        } else if !data_off_valid(&parallels.header.borrow(), file_bytes) {
            let header = parallels.header.borrow();
            return Err(corrupt("data_off", header.data_off_sectors, "lies outside the file or inside the BAT"));
        }
        Ok(parallels)
    }

    fn has_duplicates(&self) -> bool {
        let mut seen = std::collections::BTreeSet::new();
        self.bat.borrow().iter().filter(|e| **e != 0).any(|e| !seen.insert(*e))
    }

    /// The header.
    pub fn header(&self) -> ParallelsHeader {
        self.header.borrow().clone()
    }

    /// Where guest cluster `index` lives: `Some(host byte offset)`, or `None` (reads zeros).
    pub fn cluster_offset(&self, index: u64) -> Option<u64> {
        let entry = self.bat.borrow()[index as usize];
        (entry != 0).then(|| self.header.borrow().entry_offset(entry))
    }

    pub(crate) async fn write_header(&self) -> Result<(), ParallelsError> {
        let bytes = self.header.borrow().encode();
        self.image.write_at(0, &bytes, WriteFlags::NONE).await.map_err(io("write header"))
    }

    pub(crate) async fn write_bat(&self) -> Result<(), ParallelsError> {
        // Clean before the snapshot: an allocation made while this write is in flight marks the
        // BAT dirty again, so the next flush writes it (found by `fvdsim run --format parallels
        // --scenario torn --seed 1`: cleared after the write, such an entry was never written and
        // a flushed write was lost at the next crash).
        self.bat_dirty.set(false);
        let bytes: Vec<u8> = self.bat.borrow().iter().flat_map(|e| e.to_le_bytes()).collect();
        let written = self.write_bat_snapshot(&bytes).await;
        if written.is_err() {
            // The snapshot may not be on disk: keep the BAT dirty so the next flush (or close)
            // writes it again. Left clean, every later flush skipped it and completed, and a
            // write acknowledged before one of them lost its cluster's entry (swarm seed
            // 0x2a39cbbee3ee015c: the flush before the BAT failed).
            self.bat_dirty.set(true);
        }
        written
    }

    async fn write_bat_snapshot(&self, bytes: &[u8]) -> Result<(), ParallelsError> {
        // Every cluster this snapshot names was grown into the file before its entry was set:
        // make that growth durable before the BAT can name it. QEMU's driver does not order the
        // two, and a crash between them leaves entries beyond the end of the file, a corruption
        // on which QEMU 10.0.2's `qemu-img check` aborts (docs/parallels.md, "BAT after growth").
        self.image.flush().await.map_err(io("flush before the BAT"))?;
        let write = self.image.write_at(HEADER_BYTES, bytes, WriteFlags::NONE);
        self.progress(ProgressPoint::BatWriteSubmitted, bytes.len() as u64 / 4);
        write.await.map_err(io("write BAT"))
    }

    fn check_range(&self, offset: u64, len: u64) -> Result<(), ParallelsError> {
        let disk_bytes = self.header.borrow().disk_bytes();
        if offset.checked_add(len).is_none_or(|end| end > disk_bytes) {
            return Err(ParallelsError::OutOfRange { offset_bytes: offset, len_bytes: len, disk_bytes });
        }
        Ok(())
    }

    /// The host offset of guest cluster `index`, checked against the file (a BAT entry may be
    /// corrupt).
    fn host_of(&self, index: u64) -> Result<Option<u64>, ParallelsError> {
        let Some(host) = self.cluster_offset(index) else { return Ok(None) };
        let header = self.header.borrow();
        let cluster = header.cluster_bytes();
        if host < header.data_off_sectors * 512 || host + cluster > self.image.len_bytes() {
            return Err(corrupt(
                format!("BAT[{index}]"),
                self.bat.borrow()[index as usize],
                format!("cluster at {host:#x} lies outside the data area or the {}-byte file", self.image.len_bytes()),
            ));
        }
        Ok(Some(host))
    }

    /// Reads guest bytes at `offset` into `buf`.
    ///
    /// Errors: [`ParallelsError::OutOfRange`], [`ParallelsError::Corrupt`] for a BAT entry outside
    /// the file, [`ParallelsError::Io`].
    pub async fn read(&self, offset: u64, buf: &mut [u8]) -> Result<(), ParallelsError> {
        let len = buf.len() as u64;
        self.check_range(offset, len)?;
        let cluster = self.header.borrow().cluster_bytes();
        let mut done = 0u64;
        while done < len {
            let at = offset + done;
            let n = (cluster - at % cluster).min(len - done);
            let piece = &mut buf[done as usize..(done + n) as usize];
            match self.host_of(at / cluster)? {
                Some(host) => self.image.read_at(host + at % cluster, piece).await.map_err(io("read data"))?,
                None => piece.fill(0),
            }
            done += n;
        }
        Ok(())
    }

    /// Writes guest bytes at `offset`, allocating clusters at the end of the data area.
    ///
    /// Errors: [`ParallelsError::OutOfRange`], [`ParallelsError::Corrupt`] (read-only, or a BAT
    /// entry outside the file), [`ParallelsError::Io`].
    pub async fn write(&self, offset: u64, data: &[u8]) -> Result<(), ParallelsError> {
        if !self.writable {
            return Err(corrupt("open mode", "read-only", "the image was opened read-only"));
        }
        let len = data.len() as u64;
        self.check_range(offset, len)?;
        let cluster = self.header.borrow().cluster_bytes();
        let mut done = 0u64;
        while done < len {
            let at = offset + done;
            let n = (cluster - at % cluster).min(len - done);
            let index = at / cluster;
            let host = match self.host_of(index)? {
                Some(host) => host,
                None => {
                    // One allocation at a time; another write may have allocated this cluster
                    // while this one waited.
                    let _allocating = self.allocating.lock().await;
                    match self.host_of(index)? {
                        Some(host) => host,
                        None => {
                            let host = self.data_end.get();
                            let end = host + cluster;
                            // The file holds the cluster before the BAT names it, so a concurrent
                            // write to it never lands beyond the end of the file.
                            if end > self.image.len_bytes() {
                                self.image.set_len(end).await.map_err(io("grow the image"))?;
                            }
                            self.data_end.set(end);
                            let value = self.header.borrow().entry_value(host);
                            self.bat.borrow_mut()[index as usize] = value;
                            self.bat_dirty.set(true);
                            host
                        }
                    }
                }
            };
            self.image
                .write_at(host + at % cluster, &data[done as usize..(done + n) as usize], WriteFlags::NONE)
                .await
                .map_err(io("write data"))?;
            done += n;
        }
        Ok(())
    }

    /// Writes the BAT if it changed, then flushes the device (QEMU's `flush_to_os` and flush).
    ///
    /// Errors: [`ParallelsError::Io`].
    pub async fn flush(&self) -> Result<(), ParallelsError> {
        // Found by crash-state enumeration (`fvdsim run --scenario exhaustive --format parallels
        // --seed 1 --requests 24`, write #13 lost): once the BAT write waited for the flush
        // before it, a second flush found the BAT clean and completed while the first one's BAT
        // write, holding the second's entries, had not landed.
        let _flushing = self.flushing.lock().await;
        if self.bat_dirty.get() {
            self.write_bat().await?;
        }
        self.image.flush().await.map_err(io("flush"))
    }

    /// Closes the image: BAT, `in_use` cleared, flush, the file truncated to the end of the data.
    ///
    /// Errors: [`ParallelsError::Io`].
    pub async fn close(&self) -> Result<(), ParallelsError> {
        if !self.writable {
            return Ok(());
        }
        self.flush().await?;
        self.header.borrow_mut().in_use = 0;
        self.write_header().await?;
        self.progress(ProgressPoint::InUseWritten, 0);
        self.image.flush().await.map_err(io("flush at close"))?;
        let end = self.data_end.get();
        if self.image.len_bytes() > end {
            self.image.set_len(end).await.map_err(io("truncate at close"))?;
        }
        Ok(())
    }
}

/// QEMU's rule: `min_off <= data_off <= file sectors`.
pub(crate) fn data_off_valid(header: &ParallelsHeader, file_bytes: u64) -> bool {
    header.data_off_sectors >= header.min_data_off_sectors() && header.data_off_sectors * 512 <= file_bytes
}
