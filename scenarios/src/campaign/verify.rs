//! Verification after a recovery: every unsettled sector and a sample of the others read back and
//! judged against the oracle, and the engine's own `check`.

use super::guest::{FormatName, GuestImage};

use super::outcome::{FailureClass, Stop};
use super::workload::{Driver, Shared};
use crate::oracle::{ORIGINAL, TORN};
use crate::rig::Rig;
use crate::stamp::{SECTOR_BYTES, original, stamp};

/// Reads back every unsettled sector and a sample of the others after a recovery; returns how
/// many were verified.
///
/// Errors: [`Stop::Fail`] for a liveness failure, a failed read or sectors no rule allows.
pub(super) fn verify_after_crash(
    rig: &Rig,
    image: &GuestImage,
    driver: &Shared,
    sample: u64,
    torn_allowed: bool,
) -> Result<u64, Stop> {
    let sectors: Vec<u64> = {
        let mut d = driver.borrow_mut();
        let mut chosen: std::collections::BTreeSet<u64> = d.oracle.unsettled_sectors().into_iter().collect();
        let touched: Vec<u64> = d.oracle.touched_sectors().collect();
        if !touched.is_empty() {
            for _ in 0..sample.min(touched.len() as u64) {
                let pick = touched[d.rng.below(touched.len() as u64) as usize];
                chosen.insert(pick);
            }
            // A sample as large as the written set reads all of it (the draws above stay, so
            // the workload stream is the same either way).
            if sample >= touched.len() as u64 {
                chosen.extend(touched.iter().copied());
            }
        }
        for _ in 0..256 {
            let sectors = d.disk_sectors;
            let pick = d.rng.below(sectors);
            chosen.insert(pick);
        }
        chosen.into_iter().collect()
    };
    let mut buf = Vec::new();
    let read = read_sectors(&rig.sim, image, &sectors, &mut buf);
    let results = read.map_err(|error| {
        Stop::fail(FailureClass::Liveness, format!("liveness while verifying after a crash: {error}"))
    })?;
    let mut d = driver.borrow_mut();
    let mut bad = Vec::new();
    let mut verified = 0u64;
    let mut sector_slices = buf.chunks_exact(SECTOR_BYTES as usize);
    for (first, count, result) in results {
        if let Err(error) = result {
            return Err(Stop::fail(
                FailureClass::UnexpectedError,
                format!("verification read after a crash failed: {error}"),
            ));
        }
        for (sector, bytes) in (first..first + count).zip(sector_slices.by_ref()) {
            let allowed = d.oracle.allowed_after_crash(sector);
            match d.judge(sector, bytes, &allowed) {
                Ok(value) => d.oracle.settle(sector, value),
                Err(_) if torn_allowed && is_byte_mix(&d, sector, bytes, &allowed) => {
                    // No atomic unit: an unflushed sector may be torn between its candidates; it
                    // holds no single value until rewritten.
                    d.oracle.settle(sector, TORN);
                }
                Err(failure) => bad.push(failure),
            }
            verified += 1;
        }
    }
    debug_assert_eq!(verified as usize, sectors.len(), "every sector read back is judged, none twice");
    d.summary.sectors_verified += verified;
    d.oracle.settled_all();
    if !bad.is_empty() {
        let message = format!(
            "after crash {} and recovery, {} sector(s) hold data no rule allows (first: sector {} held {})",
            d.crashes_applied,
            bad.len(),
            bad[0].sector,
            bad[0].actual
        );
        bad.truncate(16);
        return Err(Stop::Fail { class: FailureClass::WrongData, message, sectors: bad });
    }
    Ok(verified)
}

/// One run of sectors read back: `(first sector, count, the read's result)`; its bytes are the
/// next `count` sectors of the buffer [`read_sectors`] filled.
pub(super) type SectorRun = (u64, u64, Result<(), super::guest::ImageError>);

/// What [`read_sectors`] fills a buffer with before reading: a byte no stamp, base sector or zero
/// sector is made of, so a read that leaves part of its buffer unwritten shows as wrong data
/// instead of as whatever the buffer held before (zeros, or an earlier state's sector).
pub(super) const POISON: u8 = 0xa5;

