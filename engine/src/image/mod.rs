//! An open FVD image: create, open (with journal recovery), read, write, flush, close, info.
//!
//! Guest requests may run concurrently (clone the [`FvdImage`] handle into several tasks);
//! correctness never depends on completion order. The write path, journal and recovery follow
//! `docs/format.md` §7; the `v1` [`Profile`] reproduces the 2011 behaviour, flaws included.

mod check;
mod copy;
mod io;
mod journal;
mod lifecycle;
mod prefetch;
mod state;

use std::cell::RefCell;
use std::rc::Rc;

use crate::device::BlockDevice;
use crate::env::{Env, Progress, ProgressPoint};
use crate::format::Layout;

pub use check::{CheckReport, check};
pub use prefetch::{
    PrefetchConfig, PrefetchMeasure, PrefetchPhase, PrefetchPolicy, PrefetchSample, PrefetchTelemetry, WindowSide,
};
pub use state::EngineStats;
use state::{State, Until};

/// Which behaviour the engine follows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Profile {
    /// Correct on media with a volatile write cache: data flushed before its journal record, the
    /// record written with FUA before the acknowledgement, checksummed and epoch-stamped journal
    /// sectors, recycles that can never resurrect stale records. The default.
    #[default]
    Hardened,
    /// The 2011 code's behaviour, flaws included (`fvd-v1.md` §2.3–2.5): no ordering between data
    /// and journal record, unchecksummed sectors, every sector of the journal replayed, table
    /// entries of unlanded writes persisted by a recycle.
    V1,
}

/// Journal size at create.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum JournalSize {
    /// 16 MiB (v1's default), or the minimum if larger.
    #[default]
    Default,
    /// No journal (metadata only reaches disk at clean close).
    Disabled,
    /// This many bytes, rounded up to 4 KiB and raised to the minimum.
    Bytes(u64),
}

/// The base image an image is created over.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BaseImage {
    /// Name recorded in the header (a path for real files).
    pub name: String,
    /// Format name recorded in the header (`raw`).
    pub format: String,
    /// Length of the base image in bytes.
    pub len_bytes: u64,
}

/// Options of [`FvdImage::create`] (the v1 create options, `fvd-v1.md` §1.1).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CreateOptions {
    /// Virtual disk size in bytes (rounded up to 512).
    pub size_bytes: u64,
    /// Base image, if any.
    pub base: Option<BaseImage>,
    /// Bytes per bitmap bit: a multiple of 512 (default: 512, doubled until the bitmap is at most
    /// 4 MiB).
    pub block_size: Option<u64>,
    /// Compact image (chunks allocated on first write).
    pub compact: bool,
    /// Bytes per chunk (default 1 MiB; a multiple of 512).
    pub chunk_size: Option<u64>,
    /// Bytes the data storage grows by (default 100 MiB, at least one chunk).
    pub storage_grow_unit: Option<u64>,
    /// Journal size.
    pub journal: JournalSize,
    /// Copy-on-read.
    pub copy_on_read: bool,
    /// Cap on copy-on-read bytes in flight (default 2,000,000).
    pub max_outstanding_copy_on_read_bytes: Option<u64>,
    /// Prefetch to record in the header, started at every open (`None`: recorded disabled, with
    /// v1's numbers). The header keeps whole seconds of start delay (rounded up, at least 1) and
    /// the v1 fields; the policy is an open's choice ([`OpenOptions::prefetch`]).
    pub prefetch: Option<prefetch::PrefetchConfig>,
    /// Name of a separate data file (the caller passes its device).
    pub data_file: Option<String>,
    /// Journal format and behaviour.
    pub profile: Profile,
}

impl CreateOptions {
    /// A non-compact image of `size_bytes` with no base image and default settings.
    pub fn new(size_bytes: u64) -> CreateOptions {
        CreateOptions {
            size_bytes,
            base: None,
            block_size: None,
            compact: false,
            chunk_size: None,
            storage_grow_unit: None,
            journal: JournalSize::Default,
            copy_on_read: false,
            max_outstanding_copy_on_read_bytes: None,
            prefetch: None,
            data_file: None,
            profile: Profile::Hardened,
        }
    }
}

/// Options of [`FvdImage::open`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct OpenOptions {
    /// Open read-only: no recovery writes, writes refused.
    pub read_only: bool,
    /// Engine behaviour.
    pub profile: Profile,
    /// When the hardened profile makes metadata changes durable (`docs/format.md` §7); the v1
    /// profile ignores it and keeps its 2011 behaviour.
    pub commit: CommitMode,
    /// Override the header's copy-on-read setting.
    pub copy_on_read: Option<bool>,
    /// Start whole-image prefetch with these settings (overriding the header's), if any.
    pub prefetch: Option<prefetch::PrefetchConfig>,
}

