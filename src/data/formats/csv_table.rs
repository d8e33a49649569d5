//! Numeric tables in CSV (optionally gzipped): the bundled digits and a user's own data.
//!
//! A header row is detected (any non-numeric field in the first row). The label column is named
//! by header name or by index (negative counts from the end: -1 is the last column); the
//! features are the columns listed, or all the others. Labels that are all integers are kept
//! as they are; otherwise each distinct value becomes a class, in sorted order.

use std::path::Path;

use anyhow::{anyhow, bail, Context, Result};
use tch::Tensor;

#[derive(Debug)]
pub struct Table {
    /// f32 [N, D]
    pub features: Tensor,
    /// i64 [N]
    pub labels: Tensor,
    pub feature_names: Vec<String>,
    /// Class names when the labels were strings.
    pub class_names: Vec<String>,
}

/// Finds a column by header name or by (possibly negative) index.
fn column_index(spec: &str, header: Option<&[String]>, width: usize) -> Result<usize> {
    if let Some(h) = header {
        if let Some(i) = h.iter().position(|c| c == spec) {
            return Ok(i);
        }
    }
    let idx: i64 = spec.parse().map_err(|_| {
        let names = header.map(|h| h.join(", ")).unwrap_or_else(|| "(no header row: use a column index)".into());
        anyhow!("no column `{spec}`; columns: {names}; or give an index 0..{width} (-1 = last)")
    })?;
    let i = if idx < 0 { width as i64 + idx } else { idx };
    if i < 0 || i >= width as i64 {
        bail!("column index {idx} is outside 0..{width}");
    }
    Ok(i as usize)
}

pub fn read_table(path: &Path, label: &str, features: &[String]) -> Result<Table> {
    let bytes = super::read_maybe_gz(path)?;
    parse_table(&bytes, label, features).with_context(|| format!("reading CSV table {}", path.display()))
}

pub fn parse_table(bytes: &[u8], label: &str, features: &[String]) -> Result<Table> {
    let mut reader = csv::ReaderBuilder::new().has_headers(false).trim(csv::Trim::All).from_reader(bytes);
    let mut rows: Vec<Vec<String>> = vec![];
    for (i, rec) in reader.records().enumerate() {
        let rec = rec.with_context(|| format!("row {}", i + 1))?;
        rows.push(rec.iter().map(str::to_string).collect());
    }
    if rows.is_empty() {
        bail!("the table is empty");
    }
    let header = if rows[0].iter().any(|f| f.parse::<f64>().is_err()) { Some(rows.remove(0)) } else { None };
    if rows.is_empty() {
        bail!("the table has a header row but no data rows");
    }
    let width = header.as_ref().map_or(rows.first().map_or(0, Vec::len), Vec::len);
    let label_col = column_index(label, header.as_deref(), width)?;
    let feature_cols: Vec<usize> = if features.is_empty() {
        (0..width).filter(|&c| c != label_col).collect()
    } else {
        features.iter().map(|f| column_index(f, header.as_deref(), width)).collect::<Result<_>>()?
    };
    if feature_cols.contains(&label_col) {
        bail!("the label column is also listed as a feature");
    }
    let mut x = Vec::with_capacity(rows.len() * feature_cols.len());
    let mut raw_labels = Vec::with_capacity(rows.len());
    for (r, row) in rows.iter().enumerate() {
        if row.len() != width {
            bail!("row {} has {} fields, expected {width}", r + 1 + header.is_some() as usize, row.len());
        }
        for &c in &feature_cols {
            let v: f32 = row[c].parse().map_err(|_| anyhow!("row {}, column {c}: `{}` is not a number", r + 1 + header.is_some() as usize, row[c]))?;
            x.push(v);
        }
        raw_labels.push(row[label_col].clone());
    }
    let ints: Option<Vec<i64>> = raw_labels.iter().map(|s| s.parse::<f64>().ok().filter(|v| v.fract() == 0.0).map(|v| v as i64)).collect();
    let (labels, class_names) = match ints {
        Some(v) => (v, vec![]),
        None => {
            let mut names: Vec<String> = raw_labels.clone();
            names.sort();
            names.dedup();
            (raw_labels.iter().map(|s| names.binary_search(s).expect("present") as i64).collect(), names)
        }
    };
    let names = match &header {
        Some(h) => feature_cols.iter().map(|&c| h[c].clone()).collect(),
        None => feature_cols.iter().map(|c| format!("col{c}")).collect(),
    };
    let n = rows.len() as i64;
    Ok(Table {
        features: Tensor::from_slice(&x).view([n, feature_cols.len() as i64]),
        labels: Tensor::from_slice(&labels),
        feature_names: names,
        class_names,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headerless_last_column_label() {
        let t = parse_table(b"0,1.5,2\n3,4,1\n", "-1", &[]).unwrap();
        assert_eq!(t.features.size(), vec![2, 2]);
        assert_eq!(Vec::<f32>::try_from(t.features.flatten(0, -1)).unwrap(), vec![0.0, 1.5, 3.0, 4.0]);
        assert_eq!(Vec::<i64>::try_from(&t.labels).unwrap(), vec![2, 1]);
    }

    #[test]
    fn header_names_string_labels_and_chosen_features() {
        let csv = b"a,b,species,c\n1,2,virginica,3\n4,5,setosa,6\n7,8,virginica,9\n";
        let t = parse_table(csv, "species", &["c".into(), "a".into()]).unwrap();
        assert_eq!(Vec::<f32>::try_from(t.features.flatten(0, -1)).unwrap(), vec![3.0, 1.0, 6.0, 4.0, 9.0, 7.0]);
        assert_eq!(Vec::<i64>::try_from(&t.labels).unwrap(), vec![1, 0, 1]);
        assert_eq!(t.class_names, vec!["setosa", "virginica"]);
        assert_eq!(t.feature_names, vec!["c", "a"]);
        let msg = parse_table(csv, "kind", &[]).unwrap_err().to_string();
        assert!(msg.contains("no column `kind`") && msg.contains("species"), "{msg}");
        let msg = format!("{:#}", parse_table(b"1,2,0\n3,x,1\n", "-1", &[]).unwrap_err());
        assert!(msg.contains("row 2"), "{msg}");
        assert!(parse_table(b"a,b\n", "b", &[]).unwrap_err().to_string().contains("no data rows"));
    }
}
