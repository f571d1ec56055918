"""Synthetic-MR generation throughput (slices/s): N Ray actors vs one actor vs a plain loop without Ray, and the
share of actor time spent writing Parquet.

Setup, in a temporary folder: a small CHAOS-layout phantom (datasets.phantom.write_phantom: --ct-patients CT patients
of --slices slices at --ct-size), ingested at --size (datasets.ingest.ingest) into `<tmp>/exp/stores`, and an
untrained EssNet generator (ngf 16, 9 ResNet blocks, netS included: the quick preset's networks, so translation costs
what it does there) saved by `models.train_essnet.train_essnet` (1 step) where the grid expects it,
`Experiment(<tmp>/exp).essnet_dir("essnet", 0)/checkpoint.pt`.

Legs, each translating every CT shard (one per patient) into a fresh synthetic store of its own (an experiment
folder per leg whose stores/real_ct and essnet/ link to the shared ones, so nothing is ever skipped):
1. plain: one `grid.generate.Translator` used as a plain object in this process (generator loaded once; per shard:
   read the CT rows, translate, build the table, `SliceStore.write_shard`), one torch thread.
2. ray N (for each N of --actors): N `Translator` Ray actors (1 CPU each, as generate.num_cpus_per_actor = 1),
   started and loaded first (startup timed apart: a pool pays it once per generator), then whole shards handed to
   idle actors as `grid.generate._run_pool` does, calling the actors' `run_shard`.
3. pool: `grid.generate._run_pool` itself with the largest N, end to end (actor startup included).

Printed per leg: wall, slices/s, and the read / translate / write split of actor time. Goals: N-actor slices/s >=
0.9 x N x one-actor slices/s (scaling), and Parquet writing <= 5 % of actor time. Both compete with whatever else runs
on the machine: on a shared machine take the best of --repeats.

Usage:
    python bench/generation.py                        # actors 1 2 .. CPUs, 8 x 40 slices, best of 2: ~1 minute on 2 cores
    python bench/generation.py --actors 1 2 4 8 --ct-patients 16 --repeats 2
"""
from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # bench/ is not a package
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

import argparse  # noqa: E402
import logging  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

from datasets.ingest import ingest  # noqa: E402
from datasets.phantom import write_phantom  # noqa: E402
from datasets.store import SliceStore, tensor_column_to_numpy  # noqa: E402
from grid.config import from_dict  # noqa: E402
from grid.experiment import Experiment  # noqa: E402

SCALING_GOAL = 0.9
WRITE_GOAL = 0.05
GENERATOR, REPLICATE, SEQUENCE = "essnet", 0, "T2SPIR"
STORE_KEY = "bench-generation"


def setup(tmp: Path, ct_patients: int, slices: int, ct_size: int, size: int, ngf: int, n_blocks: int) -> Experiment:
    """Phantom -> real_ct store -> untrained EssNet checkpoint, in <tmp>/exp as the grid lays it out."""
    import torch

    from models.essnet import EssNetConfig
    from models.train_essnet import train_essnet

    t0 = time.perf_counter()
    write_phantom(tmp / "phantom", ct_patients=ct_patients, mr_patients=0, seed=0, ct_size=ct_size,
                  ct_slices=(slices, slices))
    t1 = time.perf_counter()
    exp = Experiment(str(tmp / "exp"))
    ingest(tmp / "phantom", exp.stores, size=size, n_val_ct=0)
    t2 = time.perf_counter()
    ct = SliceStore(exp.store("real_ct")).read(columns=["image", "mask"])
    images = tensor_column_to_numpy(ct, "image").astype(np.float32)
    masks = tensor_column_to_numpy(ct, "mask").astype(np.uint8)
    torch.set_num_threads(1)
    cfg = EssNetConfig(ngf=ngf, ndf=ngf, n_blocks=n_blocks, steps=1, steps_decay=0, batch_size=2)
    # One step on CT standing in for MR: the weights only need the right shapes, this bench times inference.
    train_essnet(images[:8], masks[:8], images[:8], cfg, exp.essnet_dir(GENERATOR, REPLICATE), resume=False,
                 device="cpu", num_threads=1)
    print(f"setup: phantom {t1 - t0:.1f} s, ingest {t2 - t1:.1f} s, generator {time.perf_counter() - t2:.1f} s; "
          f"{len(images)} CT slices in {len(SliceStore(exp.store('real_ct')).committed_shards())} shards, "
          f"{size}x{size}, netG_A + netS at ngf {ngf}, {n_blocks} blocks", flush=True)
    return exp


