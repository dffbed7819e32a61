//! The latency plot (PNG): seconds against device count (log scale), one line per series.
//! plotters draws lines, points and the frame into a bitmap and encodes the PNG; text is
//! drawn from the public-domain 8x8 bitmap font (`font8x8`), so no system font is needed.

use std::path::Path;

use plotters::coord::Shift;
use plotters::prelude::*;

use crate::error::{Error, Result};

/// One line of the plot: a label and `(devices, seconds)` points.
#[derive(Clone, Debug)]
pub struct Series {
    /// Legend text.
    pub label: String,
    /// Points, any order.
    pub points: Vec<(f64, f64)>,
}

const COLORS: [RGBColor; 6] = [
    RGBColor(31, 119, 180),
    RGBColor(214, 39, 40),
    RGBColor(44, 160, 44),
    RGBColor(255, 127, 14),
    RGBColor(148, 103, 189),
    RGBColor(23, 190, 207),
];

/// Draws `text` with its top-left corner at `(x, y)`, each font pixel `scale` pixels wide.
fn text<DB: DrawingBackend>(
    area: &DrawingArea<DB, Shift>,
    s: &str,
    (x, y): (i32, i32),
    scale: i32,
    color: &RGBColor,
) {
    for (i, c) in s.chars().enumerate() {
        let code = c as usize;
        let glyph = if code < 128 {
            font8x8::legacy::BASIC_LEGACY[code]
        } else {
            font8x8::legacy::BASIC_LEGACY[b'?' as usize]
        };
        for (row, bits) in glyph.iter().enumerate() {
            for col in 0..8 {
                if bits & (1 << col) != 0 {
                    let px = x + (i as i32 * 8 + col) * scale;
                    let py = y + row as i32 * scale;
                    let _ = area.draw(&Rectangle::new(
                        [(px, py), (px + scale - 1, py + scale - 1)],
                        color.filled(),
                    ));
                }
            }
        }
    }
}

fn fmt_devices(v: f64) -> String {
    if v >= 1000.0 {
        format!("{}k", (v / 1000.0).round())
    } else {
        format!("{v}")
    }
}

/// Writes the plot to `path` (PNG, 960x600).
pub fn latency_plot(path: &Path, title: &str, y_label: &str, series: &[Series]) -> Result<()> {
    let fail = |e: &dyn std::fmt::Display| Error::Plot {
        path: path.display().to_string(),
        message: e.to_string(),
    };
    let points: Vec<(f64, f64)> = series.iter().flat_map(|s| s.points.clone()).collect();
    if points.is_empty() {
        return Err(fail(&"no points to plot"));
    }
    let x_min = points.iter().map(|p| p.0).fold(f64::MAX, f64::min).max(1.0);
    let x_max = points
        .iter()
        .map(|p| p.0)
        .fold(0.0, f64::max)
        .max(x_min * 10.0);
    let y_max = points.iter().map(|p| p.1).fold(0.0, f64::max).max(0.1) * 1.15;
    let (width, height) = (960u32, 600u32);
    let root = BitMapBackend::new(path, (width, height)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| fail(&e))?;
    let (left, right, top, bottom) = (90i32, 30i32, 60i32, 70i32);
    let plot_area = root.margin(top, bottom, left, right);
    let mut chart = ChartBuilder::on(&plot_area)
        .build_cartesian_2d((x_min / 1.5..x_max * 1.5).log_scale(), 0.0..y_max)
        .map_err(|e| fail(&e))?;
    // Grid: vertical lines at each decade and measured x, horizontal at 5 steps.
    let grey = RGBColor(220, 220, 220);
    let mut xs: Vec<f64> = points.iter().map(|p| p.0).collect();
    xs.sort_by(f64::total_cmp);
    xs.dedup();
    for &x in &xs {
        chart
            .draw_series(LineSeries::new([(x, 0.0), (x, y_max)], grey))
            .map_err(|e| fail(&e))?;
        let (px, _) = chart.backend_coord(&(x, 0.0));
        let label = fmt_devices(x);
        text(
            &root,
            &label,
            (px - label.len() as i32 * 8, height as i32 - bottom + 10),
            2,
            &BLACK,
        );
    }
    for i in 0..=5 {
        let y = y_max * f64::from(i) / 5.0;
        chart
            .draw_series(LineSeries::new([(x_min / 1.5, y), (x_max * 1.5, y)], grey))
            .map_err(|e| fail(&e))?;
        let (_, py) = chart.backend_coord(&(x_min, y));
        let label = if y_max < 10.0 {
            format!("{y:.1}")
        } else {
            format!("{y:.0}")
        };
        text(
            &root,
            &label,
            (left - 10 - label.len() as i32 * 16, py - 8),
            2,
            &BLACK,
        );
    }
    // Frame (`backend_coord` gives pixels of the whole image).
    let (x0, y0) = chart.backend_coord(&(x_min / 1.5, 0.0));
    let (x1, y1) = chart.backend_coord(&(x_max * 1.5, y_max));
    root.draw(&Rectangle::new([(x0, y1), (x1, y0)], BLACK.stroke_width(1)))
        .map_err(|e| fail(&e))?;
    for (i, s) in series.iter().enumerate() {
        let color = COLORS[i % COLORS.len()];
        let mut pts = s.points.clone();
        pts.sort_by(|a, b| a.0.total_cmp(&b.0));
        chart
            .draw_series(LineSeries::new(pts.clone(), color.stroke_width(3)))
            .map_err(|e| fail(&e))?;
        chart
            .draw_series(pts.iter().map(|p| Circle::new(*p, 5, color.filled())))
            .map_err(|e| fail(&e))?;
        // Legend, top-left inside the frame.
        let ly = top + 10 + i as i32 * 22;
        root.draw(&Rectangle::new(
            [(left + 14, ly + 4), (left + 34, ly + 10)],
            color.filled(),
        ))
        .map_err(|e| fail(&e))?;
        text(&root, &s.label, (left + 42, ly), 2, &BLACK);
    }
    text(&root, title, (left, 8), 2, &BLACK);
    text(
        &root,
        "devices (log scale)",
        (width as i32 / 2 - 76, height as i32 - 30),
        2,
        &BLACK,
    );
    text(&root, y_label, (8, top - 24), 2, &BLACK);
    root.present().map_err(|e| fail(&e))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_a_png() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("p.png");
        latency_plot(
            &path,
            "apply -> all keys",
            "seconds",
            &[
                Series {
                    label: "10 deployments".into(),
                    points: vec![(1000.0, 0.2), (10000.0, 1.5), (100000.0, 14.0)],
                },
                Series {
                    label: "1000 deployments".into(),
                    points: vec![(1000.0, 0.4), (10000.0, 2.5)],
                },
            ],
        )
        .unwrap();
        let bytes = std::fs::read(&path).unwrap();
        assert_eq!(&bytes[1..4], b"PNG");
        assert!(latency_plot(&path, "t", "s", &[]).is_err());
    }
}
