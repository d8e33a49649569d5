//! Reports: gathers every run's summary of an experiment into `summary.csv` and `table.md`
//! (variants × final metrics, mean ± std over seeds, n of runs; the claimed metrics first), checks
//! the spec's claims, draws the curves (`plots/*.svg`) and writes all of it into one `report.html`.
//!
//! A cell with no value says why — no run yet, failed, diverged, interrupted — never a blank.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

use crate::fsutil::{csv_bytes, write_atomic};
use crate::runner::{read_summary, SUMMARY_HEAD};
use crate::spec::{trend_groups, trend_name, Claim, GroupPoint, Trend};

/// What `run` records about an experiment so `report` knows the planned runs and the claims.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Experiment {
    pub name: String,
    pub paper: String,
    pub title: String,
    pub arxiv: String,
    pub spec_file: String,
    pub groups: Vec<String>,
    /// (run id, group), in expansion order.
    pub runs: Vec<(String, String)>,
    pub claims: Vec<Claim>,
    /// Each group's variant and sweep point, for trend claims (absent in files from before them).
    #[serde(default)]
    pub points: Vec<GroupPoint>,
}

pub const EXPERIMENT_FILE: &str = "experiment.json";

impl Experiment {
    pub fn write(&self, exp_dir: &Path) -> Result<()> {
        write_atomic(&exp_dir.join(EXPERIMENT_FILE), serde_json::to_string_pretty(self)?.as_bytes())
    }

    fn read(exp_dir: &Path) -> Result<Self> {
        let path = exp_dir.join(EXPERIMENT_FILE);
        let bytes = std::fs::read(&path).with_context(|| format!("cannot read {}", path.display()))?;
        serde_json::from_slice(&bytes).with_context(|| format!("{} is not a reglab experiment file", path.display()))
    }
}

/// A claim's verdict.
#[derive(Debug, Clone, PartialEq)]
pub struct ClaimResult {
    pub text: String,
    pub measured: String,
    pub pass: Option<bool>,
    /// A check that holds by construction (the spec's `check: true`), shown apart from the claims.
    pub check: bool,
}

/// The report of one experiment directory.
#[derive(Debug)]
pub struct Report {
    pub markdown: String,
    pub claims: Vec<ClaimResult>,
    /// The figures written under `plots/`.
    pub plots: Vec<PathBuf>,
    /// `report.html`: the tables, claims and figures in one self-contained file.
    pub html: PathBuf,
}

impl Report {
    pub fn all_pass(&self) -> bool {
        self.claims.iter().all(|c| c.pass == Some(true))
    }
}

/// Experiment directories under `path`: itself if it holds `experiment.json` or `runs/`, else
/// its children that do.
pub fn find_experiments(path: &Path) -> Result<Vec<PathBuf>> {
    let is_exp = |p: &Path| p.join(EXPERIMENT_FILE).exists() || p.join("runs").is_dir();
    if is_exp(path) {
        return Ok(vec![path.to_path_buf()]);
    }
    let entries = std::fs::read_dir(path)
        .with_context(|| format!("cannot read results directory `{}` (run a spec first, or check the path)", path.display()))?;
    let mut out: Vec<PathBuf> = entries.filter_map(|e| e.ok().map(|e| e.path())).filter(|p| is_exp(p)).collect();
    out.sort();
    if out.is_empty() {
        bail!("`{}` holds no experiment results (no experiment.json or runs/ in it or its subdirectories)", path.display());
    }
    Ok(out)
}

struct Row {
    group: String,
    fields: BTreeMap<String, String>,
}

/// Every run's summary row that exists, in the experiment's run order.
fn read_rows(exp_dir: &Path, exp: &Experiment) -> Vec<Row> {
    exp.runs
        .iter()
        .filter_map(|(id, group)| read_summary(&exp_dir.join("runs").join(id)).ok().map(|fields| Row { group: group.clone(), fields }))
        .collect()
}

/// An experiment's final values, summarised per group, for comparing two result directories.
pub struct Finals {
    pub exp: Experiment,
    /// group → metric → (mean, standard deviation, runs ok) over the group's ok runs.
    pub by_group: BTreeMap<String, BTreeMap<String, (f64, f64, usize)>>,
    /// The claims' verdicts and measurements.
    pub claims: Vec<ClaimResult>,
}

/// Reads an experiment's summaries without writing anything.
pub fn finals(exp_dir: &Path) -> Result<Finals> {
    let exp = load_experiment(exp_dir)?;
    let rows = read_rows(exp_dir, &exp);
    let planned: BTreeMap<&str, usize> = exp.runs.iter().fold(BTreeMap::new(), |mut m, (_, g)| {
        *m.entry(g.as_str()).or_default() += 1;
        m
    });
    let stats = group_stats(&rows);
    let by_group = stats
        .iter()
        .map(|(g, s)| {
            let metrics = s.values.iter().map(|(m, xs)| {
                let (mean, sd) = mean_std(xs);
                (m.clone(), (mean, sd, xs.len()))
            });
            (g.to_string(), metrics.collect())
        })
        .collect();
    let claims = exp.claims.iter().map(|c| evaluate(c, &stats, &planned, &exp.points)).collect();
    Ok(Finals { by_group, claims, exp })
}

/// Builds the report of one experiment, writes `summary.csv` and `table.md`, and returns it.
pub fn report(exp_dir: &Path) -> Result<Report> {
    let exp = load_experiment(exp_dir)?;
    let rows = read_rows(exp_dir, &exp);
    write_summary(exp_dir, &rows)?;

    let found: BTreeSet<String> = rows
        .iter()
        .flat_map(|r| r.fields.keys().filter(|k| !SUMMARY_HEAD.contains(&k.as_str()) && !k.starts_with("sweep.")).cloned())
        .collect();
    // The metrics the claims name lead, in the claims' order; then the rest.
    let mut metrics: Vec<String> = vec![];
    for c in &exp.claims {
        if found.contains(&c.metric) && !metrics.contains(&c.metric) {
            metrics.push(c.metric.clone());
        }
    }
    let claimed = metrics.len();
    metrics.extend(found.iter().filter(|m| !metrics.contains(m)).cloned().collect::<Vec<_>>());
    let planned: BTreeMap<&str, usize> = exp.runs.iter().fold(BTreeMap::new(), |mut m, (_, g)| {
        *m.entry(g.as_str()).or_default() += 1;
        m
    });
    let stats = group_stats(&rows);

    let mut header = vec!["variant".to_string(), "n".to_string()];
    header.extend(metrics.iter().cloned());
    let body: Vec<Vec<String>> = exp
        .groups
        .iter()
        .map(|group| {
            let s = stats.get(group.as_str());
            let n_ok = s.map_or(0, |s| s.ok);
            let mut cells = vec![group.clone(), format!("{n_ok}/{}", planned.get(group.as_str()).copied().unwrap_or(0))];
            cells.extend(metrics.iter().map(|m| cell(s, m)));
            cells
        })
        .collect();
    let claims: Vec<ClaimResult> = exp.claims.iter().map(|c| evaluate(c, &stats, &planned, &exp.points)).collect();
    let plots = write_plots(exp_dir, &exp, &claim_metric_order(&exp));
    let page = Page { exp: &exp, header, body, claimed, claims: &claims, plots: &plots };
    let md = page.markdown();
    write_atomic(&exp_dir.join("table.md"), md.as_bytes())?;
    write_atomic(&exp_dir.join(HTML_FILE), page.html().as_bytes())?;
    Ok(Report { markdown: md, claims, plots: plots.iter().map(|p| exp_dir.join(&p.file)).collect(), html: exp_dir.join(HTML_FILE) })
}

