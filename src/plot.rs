//! Pictures of an experiment's results, as SVG drawn with plotters' SVG backend: per metric, a
//! learning curve per group (the mean over its seeds at each logged step, with a band of ± one
//! standard deviation), or, across a sweep key, each group's final value against the swept value
//! (what the trend claims judge).
//!
//! The figures are built from the files the runs wrote (`metrics.csv`, `summary.csv`) and only
//! from the runs that ended `ok`, as the tables are; the same results give the same bytes.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};
use plotters::prelude::*;

use crate::fsutil::write_atomic;
use crate::report::Experiment;
use crate::runner::read_summary;

/// One line of a figure: (x, mean, standard deviation, runs) per point, in x order.
#[derive(Debug, Clone, PartialEq)]
pub struct Series {
    pub label: String,
    pub points: Vec<(f64, f64, f64, usize)>,
}

/// What one SVG shows.
#[derive(Debug, Clone)]
pub struct Figure {
    pub title: String,
    pub x_label: String,
    pub y_label: String,
    pub series: Vec<Series>,
    /// Names for integer x positions (a sweep over non-numeric values), else the numbers.
    pub x_names: Option<Vec<String>>,
    /// x is drawn as log10 (a sweep over positive values spanning a factor ≥ 20).
    pub log_x: bool,
}

/// One run's logged metrics: metric → (step, value) in the order they were logged.
pub type RunCurves = BTreeMap<String, Vec<(f64, f64)>>;

/// Reads a run's `metrics.csv` (long format `step,metric,value`).
pub fn read_metrics(run_dir: &Path) -> Result<RunCurves> {
    let path = run_dir.join("metrics.csv");
    let mut reader = csv::Reader::from_path(&path).with_context(|| format!("cannot read {}", path.display()))?;
    let mut out: RunCurves = BTreeMap::new();
    for (line, record) in reader.records().enumerate() {
        let record = record.with_context(|| format!("{}: row {}", path.display(), line + 2))?;
        let (Some(step), Some(metric), Some(value)) = (record.get(0), record.get(1), record.get(2)) else {
            bail!("{}: row {} does not have the three columns step,metric,value", path.display(), line + 2);
        };
        let (Ok(step), Ok(value)) = (step.parse::<f64>(), value.parse::<f64>()) else { continue };
        out.entry(metric.to_string()).or_default().push((step, value));
    }
    Ok(out)
}

/// The curves of every `ok` run of an experiment, by group, in the experiment's group order.
pub struct ExperimentCurves {
    pub groups: Vec<(String, Vec<RunCurves>)>,
}

impl ExperimentCurves {
    pub fn load(exp_dir: &Path, exp: &Experiment) -> Result<Self> {
        let mut groups: Vec<(String, Vec<RunCurves>)> = exp.groups.iter().map(|g| (g.clone(), vec![])).collect();
        for (id, group) in &exp.runs {
            let dir = exp_dir.join("runs").join(id);
            let ok = read_summary(&dir).ok().and_then(|s| s.get("status").cloned()).is_some_and(|s| s == "ok");
            if !ok {
                continue;
            }
            let curves = read_metrics(&dir)?;
            if let Some((_, runs)) = groups.iter_mut().find(|(g, _)| g == group) {
                runs.push(curves);
            }
        }
        Ok(ExperimentCurves { groups })
    }

    /// Metrics logged at two or more steps by some run: the ones that have a curve.
    pub fn curve_metrics(&self) -> BTreeSet<String> {
        let mut out = BTreeSet::new();
        for (_, runs) in &self.groups {
            for run in runs {
                for (metric, points) in run {
                    if points.iter().map(|p| p.0.to_bits()).collect::<BTreeSet<_>>().len() >= 2 {
                        out.insert(metric.clone());
                    }
                }
            }
        }
        out
    }

