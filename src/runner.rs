//! Runs the expanded list: skips finished runs, executes the rest in-process or as `--jobs N`
//! child processes, and writes each run's `config.yaml`, `metrics.csv`, `summary.csv`, `run.json`.
//!
//! Child processes give isolation: a run that aborts libtorch cannot take its siblings down.
//! A run ends `ok`, `diverged` (a metric went NaN/inf), `failed` (an error or a panic, message
//! kept) or `interrupted` (Ctrl-C); only `ok` runs with the same resolved config are skipped later.

use std::collections::{BTreeMap, VecDeque};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Instant;

use anyhow::{anyhow, bail, Context, Result};
use serde_yaml::Value;
use tch::Device;

use crate::context::{self, Diverged, Interrupted, ProgressMode, RunCtx};
use crate::fsutil::{csv_bytes, write_atomic};
use crate::papers;
use crate::provenance::{self, RunInfo};
use crate::spec::RunPlan;

/// How a run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Ok,
    Diverged,
    Failed,
    Interrupted,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Ok => "ok",
            Status::Diverged => "diverged",
            Status::Failed => "failed",
            Status::Interrupted => "interrupted",
        }
    }
}

/// Where a run's files live.
pub fn run_dir(exp_dir: &Path, id: &str) -> PathBuf {
    exp_dir.join("runs").join(id)
}

/// The text written as `config.yaml`; also what decides whether a finished run can be skipped.
pub fn config_text(config: &Value) -> String {
    serde_yaml::to_string(config).expect("a config serializes")
}

/// True when the run has its result with exactly this resolved config: status `ok`, or
/// `diverged` (a deterministic outcome that a rerun would only repeat). `failed` and
/// `interrupted` runs start again.
pub fn is_finished(dir: &Path, config: &Value) -> bool {
    let same_config = std::fs::read_to_string(dir.join("config.yaml")).is_ok_and(|t| t == config_text(config));
    same_config && read_summary(dir).is_ok_and(|row| matches!(row.get("status").map(String::as_str), Some("ok" | "diverged")))
}

/// Reads a run's one-row `summary.csv` as column → value.
pub fn read_summary(dir: &Path) -> Result<BTreeMap<String, String>> {
    let path = dir.join("summary.csv");
    let mut reader = csv::Reader::from_path(&path).with_context(|| format!("cannot read {}", path.display()))?;
    let header = reader.headers()?.clone();
    let row = reader.records().next().ok_or_else(|| anyhow!("{} has no row", path.display()))??;
    Ok(header.iter().zip(row.iter()).map(|(h, v)| (h.to_string(), v.to_string())).collect())
}

/// Settings shared by every run of one `reglab run`.
#[derive(Debug, Clone)]
pub struct RunSettings {
    pub device: Device,
    /// The device as the user wrote it (`cuda:0`), for child processes.
    pub device_arg: String,
    pub threads: i32,
    pub jobs: usize,
    pub progress: ProgressMode,
    pub data_dir: PathBuf,
}

