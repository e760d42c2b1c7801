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
                let output = Command::new("qemu-io")
                    .args(["-f", "qed", image.to_str().unwrap()])
                    .stdin(std::fs::File::open(&script_path).unwrap())
                    .output()
                    .expect("qemu-io runs");
                assert!(output.status.success(), "qemu-io: {}", String::from_utf8_lossy(&output.stderr));
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
