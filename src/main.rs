//! The `reglab` command line: run, slurm, validate, list, show, report, plot, data.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand};

use reglab::context::{self, ProgressMode};
use reglab::report::{self, Experiment};
use reglab::runner::{self, RunSettings, Status};
use reglab::spec::{self, LoadedSpec, RunPlan};
use reglab::data::{catalog, store};
use reglab::{device, papers, params};

#[derive(Parser)]
#[command(name = "reglab", version, about = "Reproduce ML papers' methods from YAML experiment specs on libtorch")]
struct Cli {
    /// Silence progress output.
    #[arg(short, long, global = true)]
    quiet: bool,
    /// More detail (-v info, -vv debug); RUST_LOG also works.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    verbose: u8,
    /// Where datasets live (default: $REGLAB_DATA, else data/ in the checkout).
    #[arg(long, global = true, value_name = "DIR")]
    data_dir: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run every (variant × sweep point × seed) of each spec, then print its report.
    Run(RunArgs),
    /// Submit the runs of specs as a Slurm job array (task I runs `run --shard I/N`); only
    /// the tasks with unfinished runs are submitted, so the same command resubmits what is left.
    Slurm(SlurmArgs),
    /// Parse, merge, expand and type-check every run's config without running.
    Validate(ExpandArgs),
    /// Every registered paper: key, title, arXiv id, and the experiment files that use it.
    List,
    /// A paper's Config with its defaults, as YAML to paste under `params:` in a spec.
    Show { key: String },
    /// Write summary.csv, table.md, plots/ and report.html for result directories and check the
    /// claims. Two directories of the same spec (CPU vs GPU, two code versions): side by side.
    Report {
        /// `results/<name>` directories, or a results root holding several.
        #[arg(required = true)]
        dirs: Vec<PathBuf>,
        /// Exit non-zero when a claim fails or cannot be evaluated.
        #[arg(long)]
        check: bool,
    },
    /// Draw a metric as SVG: learning curves over steps (mean over seeds, ± 1 std band), or each
    /// group's final value against a sweep key.
    Plot {
        /// `results/<name>` directories, or a results root holding several.
        #[arg(required = true)]
        dirs: Vec<PathBuf>,
        /// A metric to draw (repeat for several). Default: every metric logged over steps, or with
        /// `--x KEY` the metrics the claims name.
        #[arg(long = "metric", value_name = "M")]
        metrics: Vec<String>,
        /// `step` for curves over steps, or a sweep key (e.g. `train.optim.lr`) for final values across it.
        #[arg(long, default_value = "step", value_name = "step|KEY")]
        x: String,
        /// An .svg file (one experiment, one metric) or a folder; default `<experiment>/plots/`.
        #[arg(long, value_name = "PATH")]
        out: Option<PathBuf>,
    },
    /// Datasets: what is present, and getting them.
    #[command(subcommand)]
    Data(DataCommand),
    /// (internal) Run one prepared run directory; used by `run --jobs N`.
    #[command(hide = true)]
    RunOne {
        dir: PathBuf,
        #[arg(long, default_value = "cpu")]
        device: String,
        #[arg(long, default_value_t = 1)]
        threads: i32,
        #[arg(long)]
        plain_progress: bool,
    },
}

#[derive(Subcommand)]
enum DataCommand {
    /// Every dataset: present or not, where, its size, and how to get it.
    List,
    /// Download a dataset (or copy it from a folder with --from), verify every file's SHA-256,
    /// and only then move it into the data directory.
    Fetch {
        name: String,
        /// Take the files from this folder instead of downloading them.
        #[arg(long, value_name = "DIR")]
        from: Option<PathBuf>,
    },
}

#[derive(Args, Clone)]
struct ExpandArgs {
    /// Spec files (experiments/*.yaml).
    #[arg(required = true)]
    specs: Vec<PathBuf>,
    /// Seeds to run instead of the spec's, e.g. 0,1,2.
    #[arg(long)]
    seeds: Option<String>,
    /// Override a config key for every run: --set epochs=10 --set optimizer.lr=0.01.
    #[arg(long = "set", value_name = "KEY=VALUE")]
    sets: Vec<String>,
    /// auto | cpu | cuda | cuda:N (overrides the spec's `device`).
    #[arg(long)]
    device: Option<String>,
}