def leg_experiment(exp: Experiment, tmp: Path, name: str) -> Experiment:
    """A fresh experiment folder for one leg: its own synthetic store, the shared real_ct store and generator."""
    root = tmp / "legs" / name
    (root / "stores").mkdir(parents=True)
    os.symlink(os.path.abspath(exp.store("real_ct")), root / "stores" / "real_ct")
    os.symlink(os.path.abspath(exp.path("essnet")), root / "essnet")
    leg = Experiment(str(root))
    SliceStore(leg.synthetic_store(GENERATOR, REPLICATE), config_hash=STORE_KEY, kind="synthetic_mr", create=True)
    return leg


def summarize(name: str, stats: list[dict], wall: float, startup: float | None = None) -> dict:
    rows = sum(s["rows"] for s in stats)
    read, gen, write = (sum(s[k] for s in stats) for k in ("read_s", "translate_s", "write_s"))
    busy = (read + gen + write) or 1.0
    out = {"name": name, "rows": rows, "wall": wall, "rate": rows / wall, "startup": startup,
           "read": read / busy, "translate": gen / busy, "write": write / busy}
    extra = f", startup {startup:.1f} s not counted" if startup is not None else ""
    print(f"  {name:>9}: {rows} slices in {wall:5.1f} s = {out['rate']:6.1f} slices/s; actor time: read "
          f"{100 * out['read']:4.1f} %, translate {100 * out['translate']:4.1f} %, write {100 * out['write']:4.1f} %"
          f"{extra}", flush=True)
    return out


def run_plain(leg: Experiment, shards: list[str], batch_size: int) -> tuple[list[dict], float]:
    """The actor's code without Ray: one Translator object in this process, every shard in turn."""
    import torch

    from grid.generate import Translator

    torch.set_num_threads(1)
    translator = Translator(leg.root, GENERATOR, REPLICATE, batch_size, SEQUENCE)
    t0 = time.perf_counter()
    stats = [translator.run_shard(s, STORE_KEY) for s in shards]
    return stats, time.perf_counter() - t0


def run_actors(actor_cls, leg: Experiment, shards: list[str], n: int, batch_size: int) -> tuple[list[dict], float, float]:
    """N warm actors, shards handed to idle ones (as _run_pool does); returns (stats, wall, startup)."""
    import ray

    t0 = time.perf_counter()
    actors = [actor_cls.options(num_cpus=1, max_restarts=0).remote(leg.root, GENERATOR, REPLICATE, batch_size,
                                                                   SEQUENCE) for _ in range(n)]
    ray.get([a.__ray_ready__.remote() for a in actors])  # each has imported torch and loaded the generator
    startup = time.perf_counter() - t0
    t0 = time.perf_counter()
    pending, idle, inflight, stats = list(shards), list(range(n)), {}, []
    while pending or inflight:
        while idle and pending:
            i = idle.pop()
            inflight[actors[i].run_shard.remote(pending.pop(0), STORE_KEY)] = i
        ready, _ = ray.wait(list(inflight), num_returns=1)
        idle.append(inflight.pop(ready[0]))
        stats.append(ray.get(ready[0]))
    wall = time.perf_counter() - t0
    for a in actors:
        ray.kill(a, no_restart=True)
    return stats, wall, startup


def run_grid_pool(actor_cls, leg: Experiment, shards: list[str], n: int, batch_size: int) -> tuple[list[dict], float]:
    """grid.generate._run_pool itself, end to end (actor startup included)."""
    from grid.generate import _run_pool

    cfg = from_dict({"generate": {"actors": n, "num_cpus_per_actor": 1, "num_gpus_per_actor": 0,
                                  "batch_size": batch_size}, "ingest": {"sequence": SEQUENCE}})
    t0 = time.perf_counter()
    stats = _run_pool(actor_cls, leg, GENERATOR, REPLICATE, STORE_KEY, shards, cfg, say=lambda _msg: None)
    return stats, time.perf_counter() - t0


