//! Create, open (with journal recovery), metadata write-home, clean-shutdown flag, close.

use std::cell::RefCell;
use std::collections::BTreeSet;
use std::rc::Rc;

use super::state::{JournalState, LockSet, State};
use super::{CreateOptions, Devices, FvdImage, Inner, JournalSize, OpenOptions, Profile};
use crate::device::{BlockDevice, WriteFlags};
use crate::env::{Env, ProgressPoint};
use crate::error::FvdError;
use crate::format::header::{BASE_IMG_CAPACITY, DATA_FILE_CAPACITY, FORMAT_NAME_CAPACITY};
use crate::format::journal::{DecodedSector, JournalRecord};
use crate::format::table::{decode_table, encode_table};
use crate::format::{
    Bitmap, DIRTY_TABLE_BIT, EMPTY_TABLE_ENTRY, HEADER_BYTES, HEADER_REGION_BYTES, Header, HeaderExtension, Layout,
    SECTOR_BYTES, round_up,
};

/// v1's bound on the bitmap when choosing a default block size (`MODERATE_BITMAP_SIZE`).
const MODERATE_BITMAP_BYTES: u64 = 4 << 20;
/// Default journal size (v1).
const DEFAULT_JOURNAL_BYTES: u64 = 16 << 20;
/// Table entries per hardened journal sector beside a bitmap record: `(488 − 12 − 16) / 4`.
const ENTRIES_PER_MIXED_SECTOR: u64 = 115;

fn invalid(option: &'static str, value: impl std::fmt::Display, rule: impl Into<String>) -> FvdError {
    FvdError::InvalidOption { option, value: value.to_string(), rule: rule.into() }
}

