//! `fvdsim img` on real files: hostile arguments and headers get exit 3 and a message naming what
//! and where, never a panic, an abort or a huge allocation, and never damage to the user's files.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn fvdsim(cwd: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_fvdsim")).current_dir(cwd).arg("img").args(args).output().expect("fvdsim runs")
}

fn text(output: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr))
}

fn expect_code(output: &Output, code: i32) {
    assert_eq!(output.status.code(), Some(code), "exit status {:?}: {}", output.status, text(output));
}

fn files_in(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> =
        std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    names.sort();
    names
}

fn base_file(dir: &Path, name: &str, len: usize) -> PathBuf {
    let path = dir.join(name);
    let bytes: Vec<u8> = (0..len).map(|i| (i / 512 % 251) as u8 ^ 0x5a).collect();
    std::fs::write(&path, bytes).unwrap();
    path
}

#[test]
fn a_range_beyond_the_disk_is_refused_before_any_allocation() {
    let dir = tempfile::tempdir().unwrap();
    expect_code(&fvdsim(dir.path(), &["create", "--size", "64M", "a.fvd"]), 0);
    for args in [&["read", "a.fvd", "0", "1T"][..], &["write", "--pattern", "0xab", "a.fvd", "0", "1T"]] {
        let output = fvdsim(dir.path(), args);
        expect_code(&output, 3);
        let message = text(&output);
        assert!(
            message.contains("1099511627776") && message.contains("67108864") && message.contains("offset 0"),
            "{message}"
        );
    }
    // Ranges inside the disk but larger than one buffer stream through.
    expect_code(&fvdsim(dir.path(), &["write", "--pattern", "0x11", "a.fvd", "512", "3M"]), 0);
    expect_code(&fvdsim(dir.path(), &["read", "--pattern", "0x11", "a.fvd", "512", "3M"]), 0);
    let output = fvdsim(dir.path(), &["read", "--pattern", "0x11", "a.fvd", "0", "4M"]);
    expect_code(&output, 1);
    assert!(text(&output).contains("offset 0"), "{}", text(&output));
    let output = fvdsim(dir.path(), &["read", "--pattern", "0x11", "a.fvd", "1M", "3M"]);
    expect_code(&output, 1);
    assert!(text(&output).contains(&format!("offset {}", (3 << 20) + 512)), "{}", text(&output));
}

#[test]
fn a_failed_create_leaves_existing_files_untouched_and_no_junk() {
    let dir = tempfile::tempdir().unwrap();
    expect_code(&fvdsim(dir.path(), &["create", "--size", "1M", "a.fvd"]), 0);
    let before = std::fs::read(dir.path().join("a.fvd")).unwrap();
    let output = fvdsim(dir.path(), &["create", "--size", "1M", "--compact", "--chunk-size", "1000", "a.fvd"]);
    expect_code(&output, 3);
    assert!(text(&output).contains("chunk_size"), "{}", text(&output));
    assert!(std::fs::read(dir.path().join("a.fvd")).unwrap() == before, "a failed create changed the image");
    let output = fvdsim(
        dir.path(),
        &["create", "--size", "1M", "--compact", "--chunk-size", "1000", "--data-file", "b.data", "b.fvd"],
    );
    expect_code(&output, 3);
    assert_eq!(files_in(dir.path()), vec!["a.fvd".to_string()], "a failed create left files behind");
    // A valid create over an existing image replaces it (as qemu-img does), data file included.
    expect_code(&fvdsim(dir.path(), &["create", "--size", "2M", "--data-file", "a.data", "a.fvd"]), 0);
    assert_eq!(files_in(dir.path()), vec!["a.data".to_string(), "a.fvd".to_string()]);
    expect_code(&fvdsim(dir.path(), &["write", "a.fvd", "0", "4K"]), 0);
    expect_code(&fvdsim(dir.path(), &["read", "--pattern", "0xcd", "a.fvd", "0", "4K"]), 0);
}

