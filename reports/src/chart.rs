//! SVG charts drawn with plotters' SVG backend (no system font libraries: text is emitted as
//! `<text font-family="sans-serif">` and the viewer draws it). Charts render from saved report
//! data, so redrawing needs no rerun.

use std::path::Path;

use anyhow::{Context, Result};
use plotters::coord::ranged1d::ValueFormatter;
use plotters::prelude::*;

/// One line of a line chart.
#[derive(Debug, Clone)]
pub struct Series {
    /// Legend label.
    pub label: String,
    /// `(x, y)` points, x ascending.
    pub points: Vec<(f64, f64)>,
    /// Dashed (for thresholds and reference lines).
    pub dashed: bool,
}

/// A shaded x interval (pauses, crashes).
#[derive(Debug, Clone, Copy)]
pub struct Band {
    /// Start.
    pub from: f64,
    /// End.
    pub to: f64,
}

/// A line chart: title, axis labels with units, legend, optional shaded bands.
#[derive(Debug, Clone)]
pub struct LineChart {
    /// Chart title.
    pub title: String,
    /// X axis label with unit.
    pub x_label: String,
    /// Y axis label with unit.
    pub y_label: String,
    /// Lines.
    pub series: Vec<Series>,
    /// Shaded intervals, with their legend label.
    pub bands: Vec<Band>,
    /// Legend label of the bands.
    pub band_label: String,
    /// Colour of the bands (RGB); drawn translucent.
    pub band_rgb: (u8, u8, u8),
    /// Log-scale y axis.
    pub log_y: bool,
    /// Lowest y shown (values below are drawn at it); `None`: from the data.
    pub y_floor: Option<f64>,
}

const COLORS: [RGBColor; 8] = [
    RGBColor(31, 119, 180),
    RGBColor(214, 39, 40),
    RGBColor(44, 160, 44),
    RGBColor(255, 127, 14),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(127, 127, 127),
];

fn bounds(chart: &LineChart) -> (f64, f64, f64, f64) {
    let points = chart.series.iter().flat_map(|s| s.points.iter());
    let (mut x0, mut x1, mut y0, mut y1) = (f64::MAX, f64::MIN, f64::MAX, f64::MIN);
    for &(x, y) in points {
        x0 = x0.min(x);
        x1 = x1.max(x);
        y0 = y0.min(y);
        y1 = y1.max(y);
    }
    if x0 > x1 {
        return (0.0, 1.0, 0.0, 1.0);
    }
    if chart.log_y {
        y0 = y0.max(1e-3);
    } else {
        y0 = y0.min(0.0);
    }
    if let Some(floor) = chart.y_floor {
        y0 = floor;
        y1 = y1.max(floor * 10.0);
    }
    if x1 <= x0 {
        x1 = x0 + 1.0;
    }
    if y1 <= y0 {
        y1 = y0 + 1.0;
    }
    (x0, x1, y0, y1 * 1.1)
}

/// Renders `chart` to an SVG file at `path` (960×540).
pub fn render_line_chart(chart: &LineChart, path: &Path) -> Result<()> {
    let root = SVGBackend::new(path, (960, 540)).into_drawing_area();
    root.fill(&WHITE).context("chart background")?;
    let (x0, x1, y0, y1) = bounds(chart);
    let caption = (chart.title.as_str(), ("sans-serif", 22));
    let mut builder = ChartBuilder::on(&root);
    builder.caption(caption.0, caption.1).margin(16).x_label_area_size(48).y_label_area_size(72);
    if chart.log_y {
        let mut ctx = builder.build_cartesian_2d(x0..x1, (y0..y1).log_scale()).context("chart axes")?;
        draw_all(&mut ctx, chart, y0, y1)?;
    } else {
        let mut ctx = builder.build_cartesian_2d(x0..x1, y0..y1).context("chart axes")?;
        draw_all(&mut ctx, chart, y0, y1)?;
    }
    root.present().with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}

/// Tick labels without needless decimals: `100000`, `2.5`, `0.01`.
fn format_tick(value: f64) -> String {
    if value.abs() >= 10.0 || value == value.round() {
        format!("{value:.0}")
    } else if value.abs() >= 1.0 {
        format!("{value:.1}")
    } else {
        format!("{value:.2}")
    }
}

