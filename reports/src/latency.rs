//! Simulated-latency recording: one HdrHistogram per request kind for the whole run, plus
//! per-window percentiles over simulated time for charts.

use std::collections::BTreeMap;

use base64::Engine as _;
use hdrhistogram::Histogram;
use hdrhistogram::serialization::{Serializer, V2DeflateSerializer};
use serde::{Deserialize, Serialize};

/// Percentiles of one request kind, in microseconds of simulated time.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Percentiles {
    /// Requests recorded.
    pub count: u64,
    /// Median.
    pub p50_us: f64,
    /// 90th percentile.
    pub p90_us: f64,
    /// 99th percentile.
    pub p99_us: f64,
    /// 99.9th percentile.
    pub p999_us: f64,
    /// Largest.
    pub max_us: f64,
    /// The whole histogram (nanoseconds), HdrHistogram V2 deflate, base64: exact for merging.
    pub histogram_base64: String,
}

/// One window of the latency time series.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LatencyWindow {
    /// Window start, seconds of simulated time.
    pub start_s: f64,
    /// Per kind: `(count, p50_us, p99_us)`.
    pub kinds: BTreeMap<String, (u64, f64, f64)>,
}

/// Records latencies by kind, whole-run and per window.
pub struct LatencyRecorder {
    window_ns: u64,
    whole: BTreeMap<String, Histogram<u64>>,
    windows: BTreeMap<u64, BTreeMap<String, Histogram<u64>>>,
}

impl std::fmt::Debug for LatencyRecorder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LatencyRecorder")
            .field("window_ns", &self.window_ns)
            .field("kinds", &self.whole.keys().collect::<Vec<_>>())
            .finish()
    }
}

fn histogram() -> Histogram<u64> {
    // 1 ns .. 1 hour, 3 significant digits.
    Histogram::new_with_bounds(1, 3_600_000_000_000, 3).expect("valid histogram bounds")
}

impl LatencyRecorder {
    /// A recorder with time-series windows of `window_ns`.
    pub fn new(window_ns: u64) -> LatencyRecorder {
        LatencyRecorder { window_ns: window_ns.max(1), whole: BTreeMap::new(), windows: BTreeMap::new() }
    }

    /// Records a request of `kind` that completed at `end_ns` after `latency_ns`.
    pub fn record(&mut self, kind: &str, end_ns: u64, latency_ns: u64) {
        let value = latency_ns.max(1);
        self.whole.entry(kind.to_string()).or_insert_with(histogram).saturating_record(value);
        self.windows
            .entry(end_ns / self.window_ns)
            .or_default()
            .entry(kind.to_string())
            .or_insert_with(histogram)
            .saturating_record(value);
    }

    /// Whole-run percentiles per kind.
    pub fn percentiles(&self) -> BTreeMap<String, Percentiles> {
        self.whole.iter().map(|(kind, h)| (kind.clone(), summarize(h))).collect()
    }

    /// The time series.
    pub fn windows(&self) -> Vec<LatencyWindow> {
        self.windows
            .iter()
            .map(|(index, kinds)| LatencyWindow {
                start_s: (*index * self.window_ns) as f64 / 1e9,
                kinds: kinds
                    .iter()
                    .map(|(k, h)| {
                        (
                            k.clone(),
                            (h.len(), h.value_at_quantile(0.5) as f64 / 1e3, h.value_at_quantile(0.99) as f64 / 1e3),
                        )
                    })
                    .collect(),
            })
            .collect()
    }
}

fn summarize(h: &Histogram<u64>) -> Percentiles {
    let q: Vec<u64> = h.value_at_quantiles([0.5, 0.9, 0.99, 0.999]).collect();
    let mut blob = Vec::new();
    V2DeflateSerializer::new().serialize(h, &mut blob).expect("serialising a histogram into memory cannot fail");
    Percentiles {
        count: h.len(),
        p50_us: q[0] as f64 / 1e3,
        p90_us: q[1] as f64 / 1e3,
        p99_us: q[2] as f64 / 1e3,
        p999_us: q[3] as f64 / 1e3,
        max_us: h.max() as f64 / 1e3,
        histogram_base64: base64::engine::general_purpose::STANDARD.encode(&blob),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_and_windows_reflect_what_was_recorded() {
        let mut recorder = LatencyRecorder::new(1_000_000_000);
        for i in 1..=100u64 {
            recorder.record("read", i * 10_000_000, i * 1_000);
        }
        recorder.record("write", 2_500_000_000, 5_000_000);
        let p = recorder.percentiles();
        assert_eq!(p["read"].count, 100);
        assert!((p["read"].p50_us - 50.0).abs() < 1.0, "{:?}", p["read"]);
        assert!((p["read"].max_us - 100.0).abs() < 1.0);
        assert!(!p["read"].histogram_base64.is_empty());
        let windows = recorder.windows();
        assert_eq!(windows.len(), 3);
        assert_eq!(windows[2].kinds["write"].0, 1);
    }
}