#[test]
fn rejected_requests_and_read_only_commands_leave_the_image_untouched() {
    let dir = tempfile::tempdir().unwrap();
    base_file(dir.path(), "base.raw", 1 << 20);
    // A base image and no journal: an image left unclean could not be read without repair.
    expect_code(&fvdsim(dir.path(), &["create", "--base", "base.raw", "--journal-size", "0", "a.fvd"]), 0);
    let before = std::fs::read(dir.path().join("a.fvd")).unwrap();
    for args in [
        &["write", "a.fvd", "100", "512"][..],
        &["write", "a.fvd", "0", "100"],
        &["write", "a.fvd", "1M", "512"],
        &["read", "a.fvd", "100", "512"],
    ] {
        let output = fvdsim(dir.path(), args);
        expect_code(&output, 3);
        assert!(std::fs::read(dir.path().join("a.fvd")).unwrap() == before, "{args:?} changed the image");
    }
    for args in [&["read", "a.fvd", "0", "4K"][..], &["info", "a.fvd"], &["map", "a.fvd"], &["check", "a.fvd"]] {
        expect_code(&fvdsim(dir.path(), args), 0);
        assert!(std::fs::read(dir.path().join("a.fvd")).unwrap() == before, "{args:?} wrote to the image");
    }
    expect_code(&fvdsim(dir.path(), &["write", "a.fvd", "4K", "4K"]), 0);
    expect_code(&fvdsim(dir.path(), &["read", "--pattern", "0xcd", "a.fvd", "4K", "4K"]), 0);
}

#[test]
fn a_relative_base_is_relative_to_the_image_like_qemu_img() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("sub")).unwrap();
    base_file(&dir.path().join("sub"), "base.raw", 1 << 20);
    // qemu-img create -b base.raw sub/img looks for sub/base.raw.
    expect_code(&fvdsim(dir.path(), &["create", "--base", "base.raw", "sub/a.fvd"]), 0);
    expect_code(&fvdsim(dir.path(), &["write", "--pattern", "0x22", "sub/a.fvd", "0", "4K"]), 0);
    expect_code(&fvdsim(dir.path(), &["read", "--pattern", "0x22", "sub/a.fvd", "0", "4K"]), 0);
    expect_code(&fvdsim(&dir.path().join("sub"), &["read", "--pattern", "0x22", "a.fvd", "0", "4K"]), 0);
    let output = fvdsim(dir.path(), &["read", "--pattern", "0x5a", "sub/a.fvd", "4K", "512"]);
    expect_code(&output, 1); // base data of sector 8 is 8 ^ 0x5a
    // A base that exists only relative to the current directory is not the one the image names.
    base_file(dir.path(), "cwd-only.raw", 1 << 20);
    let output = fvdsim(dir.path(), &["create", "--base", "cwd-only.raw", "sub/b.fvd"]);
    expect_code(&output, 3);
    assert!(text(&output).contains("cwd-only.raw"), "{}", text(&output));
    assert!(!dir.path().join("sub/b.fvd").exists());
}

#[test]
fn info_describes_an_image_whose_base_is_missing_and_prints_human_sizes() {
    let dir = tempfile::tempdir().unwrap();
    base_file(dir.path(), "base.raw", 1 << 20);
    expect_code(&fvdsim(dir.path(), &["create", "--size", "64M", "--base", "base.raw", "a.fvd"]), 0);
    let output = fvdsim(dir.path(), &["info", "a.fvd"]);
    expect_code(&output, 0);
    let info = text(&output);
    assert!(info.contains("virtual size: 64 MiB (67108864 bytes)"), "{info}");
    assert!(info.contains("disk size: "), "{info}");
    std::fs::remove_file(dir.path().join("base.raw")).unwrap();
    let output = fvdsim(dir.path(), &["info", "a.fvd"]);
    expect_code(&output, 0);
    let info = text(&output);
    assert!(info.contains("base.raw") && info.contains("missing"), "{info}");
}

#[test]
fn copy_on_read_through_the_tool_copies_before_the_image_closes() {
    let dir = tempfile::tempdir().unwrap();
    base_file(dir.path(), "base.raw", 4 << 20);
    expect_code(&fvdsim(dir.path(), &["create", "--base", "base.raw", "--copy-on-read", "a.fvd"]), 0);
    expect_code(&fvdsim(dir.path(), &["read", "a.fvd", "0", "1M"]), 0);
    let output = fvdsim(dir.path(), &["map", "a.fvd"]);
    expect_code(&output, 0);
    let map = text(&output);
    let first = map.lines().nth(1).unwrap_or_default().to_string();
    assert!(first.contains("0x100000") && first.ends_with("image"), "the first MiB was not copied:\n{map}");
    expect_code(&fvdsim(dir.path(), &["check", "a.fvd"]), 0);
}

