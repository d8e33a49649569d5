//! Stages that several runs of one experiment compute identically — a pretrained network every
//! method of a seed starts from, a GAN every unlearning arm edits — computed once per seed and
//! reused by the other runs.
//!
//! Each run is its own process (crash isolation, `--jobs`), so the cache is on disk: a folder per
//! experiment (`<out>/<spec>/stage_cache/`), and per stage, seed and key one `.pt` of tensors and
//! one `.json` (what the stage logged, the summary values it set, the step counter, the paper's
//! Rust RNG after it). A file lock per entry makes a second run that needs the same stage wait for
//! the first instead of computing it too (Ctrl-C still stops the wait); a local filesystem drops
//! the lock with its process, so a killed run leaves none behind. Where the cache cannot be used —
//! no locks on this filesystem, a full disk — the stage is computed as if there were none.
//!
//! A reused stage must leave the run exactly where computing it would have: the same tensors
//! (saved losslessly), the same metrics in `metrics.csv` (replayed), the same Rust RNG. Torch's
//! global generator cannot be read or set through tch, so after a stage — computed, reused or
//! uncached alike — it is reseeded from the run's seed and the stage's name. The key holds what
//! the stage's result depends on within one build and one dataset: the stage's name, the config
//! the paper passes (the whole config with the arm-only keys reset, so a key it forgets can only
//! cost a hit, never give a wrong one), the seed, the device, torch's thread count and this
//! executable's SHA-256 (a rebuilt binary recomputes). libtorch is linked dynamically and the
//! dataset files are not hashed: after replacing either, delete the folder. `REGLAB_NO_STAGE_CACHE=1`
//! turns reuse off.

use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tch::{Device, Tensor};

use crate::context::{Recording, Rng, RunCtx};

/// A stage's key: `cfg` with each named field reset to its `Default` value — the keys only the
/// arms read, so that a key left out of the list can only cost a reuse, never give a wrong one.
/// `with_defaults!(cfg; method, epochs)`.
macro_rules! with_defaults {
    ($cfg:expr; $($field:ident),+ $(,)?) => {{
        let mut key = ::std::clone::Clone::clone($cfg);
        let defaults = {
            fn default_like<T: Default>(_: &T) -> T {
                T::default()
            }
            default_like(&key)
        };
        $(key.$field = defaults.$field;)+
        key
    }};
}
pub(crate) use with_defaults;

/// The folder the runner gives every run of the experiment in `exp_dir`.
pub fn dir_for(exp_dir: &Path) -> PathBuf {
    exp_dir.join("stage_cache")
}

/// What the `.json` beside a stage's tensors holds. Values as their IEEE bits: serde_json's
/// decimal parsing may miss the last bit, and a reused stage must log the very same numbers.
#[derive(Debug, Serialize, Deserialize)]
struct Entry {
    stage: String,
    seed: u64,
    tensors: usize,
    rng: u64,
    /// The run's step counter after the stage (a later `failed` summary names it).
    step: u64,
    logs: Vec<(u64, String, u64)>,
    finals: Vec<(String, u64)>,
}

impl Entry {
    fn recording(&self) -> Recording {
        Recording {
            step: self.step,
            logs: self.logs.iter().map(|(s, m, v)| (*s, m.clone(), f64::from_bits(*v))).collect(),
            finals: self.finals.iter().map(|(m, v)| (m.clone(), f64::from_bits(*v))).collect(),
        }
    }
}

/// Whether the last [`cached`] call in this process computed its stage or reused it (tests).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    Computed,
    Reused,
    Uncached,
}

thread_local! {
    static LAST: std::cell::Cell<Option<Source>> = const { std::cell::Cell::new(None) };
}

/// How the last stage of this thread was obtained.
pub fn last_source() -> Option<Source> {
    LAST.with(|l| l.get())
}

