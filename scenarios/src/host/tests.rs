use std::rc::Rc;

use fvd_engine::{BlockDevice, DeviceError, Env, Progress, ProgressPoint, WriteFlags};
use fvd_sim::Seed;

use super::*;

#[test]
fn file_device_keeps_the_block_device_contract() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("disk.img");
    let device = FileDevice::create(&path, 8192).unwrap();
    let executor = HostExecutor::new();
    let (read_back, beyond, grown_tail) = executor.block_on(async move {
        device.write_at(512, &[0xAB; 1024], WriteFlags::FUA).await.unwrap();
        device.flush().await.unwrap();
        let mut buf = vec![0u8; 2048];
        device.read_at(0, &mut buf).await.unwrap();
        let beyond = device.write_at(8000, &[1u8; 512], WriteFlags::NONE).await;
        device.set_len(16384).await.unwrap();
        let mut tail = vec![1u8; 512];
        device.read_at(16384 - 512, &mut tail).await.unwrap();
        (buf, beyond, tail)
    });
    assert!(read_back[..512].iter().all(|b| *b == 0), "never-written bytes read as zeros");
    assert!(read_back[512..1536].iter().all(|b| *b == 0xAB));
    assert!(matches!(beyond, Err(DeviceError::OutOfRange { offset_bytes: 8000, device_len_bytes: 8192, .. })));
    assert!(grown_tail.iter().all(|b| *b == 0), "grown space reads as zeros");
    assert_eq!(std::fs::metadata(&path).unwrap().len(), 16384);
    let read_only = FileDevice::open(&path, false).unwrap();
    let refused = executor.block_on(async move { read_only.write_at(0, &[0u8; 512], WriteFlags::NONE).await });
    assert!(matches!(refused, Err(DeviceError::ReadOnly { .. })));
}

#[test]
fn host_env_runs_background_tasks_and_timers() {
    let executor = HostExecutor::new();
    let env = Rc::new(HostEnv::new(&executor, Seed(1)));
    let inner = Rc::clone(&env);
    let elapsed = executor.block_on(async move {
        let start = inner.now_ns();
        let sleeper = Rc::clone(&inner);
        let join = inner.spawn("bg", Box::pin(async move { sleeper.sleep_ns(2_000_000).await }));
        join.await;
        inner.progress(Progress { point: ProgressPoint::GuestAck, detail: 0 });
        inner.now_ns() - start
    });
    assert!(elapsed >= 2_000_000, "slept {elapsed} ns");
    assert_eq!(env.progress_counts().get("guest-ack"), Some(&1));
}
