"""What the end-to-end benchmarks share: one reglab spec run, timed by its run.json `wall_s`."""

import json
import os
import subprocess


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