/// Builds the header for `options`, checking every option.
pub(crate) fn header_for(options: &CreateOptions) -> Result<Header, FvdError> {
    if options.size_bytes == 0 {
        return Err(invalid("size", 0, "must be positive"));
    }
    let virtual_size = round_up(options.size_bytes, SECTOR_BYTES);
    let base = options.base.as_ref();
    if let Some(base) = base {
        if base.name.is_empty() || base.name.len() >= BASE_IMG_CAPACITY {
            return Err(invalid("backing_file", &base.name, format!("must be 1 to {} bytes", BASE_IMG_CAPACITY - 1)));
        }
        if base.format.len() >= FORMAT_NAME_CAPACITY {
            return Err(invalid("backing_fmt", &base.format, format!("must be under {FORMAT_NAME_CAPACITY} bytes")));
        }
        if base.len_bytes == 0 {
            return Err(invalid("backing_file", &base.name, "the base image is empty"));
        }
    }
    let base_size = base.map_or(0, |b| round_up(b.len_bytes.min(virtual_size), SECTOR_BYTES));
    let block_size = match options.block_size {
        Some(size) if size == 0 || !size.is_multiple_of(SECTOR_BYTES) || size > u64::from(u32::MAX) => {
            return Err(invalid("block_size", size, "must be a positive multiple of 512 below 4 GiB"));
        }
        Some(size) => size,
        None => {
            let mut size = SECTOR_BYTES;
            while base_size.div_ceil(size).div_ceil(8) > MODERATE_BITMAP_BYTES {
                size *= 2;
            }
            size
        }
    };
    let bitmap_size = if base.is_some() { round_up(base_size.div_ceil(block_size).div_ceil(8), 4096) } else { 0 };
    let chunk_size = options.chunk_size.unwrap_or(1 << 20);
    if options.compact && (chunk_size == 0 || !chunk_size.is_multiple_of(SECTOR_BYTES)) {
        return Err(invalid("chunk_size", chunk_size, "must be a positive multiple of 512"));
    }
    if options.compact && base.is_some() && !chunk_size.is_multiple_of(block_size) {
        // Otherwise a block can straddle two journal sectors' chunk runs, and a torn journal
        // write could make its bit durable without all of its mappings.
        return Err(invalid(
            "chunk_size",
            chunk_size,
            format!("must be a multiple of block_size ({block_size}) in a compact image with a base image"),
        ));
    }
    let table_entries = if options.compact { virtual_size.div_ceil(chunk_size) } else { 0 };
    if table_entries > u64::from(DIRTY_TABLE_BIT) {
        return Err(invalid("chunk_size", chunk_size, "gives more than 2^31 chunks"));
    }
    let grow_unit = options.storage_grow_unit.unwrap_or(100 << 20);
    if options.compact && grow_unit < chunk_size {
        return Err(invalid("storage_grow_unit", grow_unit, format!("must be at least chunk_size ({chunk_size})")));
    }
    let table_size = round_up(4 * table_entries, 4096);
    let has_metadata = base.is_some() || options.compact;
    // The journal must hold the records of one write touching every chunk (v1's rule).
    let minimum_journal =
        if options.compact { table_entries.div_ceil(ENTRIES_PER_MIXED_SECTOR) * SECTOR_BYTES } else { SECTOR_BYTES };
    let journal_size = match options.journal {
        _ if !has_metadata => 0,
        JournalSize::Disabled => 0,
        JournalSize::Default => round_up(DEFAULT_JOURNAL_BYTES.max(minimum_journal), 4096),
        JournalSize::Bytes(bytes) => round_up(bytes.max(minimum_journal), 4096),
    };
    if let Some(name) = &options.data_file
        && (name.is_empty() || name.len() >= DATA_FILE_CAPACITY)
    {
        return Err(invalid("data_file", name, format!("must be 1 to {} bytes", DATA_FILE_CAPACITY - 1)));
    }
    // The header's units (`fvd-v1.md` §4.1): whole seconds of delay (−1: disabled), ms, KB/s.
    let prefetch = options.prefetch.unwrap_or(super::PrefetchConfig::v1(0));
    let header_i32 = |field: &'static str, value: u64| {
        i32::try_from(value).map_err(|_| invalid(field, value, "must fit in 31 bits"))
    };
    let start_delay_s = match options.prefetch {
        None => -1,
        Some(config) => header_i32("prefetch start delay (s)", config.start_delay_ms.div_ceil(1000).max(1))?,
    };
    let bytes_per_prefetch = round_up(prefetch.bytes_per_prefetch.max(4096), block_size);
    let bitmap_offset = HEADER_REGION_BYTES;
    let table_offset = bitmap_offset + bitmap_size;
    let journal_offset = table_offset + table_size;
    Ok(Header {
        all_data_in_fvd_img: base.is_none(),
        virtual_disk_size: virtual_size,
        metadata_size: journal_offset + journal_size,
        base_img: base.map_or(String::new(), |b| b.name.clone()),
        base_img_fmt: base.map_or(String::new(), |b| b.format.clone()),
        base_img_size: base_size,
        bitmap_offset,
        bitmap_size,
        block_size: block_size as u32,
        copy_on_read: options.copy_on_read,
        max_outstanding_copy_on_read_data: options.max_outstanding_copy_on_read_bytes.unwrap_or(2_000_000),
        data_file: options.data_file.clone().unwrap_or_default(),
        data_file_fmt: if options.data_file.is_some() { "raw".into() } else { String::new() },
        prefetch_start_delay: start_delay_s,
        prefetch_profile_offset: 0,
        prefetch_profile_entries: 0,
        num_prefetch_slots: header_i32("prefetch slots", u64::from(prefetch.slots))?,
        bytes_per_prefetch: i32::try_from(bytes_per_prefetch)
            .map_err(|_| invalid("bytes_per_prefetch", bytes_per_prefetch, "must fit in 31 bits"))?,
        prefetch_read_throughput_measure_time: header_i32("prefetch read window (ms)", prefetch.read_measure_ms)?,
        prefetch_write_throughput_measure_time: header_i32("prefetch write window (ms)", prefetch.write_measure_ms)?,
        prefetch_perf_calc_alpha: header_i32("prefetch alpha (%)", u64::from(prefetch.alpha_percent))?,
        prefetch_min_read_throughput: header_i32("prefetch minimum read throughput (KB/s)", prefetch.min_read_kb_s)?,
        prefetch_min_write_throughput: header_i32("prefetch minimum write throughput (KB/s)", prefetch.min_write_kb_s)?,
        prefetch_max_read_throughput: 1_000_000_000,
        prefetch_max_write_throughput: 1_000_000_000,
        prefetch_throttle_time: header_i32("prefetch throttle (ms)", prefetch.throttle_ms)?,
        compact_image: options.compact,
        table_offset,
        chunk_size: if options.compact { chunk_size } else { 0 },
        storage_grow_unit: if options.compact { grow_unit } else { 0 },
        add_storage_cmd: String::new(),
        journal_offset,
        journal_size,
        clean_shutdown: true,
        need_zero_init: false,
        generate_prefetch_profile: false,
        unit_of_prefetch_profile_entry_len: 4096,
        profile_directed_prefetch_start_delay: -1,
        write_updates_base_img: String::new(),
    })
}