    /// Per group, `metric`'s mean and standard deviation over its runs at each step any run
    /// logged (with the number of runs that logged it).
    pub fn step_series(&self, metric: &str) -> Vec<Series> {
        let mut out = vec![];
        for (group, runs) in &self.groups {
            let mut at: BTreeMap<u64, (f64, Vec<f64>)> = BTreeMap::new();
            for run in runs {
                for &(step, value) in run.get(metric).map(Vec::as_slice).unwrap_or_default() {
                    at.entry(ordered_key(step)).or_insert((step, vec![])).1.push(value);
                }
            }
            if at.is_empty() {
                continue;
            }
            let points = at.into_values().map(|(step, values)| point(step, &values)).collect();
            out.push(Series { label: format!("{group} (n={})", runs.len()), points });
        }
        out
    }
}

/// Per line (a variant with the other sweep keys fixed), each group's final `metric` against the
/// value of sweep key `key`: mean and standard deviation over the group's `ok` runs.
pub fn sweep_series(exp_dir: &Path, exp: &Experiment, metric: &str, key: &str) -> Result<(Vec<Series>, Option<Vec<String>>)> {
    if !exp.points.iter().any(|p| p.sweep.iter().any(|(k, _)| k == key)) {
        let keys: BTreeSet<&str> = exp.points.iter().flat_map(|p| p.sweep.iter().map(|(k, _)| k.as_str())).collect();
        bail!(
            "`--x {key}`: `{key}` is not swept in {} (swept keys: {}; or `--x step` for curves over steps)",
            exp_dir.display(),
            if keys.is_empty() { "none".to_string() } else { keys.into_iter().collect::<Vec<_>>().join(", ") }
        );
    }
    let mut finals: BTreeMap<&str, Vec<f64>> = BTreeMap::new();
    for (id, group) in &exp.runs {
        let Ok(summary) = read_summary(&exp_dir.join("runs").join(id)) else { continue };
        if summary.get("status").map(String::as_str) != Some("ok") {
            continue;
        }
        if let Some(v) = summary.get(metric).and_then(|v| v.parse::<f64>().ok()) {
            finals.entry(group.as_str()).or_default().push(v);
        }
    }
    // Line label → (raw x, values), in the order the groups come.
    let mut lines: Vec<(String, Vec<(String, Vec<f64>)>)> = vec![];
    for p in &exp.points {
        let Some((_, x)) = p.sweep.iter().find(|(k, _)| k == key) else { continue };
        let Some(values) = finals.get(p.group.as_str()) else { continue };
        let others: Vec<String> = p.sweep.iter().filter(|(k, _)| k != key).map(|(k, v)| format!("{k}={v}")).collect();
        let label = if others.is_empty() { p.variant.clone() } else { format!("{} {}", p.variant, others.join(",")) };
        match lines.iter_mut().find(|(l, _)| *l == label) {
            Some((_, xs)) => xs.push((x.clone(), values.clone())),
            None => lines.push((label, vec![(x.clone(), values.clone())])),
        }
    }
    let raw: Vec<&String> = lines.iter().flat_map(|(_, xs)| xs.iter().map(|(x, _)| x)).collect();
    let numeric = raw.iter().all(|x| x.parse::<f64>().is_ok_and(f64::is_finite));
    let names: Option<Vec<String>> = (!numeric).then(|| {
        let mut seen = vec![];
        for x in &raw {
            if !seen.contains(*x) {
                seen.push((*x).clone());
            }
        }
        seen
    });
    let position = |x: &str| match &names {
        Some(names) => names.iter().position(|n| n == x).unwrap_or(0) as f64,
        None => x.parse::<f64>().unwrap_or(f64::NAN),
    };
    let series = lines
        .into_iter()
        .map(|(label, xs)| {
            let mut points: Vec<_> = xs.iter().map(|(x, values)| point(position(x), values)).collect();
            points.sort_by(|a, b| a.0.total_cmp(&b.0));
            Series { label, points }
        })
        .collect();
    Ok((series, names))
}

