"""Ray Tune overhead of the grid: K U-Net trials through Tune vs the same K trainings back to back in one process.

Each trial is what grid/trainable.py does, on in-memory data: a U-Net (base 16, depth 4, 64x64) trained with
`models.train_unet.train_unet` for --steps steps, evaluated every --eval-every steps on a validation volume, a
checkpoint written (models.checkpoint.save_checkpoint into a temporary folder) at each evaluation but the last,
and the test volume scored at the end. The data are synthetic blobs made in memory from the trial's seed, so both
legs train exactly the same work with one torch thread per trial:

1. plain: the K trainings back to back in this process (torch.set_num_threads(1)); their summed wall time.
2. pool (control, no Ray): the K trainings in a pool of `slots` fresh processes (multiprocessing, spawn); wall time.
   It shows what this machine gives parallel trials at all: on a machine loaded by other work, two trials side by
   side can each run far slower than one alone, and that is not Tune's doing.
3. tune: `tune.Tuner(tune.with_resources(trial, {"cpu": 1}))` over the K seeds on `ray.init(num_cpus=--cpus)`,
   `tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(tmp))` at each evaluation (the final one without
   a checkpoint, as the real trainable), storage in a temporary folder; wall time of `Tuner.fit()`.

The ideal grid wall time is plain sum / slots, slots = min(K, CPUs / CPUs per trial); the ratio grid wall / ideal
is the goal (<= 1.1) and holds Tune's overhead (trial actors starting, reporting, checkpoints persisted to storage)
plus whatever parallel trials lose to each other (memory bandwidth, a machine shared with other work). The ratio
grid wall / pool wall isolates Tune's own part. `ray.init` is timed apart: the driver pays it once per experiment.

Usage:
    python bench/grid_overhead.py                    # K=4, 80 steps, all CPUs: ~2 minutes on an idle 2-core CPU
    python bench/grid_overhead.py --k 8 --steps 200 --cpus 4 --repeats 2
    python bench/grid_overhead.py --reuse-actors     # also Tune with TuneConfig(reuse_actors=True)
"""
from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # bench/ is not a package
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")  # with verbose=0: no progress tables between the figures

import argparse  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from typing import Any, Callable  # noqa: E402

import numpy as np  # noqa: E402

GOAL = 1.1
SIZE = 64
N_TRAIN = 64
N_EVAL_SLICES = 8


def blobs(rng: np.random.Generator, n: int, size: int) -> tuple[np.ndarray, np.ndarray]:
    """n slices [n, size, size]: a bright ellipse (the "liver", mask 1) and a dimmer one on a noisy background."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    images = np.empty((n, size, size), np.float32)
    masks = np.empty((n, size, size), np.uint8)
    for i in range(n):
        cy, cx, ry, rx = rng.uniform(0.3, 0.7), rng.uniform(0.25, 0.5), rng.uniform(0.1, 0.25), rng.uniform(0.1, 0.2)
        liver = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 < 1.0
        oy, ox = rng.uniform(0.3, 0.7), rng.uniform(0.65, 0.8)
        other = ((yy - oy) / 0.08) ** 2 + ((xx - ox) / 0.08) ** 2 < 1.0
        img = -0.8 + 0.9 * liver + 0.5 * other + rng.normal(0.0, 0.08, (size, size))
        images[i] = np.clip(img, -1.0, 1.0)
        masks[i] = liver
    return images, masks


def train_trial(config: dict[str, Any], report: Callable[[dict, str | None], None]) -> dict[str, float]:
    """One grid-like trial; `report(metrics, checkpoint_dir or None)` is called at each evaluation."""
    import torch

    from models.checkpoint import save_checkpoint
    from models.train_unet import EvalVolume, UNetTrainConfig, train_unet

    t0, c0 = time.perf_counter(), time.process_time()
    torch.set_num_threads(1)
    rng = np.random.default_rng(1000 + int(config["seed"]))
    images, masks = blobs(rng, N_TRAIN, SIZE)
    vols = []
    for name in ("val", "test"):
        v_img, v_mask = blobs(rng, N_EVAL_SLICES, SIZE)
        vols.append(EvalVolume(patient_id=name, images=v_img, mask_native=v_mask.astype(bool),
                               spacing=(1.5, 1.5, 6.0), native_shape=(SIZE, SIZE)))
    cfg = UNetTrainConfig(base=16, depth=4, steps=int(config["steps"]), batch_size=8,
                          eval_every=int(config["eval_every"]), seed=int(config["seed"]))
    last: dict[str, float] = {}
    for ev in train_unet(images, masks, [vols[0]], [vols[1]], cfg, num_threads=1):
        metrics = {"step": ev.step, **{k: float(v) for k, v in ev.metrics.items()}, "done": bool(ev.done)}
        if ev.done:
            metrics["test_dice"] = float(np.mean([r["dice"] for r in ev.test_results]))
            metrics["trial_wall_s"] = time.perf_counter() - t0
            metrics["trial_cpu_s"] = time.process_time() - c0  # well below trial_wall_s: the trial waited for a CPU
            metrics["torch_threads"] = torch.get_num_threads()
            report(metrics, None)
            last = metrics
            break
        with tempfile.TemporaryDirectory() as d:
            save_checkpoint(os.path.join(d, "state.pt"), ev.checkpoint)
            report(metrics, d)
    return last


def tune_trial(config: dict[str, Any]) -> None:
    """The Tune function trainable wrapping `train_trial`."""
    from ray import tune

    def report(metrics: dict, ckpt_dir: str | None) -> None:
        if ckpt_dir is None:
            tune.report(metrics)
        else:
            tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(ckpt_dir))

    train_trial(config, report)


def run_plain(k: int, steps: int, eval_every: int) -> tuple[float, list[tuple[float, float]]]:
    """The K trials back to back in this process; returns (summed wall, per-trial (wall, CPU) seconds)."""
    walls, inner = [], []
    for seed in range(k):
        t0 = time.perf_counter()
        out = train_trial({"seed": seed, "steps": steps, "eval_every": eval_every}, lambda m, d: None)
        walls.append(time.perf_counter() - t0)
        inner.append((walls[-1], out["trial_cpu_s"]))
        print(f"  plain trial {seed}: {walls[-1]:6.1f} s wall, {out['trial_cpu_s']:5.1f} s CPU "
              f"(test dice {out['test_dice']:.3f})", flush=True)
    return sum(walls), inner


def cpu_share(inner: list[tuple[float, float]]) -> str:
    """CPU seconds / wall seconds of a leg's trials: 100 % = each trial had its core to itself."""
    return f"{100 * sum(c for _, c in inner) / max(1e-9, sum(w for w, _ in inner)):.0f} %"