impl CreateOptions {
    /// Checks every option as [`FvdImage::create`] does, without touching a device, so a caller
    /// can refuse bad options before it creates or truncates any file.
    ///
    /// Errors: [`FvdError::InvalidOption`] naming the option.
    pub fn validate(&self) -> Result<(), FvdError> {
        header_for(self).map(|_| ())
    }
}

fn io(context: &'static str) -> impl FnOnce(crate::device::DeviceError) -> FvdError {
    FvdError::io(context)
}

impl FvdImage {
    /// Creates an image on `devices.image` (and `devices.data` when `options.data_file` is set),
    /// replacing whatever they held. The base image device, if given, is only measured.
    ///
    /// Errors: [`FvdError::InvalidOption`] naming the option; [`FvdError::Io`].
    pub async fn create(devices: &Devices, options: &CreateOptions) -> Result<(), FvdError> {
        if options.data_file.is_some() != devices.data.is_some() {
            return Err(invalid(
                "data_file",
                options.data_file.clone().unwrap_or_default(),
                "a data file name needs a data device and the other way round",
            ));
        }
        let header = header_for(options)?;
        let data_end = if header.compact_image { 0 } else { header.virtual_disk_size };
        let image_len = header.metadata_size + if options.data_file.is_some() { 0 } else { data_end };
        let data_len = if options.data_file.is_some() { data_end } else { image_len };
        let layout = Layout::from_header(&header, image_len, data_len).expect("create builds valid headers");
        let image = &devices.image;
        // Shrinking to zero and growing back makes every metadata byte zero (BlockDevice contract).
        image.set_len(0).await.map_err(io("create: truncate image"))?;
        image.set_len(image_len).await.map_err(io("create: size image"))?;
        if let Some(data) = &devices.data {
            data.set_len(0).await.map_err(io("create: truncate data file"))?;
            data.set_len(data_end).await.map_err(io("create: size data file"))?;
        }
        let mut region = vec![0u8; HEADER_REGION_BYTES as usize];
        region[..HEADER_BYTES].copy_from_slice(&header.encode());
        if options.profile == Profile::Hardened {
            let extension = HeaderExtension { generation: 1, journal_epoch: 1, allocated_chunks: 0, flags: 0 };
            let at = extension.slot_offset() as usize;
            region[at..at + 512].copy_from_slice(&extension.encode_sector());
        }
        image.write_at(0, &region, WriteFlags::NONE).await.map_err(io("create: write header"))?;
        if layout.compact {
            let table = encode_table(&vec![EMPTY_TABLE_ENTRY; layout.table_entries as usize], layout.table_size);
            image.write_at(layout.table_offset, &table, WriteFlags::NONE).await.map_err(io("create: write table"))?;
        }
        image.flush().await.map_err(io("create: flush image"))?;
        if let Some(data) = &devices.data {
            data.flush().await.map_err(io("create: flush data file"))?;
        }
        Ok(())
    }

