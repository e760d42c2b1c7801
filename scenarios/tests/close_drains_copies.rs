//! Close finishes background copy-on-read before it writes the metadata home, as QEMU's close
//! drains requests: a tool that reads and closes at once still leaves the copies in the image.

use std::rc::Rc;

use fvd_engine::{BaseImage, BlockDevice, CreateOptions, Devices, FvdImage, MapSource, OpenOptions};
use fvd_scenarios::host::{FileDevice, HostEnv, HostExecutor};
use fvd_sim::Seed;

#[test]
fn close_waits_for_copy_on_read_so_the_copies_reach_the_metadata() {
    let dir = tempfile::tempdir().unwrap();
    let base_path = dir.path().join("base.raw");
    std::fs::write(&base_path, vec![0x42u8; 4 << 20]).unwrap();
    let image_path = dir.path().join("a.fvd");
    let executor = HostExecutor::new();
    let devices = |writable: bool| Devices {
        image: Rc::new(FileDevice::open(&image_path, writable).unwrap()) as Rc<dyn BlockDevice>,
        data: None,
        base: Some(Rc::new(FileDevice::open(&base_path, false).unwrap()) as Rc<dyn BlockDevice>),
    };
    let mut create = CreateOptions::new(4 << 20);
    create.base = Some(BaseImage { name: "base.raw".into(), format: "raw".into(), len_bytes: 4 << 20 });
    create.copy_on_read = true;
    FileDevice::create(&image_path, 0).unwrap();
    let target = devices(true);
    executor.block_on(async move { FvdImage::create(&target, &create).await.unwrap() });
    // On real files every request completes at once: the read returns before its background copy
    // has run, and close starts straight away.
    let env = Rc::new(HostEnv::new(&executor, Seed(1)));
    let image = executor.block_on(FvdImage::open(devices(true), env, OpenOptions::default())).unwrap();
    executor.block_on(async move {
        let mut buf = vec![0u8; 1 << 20];
        image.read(0, &mut buf).await.unwrap();
        assert!(buf.iter().all(|b| *b == 0x42));
        image.close().await.unwrap();
    });
    let env = Rc::new(HostEnv::new(&executor, Seed(2)));
    let options = OpenOptions { read_only: true, ..OpenOptions::default() };
    let image = executor.block_on(FvdImage::open(devices(false), env, options)).unwrap();
    let first = image.map()[0];
    assert!(
        first.offset_bytes == 0 && first.len_bytes >= 1 << 20 && matches!(first.source, MapSource::Image { .. }),
        "the first MiB was read with copy-on-read but is not in the image: {:?}",
        image.map()
    );
}
