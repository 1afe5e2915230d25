//! SVG charts (plotters' SVG backend; text is left to the viewer's fonts,
//! so no font files are needed): line charts, scatter plots, histograms.

use plotters::prelude::*;

/// One named series of `(x, y)` points.
#[derive(Debug, Clone, Default)]
pub struct Series {
    pub name: String,
    pub points: Vec<(f64, f64)>,
    /// Text drawn next to each point (e.g. a steering coefficient); empty
    /// for none, otherwise one per point.
    pub point_labels: Vec<String>,
}

/// Axis titles and the chart title.
#[derive(Debug, Clone, Copy)]
pub struct Labels<'a> {
    pub title: &'a str,
    pub x: &'a str,
    pub y: &'a str,
}

const SIZE: (u32, u32) = (720, 440);

/// Why a chart could not be drawn.
#[derive(Debug, thiserror::Error)]
#[error("cannot draw chart `{title}`: {reason}")]
pub struct PlotError {
    pub title: String,
    pub reason: String,
}

fn err(title: &str) -> impl Fn(String) -> PlotError + '_ {
    move |reason| PlotError {
        title: title.to_string(),
        reason,
    }
}

/// The range of `values` widened by 5% (and to a unit width when flat).
fn padded_range(values: impl Iterator<Item = f64>) -> std::ops::Range<f64> {
    let (mut lo, mut hi) = (f64::INFINITY, f64::NEG_INFINITY);
    for v in values.filter(|v| v.is_finite()) {
        lo = lo.min(v);
        hi = hi.max(v);
    }
    if !lo.is_finite() {
        return 0.0..1.0;
    }
    if hi - lo < 1e-12 {
        return lo - 0.5..hi + 0.5;
    }
    let pad = (hi - lo) * 0.05;
    lo - pad..hi + pad
}

/// Lines (with point markers) or bare points, one colour per series.
fn xy_chart(labels: Labels<'_>, series: &[Series], lines: bool) -> Result<String, PlotError> {
    let e = err(labels.title);
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, SIZE).into_drawing_area();
        root.fill(&WHITE).map_err(|x| e(x.to_string()))?;
        let all = || series.iter().flat_map(|s| s.points.iter());
        let xr = padded_range(all().map(|p| p.0));
        let yr = padded_range(all().map(|p| p.1));
        let mut chart = ChartBuilder::on(&root)
            .caption(labels.title, ("sans-serif", 18))
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(60)
            .build_cartesian_2d(xr, yr)
            .map_err(|x| e(x.to_string()))?;
        chart
            .configure_mesh()
            .x_desc(labels.x)
            .y_desc(labels.y)
            .draw()
            .map_err(|x| e(x.to_string()))?;
        for (i, s) in series.iter().enumerate() {
            let color = Palette99::pick(i).to_rgba();
            let pts = s.points.iter().copied();
            if lines {
                chart
                    .draw_series(LineSeries::new(pts.clone(), color.stroke_width(2)))
                    .map_err(|x| e(x.to_string()))?;
            }
            chart
                .draw_series(s.points.iter().zip(&s.point_labels).map(|(&p, t)| {
                    EmptyElement::at(p) + Text::new(t.clone(), (6, -14), ("sans-serif", 12))
                }))
                .map_err(|x| e(x.to_string()))?;
            chart
                .draw_series(pts.map(|p| Circle::new(p, 3, color.filled())))
                .map_err(|x| e(x.to_string()))?
                .label(s.name.clone())
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 18, y)], color.stroke_width(2))
                });
        }
        if series.len() > 1 || series.iter().any(|s| !s.name.is_empty()) {
            chart
                .configure_series_labels()
                .background_style(WHITE.mix(0.85))
                .border_style(BLACK)
                .position(SeriesLabelPosition::UpperLeft)
                .draw()
                .map_err(|x| e(x.to_string()))?;
        }
        root.present().map_err(|x| e(x.to_string()))?;
    }
    Ok(svg)
}

/// A line chart: one polyline with point markers per series.
pub fn line_chart(labels: Labels<'_>, series: &[Series]) -> Result<String, PlotError> {
    xy_chart(labels, series, true)
}

/// A scatter plot: points only.
pub fn scatter(labels: Labels<'_>, series: &[Series]) -> Result<String, PlotError> {
    xy_chart(labels, series, false)
}

/// Bin counts of `values` over `bins` equal-width bins spanning their range:
/// `(left edges, counts, bin width)`.
pub fn bin(values: &[f64], bins: usize) -> (Vec<f64>, Vec<usize>, f64) {
    let bins = bins.max(1);
    let r = padded_range(values.iter().copied());
    let width = (r.end - r.start) / bins as f64;
    let mut counts = vec![0usize; bins];
    for v in values.iter().filter(|v| v.is_finite()) {
        let k = (((v - r.start) / width) as usize).min(bins - 1);
        counts[k] += 1;
    }
    let edges = (0..bins).map(|k| r.start + k as f64 * width).collect();
    (edges, counts, width)
}

