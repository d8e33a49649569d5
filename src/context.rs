//! The run context a paper's `run` receives: device, seed, metric logging, progress, cancellation.
//!
//! Metrics are appended to `metrics.csv` (long format `step,metric,value`) as the run goes, so a
//! crash or Ctrl-C loses nothing already logged. A non-finite value ends the run as `diverged`;
//! a pending Ctrl-C ends it as `interrupted` at the next `log` or `tick`.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use tch::Device;

static CANCELLED: AtomicBool = AtomicBool::new(false);

/// Asks every running run to stop at its next step (set by the Ctrl-C handler).
pub fn request_cancel() {
    CANCELLED.store(true, Ordering::SeqCst);
}

pub fn cancel_requested() -> bool {
    CANCELLED.load(Ordering::SeqCst)
}

/// A metric became NaN or infinite.
#[derive(Debug)]
pub struct Diverged {
    pub step: u64,
    pub metric: String,
    pub value: f64,
}

impl std::fmt::Display for Diverged {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "metric `{}` became {} at step {}", self.metric, self.value, self.step)
    }
}
impl std::error::Error for Diverged {}

/// The run was asked to stop (Ctrl-C).
#[derive(Debug)]
pub struct Interrupted {
    pub step: u64,
}

impl std::fmt::Display for Interrupted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "interrupted at step {}", self.step)
    }
}
impl std::error::Error for Interrupted {}

/// How progress is shown on stderr.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProgressMode {
    /// One line per run, redrawn in place (stderr is a terminal).
    Line,
    /// Plain log lines every few seconds (stderr is a file or pipe).
    Plain,
    Quiet,
}

impl ProgressMode {
    pub fn detect(quiet: bool) -> Self {
        if quiet {
            ProgressMode::Quiet
        } else if std::io::stderr().is_terminal() {
            ProgressMode::Line
        } else {
            ProgressMode::Plain
        }
    }
}

/// A small, seedable RNG (SplitMix64) for Rust-side randomness; torch's generator is seeded
/// separately from the same run seed.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed ^ 0x5DEE_CE66_D1CE_4E5B)
    }
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// The generator's whole state, to keep beside a cached stage.
    pub fn state(&self) -> u64 {
        self.0
    }

    /// The generator that [`Rng::state`] returned `state` for.
    pub fn from_state(state: u64) -> Self {
        Rng(state)
    }

    /// Uniform in [0, 1).
    pub fn uniform(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
    /// Uniform integer in [0, n).
    pub fn below(&mut self, n: u64) -> u64 {
        ((self.next_u64() as u128 * n as u128) >> 64) as u64
    }
    /// Standard normal by Box–Muller (one draw per call; the sine partner is discarded).
    pub fn normal(&mut self) -> f64 {
        let u1 = self.uniform().max(f64::MIN_POSITIVE);
        (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * self.uniform()).cos()
    }

    /// Gamma(shape, 1) by Marsaglia–Tsang (shape < 1 through the U^{1/shape} boost).
    pub fn gamma(&mut self, shape: f64) -> f64 {
        assert!(shape > 0.0, "gamma shape must be positive");
        if shape < 1.0 {
            let u = self.uniform().max(f64::MIN_POSITIVE);
            return self.gamma(shape + 1.0) * u.powf(1.0 / shape);
        }
        let d = shape - 1.0 / 3.0;
        let c = 1.0 / (9.0 * d).sqrt();
        loop {
            let x = self.normal();
            let v = (1.0 + c * x).powi(3);
            if v <= 0.0 {
                continue;
            }
            let u = self.uniform().max(f64::MIN_POSITIVE);
            if u.ln() < 0.5 * x * x + d - d * v + d * v.ln() {
                return d * v;
            }
        }
    }

    /// A draw from Dirichlet(alpha): normalised independent Gamma(α_i) draws.
    pub fn dirichlet(&mut self, alpha: &[f64]) -> Vec<f64> {
        let g: Vec<f64> = alpha.iter().map(|&a| self.gamma(a)).collect();
        let total: f64 = g.iter().sum();
        if total > 0.0 {
            g.iter().map(|x| x / total).collect()
        } else {
            // every draw underflowed (tiny α): all mass on one coordinate, as the limit has it
            let mut v = vec![0.0; alpha.len()];
            v[self.below(alpha.len() as u64) as usize] = 1.0;
            v
        }
    }

    /// One index drawn from the distribution `p` (non-negative, summing to 1) by inversion; the
    /// last index takes any rounding shortfall.
    pub fn categorical(&mut self, p: &[f64]) -> usize {
        let mut u = self.uniform();
        for (i, q) in p.iter().enumerate() {
            if u < *q {
                return i;
            }
            u -= q;
        }
        p.len() - 1
    }

    /// Fisher–Yates shuffle.
    pub fn shuffle<T>(&mut self, xs: &mut [T]) {
        for i in (1..xs.len()).rev() {
            let j = self.below(i as u64 + 1) as usize;
            xs.swap(i, j);
        }
    }
}

