//! Cache hints: tell the processor which memory the simulator will touch soon, so that a cache
//! miss overlaps other work instead of stalling it. Hints never change behaviour (a prefetch
//! cannot fault, and a simulated run is the same with or without them); they only move wall time.
//!
//! The only `unsafe` in fvdsim: `_mm_prefetch` takes a raw pointer, although prefetching any
//! address is harmless. On other architectures the hints do nothing.

/// Hints that the cache line holding the start of `value` will be used soon.
#[inline(always)]
pub(crate) fn prefetch<T: ?Sized>(value: &T) {
    prefetch_line(std::ptr::from_ref(value).cast());
}

/// Hints that all of `bytes` will be used soon: one hint per 64-byte cache line.
#[inline]
pub(crate) fn prefetch_bytes(bytes: &[u8]) {
    for line in bytes.chunks(64) {
        prefetch_line(line.as_ptr());
    }
}

#[inline(always)]
#[allow(unsafe_code)]
fn prefetch_line(address: *const u8) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: a prefetch is a hint that does not access memory as far as the program can tell:
    // it never faults and never changes anything; `address` comes from a live reference anyway.
    unsafe {
        std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(address.cast());
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = address;
}
