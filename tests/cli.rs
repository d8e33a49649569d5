//! Integration tests that drive the built `reglab` binary on tiny specs.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

mod common;
use common::{bin, text};

/// A fresh scratch directory per test, removed when the test passes (kept for a look if it fails).
struct Scratch(PathBuf);

impl std::ops::Deref for Scratch {
    type Target = Path;
    fn deref(&self) -> &Path {
        &self.0
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

fn scratch(name: &str) -> Scratch {
    let dir = std::env::temp_dir().join(format!("reglab-it-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    Scratch(dir)
}

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

fn run(args: &[&str]) -> Output {
    bin().args(args).output().expect("reglab starts")
}

/// A grokking spec small enough to run in well under a second per run.
const TINY: &str = "paper: stablemax_grokking
seeds: [0, 1]
params: { modulus: 7, hidden: [8], epochs: 6, log_every: 2 }
variants:
  - name: softmax
  - name: stablemax
    params: { loss: stablemax_ce }
";

fn read_csv(path: &Path) -> (Vec<String>, Vec<Vec<String>>) {
    let mut r = csv::Reader::from_path(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let header = r.headers().unwrap().iter().map(str::to_string).collect();
    let rows = r.records().map(|x| x.unwrap().iter().map(str::to_string).collect()).collect();
    (header, rows)
}

/// summary.csv without its wall-time column, for byte comparisons.
fn summary_without_wall(path: &Path) -> Vec<Vec<String>> {
    let (h, rows) = read_csv(path);
    let wall = h.iter().position(|c| c == "wall_s").unwrap();
    std::iter::once(h).chain(rows).map(|mut r| {
        r.remove(wall);
        r
    }).collect()
}

fn run_dirs(exp: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(exp.join("runs")).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().to_string()).collect();
    v.sort();
    v
}

#[test]
fn run_writes_the_output_contract() {
    let dir = scratch("contract");
    let spec = write(&dir, "tiny.yaml", TINY);
    let out = run(&["-q", "run", spec.to_str().unwrap(), "--out", dir.join("res").to_str().unwrap(), "--threads", "1"]);
    assert!(out.status.success(), "{}", text(&out));
    let exp = dir.join("res/tiny");
    assert_eq!(run_dirs(&exp), vec!["softmax__s0", "softmax__s1", "stablemax__s0", "stablemax__s1"]);
    let r = exp.join("runs/stablemax__s1");
    let cfg: serde_yaml::Value = serde_yaml::from_str(&std::fs::read_to_string(r.join("config.yaml")).unwrap()).unwrap();
    assert_eq!(cfg["loss"].as_str(), Some("stablemax_ce"));
    assert_eq!(cfg["modulus"].as_i64(), Some(7));
    let (h, rows) = read_csv(&r.join("metrics.csv"));
    assert_eq!(h, vec!["step", "metric", "value"]);
    assert!(rows.iter().any(|row| row[0] == "6" && row[1] == "test_acc"));
    let (h, rows) = read_csv(&r.join("summary.csv"));
    assert_eq!(&h[..5], &["run_id", "variant", "group", "seed", "status"]);
    assert_eq!(rows.len(), 1);
    assert_eq!(&rows[0][..5], &["stablemax__s1", "stablemax", "stablemax", "1", "ok"]);
    assert!(h.contains(&"test_acc".to_string()) && h.contains(&"sc_fraction".to_string()));
    let info: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(r.join("run.json")).unwrap()).unwrap();
    for key in ["run_id", "seed", "git_commit", "git_dirty", "reglab_version", "libtorch_version", "device", "device_name", "torch_threads", "host", "started", "ended", "wall_s"] {
        assert!(info.get(key).is_some(), "run.json lacks {key}: {info}");
    }
    assert_eq!(info["torch_threads"], 1);
    assert!(info["libtorch_version"].as_str().unwrap().starts_with("2.11"), "{info}");
    let (_, all) = read_csv(&exp.join("summary.csv"));
    assert_eq!(all.len(), 4);
    let table = std::fs::read_to_string(exp.join("table.md")).unwrap();
    assert!(table.contains("| softmax | 2/2 |") && table.contains("±"), "{table}");
    // The report is printed at the end of `run`.
    assert!(String::from_utf8_lossy(&out.stdout).contains("| stablemax | 2/2 |"));
}

#[test]
fn finished_runs_are_skipped_and_force_reruns() {
    let dir = scratch("skip");
    let spec = write(&dir, "tiny.yaml", TINY);
    let res = dir.join("res");
    let args = ["run", spec.to_str().unwrap(), "--out", res.to_str().unwrap(), "--threads", "1", "--seeds", "0"];
    assert!(run(&args).status.success());
    let metrics = res.join("tiny/runs/softmax__s0/metrics.csv");
    let before = std::fs::metadata(&metrics).unwrap().modified().unwrap();
    std::thread::sleep(std::time::Duration::from_millis(20));
    let out = run(&args);
    assert!(out.status.success());
    assert!(text(&out).contains("nothing to do") && text(&out).contains("2 of 2 runs already finished"), "{}", text(&out));
    assert_eq!(std::fs::metadata(&metrics).unwrap().modified().unwrap(), before);
    // A changed config is not "finished".
    let changed = [&args[..], &["--set", "epochs=4"]].concat();
    let out = run(&changed);
    assert!(!text(&out).contains("nothing to do"), "{}", text(&out));
    // Now finished with that config: skipped again, until --force.
    let out = run(&changed);
    assert!(text(&out).contains("nothing to do"), "{}", text(&out));
    let before = std::fs::metadata(&metrics).unwrap().modified().unwrap();
    std::thread::sleep(std::time::Duration::from_millis(20));
    let forced = run(&[&changed[..], &["--force"]].concat());
    assert!(forced.status.success() && !text(&forced).contains("nothing to do"), "{}", text(&forced));
    assert_ne!(std::fs::metadata(&metrics).unwrap().modified().unwrap(), before);
}

#[test]
fn shards_union_to_the_whole_and_jobs_match_byte_for_byte() {
    let dir = scratch("shard");
    let spec = write(&dir, "tiny.yaml", TINY);
    let s = spec.to_str().unwrap();
    let whole = dir.join("whole");
    let sharded = dir.join("sharded");
    let jobs = dir.join("jobs");
    assert!(run(&["-q", "run", s, "--out", whole.to_str().unwrap()]).status.success());
    for i in 0..3 {
        let shard = format!("{i}/3");
        let out = run(&["-q", "run", s, "--out", sharded.to_str().unwrap(), "--shard", &shard]);
        assert!(out.status.success(), "{}", text(&out));
    }
    let out = run(&["-q", "run", s, "--out", jobs.to_str().unwrap(), "--jobs", "2"]);
    assert!(out.status.success(), "{}", text(&out));
    let ids = run_dirs(&whole.join("tiny"));
    assert_eq!(ids.len(), 4);
    assert_eq!(run_dirs(&sharded.join("tiny")), ids);
    assert_eq!(run_dirs(&jobs.join("tiny")), ids);
    for id in &ids {
        let m = |root: &Path| std::fs::read(root.join("tiny/runs").join(id).join("metrics.csv")).unwrap();
        assert_eq!(m(&whole), m(&sharded), "{id}: shard differs");
        assert_eq!(m(&whole), m(&jobs), "{id}: --jobs 2 differs");
        let s = |root: &Path| summary_without_wall(&root.join("tiny/runs").join(id).join("summary.csv"));
        assert_eq!(s(&whole), s(&sharded));
        assert_eq!(s(&whole), s(&jobs));
    }
    assert_eq!(summary_without_wall(&whole.join("tiny/summary.csv")), summary_without_wall(&sharded.join("tiny/summary.csv")));
}

/// A grokking spec large enough that libtorch's matmuls and reductions split work between two
/// threads; ⊥Grad's projection feeds every reduction back into training.
const MID: &str = "paper: stablemax_grokking
params: { modulus: 61, hidden: [128, 128], epochs: 12, log_every: 3 }
variants:
  - name: perp
    params: { orthograd: true }
  - name: stablemax
    params: { loss: stablemax_ce }
";

fn metrics_text(root: &Path, id: &str) -> String {
    std::fs::read_to_string(root.join("mid/runs").join(id).join("metrics.csv")).unwrap()
}

fn torch_threads(root: &Path, id: &str) -> i64 {
    let info: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(root.join("mid/runs").join(id).join("run.json")).unwrap()).unwrap();
    info["torch_threads"].as_i64().unwrap()
}

#[test]
fn same_thread_count_gives_the_same_bytes_whatever_jobs_is() {
    // The promise: same seed and same torch thread count ⇒ byte-identical metrics, with 2 threads
    // (where kernels do split) as with the default, and `--jobs` never changes the thread count.
    let dir = scratch("threads-same");
    let spec = write(&dir, "mid.yaml", MID);
    let go = |name: &str, extra: &[&str]| {
        let root = dir.join(name);
        let args = [&["-q", "run", spec.to_str().unwrap(), "--out", root.to_str().unwrap()][..], extra].concat();
        let out = run(&args);
        assert!(out.status.success(), "{}", text(&out));
        root
    };
    let default_1 = go("d1", &["--jobs", "1"]);
    let default_2 = go("d2", &["--jobs", "2"]);
    let two_a = go("t2a", &["--threads", "2", "--jobs", "1"]);
    let two_b = go("t2b", &["--threads", "2", "--jobs", "2"]);
    for id in ["perp__s0", "stablemax__s0"] {
        assert_eq!(torch_threads(&default_1, id), 1, "{id}: the default is one thread per run");
        assert_eq!(torch_threads(&default_2, id), 1, "{id}: --jobs 2 must not change the thread count");
        assert_eq!(torch_threads(&two_a, id), 2, "{id}");
        assert_eq!(metrics_text(&default_1, id), metrics_text(&default_2, id), "{id}: --jobs 1 vs 2");
        assert_eq!(metrics_text(&two_a, id), metrics_text(&two_b, id), "{id}: --threads 2, --jobs 1 vs 2");
    }
}

/// Every paper whose runs share a stage, small: the GAN pretraining of every unlearning arm (torch
/// draws follow it), the experts that both IPCs of a distillation method train from, eq_net's
/// pretrained and calibrated network (with its quantisers' signedness, kept outside the tensors),
/// ctrl_u's classifiers and base DDPM (frozen after loading), ftwt_pruning's dense pretraining
/// (BatchNorm statistics, the run's own RNG).
const SHARED_STAGES: [(&str, &str); 5] = [
    (
        "gan",
        "paper: adapt_unlearn_gan
seeds: [0, 1]
params: { pretrain_steps: 150, adapt_steps: 10, unlearn_steps: 20, classifier_epochs: 3, classifier_hidden: 32, g_hidden: [32], d_hidden: [32], feedback_samples: 2000, eval_samples: 200, adaptations: 2, log_every: 20 }
variants:
  - { name: pretrained, params: { method: pretrained } }
  - { name: finetune, params: { method: finetune } }
  - { name: el2, params: { method: el2 } }
",
    ),
    (
        "dd",
        "paper: dataset_distillation
seeds: [0, 1]
params: { experts: 2, expert_epochs: 2, iterations: 2, syn_steps: 2, match_epochs: 1, max_start_epoch: 1, eval_runs: 1, eval_epochs: 2, log_every: 1 }
variants:
  - { name: mtt_ipc1, params: { method: mtt, ipc: 1 } }
  - { name: mtt_ipc2, params: { method: mtt, ipc: 2 } }
",
    ),
    (
        "eq",
        "paper: eq_net
seeds: [0, 1]
params: { data: { name: digits, flatten: true, normalize: standardize }, hidden: [8, 8], pretrain_epochs: 1, epochs: 1, calibration_size: 64, mixed_configs: 2, eval_bits: [2, 8] }
variants:
  - { name: ptq, params: { method: ptq } }
  - { name: static_w2, params: { method: static, static_bits: 2 } }
",
    ),
    (
        "ctrl",
        "paper: ctrl_u
seeds: [0, 1]
params: { data: { name: digits, flatten: true, test_fraction: 0.35 }, hidden: [32], base_steps: 20, finetune_steps: 4, lr_warmup_steps: 2, linear_reward_scale_steps: 2, classifier_epochs: 1, classifier_hidden: 16, batch_size: 32, eval_samples: 50, ddim_steps: 4, log_every: 5 }
variants:
  - { name: base, params: { method: base } }
  - { name: ctrl_u, params: { method: ctrl_u } }
",
    ),
    (
        "ftwt",
        "paper: ftwt_pruning
seeds: [0, 1]
params: { pretrain_epochs: 1, epochs: 2, milestones: [1] }
variants:
  - { name: dense, params: { method: dense } }
  - { name: random, params: { method: random, threshold: 0.85 } }
",
    ),
];

#[test]
fn a_stage_shared_by_runs_is_computed_once_per_seed_and_changes_no_result() {
    let dir = scratch("stages");
    for (name, yaml) in SHARED_STAGES {
        let spec = write(&dir, &format!("{name}.yaml"), yaml);
        let go = |out: &str, no_cache: bool, force: bool| {
            let root = dir.join(out);
            let mut cmd = bin();
            cmd.args(["-q", "run", spec.to_str().unwrap(), "--out", root.to_str().unwrap(), "--jobs", "2"]);
            if force {
                cmd.arg("--force");
            }
            if no_cache {
                cmd.env("REGLAB_NO_STAGE_CACHE", "1");
            } else {
                cmd.env_remove("REGLAB_NO_STAGE_CACHE");
            }
            let out = cmd.output().unwrap();
            assert!(out.status.success(), "{name}: {}", text(&out));
            root.join(name)
        };
        let entries = |exp: &Path| -> usize {
            std::fs::read_dir(exp.join("stage_cache")).map_or(0, |d| d.filter(|e| e.as_ref().unwrap().path().extension().is_some_and(|x| x == "json")).count())
        };
        let same_results = |a: &Path, b: &Path, pass: &str| {
            for id in run_dirs(a) {
                let (a, b) = (a.join("runs").join(&id), b.join("runs").join(&id));
                let metrics = |d: &Path| std::fs::read_to_string(d.join("metrics.csv")).unwrap();
                assert_eq!(metrics(&a), metrics(&b), "{name} {id} ({pass}): metrics.csv with and without the cache");
                assert_eq!(summary_without_wall(&a.join("summary.csv")), summary_without_wall(&b.join("summary.csv")), "{name} {id} ({pass}): summary.csv");
            }
        };
        let plain = go("plain", true, false);
        let cached = go("cached", false, false);
        assert_eq!(entries(&plain), 0, "{name}: REGLAB_NO_STAGE_CACHE=1 keeps nothing");
        assert_eq!(entries(&cached), 2, "{name}: one stage per seed, whatever the number of runs that use it");
        // The first pass: the run that computed each stage and those that reused it.
        same_results(&plain, &cached, "computed and reused");
        // --force reruns every run; each now reuses its seed's stage.
        let mtime = |exp: &Path| -> Vec<std::time::SystemTime> {
            let mut v: Vec<_> = std::fs::read_dir(exp.join("stage_cache")).unwrap().map(|e| e.unwrap().metadata().unwrap().modified().unwrap()).collect();
            v.sort();
            v
        };
        let before = mtime(&cached);
        let again = go("cached", false, true);
        assert_eq!(mtime(&again), before, "{name}: nothing recomputed");
        same_results(&plain, &again, "all reused");
    }
}

/// Relative tolerance promised across thread counts (README, "Determinism"): libtorch may sum in
/// another order with more threads, so the last bits differ and training can amplify them a little.
const ACROSS_THREADS_RTOL: f64 = 1e-4;

#[test]
fn thread_counts_agree_within_the_stated_tolerance() {
    let dir = scratch("threads-tol");
    let spec = write(&dir, "mid.yaml", MID);
    let one = dir.join("t1");
    let two = dir.join("t2");
    assert!(run(&["-q", "run", spec.to_str().unwrap(), "--out", one.to_str().unwrap(), "--threads", "1"]).status.success());
    assert!(run(&["-q", "run", spec.to_str().unwrap(), "--out", two.to_str().unwrap(), "--threads", "2"]).status.success());
    for id in ["perp__s0", "stablemax__s0"] {
        let rows = |root: &Path| read_csv(&root.join("mid/runs").join(id).join("metrics.csv")).1;
        let (a, b) = (rows(&one), rows(&two));
        assert_eq!(a.len(), b.len(), "{id}: same steps and metrics");
        for (x, y) in a.iter().zip(&b) {
            assert_eq!(x[..2], y[..2], "{id}");
            let (u, v): (f64, f64) = (x[2].parse().unwrap(), y[2].parse().unwrap());
            let scale = u.abs().max(v.abs()).max(1.0);
            assert!((u - v).abs() <= ACROSS_THREADS_RTOL * scale, "{id} step {} {}: {u} vs {v}", x[0], x[1]);
        }
        // The numbers must not be trivially equal either: the train loss moved during training.
        let loss: Vec<f64> = a.iter().filter(|r| r[1] == "train_loss").map(|r| r[2].parse().unwrap()).collect();
        assert!(loss.len() >= 2 && (loss[0] - loss[loss.len() - 1]).abs() > 1e-3, "{id}: {loss:?}");
    }
}

#[test]
fn a_diverging_run_is_diverged_and_a_failing_one_failed_while_siblings_finish() {
    let dir = scratch("diverge");
    let spec = write(
        &dir,
        "bad.yaml",
        "paper: stablemax_grokking
params: { modulus: 7, hidden: [8], epochs: 40, log_every: 1 }
variants:
  - name: fine
  - name: explode
    params: { lr: 1.0e+30 }
",
    );
    for jobs in ["1", "2"] {
        let res = dir.join(format!("res{jobs}"));
        let out = run(&["-q", "run", spec.to_str().unwrap(), "--out", res.to_str().unwrap(), "--jobs", jobs, "--threads", "1"]);
        assert!(out.status.success(), "a diverged run is a result, not an error: {}", text(&out));
        let row = |id: &str| {
            let (h, rows) = read_csv(&res.join("bad/runs").join(id).join("summary.csv"));
            h.into_iter().zip(rows[0].clone()).collect::<BTreeMap<_, _>>()
        };
        assert_eq!(row("fine__s0")["status"], "ok");
        let bad = row("explode__s0");
        assert_eq!(bad["status"], "diverged", "{bad:?}");
        assert!(bad["step"].parse::<u64>().unwrap() >= 1 && bad["message"].contains("became"), "{bad:?}");
        let table = std::fs::read_to_string(res.join("bad/table.md")).unwrap();
        assert!(table.contains("1 diverged (step"), "{table}");
        // A diverged run is a result: the next `run` does not repeat it.
        let again = run(&["run", spec.to_str().unwrap(), "--out", res.to_str().unwrap(), "--jobs", jobs]);
        assert!(text(&again).contains("nothing to do"), "{}", text(&again));
    }

    let ot = write(
        &dir,
        "ot.yaml",
        "paper: sparse_ot
params: { m: 6 }
variants:
  - name: good
    params: { k: 2 }
  - name: missing_file
    params: { instance: npz, npz_path: /nonexistent/problem.npz }
",
    );
    for jobs in ["1", "2"] {
        let res = dir.join(format!("ot{jobs}"));
        let out = run(&["-q", "run", ot.to_str().unwrap(), "--out", res.to_str().unwrap(), "--jobs", jobs, "--threads", "1"]);
        assert_eq!(out.status.code(), Some(1), "{}", text(&out));
        assert!(text(&out).contains("1 run(s) failed") && text(&out).contains("missing_file__s0"), "{}", text(&out));
        let (h, rows) = read_csv(&res.join("ot/runs/missing_file__s0/summary.csv"));
        let row: BTreeMap<_, _> = h.into_iter().zip(rows[0].clone()).collect();
        assert_eq!(row["status"], "failed");
        assert!(row["message"].contains("/nonexistent/problem.npz"), "{row:?}");
        assert_eq!(read_csv(&res.join("ot/runs/good__s0/summary.csv")).1[0][4], "ok");
    }
}

#[test]
fn report_check_exit_codes_follow_the_claims() {
    let dir = scratch("claims");
    let base = "paper: sparse_ot
params: { m: 8 }
variants:
  - name: sparse
    params: { k: 2 }
  - name: sinkhorn
    params: { method: sinkhorn }
";
    let good = write(&dir, "good.yaml", &format!("{base}claims:\n  - {{ metric: max_nnz_col, variant: sparse, at_most: 2 }}\n  - {{ metric: mean_nnz_col, higher: sinkhorn, than: sparse }}\n"));
    let bad = write(&dir, "bad.yaml", &format!("{base}claims:\n  - {{ metric: max_nnz_col, variant: sparse, at_most: 2 }}\n  - {{ metric: mean_nnz_col, higher: sparse, than: sinkhorn }}\n"));
    let res = dir.join("res");
    for spec in [&good, &bad] {
        assert!(run(&["-q", "run", spec.to_str().unwrap(), "--out", res.to_str().unwrap(), "--threads", "1"]).status.success());
    }
    let ok = run(&["report", res.join("good").to_str().unwrap(), "--check"]);
    assert!(ok.status.success(), "{}", text(&ok));
    assert!(text(&ok).contains("PASS") && !text(&ok).contains("FAIL"));
    let fail = run(&["report", res.join("bad").to_str().unwrap(), "--check"]);
    assert_eq!(fail.status.code(), Some(1));
    assert!(text(&fail).contains("FAIL"));
    // Without --check a failing claim is reported but not an error; a results root reports all.
    assert!(run(&["report", res.to_str().unwrap()]).status.success());
    let missing = run(&["report", dir.join("nope").to_str().unwrap()]);
    assert!(!missing.status.success() && text(&missing).contains("nope"));
}

#[test]
fn cuda_without_a_gpu_is_a_clear_error_before_any_run() {
    if tch::Cuda::is_available() {
        // On a GPU machine: a device that does not exist is the clear error instead.
        let dir = scratch("cuda99");
        let spec = write(&dir, "tiny.yaml", TINY);
        let out = run(&["run", spec.to_str().unwrap(), "--out", dir.join("res").to_str().unwrap(), "--device", "cuda:99"]);
        assert!(!out.status.success() && text(&out).contains("does not exist"), "{}", text(&out));
        return;
    }
    let dir = scratch("cuda");
    let spec = write(&dir, "tiny.yaml", TINY);
    let res = dir.join("res");
    let out = run(&["run", spec.to_str().unwrap(), "--out", res.to_str().unwrap(), "--device", "cuda"]);
    assert!(!out.status.success());
    assert!(text(&out).contains("no CUDA device is available"), "{}", text(&out));
    assert!(!res.exists(), "nothing may run or be written");
    let spec_cuda = write(&dir, "c.yaml", &TINY.replace("seeds:", "device: cuda\nseeds:"));
    let out = run(&["validate", spec_cuda.to_str().unwrap()]);
    assert!(!out.status.success() && text(&out).contains("c.yaml: `device`"), "{}", text(&out));
}

#[test]
fn bad_specs_name_the_file_the_key_and_what_is_allowed() {
    let dir = scratch("errors");
    let typo = write(&dir, "typo.yaml", &TINY.replace("epochs: 6", "epoch: 6"));
    let out = run(&["validate", typo.to_str().unwrap()]);
    assert!(!out.status.success());
    let msg = text(&out);
    assert!(msg.contains("typo.yaml") && msg.contains("unknown key `epoch`") && msg.contains("epochs"), "{msg}");
    let paper = write(&dir, "paper.yaml", "paper: grokking\n");
    let msg = text(&run(&["validate", paper.to_str().unwrap()]));
    assert!(msg.contains("unknown paper `grokking`") && msg.contains("stablemax_grokking"), "{msg}");
    let msg = text(&run(&["validate", dir.join("absent.yaml").to_str().unwrap()]));
    assert!(msg.contains("absent.yaml"), "{msg}");
    let tiny = write(&dir, "tiny.yaml", TINY);
    let msg = text(&run(&["run", tiny.to_str().unwrap(), "--shard", "2/2"]));
    assert!(msg.contains("0 <= I < N"), "{msg}");
}

#[test]
fn every_shipped_spec_validates() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("experiments");
    let mut specs = vec![];
    for dir in [root.clone(), root.join("full")] {
        for e in std::fs::read_dir(&dir).unwrap() {
            let p = e.unwrap().path();
            if p.extension().is_some_and(|x| x == "yaml") {
                specs.push(p);
            }
        }
    }
    assert!(specs.len() >= 4, "{specs:?}");
    for s in &specs {
        let out = run(&["validate", s.to_str().unwrap(), "--device", "cpu"]);
        assert!(out.status.success(), "{}: {}", s.display(), text(&out));
    }
    // Every registered paper has a CPU spec and a full spec, and `list` shows them.
    let list = text(&run(&["list"]));
    for key in reglab::papers::registry().iter().map(|e| e.key) {
        assert!(list.contains(&format!("experiments/{key}.yaml")) && list.contains(&format!("experiments/full/{key}.yaml")), "{list}");
    }
    let show = run(&["show", "stablemax_grokking"]);
    let yaml: serde_yaml::Value = serde_yaml::from_str(&String::from_utf8_lossy(&show.stdout)).unwrap();
    assert_eq!(yaml["eps"].as_f64(), Some(1e-25));
}

#[test]
fn a_user_npz_problem_is_solved_and_its_plan_written() {
    use tch::{Kind, Tensor};
    let dir = scratch("npz");
    let a = Tensor::from_slice(&[0.1f64, 0.2, 0.3, 0.25, 0.15]);
    let b = Tensor::from_slice(&[0.3f64, 0.2, 0.4, 0.1]);
    // A fixed cost (an unseeded Tensor::rand here drew from torch's global generator, shared with
    // the other tests' threads, so each run of the suite solved a different problem).
    let c = Tensor::from_slice(&[0.62f64, 0.11, 0.93, 0.48, 0.27, 0.85, 0.04, 0.71, 0.39, 0.56, 0.18, 0.97, 0.83, 0.32, 0.65, 0.09, 0.44, 0.76, 0.23, 0.58]).view([5, 4]);
    let npz = dir.join("problem.npz");
    Tensor::write_npz(&[("a", &a), ("b", &b), ("C", &c)], &npz).unwrap();
    let spec = write(&dir, "mine.yaml", &format!("paper: sparse_ot\nparams: {{ instance: npz, npz_path: {}, k: 2, gamma: 0.5 }}\n", npz.display()));
    let out = run(&["-q", "run", spec.to_str().unwrap(), "--out", dir.join("res").to_str().unwrap(), "--threads", "1"]);
    assert!(out.status.success(), "{}", text(&out));
    let plan = Tensor::read_npz(dir.join("res/mine/runs/default__s0/plan.npz")).unwrap();
    let t = &plan.iter().find(|(n, _)| n == "plan").unwrap().1;
    assert_eq!(t.size(), vec![5, 4]);
    let cols = t.sum_dim_intlist([0].as_slice(), false, Kind::Double);
    assert!(f64::try_from((cols - &b).abs().max()).unwrap() < 1e-9, "semi-dual columns carry b exactly");
    let nnz = t.gt(0.0).sum_dim_intlist([0].as_slice(), false, Kind::Double);
    assert!(f64::try_from(nnz.max()).unwrap() <= 2.0);
}

#[cfg(unix)]
#[test]
fn ctrl_c_interrupts_and_the_next_run_resumes() {
    let dir = scratch("interrupt");
    let spec_text = "paper: stablemax_grokking
params: { modulus: 11, hidden: [16], log_every: 100 }
variants:
  - name: quick
    params: { epochs: 5 }
  - name: long
    params: { epochs: 200000 }
";
    let spec = write(&dir, "long.yaml", spec_text);
    let res = dir.join("res");
    let mut child = bin().args(["-q", "run", spec.to_str().unwrap(), "--out", res.to_str().unwrap(), "--threads", "1"]).spawn().unwrap();
    let metrics = res.join("long/runs/long__s0/metrics.csv");
    let t0 = std::time::Instant::now();
    while std::fs::read_to_string(&metrics).map_or(true, |t| t.lines().count() < 20) {
        assert!(t0.elapsed().as_secs() < 60, "the run never started logging");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    assert!(Command::new("kill").args(["-INT", &child.id().to_string()]).status().unwrap().success());
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(130));
    let status_of = |id: &str| read_csv(&res.join("long/runs").join(id).join("summary.csv")).1[0][4].clone();
    assert_eq!(status_of("quick__s0"), "ok");
    assert_eq!(status_of("long__s0"), "interrupted");
    let logged = std::fs::read_to_string(&metrics).unwrap();
    assert!(logged.lines().count() >= 20, "what was logged before Ctrl-C is kept");
    // The next run skips the finished run and starts the unfinished one again (made short here).
    write(&dir, "long.yaml", &spec_text.replace("epochs: 200000", "epochs: 3"));
    let out = run(&["run", spec.to_str().unwrap(), "--out", res.to_str().unwrap(), "--threads", "1"]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("1 of 2 runs already finished"), "{}", text(&out));
    assert_eq!(status_of("long__s0"), "ok");
}

/// Answers every request with `body` (one thread, bounded request count).
fn serve_garbage(body: &'static [u8], requests: usize) -> String {
    use std::io::{BufRead, BufReader, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for stream in listener.incoming().take(requests) {
            let mut stream = stream.unwrap();
            let mut line = String::new();
            BufReader::new(&stream).read_line(&mut line).unwrap();
            let head = format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n", body.len());
            let _ = stream.write_all(head.as_bytes());
            let _ = stream.write_all(body);
        }
    });
    format!("http://{addr}")
}