pub struct RunCtx {
    pub device: Device,
    pub seed: u64,
    pub run_id: String,
    /// Where datasets live (`--data-dir`, `$REGLAB_DATA`, or `data/`).
    pub data_dir: PathBuf,
    dir: PathBuf,
    metrics: csv::Writer<File>,
    last: BTreeMap<String, f64>,
    finals: BTreeMap<String, f64>,
    rng: Rng,
    progress: ProgressMode,
    started: Instant,
    last_print: Option<Instant>,
    step: u64,
    /// Where [`crate::stage_cache`] keeps the stages this spec's runs share; `None`: not cached.
    stage_dir: Option<PathBuf>,
    /// What a stage being computed logs, kept to replay on the runs that reuse it.
    recording: Option<Recording>,
}

/// The metrics one stage logged and the summary values it set, in order.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Recording {
    /// The step counter when the stage ended.
    pub step: u64,
    pub logs: Vec<(u64, String, f64)>,
    pub finals: Vec<(String, f64)>,
}

impl RunCtx {
    /// Opens `dir/metrics.csv` afresh and seeds torch and the Rust RNG from `seed`.
    pub fn new(dir: &Path, run_id: &str, seed: u64, device: Device, progress: ProgressMode, data_dir: &Path) -> Result<Self> {
        let path = dir.join("metrics.csv");
        let file = File::create(&path).with_context(|| format!("cannot create {}", path.display()))?;
        let mut metrics = csv::Writer::from_writer(file);
        metrics.write_record(["step", "metric", "value"])?;
        metrics.flush()?;
        tch::manual_seed(seed as i64);
        Ok(RunCtx {
            device,
            seed,
            run_id: run_id.to_string(),
            data_dir: data_dir.to_path_buf(),
            dir: dir.to_path_buf(),
            metrics,
            last: BTreeMap::new(),
            finals: BTreeMap::new(),
            rng: Rng::new(seed),
            progress,
            started: Instant::now(),
            last_print: None,
            step: 0,
            stage_dir: None,
            recording: None,
        })
    }

    /// The run's own directory, for artifacts such as `plan.npz`.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Lets this run reuse (and keep) shared stages in `dir` (the runner gives every run of one
    /// experiment the same folder).
    pub fn set_stage_dir(&mut self, dir: &Path) {
        self.stage_dir = Some(dir.to_path_buf());
    }

    pub fn stage_dir(&self) -> Option<&Path> {
        self.stage_dir.as_deref()
    }

    /// Starts keeping every `log` and `set_final` (a stage is being computed).
    pub(crate) fn start_recording(&mut self) {
        self.recording = Some(Recording::default());
    }

    /// Stops keeping them and returns what was kept.
    pub(crate) fn take_recording(&mut self) -> Recording {
        let mut rec = self.recording.take().unwrap_or_default();
        rec.step = self.step;
        rec
    }

