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
///
/// Memory is bounded by the number of windows *with data*, each kept as a summary once it
/// closes: only the two newest windows hold histograms (a histogram is ~280 KiB, so keeping one
/// per kind per window grew with simulated time: 8 GB for a two-hour trace at 1 s windows).
/// Records are expected in completion order, as the simulator makes them; a record for a window
/// that already closed counts in the whole-run histograms and in [`Self::late_records`].
pub struct LatencyRecorder {
    window_ns: u64,
    whole: BTreeMap<String, Histogram<u64>>,
    open: BTreeMap<u64, BTreeMap<String, Histogram<u64>>>,
    closed: Vec<LatencyWindow>,
    newest_closed: Option<u64>,
    late: u64,
    /// `(end_ns, latency_ns)` of every record of [`SAMPLED_KIND`], up to [`MAX_SAMPLES`]: the
    /// percentiles of any interval, exactly (a prefetch study compares a setting with its baseline
    /// over the same interval).
    samples: Vec<(u64, u64)>,
    samples_dropped: bool,
}

/// The request kind whose records are kept one by one (the guest's foreground requests).
pub const SAMPLED_KIND: &str = "guest";

/// The most records of [`SAMPLED_KIND`] kept one by one (16 bytes each: 16 MiB); past it,
/// [`LatencyRecorder::percentiles_between`] answers `None`.
pub const MAX_SAMPLES: usize = 1 << 20;

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
        LatencyRecorder {
            window_ns: window_ns.max(1),
            whole: BTreeMap::new(),
            open: BTreeMap::new(),
            closed: Vec::new(),
            newest_closed: None,
            late: 0,
            samples: Vec::new(),
            samples_dropped: false,
        }
    }

    /// Records whose window had already closed (0 when records come in completion order).
    pub fn late_records(&self) -> u64 {
        self.late
    }

    fn summarize_window(&self, index: u64, kinds: &BTreeMap<String, Histogram<u64>>) -> LatencyWindow {
        LatencyWindow {
            start_s: (index * self.window_ns) as f64 / 1e9,
            kinds: kinds
                .iter()
                .map(|(k, h)| {
                    (
                        k.clone(),
                        (h.len(), h.value_at_quantile(0.5) as f64 / 1e3, h.value_at_quantile(0.99) as f64 / 1e3),
                    )
                })
                .collect(),
        }
    }

    /// Records a request of `kind` that completed at `end_ns` after `latency_ns`.
    pub fn record(&mut self, kind: &str, end_ns: u64, latency_ns: u64) {
        let value = latency_ns.max(1);
        if kind == SAMPLED_KIND {
            if self.samples.len() < MAX_SAMPLES {
                self.samples.push((end_ns, value));
            } else {
                self.samples_dropped = true;
            }
        }
        if let Some(h) = self.whole.get_mut(kind) {
            h.saturating_record(value);
        } else {
            self.whole.entry(kind.to_string()).or_insert_with(histogram).saturating_record(value);
        }
        let index = end_ns / self.window_ns;
        if self.newest_closed.is_some_and(|closed| index <= closed) {
            self.late += 1;
            return;
        }
        // Close every window older than the one before this record's.
        while let Some((&oldest, _)) = self.open.first_key_value() {
            if oldest + 1 >= index {
                break;
            }
            let kinds = self.open.remove(&oldest).expect("the first key exists");
            let summary = self.summarize_window(oldest, &kinds);
            self.closed.push(summary);
            self.newest_closed = Some(oldest);
        }
        let window = self.open.entry(index).or_default();
        match window.get_mut(kind) {
            Some(h) => h.saturating_record(value),
            None => window.entry(kind.to_string()).or_insert_with(histogram).saturating_record(value),
        }
    }

    /// `(count, p50_us, p99_us)` of the [`SAMPLED_KIND`] requests that completed in
    /// `[from_ns, to_ns)`, exactly; `None` past [`MAX_SAMPLES`] records, `Some((0, 0, 0))` for
    /// an interval without records.
    pub fn percentiles_between(&self, from_ns: u64, to_ns: u64) -> Option<(u64, f64, f64)> {
        if self.samples_dropped {
            return None;
        }
        let mut h = histogram();
        for &(_, latency) in self.samples.iter().filter(|(end, _)| *end >= from_ns && *end < to_ns) {
            h.saturating_record(latency);
        }
        if h.is_empty() {
            return Some((0, 0.0, 0.0));
        }
        Some((h.len(), h.value_at_quantile(0.5) as f64 / 1e3, h.value_at_quantile(0.99) as f64 / 1e3))
    }

    /// Whole-run percentiles per kind.
    pub fn percentiles(&self) -> BTreeMap<String, Percentiles> {
        self.whole.iter().map(|(kind, h)| (kind.clone(), summarize(h))).collect()
    }

    /// The time series.
    pub fn windows(&self) -> Vec<LatencyWindow> {
        let open = self.open.iter().map(|(index, kinds)| self.summarize_window(*index, kinds));
        self.closed.iter().cloned().chain(open).collect()
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

    #[test]
    fn percentiles_of_an_interval_count_only_its_guest_requests() {
        let mut recorder = LatencyRecorder::new(1_000_000_000);
        for i in 1..=100u64 {
            // Guest requests of i µs completing at i ms; a slow non-guest kind beside them.
            recorder.record(SAMPLED_KIND, i * 1_000_000, i * 1_000);
            recorder.record("copy", i * 1_000_000, 9_000_000);
        }
        let (count, p50, p99) = recorder.percentiles_between(51_000_000, 101_000_000).unwrap();
        assert_eq!(count, 50, "requests 51..=100");
        assert!((p50 - 75.0).abs() < 1.0 && (p99 - 100.0).abs() < 1.0, "{p50} {p99}");
        assert_eq!(recorder.percentiles_between(200_000_000, 300_000_000), Some((0, 0.0, 0.0)));
    }

    #[test]
    fn past_the_sample_cap_interval_percentiles_are_refused_not_made_up() {
        let mut recorder = LatencyRecorder::new(1_000_000_000);
        for i in 0..=MAX_SAMPLES as u64 {
            recorder.record(SAMPLED_KIND, i, 1_000);
        }
        assert_eq!(recorder.percentiles_between(0, u64::MAX), None);
        assert_eq!(recorder.percentiles()[SAMPLED_KIND].count, MAX_SAMPLES as u64 + 1, "the whole run still counts");
    }

    #[test]
    fn only_the_newest_windows_hold_histograms() {
        let mut recorder = LatencyRecorder::new(1_000_000_000);
        for second in 0..10_000u64 {
            recorder.record("read", second * 1_000_000_000 + 5, 1_000 + second);
            recorder.record("write", second * 1_000_000_000 + 7, 2_000);
        }
        assert!(recorder.open.len() <= 2, "{} windows still hold histograms", recorder.open.len());
        let windows = recorder.windows();
        assert_eq!(windows.len(), 10_000);
        assert!(windows.windows(2).all(|w| w[0].start_s < w[1].start_s), "in time order");
        assert_eq!(windows[9_999].kinds["read"].0, 1);
        // A record for a closed window counts in the whole run only.
        recorder.record("read", 5, 1_000);
        assert_eq!(recorder.late_records(), 1);
        assert_eq!(recorder.percentiles()["read"].count, 10_001);
    }
}