/// Runs one planned run in this process and writes all its files. Never returns an error for a
/// failure inside the paper's code: that becomes status `failed` in the summary.
pub fn execute(plan: &RunPlan, dir: &Path, settings: &RunSettings) -> Result<Status> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create run directory {}", dir.display()))?;
    clear_result(dir)?;
    write_atomic(&dir.join("config.yaml"), config_text(&plan.config).as_bytes())?;
    tch::set_num_threads(settings.threads);
    let entry = papers::find(&plan.paper)?;
    let started_at = provenance::now_rfc3339();
    let clock = Instant::now();
    let mut ctx = RunCtx::new(dir, &plan.id, plan.seed, settings.device, settings.progress, &settings.data_dir)?;
    // Every run of the experiment (`<exp>/runs/<id>`) shares `<exp>/stage_cache`.
    if let Some(exp_dir) = dir.parent().and_then(Path::parent) {
        ctx.set_stage_dir(&crate::stage_cache::dir_for(exp_dir));
    }
    tracing::info!(run = %plan.id, "start");
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| (entry.run)(&plan.config, &mut ctx)));
    let _ = ctx.finish();
    let wall = clock.elapsed().as_secs_f64();
    let (status, step, message) = match outcome {
        Ok(Ok(())) => (Status::Ok, String::new(), String::new()),
        Ok(Err(err)) => {
            if let Some(d) = err.downcast_ref::<Diverged>() {
                (Status::Diverged, d.step.to_string(), d.to_string())
            } else if let Some(i) = err.downcast_ref::<Interrupted>() {
                (Status::Interrupted, i.step.to_string(), i.to_string())
            } else {
                (Status::Failed, String::new(), format!("{err:#}"))
            }
        }
        Err(panic) => {
            let msg = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_else(|| "panic".into());
            (Status::Failed, String::new(), format!("panicked: {}", msg.lines().next().unwrap_or("")))
        }
    };
    match status {
        Status::Ok => tracing::info!(run = %plan.id, wall_s = wall, "ok"),
        _ => tracing::warn!(run = %plan.id, "{}: {message}", status.as_str()),
    }
    let finals = ctx.final_metrics();
    write_run_summary(dir, plan, status, &step, &message, wall, &finals)?;
    let (git_commit, git_dirty) = provenance::git_state();
    let info = RunInfo {
        run_id: plan.id.clone(),
        paper: plan.paper.clone(),
        variant: plan.variant.clone(),
        seed: plan.seed,
        status: status.as_str().into(),
        git_commit,
        git_dirty,
        reglab_version: env!("CARGO_PKG_VERSION"),
        libtorch_version: provenance::libtorch_version(),
        device: crate::device::name(settings.device),
        device_name: provenance::device_name(settings.device),
        torch_threads: tch::get_num_threads(),
        host: provenance::host(),
        started: started_at,
        ended: provenance::now_rfc3339(),
        wall_s: wall,
    };
    write_atomic(&dir.join("run.json"), serde_json::to_string_pretty(&info)?.as_bytes())?;
    Ok(status)
}

/// Removes a previous result of a run directory before it runs again, so an old `ok` summary
/// can never stand for the new config if this run dies early.
fn clear_result(dir: &Path) -> Result<()> {
    for name in ["summary.csv", "run.json"] {
        match std::fs::remove_file(dir.join(name)) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                return Err(e).with_context(|| format!("cannot remove the old {}", dir.join(name).display()));
            }
            _ => {}
        }
    }
    Ok(())
}

/// The fixed leading columns of every summary row; final metrics follow, sorted by name.
pub const SUMMARY_HEAD: [&str; 8] = ["run_id", "variant", "group", "seed", "status", "step", "message", "wall_s"];

fn write_run_summary(
    dir: &Path,
    plan: &RunPlan,
    status: Status,
    step: &str,
    message: &str,
    wall: f64,
    finals: &BTreeMap<String, f64>,
) -> Result<()> {
    let mut header: Vec<String> = SUMMARY_HEAD.iter().map(|s| s.to_string()).collect();
    let mut row = vec![
        plan.id.clone(),
        plan.variant.clone(),
        plan.group.clone(),
        plan.seed.to_string(),
        status.as_str().to_string(),
        step.to_string(),
        message.replace('\n', " "),
        format!("{wall:.3}"),
    ];
    for (k, v) in &plan.sweep {
        header.push(format!("sweep.{k}"));
        row.push(v.clone());
    }
    for (k, v) in finals {
        header.push(k.clone());
        row.push(v.to_string());
    }
    write_atomic(&dir.join("summary.csv"), &csv_bytes(&header, &[row])?)
}

/// What `run_all` did.
#[derive(Debug, Default)]
pub struct Outcome {
    pub skipped: usize,
    pub by_status: BTreeMap<String, usize>,
    pub failed: Vec<String>,
    pub interrupted: bool,
}