    /// The step of the last `log` or `tick`.
    pub(crate) fn step(&self) -> u64 {
        self.step
    }

    /// Logs and sets again what a stage recorded, as if it had just run here.
    pub(crate) fn replay(&mut self, rec: &Recording) -> Result<()> {
        for (step, metric, value) in &rec.logs {
            self.log(*step, metric, *value)?;
        }
        for (metric, value) in &rec.finals {
            self.set_final(metric, *value)?;
        }
        self.step = rec.step;
        self.metrics.flush()?;
        self.check_cancel()
    }

    pub fn rng(&mut self) -> &mut Rng {
        &mut self.rng
    }

    /// Appends one metric value at `step`. A NaN/inf value is written, then ends the run as
    /// diverged; a pending Ctrl-C ends it as interrupted.
    pub fn log(&mut self, step: u64, metric: &str, value: f64) -> Result<()> {
        self.step = step;
        self.metrics.write_record([step.to_string(), metric.to_string(), value.to_string()])?;
        if !value.is_finite() {
            self.metrics.flush()?;
            return Err(Diverged { step, metric: metric.to_string(), value }.into());
        }
        self.last.insert(metric.to_string(), value);
        if let Some(rec) = &mut self.recording {
            rec.logs.push((step, metric.to_string(), value));
        }
        Ok(())
    }

    /// Logs several metrics at one step, flushes, and updates progress.
    pub fn log_all(&mut self, step: u64, values: &[(&str, f64)]) -> Result<()> {
        for (m, v) in values {
            self.log(step, m, *v)?;
        }
        self.metrics.flush()?;
        self.check_cancel()
    }

    /// A summary-only metric (e.g. a best-so-far or a derived value); overrides the last logged.
    pub fn set_final(&mut self, metric: &str, value: f64) -> Result<()> {
        if !value.is_finite() {
            return Err(Diverged { step: self.step, metric: metric.to_string(), value }.into());
        }
        self.finals.insert(metric.to_string(), value);
        if let Some(rec) = &mut self.recording {
            rec.finals.push((metric.to_string(), value));
        }
        Ok(())
    }

    /// Reports progress (`step` of `total`) and stops the run if Ctrl-C was pressed.
    pub fn tick(&mut self, step: u64, total: u64) -> Result<()> {
        self.step = step;
        self.show_progress(step, total);
        self.check_cancel()
    }

    fn check_cancel(&self) -> Result<()> {
        if cancel_requested() {
            return Err(Interrupted { step: self.step }.into());
        }
        Ok(())
    }

    fn show_progress(&mut self, step: u64, total: u64) {
        let now = Instant::now();
        let every = match self.progress {
            ProgressMode::Quiet => return,
            ProgressMode::Line => Duration::from_millis(200),
            ProgressMode::Plain => Duration::from_secs(10),
        };
        let due = match self.last_print {
            None => self.progress == ProgressMode::Line,
            Some(t) => now.duration_since(t) >= every,
        } || step == total;
        if self.last_print.is_none() {
            self.last_print = Some(now);
        }
        if !due {
            return;
        }
        self.last_print = Some(now);
        let elapsed = self.started.elapsed().as_secs_f64();
        let eta = if step > 0 && total >= step { elapsed * (total - step) as f64 / step as f64 } else { 0.0 };
        let latest: Vec<String> = self.last.iter().take(4).map(|(k, v)| format!("{k}={v:.4}")).collect();
        let line = format!("[{}] {step}/{total}  {}  {elapsed:.0}s, ETA {eta:.0}s", self.run_id, latest.join(" "));
        let mut err = std::io::stderr().lock();
        match self.progress {
            ProgressMode::Line => {
                let _ = write!(err, "\r\x1b[2K{line}");
                if step == total {
                    let _ = writeln!(err);
                }
            }
            _ => {
                let _ = writeln!(err, "{line}");
            }
        }
    }

