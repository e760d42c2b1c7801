//! Device profiles: the latency, bandwidth, queue and cache model of a simulated disk.
//!
//! Profiles are data (serde, JSON). The built-in ones are order-of-magnitude figures for the
//! device class, not measurements of one product:
//!
//! | profile | read latency | write latency | flush | bandwidth | queue depth | cache | contention |
//! |---|---|---|---|---|---|---|---|
//! | `nvme` | 60–120 µs | 15–40 µs | 0.2–1 ms | 2.5 GB/s | 64 | 256 MiB | phases of 50–500 ms, slowdown ×1, ×1, ×1.5, ×3 |
//! | `ssd` | 100–250 µs | 40–120 µs | 0.5–3 ms | 500 MB/s | 32 | 64 MiB | phases of 100 ms–1 s, ×1, ×1, ×2, ×4 |
//! | `hdd` | 3–14 ms | 0.1–1 ms (cached) | 5–25 ms | 150 MB/s | 8 | 64 MiB | phases of 0.5–5 s, ×1, ×1.5, ×3 |
//! | `nfs` | 0.5–5 ms | 1–6 ms | 2–12 ms | 110 MB/s (1 GbE) | 16 | 32 MiB | phases of 1–10 s, ×1, ×2, ×4, ×8 |
//!
//! A request's execute time is `start + transfer + latency`, where `transfer = len /
//! bandwidth` is serialised on one shared bandwidth cursor, `latency` is uniform in the range
//! for its kind, and both are multiplied by the contention slowdown of the phase the request
//! starts in. At most `queue_depth` requests are in service; the rest wait and start in an order
//! drawn from the disk's stream. The completion is delivered uniformly `0..=completion_delay_max_ns`
//! after execution. When unflushed writes exceed `cache_bytes`, the oldest are destaged (made
//! durable), as a real volatile cache must.

use serde::{Deserialize, Serialize};

/// A uniform latency range, nanoseconds, inclusive.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct LatencyRange {
    /// Shortest latency.
    pub min_ns: u64,
    /// Longest latency.
    pub max_ns: u64,
}

/// Time-varying background load: phases of random length, each with a slowdown factor.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Contention {
    /// Shortest phase.
    pub phase_min_ns: u64,
    /// Longest phase.
    pub phase_max_ns: u64,
    /// Slowdown factors in per mille (1000 = no contention); each phase picks one uniformly.
    pub slowdown_per_mille: Vec<u32>,
}

impl Contention {
    /// No background load.
    pub fn none() -> Contention {
        Contention { phase_min_ns: u64::MAX / 4, phase_max_ns: u64::MAX / 4, slowdown_per_mille: vec![1000] }
    }
}

/// The timing model of one device class. See the module table for the built-in values.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceProfile {
    /// Profile name (`nvme`, `ssd`, `hdd`, `nfs`, or a user's).
    pub name: String,
    /// Read latency.
    pub read_latency_ns: LatencyRange,
    /// Write latency (into the volatile cache).
    pub write_latency_ns: LatencyRange,
    /// Flush latency (draining the cache).
    pub flush_latency_ns: LatencyRange,
    /// Sustained transfer rate, bytes per second.
    pub bandwidth_bytes_per_sec: u64,
    /// Requests in service at once.
    pub queue_depth: u32,
    /// Longest delay between a request taking effect and its completion being delivered.
    pub completion_delay_max_ns: u64,
    /// Volatile write-cache capacity; unflushed writes beyond it are destaged oldest first.
    pub cache_bytes: u64,
    /// Background load phases.
    pub contention: Contention,
}

const US: u64 = 1_000;
const MS: u64 = 1_000_000;
const S: u64 = 1_000_000_000;
const MIB: u64 = 1024 * 1024;

