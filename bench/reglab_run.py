"""What the end-to-end benchmarks share: one reglab spec run, timed by its run.json `wall_s`, and
the alternating rounds with their summary."""

import json
import os
import statistics
import subprocess
import tempfile


def reglab_wall_s(binary, spec_text, name, threads, workdir, extra=()):
    """Writes `spec_text` (a spec named `name`, seed 0, no variants) to `workdir`, runs it with
    `binary` at `threads` torch threads and returns the run's wall time in seconds."""
    spec = os.path.join(workdir, f"{name}.yaml")
    with open(spec, "w") as f:
        f.write(spec_text)
    out = os.path.join(workdir, "res")
    subprocess.run([binary, "-q", "run", spec, "--out", out, "--force", "--threads", str(threads), *extra],
                   check=True, stdout=subprocess.DEVNULL)
    with open(os.path.join(out, name, "runs", "default__s0", "run.json")) as f:
        return json.load(f)["wall_s"]


def alternate(rounds, one_round, unit, digits=0):
    """Runs `one_round(workdir)` -> (work, torch seconds, reglab seconds) `rounds` times, printing
    each round's rates (work per second, in `unit`); returns the reglab rates, the PyTorch rates
    and the per-round ratios."""
    rl, pt, ratios = [], [], []
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(rounds):
            work, t_torch, t_reglab = one_round(tmp)
            rl.append(work / t_reglab)
            pt.append(work / t_torch)
            ratios.append(rl[-1] / pt[-1])
            print(f"round {r + 1}: reglab {rl[-1]:.{digits}f} {unit}, pytorch eager {pt[-1]:.{digits}f} {unit}", flush=True)
    return rl, pt, ratios


def summary(title, rl, pt, ratios, unit, digits=0):
    """The three lines every end-to-end benchmark ends with: median [min, max] of each side and
    of the per-round ratio."""
    print(title)
    print(f"reglab:        {statistics.median(rl):.{digits}f} {unit} [{min(rl):.{digits}f}, {max(rl):.{digits}f}] (median [min, max] of {len(rl)})")
    print(f"pytorch eager: {statistics.median(pt):.{digits}f} {unit} [{min(pt):.{digits}f}, {max(pt):.{digits}f}]")
    print(f"ratio reglab / pytorch: {statistics.median(ratios):.2f} [{min(ratios):.2f}, {max(ratios):.2f}] (median of per-round ratios)")