/// Runs `compute` — or reuses what an earlier run of this experiment computed for the same
/// stage, config and seed — and returns its tensors on the run's device, `rng` in the state that
/// computing leaves it in, and `compute`'s metrics logged into `ctx`. `stage` names it
/// (`paper/stage`); `key` is every setting its result depends on. Torch's generator is reseeded
/// afterwards on every path (see the module doc).
pub fn cached<K: Serialize>(
    ctx: &mut RunCtx,
    stage: &str,
    key: &K,
    rng: &mut Rng,
    compute: impl FnOnce(&mut RunCtx, &mut Rng) -> Result<Vec<Tensor>>,
) -> Result<Vec<Tensor>> {
    let dir = ctx.stage_dir().map(Path::to_path_buf).filter(|_| std::env::var_os("REGLAB_NO_STAGE_CACHE").is_none_or(|v| v.is_empty() || v == "0"));
    let out = match dir {
        None => {
            let out = compute(ctx, rng)?;
            LAST.with(|l| l.set(Some(Source::Uncached)));
            out.iter().map(Tensor::detach).collect()
        }
        Some(dir) => through_cache(ctx, &dir, stage, key, rng, compute)?,
    };
    tch::manual_seed(reseed(ctx.seed, stage));
    Ok(out)
}

/// The seed torch gets after `stage` of the run with `seed`.
fn reseed(seed: u64, stage: &str) -> i64 {
    let h = Sha256::digest(stage.as_bytes());
    let salt = u64::from_le_bytes(h[..8].try_into().expect("8 bytes"));
    ((seed ^ salt) & i64::MAX as u64) as i64
}

/// The entry's files and its lock, or why the cache cannot be used here (then the stage is
/// computed without it: a filesystem without locks or a full disk must not fail the run).
fn open_entry<K: Serialize>(dir: &Path, stage: &str, key: &K, seed: u64, device: Device) -> Result<(PathBuf, PathBuf, File)> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create the stage cache {}", dir.display()))?;
    let base = format!("{}-seed{seed}-{}", crate::params::sanitize(stage), key_hash(stage, key, seed, device)?);
    let (pt, json, lock_path) = (dir.join(format!("{base}.pt")), dir.join(format!("{base}.json")), dir.join(format!("{base}.lock")));
    let lock = OpenOptions::new().create(true).truncate(false).write(true).open(&lock_path).with_context(|| format!("cannot open {}", lock_path.display()))?;
    Ok((pt, json, lock))
}

/// Waits for the entry's lock (another run may be computing the stage), stopping if Ctrl-C is
/// pressed; an error other than "held" means this filesystem has no working locks.
fn wait_for_lock(lock: &File, ctx: &RunCtx) -> Result<bool> {
    loop {
        match lock.try_lock() {
            Ok(()) => return Ok(true),
            Err(std::fs::TryLockError::WouldBlock) => {
                if crate::context::cancel_requested() {
                    return Err(crate::context::Interrupted { step: ctx.step() }.into());
                }
                std::thread::sleep(std::time::Duration::from_millis(100));
            }
            Err(std::fs::TryLockError::Error(e)) => {
                tracing::warn!("the stage cache cannot lock its entry ({e}); computing the stage without it");
                return Ok(false);
            }
        }
    }
}

