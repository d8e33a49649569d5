//! MovieLens-100k ratings: GroupLens' `u.data` (tab-separated user, item, rating, timestamp,
//! ids from 1) or RecBole's `ml-100k.inter` (the same columns under a typed header line).

use std::path::Path;

use anyhow::{bail, Context, Result};
use tch::Tensor;

/// Ratings as tensors: users and items 0-based i64, ratings f32, timestamps i64.
#[derive(Debug)]
pub struct Ratings {
    pub users: Tensor,
    pub items: Tensor,
    pub ratings: Tensor,
    pub timestamps: Tensor,
    pub n_users: i64,
    pub n_items: i64,
}

pub fn read_ratings(path: &Path) -> Result<Ratings> {
    let text = String::from_utf8(super::read_maybe_gz(path)?).with_context(|| format!("{} is not UTF-8 text", path.display()))?;
    parse_ratings(&text).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))
}

pub fn parse_ratings(text: &str) -> Result<Ratings> {
    let (mut u, mut i, mut r, mut t) = (vec![], vec![], vec![], vec![]);
    for (lineno, line) in text.lines().enumerate() {
        if line.trim().is_empty() || (lineno == 0 && line.contains(':')) {
            continue; // blank, or RecBole's `user_id:token ...` header
        }
        let cols: Vec<&str> = line.split(['\t', ' ']).filter(|c| !c.is_empty()).collect();
        if cols.len() < 4 {
            bail!("line {}: expected user, item, rating, timestamp; got `{line}`", lineno + 1);
        }
        let num = |k: usize| -> Result<f64> {
            cols[k].parse::<f64>().map_err(|_| anyhow::anyhow!("line {}: `{}` is not a number", lineno + 1, cols[k]))
        };
        let (user, item) = (num(0)? as i64, num(1)? as i64);
        if user < 1 || item < 1 {
            bail!("line {}: ids start at 1", lineno + 1);
        }
        u.push(user - 1);
        i.push(item - 1);
        r.push(num(2)? as f32);
        t.push(num(3)? as i64);
    }
    if u.is_empty() {
        bail!("no ratings");
    }
    let n_users = u.iter().max().copied().unwrap_or(0) + 1;
    let n_items = i.iter().max().copied().unwrap_or(0) + 1;
    Ok(Ratings {
        users: Tensor::from_slice(&u),
        items: Tensor::from_slice(&i),
        ratings: Tensor::from_slice(&r),
        timestamps: Tensor::from_slice(&t),
        n_users,
        n_items,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn u_data_and_recbole_inter_parse_alike() {
        let u_data = "196\t242\t3\t881250949\n186\t302\t3\t891717742\n22\t377\t1\t878887116\n";
        let inter = "user_id:token\titem_id:token\trating:float\ttimestamp:float\n196\t242\t3\t881250949\n186\t302\t3\t891717742\n22\t377\t1\t878887116\n";
        for text in [u_data, inter] {
            let r = parse_ratings(text).unwrap();
            assert_eq!(Vec::<i64>::try_from(&r.users).unwrap(), vec![195, 185, 21]);
            assert_eq!(Vec::<i64>::try_from(&r.items).unwrap(), vec![241, 301, 376]);
            assert_eq!(Vec::<f32>::try_from(&r.ratings).unwrap(), vec![3.0, 3.0, 1.0]);
            assert_eq!((r.n_users, r.n_items), (196, 377));
        }
        assert!(parse_ratings("1\t2\n").unwrap_err().to_string().contains("line 1"));
    }
}