def main() -> None:
    cpus = os.cpu_count() or 1
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--actors", type=int, nargs="+", default=[1, 2] + [n for n in (4, 8, 16) if n <= cpus],
                        help="actor counts to run (default 1 2, then 4 8 16 up to the CPUs there are)")
    parser.add_argument("--ct-patients", type=int, default=8, help="CT patients = shards (default 8)")
    parser.add_argument("--slices", type=int, default=40, help="slices per CT patient (default 40)")
    parser.add_argument("--ct-size", type=int, default=128, help="phantom CT matrix (default 128)")
    parser.add_argument("--size", type=int, default=64, help="store slice size (default 64, the quick preset's)")
    parser.add_argument("--ngf", type=int, default=16)
    parser.add_argument("--n-blocks", type=int, default=9)
    parser.add_argument("--batch-size", type=int, default=64, help="translation batch (the quick preset's 64)")
    parser.add_argument("--repeats", type=int, default=2, help="run every leg this many times; best of each (default 2)")
    parser.add_argument("--no-pool", action="store_true", help="skip the end-to-end grid.generate._run_pool leg")
    args = parser.parse_args()
    if min(args.actors) < 1 or args.repeats < 1 or args.ct_patients < 1 or args.slices < 4:
        parser.error("--actors, --repeats and --ct-patients must be >= 1, --slices >= 4")
    logging.basicConfig(level=logging.WARNING)
    logging.getLogger("datasets.ingest").setLevel(logging.ERROR)  # "no MR patients": this phantom has none on purpose

    import ray
    import torch

    from grid.generate import Translator

    actor_counts = sorted(set(args.actors))
    print(f"generation: actors {actor_counts}, {cpus} CPUs on this machine; ray {ray.__version__}, "
          f"torch {torch.__version__}", flush=True)
    best: dict[str, dict] = {}

    def keep(res: dict) -> None:
        if res["name"] not in best or res["rate"] > best[res["name"]]["rate"]:
            best[res["name"]] = res

    with tempfile.TemporaryDirectory(prefix="essgrid-bench-gen-") as d:
        tmp = Path(d)
        exp = setup(tmp, args.ct_patients, args.slices, args.ct_size, args.size, args.ngf, args.n_blocks)
        shards = SliceStore(exp.store("real_ct")).committed_shards()
        t0 = time.perf_counter()
        ray.init(address="local", num_cpus=max(max(actor_counts), 1), include_dashboard=False, log_to_driver=False,
                 logging_level="ERROR")
        print(f"ray.init: {time.perf_counter() - t0:.1f} s", flush=True)
        actor_cls = ray.remote(Translator)
        try:
            for r in range(args.repeats):
                print(f"repeat {r + 1}/{args.repeats}", flush=True)
                stats, wall = run_plain(leg_experiment(exp, tmp, f"plain-{r}"), shards, args.batch_size)
                keep(summarize("plain", stats, wall))
                for n in actor_counts:
                    stats, wall, startup = run_actors(actor_cls, leg_experiment(exp, tmp, f"ray{n}-{r}"), shards, n,
                                                      args.batch_size)
                    keep(summarize(f"ray {n}", stats, wall, startup))
                if not args.no_pool:
                    n = max(actor_counts)
                    stats, wall = run_grid_pool(actor_cls, leg_experiment(exp, tmp, f"pool{n}-{r}"), shards, n,
                                                args.batch_size)
                    keep(summarize(f"pool {n}", stats, wall))
        finally:
            ray.shutdown()

    rows = best["plain"]["rows"]
    print()
    print(f"{len(shards)} shards, {rows} slices per leg" + (f"; best of {args.repeats}" if args.repeats > 1 else ""))
    print(f"{'leg':>9} {'slices/s':>9} {'vs plain':>9} {'vs N x 1 actor':>15} {'write %':>8}")
    one = best.get("ray 1", {}).get("rate")
    worst_write = 0.0
    verdicts = []
    for name, res in best.items():
        scaling = ""
        if one and name.startswith(("ray", "pool")):
            n = int(name.split()[1])
            scaling = f"{res['rate'] / (n * one):.2f}"
            if name.startswith("ray") and n > 1:
                verdicts.append((n, res["rate"] / (n * one)))
        worst_write = max(worst_write, res["write"])
        print(f"{name:>9} {res['rate']:9.1f} {res['rate'] / best['plain']['rate']:9.2f} {scaling:>15} "
              f"{100 * res['write']:8.1f}")
    for n, s in verdicts:
        print(f"scaling {n} actors / ({n} x 1 actor): {s:.2f}  goal >= {SCALING_GOAL}: "
              f"{'PASS' if s >= SCALING_GOAL else 'MISS'}")
    print(f"write share (worst leg): {100 * worst_write:.1f} %  goal <= {100 * WRITE_GOAL:.0f} %: "
          f"{'PASS' if worst_write <= WRITE_GOAL else 'MISS'}")
    if one:
        print(f"one actor vs plain loop: {one / best['plain']['rate']:.2f}")


if __name__ == "__main__":
    main()
