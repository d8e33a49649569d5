//! `reglab slurm` against a real Slurm: munged, slurmctld and slurmd started on loopback in a
//! temp directory (as root, Debian's Slurm 22.05), a real spec submitted as a job array, and a
//! task cancelled mid-run. Run it with `make test-slurm` (which installs the packages); plain
//! `cargo test` skips it.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

mod common;
use common::{bin as reglab, text};

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// A one-node cluster on this machine; its daemons are stopped, by pid, when it is dropped.
struct Cluster {
    dir: PathBuf,
    conf: PathBuf,
}

impl Cluster {
    fn start(dir: &Path) -> Cluster {
        use std::os::unix::fs::PermissionsExt;
        let _ = std::fs::remove_dir_all(dir);
        for sub in ["state", "spool"] {
            std::fs::create_dir_all(dir.join(sub)).unwrap();
        }
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).unwrap();
        let key = dir.join("munge.key");
        let mut random = vec![0u8; 1024];
        use std::io::Read;
        std::fs::File::open("/dev/urandom").unwrap().read_exact(&mut random).unwrap();
        std::fs::write(&key, &random).unwrap();
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
        let d = dir.display();
        let cluster = Cluster { dir: dir.to_path_buf(), conf: dir.join("slurm.conf") };
        let out = Command::new("munged")
            .arg("--force")
            .arg(format!("--socket={d}/munge.sock"))
            .arg(format!("--key-file={d}/munge.key"))
            .arg(format!("--log-file={d}/munged.log"))
            .arg(format!("--pid-file={d}/munged.pid"))
            .arg(format!("--seed-file={d}/munged.seed"))
            .output()
            .unwrap();
        assert!(out.status.success(), "munged: {}", text(&out));
        let conf = format!(
            "ClusterName=reglabtest
SlurmctldHost=localhost
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=socket={d}/munge.sock
CredType=cred/munge
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
SlurmctldPort={}
SlurmdPort={}
StateSaveLocation={d}/state
SlurmdSpoolDir={d}/spool
SlurmctldPidFile={d}/slurmctld.pid
SlurmdPidFile={d}/slurmd.pid
SlurmctldLogFile={d}/slurmctld.log
SlurmdLogFile={d}/slurmd.log
MpiDefault=none
ReturnToService=2
KillWait=20
NodeName=localhost NodeAddr=127.0.0.1 CPUs=2 State=UNKNOWN
PartitionName=debug Nodes=localhost Default=YES MaxTime=INFINITE State=UP
",
            free_port(),
            free_port()
        );
        std::fs::write(&cluster.conf, conf).unwrap();
        let out = Command::new("slurmctld").arg("-f").arg(&cluster.conf).output().unwrap();
        assert!(out.status.success(), "slurmctld: {}", text(&out));
        let out = Command::new("slurmd").arg("-f").arg(&cluster.conf).args(["-N", "localhost"]).output().unwrap();
        assert!(out.status.success(), "slurmd: {}", text(&out));
        let start = Instant::now();
        loop {
            let out = cluster.cmd("sinfo").args(["-h", "-o", "%T"]).output().unwrap();
            if String::from_utf8_lossy(&out.stdout).trim() == "idle" {
                break;
            }
            assert!(start.elapsed() < Duration::from_secs(60), "the node did not come up: {}\n{}", text(&out), cluster.logs());
            std::thread::sleep(Duration::from_millis(300));
        }
        cluster
    }

    /// A Slurm client (or reglab) command pointed at this cluster.
    fn cmd(&self, program: &str) -> Command {
        let mut c = if program == "reglab" { reglab() } else { Command::new(program) };
        c.env("SLURM_CONF", &self.conf);
        c
    }

    fn logs(&self) -> String {
        ["slurmctld.log", "slurmd.log"].iter().map(|f| std::fs::read_to_string(self.dir.join(f)).unwrap_or_default()).collect::<Vec<_>>().join("\n")
    }

    fn queue_empty(&self, job: &str) -> bool {
        let out = self.cmd("squeue").args(["-h", "-j", job]).output().unwrap();
        !out.status.success() || String::from_utf8_lossy(&out.stdout).trim().is_empty()
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let _ = self.cmd("scancel").arg("--user=root").output();
        for daemon in ["slurmd", "slurmctld", "munged"] {
            let Ok(pid) = std::fs::read_to_string(self.dir.join(format!("{daemon}.pid"))) else { continue };
            let pid = pid.trim().to_string();
            let _ = Command::new("kill").arg(&pid).output();
            let start = Instant::now();
            while Path::new(&format!("/proc/{pid}")).exists() && start.elapsed() < Duration::from_secs(10) {
                std::thread::sleep(Duration::from_millis(100));
            }
            let _ = Command::new("kill").args(["-9", &pid]).output();
        }
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// 2 variants × a 2-point sweep × 2 seeds = 8 runs of about 2–3 s each.
const SPEC: &str = "paper: stablemax_grokking
seeds: [0, 1]
params: { modulus: 23, hidden: [64], epochs: 6000, log_every: 100 }
variants:
  - name: softmax
  - name: stablemax
    params: { loss: stablemax_ce }
sweep:
  hidden: [[64], [48]]
";

fn summary_rows(exp: &Path) -> Vec<Vec<String>> {
    let mut r = csv::Reader::from_path(exp.join("summary.csv")).unwrap();
    let header: Vec<String> = r.headers().unwrap().iter().map(str::to_string).collect();
    let wall = header.iter().position(|c| c == "wall_s").unwrap();
    let mut rows: Vec<Vec<String>> = r.records().map(|x| x.unwrap().iter().map(str::to_string).collect()).collect();
    rows.insert(0, header);
    for row in &mut rows {
        row.remove(wall);
    }
    rows
}

fn statuses(exp: &Path) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for e in std::fs::read_dir(exp.join("runs")).unwrap() {
        let dir = e.unwrap().path();
        let id = dir.file_name().unwrap().to_string_lossy().to_string();
        let status = csv::Reader::from_path(dir.join("summary.csv"))
            .ok()
            .and_then(|mut r| {
                let h = r.headers().ok()?.clone();
                let i = h.iter().position(|c| c == "status")?;
                r.records().next()?.ok().map(|rec| rec[i].to_string())
            })
            .unwrap_or_else(|| "no summary".into());
        out.insert(id, status);
    }
    out
}

