"""Slices/s: reading the Parquet slice store into numpy (and torch) vs decoding the same slices from DICOM + PNG.

One run on a phantom written to a temporary folder:
1. baseline: every CT and MR slice decoded through `datasets.chaos.iter_volumes` (pydicom + Pillow, the reader's
   checks included): what every consumer would pay without the store;
2. ingest: read + preprocess + write the stores (`datasets.ingest.ingest`), slices/s;
3. store: `SliceStore.read(columns=["image", "mask"])` of both stores into numpy via `tensor_column_to_numpy`
   (and `torch.from_numpy` when torch imports), and the same with every column; for comparison, the same rows
   with image/mask written as Parquet fixed_shape_tensor columns (the layout the store avoids; see datasets/store.py).
Timings are best of N (--repeats, --read-repeats; files are in the page cache for both sides), which damps the
noise of a shared machine. CT and MR are written at the store size
(256 by default), so both sides move the same number of pixels per slice. Goal: store >= 10x the baseline.

Usage:
    python bench/store_read.py                       # ~40 s on 2 cores
    python bench/store_read.py --ct-patients 2 --mr-patients 2 --slices 20   # a smoke run
"""
from __future__ import annotations

import argparse
import shutil
import tempfile
import time
import warnings
from pathlib import Path

import pyarrow.parquet as pq

from datasets.chaos import iter_volumes
from datasets.ingest import ingest
from datasets.phantom import write_phantom
from datasets.store import SliceStore, tensor_column_to_numpy

try:
    import torch
except ImportError:  # the store itself needs no torch
    torch = None


def best_of(repeats: int, fn) -> tuple[float, object]:
    best, out = float("inf"), None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    return best, out


def decode_chaos(tree: Path) -> int:
    n = 0
    for vol in iter_volumes(tree, modalities=("CT", "MR"), sequences=("T2SPIR",)):
        n += vol.image.shape[0]
    return n


def read_store(stores: list[SliceStore], columns: list[str] | None, to_torch: bool) -> int:
    n = 0
    for store in stores:
        table = store.read(columns=columns)
        image = tensor_column_to_numpy(table, "image")
        mask = tensor_column_to_numpy(table, "mask")
        if to_torch:
            with warnings.catch_warnings():  # zero-copy views are read-only; torch warns, we only read
                warnings.simplefilter("ignore", UserWarning)
                image_t, mask_t = torch.from_numpy(image), torch.from_numpy(mask)
            assert image_t.shape == image.shape and mask_t.shape == mask.shape
        n += image.shape[0]
    return n


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ct-patients", type=int, default=4)
    parser.add_argument("--mr-patients", type=int, default=4)
    parser.add_argument("--size", type=int, default=256, help="phantom matrix size and store slice size")
    parser.add_argument("--slices", type=int, default=40, help="slices per series")
    parser.add_argument("--unique", type=int, default=1, help="patients per modality rendered; the rest are copies")
    parser.add_argument("--repeats", type=int, default=3, help="best of N for the DICOM decode")
    parser.add_argument("--read-repeats", type=int, default=15, help="best of N for the (fast) store reads")
    parser.add_argument("--workdir", default=None, help="where to write the phantom and stores (default: a temp dir)")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
        tmp = Path(tmp)
        t0 = time.perf_counter()
        unique = max(1, min(args.unique, args.ct_patients, args.mr_patients))
        tree = write_phantom(tmp / "chaos", unique, unique, seed=0, ct_size=args.size, mr_size=args.size,
                             ct_slices=(args.slices, args.slices), mr_slices=(args.slices, args.slices),
                             sequences=("T2SPIR",))
        for modality, want in (("CT", args.ct_patients), ("MR", args.mr_patients)):
            written = sorted((tree / modality).iterdir())
            for k in range(want - len(written)):  # copies under new ids: the phantom renders ~5 slices/s here
                shutil.copytree(written[k % len(written)], tree / modality / f"{900 + k}")
        print(f"phantom: {args.ct_patients} CT + {args.mr_patients} MR patients ({unique} + {unique} rendered, the "
              f"rest copies) x {args.slices} slices at {args.size}x{args.size}, {time.perf_counter() - t0:.1f} s")

        t_dicom, n_dicom = best_of(args.repeats, lambda: decode_chaos(tree))
        res = ingest(tree, str(tmp / "stores"), size=args.size)
        stores = [SliceStore(str(tmp / "stores" / k)) for k in ("real_ct", "real_mr")]
        t_np, n_np = best_of(args.read_repeats, lambda: read_store(stores, ["image", "mask"], False))
        t_all, n_all = best_of(args.read_repeats, lambda: read_store(stores, None, False))
        assert n_np == n_all == n_dicom == res.slices, (n_np, n_all, n_dicom, res.slices)
        base = n_dicom / t_dicom
        rows = [("DICOM + PNG decode (datasets.chaos)", n_dicom / t_dicom),
                ("ingest (decode + preprocess + write)", res.slices_per_s),
                ("store -> numpy, image+mask", n_np / t_np),
                ("store -> numpy, all columns", n_all / t_all)]
        # the same rows with image/mask stored as Parquet fixed_shape_tensor (nested lists): why the store does not
        tensor_files = []
        for store in stores:
            path = tmp / f"{store.kind}-as-tensor.parquet"
            pq.write_table(store.read(), path, compression="lz4")
            tensor_files.append(path)
        t_ten, n_ten = best_of(args.read_repeats, lambda: sum(
            tensor_column_to_numpy(t, "image").shape[0] + 0 * tensor_column_to_numpy(t, "mask").size
            for t in (pq.read_table(f, columns=["image", "mask"]) for f in tensor_files)))
        rows.append(("(tensor columns on disk) -> numpy", n_ten / t_ten))
        if torch is not None:
            t_t, n_t = best_of(args.read_repeats, lambda: read_store(stores, ["image", "mask"], True))
            rows.append(("store -> torch.from_numpy, image+mask", n_t / t_t))
        size_mb = sum(p.stat().st_size for p in (tmp / "stores").rglob("*.parquet")) / 1e6
        print(f"{n_dicom} slices; stores {size_mb:.1f} MB on disk")
        print(f"{'path':42s} {'slices/s':>10s} {'x baseline':>11s}")
        for name, rate in rows:
            print(f"{name:42s} {rate:10.0f} {rate / base:10.1f}x")
        ratio = (n_np / t_np) / base
        print(f"store read vs DICOM+PNG decode: {ratio:.1f}x (goal >= 10x): {'met' if ratio >= 10 else 'NOT met'}")


if __name__ == "__main__":
    main()