#[test]
fn qed_images_are_recognised_by_their_magic_and_handled_like_fvd_ones() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    expect_code(&fvdsim(d, &["create", "-f", "qed", "--size", "64M", "a.qed"]), 0);
    expect_code(&fvdsim(d, &["write", "--pattern", "0xab", "a.qed", "0", "64K"]), 0);
    expect_code(&fvdsim(d, &["write", "--pattern", "0xcd", "a.qed", "1M", "4K"]), 0);
    expect_code(&fvdsim(d, &["read", "--pattern", "0xab", "a.qed", "0", "64K"]), 0);
    expect_code(&fvdsim(d, &["read", "--pattern", "0xab", "a.qed", "1M", "4K"]), 1);
    let info = fvdsim(d, &["info", "a.qed"]);
    expect_code(&info, 0);
    assert!(text(&info).contains("file format: qed") && text(&info).contains("dirty flag: false"), "{}", text(&info));
    // QEMU's layout: the first data cluster after the header and L1, the L2 table after it.
    let map = text(&fvdsim(d, &["map", "a.qed"]));
    assert!(map.contains("0x50000  image") && map.contains("0xa0000  image"), "{map}");
    expect_code(&fvdsim(d, &["check", "a.qed"]), 0);
    // Options of the other format are refused before anything is created.
    let output = fvdsim(d, &["create", "-f", "qed", "--compact", "--size", "1M", "b.qed"]);
    expect_code(&output, 3);
    assert!(text(&output).contains("--compact is an FVD option"), "{}", text(&output));
    assert!(!d.join("b.qed").exists());
    // A corrupt header is named, and the file is left as it was.
    let mut bytes = std::fs::read(d.join("a.qed")).unwrap();
    bytes[8..12].copy_from_slice(&3u32.to_le_bytes());
    std::fs::write(d.join("c.qed"), &bytes).unwrap();
    let output = fvdsim(d, &["write", "c.qed", "0", "4K"]);
    expect_code(&output, 3);
    assert!(text(&output).contains("table_size = 3"), "{}", text(&output));
    assert_eq!(std::fs::read(d.join("c.qed")).unwrap(), bytes);
}

#[test]
fn parallels_images_are_recognised_by_their_magic_and_handled_like_the_others() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    expect_code(&fvdsim(d, &["create", "-f", "parallels", "--size", "64M", "--cluster-size", "64K", "a.prl"]), 0);
    expect_code(&fvdsim(d, &["write", "--pattern", "0xab", "a.prl", "1M", "128K"]), 0);
    expect_code(&fvdsim(d, &["write", "--pattern", "0xcd", "a.prl", "0", "4K"]), 0);
    expect_code(&fvdsim(d, &["read", "--pattern", "0xab", "a.prl", "1M", "128K"]), 0);
    expect_code(&fvdsim(d, &["read", "--pattern", "0xab", "a.prl", "0", "4K"]), 1);
    let info = text(&fvdsim(d, &["info", "a.prl"]));
    assert!(info.contains("file format: parallels") && info.contains("dirty flag: false"), "{info}");
    // Data from the first cluster after the BAT, in write order: 1M's two clusters, then 0.
    let map = text(&fvdsim(d, &["map", "a.prl"]));
    assert!(map.contains("0x10000  image") && map.contains("0x30000  image"), "{map}");
    let check: serde_json::Value =
        serde_json::from_str(&text(&fvdsim(d, &["check", "--output", "json", "a.prl"]))).unwrap();
    assert_eq!(check["corruptions"], 0, "{check}");
    assert_eq!(check["allocated-clusters"], 3, "{check}");
    // Options it has no use for are refused before anything is created.
    let output = fvdsim(d, &["create", "-f", "parallels", "--base", "x.raw", "--size", "1M", "b.prl"]);
    expect_code(&output, 3);
    assert!(!d.join("b.prl").exists());
    // A corrupt header is named, and the file is left as it was.
    let mut bytes = std::fs::read(d.join("a.prl")).unwrap();
    bytes[28..32].copy_from_slice(&0u32.to_le_bytes());
    std::fs::write(d.join("c.prl"), &bytes).unwrap();
    let output = fvdsim(d, &["write", "c.prl", "0", "4K"]);
    expect_code(&output, 3);
    assert!(text(&output).contains("tracks = 0"), "{}", text(&output));
    assert_eq!(std::fs::read(d.join("c.prl")).unwrap(), bytes);
}