fn through_cache<K: Serialize>(
    ctx: &mut RunCtx,
    dir: &Path,
    stage: &str,
    key: &K,
    rng: &mut Rng,
    compute: impl FnOnce(&mut RunCtx, &mut Rng) -> Result<Vec<Tensor>>,
) -> Result<Vec<Tensor>> {
    let opened = open_entry(dir, stage, key, ctx.seed, ctx.device);
    let locked = match &opened {
        Ok((_, _, lock)) => wait_for_lock(lock, ctx)?,
        Err(e) => {
            tracing::warn!("the stage cache cannot be used ({e:#}); computing the stage without it");
            false
        }
    };
    let (Ok((pt, json, lock)), true) = (opened, locked) else {
        let out = compute(ctx, rng)?;
        LAST.with(|l| l.set(Some(Source::Uncached)));
        return Ok(out.iter().map(Tensor::detach).collect());
    };
    if json.is_file() && pt.is_file() {
        match load(&json, &pt, stage, ctx.seed, ctx.device) {
            Ok((entry, tensors)) => {
                drop(lock);
                ctx.replay(&entry.recording())?;
                *rng = Rng::from_state(entry.rng);
                LAST.with(|l| l.set(Some(Source::Reused)));
                return Ok(tensors);
            }
            Err(e) => tracing::warn!("the cached stage {} cannot be read ({e:#}); computing it again", json.display()),
        }
    }
    ctx.start_recording();
    let computed = compute(ctx, rng);
    let recording = ctx.take_recording();
    let out: Vec<Tensor> = computed?.iter().map(Tensor::detach).collect();
    let entry = Entry {
        stage: stage.to_string(),
        seed: ctx.seed,
        tensors: out.len(),
        rng: rng.state(),
        step: recording.step,
        logs: recording.logs.iter().map(|(s, m, v)| (*s, m.clone(), v.to_bits())).collect(),
        finals: recording.finals.iter().map(|(m, v)| (m.clone(), v.to_bits())).collect(),
    };
    if let Err(e) = store(&pt, &json, &out, &entry) {
        tracing::warn!("the stage cache cannot keep {} ({e:#}); the other runs will compute it again", json.display());
    }
    drop(lock);
    LAST.with(|l| l.set(Some(Source::Computed)));
    Ok(out)
}

fn tensor_name(i: usize) -> String {
    format!("t{i}")
}

fn store(pt: &Path, json: &Path, tensors: &[Tensor], entry: &Entry) -> Result<()> {
    let named: Vec<(String, Tensor)> = tensors.iter().enumerate().map(|(i, t)| (tensor_name(i), t.to_device(Device::Cpu))).collect();
    let tmp = pt.with_extension(format!("pt.tmp.{}", crate::fsutil::unique_suffix()));
    Tensor::save_multi(&named, &tmp).with_context(|| format!("cannot write {}", tmp.display()))?;
    std::fs::rename(&tmp, pt).with_context(|| format!("cannot move {} to {}", tmp.display(), pt.display()))?;
    // The `.json` last: an entry is complete only when both are there.
    crate::fsutil::write_atomic(json, serde_json::to_string(entry)?.as_bytes())
}

fn load(json: &Path, pt: &Path, stage: &str, seed: u64, device: Device) -> Result<(Entry, Vec<Tensor>)> {
    let entry: Entry = serde_json::from_slice(&std::fs::read(json)?)?;
    if entry.stage != stage || entry.seed != seed {
        bail!("it holds stage `{}` of seed {}", entry.stage, entry.seed);
    }
    let mut named = Tensor::load_multi_with_device(pt, device)?;
    named.sort_by_key(|(n, _)| n.strip_prefix('t').and_then(|i| i.parse::<usize>().ok()).unwrap_or(usize::MAX));
    if named.len() != entry.tensors || named.iter().enumerate().any(|(i, (n, _))| *n != tensor_name(i)) {
        bail!("it holds {} tensors, its index says {}", named.len(), entry.tensors);
    }
    Ok((entry, named.into_iter().map(|(_, t)| t).collect()))
}

/// The entry's file name part: SHA-256 (first 16 hex digits) of everything the stage's result
/// depends on.
fn key_hash<K: Serialize>(stage: &str, key: &K, seed: u64, device: Device) -> Result<String> {
    let text = serde_json::to_string(&(stage, key, seed, crate::device::name(device), tch::get_num_threads(), executable_id()))?;
    let h = Sha256::digest(text.as_bytes());
    Ok(h[..8].iter().map(|b| format!("{b:02x}")).collect())
}