fn job_id(out: &Output) -> String {
    let stdout = String::from_utf8_lossy(&out.stdout);
    stdout.split_whitespace().skip_while(|w| *w != "job").nth(1).unwrap_or_else(|| panic!("no job id in: {}", text(out))).trim_end_matches(':').to_string()
}

#[test]
#[ignore = "needs the Slurm daemons and root: `make test-slurm`"]
fn a_job_array_on_a_real_cluster_matches_a_local_run_and_resumes_after_a_cancelled_task() {
    let missing: Vec<&str> = ["munged", "slurmctld", "slurmd", "sbatch", "squeue", "scancel", "sinfo"]
        .into_iter()
        .filter(|p| !std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default()).any(|d| d.join(p).is_file()))
        .collect();
    if !missing.is_empty() {
        eprintln!("skipped: {} not on PATH (`make test-slurm` installs Debian's slurmctld, slurmd, slurm-client and munge)", missing.join(", "));
        return;
    }
    let root = std::env::temp_dir().join(format!("reglab-slurm-{}", std::process::id()));
    let cluster = Cluster::start(&root.join("cluster"));
    let work = root.join("work");
    std::fs::create_dir_all(&work).unwrap();
    let spec = work.join("sw.yaml");
    std::fs::write(&spec, SPEC).unwrap();
    let spec = spec.to_str().unwrap();

    // 1. The whole array, waited for: every run ok, the same numbers as one machine.
    let a = work.join("slurm");
    let t = Instant::now();
    let out = cluster.cmd("reglab").args(["slurm", spec, "--array", "3", "--wait", "--out", a.to_str().unwrap()]).output().unwrap();
    let slurm_wall = t.elapsed().as_secs_f64();
    assert!(out.status.success(), "{}\n{}", text(&out), cluster.logs());
    assert!(text(&out).contains("array 0-2 (3 of 3 tasks) for 8 unfinished of 8 runs"), "{}", text(&out));
    let st = statuses(&a.join("sw"));
    assert_eq!(st.len(), 8);
    assert!(st.values().all(|s| s == "ok"), "{st:?}");
    let jobs = std::fs::read_to_string(a.join("slurm/jobs.csv")).unwrap();
    assert_eq!(jobs.lines().count(), 2, "{jobs}");
    let local = work.join("local");
    let out = reglab().args(["-q", "run", spec, "--jobs", "1", "--out", local.to_str().unwrap()]).output().unwrap();
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(summary_rows(&a.join("sw")), summary_rows(&local.join("sw")), "summary.csv (wall time aside)");
    let local2 = work.join("local2");
    let t = Instant::now();
    let out = reglab().args(["-q", "run", spec, "--jobs", "2", "--out", local2.to_str().unwrap()]).output().unwrap();
    let local_wall = t.elapsed().as_secs_f64();
    assert!(out.status.success());
    eprintln!("8 runs: Slurm array of 3 tasks (2 CPUs) {slurm_wall:.1} s with --wait; local --jobs 2 {local_wall:.1} s");

    // Nothing left to do: the same command submits nothing.
    let out = cluster.cmd("reglab").args(["slurm", spec, "--array", "3", "--wait", "--out", a.to_str().unwrap()]).output().unwrap();
    assert!(out.status.success() && text(&out).contains("nothing to submit"), "{}", text(&out));
    assert_eq!(std::fs::read_to_string(a.join("slurm/jobs.csv")).unwrap(), jobs);

    // 2. Cancel one task once it has finished a run; the rest of the array goes on.
    let b = work.join("cancel");
    let out = cluster.cmd("reglab").args(["slurm", spec, "--array", "3", "--out", b.to_str().unwrap()]).output().unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let job = job_id(&out);
    let start = Instant::now();
    let task1_ok = loop {
        // Task 1's slice: the 2nd, 5th and 8th run in expansion order (experiment.json's).
        let mine: Vec<String> = std::fs::read(b.join("sw/experiment.json"))
            .ok()
            .and_then(|bytes| serde_json::from_slice::<serde_json::Value>(&bytes).ok())
            .map(|exp| exp["runs"].as_array().unwrap().iter().skip(1).step_by(3).map(|r| r[0].as_str().unwrap().to_string()).collect())
            .unwrap_or_default();
        let st = if b.join("sw/runs").is_dir() { statuses(&b.join("sw")) } else { BTreeMap::new() };
        let ok: Vec<String> = mine.iter().filter(|id| st.get(*id).is_some_and(|s| s == "ok")).cloned().collect();
        if !ok.is_empty() {
            break ok;
        }
        assert!(start.elapsed() < Duration::from_secs(120), "task 1 finished no run: {st:?}");
        std::thread::sleep(Duration::from_millis(100));
    };
    let out = cluster.cmd("scancel").arg(format!("{job}_1")).output().unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let start = Instant::now();
    while !cluster.queue_empty(&job) {
        assert!(start.elapsed() < Duration::from_secs(180), "the array did not end");
        std::thread::sleep(Duration::from_millis(300));
    }
    let after_cancel = statuses(&b.join("sw"));
    let ok_before: Vec<String> = after_cancel.iter().filter(|(_, s)| *s == "ok").map(|(id, _)| id.clone()).collect();
    let interrupted: Vec<&String> = after_cancel.iter().filter(|(_, s)| *s == "interrupted").map(|(id, _)| id).collect();
    assert!(ok_before.len() < 8, "the cancelled task left unfinished runs: {after_cancel:?}");
    for id in &task1_ok {
        assert!(ok_before.contains(id));
    }
    let stamps: BTreeMap<String, String> = ok_before.iter().map(|id| (id.clone(), std::fs::read_to_string(b.join("sw/runs").join(id).join("run.json")).unwrap())).collect();
    eprintln!(
        "cancel test: task 1 cancelled after {} of its runs; then {} ok, {} interrupted, {} never started",
        task1_ok.len(),
        ok_before.len(),
        interrupted.len(),
        8 - after_cancel.len()
    );

    // The same command again: only task 1 goes back, no finished run is redone, all end ok.
    let out = cluster.cmd("reglab").args(["slurm", spec, "--array", "3", "--wait", "--out", b.to_str().unwrap()]).output().unwrap();
    assert!(out.status.success(), "{}\n{}", text(&out), cluster.logs());
    assert!(text(&out).contains("array 1 (1 of 3 tasks)"), "{}", text(&out));
    let st = statuses(&b.join("sw"));
    assert!(st.len() == 8 && st.values().all(|s| s == "ok"), "{st:?}");
    for (id, stamp) in &stamps {
        assert_eq!(&std::fs::read_to_string(b.join("sw/runs").join(id).join("run.json")).unwrap(), stamp, "{id} was run again");
    }
    assert_eq!(summary_rows(&b.join("sw")), summary_rows(&local.join("sw")));
    drop(cluster);
    let _ = std::fs::remove_dir_all(&root);
}
