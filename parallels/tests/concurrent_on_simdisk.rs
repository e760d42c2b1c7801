//! Concurrent writers on one Parallels image in the simulator: eight tasks write single sectors they
//! own (sector mod 8), all inside the same clusters, so allocations race; after a clean close and
//! reopen every sector holds its owner's last write and the image checks clean.

use std::rc::Rc;

use fvd_contract::BlockDevice;
use fvd_parallels::{ParallelsImage, create};
use fvd_sim::{DeviceProfile, DiskConfig, Seed, Sim, SimDisk, SimRng};

#[test]
fn racing_allocations_lose_no_write_and_leave_a_clean_image() {
    const DISK: u64 = 4 << 20;
    const SECTORS: u64 = 512; // the first 64 clusters of 4 KiB
    for seed in 1..=20u64 {
        let sim = Sim::new(Seed(seed));
        let handle = sim.handle();
        let disk = SimDisk::new(&handle, "image", 0, DiskConfig::new(DeviceProfile::ssd()));
        let device: Rc<dyn BlockDevice> = Rc::new(disk);
        let (d, h) = (Rc::clone(&device), handle.clone());
        let model = sim
            .run(async move {
                create(&*d, DISK, 4096).await.expect("create");
                let prl = Rc::new(ParallelsImage::open_writable(d).await.expect("open"));
                let tasks: Vec<_> = (0..8u64)
                    .map(|task| {
                        let prl = Rc::clone(&prl);
                        h.spawn("writer", async move {
                            let mut rng = SimRng::stream(Seed(seed * 8 + task), "writer");
                            let mut last = std::collections::BTreeMap::new();
                            for i in 0..50u64 {
                                let sector = rng.below(SECTORS / 8) * 8 + task;
                                let value = (task * 50 + i) as u8 | 1;
                                prl.write(sector * 512, &[value; 512]).await.expect("write");
                                last.insert(sector, value);
                            }
                            last
                        })
                    })
                    .collect();
                let mut model = std::collections::BTreeMap::new();
                for task in tasks {
                    model.extend(task.await);
                }
                Rc::try_unwrap(prl).expect("every writer ended").close().await.expect("close");
                model
            })
            .expect("the writers finish");
        let d = Rc::clone(&device);
        let (read, report) = sim
            .run(async move {
                let prl = ParallelsImage::open(d).await.expect("reopen");
                let mut all = vec![0u8; (SECTORS * 512) as usize];
                prl.read(0, &mut all).await.expect("read");
                (all, prl.check(false).await.expect("check"))
            })
            .expect("read back");
        for (sector, value) in model {
            let bytes = &read[(sector * 512) as usize..((sector + 1) * 512) as usize];
            assert!(bytes.iter().all(|b| *b == value), "seed {seed}: sector {sector} lost its last write");
        }
        assert_eq!((report.corruptions, report.leaks), (0, 0), "seed {seed}: {report:?}");
    }
}
