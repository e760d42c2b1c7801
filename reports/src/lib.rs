//! Reports of fvdsim runs: simulated-latency histograms (HdrHistogram), SVG charts (plotters,
//! SVG backend only) and the HTML index. Depends on no other fvdsim crate: the runner fills plain
//! data in, and charts redraw from saved JSON.

pub mod campaign;
pub mod chart;
pub mod html;
pub mod latency;
