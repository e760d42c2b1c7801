//! Bad input and device errors: every corrupt-image case is refused at open with an error naming
//! the field and its value, without a single write to the image; an I/O error fails only the
//! guest request that caused it and leaves the image consistent for later requests.

use fvd_engine::format::journal::{JournalRecord, SectorFormat, encode_sector};
use fvd_engine::format::{HEADER_REGION_BYTES, HeaderExtension};
use fvd_engine::{BlockDevice, CreateOptions, FvdError, JournalSize, Profile, WriteFlags, check};
use fvd_scenarios::rig::{Rig, RigConfig, RigError};
use fvd_sim::{DeviceProfile, FaultEffect, FaultOp, FaultPlan, FaultRule, Seed};

fn compact_rig(seed: u64) -> Rig {
    let mut create = CreateOptions::new(4 << 20);
    create.compact = true;
    create.block_size = Some(4096);
    create.chunk_size = Some(64 << 10);
    create.storage_grow_unit = Some(256 << 10);
    create.journal = JournalSize::Bytes(8192);
    let rig = Rig::new(
        Seed(seed),
        RigConfig {
            create,
            base_bytes: 3 << 20,
            image_profile: DeviceProfile::nvme(),
            base_profile: DeviceProfile::nvme(),
            separate_data: false,
            log_tail: 256,
        },
    );
    rig.create_image().unwrap();
    rig
}

/// Writes raw bytes to the image device (a corruption), flushed.
fn poke(rig: &Rig, offset: u64, bytes: Vec<u8>) {
    let image = rig.image.clone();
    rig.sim
        .run(async move {
            image.write_at(offset, &bytes, WriteFlags::NONE).await.unwrap();
            image.flush().await.unwrap();
        })
        .unwrap();
}

fn expect_refused(rig: &Rig, needle: &str) -> FvdError {
    let writes_before = rig.image.stats().writes;
    let error = match rig.open(Profile::Hardened) {
        Ok(_) => panic!("an image with {needle} opened"),
        Err(RigError::Engine(error)) => error,
        Err(other) => panic!("open stopped: {other}"),
    };
    let message = error.to_string();
    assert!(message.contains(needle), "error {message:?} should name {needle:?}");
    assert_eq!(rig.image.stats().writes, writes_before, "a failed open wrote to the image ({message})");
    error
}

#[test]
fn a_bad_magic_or_version_is_refused_by_name() {
    let rig = compact_rig(1);
    poke(&rig, 0, vec![0x00, 0x11, 0x22, 0x33]);
    let error = expect_refused(&rig, "header.magic");
    assert!(matches!(error, FvdError::Corrupt { .. }));
    assert!(error.to_string().contains("0x33221100"));
    let rig = compact_rig(2);
    poke(&rig, 4, 9u32.to_le_bytes().to_vec());
    expect_refused(&rig, "header.version = 9");
}

#[test]
fn offsets_and_sizes_outside_the_file_are_refused() {
    let rig = compact_rig(3);
    poke(&rig, 20, (1u64 << 40).to_le_bytes().to_vec()); // metadata_size
    expect_refused(&rig, "header.metadata_size = 1099511627776");
    let rig = compact_rig(4);
    poke(&rig, 1084, 8192u64.to_le_bytes().to_vec()); // bitmap_size for a 3 MiB base in 4 KiB blocks is 4096
    expect_refused(&rig, "header.bitmap_size = 8192");
    let rig = compact_rig(5);
    poke(&rig, 2212, 12345u64.to_le_bytes().to_vec()); // table_offset
    expect_refused(&rig, "header.table_offset = 12345");
}

#[test]
fn a_truncated_image_is_refused() {
    let rig = compact_rig(6);
    let image = rig.image.clone();
    rig.sim.run(async move { image.set_len(5000).await.unwrap() }).unwrap();
    expect_refused(&rig, "image = 5000 bytes");
}

#[test]
fn table_entries_beyond_storage_are_refused() {
    let rig = compact_rig(7);
    let layout_table_offset = HEADER_REGION_BYTES + 4096; // after a 4 KiB bitmap
    poke(&rig, layout_table_offset + 4 * 3, 500u32.to_le_bytes().to_vec());
    expect_refused(&rig, "table[3] = 500");
}