/// Reads `sectors` (ascending) through `image` in `sim`, grouped into runs of consecutive sectors
/// of at most 256, into `buffer` (reused across calls: grown as needed and poisoned first; run
/// `i`'s bytes follow run `i - 1`'s).
///
/// Errors: the world's [`fvd_sim::RunError`] (a liveness failure; `buffer` is then left empty).
pub(super) fn read_sectors(
    sim: &fvd_sim::Sim,
    image: &GuestImage,
    sectors: &[u64],
    buffer: &mut Vec<u8>,
) -> Result<Vec<SectorRun>, fvd_sim::RunError> {
    let mut runs: Vec<(u64, u64)> = Vec::new();
    for &sector in sectors {
        match runs.last_mut() {
            Some((first, count)) if *first + *count == sector && *count < 256 => *count += 1,
            _ => runs.push((sector, 1)),
        }
    }
    let total = (sectors.len() as u64 * SECTOR_BYTES) as usize;
    let mut bytes = std::mem::take(buffer);
    bytes.clear();
    bytes.resize(total, POISON);
    let reader = image.clone();
    let (out, bytes) = sim.run(async move {
        let mut out = Vec::with_capacity(runs.len());
        let mut at = 0usize;
        for (first, count) in runs {
            let len = (count * SECTOR_BYTES) as usize;
            let result = reader.read(first * SECTOR_BYTES, &mut bytes[at..at + len]).await;
            at += len;
            out.push((first, count, result));
        }
        (out, bytes)
    })?;
    *buffer = bytes;
    Ok(out)
}

/// True if every byte of `bytes` equals the same byte of some allowed value's content.
pub(super) fn is_byte_mix(d: &Driver, sector: u64, bytes: &[u8], allowed: &[u32]) -> bool {
    if allowed.len() < 2 {
        return false;
    }
    let contents: Vec<Vec<u8>> = allowed
        .iter()
        .map(|&v| {
            let mut content = vec![0u8; SECTOR_BYTES as usize];
            if v == ORIGINAL {
                original(sector, d.base.as_ref().map(|(c, n)| (c, *n)), &mut content);
            } else {
                stamp(d.seed, u64::from(v), sector, &mut content);
            }
            content
        })
        .collect();
    bytes.iter().enumerate().all(|(i, b)| contents.iter().any(|c| c[i] == *b))
}

/// Runs the format's check on `devices` in `sim` (no repair): `Err((class, message))` if it finds
/// corruption, fails, or does not finish. `when` says when in the run (for the message).
pub(super) fn check_devices(
    sim: &fvd_sim::Sim,
    format: FormatName,
    devices: fvd_engine::Devices,
    profile: fvd_engine::Profile,
    when: &str,
) -> Result<(), (FailureClass, String)> {
    let name = if format == FormatName::Fvd { String::new() } else { format!("{format} ") };
    match sim.run(async move { super::guest::check_format(format, devices, profile).await }) {
        Ok(Ok(corruptions)) if corruptions.is_empty() => Ok(()),
        Ok(Ok(corruptions)) => {
            Err((FailureClass::Check, format!("{name}check {when} found corruption: {}", corruptions.join("; "))))
        }
        Ok(Err(error)) => Err((FailureClass::UnexpectedError, format!("{name}check {when} failed: {error}"))),
        Err(error) => Err((FailureClass::Liveness, format!("liveness in check {when}: {error}"))),
    }
}

/// Runs the engine's check on the rig's devices.
///
/// Errors: [`Stop::Fail`] if it finds corruption, fails, or does not finish.
pub(super) fn check_image(rig: &Rig, profile: fvd_engine::Profile, when: &str) -> Result<(), Stop> {
    check_devices(&rig.sim, rig.format, rig.devices(), profile, when)
        .map_err(|(class, message)| Stop::fail(class, message))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stamp::{SectorValue, decode};

    #[test]
    fn a_poisoned_sector_is_garbage_whatever_the_seed_sector_and_base() {
        // A read that leaves its buffer (or part of it) unwritten must fail the judge: the
        // poison decodes as no value any rule allows, with or without a base image.
        let poisoned = [POISON; SECTOR_BYTES as usize];
        for seed in [0, 1, 0x5eed, u64::MAX] {
            let base = fvd_sim::ProceduralContent { seed };
            for sector in [0, 1, 4095, 1 << 30] {
                for with_base in [None, Some((&base, 1u64 << 40))] {
                    assert_eq!(decode(seed, sector, &poisoned, with_base), SectorValue::Garbage);
                }
            }
        }
    }
}
