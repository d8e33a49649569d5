//! `reglab report A B`: two result directories of the same spec (CPU vs GPU, two code versions)
//! side by side — every group's final metrics in each, their difference, and the claims' verdicts.

use std::fmt::Write as _;
use std::path::Path;

use anyhow::{bail, Result};

use crate::report::{finals, fmt_num, verdict, Finals};

/// The side-by-side markdown of experiments `a` and `b`, and the largest |b − a| over every
/// (group, metric) both have (0 when the two hold the same numbers).
pub fn compare(a: &Path, b: &Path) -> Result<(String, f64)> {
    let (fa, fb) = (finals(a)?, finals(b)?);
    if fa.exp.paper != fb.exp.paper || fa.exp.name != fb.exp.name {
        bail!(
            "`{}` ({} of paper {}) and `{}` ({} of paper {}) are not results of the same spec: compare two directories of one spec",
            a.display(),
            fa.exp.name,
            fa.exp.paper,
            b.display(),
            fb.exp.name,
            fb.exp.paper
        );
    }
    let mut md = String::new();
    writeln!(md, "# {} — A vs B", fa.exp.name).ok();
    writeln!(md).ok();
    writeln!(md, "A = `{}`, B = `{}`. Cells: mean ± std over seeds (n runs ok); B − A of the means.", a.display(), b.display()).ok();
    writeln!(md).ok();
    writeln!(md, "| variant | metric | A | B | B − A |").ok();
    writeln!(md, "|---|---|---|---|---|").ok();
    let mut groups: Vec<&String> = fa.exp.groups.iter().collect();
    groups.extend(fb.exp.groups.iter().filter(|g| !fa.exp.groups.contains(g)));
    let mut largest: f64 = 0.0;
    for group in groups {
        let (ma, mb) = (fa.by_group.get(group.as_str()), fb.by_group.get(group.as_str()));
        let mut metrics: Vec<&String> = ordered_metrics(&fa, ma);
        for m in ordered_metrics(&fb, mb) {
            if !metrics.contains(&m) {
                metrics.push(m);
            }
        }
        for m in metrics {
            let va = ma.and_then(|x| x.get(m.as_str()));
            let vb = mb.and_then(|x| x.get(m.as_str()));
            let diff = match (va, vb) {
                (Some(x), Some(y)) => {
                    let d = y.0 - x.0;
                    if d.is_nan() || d.is_infinite() {
                        largest = f64::INFINITY.max(largest);
                    } else {
                        largest = largest.max(d.abs());
                    }
                    fmt_num(d)
                }
                _ => "—".into(),
            };
            writeln!(md, "| {group} | {m} | {} | {} | {diff} |", cell(va), cell(vb)).ok();
        }
    }
    writeln!(md).ok();
    writeln!(md, "## Claims").ok();
    writeln!(md).ok();
    writeln!(md, "| claim | A | B |").ok();
    writeln!(md, "|---|---|---|").ok();
    for (i, c) in fa.claims.iter().enumerate() {
        let other = fb.claims.iter().find(|d| d.text == c.text).or(fb.claims.get(i));
        let show = |r: Option<&crate::report::ClaimResult>| r.map_or("—".to_string(), |r| format!("{} ({})", verdict(r.pass), r.measured));
        writeln!(md, "| {} | {} | {} |", c.text, show(Some(c)), show(other)).ok();
    }
    writeln!(md).ok();
    writeln!(md, "Largest |B − A| of a mean: {}{}", fmt_num(largest), if largest == 0.0 { " (the two hold the same numbers)" } else { "" }).ok();
    Ok((md, largest))
}

fn cell(v: Option<&(f64, f64, usize)>) -> String {
    match v {
        Some(&(mean, sd, n)) if n > 1 => format!("{} ± {} (n={n})", fmt_num(mean), fmt_num(sd)),
        Some(&(mean, _, n)) => format!("{} (n={n})", fmt_num(mean)),
        None => "—".into(),
    }
}

/// The group's metrics, the claimed ones first.
fn ordered_metrics<'a>(f: &'a Finals, metrics: Option<&'a std::collections::BTreeMap<String, (f64, f64, usize)>>) -> Vec<&'a String> {
    let Some(metrics) = metrics else { return vec![] };
    let mut out: Vec<&String> = vec![];
    for c in &f.exp.claims {
        if let Some((k, _)) = metrics.get_key_value(&c.metric) {
            if !out.contains(&k) {
                out.push(k);
            }
        }
    }
    out.extend(metrics.keys().filter(|k| !out.contains(k)).collect::<Vec<_>>());
    out
}