impl DeviceProfile {
    /// Names of the built-in profiles.
    pub const BUILT_IN: [&'static str; 4] = ["nvme", "ssd", "hdd", "nfs"];

    /// A built-in profile by name.
    pub fn named(name: &str) -> Option<DeviceProfile> {
        match name {
            "nvme" => Some(DeviceProfile::nvme()),
            "ssd" => Some(DeviceProfile::ssd()),
            "hdd" => Some(DeviceProfile::hdd()),
            "nfs" => Some(DeviceProfile::nfs()),
            _ => None,
        }
    }

    /// A local NVMe drive.
    pub fn nvme() -> DeviceProfile {
        DeviceProfile {
            name: "nvme".into(),
            read_latency_ns: LatencyRange { min_ns: 60 * US, max_ns: 120 * US },
            write_latency_ns: LatencyRange { min_ns: 15 * US, max_ns: 40 * US },
            flush_latency_ns: LatencyRange { min_ns: 200 * US, max_ns: MS },
            bandwidth_bytes_per_sec: 2_500_000_000,
            queue_depth: 64,
            completion_delay_max_ns: 5 * US,
            cache_bytes: 256 * MIB,
            contention: Contention {
                phase_min_ns: 50 * MS,
                phase_max_ns: 500 * MS,
                slowdown_per_mille: vec![1000, 1000, 1500, 3000],
            },
        }
    }

    /// A SATA SSD.
    pub fn ssd() -> DeviceProfile {
        DeviceProfile {
            name: "ssd".into(),
            read_latency_ns: LatencyRange { min_ns: 100 * US, max_ns: 250 * US },
            write_latency_ns: LatencyRange { min_ns: 40 * US, max_ns: 120 * US },
            flush_latency_ns: LatencyRange { min_ns: 500 * US, max_ns: 3 * MS },
            bandwidth_bytes_per_sec: 500_000_000,
            queue_depth: 32,
            completion_delay_max_ns: 10 * US,
            cache_bytes: 64 * MIB,
            contention: Contention {
                phase_min_ns: 100 * MS,
                phase_max_ns: S,
                slowdown_per_mille: vec![1000, 1000, 2000, 4000],
            },
        }
    }

    /// A spinning disk with its write cache on.
    pub fn hdd() -> DeviceProfile {
        DeviceProfile {
            name: "hdd".into(),
            read_latency_ns: LatencyRange { min_ns: 3 * MS, max_ns: 14 * MS },
            write_latency_ns: LatencyRange { min_ns: 100 * US, max_ns: MS },
            flush_latency_ns: LatencyRange { min_ns: 5 * MS, max_ns: 25 * MS },
            bandwidth_bytes_per_sec: 150_000_000,
            queue_depth: 8,
            completion_delay_max_ns: 20 * US,
            cache_bytes: 64 * MIB,
            contention: Contention {
                phase_min_ns: 500 * MS,
                phase_max_ns: 5 * S,
                slowdown_per_mille: vec![1000, 1500, 3000],
            },
        }
    }

    /// A remote image over NFS on 1 GbE: high latency, limited bandwidth, heavy contention.
    pub fn nfs() -> DeviceProfile {
        DeviceProfile {
            name: "nfs".into(),
            read_latency_ns: LatencyRange { min_ns: 500 * US, max_ns: 5 * MS },
            write_latency_ns: LatencyRange { min_ns: MS, max_ns: 6 * MS },
            flush_latency_ns: LatencyRange { min_ns: 2 * MS, max_ns: 12 * MS },
            bandwidth_bytes_per_sec: 110_000_000,
            queue_depth: 16,
            completion_delay_max_ns: 50 * US,
            cache_bytes: 32 * MIB,
            contention: Contention {
                phase_min_ns: S,
                phase_max_ns: 10 * S,
                slowdown_per_mille: vec![1000, 2000, 4000, 8000],
            },
        }
    }

    /// Checks the numbers make sense; returns a message naming the bad field.
    pub fn validate(&self) -> Result<(), String> {
        let ranges = [
            ("read_latency_ns", self.read_latency_ns),
            ("write_latency_ns", self.write_latency_ns),
            ("flush_latency_ns", self.flush_latency_ns),
        ];
        for (field, range) in ranges {
            if range.min_ns > range.max_ns {
                return Err(format!(
                    "profile {}: {field}.min_ns {} exceeds max_ns {}",
                    self.name, range.min_ns, range.max_ns
                ));
            }
        }
        if self.bandwidth_bytes_per_sec == 0 {
            return Err(format!("profile {}: bandwidth_bytes_per_sec must be positive", self.name));
        }
        if self.queue_depth == 0 {
            return Err(format!("profile {}: queue_depth must be positive", self.name));
        }
        if self.contention.slowdown_per_mille.is_empty() || self.contention.slowdown_per_mille.contains(&0) {
            return Err(format!("profile {}: contention.slowdown_per_mille needs positive factors", self.name));
        }
        if self.contention.phase_min_ns == 0 || self.contention.phase_min_ns > self.contention.phase_max_ns {
            return Err(format!("profile {}: contention phase range is empty", self.name));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn built_in_profiles_are_valid_and_round_trip_through_json() {
        for name in DeviceProfile::BUILT_IN {
            let profile = DeviceProfile::named(name).unwrap();
            profile.validate().unwrap();
            let json = serde_json::to_string(&profile).unwrap();
            let back: DeviceProfile = serde_json::from_str(&json).unwrap();
            assert_eq!(back, profile);
        }
        let mut broken = DeviceProfile::nvme();
        broken.queue_depth = 0;
        assert!(broken.validate().unwrap_err().contains("queue_depth"));
        assert!(DeviceProfile::named("floppy").is_none());
    }
}
