//! SVG charts drawn with plotters' SVG backend (no system font libraries: text is emitted as
//! `<text font-family="sans-serif">` and the viewer draws it). Charts render from saved report
//! data, so redrawing needs no rerun.
//!
//! A line chart is 1,000 px wide, the width `index.html` shows it at, with 14 px tick labels so
//! it reads at normal zoom. Its legend sits below the plot area, never on the data; notes
//! (what a floor or a gap means) go under the legend.

use std::path::Path;

use anyhow::{Context, Result};
use plotters::coord::ranged1d::ValueFormatter;
use plotters::prelude::*;

/// Width of a line chart, px (the content width of `index.html`).
pub const CHART_WIDTH: u32 = 1000;
/// Height of a line chart's plot area with its title and axes, px; legend and notes add rows.
const PLOT_HEIGHT: u32 = 480;
/// Text sizes in px as the SVG shows them (see [`font`]).
const TICK_FONT: u32 = 14;
const AXIS_FONT: u32 = 15;
const LEGEND_FONT: u32 = 14;
const NOTE_FONT: u32 = 13;
const TITLE_FONT: u32 = 20;
const LEGEND_ROW: u32 = 24;
const NOTE_ROW: u32 = 20;
/// Legend's first row below the plot area (clear of the x axis label), px.
const LEGEND_TOP: i32 = 20;

/// One line of a line chart.
///
/// A point whose x or y is not finite (`f64::NAN`) breaks the line: the points before and after
/// it are drawn as separate pieces, so a gap in the data is never bridged. A piece of a single
/// point is drawn as a dot.
#[derive(Debug, Clone, Default)]
pub struct Series {
    /// Legend label.
    pub label: String,
    /// `(x, y)` points, x ascending; a non-finite point breaks the line.
    pub points: Vec<(f64, f64)>,
    /// Dashed (for thresholds and reference lines).
    pub dashed: bool,
    /// Dots only, no line (for values that are not a continuous measure).
    pub points_only: bool,
    /// Colour (RGB); `None`: the palette colour of the series' position.
    pub rgb: Option<(u8, u8, u8)>,
    /// Line width, px; 0: 2 px.
    pub width: u32,
}

/// A shaded x interval (pauses, crashes).
#[derive(Debug, Clone, Copy)]
pub struct Band {
    /// Start.
    pub from: f64,
    /// End.
    pub to: f64,
}

/// A vertical line at one x (an event: prefetch finished, a crash). Markers with the same label
/// share one legend entry.
#[derive(Debug, Clone, Default)]
pub struct Marker {
    /// Where.
    pub x: f64,
    /// Legend label.
    pub label: String,
    /// Text written beside the line at the top of the plot, if any.
    pub text: Option<String>,
    /// Colour (RGB).
    pub rgb: (u8, u8, u8),
    /// Dashed line.
    pub dashed: bool,
}

/// How y tick labels are written.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum TickFormat {
    /// Plain numbers without needless decimals (`2.5`, `100`); the axis label names the unit.
    #[default]
    Plain,
    /// Values are microseconds, written in human units: `500 ns`, `20 µs`, `1.5 ms`, `2 s`.
    LatencyUs,
}

/// A line chart: title, axis labels with units, legend, optional shaded bands and markers.
#[derive(Debug, Clone, Default)]
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
    /// Highest y shown (values above are drawn at it: say so in a note); `None`: from the data.
    pub y_max: Option<f64>,
    /// How y tick labels are written.
    pub y_ticks: TickFormat,
    /// Vertical event lines.
    pub markers: Vec<Marker>,
    /// Lines of text under the legend: what a floor, a gap or a unit means.
    pub notes: Vec<String>,
    /// The x axis's range; `None`: from the data (charts that belong together share one).
    pub x_range: Option<(f64, f64)>,
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

fn series_color(chart: &LineChart, i: usize) -> RGBColor {
    match chart.series[i].rgb {
        Some((r, g, b)) => RGBColor(r, g, b),
        None => COLORS[i % COLORS.len()],
    }
}

fn finite(p: &(f64, f64)) -> bool {
    p.0.is_finite() && p.1.is_finite()
}

