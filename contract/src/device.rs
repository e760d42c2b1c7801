//! The storage contract: [`BlockDevice`].
//!
//! # Contract
//!
//! Every implementation (the simulated disk, a real file) promises the following; the engine
//! relies on nothing more.
//!
//! - **Addressing.** Offsets and lengths are in bytes. A request must lie inside
//!   `0..len_bytes()`; otherwise it fails with [`DeviceError::OutOfRange`] and changes nothing.
//!   The device does not grow on writes past its end: call [`BlockDevice::set_len`] first.
//! - **Submission is eager.** A request is submitted when the method is *called*, not when its
//!   future is first polled. Dropping the future does not cancel the request: a dropped write may
//!   still land.
//! - **Zeros.** A range never written reads as zeros (or, for a device built over a read-only
//!   content source, as that source's bytes). A range exposed by growing the device reads as zeros.
//! - **Visibility.** A write is visible to every read *submitted* after the write's future
//!   completed. A read concurrent with an overlapping write may see old or new data, per sector.
//! - **Durability.** A completed write is durable (survives a crash) only once a
//!   [`BlockDevice::flush`] *submitted after the write completed* has itself completed, or if the
//!   write carried [`WriteFlags::fua`] and completed. Until then a crash may keep it, drop it, or
//!   (below the device's atomic unit) tear it. A length change by `set_len` that grows the device
//!   is durable after the next completed flush; a shrink is durable when it completes.
//! - **Errors** are typed ([`DeviceError`]). A write that failed leaves its range indeterminate:
//!   each sector may hold old or new data. A failed flush makes no promise about earlier writes.
//!
//! Submission order, execution order and completion order are unrelated: the simulator
//! reorders all three on purpose.

use std::future::Future;
use std::pin::Pin;

/// The sector size in bytes. All FVD offsets on a device are multiples of it.
pub const SECTOR_BYTES: u64 = 512;

/// [`SECTOR_BYTES`] as a `usize`, for buffer lengths.
pub const SECTOR_BYTES_USIZE: usize = SECTOR_BYTES as usize;

/// A boxed, single-threaded future returned by every [`BlockDevice`] request.
pub type IoFuture<'a, T> = Pin<Box<dyn Future<Output = Result<T, DeviceError>> + 'a>>;

/// The kind of a device request, as named in errors and event logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum IoKind {
    /// `read_at`.
    Read,
    /// `write_at`.
    Write,
    /// `flush`.
    Flush,
    /// `set_len`.
    SetLen,
}

impl IoKind {
    /// The lower-case name used in event logs and error messages.
    pub fn as_str(self) -> &'static str {
        match self {
            IoKind::Read => "read",
            IoKind::Write => "write",
            IoKind::Flush => "flush",
            IoKind::SetLen => "set_len",
        }
    }
}

impl std::fmt::Display for IoKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Flags of a write request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct WriteFlags {
    /// Force Unit Access: the write is durable when it completes, with no flush needed. It says
    /// nothing about other writes still in the volatile cache.
    pub fua: bool,
}

impl WriteFlags {
    /// A plain write (durable only after a later flush).
    pub const NONE: WriteFlags = WriteFlags { fua: false };
    /// A FUA write (durable on completion).
    pub const FUA: WriteFlags = WriteFlags { fua: true };
}