/// When metadata changes become durable in the hardened profile (`docs/format.md` §7).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum CommitMode {
    /// Group commit (the default): a write is acknowledged once its data landed and its change is
    /// queued; a guest flush makes every queued change durable with one data flush and one
    /// sequential journal write. Also committed in the background once
    /// [`GROUP_COMMIT_MAX_QUEUED`] changes wait or [`GROUP_COMMIT_DELAY_NS`] passed.
    #[default]
    Group,
    /// Every allocating write is durable when acknowledged: a data flush and a FUA journal
    /// record per write (the pre-group-commit protocol).
    Sync,
}

impl CommitMode {
    /// The name used on the command line and in configurations.
    pub fn as_str(self) -> &'static str {
        match self {
            CommitMode::Group => "group",
            CommitMode::Sync => "sync",
        }
    }
}

/// Group commit: a batch is committed in the background once this many changes wait.
pub const GROUP_COMMIT_MAX_QUEUED: usize = 1024;

/// Group commit: a batch is committed in the background this long after its first change was
/// queued, so a guest that never flushes does not grow the queue without bound (50 ms).
pub const GROUP_COMMIT_DELAY_NS: u64 = 50_000_000;

/// The devices an image uses.
#[derive(Clone)]
pub struct Devices {
    /// The image file: header, bitmap, table, journal (and data, without a data file).
    pub image: Rc<dyn BlockDevice>,
    /// A separate data file, if the header names one.
    pub data: Option<Rc<dyn BlockDevice>>,
    /// The base image, if the header names one. Never written.
    pub base: Option<Rc<dyn BlockDevice>>,
}

impl std::fmt::Debug for Devices {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Devices")
            .field("image", &self.image.name())
            .field("data", &self.data.as_ref().map(|d| d.name().to_owned()))
            .field("base", &self.base.as_ref().map(|d| d.name().to_owned()))
            .finish()
    }
}

impl Devices {
    /// The device holding the data area.
    pub(crate) fn data(&self) -> &Rc<dyn BlockDevice> {
        self.data.as_ref().unwrap_or(&self.image)
    }
}

/// The length of the data storage `header` describes: the separate data device when the header
/// names a data file, the image device otherwise. Fails when the devices disagree with the header.
pub(crate) fn data_len(devices: &Devices, header: &crate::format::Header) -> Result<u64, crate::error::FvdError> {
    match (&devices.data, header.data_file.is_empty()) {
        (None, true) => Ok(devices.image.len_bytes()),
        (Some(data), false) => Ok(data.len_bytes()),
        (None, false) | (Some(_), true) => Err(crate::error::FvdError::InvalidOption {
            option: "data_file",
            value: header.data_file.clone(),
            rule: "the header and the devices disagree about a separate data file".into(),
        }),
    }
}

pub(crate) struct Inner {
    pub(crate) devices: Devices,
    pub(crate) env: Rc<dyn Env>,
    pub(crate) layout: Layout,
    pub(crate) options: OpenOptions,
    pub(crate) state: RefCell<State>,
}

impl Inner {
    /// Waits until `condition` holds; `label` names the wait in stall reports.
    pub(crate) fn until<F: Fn(&State) -> bool>(&self, label: &'static str, condition: F) -> Until<'_, F> {
        Until { state: &self.state, env: &*self.env, label, condition }
    }

    pub(crate) fn progress(&self, point: ProgressPoint, detail: u64) {
        self.env.progress(Progress { point, detail });
    }

    /// Starts a background task; its end is not awaited (dropping the join never cancels it).
    pub(crate) fn spawn_background(&self, name: &str, task: crate::env::LocalFuture<'static, ()>) {
        drop(self.env.spawn(name, task));
    }

    pub(crate) fn hardened(&self) -> bool {
        self.options.profile == Profile::Hardened
    }

    /// True when metadata changes are queued for group commit (hardened profile, group mode, an
    /// image with a journal).
    pub(crate) fn group_commit(&self) -> bool {
        self.hardened() && self.options.commit == CommitMode::Group && self.layout.journal_size > 0
    }
}

/// A handle on an open image. Clones share the image; requests may run concurrently.
#[derive(Clone)]
pub struct FvdImage {
    pub(crate) inner: Rc<Inner>,
}

impl std::fmt::Debug for FvdImage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FvdImage").field("devices", &self.inner.devices).field("layout", &self.inner.layout).finish()
    }
}