    /// Opens an image. A read-write open of an image not shut down cleanly replays its journal
    /// (hardened: only checksummed sectors of the current epoch) and writes the metadata home.
    /// Nothing is ever written to an image that failed to open.
    ///
    /// Errors: [`FvdError::Corrupt`] naming the field; [`FvdError::DirtyWithoutJournal`];
    /// [`FvdError::InvalidOption`] when the header needs a device that is missing; [`FvdError::Io`].
    pub async fn open(devices: Devices, env: Rc<dyn Env>, options: OpenOptions) -> Result<FvdImage, FvdError> {
        let loaded = load(&devices, options.profile).await?;
        let Loaded { header, layout, extension, bitmap, table, storage_chunks } = loaded;
        if layout.has_base() && devices.base.is_none() && !header.all_data_in_fvd_img {
            return Err(invalid("backing_file", &header.base_img, "the header names a base image but none was given"));
        }
        debug_assert_eq!(layout.separate_data, devices.data.is_some(), "load checked the data device");
        let referenced =
            table.iter().filter(|e| **e != EMPTY_TABLE_ENTRY).map(|e| u64::from(*e) + 1).max().unwrap_or(0);
        // Chunks below the high-water mark may hold data of lost writes: never hand them out again.
        let used_chunks = referenced.max(extension.map_or(0, |e| e.allocated_chunks));
        let dirty = !header.clean_shutdown;
        if dirty && layout.journal_size == 0 && (layout.has_base() || layout.compact) {
            return Err(FvdError::DirtyWithoutJournal);
        }
        let state = State {
            header,
            extension,
            fresh: bitmap.clone(),
            stale: bitmap,
            table,
            unlanded: BTreeSet::new(),
            used_chunks,
            storage_chunks,
            growing: false,
            extension_busy: false,
            home_busy: false,
            journal: JournalState::default(),
            copy_locks: LockSet::default(),
            write_locks: LockSet::default(),
            next_lock_id: 0,
            stats: Default::default(),
            copy_on_read_outstanding_bytes: 0,
            copy_on_read_cap_bytes: 0,
            copy_on_read_tasks: 0,
            prefetch: None,
            waiters: Vec::new(),
        };
        let image = FvdImage { inner: Rc::new(Inner { devices, env, layout, options, state: RefCell::new(state) }) };
        {
            // v1 (`fvd-v1.md` §3.5): a cap under two blocks becomes one block.
            let mut state = image.inner.state.borrow_mut();
            let cap = state.header.max_outstanding_copy_on_read_data;
            state.copy_on_read_cap_bytes = if cap < 2 * layout.block_size { layout.block_size } else { cap };
        }
        if dirty {
            image.replay_journal().await?;
        }
        if !options.read_only {
            if dirty {
                // Recovered metadata goes home and the journal starts a new round.
                image.write_metadata_home().await?;
                image.start_new_journal_round().await?;
            } else if image.inner.hardened() {
                image.start_new_journal_round().await?;
            }
            image.write_clean_flag(false).await?;
            let (has_base, all_data, header_delay_s) = {
                let state = image.inner.state.borrow();
                (image.inner.layout.has_base(), state.header.all_data_in_fvd_img, state.header.prefetch_start_delay)
            };
            if has_base && !all_data {
                let from_header = (header_delay_s > 0).then(|| image.prefetch_config_from_header());
                if let Some(config) = options.prefetch.or(from_header) {
                    image.start_prefetch(config);
                }
            }
        }
        Ok(image)
    }

    /// Applies the journal to the in-memory metadata (recovery).
    async fn replay_journal(&self) -> Result<(), FvdError> {
        let inner = &self.inner;
        let layout = inner.layout;
        let mut journal = vec![0u8; layout.journal_size as usize];
        inner.devices.image.read_at(layout.journal_offset, &mut journal).await.map_err(io("recovery: read journal"))?;
        let mut state = inner.state.borrow_mut();
        let epoch = state.extension.map(|e| e.journal_epoch);
        let mut applied = 0u64;
        for (index, sector) in journal.chunks_exact(SECTOR_BYTES as usize).enumerate() {
            let records = match (crate::format::journal::decode_sector(sector), epoch) {
                // A hardened image applies only checksummed sectors of its current epoch.
                (DecodedSector::Hardened { epoch: e, records, .. }, Some(current)) if e == current => records,
                (DecodedSector::Hardened { .. } | DecodedSector::Torn, _) => continue,
                // A v1 image (no extension) replays every sector, as the 2011 code did.
                (DecodedSector::V1 { records, .. }, None) => records,
                (DecodedSector::V1 { .. }, Some(_)) => continue,
            };
            let State { fresh, table, storage_chunks, .. } = &mut *state;
            for (at, record) in records.iter().enumerate() {
                replay_record(fresh, table, &layout, *storage_chunks, record, index as u64, at)?;
            }
            applied += 1;
        }
        state.stats.recovered_sectors = applied;
        let referenced = state
            .table
            .iter()
            .filter(|e| **e != EMPTY_TABLE_ENTRY)
            .map(|e| u64::from(*e & !DIRTY_TABLE_BIT) + 1)
            .max()
            .unwrap_or(0);
        state.used_chunks = state.used_chunks.max(referenced);
        let mut owners = std::collections::BTreeMap::new();
        for (chunk, &entry) in state.table.iter().enumerate() {
            if entry != EMPTY_TABLE_ENTRY
                && let Some(first) = owners.insert(entry, chunk)
            {
                return Err(FvdError::corrupt(
                    format!("journal-recovered table[{chunk}]"),
                    entry,
                    format!("physical chunk already used by table[{first}]"),
                ));
            }
        }
        state.stale = state.fresh.clone();
        Ok(())
    }