#[test]
fn data_fetch_checks_sums_and_runs_need_their_data() {
    let dir = scratch("data");
    let data = dir.join("data");
    // A mirror serving the wrong bytes: an error, and nothing in the data directory.
    let url = serve_garbage(b"not mnist", 8);
    let out = bin().args(["--data-dir", data.to_str().unwrap(), "data", "fetch", "mnist"]).env("REGLAB_DATA_URL", &url).output().unwrap();
    assert!(!out.status.success());
    assert!(text(&out).contains("checksum mismatch") && text(&out).contains("nothing was kept"), "{}", text(&out));
    let left: Vec<_> = std::fs::read_dir(&data).map(|r| r.map(|e| e.unwrap().file_name()).collect()).unwrap_or_default();
    assert!(left.is_empty(), "{left:?}");
    // Copying from a folder goes through the same verification.
    let bundled = Path::new(env!("CARGO_MANIFEST_DIR")).join("data/digits");
    let out = run(&["--data-dir", data.to_str().unwrap(), "data", "fetch", "digits", "--from", bundled.to_str().unwrap()]);
    assert!(out.status.success() && text(&out).contains("sha256 verified"), "{}", text(&out));
    std::fs::remove_dir_all(data.join("digits")).unwrap();
    let out = run(&["--data-dir", data.to_str().unwrap(), "data", "fetch", "digits"]);
    assert!(out.status.success() && data.join("digits/digits.csv.gz").is_file(), "{}", text(&out));
    let list = text(&run(&["--data-dir", data.to_str().unwrap(), "data", "list"]));
    assert!(list.contains("digits") && list.contains("1797+0 samples") && list.contains("fashion_mnist    no"), "{list}");
    // A spec needing a dataset that is not there fails before any run, naming the command.
    let spec = write(&dir, "fm.yaml", "paper: sparse_ot\nparams: { instance: data, m: 5, n: 5, k: 2, data: { name: fashion_mnist, classes: [0, 1], flatten: true } }\n");
    let res = dir.join("res");
    let out = run(&["--data-dir", data.to_str().unwrap(), "run", spec.to_str().unwrap(), "--out", res.to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(text(&out).contains("reglab data fetch fashion_mnist") && text(&out).contains("fm.yaml"), "{}", text(&out));
    assert!(!res.exists(), "nothing ran");
    // A run that reads no dataset does not need one, whatever the data directory holds.
    let square = write(&dir, "square.yaml", "paper: sparse_ot\nparams: { m: 6, k: 2 }\n");
    let out = run(&["--data-dir", dir.join("empty").to_str().unwrap(), "-q", "run", square.to_str().unwrap(), "--out", res.to_str().unwrap(), "--threads", "1"]);
    assert!(out.status.success(), "{}", text(&out));
    // A user's CSV through the shared data block.
    let mut csv = String::from("f1,f2,f3,label\n");
    for i in 0..40 {
        csv.push_str(&format!("{},{},{},{}\n", i % 7, (i * 3) % 5, i % 2, i % 2));
    }
    let table = write(&dir, "mine.csv", &csv);
    let spec = write(&dir, "csv.yaml", &format!("paper: sparse_ot\nparams: {{ instance: data, m: 8, n: 8, k: 2, data: {{ name: csv, path: {}, label_column: label, classes: [0, 1], test_fraction: 0.25 }} }}\n", table.display()));
    let out = run(&["-q", "run", spec.to_str().unwrap(), "--out", res.to_str().unwrap(), "--threads", "1"]);
    assert!(out.status.success(), "{}", text(&out));
    let (h, rows) = read_csv(&res.join("csv/runs/default__s0/summary.csv"));
    let row: BTreeMap<_, _> = h.into_iter().zip(rows[0].clone()).collect();
    assert_eq!(row["status"], "ok");
    assert!(row["max_nnz_col"].parse::<f64>().unwrap() <= 2.0);
}

#[test]
fn real_fashion_mnist_counts_and_balance() {
    let data = Path::new(env!("CARGO_MANIFEST_DIR")).join("data");
    let dir = std::env::var_os("REGLAB_DATA").map(PathBuf::from).unwrap_or(data);
    let info = reglab::data::catalog::find("fashion_mnist").unwrap();
    if reglab::data::store::present_set(&dir, info).is_none() {
        eprintln!("skipped: Fashion-MNIST is not in {} (run `make data`)", dir.display());
        return;
    }
    let raw = reglab::data::sources::load_named("fashion_mnist", &dir).unwrap();
    assert_eq!(raw.train_x.size(), vec![60000, 1, 28, 28]);
    let (tx, ty) = raw.test.as_ref().unwrap();
    assert_eq!(tx.size(), vec![10000, 1, 28, 28]);
    for (y, per_class) in [(&raw.train_y, 6000), (ty, 1000)] {
        let counts = Vec::<i64>::try_from(y.bincount(None::<tch::Tensor>, 10)).unwrap();
        assert_eq!(counts, vec![per_class; 10]);
    }
    assert_eq!(f64::try_from(raw.train_x.max()).unwrap(), 255.0);
}

/// The vertex lists of the SVG's polylines drawn in `stroke` (plotters writes upper-case hex).
fn polylines(svg: &str, stroke: &str) -> Vec<usize> {
    let doc = roxmltree::Document::parse(svg).unwrap_or_else(|e| panic!("the SVG does not parse as XML: {e}"));
    doc.descendants()
        .filter(|n| n.has_tag_name("polyline") && n.attribute("stroke") == Some(stroke))
        .map(|n| n.attribute("points").unwrap_or_default().split_whitespace().count())
        .collect()
}

/// The SVG's text elements, trimmed.
fn svg_texts(svg: &str) -> Vec<String> {
    let doc = roxmltree::Document::parse(svg).unwrap();
    doc.descendants().filter(|n| n.has_tag_name("text")).filter_map(|n| n.text()).map(|t| t.trim().to_string()).collect()
}

/// Distinct steps at which the runs `ids` of `exp` logged `metric`.
fn logged_steps(exp: &Path, ids: &[&str], metric: &str) -> usize {
    let mut steps = std::collections::BTreeSet::new();
    for id in ids {
        let (_, rows) = read_csv(&exp.join("runs").join(id).join("metrics.csv"));
        steps.extend(rows.into_iter().filter(|r| r[1] == metric).map(|r| r[0].clone()));
    }
    steps.len()
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &to.join(e.file_name()));
        } else {
            std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
        }
    }
}