fn bounds(chart: &LineChart) -> (f64, f64, f64, f64) {
    let points = chart.series.iter().flat_map(|s| s.points.iter()).filter(|p| finite(p));
    let (mut x0, mut x1, mut y0, mut y1) = (f64::MAX, f64::MIN, f64::MAX, f64::MIN);
    for &(x, y) in points {
        x0 = x0.min(x);
        x1 = x1.max(x);
        y0 = y0.min(y);
        y1 = y1.max(y);
    }
    if x0 > x1 {
        return (0.0, 1.0, chart.y_floor.unwrap_or(0.0), chart.y_floor.map_or(1.0, |f| f * 10.0));
    }
    // Events and shaded intervals are part of the picture: the x axis covers them too.
    for x in chart.markers.iter().map(|m| m.x).chain(chart.bands.iter().flat_map(|b| [b.from, b.to])) {
        if x.is_finite() {
            x0 = x0.min(x);
            x1 = x1.max(x);
        }
    }
    if chart.log_y {
        y0 = y0.max(1e-3);
    } else {
        y0 = y0.min(0.0);
    }
    if let Some(floor) = chart.y_floor {
        // On a log axis, from the decade under the lowest value (not a line on the axis; no empty
        // decades), never under the floor.
        y0 = if chart.log_y && y0 > floor { 10f64.powf((y0 / 1.5).log10().floor()).max(floor) } else { floor };
        y1 = y1.max(y0 * 10.0);
    }
    if let Some(ceiling) = chart.y_max {
        y1 = y1.min(ceiling);
    }
    if let Some((from, to)) = chart.x_range {
        x0 = from;
        x1 = to;
    }
    if x1 <= x0 {
        x1 = x0 + 1.0;
    }
    if y1 <= y0 {
        y1 = y0 + 1.0;
    }
    (x0, x1, y0, if chart.log_y { y1 * 1.5 } else { y1 * 1.08 })
}

/// What one legend entry shows beside its label.
#[derive(Debug, Clone, Copy)]
enum Swatch {
    Line { color: RGBColor, dashed: bool, width: u32 },
    Dot(RGBColor),
    Band(RGBColor),
    Marker { color: RGBColor, dashed: bool, light: bool },
}

fn legend_entries(chart: &LineChart) -> Vec<(String, Swatch)> {
    let mut entries = Vec::new();
    for (i, series) in chart.series.iter().enumerate() {
        if series.label.is_empty() || !series.points.iter().any(finite) {
            continue;
        }
        let color = series_color(chart, i);
        let swatch = if series.points_only {
            Swatch::Dot(color)
        } else {
            Swatch::Line { color, dashed: series.dashed, width: series.width.max(2) + 1 }
        };
        entries.push((series.label.clone(), swatch));
    }
    if !chart.bands.is_empty() && !chart.band_label.is_empty() {
        let (r, g, b) = chart.band_rgb;
        entries.push((chart.band_label.clone(), Swatch::Band(RGBColor(r, g, b))));
    }
    let mut seen: Vec<&str> = Vec::new();
    for marker in &chart.markers {
        if marker.label.is_empty() || seen.contains(&marker.label.as_str()) {
            continue;
        }
        seen.push(&marker.label);
        let (r, g, b) = marker.rgb;
        entries.push((
            marker.label.clone(),
            Swatch::Marker { color: RGBColor(r, g, b), dashed: marker.dashed, light: marker.text.is_none() },
        ));
    }
    entries
}

/// Width of `text` at `size` px in a sans-serif font, estimated (no font library here).
fn text_width(text: &str, size: u32) -> i32 {
    (text.chars().count() as f64 * f64::from(size) * 0.5).ceil() as i32
}

/// Flow layout of the legend: `(row, x)` of each entry within `width` px.
fn legend_layout(entries: &[(String, Swatch)], width: i32) -> Vec<(i32, i32)> {
    let (mut row, mut x) = (0, 0);
    let mut at = Vec::new();
    for (label, _) in entries {
        let w = 34 + text_width(label, LEGEND_FONT) + 26;
        if x > 0 && x + w > width {
            row += 1;
            x = 0;
        }
        at.push((row, x));
        x += w;
    }
    at
}

/// A sans-serif font of `px` pixels in the SVG: plotters' SVG backend writes `font-size` as the
/// requested size divided by 1.24, so the request is scaled up by as much.
fn font(px: u32) -> FontDesc<'static> {
    ("sans-serif", f64::from(px) * 1.24).into_font()
}

