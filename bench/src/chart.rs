//! The chart: on the left, server throughput against concurrency per protocol with the
//! ceiling as a line; on the right, the latency distribution (p50, p95, p99) of the same runs.

use std::path::Path;

use plotters::{coord::types::RangedCoordf64, prelude::*};
use tesserve_load::render::FONT;

use crate::{Error, Results};

pub fn draw(results: &Results, path: &Path) -> Result<(), Error> {
    // plotters draws text with ab_glyph from a registered font, not the system's fontconfig.
    let font: &'static [u8] = Box::leak(std::fs::read(FONT)?.into_boxed_slice());
    plotters::style::register_font("sans-serif", FontStyle::Normal, font)
        .map_err(|_| "cannot register the chart font")?;

    let ceiling = results
        .ceiling
        .iter()
        .find(|row| row.threads == results.cores)
        .map_or(0.0, |row| row.throughput.median());
    let most = results
        .load
        .iter()
        .map(|row| row.throughput.max())
        .fold(ceiling, f64::max)
        * 1.15;
    let widest = results
        .load
        .iter()
        .map(|r| r.concurrency)
        .max()
        .unwrap_or(1) as f64;

    let root = BitMapBackend::new(path, (1400, 540)).into_drawing_area();
    root.fill(&WHITE)?;
    let (left, right) = root.split_horizontally(760);
    let caption = format!(
        "tesserve throughput, {} cores ({})",
        results.cores, results.commit
    );
    let mut chart = panel(&left, &caption, widest, most, "images / s (median)")?;
    chart
        .draw_series(LineSeries::new(
            [(0.5, ceiling), (widest + 0.5, ceiling)],
            BLACK.stroke_width(2),
        ))?
        .label(format!("raw Tesseract, {} threads", results.cores))
        .legend(|(x, y)| PathElement::new([(x, y), (x + 20, y)], BLACK.stroke_width(2)));
    for (protocol, color) in [("grpc", BLUE), ("rest", RED)] {
        let points: Vec<(f64, f64)> = results
            .load
            .iter()
            .filter(|row| row.protocol == protocol)
            .map(|row| (row.concurrency as f64, row.throughput.median()))
            .collect();
        chart
            .draw_series(LineSeries::new(points.clone(), color.stroke_width(2)))?
            .label(format!("server, {protocol}"))
            .legend(move |(x, y)| PathElement::new([(x, y), (x + 20, y)], color.stroke_width(2)));
        chart.draw_series(
            points
                .into_iter()
                .map(|p| Circle::new(p, 4, color.filled())),
        )?;
    }
    legend(&mut chart, SeriesLabelPosition::LowerRight)?;
    latency(results, &right, widest)?;
    root.present()?;
    Ok(())
}

fn latency(results: &Results, area: &Area<'_>, widest: f64) -> Result<(), Error> {
    let slowest = results
        .load
        .iter()
        .map(|row| row.p99_ms.median())
        .fold(1.0, f64::max)
        * 1.15;
    let mut chart = panel(
        area,
        "latency of right answers",
        widest,
        slowest,
        "ms (median of runs)",
    )?;
    for (protocol, color) in [("grpc", BLUE), ("rest", RED)] {
        let rows: Vec<_> = results
            .load
            .iter()
            .filter(|row| row.protocol == protocol)
            .collect();
        for (quantile, width, pick) in [
            (
                "p50",
                3,
                (|row: &crate::LoadRow| row.p50_ms.median()) as fn(&crate::LoadRow) -> f64,
            ),
            ("p95", 2, |row| row.p95_ms.median()),
            ("p99", 1, |row| row.p99_ms.median()),
        ] {
            let points: Vec<(f64, f64)> = rows
                .iter()
                .map(|row| (row.concurrency as f64, pick(row)))
                .collect();
            chart
                .draw_series(LineSeries::new(points, color.stroke_width(width)))?
                .label(format!("{protocol} {quantile}"))
                .legend(move |(x, y)| {
                    PathElement::new([(x, y), (x + 20, y)], color.stroke_width(width))
                });
        }
    }
    legend(&mut chart, SeriesLabelPosition::UpperLeft)?;
    Ok(())
}

type Area<'b> = DrawingArea<BitMapBackend<'b>, plotters::coord::Shift>;
type Chart<'a, 'b> =
    ChartContext<'a, BitMapBackend<'b>, Cartesian2d<RangedCoordf64, RangedCoordf64>>;

/// One panel with a grid: concurrent clients across, `up` from 0 to `top`.
fn panel<'a, 'b>(
    area: &'a Area<'b>,
    caption: &str,
    widest: f64,
    top: f64,
    up: &str,
) -> Result<Chart<'a, 'b>, Error> {
    let mut chart = ChartBuilder::on(area)
        .caption(caption, ("sans-serif", 22))
        .margin(16)
        .x_label_area_size(44)
        .y_label_area_size(64)
        .build_cartesian_2d(0.5f64..widest + 0.5, 0f64..top)?;
    chart
        .configure_mesh()
        .x_desc("concurrent clients")
        .y_desc(up)
        .label_style(("sans-serif", 14))
        .draw()?;
    Ok(chart)
}

/// The series' names in a box, where they hide the least.
fn legend<'a, 'b: 'a>(
    chart: &mut Chart<'a, 'b>,
    position: SeriesLabelPosition,
) -> Result<(), Error> {
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.9))
        .border_style(BLACK)
        .label_font(("sans-serif", 14))
        .position(position)
        .draw()?;
    Ok(())
}
