//! The engine's typed errors.

use crate::device::DeviceError;

/// Everything an FVD operation can fail with. Corruption errors name the field, its value and the
/// rule it breaks, so a user can find the damage with a hex editor.
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FvdError {
    /// The image is not an FVD image or is damaged: `field` holds `value`, which breaks `rule`.
    #[error("corrupt image: {field} = {value}: {rule}")]
    Corrupt {
        /// The structure and field, for example `header.bitmap_offset` or `table[17]`.
        field: String,
        /// The value found.
        value: String,
        /// The rule it breaks.
        rule: String,
    },
    /// A create or open option is invalid.
    #[error("invalid option {option} = {value}: {rule}")]
    InvalidOption {
        /// Option name as on the command line.
        option: &'static str,
        /// The value given.
        value: String,
        /// What it must be.
        rule: String,
    },
    /// A guest request lies outside the virtual disk or is not sector-aligned.
    #[error(
        "guest {kind} of {len_bytes} bytes at offset {offset_bytes}: {rule} (virtual disk is {disk_size_bytes} bytes)"
    )]
    BadRequest {
        /// `read` or `write`.
        kind: &'static str,
        /// First byte.
        offset_bytes: u64,
        /// Length.
        len_bytes: u64,
        /// Virtual disk size.
        disk_size_bytes: u64,
        /// What is wrong.
        rule: &'static str,
    },
    /// A device request failed; `context` says what the engine was doing.
    #[error("{context}: {source}")]
    Io {
        /// What the engine was doing, for example `journal write` or `copy-on-write base read`.
        context: &'static str,
        /// The device error.
        source: DeviceError,
    },
    /// The image was not shut down cleanly and has no journal to recover from.
    #[error(
        "the image was not shut down cleanly and has no journal: its bitmap and table cannot be trusted (run check --repair)"
    )]
    DirtyWithoutJournal,
    /// A write to an image opened read-only.
    #[error("the image is open read-only")]
    ReadOnly,
    /// The data storage cannot grow enough for a new chunk.
    #[error("no space for chunk {chunk}: data storage is {storage_bytes} bytes and cannot grow")]
    NoSpace {
        /// The virtual chunk that needed storage.
        chunk: u64,
        /// Current data storage size.
        storage_bytes: u64,
    },
}

impl FvdError {
    /// A [`FvdError::Corrupt`] from displayable parts.
    pub fn corrupt(field: impl Into<String>, value: impl std::fmt::Display, rule: impl Into<String>) -> FvdError {
        FvdError::Corrupt { field: field.into(), value: value.to_string(), rule: rule.into() }
    }

    /// A closure mapping a device error to [`FvdError::Io`] with `context`.
    pub fn io(context: &'static str) -> impl FnOnce(DeviceError) -> FvdError {
        move |source| FvdError::Io { context, source }
    }
}