/// Draws the mesh (axis labels, ticks), the shaded bands and the series onto `ctx`, whose y axis
/// is linear or logarithmic.
fn draw_all<'a, X, Y>(
    ctx: &mut ChartContext<'a, SVGBackend<'a>, Cartesian2d<X, Y>>,
    chart: &LineChart,
    y0: f64,
    y1: f64,
) -> Result<()>
where
    X: Ranged<ValueType = f64> + ValueFormatter<f64>,
    Y: Ranged<ValueType = f64> + ValueFormatter<f64>,
{
    ctx.configure_mesh()
        .x_desc(chart.x_label.as_str())
        .y_desc(chart.y_label.as_str())
        .y_label_formatter(&|v| format_tick(*v))
        .draw()
        .context("chart mesh")?;
    let (r, g, b) = chart.band_rgb;
    let shade = RGBColor(r, g, b).mix(0.35);
    // A band is at least 0.4% of the x range wide, so an instant stays visible.
    let (x_min, x_max) = chart
        .series
        .iter()
        .flat_map(|s| s.points.iter().map(|p| p.0))
        .fold((f64::MAX, f64::MIN), |(a, b), x| (a.min(x), b.max(x)));
    let min_width = ((x_max - x_min) * 0.004).max(0.0);
    for (i, band) in chart.bands.iter().enumerate() {
        let to = band.to.max(band.from + min_width);
        let drawn = ctx
            .draw_series(std::iter::once(Rectangle::new([(band.from, y0), (to, y1)], shade.filled())))
            .context("bands")?;
        if i == 0 && !chart.band_label.is_empty() {
            drawn
                .label(chart.band_label.as_str())
                .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 16, y + 5)], shade.filled()));
        }
    }
    for (i, series) in chart.series.iter().enumerate() {
        let color = COLORS[i % COLORS.len()];
        let style = ShapeStyle { color: color.to_rgba(), filled: false, stroke_width: 2 };
        let drawn = if series.dashed {
            ctx.draw_series(DashedLineSeries::new(series.points.iter().copied(), 6, 4, style))
                .context("dashed series")?
        } else {
            ctx.draw_series(LineSeries::new(series.points.iter().copied(), style)).context("series")?
        };
        drawn
            .label(series.label.as_str())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 16, y)], color.stroke_width(2)));
    }
    ctx.configure_series_labels()
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .position(SeriesLabelPosition::UpperRight)
        .draw()
        .context("legend")?;
    Ok(())
}

/// One labelled point of a scatter chart.
#[derive(Debug, Clone)]
pub struct LabelledPoint {
    /// X value.
    pub x: f64,
    /// Y value.
    pub y: f64,
    /// Label drawn beside the point.
    pub label: String,
}

/// Renders a scatter chart with one labelled point per setting.
pub fn render_scatter(title: &str, x_label: &str, y_label: &str, points: &[LabelledPoint], path: &Path) -> Result<()> {
    let root = SVGBackend::new(path, (960, 620)).into_drawing_area();
    root.fill(&WHITE).context("chart background")?;
    let chart = LineChart {
        title: title.into(),
        x_label: x_label.into(),
        y_label: y_label.into(),
        series: vec![Series {
            label: String::new(),
            points: points.iter().map(|p| (p.x, p.y)).collect(),
            dashed: false,
        }],
        bands: Vec::new(),
        band_label: String::new(),
        band_rgb: (200, 200, 200),
        log_y: false,
        y_floor: None,
    };
    let (x0, x1, y0, y1) = bounds(&chart);
    let pad = (x1 - x0) * 0.08;
    let mut ctx = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 22))
        .margin(16)
        .x_label_area_size(48)
        .y_label_area_size(72)
        .build_cartesian_2d((x0 - pad)..(x1 + pad * 3.0), y0..y1)
        .context("chart axes")?;
    ctx.configure_mesh().x_desc(x_label).y_desc(y_label).draw().context("chart mesh")?;
    ctx.draw_series(points.iter().map(|p| Circle::new((p.x, p.y), 5, COLORS[0].filled()))).context("points")?;
    // Labels sit beside their point, staggered vertically so neighbours in a cluster stay legible.
    const STAGGER_PX: [i32; 5] = [-14, 2, 18, -30, 34];
    ctx.draw_series(points.iter().enumerate().map(|(i, p)| {
        EmptyElement::at((p.x, p.y))
            + Text::new(p.label.clone(), (8, STAGGER_PX[i % STAGGER_PX.len()]), ("sans-serif", 13).into_font())
    }))
    .context("labels")?;
    root.present().with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn charts_are_svg_with_title_axes_and_legend() {
        let dir = std::env::temp_dir().join(format!("fvd-chart-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("c.svg");
        let chart = LineChart {
            title: "Read latency over time".into(),
            x_label: "simulated time (s)".into(),
            y_label: "latency (µs)".into(),
            series: vec![
                Series { label: "p50".into(), points: vec![(0.0, 10.0), (1.0, 12.0)], dashed: false },
                Series { label: "threshold".into(), points: vec![(0.0, 20.0), (1.0, 20.0)], dashed: true },
            ],
            bands: vec![Band { from: 0.2, to: 0.4 }],
            band_label: "paused".into(),
            band_rgb: (200, 200, 200),
            log_y: true,
            y_floor: Some(1.0),
        };
        render_line_chart(&chart, &path).unwrap();
        let svg = std::fs::read_to_string(&path).unwrap();
        assert!(svg.starts_with("<svg"));
        for text in ["Read latency over time", "simulated time (s)", "latency (µs)", "p50", "threshold", "paused"] {
            assert!(svg.contains(text), "missing {text:?}");
        }
        let scatter = dir.join("s.svg");
        render_scatter(
            "Trade-off",
            "time to finish (s)",
            "p99 inflation (%)",
            &[LabelledPoint { x: 1.0, y: 2.0, label: "alpha=0.8".into() }],
            &scatter,
        )
        .unwrap();
        assert!(std::fs::read_to_string(&scatter).unwrap().contains("alpha=0.8"));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