    /// Writes the bitmap and table home. Hardened: flushes the data first and the metadata after,
    /// and persists only table entries whose data landed. v1: neither.
    pub(crate) async fn write_metadata_home(&self) -> Result<(), FvdError> {
        // One write-home at a time (a recycle, a close and prefetch completion can overlap). Each
        // takes its snapshot once it holds the turn, so a later write-home is never older than an
        // earlier one: an older snapshot landing last would drop acknowledged writes whose records
        // sit in a journal epoch that is already dead.
        let inner = &self.inner;
        inner.until("engine: another metadata write-home", |s| !s.home_busy).await;
        inner.state.borrow_mut().home_busy = true;
        let result = self.write_metadata_home_now().await;
        let mut state = inner.state.borrow_mut();
        state.home_busy = false;
        state.wake_all();
        result
    }

    async fn write_metadata_home_now(&self) -> Result<(), FvdError> {
        let inner = &self.inner;
        let layout = inner.layout;
        // Snapshot first, then flush: everything in the snapshot landed before the flush was
        // submitted, so the flush makes it durable before the metadata pointing at it is written.
        let (bitmap_bytes, table_bytes, snapshot_fresh, persisted) = {
            let state = inner.state.borrow();
            let bitmap = layout.has_base().then(|| state.fresh.encode(layout.bitmap_size));
            let table = layout.compact.then(|| {
                let entries: Vec<u32> = state
                    .table
                    .iter()
                    .enumerate()
                    .map(|(chunk, &entry)| {
                        if inner.hardened() && state.unlanded.contains(&(chunk as u64)) {
                            EMPTY_TABLE_ENTRY
                        } else {
                            entry
                        }
                    })
                    .collect();
                encode_table(&entries, layout.table_size)
            });
            let persisted: Vec<u64> = state
                .table
                .iter()
                .enumerate()
                .filter(|(chunk, e)| {
                    **e != EMPTY_TABLE_ENTRY && (!inner.hardened() || !state.unlanded.contains(&(*chunk as u64)))
                })
                .map(|(chunk, _)| chunk as u64)
                .collect();
            (bitmap, table, state.fresh.clone(), persisted)
        };
        if inner.hardened() {
            inner.devices.data().flush().await.map_err(io("metadata write-home: flush data"))?;
        }
        // Hardened order: the table (chunk mappings) is durable before the bitmap that sends reads
        // to those chunks. Written the other way round, a crash can keep a bit whose chunk is
        // still unmapped on disk, and the block reads zeros (found by the exhaustive crash
        // scenario). v1 writes bitmap then table with no flush between, as the 2011 code did.
        let image = &inner.devices.image;
        let write_table = async {
            if let Some(bytes) = &table_bytes {
                image
                    .write_at(layout.table_offset, bytes, WriteFlags::NONE)
                    .await
                    .map_err(io("metadata write-home: table"))?;
            }
            Ok::<(), FvdError>(())
        };
        let write_bitmap = async {
            if let Some(bytes) = &bitmap_bytes {
                image
                    .write_at(layout.bitmap_offset, bytes, WriteFlags::NONE)
                    .await
                    .map_err(io("metadata write-home: bitmap"))?;
            }
            Ok::<(), FvdError>(())
        };
        if inner.hardened() {
            write_table.await?;
            if table_bytes.is_some() && bitmap_bytes.is_some() {
                image.flush().await.map_err(io("metadata write-home: flush table"))?;
            }
            write_bitmap.await?;
            image.flush().await.map_err(io("metadata write-home: flush image"))?;
        } else {
            write_bitmap.await?;
            write_table.await?;
        }
        let mut state = inner.state.borrow_mut();
        // What went home is now guaranteed on disk; later changes stay fresh-only until committed.
        let State { stale, fresh, table, unlanded, .. } = &mut *state;
        // Guest writes may have committed while the metadata went home (prefetch finishing runs
        // concurrently with them): what is guaranteed now is both their records and the snapshot.
        // Replacing `stale` by the snapshot would drop those writes' bits (found by the
        // prefetch-stall scenario on an hdd image, seed 22).
        debug_assert!(snapshot_fresh.is_subset_of(fresh), "snapshot ⊆ fresh");
        stale.union_with(&snapshot_fresh);
        debug_assert!(stale.is_subset_of(fresh), "stale ⊆ fresh");
        for chunk in persisted {
            table[chunk as usize] &= !DIRTY_TABLE_BIT;
        }
        if !inner.hardened() {
            // v1 clears every dirty bit, including chunks whose data never landed (§2.5).
            for entry in table.iter_mut().filter(|e| **e != EMPTY_TABLE_ENTRY) {
                *entry &= !DIRTY_TABLE_BIT;
            }
            unlanded.clear();
        }
        drop(state);
        inner.progress(ProgressPoint::MetadataWrittenHome, 0);
        Ok(())
    }