/// `text` broken into lines of at most `width` px at `size` px (at spaces).
fn wrap(text: &str, size: u32, width: i32) -> Vec<String> {
    let mut lines = Vec::new();
    let mut line = String::new();
    for word in text.split(' ') {
        let candidate = if line.is_empty() { word.to_string() } else { format!("{line} {word}") };
        if !line.is_empty() && text_width(&candidate, size) > width {
            lines.push(std::mem::replace(&mut line, word.to_string()));
        } else {
            line = candidate;
        }
    }
    if !line.is_empty() {
        lines.push(line);
    }
    lines
}

/// Renders `chart` to an SVG file at `path`, [`CHART_WIDTH`] px wide; the height grows with the
/// legend's rows and the notes.
pub fn render_line_chart(chart: &LineChart, path: &Path) -> Result<()> {
    const SIDE: i32 = 24;
    let entries = legend_entries(chart);
    let layout = legend_layout(&entries, CHART_WIDTH as i32 - 2 * SIDE);
    let legend_rows = layout.last().map_or(0, |&(row, _)| row as u32 + 1);
    let notes: Vec<String> =
        chart.notes.iter().flat_map(|note| wrap(note, NOTE_FONT, CHART_WIDTH as i32 - 2 * SIDE)).collect();
    let height = PLOT_HEIGHT + LEGEND_TOP as u32 + legend_rows * LEGEND_ROW + notes.len() as u32 * NOTE_ROW + 8;
    let root = SVGBackend::new(path, (CHART_WIDTH, height)).into_drawing_area();
    root.fill(&WHITE).context("chart background")?;
    let (plot, below) = root.split_vertically(PLOT_HEIGHT);
    let (x0, x1, y0, y1) = bounds(chart);
    let mut builder = ChartBuilder::on(&plot);
    builder
        .caption(chart.title.as_str(), font(TITLE_FONT))
        .margin_top(12)
        .margin_left(SIDE as u32 / 2)
        .margin_right(SIDE as u32)
        .x_label_area_size(52)
        .y_label_area_size(if chart.y_ticks == TickFormat::LatencyUs { 92 } else { 78 });
    if chart.log_y {
        let mut ctx = builder.build_cartesian_2d(x0..x1, (y0..y1).log_scale()).context("chart axes")?;
        draw_all(&mut ctx, chart, y0, y1)?;
    } else {
        let mut ctx = builder.build_cartesian_2d(x0..x1, y0..y1).context("chart axes")?;
        draw_all(&mut ctx, chart, y0, y1)?;
    }
    let legend_font = font(LEGEND_FONT);
    for ((label, swatch), (row, x)) in entries.iter().zip(&layout) {
        let x = SIDE + x;
        let y = LEGEND_TOP + row * LEGEND_ROW as i32;
        let draw = match *swatch {
            Swatch::Line { color, dashed: false, width } => {
                below.draw(&PathElement::new(vec![(x, y), (x + 26, y)], color.stroke_width(width)))
            }
            Swatch::Line { color, dashed: true, width } => {
                below.draw(&PathElement::new(vec![(x, y), (x + 10, y)], color.stroke_width(width))).and_then(|()| {
                    below.draw(&PathElement::new(vec![(x + 16, y), (x + 26, y)], color.stroke_width(width)))
                })
            }
            Swatch::Dot(color) => below.draw(&Circle::new((x + 13, y), 4, color.filled())),
            Swatch::Band(color) => below.draw(&Rectangle::new([(x, y - 7), (x + 26, y + 7)], color.mix(0.35).filled())),
            Swatch::Marker { color, dashed, light } => {
                let style = if light { color.mix(0.6).stroke_width(2) } else { color.stroke_width(2) };
                let (top_end, bottom_start) = if dashed { (y - 2, y + 2) } else { (y, y) };
                below
                    .draw(&PathElement::new(vec![(x + 13, y - 9), (x + 13, top_end)], style))
                    .and_then(|()| below.draw(&PathElement::new(vec![(x + 13, bottom_start), (x + 13, y + 9)], style)))
            }
        };
        draw.context("legend swatch")?;
        below
            .draw(&Text::new(label.as_str(), (x + 34, y - LEGEND_FONT as i32 / 2 - 1), legend_font.clone()))
            .context("legend label")?;
    }
    let note_font = font(NOTE_FONT).color(&RGBColor(80, 80, 80));
    let notes_top = LEGEND_TOP + legend_rows as i32 * LEGEND_ROW as i32;
    for (i, note) in notes.iter().enumerate() {
        below
            .draw(&Text::new(note.as_str(), (SIDE, notes_top + i as i32 * NOTE_ROW as i32), note_font.clone()))
            .context("chart note")?;
    }
    root.present().with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}

