//! `compare.svg`: throughput, median and p99 latency against concurrency, one line per model,
//! drawn with `plotters` (SVG backend, no fonts needed). The concurrency axis is logarithmic
//! (the levels grow by powers of two), and so are the latency axes (microseconds to seconds).
//!
//! Every model is one `<polyline>` per panel, in the same colour in all three, with its name in
//! the legend. A level where the model failed is marked with a cross instead of a dot; a level
//! with nothing answered has no point at all.

use std::path::Path;

use plotters::coord::ranged1d::ValueFormatter;
use plotters::prelude::*;

use super::{Comparison, Row};
use crate::error::{Error, Result};

/// One colour per model, in table order (Tableau 10: tells apart in print and for most colour
/// vision deficiencies).
const PALETTE: [RGBColor; 8] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(127, 127, 127),
];

/// A quantity drawn in one panel.
struct Panel {
    title: &'static str,
    axis: &'static str,
    value: fn(&Row) -> f64,
    /// Logarithmic y axis (latency); throughput reads better on a linear axis from zero.
    logarithmic: bool,
}

const PANELS: [Panel; 3] = [
    Panel {
        title: "throughput",
        axis: "requests per second",
        value: |row| row.requests_per_second,
        logarithmic: false,
    },
    Panel {
        title: "median latency",
        axis: "p50 (µs)",
        value: |row| row.p50_us,
        logarithmic: true,
    },
    Panel {
        title: "tail latency",
        axis: "p99 (µs)",
        value: |row| row.p99_us,
        logarithmic: true,
    },
];

/// Draws the comparison as SVG text.
pub fn render_svg(comparison: &Comparison) -> Result<String> {
    let mut svg = String::new();
    draw(comparison, &mut svg)
        .map_err(|error| Error::Tool(format!("drawing the chart: {error}")))?;
    Ok(svg)
}

/// Writes [`render_svg`]'s drawing to `path`.
pub fn write_svg(comparison: &Comparison, path: &Path) -> Result<()> {
    let svg = render_svg(comparison)?;
    std::fs::write(path, svg)
        .map_err(|error| Error::io(format!("writing {}", path.display()), error))
}

fn draw(
    comparison: &Comparison,
    svg: &mut String,
) -> std::result::Result<(), Box<dyn std::error::Error>> {
    let root = SVGBackend::with_string(svg, (1500, 520)).into_drawing_area();
    root.fill(&WHITE)?;
    let subtitle = format!(
        "{}, closed loop; server on CPU {:?}, load on CPU {:?}; \
         × marks a level the model failed (see the table)",
        comparison.requests(),
        comparison.server_cpus,
        comparison.load_cpus
    );
    let root = root.titled(&subtitle, ("sans-serif", 18))?;
    let measured: Vec<&Row> = comparison
        .rows
        .iter()
        .filter(|row| row.measured())
        .collect();
    let max_connections = comparison
        .rows
        .iter()
        .map(|row| row.connections)
        .max()
        .unwrap_or(1) as f64;
    for (index, (area, panel)) in root
        .split_evenly((1, PANELS.len()))
        .iter()
        .zip(&PANELS)
        .enumerate()
    {
        // The legend goes in the first panel only: the colours are the same in all three.
        let legend = index == 0;
        let values = measured
            .iter()
            .map(|row| (panel.value)(row))
            .filter(|v| *v > 0.0);
        let (low, high) = values.fold((f64::MAX, f64::MIN), |(low, high), value| {
            (low.min(value), high.max(value))
        });
        let (low, high) = match (low <= high, panel.logarithmic) {
            (true, true) => (low / 1.5, high * 1.5),
            (true, false) => (0.0, high * 1.1),
            // Nothing measured: an empty panel with a sensible range.
            (false, _) => (1.0, 10.0),
        };
        let x_range = (0.7..max_connections * 1.4).log_scale();
        let mut builder = ChartBuilder::on(area);
        builder
            .caption(panel.title, ("sans-serif", 16))
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(64);
        if panel.logarithmic {
            let chart = builder.build_cartesian_2d(x_range, (low..high).log_scale())?;
            draw_panel(chart, panel, legend, comparison, &measured)
                .map_err(|error| -> Box<dyn std::error::Error> { error.into() })?;
        } else {
            let chart = builder.build_cartesian_2d(x_range, low..high)?;
            draw_panel(chart, panel, legend, comparison, &measured)
                .map_err(|error| -> Box<dyn std::error::Error> { error.into() })?;
        }
    }
    root.present()?;
    Ok(())
}

/// One panel's mesh, one line per model, and (in the first panel) the legend.
fn draw_panel<'a, Y>(
    mut chart: ChartContext<'a, SVGBackend<'a>, Cartesian2d<LogCoord<f64>, Y>>,
    panel: &Panel,
    legend: bool,
    comparison: &Comparison,
    measured: &[&Row],
) -> std::result::Result<(), String>
where
    Y: Ranged<ValueType = f64> + ValueFormatter<f64>,
{
    chart
        .configure_mesh()
        .x_desc("connections")
        .y_desc(panel.axis)
        .x_label_formatter(&|value| compact(*value))
        .y_label_formatter(&|value| compact(*value))
        .light_line_style(TRANSPARENT)
        .draw()
        .map_err(text)?;
    for (index, model) in comparison.models.iter().enumerate() {
        let colour = PALETTE[index % PALETTE.len()];
        let rows: Vec<&Row> = measured
            .iter()
            .copied()
            .filter(|row| &row.model == model && (panel.value)(row) > 0.0)
            .collect();
        let point = |row: &Row| (row.connections as f64, (panel.value)(row));
        chart
            .draw_series(LineSeries::new(
                rows.iter().map(|row| point(row)),
                colour.stroke_width(2),
            ))
            .map_err(text)?
            .label(model.as_str())
            .legend(move |(x, y)| Rectangle::new([(x, y - 4), (x + 14, y + 4)], colour.filled()));
        chart
            .draw_series(
                rows.iter()
                    .filter(|row| row.ok)
                    .map(|row| Circle::new(point(row), 3, colour.filled())),
            )
            .map_err(text)?;
        chart
            .draw_series(
                rows.iter()
                    .filter(|row| !row.ok)
                    .map(|row| Cross::new(point(row), 5, colour.stroke_width(2))),
            )
            .map_err(text)?;
    }
    if legend {
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperLeft)
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK.mix(0.4))
            .draw()
            .map_err(text)?;
    }
    Ok(())
}

/// A drawing error as text (plotters' errors borrow the backend, so they cannot be boxed).
fn text(error: impl std::fmt::Display) -> String {
    error.to_string()
}

/// 1500 as `1.5k`, 2000000 as `2M`: axis labels that fit.
fn compact(value: f64) -> String {
    let (scaled, unit) = if value >= 1e6 {
        (value / 1e6, "M")
    } else if value >= 1e3 {
        (value / 1e3, "k")
    } else {
        (value, "")
    };
    if scaled >= 10.0 || scaled.fract().abs() < 0.05 {
        format!("{scaled:.0}{unit}")
    } else {
        format!("{scaled:.1}{unit}")
    }
}