fn ordered_key(x: f64) -> u64 {
    // Order-preserving bits of an f64 (steps are finite), so a BTreeMap sorts by value.
    let bits = x.to_bits();
    if bits >> 63 == 1 {
        !bits
    } else {
        bits | (1 << 63)
    }
}

fn point(x: f64, values: &[f64]) -> (f64, f64, f64, usize) {
    let (mean, sd) = crate::report::mean_std(values);
    (x, mean, sd, values.len())
}

/// An axis tick: whole numbers as such, others in four significant digits without trailing zeros.
fn tick_label(x: f64) -> String {
    if x == x.round() && x.abs() < 1e7 {
        return format!("{}", x as i64);
    }
    let text = crate::report::fmt_num(x);
    match text.split_once('e') {
        Some((m, e)) if m.contains('.') => format!("{}e{e}", m.trim_end_matches('0').trim_end_matches('.')),
        None if text.contains('.') => text.trim_end_matches('0').trim_end_matches('.').to_string(),
        _ => text,
    }
}

/// Ten distinct colours (matplotlib's tab10), then the palette again.
const COLOURS: [RGBColor; 10] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(127, 127, 127),
    RGBColor(188, 189, 34),
    RGBColor(23, 190, 207),
];

/// The colour of the i-th series.
pub fn colour(i: usize) -> RGBColor {
    COLOURS[i % COLOURS.len()]
}

fn drawing<E: std::error::Error + Send + Sync>(e: DrawingAreaErrorKind<E>) -> anyhow::Error {
    anyhow!("cannot draw the plot: {e}")
}