/// Tick labels without needless decimals: `100000`, `2.5`, `0.01`.
pub fn format_tick(value: f64) -> String {
    if value.abs() >= 10.0 || value == value.round() {
        format!("{value:.0}")
    } else if value.abs() >= 1.0 {
        format!("{value:.1}")
    } else {
        format!("{value:.2}")
    }
}

/// A latency given in microseconds, in the unit that keeps the number short: `500 ns`,
/// `20 µs`, `1.5 ms`, `2 s`.
pub fn format_latency_us(us: f64) -> String {
    let (value, unit) = if us.abs() >= 1e6 {
        (us / 1e6, "s")
    } else if us.abs() >= 1e3 {
        (us / 1e3, "ms")
    } else if us.abs() >= 1.0 || us == 0.0 {
        (us, "µs")
    } else {
        (us * 1e3, "ns")
    };
    // Trim a float's noise (0.30000000000000004) but keep a real fraction (2.5).
    let rounded = (value * 100.0).round() / 100.0;
    let text = if rounded == rounded.round() { format!("{rounded:.0}") } else { format!("{rounded}") };
    format!("{text} {unit}")
}

/// Splits `points` into pieces at non-finite points.
fn pieces(points: &[(f64, f64)]) -> Vec<Vec<(f64, f64)>> {
    let mut out: Vec<Vec<(f64, f64)>> = vec![Vec::new()];
    for p in points {
        if finite(p) {
            out.last_mut().expect("never empty").push(*p);
        } else if !out.last().expect("never empty").is_empty() {
            out.push(Vec::new());
        }
    }
    out.retain(|piece| !piece.is_empty());
    out
}

/// Draws the mesh (axis labels, ticks), the shaded bands, the markers and the series onto `ctx`,
/// whose y axis is linear or logarithmic.
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
    let y_format = |v: &f64| match chart.y_ticks {
        TickFormat::Plain => format_tick(*v),
        TickFormat::LatencyUs => format_latency_us(*v),
    };
    ctx.configure_mesh()
        .x_desc(chart.x_label.as_str())
        .y_desc(chart.y_label.as_str())
        .x_label_formatter(&|v| format_tick(*v))
        .y_label_formatter(&y_format)
        .label_style(font(TICK_FONT))
        .axis_desc_style(font(AXIS_FONT))
        .bold_line_style(BLACK.mix(0.12))
        .light_line_style(BLACK.mix(0.04))
        .draw()
        .context("chart mesh")?;
    let (r, g, b) = chart.band_rgb;
    let shade = RGBColor(r, g, b).mix(0.35);
    let (x_min, x_max) = {
        let (a, b, _, _) = bounds(chart);
        (a, b)
    };
    // A band is at least 0.4% of the x range wide, so an instant stays visible.
    let min_width = ((x_max - x_min) * 0.004).max(0.0);
    ctx.draw_series(
        chart
            .bands
            .iter()
            .map(|band| Rectangle::new([(band.from, y0), (band.to.max(band.from + min_width), y1)], shade.filled())),
    )
    .context("bands")?;
    let clamp = |p: &(f64, f64)| (p.0, p.1.clamp(y0, y1));
    for (i, series) in chart.series.iter().enumerate() {
        let color = series_color(chart, i);
        let style = ShapeStyle { color: color.to_rgba(), filled: false, stroke_width: series.width.max(1) };
        let style = if series.width == 0 { ShapeStyle { stroke_width: 2, ..style } } else { style };
        if series.points_only {
            ctx.draw_series(
                series.points.iter().filter(|p| finite(p)).map(|p| Circle::new(clamp(p), 3, color.filled())),
            )
            .context("points")?;
            continue;
        }
        for piece in pieces(&series.points) {
            let piece: Vec<(f64, f64)> = piece.iter().map(clamp).collect();
            if piece.len() == 1 {
                ctx.draw_series(std::iter::once(Circle::new(piece[0], 3, color.filled()))).context("dot")?;
            } else if series.dashed {
                ctx.draw_series(DashedLineSeries::new(piece, 6, 4, style)).context("dashed series")?;
            } else {
                ctx.draw_series(LineSeries::new(piece, style)).context("series")?;
            }
        }
    }
    let text_font = font(NOTE_FONT);
    for marker in &chart.markers {
        let (r, g, b) = marker.rgb;
        // An annotated event (start, finish) stands out; repeated ones (crashes) stay light.
        let style = match marker.text {
            Some(_) => ShapeStyle { color: RGBColor(r, g, b).to_rgba(), filled: false, stroke_width: 2 },
            None => ShapeStyle { color: RGBColor(r, g, b).mix(0.45), filled: false, stroke_width: 1 },
        };
        let line = vec![(marker.x, y0), (marker.x, y1)];
        if marker.dashed {
            ctx.draw_series(DashedLineSeries::new(line, 5, 4, style)).context("marker")?;
        } else {
            ctx.draw_series(LineSeries::new(line, style)).context("marker")?;
        }
        if let Some(text) = &marker.text {
            // Written to the right of the line, or to its left near the right edge.
            let right = marker.x < x_min + (x_max - x_min) * 0.7;
            let dx = if right { 6 } else { -6 - text_width(text, NOTE_FONT) };
            ctx.draw_series(std::iter::once(
                EmptyElement::at((marker.x, y1))
                    + Text::new(text.clone(), (dx, 6), text_font.clone().color(&RGBColor(r, g, b))),
            ))
            .context("marker text")?;
        }
    }
    Ok(())
}

