"""Run every benchmark script in bench/ in turn, teeing each one's output to bench/out/<name>.txt, then summarise.

Benchmarks are not tests: each prints ratios against a baseline it measures in the same run, and the summary
repeats their verdict lines (PASS/MISS, goal met/not met). Scripts run one at a time, as
`<this python> bench/<name>.py <flags>` from the repository root, with CPU-friendly flags below; a script added to
bench/ later runs with no flags. bench/out/ is gitignored.

Usage:
    python bench/run_all.py                  # everything, ~6-8 minutes on an idle 2-core CPU machine
    python bench/run_all.py --smoke          # tiny sizes: checks every script runs (~2-3 minutes)
    python bench/run_all.py --only grid_overhead generation
    python bench/run_all.py --gpu            # GPU-sized flags where a script has them (CUDA machines)
"""
from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
OUT = BENCH / "out"
ORDER = ["models_step", "unet_throughput", "store_read", "grid_overhead", "generation"]

# CPU-friendly defaults. One torch thread, as the grid runs a trial (cpus_per_trial 1) and the quick preset EssNet:
# on a machine shared with other work, two OpenMP threads that keep being descheduled can run 10x slower than one.
FLAGS: dict[str, list[str]] = {
    "models_step": ["--sizes", "64", "128", "--steps", "3", "--warmup", "1", "--threads", "1"],
    "unet_throughput": ["--device", "cpu", "--bases", "16", "--sizes", "64", "128", "--threads", "1"],
    "store_read": [],
    "grid_overhead": [],
    "generation": [],
}
SMOKE: dict[str, list[str]] = {
    "models_step": ["--sizes", "64", "--steps", "1", "--warmup", "0", "--threads", "1"],
    "unet_throughput": ["--device", "cpu", "--bases", "16", "--sizes", "64", "--steps", "1", "--warmup", "0",
                        "--threads", "1"],
    "store_read": ["--ct-patients", "2", "--mr-patients", "2", "--slices", "20", "--size", "128", "--repeats", "1",
                   "--read-repeats", "3"],
    "grid_overhead": ["--k", "2", "--steps", "10", "--eval-every", "5"],
    "generation": ["--ct-patients", "2", "--slices", "8", "--actors", "1", "2", "--no-pool"],
}
GPU: dict[str, list[str]] = {
    "models_step": ["--device", "cuda", "--sizes", "128", "256", "--steps", "10", "--warmup", "3"],
    "unet_throughput": ["--device", "cuda", "--sizes", "128", "256", "--steps", "30", "--warmup", "10"],
}
VERDICT = re.compile(r"PASS|MISS|goal|not met|\bmet\b", re.IGNORECASE)


def scripts() -> list[str]:
    """Every bench/*.py but this one: the known ones in ORDER, then any others alphabetically."""
    found = sorted(p.stem for p in BENCH.glob("*.py") if p.stem not in ("run_all", "__init__"))
    return [n for n in ORDER if n in found] + [n for n in found if n not in ORDER]


def run_one(name: str, flags: list[str], timeout: float | None) -> tuple[int, float, list[str]]:
    """Run bench/<name>.py, echoing and saving its output; returns (exit code, seconds, output lines)."""
    cmd = [sys.executable, str(BENCH / f"{name}.py"), *flags]
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), *filter(None, [env.get("PYTHONPATH")])])
    env.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    OUT.mkdir(exist_ok=True)
    lines: list[str] = []
    t0 = time.perf_counter()
    with open(OUT / f"{name}.txt", "w") as log:
        log.write(f"$ {' '.join(['python', f'bench/{name}.py', *flags])}\n")
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                bufsize=1)
        assert proc.stdout is not None
        try:
            for line in proc.stdout:
                sys.stdout.write(line)
                sys.stdout.flush()
                log.write(line)
                lines.append(line.rstrip("\n"))
                if timeout and time.perf_counter() - t0 > timeout:
                    proc.kill()
                    lines.append(f"[run_all] killed after {timeout:.0f} s")
                    break
        finally:
            rc = proc.wait()
        log.write(f"[run_all] exit {rc} after {time.perf_counter() - t0:.1f} s\n")
    return rc, time.perf_counter() - t0, lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="+", metavar="NAME", help="run only these scripts (names without .py)")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes: check that every script runs")
    parser.add_argument("--gpu", action="store_true", help="GPU-sized flags for the model benches")
    parser.add_argument("--timeout", type=float, default=None, help="kill a script after this many seconds")
    args = parser.parse_args()
    names = scripts()
    if args.only:
        unknown = [n for n in args.only if n not in names]
        if unknown:
            parser.error(f"unknown bench script(s) {unknown}; bench/ has {names}")
        names = [n for n in names if n in args.only]

    results = []
    for name in names:
        flags = SMOKE.get(name, []) if args.smoke else (GPU.get(name) if args.gpu and name in GPU
                                                        else FLAGS.get(name, []))
        print(f"\n===== bench/{name}.py {' '.join(flags)}", flush=True)
        rc, secs, lines = run_one(name, flags, args.timeout)
        verdicts = [ln.strip() for ln in lines if VERDICT.search(ln) and not ln.lstrip().startswith(("Usage", "python"))]
        tail = [ln.strip() for ln in lines if ln.strip() and not ln.lstrip().startswith("(")][-2:]
        results.append((name, rc, secs, verdicts or tail))

    print("\n===== summary (full output in bench/out/<name>.txt)")
    for name, rc, secs, verdicts in results:
        status = "ok" if rc == 0 else f"FAILED (exit {rc})"
        print(f"{name:>16}: {status}, {secs:.0f} s")
        for v in verdicts[-4:]:
            print(f"{'':>18}{v}")
    sys.exit(0 if all(rc == 0 for _, rc, _, _ in results) else 1)


if __name__ == "__main__":
    main()
