//! QED (QEMU Enhanced Disk) images, for the harness and for checking it against QEMU.
//!
//! Reads: the header (every field checked, see [`QedHeader::decode`]), the L1 and L2 tables, zero
//! clusters, and the backing file for clusters the image does not hold. Writes: [`create`] and
//! allocating writes in QEMU's order, with NEED_CHECK set before the first allocation and cleared
//! at close. Check and repair with QEMU's semantics, run by a writable open of an image whose
//! NEED_CHECK is set (recovery after a crash). The byte layout and QEMU's behaviour are in
//! `docs/qed.md`.

pub mod check;
pub mod format;
pub mod image;
pub mod write;

pub use check::QedCheckReport;
pub use format::{QedError, QedHeader};
pub use image::{ClusterState, QedImage};
pub use write::{QedCreateOptions, create};
