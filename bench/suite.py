"""`make bench-suite`: the whole CPU suite's wall time — every experiments/*.yaml run as `make -j2
sweep` runs it (two specs at a time, each `reglab -q run SPEC --threads 1`, one job) — per spec
and in total, with the CPU utilisation over the sweep (user + system time of the children ÷ wall
time ÷ cores). Prints a table and appends it to bench/suite.md. Not a test; long (the sum of
every spec)."""

import argparse
import concurrent.futures as cf
import glob
import os
import platform
import resource
import subprocess
import tempfile
import time


def run_spec(binary, spec, out):
    start = time.perf_counter()
    r = subprocess.run([binary, "-q", "run", spec, "--out", out, "--threads", "1", "--force"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    return spec, time.perf_counter() - start, r.returncode, r.stderr.strip().splitlines()[-1:] if r.returncode else []


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--reglab", default="target/release/reglab")
    ap.add_argument("--parallel", type=int, default=2)
    ap.add_argument("--results", default="bench/suite.md")
    ap.add_argument("specs", nargs="*")
    args = ap.parse_args()
    specs = args.specs or sorted(glob.glob("experiments/*.yaml"))
    # In file order, `parallel` at a time (make -j2 sweep's order).
    rows = []
    with tempfile.TemporaryDirectory() as out:
        t0 = time.perf_counter()
        with cf.ThreadPoolExecutor(args.parallel) as pool:
            for spec, wall, rc, err in pool.map(lambda s: run_spec(args.reglab, s, out), specs):
                rows.append((spec, wall, rc, err))
                print(f"{wall:8.1f} s  {'ok' if rc == 0 else 'FAILED ' + ' '.join(err)}  {spec}", flush=True)
        total = time.perf_counter() - t0
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    util = (ru.ru_utime + ru.ru_stime) / total / (os.cpu_count() or 1)
    lines = [f"machine: {platform.machine()} {os.cpu_count()} cores; {len(specs)} specs, {args.parallel} at a time, --threads 1", "",
             "| spec | wall (s) |", "|---|---|"]
    lines += [f"| {os.path.basename(s)} | {w:.1f}{'' if rc == 0 else ' (failed)'} |" for s, w, rc, _ in sorted(rows, key=lambda r: -r[1])]
    lines += ["", f"total wall time {total:.0f} s (sum of spec times {sum(r[1] for r in rows):.0f} s); CPU utilisation {util:.0%} of {os.cpu_count()} cores"]
    table = "\n".join(lines)
    print(table)
    with open(args.results, "a") as f:
        rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip() or "?"
        which = "every spec" if not args.specs else f"{len(specs)} specs named on the command line"
        f.write(f"\n## {time.strftime('%Y-%m-%d', time.gmtime())}, commit {rev}, {which}\n\n" + table + "\n")


if __name__ == "__main__":
    main()