/// The self-contained page `report` writes beside `table.md`.
pub const HTML_FILE: &str = "report.html";
/// The folder of the figures, beside `table.md`.
pub const PLOTS_DIR: &str = "plots";

/// The metrics the claims name, in order, each once.
fn claim_metric_order(exp: &Experiment) -> Vec<String> {
    let mut out: Vec<String> = vec![];
    for c in &exp.claims {
        if !out.contains(&c.metric) {
            out.push(c.metric.clone());
        }
    }
    out
}

/// A figure written under `plots/`: what it shows, its path relative to the experiment, its SVG.
struct Plot {
    title: String,
    file: String,
    svg: String,
}

/// Draws the learning curve of every metric logged over steps (claimed metrics first) and, for
/// every trend claim, its metric against the swept key. A figure that cannot be drawn is
/// reported on stderr and left out; the tables do not depend on it.
fn write_plots(exp_dir: &Path, exp: &Experiment, claimed: &[String]) -> Vec<Plot> {
    use crate::plot::{figure, file_name, render_svg, ExperimentCurves, XAxis};
    let curves = match ExperimentCurves::load(exp_dir, exp) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("warning: {}: no plots: {e:#}", exp_dir.display());
            return vec![];
        }
    };
    let logged = curves.curve_metrics();
    let mut wanted: Vec<(String, XAxis)> = vec![];
    for m in claimed.iter().filter(|m| logged.contains(*m)).chain(logged.iter().filter(|m| !claimed.contains(m))) {
        wanted.push((m.clone(), XAxis::Step));
    }
    for c in exp.claims.iter().filter(|c| c.trend.is_some()) {
        if let Some(key) = c.across.as_ref().and_then(|a| a.keys().into_iter().next()) {
            let w = (c.metric.clone(), XAxis::Sweep(key));
            if !wanted.contains(&w) {
                wanted.push(w);
            }
        }
    }
    let mut out = vec![];
    for (metric, x) in wanted {
        let file = format!("{PLOTS_DIR}/{}", file_name(&metric, &x));
        let drawn = figure(exp_dir, exp, &curves, &metric, &x).and_then(|fig| {
            let svg = render_svg(&fig)?;
            let path = exp_dir.join(&file);
            std::fs::create_dir_all(exp_dir.join(PLOTS_DIR))?;
            write_atomic(&path, svg.as_bytes())?;
            Ok((fig.title, svg))
        });
        match drawn {
            Ok((title, svg)) => out.push(Plot { title, file, svg }),
            Err(e) => eprintln!("warning: {}: no plot of `{metric}`: {e:#}", exp_dir.display()),
        }
    }
    out
}

/// What the report shows, rendered as markdown (`table.md`) and as a page (`report.html`).
struct Page<'a> {
    exp: &'a Experiment,
    header: Vec<String>,
    body: Vec<Vec<String>>,
    /// How many leading metric columns the claims name.
    claimed: usize,
    claims: &'a [ClaimResult],
    plots: &'a [Plot],
}

/// A claim's verdict as the tables show it.
pub fn verdict(pass: Option<bool>) -> &'static str {
    match pass {
        Some(true) => "PASS",
        Some(false) => "FAIL",
        None => "UNKNOWN",
    }
}

/// The paper's claims, then the checks that hold by construction (a failing check is a bug).
const CLAIM_SECTIONS: [(bool, &str, &str); 2] = [(false, "Claims", "claim"), (true, "Checks (hold by construction; not the paper's claims)", "check")];