#[test]
fn journal_garbage_with_a_valid_checksum_is_refused_not_applied() {
    let rig = compact_rig(8);
    // A sector of the current epoch mapping chunk 2 to a physical chunk beyond the storage.
    let mut region = vec![0u8; HEADER_REGION_BYTES as usize];
    rig.image.peek(0, &mut region);
    let epoch = HeaderExtension::newest(&region).unwrap().journal_epoch;
    let sector = encode_sector(
        SectorFormat::Hardened { epoch },
        0,
        &[JournalRecord::Table { first_chunk: 2, entries: vec![9999] }],
    );
    let journal_offset = HEADER_REGION_BYTES + 4096 + 4096;
    poke(&rig, journal_offset, sector.to_vec());
    poke(&rig, 4300, 0u32.to_le_bytes().to_vec()); // clean_shutdown = false
    expect_refused(&rig, "journal sector 0");
    // check names the same damage and repairs without applying it.
    let devices = rig.devices();
    let report = rig.sim.run(async move { check(&devices, Profile::Hardened, true).await }).unwrap().unwrap();
    assert!(report.needs_recovery);
    assert!(report.corruptions.iter().any(|c| c.contains("9999")), "{report:?}");
    assert!(report.repaired);
    let image = rig.open(Profile::Hardened).unwrap_or_else(|e| panic!("repaired image failed to open: {e}"));
    image.assert_invariants();
}

#[test]
fn a_dirty_image_without_journal_is_refused() {
    let mut create = CreateOptions::new(1 << 20);
    create.journal = JournalSize::Disabled;
    let rig = Rig::new(
        Seed(9),
        RigConfig {
            create,
            base_bytes: 1 << 20,
            image_profile: DeviceProfile::nvme(),
            base_profile: DeviceProfile::nvme(),
            separate_data: false,
            log_tail: 256,
        },
    );
    rig.create_image().unwrap();
    poke(&rig, 4300, 0u32.to_le_bytes().to_vec());
    let error = expect_refused(&rig, "no journal");
    assert_eq!(error, FvdError::DirtyWithoutJournal);
}

#[test]
fn an_io_error_fails_only_its_request_and_the_image_stays_consistent() {
    let rig = compact_rig(10);
    let image = rig.open(Profile::Hardened).unwrap();
    // Fail every write to the journal region once a few have gone through.
    let journal = (HEADER_REGION_BYTES + 8192, HEADER_REGION_BYTES + 8192 + 8192);
    rig.image.set_faults(FaultPlan {
        rules: vec![FaultRule {
            op: Some(FaultOp::Write),
            request_range: None,
            offset_range_bytes: Some(journal),
            effect: FaultEffect::MediaError,
        }],
        ..FaultPlan::default()
    });
    let target = image.clone();
    let failed = rig.sim.run(async move { target.write(8192, &[7u8; 4096]).await }).unwrap();
    assert!(matches!(failed, Err(FvdError::Io { context: "journal write", .. })), "{failed:?}");
    // Base read failures fail copy-on-write writes and release their locks.
    rig.image.set_faults(FaultPlan::default());
    rig.base.as_ref().unwrap().set_faults(FaultPlan { read_error_per_million: 1_000_000, ..FaultPlan::default() });
    let target = image.clone();
    let cow = rig.sim.run(async move { target.write(512 * 9, &[8u8; 512]).await }).unwrap();
    assert!(matches!(cow, Err(FvdError::Io { context: "copy-on-write base read", .. })), "{cow:?}");
    image.assert_invariants();
    // Later requests work, and the image closes clean and checks clean.
    rig.base.as_ref().unwrap().set_faults(FaultPlan::default());
    let target = image.clone();
    rig.sim
        .run(async move {
            target.write(1 << 20, &[9u8; 8192]).await.unwrap();
            let mut back = vec![0u8; 8192];
            target.read(1 << 20, &mut back).await.unwrap();
            assert!(back.iter().all(|b| *b == 9));
            target.close().await.unwrap();
        })
        .unwrap();
    let devices = rig.devices();
    let report = rig.sim.run(async move { check(&devices, Profile::Hardened, false).await }).unwrap().unwrap();
    assert!(report.is_clean() && !report.needs_recovery, "{report:?}");
}