#[derive(Args)]
struct RunArgs {
    #[command(flatten)]
    expand: ExpandArgs,
    /// Runs at once, each in its own process (a crash cannot take the others down).
    #[arg(long, default_value_t = 1)]
    jobs: usize,
    /// Torch threads per run (default 1, whatever --jobs is, so that `--jobs` never changes the
    /// numbers; raise it for one large run).
    #[arg(long)]
    threads: Option<i32>,
    /// Run only the I-th of N deterministic slices (I is 0-based), e.g. --shard 0/4.
    #[arg(long)]
    shard: Option<String>,
    /// Rerun runs that already finished.
    #[arg(long)]
    force: bool,
    /// Results root instead of results/: a spec named x writes to DIR/x/.
    #[arg(long, default_value = "results")]
    out: PathBuf,
}

#[derive(Args)]
struct SlurmArgs {
    #[command(flatten)]
    expand: ExpandArgs,
    /// Tasks in the array (default: one per run, at most 100); lowered to the runs per spec.
    #[arg(long, value_name = "N")]
    array: Option<usize>,
    /// Slurm partition (default: the cluster's default partition).
    #[arg(long, value_name = "P")]
    partition: Option<String>,
    /// Time limit per task, in Slurm's format (e.g. 02:00:00).
    #[arg(long, value_name = "T")]
    time: Option<String>,
    /// CPUs per task; the task runs that many runs at once (each with --threads torch threads).
    #[arg(long, default_value_t = 1, value_name = "C")]
    cpus_per_task: usize,
    /// Generic resources per task, e.g. gpu:1.
    #[arg(long, value_name = "G")]
    gres: Option<String>,
    /// Torch threads per run (default 1, as for `run`).
    #[arg(long)]
    threads: Option<i32>,
    /// Results root, as for `run` (on a filesystem every node sees).
    #[arg(long, default_value = "results")]
    out: PathBuf,
    /// Print the batch script instead of submitting it.
    #[arg(long)]
    dry_run: bool,
    /// Wait for the array to finish, then print the report.
    #[arg(long)]
    wait: bool,
}

/// Torch threads per run when `--threads` is not given.
const DEFAULT_THREADS: i32 = 1;

fn main() -> ExitCode {
    // Before libtorch allocates a tensor: keep its buffers mapped from step to step.
    reglab::malloc::tune();
    let cli = Cli::parse();
    init_tracing(cli.quiet, cli.verbose);
    match dispatch(cli) {
        Ok(code) => code,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::from(2)
        }
    }
}