def _pool_trial(config: dict[str, Any]) -> tuple[float, float]:
    t0 = time.perf_counter()
    out = train_trial(config, lambda m, d: None)
    return time.perf_counter() - t0, out["trial_cpu_s"]


def run_pool(k: int, steps: int, eval_every: int, slots: int) -> tuple[float, list[tuple[float, float]]]:
    """The K trials in a pool of `slots` fresh processes without Ray: what the machine gives parallel trials."""
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor

    configs = [{"seed": seed, "steps": steps, "eval_every": eval_every} for seed in range(k)]
    t0 = time.perf_counter()
    with ProcessPoolExecutor(max_workers=slots, mp_context=mp.get_context("spawn")) as pool:
        inner = list(pool.map(_pool_trial, configs))
    return time.perf_counter() - t0, inner


def run_tune(k: int, steps: int, eval_every: int, storage: str, name: str,
             reuse_actors: bool = False) -> tuple[float, list[tuple[float, float]]]:
    """The K trials through Ray Tune (one CPU each); returns (Tuner.fit wall, trial walls seen inside)."""
    from ray import tune

    tuner = tune.Tuner(
        tune.with_resources(tune_trial, {"cpu": 1}),
        param_space={"seed": tune.grid_search(list(range(k))), "steps": steps, "eval_every": eval_every},
        tune_config=tune.TuneConfig(reuse_actors=reuse_actors),
        run_config=tune.RunConfig(name=name, storage_path=storage, verbose=0,
                                  checkpoint_config=tune.CheckpointConfig(num_to_keep=2)),
    )
    t0 = time.perf_counter()
    grid = tuner.fit()
    wall = time.perf_counter() - t0
    errors = [r.error for r in grid if r.error]
    if errors:
        raise RuntimeError(f"{len(errors)} Tune trial(s) failed; first: {errors[0]}")
    inner = [(float(r.metrics["trial_wall_s"]), float(r.metrics["trial_cpu_s"])) for r in grid]
    print(f"  torch threads inside Tune trials: {sorted({int(r.metrics['torch_threads']) for r in grid})}", flush=True)
    return wall, inner


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--k", type=int, default=4, help="trials (default 4)")
    parser.add_argument("--steps", type=int, default=80, help="optimizer steps per trial (default 80)")
    parser.add_argument("--eval-every", type=int, default=20, help="evaluation + checkpoint period (default 20)")
    parser.add_argument("--cpus", type=int, default=os.cpu_count() or 1, help="CPUs given to Ray (default: all)")
    parser.add_argument("--repeats", type=int, default=1, help="run every leg this many times; best of each")
    parser.add_argument("--no-pool", action="store_true", help="skip the process-pool control leg")
    parser.add_argument("--reuse-actors", action="store_true",
                        help="also run Tune with TuneConfig(reuse_actors=True) (one worker process per slot, not per "
                             "trial; the grid leaves it at Tune's default, False)")
    args = parser.parse_args()
    if min(args.k, args.steps, args.eval_every, args.cpus, args.repeats) < 1:
        parser.error("--k, --steps, --eval-every, --cpus and --repeats must be >= 1")

    import ray
    import torch

    slots = min(args.k, args.cpus)  # one CPU per trial
    print(f"grid overhead: K={args.k} trials, U-Net base 16 depth 4 {SIZE}x{SIZE}, {args.steps} steps batch 8, "
          f"eval + checkpoint every {args.eval_every}; ray {ray.__version__}, torch {torch.__version__}, "
          f"{os.cpu_count()} CPUs on this machine, {args.cpus} given to Ray", flush=True)
    best_plain, best_pool, best_tune = float("inf"), float("inf"), float("inf")
    inner_plain: list = []
    inner_pool: list = []
    inner_best: list = []
    t_init, best_reuse = float("inf"), float("inf")
    with tempfile.TemporaryDirectory(prefix="essgrid-bench-grid-") as tmp:
        for r in range(args.repeats):
            # The legs without Ray run while no Ray process is up, so they pay nothing for it.
            print(f"repeat {r + 1}/{args.repeats}: plain leg", flush=True)
            torch.set_num_threads(1)
            plain, inner = run_plain(args.k, args.steps, args.eval_every)
            if plain < best_plain:
                best_plain, inner_plain = plain, inner
            if not args.no_pool:
                print(f"repeat {r + 1}/{args.repeats}: process pool leg ({slots} processes, no Ray)", flush=True)
                pool_wall, pool_inner = run_pool(args.k, args.steps, args.eval_every, slots)
                print(f"  pool wall {pool_wall:.1f} s (trials, wall/CPU s: "
                      f"{', '.join(f'{w:.1f}/{c:.1f}' for w, c in pool_inner)})", flush=True)
                if pool_wall < best_pool:
                    best_pool, inner_pool = pool_wall, pool_inner
            print(f"repeat {r + 1}/{args.repeats}: Tune leg", flush=True)
            t0 = time.perf_counter()
            ray.init(address="local", num_cpus=args.cpus, include_dashboard=False, log_to_driver=False,
                     logging_level="ERROR")
            t_init = min(t_init, time.perf_counter() - t0)
            try:
                wall, inner = run_tune(args.k, args.steps, args.eval_every, tmp, f"bench-{r}")
                if args.reuse_actors:
                    reuse_wall, _ = run_tune(args.k, args.steps, args.eval_every, tmp, f"bench-reuse-{r}",
                                             reuse_actors=True)
                    print(f"  Tune wall with reuse_actors=True: {reuse_wall:.1f} s", flush=True)
                    best_reuse = min(best_reuse, reuse_wall)
            finally:
                ray.shutdown()
            print(f"  Tune wall {wall:.1f} s (trials inside Tune, wall/CPU s: "
                  f"{', '.join(f'{w:.1f}/{c:.1f}' for w, c in inner)})", flush=True)
            if wall < best_tune:
                best_tune, inner_best = wall, inner
    ideal = best_plain / slots
    ratio = best_tune / ideal
    print()
    print(f"ray.init (once per experiment, not counted): {t_init:6.1f} s")
    print(f"plain sum of {args.k} trials:                {best_plain:6.1f} s  ({best_plain / args.k:.1f} s per trial)")
    print(f"parallel slots (CPUs / 1 CPU per trial):    {slots:6d}")
    print(f"ideal grid wall (plain sum / slots):        {ideal:6.1f} s")
    print(f"Tune wall (Tuner.fit):                      {best_tune:6.1f} s  "
          f"(mean trial inside Tune {np.mean([w for w, _ in inner_best]):.1f} s vs {best_plain / args.k:.1f} s plain)")
    if best_pool < float("inf"):
        print(f"process pool wall (no Ray, control):        {best_pool:6.1f} s  "
              f"(pool / ideal {best_pool / ideal:.2f}: what parallel trials lose on this machine without Ray)")
        print(f"Tune's own overhead, grid wall / pool wall: {best_tune / best_pool:6.2f}")
    if best_reuse < float("inf"):
        print(f"Tune wall with reuse_actors=True:           {best_reuse:6.1f} s  (ratio to ideal {best_reuse / ideal:.2f})")
    print(f"CPU share of trial wall time (100 % = a core each): plain {cpu_share(inner_plain)}"
          + (f", pool {cpu_share(inner_pool)}" if inner_pool else "") + f", Tune {cpu_share(inner_best)}")
    print(f"ratio grid wall / ideal:                    {ratio:6.2f}  goal <= {GOAL}: "
          f"{'PASS' if ratio <= GOAL else 'MISS'}" + (f"  (best of {args.repeats})" if args.repeats > 1 else ""))


if __name__ == "__main__":
    main()