/// Draws `fig` as an SVG document: the chart on the left, the legend in a strip on the right.
pub fn render_svg(fig: &Figure) -> Result<String> {
    let tx = |x: f64| if fig.log_x { x.log10() } else { x };
    let finite: Vec<(f64, f64, f64)> = fig
        .series
        .iter()
        .flat_map(|s| s.points.iter())
        .filter(|p| tx(p.0).is_finite() && p.1.is_finite())
        .map(|p| (tx(p.0), p.1 - p.2.max(0.0), p.1 + p.2.max(0.0)))
        .collect();
    if finite.is_empty() {
        bail!("`{}`: no finite values to plot", fig.y_label);
    }
    let (mut x0, mut x1) = finite.iter().fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), p| (a.min(p.0), b.max(p.0)));
    let (mut y0, mut y1) = finite.iter().fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), p| (a.min(p.1), b.max(p.2)));
    if x1 <= x0 {
        (x0, x1) = (x0 - 0.5, x1 + 0.5);
    }
    let pad = if y1 > y0 { 0.05 * (y1 - y0) } else { 0.05 * y0.abs().max(1.0) };
    (y0, y1) = (y0 - pad, y1 + pad);
    if fig.x_names.is_some() {
        (x0, x1) = (x0 - 0.25, x1 + 0.25);
    }

    let legend_width = 260;
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (960, 540)).into_drawing_area();
        root.fill(&WHITE).map_err(drawing)?;
        let (chart_area, legend_area) = root.split_horizontally(960 - legend_width);
        let mut chart = ChartBuilder::on(&chart_area)
            .caption(&fig.title, ("sans-serif", 20))
            .margin(12)
            .x_label_area_size(48)
            .y_label_area_size(72)
            .build_cartesian_2d(x0..x1, y0..y1)
            .map_err(drawing)?;
        let names = fig.x_names.clone();
        let log_x = fig.log_x;
        let x_format = move |x: &f64| match &names {
            Some(names) if (x - x.round()).abs() < 1e-9 && x.round() >= 0.0 => names.get(x.round() as usize).cloned().unwrap_or_default(),
            Some(_) => String::new(),
            None if log_x => tick_label(10f64.powf(*x)),
            None => tick_label(*x),
        };
        let y_format = |y: &f64| tick_label(*y);
        let x_desc = if fig.log_x { format!("{} (log scale)", fig.x_label) } else { fig.x_label.clone() };
        let mut mesh = chart.configure_mesh();
        mesh.x_desc(x_desc).y_desc(fig.y_label.as_str()).x_label_formatter(&x_format).y_label_formatter(&y_format).light_line_style(WHITE)
            .label_style(("sans-serif", 13))
            .axis_desc_style(("sans-serif", 15));
        if let Some(names) = &fig.x_names {
            mesh.x_labels(names.len() * 2 + 1);
        }
        mesh.draw().map_err(drawing)?;
        for (i, s) in fig.series.iter().enumerate() {
            let c = colour(i);
            let pts: Vec<(f64, f64, f64)> = s.points.iter().filter(|p| tx(p.0).is_finite() && p.1.is_finite()).map(|p| (tx(p.0), p.1, p.2)).collect();
            if pts.iter().any(|p| p.2 > 0.0) {
                let band: Vec<(f64, f64)> =
                    pts.iter().map(|p| (p.0, p.1 + p.2)).chain(pts.iter().rev().map(|p| (p.0, p.1 - p.2))).collect();
                chart.draw_series(std::iter::once(Polygon::new(band, c.mix(0.18).filled()))).map_err(drawing)?;
            }
            chart.draw_series(LineSeries::new(pts.iter().map(|p| (p.0, p.1)), c.stroke_width(2))).map_err(drawing)?;
            if pts.len() <= 30 {
                chart.draw_series(pts.iter().map(|p| Circle::new((p.0, p.1), 3, c.filled()))).map_err(drawing)?;
            }
        }
        // The legend: a swatch and the label per series, top to bottom.
        let font = ("sans-serif", 14).into_font();
        for (i, s) in fig.series.iter().enumerate() {
            let y = 40 + 22 * i as i32;
            let c = colour(i);
            legend_area.draw(&Rectangle::new([(8, y - 2), (32, y + 2)], c.filled())).map_err(drawing)?;
            let label: String = if s.label.chars().count() > 30 { s.label.chars().take(29).chain(['…']).collect() } else { s.label.clone() };
            legend_area.draw(&Text::new(label, (40, y - 8), font.clone().color(&BLACK))).map_err(drawing)?;
        }
        legend_area
            .draw(&Text::new("band: ± 1 std over seeds", (8, 40 + 22 * fig.series.len() as i32 + 6), ("sans-serif", 12).into_font().color(&BLACK.mix(0.6))))
            .map_err(drawing)?;
        root.present().map_err(drawing)?;
    }
    Ok(svg)
}

/// Which figure `reglab plot` draws: curves over steps, or final values across a sweep key.
#[derive(Debug, Clone, PartialEq)]
pub enum XAxis {
    Step,
    Sweep(String),
}

impl XAxis {
    pub fn parse(text: &str) -> Self {
        if text == "step" {
            XAxis::Step
        } else {
            XAxis::Sweep(text.to_string())
        }
    }
}

/// The figure of `metric` over `x` for one experiment.
pub fn figure(exp_dir: &Path, exp: &Experiment, curves: &ExperimentCurves, metric: &str, x: &XAxis) -> Result<Figure> {
    let (series, x_names, x_label, what) = match x {
        XAxis::Step => (curves.step_series(metric), None, "step".to_string(), "over steps"),
        XAxis::Sweep(key) => {
            let (series, names) = sweep_series(exp_dir, exp, metric, key)?;
            (series, names, key.clone(), "final value across the sweep")
        }
    };
    if series.is_empty() {
        bail!("`{metric}` was not logged by any ok run of {} (see `metrics.csv` of a run for the names)", exp_dir.display());
    }
    let xs: Vec<f64> = series.iter().flat_map(|s| s.points.iter().map(|p| p.0)).collect();
    let (lo, hi) = xs.iter().fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), &x| (a.min(x), b.max(x)));
    let log_x = x_names.is_none() && matches!(x, XAxis::Sweep(_)) && lo > 0.0 && hi / lo >= 20.0;
    Ok(Figure { title: format!("{} — {metric} {what}", exp.name), x_label, y_label: metric.to_string(), series, x_names, log_x })
}