/// One point of a trade-off chart.
#[derive(Debug, Clone)]
pub struct TradeoffPoint {
    /// X value.
    pub x: f64,
    /// Y value.
    pub y: f64,
    /// Vertical spread (low, high) drawn as a whisker, if any (over seeds, say).
    pub y_spread: Option<(f64, f64)>,
    /// Short label drawn beside the point (a number a table explains).
    pub label: String,
    /// Group (colour and legend entry), e.g. a policy.
    pub group: String,
}

/// A trade-off chart where lower-left is better on both axes: points coloured by group with
/// short labels, whiskers for their spread, the Pareto front (points no other beats on both
/// axes) joined by a line, and a goal region (`x ≤ goal.0`, `y ≤ goal.1`) shaded.
#[derive(Debug, Clone, Default)]
pub struct TradeoffChart {
    /// Title.
    pub title: String,
    /// X axis label with unit.
    pub x_label: String,
    /// Y axis label with unit.
    pub y_label: String,
    /// The points.
    pub points: Vec<TradeoffPoint>,
    /// The goal region's corner, with its legend label.
    pub goal: Option<(f64, f64, String)>,
}

/// Indices of the points on the Pareto front of `points` (minimising x and y), by x.
pub fn pareto_front(points: &[(f64, f64)]) -> Vec<usize> {
    let mut order: Vec<usize> =
        (0..points.len()).filter(|&i| points[i].0.is_finite() && points[i].1.is_finite()).collect();
    order.sort_by(|&a, &b| points[a].0.total_cmp(&points[b].0).then(points[a].1.total_cmp(&points[b].1)));
    let mut front = Vec::new();
    let mut best_y = f64::INFINITY;
    for i in order {
        if points[i].1 < best_y {
            best_y = points[i].1;
            front.push(i);
        }
    }
    front
}