impl Page<'_> {
    fn intro(&self) -> String {
        let lead = if self.claimed > 0 { format!(" The first {} metric column(s) are the ones the claims name.", self.claimed) } else { String::new() };
        format!(
            "paper `{}` (arXiv {}), spec `{}`. Cells: mean ± std over seeds of each run's final value; n = runs ok / planned.{lead}",
            self.exp.paper, self.exp.arxiv, self.exp.spec_file
        )
    }

    fn markdown(&self) -> String {
        let mut md = String::new();
        writeln!(md, "# {} — {}", self.exp.name, self.exp.title).ok();
        writeln!(md).ok();
        writeln!(md, "{}", self.intro()).ok();
        writeln!(md).ok();
        writeln!(md, "| {} |", self.header.join(" | ")).ok();
        writeln!(md, "|{}", "---|".repeat(self.header.len())).ok();
        for cells in &self.body {
            writeln!(md, "| {} |", cells.join(" | ")).ok();
        }
        for (check, heading, column) in CLAIM_SECTIONS {
            let these: Vec<&ClaimResult> = self.claims.iter().filter(|c| c.check == check).collect();
            if these.is_empty() {
                continue;
            }
            writeln!(md).ok();
            writeln!(md, "## {heading}").ok();
            writeln!(md).ok();
            writeln!(md, "| {column} | measured (means over seeds; ± standard error) | result |").ok();
            writeln!(md, "|---|---|---|").ok();
            for c in these {
                // A `|` in a note would end the cell early.
                writeln!(md, "| {} | {} | {} |", c.text.replace('|', "\\|"), c.measured.replace('|', "\\|"), verdict(c.pass)).ok();
            }
        }
        if !self.plots.is_empty() {
            writeln!(md).ok();
            writeln!(md, "## Plots").ok();
            writeln!(md).ok();
            writeln!(md, "Also in `{HTML_FILE}`, with the tables, in one file.").ok();
            writeln!(md).ok();
            for p in self.plots {
                writeln!(md, "- [{}]({})", p.title, p.file).ok();
            }
        }
        md
    }

    fn html(&self) -> String {
        let e = html_escape;
        let mut h = String::new();
        let title = format!("{} — {}", self.exp.name, self.exp.title);
        writeln!(h, "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n<title>{}</title>", e(&title)).ok();
        writeln!(
            h,
            "<style>\nbody {{ font-family: sans-serif; margin: 2em; color: #222; }}\ntable {{ border-collapse: collapse; margin: 1em 0; }}\n\
             th, td {{ border: 1px solid #bbb; padding: 4px 8px; text-align: left; vertical-align: top; }}\nth {{ background: #f0f0f0; }}\n\
             th.claimed, td.claimed {{ background: #fff8e0; }}\ntd.PASS {{ color: #176117; font-weight: bold; }}\n\
             td.FAIL {{ color: #a31515; font-weight: bold; }}\ntd.UNKNOWN {{ color: #8a6d00; font-weight: bold; }}\n\
             figure {{ margin: 1.5em 0; }}\nfigure svg {{ max-width: 100%; height: auto; }}\n</style>\n</head>\n<body>"
        )
        .ok();
        writeln!(h, "<h1>{}</h1>\n<p>{}</p>", e(&title), code_spans(&self.intro())).ok();
        for (check, heading, column) in CLAIM_SECTIONS {
            let these: Vec<&ClaimResult> = self.claims.iter().filter(|c| c.check == check).collect();
            if these.is_empty() {
                continue;
            }
            writeln!(h, "<h2>{}</h2>\n<table>\n<tr><th>{column}</th><th>measured (means over seeds; ± standard error)</th><th>result</th></tr>", e(heading)).ok();
            for c in these {
                let v = verdict(c.pass);
                writeln!(h, "<tr><td>{}</td><td>{}</td><td class=\"{v}\">{v}</td></tr>", code_spans(&c.text), code_spans(&c.measured)).ok();
            }
            writeln!(h, "</table>").ok();
        }
        writeln!(h, "<h2>Final values</h2>\n<div style=\"overflow-x: auto\">\n<table>").ok();
        let class = |i: usize| if i >= 2 && i < 2 + self.claimed { " class=\"claimed\"" } else { "" };
        let head: String = self.header.iter().enumerate().map(|(i, c)| format!("<th{}>{}</th>", class(i), e(c))).collect();
        writeln!(h, "<tr>{head}</tr>").ok();
        for cells in &self.body {
            let row: String = cells.iter().enumerate().map(|(i, c)| format!("<td{}>{}</td>", class(i), e(c))).collect();
            writeln!(h, "<tr>{row}</tr>").ok();
        }
        writeln!(h, "</table>\n</div>").ok();
        if !self.plots.is_empty() {
            writeln!(h, "<h2>Plots</h2>").ok();
            for p in self.plots {
                // The SVG inline (without its XML declaration), so the page needs no other file.
                let svg = p.svg.trim_start().strip_prefix("<?xml").and_then(|rest| rest.split_once("?>")).map_or(p.svg.as_str(), |(_, s)| s);
                writeln!(h, "<figure id=\"{}\">\n{}\n<figcaption>{} (<code>{}</code>)</figcaption>\n</figure>", e(&p.file), svg.trim(), e(&p.title), e(&p.file)).ok();
            }
        }
        writeln!(h, "</body>\n</html>").ok();
        h
    }
}