/// A histogram of several groups of values over shared bins (bars of the
/// groups side by side inside each bin), with optional vertical markers
/// (e.g. a filtering threshold).
pub fn histogram(
    labels: Labels<'_>,
    groups: &[(String, Vec<f64>)],
    bins: usize,
    markers: &[(String, f64)],
) -> Result<String, PlotError> {
    let e = err(labels.title);
    let all: Vec<f64> = groups
        .iter()
        .flat_map(|g| g.1.iter().copied())
        .chain(markers.iter().map(|m| m.1))
        .collect();
    let (edges, _, width) = bin(&all, bins);
    let lo = edges.first().copied().unwrap_or(0.0);
    let count_in = |vals: &[f64]| {
        let mut c = vec![0usize; edges.len()];
        for v in vals.iter().filter(|v| v.is_finite()) {
            let k = (((v - lo) / width) as usize).min(edges.len() - 1);
            c[k] += 1;
        }
        c
    };
    let counts: Vec<Vec<usize>> = groups.iter().map(|g| count_in(&g.1)).collect();
    let top = counts.iter().flatten().copied().max().unwrap_or(1).max(1) as f64;
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, SIZE).into_drawing_area();
        root.fill(&WHITE).map_err(|x| e(x.to_string()))?;
        let hi = lo + width * edges.len() as f64;
        let mut chart = ChartBuilder::on(&root)
            .caption(labels.title, ("sans-serif", 18))
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(60)
            .build_cartesian_2d(lo..hi, 0.0..top * 1.1)
            .map_err(|x| e(x.to_string()))?;
        chart
            .configure_mesh()
            .x_desc(labels.x)
            .y_desc(labels.y)
            .draw()
            .map_err(|x| e(x.to_string()))?;
        let n = groups.len().max(1) as f64;
        for (g, (name, _)) in groups.iter().enumerate() {
            let color = Palette99::pick(g).to_rgba();
            let bars = counts[g].iter().enumerate().map(|(k, &c)| {
                let x0 = edges[k] + width * g as f64 / n;
                Rectangle::new([(x0, 0.0), (x0 + width / n, c as f64)], color.filled())
            });
            chart
                .draw_series(bars)
                .map_err(|x| e(x.to_string()))?
                .label(name.clone())
                .legend(move |(x, y)| {
                    Rectangle::new([(x, y - 5), (x + 12, y + 5)], color.filled())
                });
        }
        for (name, x) in markers {
            chart
                .draw_series(LineSeries::new(
                    [(*x, 0.0), (*x, top * 1.1)],
                    BLACK.stroke_width(2),
                ))
                .map_err(|x| e(x.to_string()))?
                .label(name.clone())
                .legend(|(x, y)| {
                    PathElement::new(vec![(x, y), (x + 18, y)], BLACK.stroke_width(2))
                });
        }
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .draw()
            .map_err(|x| e(x.to_string()))?;
        root.present().map_err(|x| e(x.to_string()))?;
    }
    Ok(svg)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bins_cover_every_value() {
        let v = [0.0, 0.1, 0.5, 0.9, 1.0];
        let (edges, counts, w) = bin(&v, 4);
        assert_eq!(counts.iter().sum::<usize>(), 5);
        assert_eq!(edges.len(), 4);
        assert!((edges[0] + 4.0 * w - 1.05).abs() < 1e-9);
    }

    #[test]
    fn charts_are_svg_with_titles_and_legends() {
        let labels = Labels {
            title: "shift per step",
            x: "step",
            y: "shift",
        };
        let s = vec![
            Series {
                name: "vaccine".into(),
                points: vec![(0.0, 0.0), (1.0, -1.0)],
                ..Default::default()
            },
            Series {
                name: "baseline".into(),
                points: vec![(0.0, 0.0), (1.0, 2.0)],
                point_labels: vec!["coef -2".into(), "coef -4".into()],
            },
        ];
        let svg = line_chart(labels, &s).unwrap();
        assert!(svg.starts_with("<svg"), "{}", &svg[..50]);
        for want in [
            "shift per step",
            "vaccine",
            "baseline",
            "<polyline",
            "coef -4",
        ] {
            assert!(svg.contains(want), "missing {want}");
        }
        let h = histogram(
            labels,
            &[("a".into(), vec![1.0, 2.0, 2.5]), ("b".into(), vec![0.5])],
            5,
            &[("threshold".into(), 2.2)],
        )
        .unwrap();
        assert!(h.contains("threshold") && h.contains("<rect"));
    }
}
