//! The data directory: where dataset files live, whether a dataset is present, and getting
//! files into it — downloaded (`fetch`) or copied from a local folder (`--from`), always
//! checked against the SHA-256 table before anything is moved into place.
//!
//! The directory is `--data-dir`, else `$REGLAB_DATA`, else `data/` in the checkout. Files of a
//! dataset are first gathered in a temporary folder beside it; only when every file's checksum
//! matches are they renamed into `<dir>/<dataset>/`. On any error the temporary folder is removed,
//! so a corrupt or partial download leaves nothing behind.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};
use sha2::{Digest, Sha256};

use super::catalog::{DataFile, DatasetInfo};

/// Overrides every dataset's base URL: files are fetched from `$REGLAB_DATA_URL/<dataset>/<file>`
/// (a mirror, or a test server).
pub const BASE_URL_ENV: &str = "REGLAB_DATA_URL";

/// The data directory: `--data-dir`, else `$REGLAB_DATA`, else `data/` in the checkout.
pub fn data_dir(cli: Option<&Path>) -> PathBuf {
    if let Some(p) = cli {
        return p.to_path_buf();
    }
    if let Some(p) = std::env::var_os("REGLAB_DATA").filter(|p| !p.is_empty()) {
        return PathBuf::from(p);
    }
    Path::new(env!("CARGO_MANIFEST_DIR")).join("data")
}

/// The complete file set of `info` found in `dir/<name>/`, if any.
pub fn present_set(dir: &Path, info: &DatasetInfo) -> Option<&'static [DataFile]> {
    info.file_sets.iter().copied().find(|set| set.iter().all(|f| dir.join(info.name).join(f.name).is_file()))
}

/// Total size in bytes of a present file set.
pub fn set_size(dir: &Path, info: &DatasetInfo, set: &[DataFile]) -> u64 {
    set.iter().filter_map(|f| std::fs::metadata(dir.join(info.name).join(f.name)).ok()).map(|m| m.len()).sum()
}

/// The error for a dataset that is not there, with the commands that get it.
pub fn missing_message(dir: &Path, info: &DatasetInfo) -> String {
    let wanted: Vec<&str> = info.file_sets[0].iter().map(|f| f.name).collect();
    format!(
        "dataset `{}` is not in {} (expected {}). Get it with `reglab data fetch {}` (needs internet), or here: {}",
        info.name,
        dir.join(info.name).display(),
        wanted.join(", "),
        info.name,
        info.offline
    )
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    let digest = Sha256::digest(bytes);
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

fn sha256_file(path: &Path) -> Result<String> {
    let mut file = std::fs::File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hasher.finalize().iter().map(|b| format!("{b:02x}")).collect())
}

/// Removes a temporary folder on drop unless it was kept.
struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Where a file comes from.
pub enum Origin<'a> {
    /// Download `{base}{file}`.
    Url(String),
    /// Copy from a local folder.
    Folder(&'a Path),
}

/// Puts a file set of `info` into `dir/<name>/`: every file gathered into a temp folder, the
/// whole set checked against one of the dataset's checksum sets, then all moved into place.
/// From a URL the canonical (first) set is fetched; from a folder, the first set whose files
/// are all there. Returns (file, bytes) of what was installed.
pub fn install(dir: &Path, info: &DatasetInfo, origin: &Origin, progress: bool) -> Result<Vec<(String, u64)>> {
    let set: &[DataFile] = match origin {
        Origin::Url(_) => info.file_sets[0],
        Origin::Folder(from) => info
            .file_sets
            .iter()
            .copied()
            .find(|set| set.iter().all(|f| from.join(f.name).is_file()))
            .ok_or_else(|| {
                let wanted: Vec<&str> = info.file_sets[0].iter().map(|f| f.name).collect();
                anyhow!("{} does not hold the files of `{}` ({})", from.display(), info.name, wanted.join(", "))
            })?,
    };
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create the data directory {}", dir.display()))?;
    let tmp = TempDir(dir.join(format!(".fetch-{}-{}", info.name, std::process::id())));
    std::fs::create_dir_all(&tmp.0)?;
    let mut sums = vec![];
    for f in set {
        let part = tmp.0.join(f.name);
        match origin {
            Origin::Url(base) => {
                let url = format!("{base}{}", f.name);
                if progress {
                    eprintln!("fetching {url}");
                }
                download(&url, &part).with_context(|| format!("downloading {url}; nothing was kept"))?;
            }
            Origin::Folder(from) => {
                let src = from.join(f.name);
                std::fs::copy(&src, &part).with_context(|| format!("cannot copy {}", src.display()))?;
            }
        }
        sums.push(sha256_file(&part)?);
    }
    // The set the files match: same names, every checksum equal.
    let matches = |candidate: &[DataFile]| {
        candidate.len() == set.len() && candidate.iter().zip(set).zip(&sums).all(|((c, f), got)| c.name == f.name && c.sha256 == got)
    };
    if !info.file_sets.iter().any(|candidate| matches(candidate)) {
        let bad: Vec<String> = set
            .iter()
            .zip(&sums)
            .filter(|(f, got)| f.sha256 != got.as_str())
            .map(|(f, got)| format!("{}: expected sha256 {}, got {got}", f.name, f.sha256))
            .collect();
        bail!(
            "checksum mismatch ({}). The files are corrupt, truncated or another version; nothing was kept",
            bad.join("; ")
        );
    }
    let mut done = vec![];
    for f in set {
        done.push((f.name.to_string(), std::fs::metadata(tmp.0.join(f.name))?.len()));
    }
    let target = dir.join(info.name);
    if !target.exists() {
        // One rename moves the whole verified set into place.
        std::fs::rename(&tmp.0, &target).with_context(|| format!("cannot move the files into {}", target.display()))?;
    } else {
        for f in set {
            std::fs::rename(tmp.0.join(f.name), target.join(f.name)).with_context(|| format!("cannot move {} into {}", f.name, target.display()))?;
        }
    }
    Ok(done)
}