/// Runs `plans` (already sharded) under `exp_dir`, skipping finished ones unless `force`.
pub fn run_all(plans: &[RunPlan], exp_dir: &Path, settings: &RunSettings, force: bool) -> Result<Outcome> {
    let mut outcome = Outcome::default();
    let mut todo = vec![];
    for plan in plans {
        let dir = run_dir(exp_dir, &plan.id);
        if !force && is_finished(&dir, &plan.config) {
            outcome.skipped += 1;
        } else {
            todo.push(plan.clone());
        }
    }
    if outcome.skipped > 0 {
        eprintln!(
            "{}: {} of {} runs already finished (ok or diverged) with the same config, skipped (--force reruns them)",
            exp_dir.display(),
            outcome.skipped,
            plans.len()
        );
    }
    if todo.is_empty() {
        eprintln!("{}: nothing to do", exp_dir.display());
        return Ok(outcome);
    }
    let record = |id: &str, status: Status, outcome: &mut Outcome| {
        *outcome.by_status.entry(status.as_str().to_string()).or_default() += 1;
        match status {
            Status::Failed => outcome.failed.push(id.to_string()),
            Status::Interrupted => outcome.interrupted = true,
            _ => {}
        }
    };
    let mut progress = SweepProgress::new(exp_dir, todo.len(), settings.progress != ProgressMode::Quiet);
    if settings.jobs <= 1 {
        for plan in &todo {
            if context::cancel_requested() {
                outcome.interrupted = true;
                break;
            }
            let status = execute(plan, &run_dir(exp_dir, &plan.id), settings)?;
            progress.finished(status);
            record(&plan.id, status, &mut outcome);
        }
    } else {
        for (id, status) in run_children(&todo, exp_dir, settings, &mut progress)? {
            record(&id, status, &mut outcome);
        }
    }
    // Ctrl-C between runs leaves runs unstarted: still an interruption.
    outcome.interrupted |= context::cancel_requested();
    Ok(outcome)
}

/// The sweep's overall progress line, printed as each run ends (beside each run's own line):
/// runs done of those to do, how they ended, time so far and the estimate of what is left.
struct SweepProgress {
    label: String,
    total: usize,
    done: usize,
    by_status: BTreeMap<&'static str, usize>,
    start: std::time::Instant,
    show: bool,
}

impl SweepProgress {
    fn new(exp_dir: &Path, total: usize, show: bool) -> Self {
        let label = exp_dir.file_name().map_or_else(|| exp_dir.display().to_string(), |n| n.to_string_lossy().to_string());
        SweepProgress { label, total, done: 0, by_status: BTreeMap::new(), start: std::time::Instant::now(), show }
    }

    fn finished(&mut self, status: Status) {
        self.done += 1;
        *self.by_status.entry(status.as_str()).or_default() += 1;
        if self.show {
            eprintln!("{}", self.line(self.start.elapsed().as_secs_f64()));
        }
    }

    /// `[sweep name] 3/9 runs done (ok 3) · 41 s · ETA 82 s`; the ETA is the mean wall time per
    /// finished run so far times the runs left (runs in parallel count as they finish).
    fn line(&self, elapsed: f64) -> String {
        let ended: Vec<String> = self.by_status.iter().map(|(s, n)| format!("{s} {n}")).collect();
        let left = self.total.saturating_sub(self.done);
        let eta = if left == 0 { "done".to_string() } else { format!("ETA {}", human_secs(elapsed / self.done as f64 * left as f64)) };
        format!("[{}] {}/{} runs done ({}) · {} · {eta}", self.label, self.done, self.total, ended.join(", "), human_secs(elapsed))
    }
}

/// `42 s`, `3 min 05 s`, `1 h 02 min`.
fn human_secs(secs: f64) -> String {
    let s = secs.max(0.0).round() as u64;
    match s {
        0..=59 => format!("{s} s"),
        60..=3599 => format!("{} min {:02} s", s / 60, s % 60),
        _ => format!("{} h {:02} min", s / 3600, (s % 3600) / 60),
    }
}