/// What `info` reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageInfo {
    /// The checked geometry.
    pub layout: Layout,
    /// Base image name (empty: none).
    pub base_image: String,
    /// Separate data file name (empty: none).
    pub data_file: String,
    /// Blocks whose data is in the image (fresh bitmap).
    pub blocks_in_image: u64,
    /// Chunks allocated (compact).
    pub chunks_allocated: u64,
    /// Bytes of data storage.
    pub storage_bytes: u64,
    /// Hardened journal epoch (None: a v1 image).
    pub journal_epoch: Option<u64>,
    /// Every block is in the image (prefetch finished or no base).
    pub all_data_in_image: bool,
    /// Activity counters.
    pub stats: EngineStats,
}

impl FvdImage {
    /// The checked geometry.
    pub fn layout(&self) -> Layout {
        self.inner.layout
    }

    /// Activity counters.
    pub fn stats(&self) -> EngineStats {
        self.inner.state.borrow().stats
    }

    /// A summary of the image.
    pub fn info(&self) -> ImageInfo {
        let state = self.inner.state.borrow();
        ImageInfo {
            layout: self.inner.layout,
            base_image: state.header.base_img.clone(),
            data_file: state.header.data_file.clone(),
            blocks_in_image: state.fresh.count_set(),
            chunks_allocated: state.used_chunks,
            storage_bytes: state.storage_chunks * self.inner.layout.chunk_size,
            journal_epoch: state.extension.map(|e| e.journal_epoch),
            all_data_in_image: state.header.all_data_in_fvd_img,
            stats: state.stats,
        }
    }

    /// Checks the engine's in-memory invariants (tests and the simulator call it at quiescence).
    pub fn assert_invariants(&self) {
        let state = self.inner.state.borrow();
        state.assert_invariants();
        assert_eq!(state.journal.ongoing, 0, "no journal write in flight at quiescence");
        // Copy-on-read and prefetch copies run in the background and hold copy locks legitimately.
        let copies_running =
            state.copy_on_read_outstanding_bytes > 0 || state.prefetch.as_ref().is_some_and(|p| p.write_active);
        if !copies_running {
            assert_eq!(state.copy_locks.len(), 0, "no copy lock leaked");
        }
        assert_eq!(state.write_locks.len(), 0, "no write lock leaked");
    }
}

/// Where a run of the virtual disk's data lives (`fvdsim img map`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MapSource {
    /// In the base image at the same offset.
    Base,
    /// In the image's data area at this byte offset of the data device.
    Image {
        /// Byte offset on the data device.
        data_offset_bytes: u64,
    },
    /// Unallocated (compact): reads as zeros.
    Zero,
}

/// One extent of [`FvdImage::map`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MapExtent {
    /// First virtual byte.
    pub offset_bytes: u64,
    /// Length in bytes.
    pub len_bytes: u64,
    /// Where it lives.
    pub source: MapSource,
}

impl FvdImage {
    /// The virtual disk as extents by where their data lives, merged where contiguous.
    pub fn map(&self) -> Vec<MapExtent> {
        let layout = self.inner.layout;
        let state = self.inner.state.borrow();
        let step = match (layout.has_base(), layout.compact) {
            (true, true) => layout.block_size.min(layout.chunk_size),
            (true, false) => layout.block_size,
            (false, true) => layout.chunk_size,
            (false, false) => layout.virtual_size,
        };
        let mut extents: Vec<MapExtent> = Vec::new();
        let mut at = 0u64;
        while at < layout.virtual_size {
            let mut next = (at / step + 1) * step;
            if layout.has_base() && at < layout.base_size {
                next = next.min(layout.base_size);
            }
            let next = next.min(layout.virtual_size);
            let in_base = layout.has_base()
                && !state.header.all_data_in_fvd_img
                && at < layout.base_size
                && !state.fresh.get(at / layout.block_size);
            let source = if in_base {
                MapSource::Base
            } else if layout.compact {
                match state.physical_chunk(at / layout.chunk_size) {
                    Some(id) => MapSource::Image {
                        data_offset_bytes: layout.data_offset + id * layout.chunk_size + at % layout.chunk_size,
                    },
                    None => MapSource::Zero,
                }
            } else {
                MapSource::Image { data_offset_bytes: layout.data_offset + at }
            };
            let len = next - at;
            match extents.last_mut() {
                Some(last) if contiguous(last, source) => last.len_bytes += len,
                _ => extents.push(MapExtent { offset_bytes: at, len_bytes: len, source }),
            }
            at = next;
        }
        extents
    }
}

fn contiguous(last: &MapExtent, next: MapSource) -> bool {
    match (last.source, next) {
        (MapSource::Base, MapSource::Base) | (MapSource::Zero, MapSource::Zero) => true,
        (MapSource::Image { data_offset_bytes: a }, MapSource::Image { data_offset_bytes: b }) => {
            a + last.len_bytes == b
        }
        _ => false,
    }
}