    /// The run's final metrics: the last value of each logged metric, then `set_final` values.
    pub fn final_metrics(&self) -> BTreeMap<String, f64> {
        let mut out = self.last.clone();
        out.extend(self.finals.iter().map(|(k, v)| (k.clone(), *v)));
        out
    }

    pub fn finish(&mut self) -> Result<()> {
        if self.progress == ProgressMode::Line && self.last_print.is_some() {
            let _ = writeln!(std::io::stderr());
        }
        self.metrics.flush().context("cannot flush metrics.csv")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gamma_and_dirichlet_have_their_moments() {
        let mut rng = Rng::new(11);
        for shape in [0.3, 1.0, 2.5] {
            let n = 40_000;
            let xs: Vec<f64> = (0..n).map(|_| rng.gamma(shape)).collect();
            let mean = xs.iter().sum::<f64>() / n as f64;
            let var = xs.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / n as f64;
            // Gamma(k, 1): mean k, variance k
            assert!((mean - shape).abs() < 4.0 * (shape / n as f64).sqrt(), "shape {shape}: mean {mean}");
            assert!((var - shape).abs() < 0.1 * shape, "shape {shape}: var {var}");
        }
        let alpha = [0.3, 0.3, 0.3, 0.3];
        let mut m = [0.0; 4];
        for _ in 0..20_000 {
            let p = rng.dirichlet(&alpha);
            assert!((p.iter().sum::<f64>() - 1.0).abs() < 1e-12 && p.iter().all(|x| *x >= 0.0));
            for (mi, pi) in m.iter_mut().zip(&p) {
                *mi += pi / 20_000.0;
            }
        }
        assert!(m.iter().all(|x| (x - 0.25).abs() < 0.01), "{m:?}");
    }

    #[test]
    fn rng_is_deterministic_and_uniformish() {
        let mut a = Rng::new(3);
        let mut b = Rng::new(3);
        let xs: Vec<u64> = (0..5).map(|_| a.next_u64()).collect();
        let ys: Vec<u64> = (0..5).map(|_| b.next_u64()).collect();
        assert_eq!(xs, ys);
        assert_ne!(Rng::new(4).next_u64(), xs[0]);
        let mean: f64 = (0..20000).map(|_| a.uniform()).sum::<f64>() / 20000.0;
        let z: Vec<f64> = (0..20000).map(|_| a.normal()).collect();
        let (zm, zv) = (z.iter().sum::<f64>() / 2e4, z.iter().map(|x| x * x).sum::<f64>() / 2e4);
        assert!(zm.abs() < 0.03 && (zv - 1.0).abs() < 0.05, "{zm} {zv}");
        assert!((mean - 0.5).abs() < 0.01, "{mean}");
        let mut v: Vec<u32> = (0..50).collect();
        a.shuffle(&mut v);
        let mut s = v.clone();
        s.sort();
        assert_eq!(s, (0..50).collect::<Vec<_>>());
        assert_ne!(v, s);
    }

    #[test]
    fn non_finite_metric_is_a_divergence_with_its_step() {
        let dir = std::env::temp_dir().join(format!("reglab-ctx-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut ctx = RunCtx::new(&dir, "t", 0, Device::Cpu, ProgressMode::Quiet, &dir).unwrap();
        ctx.log_all(1, &[("loss", 1.0)]).unwrap();
        let err = ctx.log_all(2, &[("loss", f64::NAN)]).unwrap_err();
        let d = err.downcast_ref::<Diverged>().expect("a Diverged error");
        assert_eq!((d.step, d.metric.as_str()), (2, "loss"));
        assert_eq!(ctx.final_metrics()["loss"], 1.0);
        ctx.finish().unwrap();
        let text = std::fs::read_to_string(dir.join("metrics.csv")).unwrap();
        assert_eq!(text, "step,metric,value\n1,loss,1\n2,loss,NaN\n");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