/// SHA-256 of this executable, read once: a stage computed by another build is never reused.
fn executable_id() -> &'static str {
    static ID: OnceLock<String> = OnceLock::new();
    ID.get_or_init(|| {
        let hash = std::env::current_exe().and_then(|p| {
            let mut file = File::open(p)?;
            let mut h = Sha256::new();
            std::io::copy(&mut file, &mut h)?;
            Ok(h.finalize().iter().map(|b| format!("{b:02x}")).collect::<String>())
        });
        // Unreadable: a fresh value per process, so nothing is ever reused across processes.
        hash.unwrap_or_else(|_| format!("unreadable-{}-{:?}", std::process::id(), std::time::SystemTime::now()))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::context::ProgressMode;
    use crate::testutil::f64s;

    fn ctx_in(dir: &Path, cache: Option<&Path>) -> RunCtx {
        std::fs::create_dir_all(dir).unwrap();
        let mut ctx = RunCtx::new(dir, "t", 7, Device::Cpu, ProgressMode::Quiet, dir).unwrap();
        if let Some(c) = cache {
            ctx.set_stage_dir(c);
        }
        ctx
    }

    /// A stage with Rust draws, logs and a summary value; returns its tensors. (Torch's generator
    /// is one per process and other tests draw from it in parallel, so none here; the CLI tests
    /// check a reused stage's torch draws through whole runs.)
    fn stage(ctx: &mut RunCtx, rng: &mut Rng, calls: &mut u32, scale: f64) -> Result<Vec<Tensor>> {
        *calls += 1;
        let draws: Vec<f32> = (0..12).map(|_| rng.normal() as f32).collect();
        let w = Tensor::from_slice(&draws).view([3, 4]) * scale;
        let flags = Tensor::from_slice(&[true, false]);
        for step in 1..=3 {
            ctx.log_all(step, &[("stage_loss", rng.uniform()), ("w_sum", w.sum(tch::Kind::Double).double_value(&[]))])?;
        }
        // A value serde_json's decimal parsing reads back one bit off.
        ctx.log_all(3, &[("hard_decimal", 1.2315137386322021)])?;
        ctx.set_final("stage_acc", rng.uniform())?;
        Ok(vec![w, flags, Tensor::from_slice(&[1.5f64, -2.0])])
    }

    /// A run: the stage through the cache, then more Rust draws after it.
    fn run(dir: &Path, cache: Option<&Path>, calls: &mut u32, scale: f64) -> (Vec<Vec<f64>>, Vec<f64>, String, Option<Source>) {
        let mut ctx = ctx_in(dir, cache);
        let mut rng = Rng::new(3);
        let _ = rng.next_u64();
        let out = cached(&mut ctx, "test/stage", &("cfg", scale), &mut rng, |c, r| stage(c, r, calls, scale)).unwrap();
        let source = last_source();
        ctx.log_all(4, &[("after_rng", rng.uniform())]).unwrap();
        ctx.finish().unwrap();
        let finals: Vec<f64> = ctx.final_metrics().values().copied().collect();
        let tensors = out.iter().map(|t| f64s(&t.to_kind(tch::Kind::Double))).collect();
        (tensors, finals, std::fs::read_to_string(dir.join("metrics.csv")).unwrap(), source)
    }

    #[test]
    fn a_reused_stage_leaves_the_run_where_computing_it_does() {
        let root = std::env::temp_dir().join(format!("reglab-stage-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        let cache = root.join("cache");
        let mut calls = 0;
        let uncached = run(&root.join("a"), None, &mut calls, 1.0);
        let computed = run(&root.join("b"), Some(&cache), &mut calls, 1.0);
        let reused = run(&root.join("c"), Some(&cache), &mut calls, 1.0);
        assert_eq!((uncached.3, computed.3, reused.3), (Some(Source::Uncached), Some(Source::Computed), Some(Source::Reused)));
        assert_eq!(calls, 2, "the third run reuses the second's stage");
        for other in [&computed, &reused] {
            assert_eq!(other.0, uncached.0, "the stage's tensors");
            assert_eq!(other.1, uncached.1, "the summary values, the stage's set_final among them");
            assert_eq!(other.2, uncached.2, "metrics.csv: the stage's logs, then the Rust RNG after it");
        }
        assert!(uncached.2.contains("3,stage_loss,") && uncached.2.contains("4,after_rng,"));
        // Another key computes afresh and gives other tensors.
        let other = run(&root.join("d"), Some(&cache), &mut calls, 2.0);
        assert_eq!((other.3, calls), (Some(Source::Computed), 3));
        assert_ne!(other.0[0], uncached.0[0]);
        // An entry whose tensors are damaged is computed again, and the result is the same.
        for f in std::fs::read_dir(&cache).unwrap() {
            let p = f.unwrap().path();
            if p.extension().is_some_and(|e| e == "pt") {
                std::fs::write(&p, b"not a tensor file").unwrap();
            }
        }
        let again = run(&root.join("e"), Some(&cache), &mut calls, 1.0);
        assert_eq!((again.3, calls), (Some(Source::Computed), 4));
        assert_eq!((again.0, again.2), (uncached.0.clone(), uncached.2.clone()));
        std::fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn a_second_run_waits_for_the_one_computing_the_stage_and_reuses_it() {
        use std::sync::atomic::{AtomicU32, Ordering};
        let root = std::env::temp_dir().join(format!("reglab-stage-wait-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        let cache = root.join("cache");
        let computed = AtomicU32::new(0);
        let go = |name: &str, delay_ms: u64| {
            std::thread::sleep(std::time::Duration::from_millis(delay_ms));
            let mut ctx = ctx_in(&root.join(name), Some(&cache));
            let mut rng = Rng::new(5);
            let out = cached(&mut ctx, "test/slow", &1, &mut rng, |c, r| {
                computed.fetch_add(1, Ordering::SeqCst);
                // Long enough that the second run asks while this one holds the lock.
                std::thread::sleep(std::time::Duration::from_millis(600));
                c.log_all(1, &[("slow", r.uniform())])?;
                Ok(vec![Tensor::from_slice(&[r.uniform()])])
            })
            .unwrap();
            (f64s(&out[0]), rng.state(), last_source())
        };
        let (first, second) = std::thread::scope(|s| {
            let a = s.spawn(|| go("a", 0));
            let b = s.spawn(|| go("b", 150));
            (a.join().unwrap(), b.join().unwrap())
        });
        assert_eq!(computed.load(Ordering::SeqCst), 1, "the second run waited for the lock instead of computing too");
        assert_eq!((first.2, second.2), (Some(Source::Computed), Some(Source::Reused)));
        assert_eq!((first.0, first.1), (second.0, second.1));
        std::fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn with_defaults_resets_the_named_fields_only() {
        #[derive(Clone, Debug, PartialEq)]
        struct Cfg {
            a: u32,
            b: Vec<u32>,
            c: f64,
        }
        impl Default for Cfg {
            fn default() -> Self {
                Cfg { a: 1, b: vec![2], c: 3.0 }
            }
        }
        let cfg = Cfg { a: 10, b: vec![20, 21], c: 30.0 };
        assert_eq!(with_defaults!(&cfg; a, c), Cfg { a: 1, b: vec![20, 21], c: 3.0 });
        assert_eq!(with_defaults!(&cfg; b), Cfg { a: 10, b: vec![2], c: 30.0 });
    }

    #[test]
    fn the_key_changes_with_seed_stage_and_config_and_the_reseed_with_seed_and_stage() {
        let k = |stage: &str, cfg: i32, seed: u64| key_hash(stage, &cfg, seed, Device::Cpu).unwrap();
        assert_eq!(k("a", 1, 0), k("a", 1, 0));
        assert_ne!(k("a", 1, 0), k("a", 2, 0));
        assert_ne!(k("a", 1, 0), k("a", 1, 1));
        assert_ne!(k("a", 1, 0), k("b", 1, 0));
        assert_ne!(reseed(0, "a"), reseed(1, "a"));
        assert_ne!(reseed(0, "a"), reseed(0, "b"));
        assert!(reseed(u64::MAX, "a") >= 0);
    }
}