/// Renders a [`TradeoffChart`].
///
/// Errors: the file cannot be written.
pub fn render_tradeoff(chart: &TradeoffChart, path: &Path) -> Result<()> {
    let root = SVGBackend::new(path, (1100, 700)).into_drawing_area();
    root.fill(&WHITE).context("chart background")?;
    let xy: Vec<(f64, f64)> = chart.points.iter().map(|p| (p.x, p.y)).collect();
    // Outliers would squash the corner that matters: with a goal, the axes stop at 4× its x and
    // 10× its y, and points beyond are drawn hollow at the edge and named in the legend.
    let limit = chart.goal.as_ref().map(|(gx, gy, _)| (gx * 4.0, gy * 10.0));
    let clip = |(x, y): (f64, f64)| limit.map_or((x, y), |(lx, ly)| (x.min(lx), y.min(ly)));
    let beyond: Vec<&TradeoffPoint> =
        chart.points.iter().filter(|p| limit.is_some_and(|(lx, ly)| p.x > lx || p.y > ly)).collect();
    let mut ys: Vec<f64> = chart
        .points
        .iter()
        .flat_map(|p| [p.y, p.y_spread.map_or(p.y, |s| s.0), p.y_spread.map_or(p.y, |s| s.1)])
        .map(|y| clip((0.0, y)).1)
        .collect();
    let mut xs: Vec<f64> = xy.iter().map(|p| clip(*p).0).collect();
    if let Some((gx, gy, _)) = &chart.goal {
        xs.push(*gx);
        ys.push(*gy);
    }
    xs.push(0.0);
    ys.push(0.0);
    let (x0, x1) = xs.iter().filter(|v| v.is_finite()).fold((f64::MAX, f64::MIN), |(a, b), v| (a.min(*v), b.max(*v)));
    let (y0, y1) = ys.iter().filter(|v| v.is_finite()).fold((f64::MAX, f64::MIN), |(a, b), v| (a.min(*v), b.max(*v)));
    let (xpad, ypad) = (((x1 - x0) * 0.03).max(0.05), ((y1 - y0) * 0.05).max(0.5));
    let (x0, y0) = (x0.max(0.0) + xpad, y0 + ypad);
    let mut ctx = ChartBuilder::on(&root)
        .caption(&chart.title, ("sans-serif", 22))
        .margin(20)
        .x_label_area_size(56)
        .y_label_area_size(80)
        .build_cartesian_2d((x0 - xpad)..(x1 + xpad * 2.0), (y0 - ypad)..(y1 + ypad))
        .context("chart axes")?;
    ctx.configure_mesh()
        .x_desc(chart.x_label.as_str())
        .y_desc(chart.y_label.as_str())
        .axis_desc_style(("sans-serif", 17))
        .label_style(("sans-serif", 15))
        .draw()
        .context("chart mesh")?;
    if let Some((gx, gy, label)) = &chart.goal {
        ctx.draw_series(std::iter::once(Rectangle::new(
            [(x0 - xpad, y0 - ypad), (*gx, *gy)],
            RGBColor(60, 170, 90).mix(0.15).filled(),
        )))
        .context("goal region")?
        .label(label.as_str())
        .legend(|(x, y)| Rectangle::new([(x, y - 6), (x + 16, y + 6)], RGBColor(60, 170, 90).mix(0.3).filled()));
    }
    let front: Vec<(f64, f64)> = pareto_front(&xy).into_iter().map(|i| clip(xy[i])).collect();
    if front.len() > 1 {
        ctx.draw_series(LineSeries::new(front.clone(), ShapeStyle::from(&BLACK.mix(0.6)).stroke_width(2)))
            .context("front")?
            .label("Pareto front (no other setting is better on both axes)")
            .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 16, y)], BLACK.mix(0.6).stroke_width(2)));
    }
    let mut groups: Vec<&str> = chart.points.iter().map(|p| p.group.as_str()).collect();
    groups.dedup();
    let mut seen = std::collections::BTreeSet::new();
    groups.retain(|g| seen.insert(*g));
    for (index, group) in groups.iter().enumerate() {
        let colour = COLORS[index % COLORS.len()];
        let members: Vec<&TradeoffPoint> = chart.points.iter().filter(|p| p.group == *group).collect();
        ctx.draw_series(members.iter().filter_map(|p| {
            p.y_spread.map(|(low, high)| {
                PathElement::new(vec![clip((p.x, low)), clip((p.x, high))], colour.mix(0.5).stroke_width(2))
            })
        }))
        .context("whiskers")?;
        ctx.draw_series(members.iter().map(|p| {
            let inside = clip((p.x, p.y)) == (p.x, p.y);
            let style = if inside { colour.filled() } else { colour.stroke_width(2) };
            Circle::new(clip((p.x, p.y)), 6, style)
        }))
        .context("points")?
        .label(*group)
        .legend(move |(x, y)| Circle::new((x + 8, y), 6, colour.filled()));
        // Labels take turns around their point so neighbours in a cluster stay legible.
        const OFFSETS: [(i32, i32); 4] = [(9, -20), (9, 4), (-22, -20), (-22, 4)];
        ctx.draw_series(members.iter().enumerate().map(|(i, p)| {
            EmptyElement::at(clip((p.x, p.y)))
                + Text::new(p.label.clone(), OFFSETS[i % OFFSETS.len()], ("sans-serif", 15).into_font())
        }))
        .context("labels")?;
    }
    if !beyond.is_empty() {
        let names: Vec<String> = beyond.iter().map(|p| format!("{} ({:.1}, {:.0})", p.label, p.x, p.y)).collect();
        ctx.draw_series(std::iter::empty::<Circle<(f64, f64), i32>>())
            .context("outliers")?
            .label(format!("hollow: beyond the axes, drawn at the edge: {}", names.join(", ")))
            .legend(|(x, y)| Circle::new((x + 8, y), 6, BLACK.stroke_width(2)));
    }
    ctx.configure_series_labels()
        .position(SeriesLabelPosition::UpperRight)
        .background_style(WHITE.mix(0.9))
        .border_style(BLACK.mix(0.3))
        .label_font(("sans-serif", 15))
        .draw()
        .context("legend")?;
    root.present().with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_pareto_front_keeps_only_points_no_other_beats_on_both_axes() {
        let points = [(1.0, 50.0), (2.0, 10.0), (3.0, 20.0), (1.5, 60.0), (4.0, 5.0), (f64::NAN, 0.0)];
        assert_eq!(pareto_front(&points), vec![0, 1, 4]);
        assert!(pareto_front(&[]).is_empty());
    }

    fn temp_dir(name: &str) -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("fvd-chart-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    /// The `points` attributes of the polylines drawn with `stroke` at `width` px.
    fn polylines(svg: &str, stroke: &str, width: u32) -> Vec<String> {
        svg.split("<polyline")
            .skip(1)
            .filter(|tag| {
                let tag = &tag[..tag.find("/>").unwrap()];
                tag.contains(&format!("stroke=\"{stroke}\"")) && tag.contains(&format!("stroke-width=\"{width}\""))
            })
            .map(|tag| tag.split("points=\"").nth(1).unwrap().split('"').next().unwrap().to_string())
            .collect()
    }

    /// True if a `<text>` element says exactly `content` (plotters writes it on a line of its own).
    fn has_text(svg: &str, content: &str) -> bool {
        svg.contains(&format!(">\n{content}\n</text>"))
    }

    /// The y coordinate of the `<text>` element whose content is `content`.
    fn text_y(svg: &str, content: &str) -> f64 {
        let end = svg.find(&format!(">\n{content}\n</text>")).unwrap_or_else(|| panic!("no text {content:?}"));
        let tag = &svg[svg[..end].rfind("<text").unwrap()..end];
        tag.split(" y=\"").nth(1).unwrap().split('"').next().unwrap().parse().unwrap()
    }

    #[test]
    fn charts_are_svg_with_title_axes_legend_markers_and_notes() {
        let dir = temp_dir("basic");
        let path = dir.join("c.svg");
        let chart = LineChart {
            title: "Read latency over time".into(),
            x_label: "simulated time (s)".into(),
            y_label: "latency (log scale)".into(),
            series: vec![
                Series { label: "p50".into(), points: vec![(0.0, 10.0), (1.0, 12.0)], ..Series::default() },
                Series {
                    label: "threshold".into(),
                    points: vec![(0.0, 20.0), (1.0, 20.0)],
                    dashed: true,
                    ..Series::default()
                },
            ],
            bands: vec![Band { from: 0.2, to: 0.4 }],
            band_label: "paused".into(),
            band_rgb: (200, 200, 200),
            log_y: true,
            y_floor: Some(1.0),
            y_max: None,
            y_ticks: TickFormat::LatencyUs,
            markers: vec![Marker {
                x: 0.8,
                label: "finished".into(),
                text: Some("finished at 0.8 s".into()),
                rgb: (0, 128, 0),
                dashed: false,
            }],
            notes: vec!["a note under the legend".into()],
            x_range: None,
        };
        render_line_chart(&chart, &path).unwrap();
        let svg = std::fs::read_to_string(&path).unwrap();
        assert!(svg.starts_with("<svg"));
        assert!(svg.contains(&format!("width=\"{CHART_WIDTH}\"")));
        for text in [
            "Read latency over time",
            "simulated time (s)",
            "latency (log scale)",
            "p50",
            "threshold",
            "paused",
            "finished",
            "finished at 0.8 s",
            "a note under the legend",
        ] {
            assert!(has_text(&svg, text), "missing {text:?}");
        }
        // The legend and the notes sit below the plot area, not on the data.
        for text in ["p50", "threshold", "paused", "finished", "a note under the legend"] {
            assert!(text_y(&svg, text) > f64::from(PLOT_HEIGHT), "{text:?} is inside the plot area");
        }
        assert!(text_y(&svg, "a note under the legend") > text_y(&svg, "p50"));
        // Tick labels in human units, 14 px.
        assert!(has_text(&svg, "10 µs"), "{svg}");
        // 14 px tick labels (within rounding).
        assert!(svg.contains("font-size=\"14\""), "{svg}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_tradeoff_chart_shows_groups_the_front_the_goal_and_names_what_lies_beyond_its_axes() {
        let dir = temp_dir("tradeoff");
        let path = dir.join("t.svg");
        let point = |x: f64, y: f64, label: &str, group: &str| TradeoffPoint {
            x,
            y,
            y_spread: Some((y - 1.0, y + 1.0)),
            label: label.into(),
            group: group.into(),
        };
        let chart = TradeoffChart {
            title: "Trade-off".into(),
            x_label: "finish ratio".into(),
            y_label: "p99 inflation (%)".into(),
            points: vec![point(1.2, 30.0, "1", "v1"), point(2.0, 4.0, "2", "AIMD"), point(15.0, 27.0, "3", "v1")],
            goal: Some((1.5, 10.0, "goal".into())),
        };
        render_tradeoff(&chart, &path).unwrap();
        let svg = std::fs::read_to_string(&path).unwrap();
        for text in ["1", "2", "3", "v1", "AIMD", "goal", "Pareto front (no other setting is better on both axes)"] {
            assert!(has_text(&svg, text), "missing {text:?}");
        }
        // Point 3 lies beyond 4x the goal's finish ratio: drawn at the edge and named.
        assert!(has_text(&svg, "hollow: beyond the axes, drawn at the edge: 3 (15.0, 27)"), "{svg}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_gap_breaks_the_line_and_a_lone_point_is_a_dot() {
        let dir = temp_dir("gap");
        let line = |points: Vec<(f64, f64)>| LineChart {
            title: "gaps".into(),
            series: vec![Series { label: "p50".into(), points, rgb: Some((1, 2, 3)), ..Series::default() }],
            ..LineChart::default()
        };
        let path = dir.join("whole.svg");
        render_line_chart(&line(vec![(0.0, 1.0), (1.0, 2.0), (2.0, 3.0), (3.0, 2.0)]), &path).unwrap();
        let svg = std::fs::read_to_string(&path).unwrap();
        assert_eq!(polylines(&svg, "#010203", 2).len(), 1, "no gap: one line");

        let gap = vec![
            (0.0, 1.0),
            (1.0, 2.0),
            (f64::NAN, f64::NAN),
            (5.0, 3.0),
            (6.0, 2.0),
            (f64::NAN, f64::NAN),
            (9.0, 1.0),
        ];
        render_line_chart(&line(gap), &path).unwrap();
        let svg = std::fs::read_to_string(&path).unwrap();
        let pieces = polylines(&svg, "#010203", 2);
        assert_eq!(pieces.len(), 2, "a line on each side of the gap: {pieces:?}");
        for piece in &pieces {
            assert_eq!(piece.split_whitespace().count(), 2, "each piece has its own two points: {piece}");
        }
        // The point at x = 9 stands alone: a dot, not a line to x = 6.
        assert_eq!(svg.matches("<circle").filter(|_| true).count(), 1, "{svg}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn latency_ticks_are_in_human_units() {
        assert_eq!(format_latency_us(1.0), "1 µs");
        assert_eq!(format_latency_us(0.5), "500 ns");
        assert_eq!(format_latency_us(250.0), "250 µs");
        assert_eq!(format_latency_us(1_000.0), "1 ms");
        assert_eq!(format_latency_us(2_500.0), "2.5 ms");
        assert_eq!(format_latency_us(100_000.0), "100 ms");
        assert_eq!(format_latency_us(1_000_000.0), "1 s");
        assert_eq!(format_latency_us(0.3 * 1e6), "300 ms");
        let dir = temp_dir("ticks");
        let path = dir.join("t.svg");
        let chart = LineChart {
            series: vec![Series {
                label: "p99".into(),
                points: vec![(0.0, 5.0), (1.0, 2_000_000.0)],
                ..Series::default()
            }],
            log_y: true,
            y_floor: Some(1.0),
            y_ticks: TickFormat::LatencyUs,
            ..LineChart::default()
        };
        render_line_chart(&chart, &path).unwrap();
        let svg = std::fs::read_to_string(&path).unwrap();
        for tick in ["1 µs", "1 ms", "1 s"] {
            assert!(has_text(&svg, tick), "no tick {tick:?}");
        }
        for raw in ["1000", "1000000", "100000"] {
            assert!(!has_text(&svg, raw), "raw tick {raw}");
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