    /// Hardened: writes a header extension with the next journal epoch (FUA) and restarts the
    /// journal at sector 0; older sectors can never be replayed again. v1: just restarts.
    pub(crate) async fn start_new_journal_round(&self) -> Result<(), FvdError> {
        if self.inner.hardened() {
            // Until the new round's extension is known to be written, the journal is unusable: a
            // failed write may still have landed, and records written under the old epoch would
            // then be ignored at recovery. Allocation recycles again first (journal.rs).
            self.inner.state.borrow_mut().journal.broken = true;
            self.write_extension(|current, used_chunks| match current {
                Some(e) => HeaderExtension {
                    generation: e.generation + 1,
                    journal_epoch: e.journal_epoch + 1,
                    allocated_chunks: e.allocated_chunks.max(used_chunks),
                    flags: e.flags,
                },
                // A v1 image opened by the hardened engine gains an extension.
                None => HeaderExtension { generation: 1, journal_epoch: 1, allocated_chunks: used_chunks, flags: 0 },
            })
            .await?;
        }
        let mut state = self.inner.state.borrow_mut();
        state.journal.next_sector = 0;
        state.journal.broken = false;
        Ok(())
    }

    /// Hardened: records in the header extension (FUA) that physical chunks up to
    /// `used_chunks + extra` may be handed out. Runs before any chunk beyond the old mark is used,
    /// so chunks above the mark never held data; `extra` batches the extension writes.
    pub(crate) async fn raise_allocation_mark(&self, extra: u64) -> Result<(), FvdError> {
        if self.inner.state.borrow().extension.is_none() {
            return Ok(());
        }
        self.write_extension(|current, used_chunks| {
            let e = current.expect("an extension, once present, is never removed");
            HeaderExtension {
                generation: e.generation + 1,
                journal_epoch: e.journal_epoch,
                allocated_chunks: used_chunks + extra,
                flags: e.flags,
            }
        })
        .await
    }

    /// Writes the next header extension, computed by `next` from the current one and the bump
    /// pointer, one writer at a time (two concurrent writers would pick the same generation and
    /// slot). The in-memory extension changes only once the write completed.
    async fn write_extension(
        &self,
        next: impl Fn(Option<HeaderExtension>, u64) -> HeaderExtension,
    ) -> Result<(), FvdError> {
        let inner = &self.inner;
        inner.until("engine: the header-extension writer", |s| !s.extension_busy).await;
        let extension = {
            let mut state = inner.state.borrow_mut();
            state.extension_busy = true;
            next(state.extension, state.used_chunks)
        };
        let written =
            inner.devices.image.write_at(extension.slot_offset(), &extension.encode_sector(), WriteFlags::FUA).await;
        let mut state = inner.state.borrow_mut();
        state.extension_busy = false;
        state.wake_all();
        written.map_err(io("write header extension"))?;
        state.extension = Some(extension);
        Ok(())
    }

    /// Writes the clean-shutdown flag by rewriting header sector 8 alone.
    pub(crate) async fn write_clean_flag(&self, clean: bool) -> Result<(), FvdError> {
        let inner = &self.inner;
        let sector = {
            let mut state = inner.state.borrow_mut();
            state.header.clean_shutdown = clean;
            state.header.sector_8()
        };
        let flags = if inner.hardened() { WriteFlags::FUA } else { WriteFlags::NONE };
        inner.devices.image.write_at(4096, &sector, flags).await.map_err(io("write clean-shutdown flag"))?;
        inner.progress(ProgressPoint::CleanFlagWritten, u64::from(clean));
        Ok(())
    }

