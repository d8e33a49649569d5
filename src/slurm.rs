//! `reglab slurm`: a sweep spread over a Slurm cluster as one job array. Task I of N runs
//! `reglab run SPEC... --shard I/N` — the same deterministic slices as on one machine — so each
//! run writes only its own directory, finished runs are skipped by the usual rule, and `report`
//! over the result directory is the union. Only the array indices that still have unfinished
//! runs are submitted, so running the same command again after a failed or preempted task
//! resubmits just those.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::fsutil::write_atomic;

/// What `sbatch` is asked for besides the array.
#[derive(Debug, Clone, Default)]
pub struct SbatchOptions {
    pub partition: Option<String>,
    pub time: Option<String>,
    pub cpus_per_task: usize,
    pub gres: Option<String>,
}

/// One job array: the script's content and where its files go.
#[derive(Debug, Clone)]
pub struct ArrayJob {
    pub name: String,
    /// N: the number of shards (`--shard I/N`).
    pub tasks: usize,
    /// The shard indices to submit (those with unfinished runs), ascending.
    pub indices: Vec<usize>,
    /// The results root (absolute), as `run --out`.
    pub out: PathBuf,
    /// The directory the tasks start in (absolute).
    pub workdir: PathBuf,
    /// The reglab executable the tasks run (absolute).
    pub exe: PathBuf,
    /// `reglab` arguments before `--shard`: the global options, `run`, the specs and the
    /// options that change what runs (`--seeds`, `--set`, `--device`, `--threads`, `--jobs`).
    pub run_args: Vec<String>,
    pub options: SbatchOptions,
}

/// Where the scripts, the job record and the task logs live inside the results root.
pub const SLURM_DIR: &str = "slurm";
/// One line per submitted array: job id, tasks, indices, runs, submitted (UTC), script.
pub const JOBS_FILE: &str = "jobs.csv";

/// A word for a POSIX shell: unchanged when it is plainly safe, else in single quotes.
pub fn shell_quote(word: &str) -> String {
    let safe = !word.is_empty() && word.chars().all(|c| c.is_ascii_alphanumeric() || "-_./=:,+@%".contains(c));
    if safe {
        word.to_string()
    } else {
        format!("'{}'", word.replace('\'', r"'\''"))
    }
}

/// Slurm's `--array` list for ascending indices: runs of consecutive ones as `a-b`.
pub fn array_list(indices: &[usize]) -> String {
    let mut parts = vec![];
    let mut i = 0;
    while i < indices.len() {
        let mut j = i;
        while j + 1 < indices.len() && indices[j + 1] == indices[j] + 1 {
            j += 1;
        }
        parts.push(if j > i { format!("{}-{}", indices[i], indices[j]) } else { indices[i].to_string() });
        i = j + 1;
    }
    parts.join(",")
}

impl ArrayJob {
    fn log_dir(&self) -> PathBuf {
        self.out.join(SLURM_DIR).join("logs")
    }

    /// The batch script.
    pub fn script(&self) -> String {
        let mut s = String::from("#!/bin/bash\n");
        s.push_str(&format!("# reglab job array: {} task(s) of {} shards; written by `reglab slurm`.\n", self.indices.len(), self.tasks));
        s.push_str(&format!("#SBATCH --job-name={}\n", shell_quote(&format!("reglab-{}", self.name))));
        s.push_str(&format!("#SBATCH --array={}\n", array_list(&self.indices)));
        s.push_str(&format!("#SBATCH --chdir={}\n", shell_quote(&self.workdir.display().to_string())));
        s.push_str(&format!("#SBATCH --output={}\n", shell_quote(&self.log_dir().join("%A_%a.out").display().to_string())));
        s.push_str(&format!("#SBATCH --cpus-per-task={}\n", self.options.cpus_per_task));
        for (flag, value) in [("partition", &self.options.partition), ("time", &self.options.time), ("gres", &self.options.gres)] {
            if let Some(v) = value {
                s.push_str(&format!("#SBATCH --{flag}={}\n", shell_quote(v)));
            }
        }
        s.push_str("set -euo pipefail\n");
        // `exec`, so a cancel's or preemption's SIGTERM reaches reglab, which writes the runs it
        // stops as `interrupted`. Finished runs are skipped, so a resubmitted task redoes none.
        let mut cmd = vec![shell_quote(&self.exe.display().to_string())];
        cmd.extend(self.run_args.iter().map(|a| shell_quote(a)));
        cmd.push("--shard".into());
        cmd.push(format!("\"${{SLURM_ARRAY_TASK_ID}}/{}\"", self.tasks));
        cmd.push("--out".into());
        cmd.push(shell_quote(&self.out.display().to_string()));
        s.push_str(&format!("exec {}\n", cmd.join(" ")));
        s
    }
}

