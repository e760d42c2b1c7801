//! Parallels expandable images ("WithouFreSpacExt", as QEMU creates them, and the old
//! "WithoutFreeSpace"), for the harness and for checking it against QEMU (`docs/parallels.md`).
//!
//! Reads through the BAT (unallocated clusters read zeros), writes that allocate clusters at the
//! end of the data area with the BAT kept in memory and written at flush and close (QEMU's way),
//! the `in_use` flag set by a writable open and cleared at close, and check/repair with QEMU's
//! semantics. Backing files and the format extension are not supported.

pub mod check;
pub mod format;
pub mod image;

pub use check::ParallelsCheckReport;
pub use format::{ParallelsError, ParallelsHeader};
pub use image::{ParallelsImage, create};
