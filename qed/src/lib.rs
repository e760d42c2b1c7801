//! QED (QEMU Enhanced Disk) images, for the harness and for checking it against QEMU.
//!
//! Reads: the header (every field checked, see [`QedHeader::decode`]), the L1 and L2 tables, zero
//! clusters, and the backing file for clusters the image does not hold. Writes: [`create`] and
//! allocating writes in QEMU's order, with NEED_CHECK set before the first allocation and cleared
//! at close. The byte layout and QEMU's behaviour are in `docs/qed.md`. Check and repair (and
//! open after a crash) come next (issue #12).

pub mod format;
pub mod image;
pub mod write;

pub use format::{QedError, QedHeader};
pub use image::{ClusterState, QedImage};
pub use write::{QedCreateOptions, create};