/// Runs each plan as `reglab run-one` in up to `jobs` child processes.
fn run_children(todo: &[RunPlan], exp_dir: &Path, settings: &RunSettings, progress: &mut SweepProgress) -> Result<Vec<(String, Status)>> {
    let exe = std::env::current_exe().context("cannot find the reglab executable to start child runs")?;
    let mut queue: VecDeque<&RunPlan> = todo.iter().collect();
    let mut running: Vec<(String, PathBuf, Child)> = vec![];
    let mut done = vec![];
    loop {
        while running.len() < settings.jobs && !context::cancel_requested() {
            let Some(plan) = queue.pop_front() else { break };
            let dir = run_dir(exp_dir, &plan.id);
            std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
            clear_result(&dir)?;
            write_atomic(&dir.join("plan.json"), serde_json::to_string_pretty(plan)?.as_bytes())?;
            write_atomic(&dir.join("config.yaml"), config_text(&plan.config).as_bytes())?;
            let mut cmd = Command::new(&exe);
            cmd.arg("run-one")
                .arg(&dir)
                .args(["--device", &settings.device_arg, "--threads", &settings.threads.to_string()])
                .arg("--data-dir")
                .arg(&settings.data_dir)
                .stdin(Stdio::null());
            if settings.progress == ProgressMode::Quiet {
                cmd.arg("-q");
            } else {
                // Several runs share the terminal: plain lines, not redrawn ones.
                cmd.arg("--plain-progress");
            }
            let child = cmd.spawn().with_context(|| format!("cannot start child run {}", plan.id))?;
            running.push((plan.id.clone(), dir, child));
        }
        if running.is_empty() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
        let mut i = 0;
        while i < running.len() {
            if let Some(exit) = running[i].2.try_wait()? {
                let (id, dir, _) = running.remove(i);
                let status = match read_summary(&dir).ok().and_then(|r| r.get("status").cloned()) {
                    Some(s) if s == "ok" => Status::Ok,
                    Some(s) if s == "diverged" => Status::Diverged,
                    Some(s) if s == "interrupted" => Status::Interrupted,
                    Some(_) => Status::Failed,
                    None => {
                        // The child died without writing its summary (a crash inside libtorch).
                        let plan: RunPlan = serde_json::from_slice(&std::fs::read(dir.join("plan.json"))?)?;
                        let msg = format!("the run's process exited with {exit} before writing its summary");
                        write_run_summary(&dir, &RunPlan { config: Value::Null, ..plan }, Status::Failed, "", &msg, 0.0, &BTreeMap::new())?;
                        Status::Failed
                    }
                };
                progress.finished(status);
                done.push((id, status));
            } else {
                i += 1;
            }
        }
    }
    Ok(done)
}

/// Checks, before anything runs, that every dataset a run reads through its `data:` block is
/// in the data directory (or, for `csv`, that its file exists); the error says how to get it.
pub fn check_data(plans: &[RunPlan], data_dir: &Path) -> Result<()> {
    let mut checked = std::collections::BTreeSet::new();
    for plan in plans {
        let entry = papers::find(&plan.paper)?;
        let Some(cfg) = (entry.data)(&plan.config)? else { continue };
        if !checked.insert((cfg.name.clone(), cfg.path.clone())) {
            continue;
        }
        match cfg.needs_files() {
            Some(name) => {
                let info = crate::data::catalog::find(name)?;
                if crate::data::store::present_set(data_dir, info).is_none() {
                    bail!("run {} needs data: {}", plan.id, crate::data::store::missing_message(data_dir, info));
                }
            }
            None => {
                if !Path::new(&cfg.path).is_file() {
                    bail!(
                        "run {}: `data.path`: the CSV file `{}` does not exist (relative paths are taken from the current directory)",
                        plan.id,
                        cfg.path
                    );
                }
            }
        }
    }
    Ok(())
}

/// The `run-one` child: reads `plan.json` and `config.yaml` from `dir` and runs it.
pub fn run_one(dir: &Path, settings: &RunSettings) -> Result<Status> {
    let plan_path = dir.join("plan.json");
    let mut plan: RunPlan = serde_json::from_slice(&std::fs::read(&plan_path).with_context(|| format!("cannot read {}", plan_path.display()))?)
        .with_context(|| format!("{} is not a run plan", plan_path.display()))?;
    let config_path = dir.join("config.yaml");
    let text = std::fs::read_to_string(&config_path).with_context(|| format!("cannot read {}", config_path.display()))?;
    plan.config = serde_yaml::from_str(&text).with_context(|| format!("{} is not valid YAML", config_path.display()))?;
    if plan.config.is_null() {
        bail!("{} is empty", config_path.display());
    }
    execute(&plan, dir, settings)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_sweep_line_counts_runs_and_projects_the_mean_run_time() {
        let mut p = SweepProgress::new(Path::new("results/grok"), 4, false);
        p.finished(Status::Ok);
        assert_eq!(p.line(30.0), "[grok] 1/4 runs done (ok 1) · 30 s · ETA 1 min 30 s");
        p.finished(Status::Failed);
        p.finished(Status::Ok);
        assert_eq!(p.line(60.0), "[grok] 3/4 runs done (failed 1, ok 2) · 1 min 00 s · ETA 20 s");
        p.finished(Status::Ok);
        assert!(p.line(70.0).ends_with("· 1 min 10 s · done"));
        assert_eq!(human_secs(3725.0), "1 h 02 min");
    }
}