/// A failed device request. Every variant names the request kind and, where it has one, the byte
/// range, so an error message says what failed and where.
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DeviceError {
    /// The request reaches past the end of the device.
    #[error(
        "{kind} of {len_bytes} bytes at offset {offset_bytes} on {device} lies beyond the device end ({device_len_bytes} bytes)"
    )]
    OutOfRange {
        /// Device name.
        device: String,
        /// Request kind.
        kind: IoKind,
        /// First byte of the request.
        offset_bytes: u64,
        /// Request length.
        len_bytes: u64,
        /// Device length when the request was submitted.
        device_len_bytes: u64,
    },
    /// A media error: the device reported an I/O error (injected in simulation, `EIO` on real
    /// media). For a write the range is now indeterminate.
    #[error("{kind} of {len_bytes} bytes at offset {offset_bytes} on {device} failed: media error")]
    Media {
        /// Device name.
        device: String,
        /// Request kind.
        kind: IoKind,
        /// First byte of the request (0 for a flush).
        offset_bytes: u64,
        /// Request length (0 for a flush).
        len_bytes: u64,
    },
    /// A write or length change to a read-only device (such as a base image).
    #[error("{kind} at offset {offset_bytes} on {device} refused: the device is read-only")]
    ReadOnly {
        /// Device name.
        device: String,
        /// Request kind.
        kind: IoKind,
        /// First byte of the request.
        offset_bytes: u64,
    },
    /// The device crashed (power loss) while the request was outstanding; its outcome is unknown.
    #[error("{kind} on {device} lost: the device crashed while it was outstanding")]
    Crashed {
        /// Device name.
        device: String,
        /// Request kind.
        kind: IoKind,
    },
    /// An operating-system error from a real file.
    #[error("{kind} of {len_bytes} bytes at offset {offset_bytes} on {device} failed: {message}")]
    Os {
        /// File path.
        device: String,
        /// Request kind.
        kind: IoKind,
        /// First byte of the request.
        offset_bytes: u64,
        /// Request length.
        len_bytes: u64,
        /// The OS error kind.
        error_kind: std::io::ErrorKind,
        /// The OS error message.
        message: String,
    },
}

/// A byte-addressed block device with a volatile write cache. See the module docs for the
/// contract every implementation keeps.
///
/// Methods take `&self` so that many requests can be in flight at once; implementations use
/// interior mutability. Futures are not `Send`: the engine and the simulator are single-threaded.
pub trait BlockDevice {
    /// A short name for events and error messages (`"image"`, `"base"`, a file path).
    fn name(&self) -> &str;

    /// The current length in bytes.
    fn len_bytes(&self) -> u64;

    /// Reads `buf.len()` bytes starting at `offset_bytes` into `buf`.
    ///
    /// Errors: [`DeviceError::OutOfRange`], [`DeviceError::Media`], [`DeviceError::Crashed`],
    /// [`DeviceError::Os`].
    fn read_at<'a>(&'a self, offset_bytes: u64, buf: &'a mut [u8]) -> IoFuture<'a, ()>;

    /// Writes `data` at `offset_bytes`. The data is copied at submission, so the caller may reuse
    /// the buffer once the call returns.
    ///
    /// Errors: as for reads, plus [`DeviceError::ReadOnly`].
    fn write_at<'a>(&'a self, offset_bytes: u64, data: &'a [u8], flags: WriteFlags) -> IoFuture<'a, ()>;

    /// Makes every write that completed before this call durable.
    fn flush(&self) -> IoFuture<'_, ()>;

    /// Grows or shrinks the device to `len_bytes`. Grown space reads as zeros.
    fn set_len(&self, len_bytes: u64) -> IoFuture<'_, ()>;
}

impl<T: BlockDevice + ?Sized> BlockDevice for std::rc::Rc<T> {
    fn name(&self) -> &str {
        (**self).name()
    }
    fn len_bytes(&self) -> u64 {
        (**self).len_bytes()
    }
    fn read_at<'a>(&'a self, offset_bytes: u64, buf: &'a mut [u8]) -> IoFuture<'a, ()> {
        (**self).read_at(offset_bytes, buf)
    }
    fn write_at<'a>(&'a self, offset_bytes: u64, data: &'a [u8], flags: WriteFlags) -> IoFuture<'a, ()> {
        (**self).write_at(offset_bytes, data, flags)
    }
    fn flush(&self) -> IoFuture<'_, ()> {
        (**self).flush()
    }
    fn set_len(&self, len_bytes: u64) -> IoFuture<'_, ()> {
        (**self).set_len(len_bytes)
    }
}