    /// A guest flush: every write acknowledged before it is durable when it completes. Group
    /// commit: commits every queued change (data flush, one batch of records with FUA); otherwise
    /// flushes the data device.
    pub async fn flush(&self) -> Result<(), FvdError> {
        let inner = &self.inner;
        if inner.group_commit() {
            self.commit_queued(true).await?;
        } else {
            inner.devices.data().flush().await.map_err(io("guest flush: data"))?;
        }
        if inner.devices.data.is_some() {
            inner.devices.image.flush().await.map_err(io("guest flush: image"))?;
        }
        inner.state.borrow_mut().stats.flushes += 1;
        Ok(())
    }

    /// Clean shutdown: stops prefetch and waits for its I/O and for background copy-on-read tasks,
    /// then metadata home, flushes, `clean_shutdown = true`. Call once every request has completed.
    pub async fn close(self) -> Result<(), FvdError> {
        if self.inner.options.read_only {
            return Ok(());
        }
        self.stop_prefetch().await;
        // Copy-on-read runs after the guest's read was acknowledged. Like QEMU's close draining
        // requests, wait for those copies to land so the metadata written home includes them.
        self.inner.until("engine: copy-on-read tasks to finish", |s| s.copy_on_read_tasks == 0).await;
        // Group commit: no batch in flight; the write-home below covers every queued change (their
        // data landed before its snapshot), so the queue empties and background commits stop.
        self.inner.until("engine: the group commit in flight", |s| !s.journal.committing).await;
        self.inner.state.borrow_mut().journal.closed = true;
        self.write_metadata_home().await?;
        {
            let mut state = self.inner.state.borrow_mut();
            state.journal.queued.clear();
            state.wake_all();
        }
        if self.inner.hardened() && self.inner.layout.compact {
            // Record the exact high-water mark so the next open wastes no storage.
            self.raise_allocation_mark(0).await?;
        }
        self.write_clean_flag(true).await?;
        self.inner.devices.image.flush().await.map_err(io("close: flush image"))?;
        Ok(())
    }
}

impl FvdImage {
    /// The prefetch settings recorded in the header (`fvd-v1.md` §4.1).
    /// Slot buffers are allocated from these two header values: capped so a hostile header cannot
    /// size an allocation (64 slots of 16 MiB at most, 1 GiB in all; v1's defaults are 2 of 1 MiB).
    fn prefetch_config_from_header(&self) -> super::PrefetchConfig {
        const MAX_SLOTS: u32 = 64;
        const MAX_BYTES_PER_PREFETCH: u64 = 16 << 20;
        let state = self.inner.state.borrow();
        let h = &state.header;
        let ms = |v: i32| u64::try_from(v).unwrap_or(0);
        super::PrefetchConfig {
            start_delay_ms: ms(h.prefetch_start_delay) * 1000,
            slots: u32::try_from(h.num_prefetch_slots.max(1)).unwrap_or(1).min(MAX_SLOTS),
            bytes_per_prefetch: ms(h.bytes_per_prefetch).clamp(4096, MAX_BYTES_PER_PREFETCH),
            read_measure_ms: ms(h.prefetch_read_throughput_measure_time),
            write_measure_ms: ms(h.prefetch_write_throughput_measure_time),
            alpha_percent: u32::try_from(h.prefetch_perf_calc_alpha.clamp(0, 100)).unwrap_or(80),
            min_read_kb_s: ms(h.prefetch_min_read_throughput),
            min_write_kb_s: ms(h.prefetch_min_write_throughput),
            throttle_ms: ms(h.prefetch_throttle_time),
            policy: super::PrefetchPolicy::V1,
        }
    }
}

