//! The engine on the simulated disk, in the engine's own crate (the storage contract lives in
//! `fvd-contract`, so `fvd-sim` depends on no format and the engine can test against it).

use std::rc::Rc;

use fvd_engine::{CreateOptions, Devices, Env, FvdImage, OpenOptions};
use fvd_sim::{AtomicUnit, CrashPlan, CrashStrategy, DeviceProfile, DiskConfig, Seed, Sim, SimDisk, SimEnv};

#[test]
fn a_flushed_write_survives_a_crash_that_drops_everything_unflushed() {
    for seed in 1..=20u64 {
        let sim = Sim::new(Seed(seed));
        let handle = sim.handle();
        let disk = SimDisk::new(&handle, "image", 0, DiskConfig::new(DeviceProfile::nvme()));
        let devices = Devices { image: Rc::new(disk.clone()), data: None, base: None };
        let env: Rc<dyn Env> = Rc::new(SimEnv::new(&handle));
        let create = CreateOptions::new(16 << 20);
        let (d, e) = (devices.clone(), Rc::clone(&env));
        sim.run(async move {
            FvdImage::create(&d, &create).await.expect("create");
            let image = FvdImage::open(d, e, OpenOptions::default()).await.expect("open");
            image.write(0, &[0xaa; 4096]).await.expect("write a");
            image.flush().await.expect("flush");
            image.write(8192, &[0xbb; 4096]).await.expect("write b");
        })
        .expect("the workload finishes");
        sim.abort_all_tasks();
        // Every unflushed write is lost.
        disk.crash(CrashPlan { strategy: CrashStrategy::Subset { keep_mask: 0 }, atomic_unit: AtomicUnit::Sector });
        let (d, e) = (devices.clone(), Rc::clone(&env));
        let (a, b) = sim
            .run(async move {
                let image = FvdImage::open(d, e, OpenOptions::default()).await.expect("recovery");
                let (mut a, mut b) = (vec![0u8; 4096], vec![0u8; 4096]);
                image.read(0, &mut a).await.expect("read a");
                image.read(8192, &mut b).await.expect("read b");
                (a, b)
            })
            .expect("recovery finishes");
        assert!(a.iter().all(|x| *x == 0xaa), "seed {seed}: the flushed write was lost");
        assert!(b.iter().all(|x| *x == 0) || b.iter().all(|x| *x == 0xbb), "seed {seed}: b is neither old nor new");
    }
}
