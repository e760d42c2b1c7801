//! QEMU as the external oracle (issue #12): QEMU writes, we read. Images made by `qemu-img
//! create -f qed` (cluster sizes 4 KiB and 64 KiB, with and without a raw backing file) get a
//! seeded `qemu-io` script of overlapping pattern writes, zero writes and flushes; our QED reader
//! must read every byte as `qemu-img convert -O raw` does.
//!
//! Skipped, with a notice, where `qemu-img` is absent; `.ci/run` installs it so CI never skips.

use std::path::Path;
use std::process::Command;
use std::rc::Rc;

use fvd_engine::BlockDevice;
use fvd_qed::QedImage;
use fvd_scenarios::host::{FileDevice, HostExecutor};
use fvd_sim::{Seed, SimRng};

fn qemu_present() -> bool {
    let present = Command::new("qemu-img").arg("--version").output().is_ok_and(|o| o.status.success());
    if !present {
        eprintln!("NOTICE: qemu-img is not installed: the QEMU-oracle tests are skipped (apt-get install qemu-utils)");
    }
    present
}

fn run(command: &mut Command) -> String {
    let output = command.output().expect("the QEMU tool runs");
    assert!(
        output.status.success(),
        "{command:?} failed: {}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// Runs the `qemu-io` script at `script` on `image` of `format`; it must succeed.
fn qemu_io(format: &str, image: &Path, script: &Path) {
    let output = Command::new("qemu-io")
        .args(["-f", format])
        .arg(image)
        .stdin(std::fs::File::open(script).expect("the script exists"))
        .output()
        .expect("qemu-io runs");
    assert!(output.status.success(), "qemu-io: {}", String::from_utf8_lossy(&output.stderr));
}

/// A seeded qemu-io script: overlapping pattern writes (sector-aligned, any length up to three
/// clusters), zero writes (cluster-aligned ones become zero clusters), flushes.
fn script(rng: &mut SimRng, disk_bytes: u64, cluster_bytes: u64, ops: usize) -> String {
    let mut lines = Vec::new();
    let sectors = disk_bytes / 512;
    for _ in 0..ops {
        match rng.below(10) {
            0 => lines.push("flush".to_string()),
            1 | 2 => {
                let clusters = disk_bytes / cluster_bytes;
                let first = rng.below(clusters);
                let count = rng.range_inclusive(1, 3.min(clusters - first));
                lines.push(format!("write -q -z {} {}", first * cluster_bytes, count * cluster_bytes));
            }
            _ => {
                let len = rng.range_inclusive(1, 3 * cluster_bytes / 512);
                let first = rng.below(sectors - len + 1);
                let pattern = rng.range_inclusive(1, 255);
                lines.push(format!("write -q -P {pattern:#x} {} {}", first * 512, len * 512));
            }
        }
    }
    lines.join("\n") + "\n"
}

fn read_all(image: &Path, backing: Option<&Path>, disk_bytes: u64) -> Vec<u8> {
    let executor = HostExecutor::new();
    let image: Rc<dyn BlockDevice> = Rc::new(FileDevice::open(image, false).expect("open the image"));
    let backing =
        backing.map(|b| Rc::new(FileDevice::open(b, false).expect("open the backing file")) as Rc<dyn BlockDevice>);
    executor.block_on(async move {
        let qed = QedImage::open(image, backing).await.expect("our reader opens QEMU's image");
        let mut all = vec![0u8; disk_bytes as usize];
        for (i, chunk) in all.chunks_mut(1 << 20).enumerate() {
            qed.read(i as u64 * (1 << 20), chunk).await.expect("read");
        }
        all
    })
}

#[test]
fn qemu_writes_and_our_qed_reader_reads_every_byte_as_qemu_does() {
    if !qemu_present() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    const DISK: u64 = 16 << 20;
    let mut cases = 0;
    for cluster_bytes in [4096u64, 65536] {
        for with_backing in [false, true] {
            for seed in 1..=3u64 {
                let name = format!("c{cluster_bytes}-b{with_backing}-s{seed}");
                let image = dir.path().join(format!("{name}.qed"));
                let base = dir.path().join(format!("{name}.raw"));
                let mut rng = SimRng::stream(Seed(seed ^ cluster_bytes), "qemu-oracle");
                let mut create = Command::new("qemu-img");
                create.args(["create", "-q", "-f", "qed", "-o", &format!("cluster_size={cluster_bytes}")]);
                if with_backing {
                    // A backing file shorter than the disk, with non-zero content.
                    let mut bytes = vec![0u8; (DISK * 3 / 4) as usize];
                    rng.fill_bytes(&mut bytes);
                    std::fs::write(&base, &bytes).unwrap();
                    create.args(["-b", base.to_str().unwrap(), "-F", "raw"]);
                }
                run(create.arg(&image).arg(DISK.to_string()));
                let script = script(&mut rng, DISK, cluster_bytes, 60);
                let script_path = dir.path().join(format!("{name}.io"));
                std::fs::write(&script_path, &script).unwrap();
                qemu_io("qed", &image, &script_path);
                let truth_path = dir.path().join(format!("{name}.truth"));
                run(Command::new("qemu-img").args(["convert", "-f", "qed", "-O", "raw"]).arg(&image).arg(&truth_path));
                let truth = std::fs::read(&truth_path).unwrap();
                let ours = read_all(&image, with_backing.then_some(base.as_path()), DISK);
                assert_eq!(truth.len(), ours.len(), "{name}");
                if let Some(at) = truth.iter().zip(&ours).position(|(a, b)| a != b) {
                    panic!(
                        "{name}: byte {at} differs (qemu {:#x}, ours {:#x}); script:\n{script}",
                        truth[at], ours[at]
                    );
                }
                cases += 1;
            }
        }
    }
    assert_eq!(cases, 12);
}

#[test]
fn a_corrupt_l2_entry_in_a_qemu_image_is_named_not_followed() {
    if !qemu_present() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let image = dir.path().join("a.qed");
    run(Command::new("qemu-img").args(["create", "-q", "-f", "qed"]).arg(&image).arg("64M"));
    run(Command::new("qemu-io").args(["-f", "qed", "-c", "write -q -P 0x11 0 4k"]).arg(&image));
    // L1[0] points at the L2 table (after the data cluster); L2[0] at the data. Point L2[0] far
    // beyond the file.
    let mut bytes = std::fs::read(&image).unwrap();
    let l1_offset = u64::from_le_bytes(bytes[40..48].try_into().unwrap()) as usize;
    let l2_offset = u64::from_le_bytes(bytes[l1_offset..l1_offset + 8].try_into().unwrap()) as usize;
    bytes[l2_offset..l2_offset + 8].copy_from_slice(&(1u64 << 40).to_le_bytes());
    std::fs::write(&image, &bytes).unwrap();
    let executor = HostExecutor::new();
    let device: Rc<dyn BlockDevice> = Rc::new(FileDevice::open(&image, false).unwrap());
    let error = executor.block_on(async move {
        let qed = QedImage::open(device, None).await.expect("the header and L1 are fine");
        let mut buf = vec![0u8; 4096];
        qed.read(0, &mut buf).await.expect_err("the entry points beyond the file")
    });
    assert!(error.to_string().contains("L2[0][0]"), "{error}");
}

/// Writes `ops` seeded pattern writes through our QED engine onto a new image at `image` (with a
/// raw backing file `base`, if given), applying the same to a model of the guest disk; returns
/// the model.
fn write_ours(
    image: &Path,
    base: Option<&Path>,
    cluster_bytes: u64,
    disk_bytes: u64,
    ops: &[(u64, u64, u8)],
) -> Vec<u8> {
    use fvd_qed::{QedCreateOptions, create};
    std::fs::File::create(image).unwrap();
    let mut model = vec![0u8; disk_bytes as usize];
    if let Some(base) = base {
        let bytes = std::fs::read(base).unwrap();
        model[..bytes.len()].copy_from_slice(&bytes);
    }
    let executor = HostExecutor::new();
    let device: Rc<dyn BlockDevice> = Rc::new(FileDevice::open(image, true).unwrap());
    let backing =
        base.map(|b| Rc::new(FileDevice::open(b, false).expect("open the backing file")) as Rc<dyn BlockDevice>);
    let options = QedCreateOptions {
        cluster_bytes,
        backing_name: base.map(|b| b.file_name().unwrap().to_str().unwrap().to_string()),
        ..QedCreateOptions::new(disk_bytes)
    };
    let writes: Vec<(u64, u64, u8)> = ops.to_vec();
    executor.block_on(async move {
        create(&*device, &options).await.expect("create");
        let qed = QedImage::open_writable(device, backing).await.expect("open our image");
        for (offset, len, pattern) in writes {
            qed.write(offset, &vec![pattern; len as usize]).await.expect("write");
        }
        qed.close().await.expect("close");
    });
    for (offset, len, pattern) in ops {
        model[*offset as usize..(offset + len) as usize].fill(*pattern);
    }
    model
}

/// Seeded sector-aligned pattern writes, each up to three clusters.
fn pattern_writes(rng: &mut SimRng, disk_bytes: u64, cluster_bytes: u64, count: usize) -> Vec<(u64, u64, u8)> {
    (0..count)
        .map(|_| {
            let sectors = rng.range_inclusive(1, 3 * cluster_bytes / 512);
            let first = rng.below(disk_bytes / 512 - sectors + 1);
            (first * 512, sectors * 512, rng.range_inclusive(1, 255) as u8)
        })
        .collect()
}

#[test]
fn we_write_and_qemu_img_check_and_compare_accept_every_image() {
    if !qemu_present() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    const DISK: u64 = 16 << 20;
    for cluster_bytes in [4096u64, 65536] {
        for with_backing in [false, true] {
            for seed in 1..=3u64 {
                let name = format!("ours-c{cluster_bytes}-b{with_backing}-s{seed}");
                let image = dir.path().join(format!("{name}.qed"));
                let base = dir.path().join(format!("{name}-base.raw"));
                let mut rng = SimRng::stream(Seed(seed ^ cluster_bytes), "qemu-oracle-ours");
                if with_backing {
                    let mut bytes = vec![0u8; (DISK * 3 / 4) as usize];
                    rng.fill_bytes(&mut bytes);
                    std::fs::write(&base, &bytes).unwrap();
                }
                let ops = pattern_writes(&mut rng, DISK, cluster_bytes, 60);
                let model = write_ours(&image, with_backing.then_some(base.as_path()), cluster_bytes, DISK, &ops);
                let check = Command::new("qemu-img")
                    .args(["check", "-f", "qed", "--output=json"])
                    .arg(&image)
                    .output()
                    .unwrap();
                let report = String::from_utf8_lossy(&check.stdout);
                assert_eq!(check.status.code(), Some(0), "{name}: qemu-img check: {report}");
                assert!(!report.contains("\"leaks\"") && !report.contains("\"corruptions\""), "{name}: {report}");
                let model_path = dir.path().join(format!("{name}.model"));
                std::fs::write(&model_path, &model).unwrap();
                let compare = Command::new("qemu-img")
                    .args(["compare", "-f", "qed", "-F", "raw"])
                    .arg(&image)
                    .arg(&model_path)
                    .output()
                    .unwrap();
                assert_eq!(
                    compare.status.code(),
                    Some(0),
                    "{name}: qemu-img compare: {}",
                    String::from_utf8_lossy(&compare.stdout)
                );
                // NEED_CHECK is clear after our clean close.
                let header = std::fs::read(&image).unwrap();
                assert_eq!(header[16] & 0x02, 0, "{name}: NEED_CHECK left set");
            }
        }
    }
}

#[test]
fn the_same_sequential_writes_give_byte_identical_files_through_qemu_and_through_us() {
    if !qemu_present() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    const DISK: u64 = 16 << 20;
    for cluster_bytes in [4096u64, 65536] {
        for with_backing in [false, true] {
            let name = format!("same-c{cluster_bytes}-b{with_backing}");
            let base = dir.path().join(format!("{name}-base.raw"));
            let mut rng = SimRng::stream(Seed(cluster_bytes), "qemu-oracle-identity");
            if with_backing {
                let mut bytes = vec![0u8; (DISK / 2) as usize];
                rng.fill_bytes(&mut bytes);
                std::fs::write(&base, &bytes).unwrap();
            }
            let ops = pattern_writes(&mut rng, DISK, cluster_bytes, 40);
            let ours = dir.path().join(format!("{name}-ours.qed"));
            write_ours(&ours, with_backing.then_some(base.as_path()), cluster_bytes, DISK, &ops);
            let theirs = dir.path().join(format!("{name}-qemu.qed"));
            let mut create = Command::new("qemu-img");
            create.current_dir(dir.path()).args([
                "create",
                "-q",
                "-f",
                "qed",
                "-o",
                &format!("cluster_size={cluster_bytes}"),
            ]);
            if with_backing {
                create.args(["-b", base.file_name().unwrap().to_str().unwrap(), "-F", "raw"]);
            }
            run(create.arg(&theirs).arg(DISK.to_string()));
            let script: String =
                ops.iter().map(|(offset, len, pattern)| format!("write -q -P {pattern:#x} {offset} {len}\n")).collect();
            let script_path = dir.path().join(format!("{name}.io"));
            std::fs::write(&script_path, &script).unwrap();
            qemu_io("qed", &theirs, &script_path);
            let (a, b) = (std::fs::read(&ours).unwrap(), std::fs::read(&theirs).unwrap());
            assert_eq!(a.len(), b.len(), "{name}: file lengths differ");
            if let Some(at) = a.iter().zip(&b).position(|(x, y)| x != y) {
                panic!("{name}: byte {at:#x} differs (ours {:#x}, qemu {:#x})", a[at], b[at]);
            }
        }
    }
}

// Parallels (docs/parallels.md): the same three checks.

fn read_all_parallels(image: &Path, disk_bytes: u64) -> Vec<u8> {
    use fvd_parallels::ParallelsImage;
    let executor = HostExecutor::new();
    let image: Rc<dyn BlockDevice> = Rc::new(FileDevice::open(image, false).expect("open the image"));
    executor.block_on(async move {
        let prl = ParallelsImage::open(image).await.expect("our reader opens QEMU's image");
        let mut all = vec![0u8; disk_bytes as usize];
        for (i, chunk) in all.chunks_mut(1 << 20).enumerate() {
            prl.read(i as u64 * (1 << 20), chunk).await.expect("read");
        }
        all
    })
}

fn write_ours_parallels(image: &Path, cluster_bytes: u64, disk_bytes: u64, ops: &[(u64, u64, u8)]) -> Vec<u8> {
    use fvd_parallels::{ParallelsImage, create};
    std::fs::File::create(image).unwrap();
    let device: Rc<dyn BlockDevice> = Rc::new(FileDevice::open(image, true).unwrap());
    let writes = ops.to_vec();
    HostExecutor::new().block_on(async move {
        create(&*device, disk_bytes, cluster_bytes).await.expect("create");
        let prl = ParallelsImage::open_writable(device).await.expect("open our image");
        for (offset, len, pattern) in writes {
            prl.write(offset, &vec![pattern; len as usize]).await.expect("write");
        }
        prl.close().await.expect("close");
    });
    let mut model = vec![0u8; disk_bytes as usize];
    for (offset, len, pattern) in ops {
        model[*offset as usize..(offset + len) as usize].fill(*pattern);
    }
    model
}

#[test]
fn parallels_qemu_writes_we_read_we_write_qemu_judges_and_the_files_are_identical() {
    if !qemu_present() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    const DISK: u64 = 16 << 20;
    for cluster_bytes in [65536u64, 1 << 20] {
        for seed in 1..=3u64 {
            let name = format!("prl-c{cluster_bytes}-s{seed}");
            let mut rng = SimRng::stream(Seed(seed ^ cluster_bytes), "qemu-oracle-parallels");
            // QEMU writes (patterns, whole-cluster zero writes that punch holes, flushes), we read.
            let theirs = dir.path().join(format!("{name}-qemu.prl"));
            run(Command::new("qemu-img")
                .args(["create", "-q", "-f", "parallels", "-o", &format!("cluster_size={cluster_bytes}")])
                .arg(&theirs)
                .arg(DISK.to_string()));
            let script = script(&mut rng, DISK, cluster_bytes, 40);
            let script_path = dir.path().join(format!("{name}.io"));
            std::fs::write(&script_path, &script).unwrap();
            qemu_io("parallels", &theirs, &script_path);
            let truth_path = dir.path().join(format!("{name}.truth"));
            run(Command::new("qemu-img")
                .args(["convert", "-f", "parallels", "-O", "raw"])
                .arg(&theirs)
                .arg(&truth_path));
            let truth = std::fs::read(&truth_path).unwrap();
            let ours_read = read_all_parallels(&theirs, DISK);
            if let Some(at) = truth.iter().zip(&ours_read).position(|(a, b)| a != b) {
                panic!(
                    "{name}: byte {at} differs (qemu {:#x}, ours {:#x}); script:\n{script}",
                    truth[at], ours_read[at]
                );
            }
            // We write, QEMU judges.
            let ops = pattern_writes(&mut rng, DISK, cluster_bytes, 40);
            let ours = dir.path().join(format!("{name}-ours.prl"));
            let model = write_ours_parallels(&ours, cluster_bytes, DISK, &ops);
            let check = Command::new("qemu-img")
                .args(["check", "-f", "parallels", "--output=json"])
                .arg(&ours)
                .output()
                .unwrap();
            let report = String::from_utf8_lossy(&check.stdout);
            assert_eq!(check.status.code(), Some(0), "{name}: qemu-img check: {report}");
            assert!(!report.contains("\"leaks\"") && !report.contains("\"corruptions\""), "{name}: {report}");
            let model_path = dir.path().join(format!("{name}.model"));
            std::fs::write(&model_path, &model).unwrap();
            let compare = Command::new("qemu-img")
                .args(["compare", "-f", "parallels", "-F", "raw"])
                .arg(&ours)
                .arg(&model_path)
                .output()
                .unwrap();
            assert_eq!(compare.status.code(), Some(0), "{name}: {}", String::from_utf8_lossy(&compare.stdout));
            assert_eq!(&std::fs::read(&ours).unwrap()[44..48], &[0u8; 4], "{name}: in_use left set");
            // Byte identity: the same sequential writes through qemu-io.
            let same = dir.path().join(format!("{name}-same.prl"));
            run(Command::new("qemu-img")
                .args(["create", "-q", "-f", "parallels", "-o", &format!("cluster_size={cluster_bytes}")])
                .arg(&same)
                .arg(DISK.to_string()));
            let script: String =
                ops.iter().map(|(offset, len, pattern)| format!("write -q -P {pattern:#x} {offset} {len}\n")).collect();
            std::fs::write(&script_path, &script).unwrap();
            qemu_io("parallels", &same, &script_path);
            let (a, b) = (std::fs::read(&ours).unwrap(), std::fs::read(&same).unwrap());
            assert_eq!(a.len(), b.len(), "{name}: file lengths differ");
            if let Some(at) = a.iter().zip(&b).position(|(x, y)| x != y) {
                panic!("{name}: byte {at:#x} differs (ours {:#x}, qemu {:#x})", a[at], b[at]);
            }
        }
    }
}

#[test]
fn the_qemu_judge_passes_every_crash_state_of_qed_and_parallels_runs_and_changes_nothing_in_the_run() {
    use fvd_scenarios::campaign::guest::FormatName;
    use fvd_scenarios::campaign::{SCENARIOS, run};
    if !qemu_present() {
        return;
    }
    for (name, format) in [("qed", FormatName::Qed), ("parallels", FormatName::Parallels), ("random", FormatName::Qed)]
    {
        let scenario = SCENARIOS.iter().find(|s| s.name == name).unwrap();
        let mut config = (scenario.build)(Seed(1)).on_format(format);
        config.max_requests = Some(2_000);
        config.crashes.count = 6;
        let plain = run(&config).unwrap();
        config.qemu_judge = true;
        let judged = run(&config).unwrap();
        assert!(judged.failure.is_none(), "{name} on {format}: {:?}", judged.failure);
        let q = judged.summary.qemu.as_ref().expect("the judge ran");
        assert_eq!(q.crash_states, judged.crashes.len() as u64, "{name}: every crash state judged");
        assert!(q.sectors_judged > 0 && q.sectors_compared == q.sectors_judged, "{name}: {q:?}");
        assert_eq!(judged.log_hash, plain.log_hash, "{name}: the judge works on host files only");
        eprintln!("{name} on {format}: {}", fvd_scenarios::campaign::output::qemu_line(&judged.summary).unwrap());
    }
}

#[test]
fn qemu_img_check_overcounts_qed_leaks_by_one_per_cluster_size_minus_one_clusters() {
    // Found by the QEMU judge (docs/qed.md, "QEMU overcounts leaks"): on a QED image with 4 KiB
    // clusters, QEMU 10.0.2's check reports one leak more than there are unreferenced clusters
    // once the file holds 4,095 clusters, two at 8,190, and so on (8 KiB clusters: at 8,191).
    if !qemu_present() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let image = dir.path().join("a.qed");
    run(Command::new("qemu-img")
        .args(["create", "-q", "-f", "qed", "-o", "cluster_size=4096,table_size=4"])
        .arg(&image)
        .arg("64M"));
    for clusters in [4_094u64, 4_095, 8_190] {
        // Header (1 cluster) and L1 table (4) are used; every cluster after them is a leak.
        std::fs::OpenOptions::new().write(true).open(&image).unwrap().set_len(clusters * 4096).unwrap();
        let output =
            Command::new("qemu-img").args(["check", "-f", "qed", "--output=json"]).arg(&image).output().unwrap();
        let report: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
        let theirs = report.get("leaks").and_then(serde_json::Value::as_u64).unwrap_or(0);
        let executor = HostExecutor::new();
        let device: Rc<dyn BlockDevice> = Rc::new(FileDevice::open(&image, false).unwrap());
        let ours =
            executor.block_on(async move { QedImage::open(device, None).await.unwrap().check(false).await.unwrap() });
        assert_eq!(ours.leaks, clusters - 5, "our check counts every unreferenced cluster once");
        let overcount = clusters / 4095;
        eprintln!("{clusters} clusters: {} unreferenced, qemu-img check says {theirs} leaks", ours.leaks);
        assert!(
            theirs == ours.leaks + overcount || theirs == ours.leaks,
            "qemu-img: {theirs} leaks where {} clusters are unreferenced (known overcount {overcount})",
            ours.leaks
        );
    }
}

#[test]
fn the_format_benchmark_measures_both_drivers_on_the_same_writes() {
    use fvd_scenarios::bench_engine::EngineBenchOptions;
    use fvd_scenarios::bench_formats::run_format_bench;
    use fvd_scenarios::campaign::guest::FormatName;
    let dir = tempfile::tempdir().unwrap();
    let options = EngineBenchOptions { dir: dir.path().to_path_buf(), base_bytes: 4 << 20, block_bytes: 64 << 10 };
    for format in [FormatName::Qed, FormatName::Parallels] {
        let report = run_format_bench(&options, format, |_| {}).unwrap();
        assert_eq!(report.rows.len(), 4, "allocating and rewrite at queue depths 1 and 16");
        for row in &report.rows {
            assert!(row.ours_iops > 0.0, "{row:?}");
            // Where qemu-img is installed, every row has QEMU's figure and the ratio.
            assert_eq!(row.qemu_iops.is_some(), qemu_present(), "{row:?}");
            assert_eq!(row.ratio.is_some(), row.qemu_iops.is_some(), "{row:?}");
        }
    }
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0, "the benchmark leaves no files behind");
}

#[test]
fn our_map_and_info_json_agree_with_qemu_img_on_qemu_made_images() {
    if !qemu_present() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let fvdsim = env!("CARGO_BIN_EXE_fvdsim");
    let json = |command: &mut Command| -> serde_json::Value { serde_json::from_str(&run(command)).unwrap() };
    // A raw backing file full of data (QEMU reports holes in it as zeros; ours has none).
    let base = dir.path().join("base.raw");
    std::fs::write(&base, vec![0x11u8; 8 << 20]).unwrap();
    let cases = [
        ("qed", "a.qed", vec!["-o", "cluster_size=65536"]),
        ("qed", "b.qed", vec!["-o", "cluster_size=4096", "-b", "base.raw", "-F", "raw"]),
        ("parallels", "c.prl", vec!["-o", "cluster_size=65536"]),
    ];
    for (format, name, options) in cases {
        let image = dir.path().join(name);
        run(Command::new("qemu-img")
            .current_dir(dir.path())
            .args(["create", "-q", "-f", format])
            .args(&options)
            .arg(name)
            .arg("8M"));
        let script = dir.path().join("script");
        std::fs::write(&script, "write -q -P 0x22 0 4k\nwrite -q -P 0x33 1M 200k\nwrite -q -P 0x44 6M 64k\nflush\n")
            .unwrap();
        qemu_io(format, &image, &script);
        if format == "qed" {
            let zero = dir.path().join("zero");
            std::fs::write(&zero, "write -q -z 3M 64k\n").unwrap();
            qemu_io(format, &image, &zero);
        }
        let theirs = json(Command::new("qemu-img").args(["map", "-f", format, "--output=json"]).arg(&image));
        let ours = json(Command::new(fvdsim).args(["img", "map", "--output", "json"]).arg(&image));
        assert_eq!(ours, theirs, "{name}: map");
        let theirs = json(Command::new("qemu-img").args(["info", "-f", format, "--output=json"]).arg(&image));
        let ours = json(Command::new(fvdsim).args(["img", "info", "--output", "json"]).arg(&image));
        // Every key of ours that QEMU also prints has QEMU's value (QEMU has no cluster size for
        // Parallels).
        for key in ["virtual-size", "cluster-size", "dirty-flag", "backing-filename", "format", "actual-size"] {
            if let Some(value) = theirs.get(key) {
                assert_eq!(ours.get(key), Some(value), "{name}: info key {key}");
            }
        }
        assert!(theirs.get("virtual-size").is_some(), "{name}: {theirs}");
        let theirs = json(Command::new("qemu-img").args(["check", "-f", format, "--output=json"]).arg(&image));
        let ours = json(Command::new(fvdsim).args(["img", "check", "--output", "json"]).arg(&image));
        for key in ["corruptions", "leaks", "check-errors", "image-end-offset"] {
            let zero = serde_json::Value::from(0);
            assert_eq!(ours.get(key).unwrap_or(&zero), theirs.get(key).unwrap_or(&zero), "{name}: check key {key}");
        }
    }
}