/// Escapes text for HTML element content and attribute values.
pub fn html_escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for ch in text.chars() {
        match ch {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// Escaped text with markdown's `code` spans as <code> (claims and notes use them for names).
fn code_spans(text: &str) -> String {
    let mut out = String::new();
    for (i, part) in text.split('`').enumerate() {
        if i % 2 == 1 {
            out.push_str(&format!("<code>{}</code>", html_escape(part)));
        } else {
            out.push_str(&html_escape(part));
        }
    }
    out
}

/// The experiment recorded in `exp_dir`, or, without `experiment.json` (a copied results
/// folder), the runs found on disk.
pub fn load_experiment(exp_dir: &Path) -> Result<Experiment> {
    match Experiment::read(exp_dir) {
        Ok(e) => Ok(e),
        Err(_) => discover(exp_dir),
    }
}

/// Without `experiment.json` (a copied results folder), take the runs found on disk.
fn discover(exp_dir: &Path) -> Result<Experiment> {
    let runs_dir = exp_dir.join("runs");
    let mut runs = vec![];
    let mut groups = vec![];
    let mut entries: Vec<PathBuf> = std::fs::read_dir(&runs_dir)
        .with_context(|| format!("cannot read {}", runs_dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .collect();
    entries.sort();
    for dir in entries {
        if let Ok(row) = read_summary(&dir) {
            let id = row.get("run_id").cloned().unwrap_or_default();
            let group = row.get("group").cloned().unwrap_or_default();
            if !groups.contains(&group) {
                groups.push(group.clone());
            }
            runs.push((id, group));
        }
    }
    let name = exp_dir.file_name().map(|n| n.to_string_lossy().to_string()).unwrap_or_default();
    Ok(Experiment { name, paper: "?".into(), title: "(no experiment.json)".into(), arxiv: "?".into(), spec_file: "?".into(), groups, runs, claims: vec![], points: vec![] })
}

fn write_summary(exp_dir: &Path, rows: &[Row]) -> Result<()> {
    let mut header: Vec<String> = SUMMARY_HEAD.iter().map(|s| s.to_string()).collect();
    let mut extra: Vec<String> = vec![];
    for r in rows {
        for k in r.fields.keys() {
            if !header.contains(k) && !extra.contains(k) {
                extra.push(k.clone());
            }
        }
    }
    extra.sort_by_key(|k| (!k.starts_with("sweep."), k.clone()));
    header.extend(extra);
    let table: Vec<Vec<String>> = rows
        .iter()
        .map(|r| header.iter().map(|h| r.fields.get(h).cloned().unwrap_or_default()).collect())
        .collect();
    write_atomic(&exp_dir.join("summary.csv"), &csv_bytes(&header, &table)?)
}

#[derive(Default, Clone)]
struct GroupStats {
    ok: usize,
    /// metric → values of the ok runs
    values: BTreeMap<String, Vec<f64>>,
    /// status → (count, a step or message)
    other: BTreeMap<String, (usize, String)>,
}

fn group_stats(rows: &[Row]) -> BTreeMap<&str, GroupStats> {
    let mut out: BTreeMap<&str, GroupStats> = BTreeMap::new();
    for r in rows {
        let s = out.entry(r.group.as_str()).or_default();
        let status = r.fields.get("status").map(String::as_str).unwrap_or("?");
        if status == "ok" {
            s.ok += 1;
            for (k, v) in &r.fields {
                if let Ok(x) = v.parse::<f64>() {
                    if !SUMMARY_HEAD.contains(&k.as_str()) && !k.starts_with("sweep.") {
                        s.values.entry(k.clone()).or_default().push(x);
                    }
                }
            }
        } else {
            let detail = match status {
                "diverged" => format!("step {}", r.fields.get("step").cloned().unwrap_or_default()),
                _ => String::new(),
            };
            let e = s.other.entry(status.to_string()).or_insert((0, detail));
            e.0 += 1;
        }
    }
    out
}

/// Mean and sample standard deviation.
pub fn mean_std(xs: &[f64]) -> (f64, f64) {
    let n = xs.len() as f64;
    let mean = xs.iter().sum::<f64>() / n;
    let var = if xs.len() > 1 { xs.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1.0) } else { 0.0 };
    (mean, var.sqrt())
}

/// Four significant digits; scientific notation outside [1e-3, 1e4).
pub fn fmt_num(x: f64) -> String {
    if x == 0.0 {
        return "0".into();
    }
    let a = x.abs();
    if (1e-3..1e4).contains(&a) {
        let decimals = (3 - a.log10().floor() as i32).clamp(0, 6) as usize;
        format!("{x:.decimals$}")
    } else {
        format!("{x:.3e}")
    }
}

fn not_ok_text(s: &GroupStats) -> String {
    s.other
        .iter()
        .map(|(status, (n, detail))| if detail.is_empty() { format!("{n} {status}") } else { format!("{n} {status} ({detail})") })
        .collect::<Vec<_>>()
        .join(", ")
}

fn cell(stats: Option<&GroupStats>, metric: &str) -> String {
    let Some(s) = stats else { return "no run yet".into() };
    match s.values.get(metric) {
        Some(xs) if !xs.is_empty() => {
            let (m, sd) = mean_std(xs);
            let mut text = if xs.len() > 1 { format!("{} ± {}", fmt_num(m), fmt_num(sd)) } else { fmt_num(m) };
            if !s.other.is_empty() {
                text.push_str(&format!(" (+{})", not_ok_text(s)));
            }
            text
        }
        _ if s.ok == 0 && !s.other.is_empty() => not_ok_text(s),
        _ => "not reported".into(),
    }
}

/// A group's mean over seeds and its standard error (sample std / √n; 0 for one seed).
#[derive(Debug, Clone, Copy)]
struct MeanSe {
    mean: f64,
    se: f64,
}

impl MeanSe {
    fn of(xs: &[f64]) -> Self {
        let (mean, sd) = mean_std(xs);
        MeanSe { mean, se: sd / (xs.len() as f64).sqrt() }
    }
}

/// Standard error of a difference of two independent means.
fn se_diff(a: f64, b: f64) -> f64 {
    (a * a + b * b).sqrt()
}

/// " ± SE, k SE from the line" for a quantity that must exceed `line`; how far from seed noise a
/// verdict is.
fn spread(x: f64, se: f64, line: f64) -> String {
    if se > 0.0 {
        format!(" ± {} SE, {:+.1} SE from {}", fmt_num(se), (x - line) / se, fmt_num(line))
    } else {
        String::new()
    }
}

/// The mean of `metric` over the group's runs — only when every planned run of the group is
/// `ok`: a claim is not judged on the seeds that happened to finish.
fn group_mean(stats: &BTreeMap<&str, GroupStats>, planned: &BTreeMap<&str, usize>, group: &str, metric: &str) -> Result<MeanSe, String> {
    let Some(s) = stats.get(group) else { return Err(format!("{group}: no run yet")) };
    let want = planned.get(group).copied().unwrap_or(s.ok);
    if s.ok < want {
        let other = if s.other.is_empty() { String::new() } else { format!(", {}", not_ok_text(s)) };
        return Err(format!("{group}: {}/{want} runs ok{other}", s.ok));
    }
    match s.values.get(metric) {
        Some(xs) if xs.len() == s.ok => Ok(MeanSe::of(xs)),
        Some(xs) if !xs.is_empty() => Err(format!("{group}: `{metric}` reported by only {}/{} runs", xs.len(), s.ok)),
        _ if s.ok == 0 && !s.other.is_empty() => Err(format!("{group}: {}", not_ok_text(s))),
        _ => Err(format!("{group}: `{metric}` not reported")),
    }
}

/// `diff > margin`, with ties in floating point counted as ties: two means of the same values
/// summed in another order differ by ~1e-16, and that must not make a strict "higher" pass.
fn clears(diff: f64, margin: f64, scale: f64) -> bool {
    diff > margin + 1e-12 * scale.max(1.0)
}

fn evaluate(claim: &Claim, stats: &BTreeMap<&str, GroupStats>, planned: &BTreeMap<&str, usize>, points: &[GroupPoint]) -> ClaimResult {
    let m = &claim.metric;
    let note = claim.note.as_ref().map(|n| format!(" — {n}")).unwrap_or_default();
    if let Some(trend) = claim.trend {
        return evaluate_trend(claim, trend, stats, planned, points, &note);
    }
    if let (Some(than), Some((subject, higher))) =
        (&claim.than, claim.higher.as_ref().map(|h| (h, true)).or(claim.lower.as_ref().map(|l| (l, false))))
    {
        let margin = claim.margin.unwrap_or(0.0);
        // A relative claim compares A with f·B: "A < 0.8·B" is "20 % below B".
        let factor = claim.factor.unwrap_or(1.0);
        let op = if higher { ">" } else { "<" };
        // A − B > m reads "A > B + m"; B − A > m reads "A < B − m" (negative m flips the sign).
        let plus = higher == (margin > 0.0);
        let margin_text = if margin != 0.0 { format!(" {} {}", if plus { "+" } else { "−" }, fmt_num(margin.abs())) } else { String::new() };
        let factor_text = if claim.factor.is_some() { format!("{}·", fmt_num(factor)) } else { String::new() };
        let text = format!("`{m}`: {subject} {op} {factor_text}{than}{margin_text}{note}");
        return match (group_mean(stats, planned, subject, m), group_mean(stats, planned, than, m)) {
            // A relative claim reads "A is f times B" only for a positive B (a negative B would turn
            // "20 % lower" into "20 % further below zero").
            (Ok(_), Ok(b)) if claim.factor.is_some() && b.mean <= 0.0 => ClaimResult {
                text,
                measured: format!("{than} {}: a relative (`factor`) claim needs a positive mean of the baseline", fmt_num(b.mean)),
                pass: None,
                check: claim.check,
            },
            (Ok(a), Ok(b)) => {
                let diff = if higher { a.mean - factor * b.mean } else { factor * b.mean - a.mean };
                let se = se_diff(a.se, factor * b.se);
                let ratio = if claim.factor.is_some() && b.mean != 0.0 { format!(", ratio {}", fmt_num(a.mean / b.mean)) } else { String::new() };
                ClaimResult {
                    text,
                    measured: format!("{subject} {} vs {than} {} (by {}{}{ratio})", fmt_num(a.mean), fmt_num(b.mean), fmt_num(diff), spread(diff, se, margin)),
                    pass: Some(clears(diff, margin, a.mean.abs().max(b.mean.abs()))),
                    check: claim.check,
                }
            }
            (a, b) => ClaimResult {
                text,
                measured: [a.err(), b.err()].into_iter().flatten().collect::<Vec<_>>().join("; "),
                pass: None,
                check: claim.check,
            },
        };
    }
    let variant = claim.variant.clone().unwrap_or_default();
    let mut bounds = vec![];
    if let Some(lo) = claim.at_least {
        bounds.push(format!("≥ {}", fmt_num(lo)));
    }
    if let Some(hi) = claim.at_most {
        bounds.push(format!("≤ {}", fmt_num(hi)));
    }
    let text = format!("`{m}`: {variant} {}{note}", bounds.join(" and "));
    match group_mean(stats, planned, &variant, m) {
        Ok(MeanSe { mean: x, se }) => {
            let pass = claim.at_least.is_none_or(|lo| x >= lo) && claim.at_most.is_none_or(|hi| x <= hi);
            // Distance to the nearer bound, in the direction that passes.
            let line = match (claim.at_least, claim.at_most) {
                (Some(lo), Some(hi)) if (x - lo).abs() > (hi - x).abs() => Some((hi, -1.0)),
                (Some(lo), _) => Some((lo, 1.0)),
                (None, Some(hi)) => Some((hi, -1.0)),
                (None, None) => None,
            };
            let spread_text = match line {
                Some((b, sign)) if se > 0.0 => format!(" ± {} SE, {:+.1} SE inside {}", fmt_num(se), sign * (x - b) / se, fmt_num(b)),
                _ => String::new(),
            };
            ClaimResult { text, measured: format!("{variant} {}{spread_text}", fmt_num(x)), pass: Some(pass), check: claim.check }
        }
        Err(why) => ClaimResult { text, measured: why, pass: None, check: claim.check },
    }
}

/// A trend claim: the means of the claim's groups, ordered by the `across` value, judged by the
/// trend's rule (see [`Trend`]). UNKNOWN unless every planned run of every selected group is ok.
fn evaluate_trend(
    claim: &Claim,
    trend: Trend,
    stats: &BTreeMap<&str, GroupStats>,
    planned: &BTreeMap<&str, usize>,
    points: &[GroupPoint],
    note: &str,
) -> ClaimResult {
    let m = &claim.metric;
    let variant = claim.variant.clone().unwrap_or_default();
    let across = claim.across.as_ref().map(|a| a.keys()).unwrap_or_default();
    let fixed: Vec<String> = claim
        .where_
        .iter()
        .flatten()
        .map(|(k, v)| format!("{}={}", k.as_str().unwrap_or_default(), crate::params::scalar_label(v)))
        .collect();
    let (lo, hi) = (claim.at_least, claim.at_most);
    let rule = match trend {
        Trend::Increasing | Trend::Decreasing | Trend::UShaped => match claim.margin {
            Some(mg) if mg != 0.0 => format!("{} (margin {})", trend_name(trend), fmt_num(mg)),
            _ => trend_name(trend).to_string(),
        },
        Trend::Flat => format!("flat (max/min ≤ {})", fmt_num(hi.unwrap_or(f64::NAN))),
        Trend::Slope => {
            let bounds: Vec<String> = lo.map(|v| format!("≥ {}", fmt_num(v))).into_iter().chain(hi.map(|v| format!("≤ {}", fmt_num(v)))).collect();
            format!("{} slope {}", slope_axes(claim), bounds.join(" and "))
        }
    };
    let where_text = if fixed.is_empty() { String::new() } else { format!(" where {}", fixed.join(", ")) };
    let text = format!("`{m}`: {variant} across {}{where_text}: {rule}{note}", across.join(" × "));
    let unknown = |why: String| ClaimResult { text: text.clone(), measured: why, pass: None, check: claim.check };

    let selected = trend_groups(claim, points);
    if selected.is_empty() {
        return unknown("no sweep points recorded for this claim (rerun `reglab run` to refresh experiment.json)".into());
    }
    // (x label, x, mean) per point.
    let mut values: Vec<(String, f64, f64)> = vec![];
    let mut ses: Vec<f64> = vec![];
    let mut errors = vec![];
    for p in &selected {
        let label: Vec<String> = p.sweep.iter().filter(|(k, _)| across.contains(k)).map(|(k, v)| format!("{k}={v}")).collect();
        let x = p.sweep.iter().find(|(k, _)| across.first() == Some(k)).and_then(|(_, v)| v.parse::<f64>().ok()).unwrap_or(f64::NAN);
        match group_mean(stats, planned, &p.group, m) {
            Ok(y) => {
                values.push((label.join(","), x, y.mean));
                ses.push(y.se);
            }
            Err(e) => errors.push(e),
        }
    }
    if !errors.is_empty() {
        return unknown(errors.join("; "));
    }
    if trend != Trend::Flat {
        let mut order: Vec<usize> = (0..values.len()).collect();
        order.sort_by(|&i, &j| values[i].1.total_cmp(&values[j].1));
        ses = order.iter().map(|&i| ses[i]).collect();
        values = order.iter().map(|&i| values[i].clone()).collect();
    }
    let listed = values.iter().map(|(l, _, y)| format!("{l}: {}", fmt_num(*y))).collect::<Vec<_>>().join(", ");
    let ys: Vec<f64> = values.iter().map(|v| v.2).collect();
    let margin = claim.margin.unwrap_or(0.0);
    let scale = ys.iter().fold(0.0f64, |m, y| m.max(y.abs()));
    let (pass, detail) = match trend {
        Trend::Increasing | Trend::Decreasing => {
            let sign = if trend == Trend::Increasing { 1.0 } else { -1.0 };
            let (worst, worst_se) = (1..ys.len())
                .map(|i| (sign * (ys[i] - ys[i - 1]), se_diff(ses[i], ses[i - 1])))
                .fold((f64::INFINITY, 0.0), |acc, s| if s.0 < acc.0 { s } else { acc });
            (clears(worst, margin, scale), format!("smallest {} {}{}", if sign > 0.0 { "rise" } else { "fall" }, fmt_num(worst), spread(worst, worst_se, margin)))
        }
        Trend::UShaped => {
            let (imin, ymin) = ys.iter().copied().enumerate().fold((0, f64::INFINITY), |acc, (i, y)| if y < acc.1 { (i, y) } else { acc });
            let last = ys.len() - 1;
            let rise = (ys[0] - ymin).min(ys[last] - ymin);
            let interior = imin > 0 && imin < last;
            let at = &values[imin].0;
            (interior && clears(rise, margin, scale), format!("minimum at {at}{}, ends above it by ≥ {}", if interior { "" } else { " (an end)" }, fmt_num(rise)))
        }
        Trend::Flat => {
            let (mn, mx) = ys.iter().fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), &y| (a.min(y), b.max(y)));
            if mn <= 0.0 {
                (false, format!("min {} ≤ 0: a ratio of means needs positive values", fmt_num(mn)))
            } else {
                let ratio = mx / mn;
                (ratio <= hi.unwrap_or(f64::INFINITY), format!("max/min {}", fmt_num(ratio)))
            }
        }
        Trend::Slope => {
            let axes = claim.log.clone().unwrap_or_else(|| vec!["x".into(), "y".into()]);
            let (lx, ly) = (axes.iter().any(|a| a == "x"), axes.iter().any(|a| a == "y"));
            match least_squares_slope(&values.iter().map(|v| (v.1, v.2)).collect::<Vec<_>>(), lx, ly) {
                Ok(b) => (lo.is_none_or(|l| b >= l) && hi.is_none_or(|h| b <= h), format!("slope {}", fmt_num(b))),
                Err(why) => (false, why),
            }
        }
    };
    ClaimResult { text, measured: format!("{listed}; {detail}"), pass: Some(pass), check: claim.check }
}

fn slope_axes(claim: &Claim) -> &'static str {
    let axes = claim.log.clone().unwrap_or_else(|| vec!["x".into(), "y".into()]);
    match (axes.iter().any(|a| a == "x"), axes.iter().any(|a| a == "y")) {
        (true, true) => "log-log",
        (true, false) => "semi-log (log x)",
        (false, true) => "semi-log (log y)",
        (false, false) => "linear",
    }
}