fn init_tracing(quiet: bool, verbose: u8) {
    let default = match (quiet, verbose) {
        (true, _) => "error",
        (_, 0) => "warn",
        (_, 1) => "info",
        _ => "debug",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_target(false).init();
}

fn dispatch(cli: Cli) -> Result<ExitCode> {
    let data_dir = store::data_dir(cli.data_dir.as_deref());
    if matches!(cli.command, Command::List | Command::Show { .. } | Command::Validate(_) | Command::Report { .. } | Command::Plot { .. } | Command::Data(DataCommand::List)) {
        quiet_on_closed_pipe();
    }
    match cli.command {
        Command::Run(args) => cmd_run(args, cli.quiet, &data_dir),
        Command::Slurm(args) => cmd_slurm(args, cli.quiet, &data_dir),
        Command::Data(DataCommand::List) => cmd_data_list(&data_dir),
        Command::Data(DataCommand::Fetch { name, from }) => cmd_data_fetch(&data_dir, &name, from.as_deref(), cli.quiet),
        Command::Validate(args) => cmd_validate(args),
        Command::List => cmd_list(),
        Command::Show { key } => cmd_show(&key),
        Command::Report { dirs, check } => cmd_report(&dirs, check, cli.quiet),
        Command::Plot { dirs, metrics, x, out } => cmd_plot(&dirs, &metrics, &x, out.as_deref()),
        Command::RunOne { dir, device, threads, plain_progress } => {
            install_ctrl_c();
            let progress = if cli.quiet {
                ProgressMode::Quiet
            } else if plain_progress {
                ProgressMode::Plain
            } else {
                ProgressMode::detect(false)
            };
            let dev = device::resolve(&device, "--device")?;
            let settings = RunSettings { device: dev, device_arg: device, threads, jobs: 1, progress, data_dir };
            Ok(match runner::run_one(&dir, &settings)? {
                Status::Interrupted => ExitCode::from(130),
                _ => ExitCode::SUCCESS,
            })
        }
    }
}

/// Rust ignores SIGPIPE, so printing into a closed pipe (`reglab list | head`) panics. The commands
/// that only print take the default action instead: the process ends quietly, as `ls | head` does.
/// `run` keeps Rust's behaviour, since it talks to its worker processes through pipes.
fn quiet_on_closed_pipe() {
    #[cfg(unix)]
    // SAFETY: restoring a signal's default disposition before any thread is spawned.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}

/// Every spec loaded, its device resolved and its runs expanded — all before any run starts.
struct Prepared {
    spec: LoadedSpec,
    device: tch::Device,
    device_arg: String,
    runs: Vec<RunPlan>,
}

fn prepare(args: &ExpandArgs) -> Result<Vec<Prepared>> {
    let seeds = args.seeds.as_deref().map(spec::parse_seeds).transpose()?;
    let sets = args.sets.iter().map(|s| params::parse_set(s)).collect::<Result<Vec<_>>>()?;
    let mut out = vec![];
    let mut names = std::collections::BTreeMap::new();
    for path in &args.specs {
        let loaded = spec::load(path)?;
        if let Some(other) = names.insert(loaded.name.clone(), path.clone()) {
            bail!("{} and {} both write results/{}/; give one of them another `name:`", other.display(), path.display(), loaded.name);
        }
        let (raw, origin) = match &args.device {
            Some(d) => (d.clone(), "--device".to_string()),
            None => (loaded.spec.device.clone(), format!("{}: `device`", path.display())),
        };
        let device = device::resolve(&raw, &origin)?;
        let runs = loaded.expand(seeds.as_deref(), &sets)?;
        out.push(Prepared { device_arg: device::name(device), spec: loaded, device, runs });
    }
    Ok(out)
}

fn cmd_validate(args: ExpandArgs) -> Result<ExitCode> {
    for p in prepare(&args)? {
        println!(
            "{}: ok — paper `{}`, {} runs ({} variants/sweep points × {} seeds), device {}",
            p.spec.path.display(),
            p.spec.entry.key,
            p.runs.len(),
            p.spec.groups().len(),
            p.runs.len() / p.spec.groups().len().max(1),
            p.device_arg
        );
    }
    Ok(ExitCode::SUCCESS)
}

fn install_ctrl_c() {
    let _ = ctrlc::set_handler(|| {
        if context::cancel_requested() {
            eprintln!("\nreglab: second Ctrl-C, aborting now");
            std::process::exit(130);
        }
        eprintln!("\nreglab: stopping the running runs at their next step (Ctrl-C again to abort at once)");
        context::request_cancel();
    });
}

fn cmd_run(args: RunArgs, quiet: bool, data_dir: &Path) -> Result<ExitCode> {
    if args.jobs == 0 {
        bail!("--jobs must be at least 1");
    }
    let shard = args.shard.as_deref().map(spec::parse_shard).transpose()?;
    let prepared = prepare(&args.expand)?;
    for p in &prepared {
        runner::check_data(&p.runs, data_dir).map_err(|e| anyhow::anyhow!("{}: {e}", p.spec.path.display()))?;
    }
    // A fixed default, not cores / jobs: libtorch's reductions may split by thread, so a default
    // that followed --jobs would make `--jobs 1` and `--jobs 2` give different bytes.
    let threads = match args.threads {
        Some(t) if t >= 1 => t,
        Some(t) => bail!("--threads {t}: must be at least 1"),
        None => DEFAULT_THREADS,
    };
    install_ctrl_c();
    let progress = ProgressMode::detect(quiet);
    let mut failed: Vec<String> = vec![];
    let mut interrupted = false;
    for p in &prepared {
        let exp_dir = args.out.join(&p.spec.name);
        std::fs::create_dir_all(&exp_dir).with_context(|| format!("cannot create {}", exp_dir.display()))?;
        let experiment = Experiment {
            name: p.spec.name.clone(),
            paper: p.spec.entry.key.into(),
            title: p.spec.entry.title.into(),
            arxiv: p.spec.entry.arxiv.into(),
            spec_file: p.spec.path.display().to_string(),
            groups: p.spec.groups(),
            runs: p.runs.iter().map(|r| (r.id.clone(), r.group.clone())).collect(),
            claims: p.spec.spec.claims.clone(),
            points: p.spec.group_points(),
        };
        experiment.write(&exp_dir)?;
        let runs = match shard {
            Some(s) => spec::shard(p.runs.clone(), s),
            None => p.runs.clone(),
        };
        if !quiet {
            eprintln!(
                "{}: {} runs on {} ({} torch threads each{})",
                p.spec.path.display(),
                runs.len(),
                p.device_arg,
                threads,
                if args.jobs > 1 { format!(", {} at once", args.jobs) } else { String::new() }
            );
        }
        let settings = RunSettings {
            device: p.device,
            device_arg: p.device_arg.clone(),
            threads,
            jobs: args.jobs,
            progress,
            data_dir: data_dir.to_path_buf(),
        };
        let outcome = runner::run_all(&runs, &exp_dir, &settings, args.force)?;
        failed.extend(outcome.failed.iter().map(|id| format!("{}/runs/{id}", exp_dir.display())));
        interrupted |= outcome.interrupted;
        let rep = report::report(&exp_dir)?;
        println!("{}", rep.markdown);
        print_report_files(&rep, quiet);
        if interrupted {
            break;
        }
    }
    if !failed.is_empty() {
        eprintln!("error: {} run(s) failed (their summary.csv has the message):", failed.len());
        for f in &failed {
            eprintln!("  {f}");
        }
        return Ok(ExitCode::from(1));
    }
    if interrupted {
        eprintln!("interrupted: finished runs are kept; run the same command again to continue");
        return Ok(ExitCode::from(130));
    }
    Ok(ExitCode::SUCCESS)
}

fn cmd_report(dirs: &[PathBuf], check: bool, quiet: bool) -> Result<ExitCode> {
    let mut all_pass = true;
    if let Some((a, b)) = same_spec_pair(dirs)? {
        let (md, _) = reglab::compare::compare(&a, &b)?;
        println!("{md}");
        for d in [&a, &b] {
            all_pass &= report::finals(d)?.claims.iter().all(|c| c.pass == Some(true));
        }
    } else {
        for d in dirs {
            for exp in report::find_experiments(d)? {
                let rep = report::report(&exp)?;
                println!("{}", rep.markdown);
                print_report_files(&rep, quiet);
                all_pass &= rep.all_pass();
            }
        }
    }
    if check && !all_pass {
        eprintln!("error: at least one claim did not PASS");
        return Ok(ExitCode::from(1));
    }
    Ok(ExitCode::SUCCESS)
}

fn cmd_slurm(args: SlurmArgs, quiet: bool, data_dir: &Path) -> Result<ExitCode> {
    use reglab::slurm::{self, ArrayJob, SbatchOptions};
    if args.cpus_per_task == 0 {
        bail!("--cpus-per-task must be at least 1");
    }
    let threads = args.threads.unwrap_or(DEFAULT_THREADS);
    if threads < 1 {
        bail!("--threads {threads}: must be at least 1");
    }
    // The runs as the tasks will expand them. The device is the tasks' to resolve (a login node
    // may have no GPU), so it plays no part here: it does not enter a run's config.
    let prepared = prepare(&ExpandArgs { device: Some("cpu".into()), ..args.expand.clone() })?;
    for p in &prepared {
        runner::check_data(&p.runs, data_dir).map_err(|e| anyhow::anyhow!("{}: {e}", p.spec.path.display()))?;
    }
    let total: usize = prepared.iter().map(|p| p.runs.len()).sum();
    let per_spec = prepared.iter().map(|p| p.runs.len()).max().unwrap_or(0);
    if per_spec == 0 {
        bail!("the specs expand to no runs");
    }
    let mut tasks = args.array.unwrap_or(per_spec.min(100));
    if tasks == 0 {
        bail!("--array must be at least 1");
    }
    if tasks > per_spec {
        eprintln!("--array {tasks}: a spec here has at most {per_spec} runs, so the array has {per_spec} tasks (a task runs the I-th slice of each spec)");
        tasks = per_spec;
    }
    let out = std::path::absolute(&args.out).with_context(|| format!("--out {}", args.out.display()))?;
    let unfinished = |i: usize| -> usize {
        prepared
            .iter()
            .map(|p| spec::shard(p.runs.clone(), (i, tasks)).iter().filter(|r| !runner::is_finished(&runner::run_dir(&out.join(&p.spec.name), &r.id), &r.config)).count())
            .sum()
    };
    let pending: Vec<(usize, usize)> = (0..tasks).map(|i| (i, unfinished(i))).filter(|(_, n)| *n > 0).collect();
    let left: usize = pending.iter().map(|(_, n)| n).sum();
    if pending.is_empty() {
        eprintln!("all {total} runs are finished (ok or diverged) in {}: nothing to submit", out.display());
        return if args.wait { slurm_report(&prepared, &out, quiet) } else { Ok(ExitCode::SUCCESS) };
    }
    let mut run_args = vec!["--data-dir".to_string(), std::path::absolute(data_dir)?.display().to_string(), "run".to_string()];
    for spec_path in &args.expand.specs {
        run_args.push(std::path::absolute(spec_path)?.display().to_string());
    }
    if let Some(seeds) = &args.expand.seeds {
        run_args.extend(["--seeds".to_string(), seeds.clone()]);
    }
    for set in &args.expand.sets {
        run_args.extend(["--set".to_string(), set.clone()]);
    }
    if let Some(device) = &args.expand.device {
        run_args.extend(["--device".to_string(), device.clone()]);
    }
    let jobs = (args.cpus_per_task / threads as usize).max(1);
    run_args.extend(["--threads".to_string(), threads.to_string(), "--jobs".to_string(), jobs.to_string()]);
    let job = ArrayJob {
        name: prepared.iter().map(|p| p.spec.name.as_str()).collect::<Vec<_>>().join("+"),
        tasks,
        indices: pending.iter().map(|(i, _)| *i).collect(),
        out: out.clone(),
        workdir: std::env::current_dir()?,
        exe: std::env::current_exe().context("cannot find the reglab executable for the tasks")?,
        run_args,
        options: SbatchOptions { partition: args.partition.clone(), time: args.time.clone(), cpus_per_task: args.cpus_per_task, gres: args.gres.clone() },
    };
    if args.dry_run {
        print!("{}", job.script());
        eprintln!("(dry run: {} task(s) of {tasks} for {left} unfinished of {total} runs; nothing submitted)", job.indices.len());
        return Ok(ExitCode::SUCCESS);
    }
    let id = slurm::submit(&job, left)?;
    println!(
        "submitted job {id}: array {} ({} of {tasks} tasks) for {left} unfinished of {total} runs; logs in {}",
        slurm::array_list(&job.indices),
        job.indices.len(),
        out.join(slurm::SLURM_DIR).join("logs").display()
    );
    if !args.wait {
        println!("follow it with `squeue -j {id}`; then `reglab report {}` (or run this command again with --wait)", out.display());
        return Ok(ExitCode::SUCCESS);
    }
    let finished = || -> usize {
        prepared.iter().map(|p| p.runs.iter().filter(|r| runner::is_finished(&runner::run_dir(&out.join(&p.spec.name), &r.id), &r.config)).count()).sum()
    };
    slurm::wait(&id, std::time::Duration::from_secs(10), |elapsed| {
        if !quiet {
            eprintln!("[slurm {id}] {}/{total} runs finished · {} s", finished(), elapsed.as_secs());
        }
    })?;
    slurm_report(&prepared, &out, quiet)
}

/// After a job array: each spec's report, and exit 1 (saying how to go on) unless every run is ok.
fn slurm_report(prepared: &[Prepared], out: &Path, quiet: bool) -> Result<ExitCode> {
    let mut not_ok = 0;
    for p in prepared {
        let exp_dir = out.join(&p.spec.name);
        for r in &p.runs {
            let status = runner::read_summary(&runner::run_dir(&exp_dir, &r.id)).ok().and_then(|s| s.get("status").cloned());
            if status.as_deref() != Some("ok") {
                not_ok += 1;
            }
        }
        if exp_dir.is_dir() {
            let rep = report::report(&exp_dir)?;
            println!("{}", rep.markdown);
            print_report_files(&rep, quiet);
        }
    }
    if not_ok > 0 {
        eprintln!("{not_ok} run(s) did not end ok (failed, interrupted, diverged or never started): their summary.csv says why; run the same command again to resubmit the tasks with unfinished runs");
        return Ok(ExitCode::from(1));
    }
    Ok(ExitCode::SUCCESS)
}

/// Two directories given, each one experiment of the same spec: the pair to compare.
fn same_spec_pair(dirs: &[PathBuf]) -> Result<Option<(PathBuf, PathBuf)>> {
    let [a, b] = dirs else { return Ok(None) };
    let (ea, eb) = (report::find_experiments(a)?, report::find_experiments(b)?);
    let ([ea], [eb]) = (ea.as_slice(), eb.as_slice()) else { return Ok(None) };
    let (xa, xb) = (report::load_experiment(ea)?, report::load_experiment(eb)?);
    Ok((xa.name == xb.name && xa.paper == xb.paper && ea != eb).then(|| (ea.clone(), eb.clone())))
}

/// Where the page and the figures of a report are (stderr, so the markdown on stdout stays clean).
fn print_report_files(rep: &report::Report, quiet: bool) {
    if quiet {
        return;
    }
    let plots = rep.plots.first().and_then(|p| p.parent()).map(|d| format!("; plots: {}/ ({} SVG)", d.display(), rep.plots.len())).unwrap_or_default();
    eprintln!(">> report: {}{plots}", rep.html.display());
}

fn cmd_plot(dirs: &[PathBuf], metrics: &[String], x: &str, out: Option<&Path>) -> Result<ExitCode> {
    use reglab::plot::{figure, file_name, write_figure, ExperimentCurves, XAxis};
    let x = XAxis::parse(x);
    let mut exps = vec![];
    for d in dirs {
        exps.extend(report::find_experiments(d)?);
    }
    let to_file = out.filter(|o| o.extension().is_some_and(|e| e == "svg"));
    if to_file.is_some() && (exps.len() != 1 || metrics.len() != 1) {
        bail!("`--out FILE.svg` draws one metric of one experiment (here {} experiment(s), {} `--metric`); give a folder to --out for more", exps.len(), metrics.len());
    }
    for exp_dir in &exps {
        let exp = report::load_experiment(exp_dir)?;
        let curves = ExperimentCurves::load(exp_dir, &exp)?;
        let wanted: Vec<String> = if !metrics.is_empty() {
            metrics.to_vec()
        } else if x == XAxis::Step {
            curves.curve_metrics().into_iter().collect()
        } else {
            let mut claimed: Vec<String> = vec![];
            for c in &exp.claims {
                if !claimed.contains(&c.metric) {
                    claimed.push(c.metric.clone());
                }
            }
            claimed
        };
        if wanted.is_empty() {
            bail!("{}: nothing to draw: name a metric with `--metric M` (see a run's metrics.csv)", exp_dir.display());
        }
        for metric in &wanted {
            let fig = figure(exp_dir, &exp, &curves, metric, &x)?;
            let path = match (to_file, out) {
                (Some(file), _) => file.to_path_buf(),
                (None, Some(dir)) if exps.len() > 1 => dir.join(&exp.name).join(file_name(metric, &x)),
                (None, Some(dir)) => dir.join(file_name(metric, &x)),
                (None, None) => exp_dir.join(report::PLOTS_DIR).join(file_name(metric, &x)),
            };
            println!("{}", write_figure(&fig, &path)?.display());
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// The experiments directory: `./experiments` if present, else the one in the source checkout.
fn experiments_dir() -> PathBuf {
    let here = Path::new("experiments");
    if here.is_dir() {
        here.to_path_buf()
    } else {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("experiments")
    }
}

fn spec_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = vec![];
    for sub in [dir.to_path_buf(), dir.join("full")] {
        if let Ok(entries) = std::fs::read_dir(&sub) {
            out.extend(entries.filter_map(|e| e.ok().map(|e| e.path())).filter(|p| p.extension().is_some_and(|e| e == "yaml" || e == "yml")));
        }
    }
    out.sort();
    out
}

fn cmd_list() -> Result<ExitCode> {
    let dir = experiments_dir();
    let files = spec_files(&dir);
    let paper_of = |p: &Path| -> Option<String> {
        let v: serde_yaml::Value = serde_yaml::from_str(&std::fs::read_to_string(p).ok()?).ok()?;
        v.get("paper")?.as_str().map(str::to_string)
    };
    for e in papers::registry() {
        let used: Vec<String> = files
            .iter()
            .filter(|f| paper_of(f).as_deref() == Some(e.key))
            .map(|f| f.strip_prefix(&dir).map(|r| format!("experiments/{}", r.display())).unwrap_or_else(|_| f.display().to_string()))
            .collect();
        println!("{:<22} arXiv {:<11} {}", e.key, e.arxiv, e.title);
        println!("{:<22} {}", "", if used.is_empty() { "(no experiment files)".to_string() } else { used.join(", ") });
    }
    Ok(ExitCode::SUCCESS)
}

fn cmd_show(key: &str) -> Result<ExitCode> {
    let e = papers::find(key)?;
    println!("# {} — {} (arXiv {})", e.key, e.title, e.arxiv);
    println!("# The Config with its defaults; paste under `params:` in a spec and edit.");
    print!("{}", serde_yaml::to_string(&(e.defaults)())?);
    Ok(ExitCode::SUCCESS)
}

fn cmd_data_list(data_dir: &Path) -> Result<ExitCode> {
    println!("data directory: {}", data_dir.display());
    println!("{:<16} {:<8} {:>10}  {:>9}  where / how to get it", "dataset", "present", "size", "load");
    for info in catalog::ALL {
        match store::present_set(data_dir, info) {
            Some(set) => {
                let mb = store::set_size(data_dir, info, set) as f64 / 1e6;
                let clock = std::time::Instant::now();
                let loaded = if info.name == "movielens_100k" {
                    reglab::data::load_ratings(data_dir).map(|r| format!("{} ratings", r.ratings.size()[0]))
                } else {
                    reglab::data::sources::load_named(info.name, data_dir).map(|r| {
                        let test = r.test.as_ref().map_or(0, |(_, y)| y.size()[0]);
                        format!("{}+{} samples", r.train_y.size()[0], test)
                    })
                };
                let load = match &loaded {
                    Ok(_) => format!("{:.2} s", clock.elapsed().as_secs_f64()),
                    Err(_) => "error".into(),
                };
                let what = loaded.unwrap_or_else(|e| format!("cannot load: {e:#}"));
                println!("{:<16} {:<8} {:>8.1} MB  {:>9}  {} ({what})", info.name, "yes", mb, load, data_dir.join(info.name).display());
            }
            None => println!("{:<16} {:<8} {:>10}  {:>9}  {}", info.name, "no", "-", "-", info.offline),
        }
    }
    println!("{:<16} {:<8} {:>10}  {:>9}  your own table: `data: {{ name: csv, path: FILE, label_column: NAME|INDEX }}`", "csv", "-", "-", "-");
    Ok(ExitCode::SUCCESS)
}

fn cmd_data_fetch(data_dir: &Path, name: &str, from: Option<&Path>, quiet: bool) -> Result<ExitCode> {
    let info = catalog::find(name)?;
    // A bundled dataset is copied from the checkout (through the same checksum test).
    let bundled_dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("data").join(name);
    let from = match (from, info.bundled) {
        (None, true) => {
            let same = std::fs::canonicalize(data_dir.join(name)).ok() == std::fs::canonicalize(&bundled_dir).ok();
            if same {
                println!("`{name}` ships with reglab and is already in {}", bundled_dir.display());
                return Ok(ExitCode::SUCCESS);
            }
            Some(bundled_dir.as_path())
        }
        (from, _) => from,
    };
    let origin = match from {
        Some(dir) => store::Origin::Folder(dir),
        None => store::Origin::Url(store::base_url(info)),
    };
    let done = store::install(data_dir, info, &origin, !quiet)?;
    for (file, bytes) in &done {
        println!("{name}: {file} ({bytes} bytes, sha256 verified)");
    }
    println!("{name}: installed in {}", data_dir.join(name).display());
    Ok(ExitCode::SUCCESS)
}