fn find_on_path(names: &[&str]) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path).flat_map(|d| names.iter().map(move |n| d.join(n))).find(|p| p.is_file())
}

#[test]
fn report_draws_a_curve_per_variant_and_one_page_and_compares_two_copies() {
    let dir = scratch("plots");
    let spec = write(&dir, "tiny.yaml", &format!("{TINY}claims:\n  - {{ metric: test_acc, higher: stablemax, than: softmax }}\n"));
    let out = run(&["run", spec.to_str().unwrap(), "--out", dir.join("res").to_str().unwrap(), "--threads", "1", "--jobs", "2"]);
    assert!(out.status.success(), "{}", text(&out));
    let exp = dir.join("res/tiny");
    // The overall progress line and where the page and the figures are.
    assert!(text(&out).contains("[tiny] 4/4 runs done (ok 4)"), "{}", text(&out));
    assert!(text(&out).contains(&format!(">> report: {}", exp.join("report.html").display())), "{}", text(&out));

    // One SVG per logged metric; in it one line per variant, with a vertex per logged step.
    let svg = std::fs::read_to_string(exp.join("plots/test_acc.svg")).unwrap();
    let steps = logged_steps(&exp, &["softmax__s0", "softmax__s1"], "test_acc");
    assert!(steps >= 3);
    assert_eq!(polylines(&svg, "#1F77B4"), vec![steps], "softmax, the first variant");
    assert_eq!(polylines(&svg, "#FF7F0E"), vec![logged_steps(&exp, &["stablemax__s0", "stablemax__s1"], "test_acc")], "stablemax");
    let texts = svg_texts(&svg);
    assert!(texts.iter().any(|t| t == "step") && texts.iter().any(|t| t == "test_acc"), "axis names: {texts:?}");
    assert!(texts.iter().any(|t| t == "softmax (n=2)") && texts.iter().any(|t| t == "stablemax (n=2)"), "legend: {texts:?}");
    assert!(exp.join("plots/train_loss.svg").is_file());
    // Claimed metrics lead the table; the table links the figures.
    let table = std::fs::read_to_string(exp.join("table.md")).unwrap();
    assert!(table.lines().any(|l| l.starts_with("| variant | n | test_acc |")), "{table}");
    assert!(table.contains("(plots/test_acc.svg)"), "{table}");

    // The same results give the same bytes: a second report, and a report of a copy.
    let html = std::fs::read_to_string(exp.join("report.html")).unwrap();
    assert!(run(&["-q", "report", exp.to_str().unwrap()]).status.success());
    assert_eq!(std::fs::read_to_string(exp.join("plots/test_acc.svg")).unwrap(), svg);
    let copy = dir.join("copy/tiny");
    copy_dir(&exp, &copy);
    assert!(run(&["-q", "report", copy.to_str().unwrap()]).status.success());
    assert_eq!(std::fs::read_to_string(copy.join("plots/test_acc.svg")).unwrap(), svg);
    // The page holds the tables, the claims and every figure inline.
    assert!(html.starts_with("<!DOCTYPE html>") && html.contains("<code>test_acc</code>: stablemax &gt; softmax"), "claims in the page");
    assert_eq!(html.matches("<svg").count(), std::fs::read_dir(exp.join("plots")).unwrap().count());
    assert!(!html.contains("src=\"plots/"), "self-contained: no links to other files");

    // Two directories of the same spec: side by side, every difference zero.
    let cmp = run(&["report", exp.to_str().unwrap(), copy.to_str().unwrap()]);
    assert!(cmp.status.success(), "{}", text(&cmp));
    let md = String::from_utf8_lossy(&cmp.stdout).to_string();
    let diffs: Vec<&str> = md.lines().filter(|l| l.starts_with("| softmax |") || l.starts_with("| stablemax |")).map(|l| l.trim_end_matches(" |").rsplit(" | ").next().unwrap()).collect();
    assert!(diffs.len() >= 10 && diffs.iter().all(|d| *d == "0"), "{md}");
    assert!(md.contains("Largest |B − A| of a mean: 0 (the two hold the same numbers)"), "{md}");
    // A changed number shows up.
    let s0 = copy.join("runs/softmax__s0/summary.csv");
    let (h, mut rows) = read_csv(&s0);
    let col = h.iter().position(|c| c == "test_acc").unwrap();
    rows[0][col] = format!("{}", rows[0][col].parse::<f64>().unwrap() + 0.5);
    let mut w = csv::Writer::from_path(&s0).unwrap();
    w.write_record(&h).unwrap();
    w.write_record(&rows[0]).unwrap();
    w.flush().unwrap();
    let md = text(&run(&["report", exp.to_str().unwrap(), copy.to_str().unwrap()]));
    assert!(md.lines().any(|l| l.starts_with("| softmax | test_acc |") && l.ends_with("| 0.2500 |")), "{md}");

    // The page in a real browser: no console errors, and the picture is not blank.
    let Some(chromium) = find_on_path(&["chromium", "chromium-browser"]) else {
        eprintln!("skipped the browser check of report.html: no chromium on PATH (`apt-get install chromium`, or `make browser`)");
        return;
    };
    let shot = dir.join("shot.png");
    let mut child = Command::new(chromium)
        .args(["--headless", "--no-sandbox", "--disable-gpu", "--enable-logging=stderr", "--v=0", "--window-size=1200,1600"])
        .arg(format!("--user-data-dir={}", dir.join("chromium-profile").display()))
        .arg(format!("--screenshot={}", shot.display()))
        .arg(format!("file://{}", exp.join("report.html").display()))
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(dir.join("chromium.log")).unwrap())
        .spawn()
        .unwrap();
    let started = std::time::Instant::now();
    while child.try_wait().unwrap().is_none() {
        if started.elapsed() > std::time::Duration::from_secs(120) {
            let _ = child.kill();
            panic!("headless chromium did not finish the screenshot in 120 s");
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let log = std::fs::read_to_string(dir.join("chromium.log")).unwrap_or_default();
    assert!(!log.contains(":CONSOLE"), "console messages: {log}");
    let decoder = png::Decoder::new(std::fs::File::open(&shot).unwrap_or_else(|e| panic!("no screenshot ({e}): {log}")));
    let mut reader = decoder.read_info().unwrap();
    let mut buf = vec![0; reader.output_buffer_size()];
    let info = reader.next_frame(&mut buf).unwrap();
    let channels = info.color_type.samples();
    let pixels: Vec<&[u8]> = buf[..info.buffer_size()].chunks(channels).collect();
    let inked = pixels.iter().filter(|p| p[..3] != [255, 255, 255]).count();
    assert!(inked * 50 > pixels.len(), "the screenshot is (almost) blank: {inked} of {} pixels", pixels.len());
    assert!(pixels.iter().any(|p| p[..3] == [31, 119, 180]), "the first variant's curve colour is on screen");
}

#[test]
fn plot_draws_final_values_across_a_sweep_key() {
    let dir = scratch("sweep-plot");
    let spec = write(&dir, "sw.yaml", &format!("{TINY}sweep:\n  modulus: [5, 7, 11]\n"));
    let out = run(&["-q", "run", spec.to_str().unwrap(), "--out", dir.join("res").to_str().unwrap(), "--threads", "1", "--jobs", "2"]);
    assert!(out.status.success(), "{}", text(&out));
    let exp = dir.join("res/sw");
    let file = dir.join("acc.svg");
    let out = run(&["plot", exp.to_str().unwrap(), "--metric", "test_acc", "--x", "modulus", "--out", file.to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out));
    let svg = std::fs::read_to_string(&file).unwrap();
    // A line per variant, a vertex per swept value.
    assert_eq!(polylines(&svg, "#1F77B4"), vec![3]);
    assert_eq!(polylines(&svg, "#FF7F0E"), vec![3]);
    let texts = svg_texts(&svg);
    assert!(texts.iter().any(|t| t == "modulus") && texts.iter().any(|t| t == "11"), "{texts:?}");
    // A key that is not swept, and a metric never logged, are errors that say what is there.
    let bad = run(&["plot", exp.to_str().unwrap(), "--metric", "test_acc", "--x", "hidden"]);
    assert!(!bad.status.success() && text(&bad).contains("swept keys: modulus"), "{}", text(&bad));
    let bad = run(&["plot", exp.to_str().unwrap(), "--metric", "test_accuracy"]);
    assert!(!bad.status.success() && text(&bad).contains("`test_accuracy` was not logged"), "{}", text(&bad));
    // Curves by default, into the experiment's plots/.
    let out = run(&["plot", exp.to_str().unwrap(), "--metric", "train_loss"]);
    assert!(out.status.success() && exp.join("plots/train_loss.svg").is_file(), "{}", text(&out));
}
