"""Is the phantom's MR as hard as it should be? A small U-Net trained on 1 vs 4 phantom MR patients.

The experiment asks whether synthetic MR helps when real MR is scarce; that only means something when one real MR
patient cannot cover the others, yet the liver stays learnable. The targets (T2SPIR, 64x64, U-Net base 16 depth 4,
400 steps of batch 8, with train_unet's augmentation as every trial has it, unless --no-augment):

- trained on 1 patient: mean 3D Dice on the 4 test patients in [0.6, 0.9] (learnable, not trivial);
- trained on 4 patients: at least 0.03 higher (patients differ enough that more of them help).

Means over seeds; each seed trains on different patients (1 patient: pool[seed]; 4 patients: pool[seed..seed+3],
which include the 1-patient one). Patients 0-4 of the phantom are the training pool, 5 validates (model selection
at the end only: eval_every = steps), 6-9 are the test patients. Everything goes through the project's own code:
`write_phantom` -> `datasets.chaos.iter_volumes` -> `preprocess_volume` -> `train_unet`.

Usage:
    python bench/phantom_difficulty.py                      # writes a phantom to a temp dir, 3 seeds
    python bench/phantom_difficulty.py --root /tmp/ph --seeds 0 1 2 3 --threads 2 --no-augment

Prints per-seed Dice (and per test patient), the means, and PASS/MISS for the two goals.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from datasets.chaos import iter_volumes  # noqa: E402
from datasets.phantom import write_phantom  # noqa: E402
from datasets.preprocess import PreprocessedVolume, preprocess_volume  # noqa: E402
from models.train_unet import EvalVolume, UNetTrainConfig, train_unet  # noqa: E402

N_PATIENTS = 10
POOL, VAL, TEST = list(range(5)), [5], [6, 7, 8, 9]
SIZE = 64
ONE_PATIENT_RANGE = (0.6, 0.9)
MIN_GAIN = 0.03


def load(root: Path) -> list[PreprocessedVolume]:
    """T2SPIR of every MR patient, preprocessed at SIZE (ids in natural order)."""
    return [preprocess_volume(v, SIZE) for v in iter_volumes(root, modalities="MR", sequences=("T2SPIR",))]


def as_eval(p: PreprocessedVolume) -> EvalVolume:
    return EvalVolume(p.patient_id, p.image, p.mask_native, p.spacing, p.native_shape)


def run(vols: list[PreprocessedVolume], train_idx: list[int], seed: int, args: argparse.Namespace
        ) -> tuple[float, list[float]]:
    """Train on `train_idx`, return (mean test Dice, per-test-patient Dice)."""
    images = np.concatenate([vols[i].image for i in train_idx])
    masks = np.concatenate([vols[i].mask for i in train_idx])
    cfg = UNetTrainConfig(base=16, depth=4, steps=args.steps, batch_size=8, eval_every=args.steps,
                          augment=args.augment, seed=seed)
    final = None
    for event in train_unet(images, masks, [as_eval(vols[i]) for i in VAL], [as_eval(vols[i]) for i in TEST], cfg,
                            device=args.device, num_threads=args.threads):
        final = event
    per = [float(r["dice"]) for r in final.test_results]
    return float(np.mean(per)), per


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=None, help="phantom to read (written there if missing)")
    parser.add_argument("--phantom-seed", type=int, default=0)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--no-augment", dest="augment", action="store_false",
                        help="turn off train_unet's on-tensor augmentation (on by default, as in every grid trial)")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (1 is often faster under load)")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        root = args.root or Path(tmp) / "phantom"
        if not root.exists():
            t = time.perf_counter()
            write_phantom(root, 0, N_PATIENTS, args.phantom_seed, mr_size=128, sequences=("T2SPIR",))
            print(f"wrote {N_PATIENTS} MR patients to {root} in {time.perf_counter() - t:.0f}s", flush=True)
        vols = load(root)
    if len(vols) < N_PATIENTS:
        raise SystemExit(f"{root}: {len(vols)} MR patients, need {N_PATIENTS}")
    print(f"T2SPIR {SIZE}x{SIZE}, steps {args.steps}, batch 8, augment {args.augment}; train pool "
          f"{[vols[i].patient_id for i in POOL]}, val {[vols[i].patient_id for i in VAL]}, "
          f"test {[vols[i].patient_id for i in TEST]}", flush=True)
    results: dict[int, list[float]] = {1: [], 4: []}
    for seed in args.seeds:
        for k in (1, 4):
            train_idx = [POOL[(seed + j) % len(POOL)] for j in range(k)]
            t = time.perf_counter()
            mean, per = run(vols, train_idx, seed, args)
            results[k].append(mean)
            print(f"seed {seed} n_train {k} (patients {[vols[i].patient_id for i in train_idx]}): dice {mean:.3f} "
                  f"per test patient {[round(d, 3) for d in per]} ({time.perf_counter() - t:.0f}s)", flush=True)
    m1, m4 = float(np.mean(results[1])), float(np.mean(results[4]))
    for k, v in results.items():
        print(f"n_train {k}: mean {np.mean(v):.3f} sd {np.std(v):.3f} per seed {[round(x, 3) for x in v]}")
    lo, hi = ONE_PATIENT_RANGE
    print(f"{'PASS' if lo <= m1 <= hi else 'MISS'}: 1-patient mean {m1:.3f} in [{lo}, {hi}]")
    print(f"{'PASS' if m4 - m1 >= MIN_GAIN else 'MISS'}: 4-patient gain {m4 - m1:+.3f} >= {MIN_GAIN}")


if __name__ == "__main__":
    main()
