//! [`FileDevice`]: a real file as a [`BlockDevice`].

use std::cell::Cell;
use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::Path;

use fvd_engine::{BlockDevice, DeviceError, IoFuture, IoKind, WriteFlags};

/// A regular file accessed with positioned reads and writes. Requests complete synchronously at
/// submission; `flush` and FUA writes call `fdatasync`.
#[derive(Debug)]
pub struct FileDevice {
    file: File,
    name: String,
    read_only: bool,
    len_bytes: Cell<u64>,
}

impl FileDevice {
    /// Opens an existing file, writable or read-only.
    pub fn open(path: &Path, writable: bool) -> std::io::Result<FileDevice> {
        let file = OpenOptions::new().read(true).write(writable).open(path)?;
        let len = file.metadata()?.len();
        Ok(FileDevice { file, name: path.display().to_string(), read_only: !writable, len_bytes: Cell::new(len) })
    }

    /// Creates (or truncates) a file of `len_bytes` zeros.
    pub fn create(path: &Path, len_bytes: u64) -> std::io::Result<FileDevice> {
        let file = OpenOptions::new().read(true).write(true).create(true).truncate(true).open(path)?;
        file.set_len(len_bytes)?;
        Ok(FileDevice { file, name: path.display().to_string(), read_only: false, len_bytes: Cell::new(len_bytes) })
    }

    fn os_error(&self, kind: IoKind, offset_bytes: u64, len_bytes: u64, error: &std::io::Error) -> DeviceError {
        DeviceError::Os {
            device: self.name.clone(),
            kind,
            offset_bytes,
            len_bytes,
            error_kind: error.kind(),
            message: error.to_string(),
        }
    }

    fn check_range(&self, kind: IoKind, offset_bytes: u64, len_bytes: u64) -> Result<(), DeviceError> {
        let device_len_bytes = self.len_bytes.get();
        if offset_bytes.checked_add(len_bytes).is_none_or(|end| end > device_len_bytes) {
            return Err(DeviceError::OutOfRange {
                device: self.name.clone(),
                kind,
                offset_bytes,
                len_bytes,
                device_len_bytes,
            });
        }
        Ok(())
    }

    fn check_writable(&self, kind: IoKind, offset_bytes: u64) -> Result<(), DeviceError> {
        if self.read_only {
            return Err(DeviceError::ReadOnly { device: self.name.clone(), kind, offset_bytes });
        }
        Ok(())
    }

    fn sync(&self, kind: IoKind) -> Result<(), DeviceError> {
        self.file.sync_data().map_err(|e| self.os_error(kind, 0, 0, &e))
    }
}

impl BlockDevice for FileDevice {
    fn name(&self) -> &str {
        &self.name
    }

    fn len_bytes(&self) -> u64 {
        self.len_bytes.get()
    }

    fn read_at<'a>(&'a self, offset_bytes: u64, buf: &'a mut [u8]) -> IoFuture<'a, ()> {
        let len = buf.len() as u64;
        let result = self.check_range(IoKind::Read, offset_bytes, len).and_then(|()| {
            self.file.read_exact_at(buf, offset_bytes).map_err(|e| self.os_error(IoKind::Read, offset_bytes, len, &e))
        });
        Box::pin(std::future::ready(result))
    }

    fn write_at<'a>(&'a self, offset_bytes: u64, data: &'a [u8], flags: WriteFlags) -> IoFuture<'a, ()> {
        let len = data.len() as u64;
        let result = self
            .check_writable(IoKind::Write, offset_bytes)
            .and_then(|()| self.check_range(IoKind::Write, offset_bytes, len))
            .and_then(|()| {
                self.file
                    .write_all_at(data, offset_bytes)
                    .map_err(|e| self.os_error(IoKind::Write, offset_bytes, len, &e))
            })
            .and_then(|()| if flags.fua { self.sync(IoKind::Write) } else { Ok(()) });
        Box::pin(std::future::ready(result))
    }

    fn flush(&self) -> IoFuture<'_, ()> {
        Box::pin(std::future::ready(self.sync(IoKind::Flush)))
    }

    fn set_len(&self, len_bytes: u64) -> IoFuture<'_, ()> {
        let result = self.check_writable(IoKind::SetLen, len_bytes).and_then(|()| {
            self.file.set_len(len_bytes).map_err(|e| self.os_error(IoKind::SetLen, len_bytes, 0, &e))?;
            self.len_bytes.set(len_bytes);
            Ok(())
        });
        Box::pin(std::future::ready(result))
    }
}