/// The file name of a figure: `<metric>.svg` over steps, `<metric>__vs__<key>.svg` across a key.
pub fn file_name(metric: &str, x: &XAxis) -> String {
    let m = crate::params::sanitize(metric);
    match x {
        XAxis::Step => format!("{m}.svg"),
        XAxis::Sweep(key) => format!("{m}__vs__{}.svg", crate::params::sanitize(key)),
    }
}

/// Writes `fig` to `path` (atomically; parent folders made).
pub fn write_figure(fig: &Figure, path: &Path) -> Result<PathBuf> {
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent).with_context(|| format!("cannot create {}", parent.display()))?;
    }
    write_atomic(path, render_svg(fig)?.as_bytes())?;
    Ok(path.to_path_buf())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn figure_of(series: Vec<Series>) -> Figure {
        Figure { title: "t".into(), x_label: "step".into(), y_label: "acc".into(), series, x_names: None, log_x: false }
    }

    #[test]
    fn tick_labels_drop_trailing_zeros_only() {
        assert_eq!(tick_label(500.0), "500");
        assert_eq!(tick_label(0.9), "0.9");
        assert_eq!(tick_label(0.125), "0.125");
        assert_eq!(tick_label(-2.5), "-2.5");
        assert_eq!(tick_label(2.5e-5), "2.5e-5");
    }

    #[test]
    fn ordered_keys_sort_as_the_numbers() {
        let xs = [-3.5, -1.0, 0.0, 0.5, 2.0, 1e6];
        let keys: Vec<u64> = xs.iter().map(|&x| ordered_key(x)).collect();
        assert!(keys.windows(2).all(|w| w[0] < w[1]), "{keys:?}");
    }

    #[test]
    fn a_series_polyline_holds_one_vertex_per_point_in_data_coordinates() {
        // Two series; the first rises linearly, so its pixels must too (a wrong axis mapping or
        // a dropped point fails this).
        let a = Series { label: "a".into(), points: (0..40).map(|i| (i as f64, i as f64, 0.0, 1)).collect() };
        let b = Series { label: "b".into(), points: (0..40).map(|i| (i as f64, 39.0 - i as f64, 1.0, 2)).collect() };
        let svg = render_svg(&figure_of(vec![a, b])).unwrap();
        let doc = roxmltree::Document::parse(&svg).unwrap();
        let lines: Vec<Vec<(f64, f64)>> = doc
            .descendants()
            .filter(|n| n.has_tag_name("polyline") && n.attribute("stroke") == Some("#1F77B4"))
            .map(|n| {
                n.attribute("points").unwrap().split_whitespace().map(|p| {
                    let (x, y) = p.split_once(',').unwrap();
                    (x.parse().unwrap(), y.parse().unwrap())
                }).collect()
            })
            .collect();
        assert_eq!(lines.len(), 1, "one line in the first colour");
        let pts = &lines[0];
        assert_eq!(pts.len(), 40);
        // Screen y falls as the value rises; equal steps in x and y give equal pixel steps.
        assert!(pts.windows(2).all(|w| w[1].0 > w[0].0 && w[1].1 < w[0].1), "{pts:?}");
        let dx = pts[39].0 - pts[0].0;
        assert!((pts[20].0 - pts[0].0 - dx * 20.0 / 39.0).abs() <= 1.0);
        // The second series has a band (std 1): a filled polygon in its colour.
        assert!(doc.descendants().any(|n| n.has_tag_name("polygon") && n.attribute("fill") == Some("#FF7F0E")));
    }

    #[test]
    fn nothing_finite_is_an_error_not_an_empty_picture() {
        let s = Series { label: "a".into(), points: vec![(0.0, f64::NAN, 0.0, 1)] };
        assert!(render_svg(&figure_of(vec![s])).unwrap_err().to_string().contains("no finite values"));
    }
}
