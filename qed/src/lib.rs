//! QED (QEMU Enhanced Disk) images, for the harness and for checking it against QEMU.
//!
//! This first slice reads: the header (every field checked, see [`QedHeader::decode`]), the L1
//! and L2 tables, zero clusters, and the backing file for clusters the image does not hold. The
//! byte layout and QEMU's behaviour are in `docs/qed.md` (from `docs/qemu-interop.md` §1 of the
//! project's reference material). Writes, `NEED_CHECK` and check/repair come next (issue #12).

pub mod format;
pub mod image;

pub use format::{QedError, QedHeader};
pub use image::{ClusterState, QedImage};