/// The ordinary least-squares slope of y on x, on log scales where asked (which need positive values).
fn least_squares_slope(points: &[(f64, f64)], log_x: bool, log_y: bool) -> Result<f64, String> {
    let mut xy = vec![];
    for &(x, y) in points {
        if (log_x && x <= 0.0) || (log_y && y <= 0.0) {
            return Err(format!("({}, {}) cannot go on a log scale", fmt_num(x), fmt_num(y)));
        }
        xy.push((if log_x { x.ln() } else { x }, if log_y { y.ln() } else { y }));
    }
    let n = xy.len() as f64;
    let (mx, my) = (xy.iter().map(|p| p.0).sum::<f64>() / n, xy.iter().map(|p| p.1).sum::<f64>() / n);
    let sxx: f64 = xy.iter().map(|p| (p.0 - mx).powi(2)).sum();
    if sxx == 0.0 {
        return Err("all x values are equal: no slope".into());
    }
    Ok(xy.iter().map(|p| (p.0 - mx) * (p.1 - my)).sum::<f64>() / sxx)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mean_std_and_formatting() {
        let (m, s) = mean_std(&[1.0, 2.0, 3.0]);
        assert_eq!(m, 2.0);
        assert!((s - 1.0).abs() < 1e-12);
        assert_eq!(mean_std(&[5.0]).1, 0.0);
        assert_eq!(fmt_num(0.123456), "0.1235");
        assert_eq!(fmt_num(12.3456), "12.35");
        assert_eq!(fmt_num(1.5e-5), "1.500e-5");
        assert_eq!(fmt_num(0.0), "0");
    }

    fn stats_of(groups: &[(&'static str, &[f64], &[&str])]) -> BTreeMap<&'static str, GroupStats> {
        let mut out = BTreeMap::new();
        for (g, vals, bad) in groups {
            let mut s = GroupStats { ok: vals.len(), ..Default::default() };
            if !vals.is_empty() {
                s.values.insert("acc".into(), vals.to_vec());
            }
            for b in *bad {
                s.other.entry(b.to_string()).or_insert((0, String::new())).0 += 1;
            }
            out.insert(*g, s);
        }
        out
    }

    fn claim(yaml: &str) -> Claim {
        serde_yaml::from_str(yaml).unwrap()
    }

    fn evaluate(c: &Claim, st: &BTreeMap<&'static str, GroupStats>) -> ClaimResult {
        let planned = st.iter().map(|(g, s)| (*g, s.ok + s.other.values().map(|v| v.0).sum::<usize>())).collect();
        super::evaluate(c, st, &planned, &[])
    }

    /// Groups `v__k=<x>` of one variant over a one-key sweep, with one value each.
    fn sweep_stats(variant: &str, key: &str, xs: &[&str], ys: &[f64]) -> (BTreeMap<&'static str, GroupStats>, Vec<GroupPoint>) {
        let mut st = BTreeMap::new();
        let mut points = vec![];
        for (x, y) in xs.iter().zip(ys) {
            let group: &'static str = Box::leak(format!("{variant}__{key}={x}").into_boxed_str());
            let mut s = GroupStats { ok: 1, ..Default::default() };
            s.values.insert("acc".into(), vec![*y]);
            st.insert(group, s);
            points.push(GroupPoint { group: group.into(), variant: variant.into(), sweep: vec![(key.into(), x.to_string())] });
        }
        (st, points)
    }

    fn trend(yaml: &str, st: &BTreeMap<&'static str, GroupStats>, points: &[GroupPoint]) -> ClaimResult {
        let planned = st.iter().map(|(g, s)| (*g, s.ok)).collect();
        super::evaluate(&claim(yaml), st, &planned, points)
    }

    #[test]
    fn trend_claims_order_points_by_their_numeric_value() {
        // Listed out of order, and "10" sorts before "2" as text: the x axis is numeric.
        let (st, pts) = sweep_stats("v", "k", &["10", "2", "5"], &[3.0, 1.0, 2.0]);
        assert_eq!(trend("{metric: acc, variant: v, across: k, trend: increasing}", &st, &pts).pass, Some(true));
        assert_eq!(trend("{metric: acc, variant: v, across: k, trend: decreasing}", &st, &pts).pass, Some(false));
        assert_eq!(trend("{metric: acc, variant: v, across: k, trend: increasing, margin: 1.0}", &st, &pts).pass, Some(false));
        assert_eq!(trend("{metric: acc, variant: v, across: k, trend: increasing, margin: 0.9}", &st, &pts).pass, Some(true));
        // A monotone curve is not U-shaped; a dip in the middle is.
        assert_eq!(trend("{metric: acc, variant: v, across: k, trend: u_shaped}", &st, &pts).pass, Some(false));
        let (st2, pts2) = sweep_stats("v", "k", &["1", "2", "5", "10"], &[3.0, 1.0, 0.5, 2.0]);
        let r = trend("{metric: acc, variant: v, across: k, trend: u_shaped}", &st2, &pts2);
        assert_eq!(r.pass, Some(true), "{}", r.measured);
        assert!(r.measured.contains("minimum at k=5"), "{}", r.measured);
        assert_eq!(trend("{metric: acc, variant: v, across: k, trend: u_shaped, margin: 1.6}", &st2, &pts2).pass, Some(false));
    }

    #[test]
    fn flat_and_slope_trends_measure_ratio_and_log_log_slope() {
        let (st, pts) = sweep_stats("v", "n", &["16", "64", "256"], &[16.0, 64.0, 256.0]);
        // y = n: log-log slope 1, linear slope 1, semi-log (log x) slope is not 1.
        let r = trend("{metric: acc, variant: v, across: n, trend: slope, at_least: 0.99, at_most: 1.01}", &st, &pts);
        assert_eq!(r.pass, Some(true), "{}", r.measured);
        assert_eq!(trend("{metric: acc, variant: v, across: n, trend: slope, log: [], at_least: 0.999, at_most: 1.001}", &st, &pts).pass, Some(true));
        assert_eq!(trend("{metric: acc, variant: v, across: n, trend: slope, log: [x], at_most: 50}", &st, &pts).pass, Some(false));
        // y = log n grows with a log-log slope well below 1.
        let (st2, pts2) = sweep_stats("v", "n", &["16", "64", "256"], &[16f64.ln(), 64f64.ln(), 256f64.ln()]);
        let r = trend("{metric: acc, variant: v, across: n, trend: slope, at_most: 0.5}", &st2, &pts2);
        assert_eq!(r.pass, Some(true), "{}", r.measured);
        assert!((least_squares_slope(&[(1.0, 2.0), (2.0, 4.0), (3.0, 6.0)], false, false).unwrap() - 2.0).abs() < 1e-12);
        // Flat: max/min ratio of the means; a sign change is not flat.
        assert_eq!(trend("{metric: acc, variant: v, across: n, trend: flat, at_most: 16}", &st, &pts).pass, Some(true));
        assert_eq!(trend("{metric: acc, variant: v, across: n, trend: flat, at_most: 15.9}", &st, &pts).pass, Some(false));
        let (st3, pts3) = sweep_stats("v", "n", &["1", "2"], &[-1.0, 1.0]);
        let r = trend("{metric: acc, variant: v, across: n, trend: flat, at_most: 3}", &st3, &pts3);
        assert_eq!(r.pass, Some(false));
        assert!(r.measured.contains("positive"), "{}", r.measured);
        // A missing point makes the claim UNKNOWN, never judged on the rest.
        let mut st4 = st.clone();
        st4.remove("v__n=64");
        let r = trend("{metric: acc, variant: v, across: n, trend: increasing}", &st4, &pts);
        assert_eq!(r.pass, None);
        assert!(r.measured.contains("no run yet"), "{}", r.measured);
    }

    #[test]
    fn a_tie_in_floating_point_is_a_tie() {
        // Means that differ only by rounding (the same seeds' values summed in another order).
        let st = stats_of(&[("a", &[0.6566666666666667], &[]), ("b", &[0.6566666666666666], &[])]);
        assert!(0.6566666666666667f64 - 0.6566666666666666 > 0.0);
        assert_eq!(evaluate(&claim("{metric: acc, higher: a, than: b}"), &st).pass, Some(false));
        let st = stats_of(&[("a", &[0.6567], &[]), ("b", &[0.6566], &[])]);
        assert_eq!(evaluate(&claim("{metric: acc, higher: a, than: b}"), &st).pass, Some(true));
    }

    #[test]
    fn pairwise_claims_use_means_and_margin() {
        let st = stats_of(&[("a", &[0.9, 0.8], &[]), ("b", &[0.6, 0.7], &[])]);
        assert_eq!(evaluate(&claim("{metric: acc, higher: a, than: b, margin: 0.1}"), &st).pass, Some(true));
        assert_eq!(evaluate(&claim("{metric: acc, higher: a, than: b, margin: 0.3}"), &st).pass, Some(false));
        assert_eq!(evaluate(&claim("{metric: acc, lower: b, than: a}"), &st).pass, Some(true));
        assert_eq!(evaluate(&claim("{metric: acc, lower: a, than: b}"), &st).pass, Some(false));
    }

    #[test]
    fn relative_claims_compare_with_a_factor_of_the_other_mean() {
        // a 0.5 (se 0.1), b 0.8 (se 0.1): a < 0.8·b = 0.64 by 0.14; a < 0.6·b = 0.48 fails.
        let st = stats_of(&[("a", &[0.4, 0.6], &[]), ("b", &[0.7, 0.9], &[])]);
        let r = evaluate(&claim("{metric: acc, lower: a, than: b, factor: 0.8}"), &st);
        assert_eq!(r.pass, Some(true));
        assert!(r.text.contains("a < 0.8000·b"), "{}", r.text);
        // SE of a − 0.8·b = √(0.1² + 0.08²) = 0.1281; ratio 0.625.
        assert!(r.measured.contains("by 0.1400 ± 0.1281 SE") && r.measured.contains("ratio 0.6250"), "{}", r.measured);
        assert_eq!(evaluate(&claim("{metric: acc, lower: a, than: b, factor: 0.6}"), &st).pass, Some(false));
        assert_eq!(evaluate(&claim("{metric: acc, higher: b, than: a, factor: 1.5}"), &st).pass, Some(true));
        assert_eq!(evaluate(&claim("{metric: acc, higher: b, than: a, factor: 1.7}"), &st).pass, Some(false));
        // A non-positive baseline has no relative reading: UNKNOWN, with the reason.
        let neg = stats_of(&[("a", &[0.4, 0.6], &[]), ("c", &[-0.7, -0.9], &[])]);
        let r = evaluate(&claim("{metric: acc, lower: a, than: c, factor: 0.8}"), &neg);
        assert!(r.pass.is_none() && r.measured.contains("positive mean"), "{}", r.measured);
    }

    #[test]
    fn claims_show_the_standard_error_that_decides_them() {
        // a: mean 0.85, sd 0.0707, se 0.05; b: mean 0.65, se 0.05 ⇒ diff 0.2 ± 0.0707, 2.8 SE from 0.
        let st = stats_of(&[("a", &[0.9, 0.8], &[]), ("b", &[0.6, 0.7], &[])]);
        let r = evaluate(&claim("{metric: acc, higher: a, than: b}"), &st);
        assert!(r.measured.contains("by 0.2000 ± 0.07071 SE, +2.8 SE from 0"), "{}", r.measured);
        let r = evaluate(&claim("{metric: acc, higher: a, than: b, margin: 0.3}"), &st);
        assert!(r.measured.contains("-1.4 SE from 0.3000"), "{}", r.measured);
        // A bound: distance to the bound that matters, positive when inside.
        let r = evaluate(&claim("{metric: acc, variant: a, at_least: 0.75}"), &st);
        assert!(r.measured.contains("0.8500 ± 0.05000 SE, +2.0 SE inside 0.7500"), "{}", r.measured);
        let r = evaluate(&claim("{metric: acc, variant: b, at_most: 0.6}"), &st);
        assert!(r.measured.contains("-1.0 SE inside 0.6000") && r.pass == Some(false), "{}", r.measured);
        // One seed: no spread to show.
        let one = stats_of(&[("c", &[0.5], &[])]);
        assert_eq!(evaluate(&claim("{metric: acc, variant: c, at_least: 0.1}"), &one).measured, "c 0.5000");
    }

    #[test]
    fn trend_steps_carry_their_standard_error() {
        let mut st = BTreeMap::new();
        let mut points = vec![];
        for (x, ys) in [("1", [1.0, 1.2]), ("2", [2.0, 2.2]), ("3", [2.5, 2.7])] {
            let group: &'static str = Box::leak(format!("v__k={x}").into_boxed_str());
            let mut s = GroupStats { ok: 2, ..Default::default() };
            s.values.insert("acc".into(), ys.to_vec());
            st.insert(group, s);
            points.push(GroupPoint { group: group.into(), variant: "v".into(), sweep: vec![("k".into(), x.into())] });
        }
        // Each se is 0.1; the smallest rise 0.5 has se √0.02 ≈ 0.1414 ⇒ 3.5 SE.
        let r = trend("{metric: acc, variant: v, across: k, trend: increasing}", &st, &points);
        assert!(r.measured.contains("smallest rise 0.5000 ± 0.1414 SE, +3.5 SE from 0"), "{}", r.measured);
    }

    #[test]
    fn a_pipe_in_a_claim_stays_inside_its_cell_and_the_page_escapes_markup() {
        let exp = Experiment {
            name: "x".into(),
            paper: "p".into(),
            title: "t".into(),
            arxiv: "0".into(),
            spec_file: "s.yaml".into(),
            groups: vec!["a".into()],
            runs: vec![],
            claims: vec![],
            points: vec![],
        };
        let claims = vec![ClaimResult { text: "`m`: a ≥ 1 — |f| < 0.05 <b>".into(), measured: "a 2".into(), pass: Some(true), check: false }];
        let page = Page { exp: &exp, header: vec!["variant".into(), "n".into()], body: vec![vec!["a".into(), "1/1".into()]], claimed: 0, claims: &claims, plots: &[] };
        let md = page.markdown();
        let row = md.lines().find(|l| l.contains("0.05")).unwrap();
        let cell_bars = row.char_indices().filter(|&(i, c)| c == '|' && (i == 0 || row.as_bytes()[i - 1] != b'\\')).count();
        assert_eq!(cell_bars, 4, "three cells: {row}");
        let html = page.html();
        assert!(html.contains("<code>m</code>") && html.contains("|f| &lt; 0.05 &lt;b&gt;") && !html.contains("<b>"), "{html}");
    }

    #[test]
    fn checks_are_reported_apart_from_claims() {
        let c = claim("{metric: acc, variant: a, at_most: 1, check: true}");
        assert!(c.check);
        assert!(!claim("{metric: acc, variant: a, at_most: 1}").check);
        let st = stats_of(&[("a", &[0.9, 0.8], &[])]);
        assert!(evaluate(&c, &st).check);
    }

    #[test]
    fn bound_claims_and_missing_values_say_why() {
        let st = stats_of(&[("a", &[0.95], &[]), ("d", &[], &["diverged"])]);
        assert_eq!(evaluate(&claim("{metric: acc, variant: a, at_least: 0.9, at_most: 1}"), &st).pass, Some(true));
        assert_eq!(evaluate(&claim("{metric: acc, variant: a, at_most: 0.9}"), &st).pass, Some(false));
        let r = evaluate(&claim("{metric: acc, higher: d, than: a}"), &st);
        assert_eq!(r.pass, None);
        assert!(r.measured.contains("diverged"), "{}", r.measured);
        let r = evaluate(&claim("{metric: acc, variant: zz, at_least: 0}"), &st);
        assert!(r.measured.contains("no run yet"), "{}", r.measured);
        // A metric only some runs report is not averaged over those.
        let mut some = stats_of(&[("q", &[0.9], &[])]);
        some.get_mut("q").unwrap().ok = 2;
        let r = evaluate(&claim("{metric: acc, variant: q, at_least: 0.5}"), &some);
        assert_eq!(r.pass, None);
        assert!(r.measured.contains("only 1/2 runs"), "{}", r.measured);
        // One of two seeds failed: the claim is not judged on the survivor.
        let partial = stats_of(&[("p", &[0.99], &["failed"])]);
        let r = evaluate(&claim("{metric: acc, variant: p, at_least: 0.5}"), &partial);
        assert_eq!(r.pass, None);
        assert!(r.measured.contains("1/2 runs ok") && r.measured.contains("1 failed"), "{}", r.measured);
        assert_eq!(cell(st.get("d"), "acc"), "1 diverged");
        assert_eq!(cell(None, "acc"), "no run yet");
    }
}