/// The path of `program` on PATH, if any.
pub fn on_path(program: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path).map(|d| d.join(program)).find(|p| p.is_file())
}

/// Submits `job` with `sbatch` and returns the job id. On success the script is kept as
/// `<out>/slurm/job-<id>.sbatch` and a line added to `<out>/slurm/jobs.csv`; on any failure
/// nothing is left in `<out>` that was not there before.
pub fn submit(job: &ArrayJob, runs: usize) -> Result<String> {
    let Some(sbatch) = on_path("sbatch") else {
        bail!("`sbatch` is not on PATH: run `reglab slurm` on a Slurm login node (or load its module), or add --dry-run to print the batch script");
    };
    // Folders this submission creates, removed again if it fails.
    let mut created = vec![];
    for dir in [job.out.clone(), job.out.join(SLURM_DIR), job.log_dir()] {
        if !dir.exists() {
            std::fs::create_dir(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
            created.push(dir);
        }
    }
    let undo = |created: &[PathBuf]| {
        for dir in created.iter().rev() {
            let _ = std::fs::remove_dir(dir);
        }
    };
    let staged = std::env::temp_dir().join(format!("reglab-{}-{}.sbatch", job.name, std::process::id()));
    let result = (|| -> Result<String> {
        std::fs::File::create(&staged)
            .and_then(|mut f| f.write_all(job.script().as_bytes()))
            .with_context(|| format!("cannot write {}", staged.display()))?;
        let out = Command::new(&sbatch).arg("--parsable").arg(&staged).output().with_context(|| format!("cannot start {}", sbatch.display()))?;
        let stderr = String::from_utf8_lossy(&out.stderr).trim().to_string();
        if !out.status.success() {
            let lower = stderr.to_lowercase();
            let hint = if lower.contains("partition") {
                format!("partition {}: `sinfo -s` lists the partitions you may use", job.options.partition.as_deref().map_or("(default)".to_string(), |p| format!("`{p}`")))
            } else if lower.contains("unable to contact") || lower.contains("connection") || lower.contains("configuration") {
                "the Slurm controller cannot be reached from here: check `sinfo`, or ask the cluster's admins".into()
            } else {
                "check the options against the cluster's limits (`sinfo`, `scontrol show partition`)".into()
            };
            bail!("the cluster refused the job array (sbatch exited with {}): {stderr}\n  {hint}; nothing was submitted", out.status);
        }
        let stdout = String::from_utf8_lossy(&out.stdout);
        let id = stdout.trim().split(';').next().unwrap_or_default().to_string();
        if id.is_empty() || !id.chars().all(|c| c.is_ascii_digit()) {
            bail!("sbatch answered `{}` where a job id was expected", stdout.trim());
        }
        Ok(id)
    })();
    let id = match result {
        Ok(id) => id,
        Err(e) => {
            let _ = std::fs::remove_file(&staged);
            undo(&created);
            return Err(e);
        }
    };
    let kept = job.out.join(SLURM_DIR).join(format!("job-{id}.sbatch"));
    write_atomic(&kept, job.script().as_bytes())?;
    let _ = std::fs::remove_file(&staged);
    record_job(&job.out.join(SLURM_DIR).join(JOBS_FILE), &id, job, runs, &kept)?;
    Ok(id)
}

fn record_job(path: &Path, id: &str, job: &ArrayJob, runs: usize, script: &Path) -> Result<()> {
    let mut text = std::fs::read_to_string(path).unwrap_or_else(|_| "job_id,tasks,indices,runs,submitted,script\n".into());
    let when = humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string();
    let fields = [id.to_string(), job.tasks.to_string(), array_list(&job.indices), runs.to_string(), when, script.display().to_string()];
    let mut w = csv::WriterBuilder::new().has_headers(false).from_writer(vec![]);
    w.write_record(&fields)?;
    text.push_str(&String::from_utf8(w.into_inner().map_err(|e| anyhow::anyhow!("csv: {e}"))?)?);
    write_atomic(path, text.as_bytes())
}

/// Waits until no task of job `id` is pending or running, calling `progress` about every
/// `every` with the elapsed time.
pub fn wait(id: &str, every: Duration, mut progress: impl FnMut(Duration)) -> Result<()> {
    let squeue = on_path("squeue").context("`squeue` is not on PATH: cannot wait for the job (drop --wait and run `reglab report` when it has finished)")?;
    let start = Instant::now();
    let mut last = Instant::now();
    loop {
        let out = Command::new(&squeue).args(["-h", "-j", id, "-o", "%i %T"]).output().context("cannot run squeue")?;
        // An id that Slurm has already purged is an error to squeue: the job is over.
        if !out.status.success() || String::from_utf8_lossy(&out.stdout).trim().is_empty() {
            return Ok(());
        }
        if last.elapsed() >= every {
            progress(start.elapsed());
            last = Instant::now();
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn array_lists_compress_consecutive_indices() {
        assert_eq!(array_list(&[0, 1, 2, 3]), "0-3");
        assert_eq!(array_list(&[1]), "1");
        assert_eq!(array_list(&[0, 2, 3, 4, 7, 9, 10]), "0,2-4,7,9-10");
    }

    #[test]
    fn shell_quoting_survives_spaces_and_quotes() {
        assert_eq!(shell_quote("experiments/x.yaml"), "experiments/x.yaml");
        assert_eq!(shell_quote("train.optim.lr=0.1"), "train.optim.lr=0.1");
        assert_eq!(shell_quote("a b"), "'a b'");
        assert_eq!(shell_quote("it's"), r"'it'\''s'");
        assert_eq!(shell_quote(""), "''");
        // What bash makes of the quoted words is the original words.
        let words = ["plain", "with space", "it's", "$HOME", "a\"b", "[0, 1]"];
        let line: Vec<String> = words.iter().map(|w| shell_quote(w)).collect();
        let out = Command::new("bash").arg("-c").arg(format!("printf '%s\\n' {}", line.join(" "))).output().unwrap();
        assert_eq!(String::from_utf8_lossy(&out.stdout).lines().collect::<Vec<_>>(), words);
    }

    #[test]
    fn the_script_runs_the_task_shard_with_the_users_options() {
        let job = ArrayJob {
            name: "grok".into(),
            tasks: 4,
            indices: vec![1, 3],
            out: "/r/results".into(),
            workdir: "/r".into(),
            exe: "/opt/reglab".into(),
            run_args: vec!["run".into(), "/r/experiments/x.yaml".into(), "--set".into(), "epochs=10".into(), "--seeds".into(), "0,1".into()],
            options: SbatchOptions { partition: Some("gpu".into()), time: Some("01:00:00".into()), cpus_per_task: 2, gres: Some("gpu:1".into()) },
        };
        let s = job.script();
        for line in [
            "#SBATCH --array=1,3",
            "#SBATCH --partition=gpu",
            "#SBATCH --time=01:00:00",
            "#SBATCH --gres=gpu:1",
            "#SBATCH --cpus-per-task=2",
            "#SBATCH --output=/r/results/slurm/logs/%A_%a.out",
            "exec /opt/reglab run /r/experiments/x.yaml --set epochs=10 --seeds 0,1 --shard \"${SLURM_ARRAY_TASK_ID}/4\" --out /r/results",
        ] {
            assert!(s.lines().any(|l| l == line), "missing `{line}` in\n{s}");
        }
    }
}