/// The base URL of `info`: `$REGLAB_DATA_URL/<name>/` when set, else the canonical one.
pub fn base_url(info: &DatasetInfo) -> String {
    match std::env::var(BASE_URL_ENV) {
        Ok(base) if !base.is_empty() => format!("{}/{}/", base.trim_end_matches('/'), info.name),
        _ => info.base_url.to_string(),
    }
}

fn download(url: &str, to: &Path) -> Result<()> {
    let response = ureq::get(url).call().map_err(|e| anyhow!("{e}"))?;
    let mut reader = response.into_reader();
    let mut file = std::fs::File::create(to).with_context(|| format!("cannot create {}", to.display()))?;
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = reader.read(&mut buf).context("the connection broke off")?;
        if n == 0 {
            break;
        }
        file.write_all(&buf[..n])?;
    }
    file.sync_all().ok();
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{BufRead, BufReader};
    use std::net::TcpListener;

    #[test]
    fn sha256_of_known_input() {
        assert_eq!(sha256_hex(b"abc"), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
    }

    /// Serves `files` (path → body) on 127.0.0.1 for `requests` requests; 404 for others.
    fn serve(files: Vec<(String, Vec<u8>)>, requests: usize) -> String {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        std::thread::spawn(move || {
            for stream in listener.incoming().take(requests) {
                let mut stream = stream.unwrap();
                let mut line = String::new();
                BufReader::new(&stream).read_line(&mut line).unwrap();
                let path = line.split_whitespace().nth(1).unwrap_or("").to_string();
                let reply = match files.iter().find(|(p, _)| *p == path) {
                    Some((_, body)) => [format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n", body.len()).into_bytes(), body.clone()].concat(),
                    None => b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n".to_vec(),
                };
                let _ = stream.write_all(&reply);
            }
        });
        format!("http://{addr}")
    }

    fn info(files: Vec<DataFile>) -> DatasetInfo {
        let set: &'static [DataFile] = Box::leak(files.into_boxed_slice());
        let sets: &'static [&'static [DataFile]] = Box::leak(vec![set].into_boxed_slice());
        DatasetInfo { name: "toy", what: "", licence: "", base_url: "", file_sets: sets, offline: "", bundled: false }
    }

    fn leftovers(dir: &Path) -> Vec<String> {
        std::fs::read_dir(dir).map(|r| r.map(|e| e.unwrap().file_name().to_string_lossy().to_string()).collect()).unwrap_or_default()
    }

    #[test]
    fn fetch_verifies_then_moves_and_a_bad_checksum_leaves_nothing() {
        let dir = std::env::temp_dir().join(format!("reglab-fetch-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let (a, b) = (b"first file".to_vec(), b"second file".to_vec());
        let good = info(vec![
            DataFile { name: "a.bin", sha256: Box::leak(sha256_hex(&a).into_boxed_str()) },
            DataFile { name: "b.bin", sha256: Box::leak(sha256_hex(&b).into_boxed_str()) },
        ]);
        let base = serve(vec![("/toy/a.bin".into(), a.clone()), ("/toy/b.bin".into(), b.clone())], 2);
        let done = install(&dir, &good, &Origin::Url(format!("{base}/toy/")), false).unwrap();
        assert_eq!(done, vec![("a.bin".to_string(), 10), ("b.bin".to_string(), 11)]);
        assert_eq!(std::fs::read(dir.join("toy/b.bin")).unwrap(), b);
        assert!(present_set(&dir, &good).is_some());
        assert_eq!(leftovers(&dir), vec!["toy"], "no temp folder left");

        // The second file is corrupt: neither file may be kept.
        let other = dir.join("other");
        let base = serve(vec![("/toy/a.bin".into(), a.clone()), ("/toy/b.bin".into(), b"tampered".to_vec())], 2);
        let msg = install(&other, &good, &Origin::Url(format!("{base}/toy/")), false).unwrap_err().to_string();
        assert!(msg.contains("checksum mismatch") && msg.contains("b.bin") && msg.contains("nothing was kept"), "{msg}");
        assert!(leftovers(&other).is_empty(), "{:?}", leftovers(&other));

        // A missing file (404) is an error that also leaves nothing.
        let base = serve(vec![("/toy/a.bin".into(), a)], 2);
        let msg = format!("{:#}", install(&other, &good, &Origin::Url(format!("{base}/toy/")), false).unwrap_err());
        assert!(msg.contains("b.bin") && msg.contains("404"), "{msg}");
        assert!(leftovers(&other).is_empty());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