/// Applies one journal record to `fresh` and `table` (recovery), after checking it against the
/// layout ([`Layout::check_journal_record`]) and against the mappings already recorded: a table
/// entry is written once, so a record giving a mapped chunk another physical chunk is damage. A
/// record that fails a check changes nothing. Open and check both replay through this function.
pub(crate) fn replay_record(
    fresh: &mut Bitmap,
    table: &mut [u32],
    layout: &Layout,
    storage_chunks: u64,
    record: &JournalRecord,
    sector: u64,
    index: usize,
) -> Result<(), FvdError> {
    layout.check_journal_record(record, storage_chunks, sector, index)?;
    match record {
        JournalRecord::Bitmap { first_sector, sectors } => {
            if layout.has_base() && *sectors > 0 {
                // Checked above: the range lies inside the virtual disk, so nothing overflows.
                let end_sector = first_sector + u64::from(*sectors);
                debug_assert!(end_sector * SECTOR_BYTES <= layout.virtual_size);
                fresh.set_range(
                    first_sector * SECTOR_BYTES / layout.block_size,
                    (end_sector * SECTOR_BYTES).div_ceil(layout.block_size),
                );
            }
        }
        JournalRecord::Table { first_chunk, entries } => {
            let first = u64::from(*first_chunk);
            assert_eq!(table.len() as u64, layout.table_entries, "the table has one entry per chunk");
            let cleaned =
                entries.iter().map(|&raw| if raw == EMPTY_TABLE_ENTRY { raw } else { raw & !DIRTY_TABLE_BIT });
            for (i, entry) in cleaned.clone().enumerate() {
                let chunk = first + i as u64;
                let current = table[chunk as usize];
                if entry != EMPTY_TABLE_ENTRY && current != EMPTY_TABLE_ENTRY && current & !DIRTY_TABLE_BIT != entry {
                    return Err(FvdError::corrupt(
                        format!("journal sector {sector} record {index} entry {i} (table[{chunk}])"),
                        entry,
                        format!("conflicts with the mapping {} already recorded", current & !DIRTY_TABLE_BIT),
                    ));
                }
            }
            for (i, entry) in cleaned.enumerate() {
                let slot = &mut table[(first + i as u64) as usize];
                if entry != EMPTY_TABLE_ENTRY && *slot == EMPTY_TABLE_ENTRY {
                    *slot = entry;
                }
            }
        }
    }
    Ok(())
}

/// What [`load`] read.
pub(crate) struct Loaded {
    pub(crate) header: Header,
    pub(crate) layout: Layout,
    pub(crate) extension: Option<HeaderExtension>,
    pub(crate) bitmap: Bitmap,
    pub(crate) table: Vec<u32>,
    pub(crate) storage_chunks: u64,
}

/// Reads and checks header, extension, bitmap and table. Writes nothing.
pub(crate) async fn load(devices: &Devices, profile: Profile) -> Result<Loaded, FvdError> {
    let image = &devices.image;
    let image_len = image.len_bytes();
    if image_len < HEADER_REGION_BYTES {
        return Err(FvdError::corrupt(
            "image",
            format!("{image_len} bytes"),
            format!("an FVD image holds at least the {HEADER_REGION_BYTES}-byte header region"),
        ));
    }
    let mut region = vec![0u8; HEADER_REGION_BYTES as usize];
    image.read_at(0, &mut region).await.map_err(io("open: read header"))?;
    let header = Header::decode(&region)?;
    let data_len = super::data_len(devices, &header)?;
    let layout = Layout::from_header(&header, image_len, data_len)?;
    let extension = match profile {
        Profile::Hardened => HeaderExtension::newest(&region),
        Profile::V1 => None,
    };
    let bitmap = if layout.has_base() && header.all_data_in_fvd_img {
        // Prefetch finished: v1 sets the whole bitmap, padding included (`fvd-v1.md` §4.3).
        let mut all = Bitmap::new(layout.bitmap_blocks);
        all.set_all();
        all
    } else if layout.has_base() {
        let mut bytes = vec![0u8; layout.bitmap_size as usize];
        image.read_at(layout.bitmap_offset, &mut bytes).await.map_err(io("open: read bitmap"))?;
        Bitmap::decode(&bytes, layout.bitmap_blocks)?
    } else {
        Bitmap::new(0)
    };
    let storage_chunks = layout.storage_chunks(data_len);
    let table = if layout.compact {
        let mut bytes = vec![0u8; layout.table_size as usize];
        image.read_at(layout.table_offset, &mut bytes).await.map_err(io("open: read table"))?;
        if profile == Profile::Hardened && !header.clean_shutdown && extension.is_some() {
            // A write-home torn inside a sector can leave an entry half EMPTY, half chunk number.
            // Entries only ever go from EMPTY to a chunk, and the current epoch's journal still holds
            // every mapping that write-home was persisting, so such an entry is EMPTY until replay.
            crate::format::table::decode_table_recovering(&bytes, layout.table_entries, storage_chunks)
        } else {
            decode_table(&bytes, layout.table_entries, storage_chunks)?
        }
    } else {
        Vec::new()
    };
    Ok(Loaded { header, layout, extension, bitmap, table, storage_chunks })
}
