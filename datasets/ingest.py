"""Ingest: a CHAOS tree (or the phantom) -> the real_ct and real_mr slice stores, and the patient splits.

    <store_root>/real_ct      one shard per CT patient (split "train" or "val")
    <store_root>/real_mr      one shard per MR patient (split "test" or "trainval"), the chosen `sequence` only
    <store_root>/splits.json  which patient went where, with the seed that chose it

The MR test patients are chosen here, by patient and seeded, and never change afterwards: EssNet and every U-Net
see only the trainval patients, so no test slice can leak into training through a neighbouring slice of the same
patient. The val CT patients are held out of EssNet training to score how well the synthetic MR stays aligned with
the CT masks it carries.

Resumable and idempotent: a patient whose shard is committed is skipped, so a rerun after a crash finishes the
rest, and a rerun with the same settings writes nothing. Settings are pinned by the stores' config hash, so a rerun
with another size, sequence, seed or split count is refused naming the fields, instead of mixing two configs.
"""
from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from datasets import uri as U
from datasets.chaos import MR_SEQUENCES, PatientRef, find_patients, iter_volumes, natural_key, patient_series
from datasets.errors import ChaosError, ConfigError, StoreError
from datasets.preprocess import CT_WINDOW, MR_BODY_FRACTION, MR_PERCENTILES, preprocess_volume
from datasets.store import SCHEMA_VERSION, SliceStore, diff_config, hash_config, slices_to_table

log = logging.getLogger(__name__)

CT_STORE, MR_STORE = "real_ct", "real_mr"
SPLITS_FILE = "splits.json"

Progress = Callable[[str, str, int, int], None]
"""progress(store kind, patient id, patients done in this store, patients in this store)."""


@dataclass(frozen=True)
class IngestResult:
    """Counts of one ingest call (`ct_slices`/`mr_slices` are the stores' totals, written now or before)."""

    store_root: str
    ct_patients: int
    mr_patients: int
    ct_slices: int
    mr_slices: int
    written: tuple[str, ...]     # "real_mr/3": shards written by this call
    skipped: tuple[str, ...]     # shards already committed
    slices_written: int
    seconds: float
    config_hash: str

    @property
    def patients(self) -> int:
        return self.ct_patients + self.mr_patients

    @property
    def slices(self) -> int:
        return self.ct_slices + self.mr_slices

    @property
    def slices_per_s(self) -> float:
        """Slices read, preprocessed and written per second by this call (0 when nothing was written)."""
        return self.slices_written / self.seconds if self.slices_written and self.seconds > 0 else 0.0

    def summary(self) -> str:
        return (f"{self.store_root}: {self.ct_patients} CT patients ({self.ct_slices} slices), {self.mr_patients} "
                f"MR patients ({self.mr_slices} slices); wrote {len(self.written)} shards, skipped "
                f"{len(self.skipped)} already committed; {self.slices_written} slices in {self.seconds:.1f} s "
                f"({self.slices_per_s:.1f} slices/s); config_hash {self.config_hash}")


def _default_n_test_mr(n_mr: int) -> int:
    return max(1, round(0.2 * n_mr)) if n_mr >= 2 else 0


def _default_n_val_ct(n_ct: int) -> int:
    return max(1, round(0.1 * n_ct)) if n_ct >= 3 else 0


def _resolve_count(name: str, value: int | None, default: int, n: int, what: str) -> int:
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise ConfigError(f"{name}: expected an integer, got {type(value).__name__} {value!r}")
    if not 0 <= value <= max(n - 1, 0):
        raise ConfigError(f"{name}: {value} is out of range; the tree has {n} {what} patients and at least one "
                          f"must stay in training (expected 0..{max(n - 1, 0)})")
    return int(value)


def choose_splits(ct_ids: list[str], mr_ids: list[str], n_test_mr: int, n_val_ct: int, seed: int) -> dict:
    """Seeded, by-patient splits: MR test/trainval and CT val/train (independent streams per modality).

    Args:
        ct_ids, mr_ids: patient ids.
        n_test_mr, n_val_ct: how many go to MR test and CT val.
        seed: the seed; the same ids and seed always give the same split.
    Returns:
        {"seed", "mr": {"test", "trainval"}, "ct": {"train", "val"}} with ids in natural order.
    """
    def pick(ids: list[str], k: int, stream: int) -> tuple[list[str], list[str]]:
        ids = sorted(ids, key=natural_key)
        order = np.random.default_rng([seed, stream]).permutation(len(ids))
        chosen = {ids[i] for i in order[:k]}
        return [i for i in ids if i in chosen], [i for i in ids if i not in chosen]

    mr_test, mr_trainval = pick(mr_ids, n_test_mr, 0)
    ct_val, ct_train = pick(ct_ids, n_val_ct, 1)
    return {"seed": seed, "mr": {"test": mr_test, "trainval": mr_trainval}, "ct": {"train": ct_train, "val": ct_val}}


def _require_ground(ref: PatientRef, sequence: str) -> None:
    """Every patient needs liver masks: CT for EssNet's segmentation branch, MR for U-Net training and scoring."""
    (series,) = patient_series(ref, (sequence,))
    if series.ground_dir is None:
        what = "CT" if ref.modality == "CT" else f"MR {sequence}"
        raise ChaosError(f"{ref.path}: {what} patient {ref.patient_id!r} has no Ground folder (liver masks); "
                         f"ingest cannot use it (CHAOS test-set patients have no masks): remove it from the tree")


def _check_splits(store_root: str, splits: dict) -> None:
    path = U.join(store_root, SPLITS_FILE)
    if U.exists(path):
        old = U.read_json(path)
        if old != splits:
            diffs = diff_config(old, splits)
            raise StoreError(f"{path}: the stored patient splits differ from the ones this tree and config give "
                             f"({'; '.join(diffs)}); was the store written from another CHAOS tree? Use a new "
                             f"store root")
    else:
        U.write_json(path, splits)


def ingest(chaos_dir: str | Path, store_root: str, *, size: int = 256, sequence: str = "T2SPIR",
           n_test_mr: int | None = None, n_val_ct: int | None = None, seed: int = 0,
           config_hash: str | None = None, progress: Progress | None = None) -> IngestResult:
    """Read, preprocess and store every CT and MR patient of a CHAOS tree, one shard per patient.

    Args:
        chaos_dir: a CHAOS tree (CT/ and MR/; see `datasets.chaos.find_patients`), e.g. the phantom.
        store_root: local path or URI; gets real_ct/, real_mr/ and splits.json.
        size: square slice size S.
        sequence: the MR sequence to store (T2SPIR, T1DUAL_InPhase or T1DUAL_OutPhase).
        n_test_mr: MR test patients; default 20 % of the MR patients, at least 1 (0 with fewer than 2).
        n_val_ct: CT val patients; default 10 % of the CT patients, at least 1 when there are 3 or more.
        seed: seeds the splits.
        config_hash: the stores' config hash (the driver passes its ingest stage key); default: the hash of the
            ingest settings. The settings themselves are recorded in store.json either way.
        progress: called after each patient (see `Progress`).
    Returns:
        An `IngestResult` with patient and slice counts, seconds and slices/s.
    Raises:
        ChaosError: the tree is not CHAOS, or a patient has no Ground folder (naming it).
        ConfigError: an unknown sequence, or split counts out of range.
        StoreError: the stores or splits.json were written with other settings (naming the fields), or hold
            foreign shards.
    """
    t0 = time.perf_counter()
    if sequence not in MR_SEQUENCES:
        raise ConfigError(f"sequence: {sequence!r}; expected one of {MR_SEQUENCES}")
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or size < 8:
        raise ConfigError(f"size: {size!r}; expected an integer >= 8")
    store_root = str(store_root).rstrip("/")
    patients = find_patients(chaos_dir)
    refs = {"CT": [p for p in patients if p.modality == "CT"], "MR": [p for p in patients if p.modality == "MR"]}
    for modality, group in refs.items():
        if not group:
            log.warning("%s: no %s patients; the %s store stays empty", chaos_dir, modality,
                        CT_STORE if modality == "CT" else MR_STORE)
        for ref in group:
            _require_ground(ref, sequence)
    n_ct, n_mr = len(refs["CT"]), len(refs["MR"])
    n_test = _resolve_count("n_test_mr", n_test_mr, _default_n_test_mr(n_mr), n_mr, "MR")
    n_val = _resolve_count("n_val_ct", n_val_ct, _default_n_val_ct(n_ct), n_ct, "CT")
    config: dict[str, Any] = {
        "size": int(size), "sequence": sequence, "seed": int(seed), "n_test_mr": n_test, "n_val_ct": n_val,
        "ct_window": list(CT_WINDOW), "mr_percentiles": list(MR_PERCENTILES), "mr_body_fraction": MR_BODY_FRACTION,
        "schema_version": SCHEMA_VERSION,
    }
    config_hash = config_hash or hash_config(config)
    stores = {"CT": SliceStore(U.join(store_root, CT_STORE), config_hash, CT_STORE, create=True, config=config),
              "MR": SliceStore(U.join(store_root, MR_STORE), config_hash, MR_STORE, create=True, config=config)}
    splits = choose_splits([r.patient_id for r in refs["CT"]], [r.patient_id for r in refs["MR"]], n_test, n_val,
                           int(seed))
    splits["sequence"] = sequence
    _check_splits(store_root, splits)
    split_of = {(modality.upper(), pid): name  # keyed by modality too: CT and MR ids overlap ("1" in both)
                for modality, groups in (("mr", splits["mr"]), ("ct", splits["ct"]))
                for name, ids in groups.items() for pid in ids}

    written, skipped, slices_written = [], [], 0
    for modality, group in refs.items():
        store = stores[modality]
        store.discard_uncommitted()  # ingest is the stores' only writer: leftovers are from a crashed run
        for done, ref in enumerate(group, 1):
            label = f"{store.kind}/{ref.patient_id}"
            if store.is_committed(ref.patient_id):
                skipped.append(label)
            else:
                rows = _ingest_patient(ref, modality, sequence, int(size), split_of[modality, ref.patient_id], store)
                written.append(label)
                slices_written += rows
                log.info("%s: %d slices", label, rows)
            if progress is not None:
                progress(store.kind, ref.patient_id, done, len(group))
    totals = {m: s.merge_manifests()["rows"] for m, s in stores.items()}
    result = IngestResult(store_root=store_root, ct_patients=n_ct, mr_patients=n_mr, ct_slices=totals["CT"],
                          mr_slices=totals["MR"], written=tuple(written), skipped=tuple(skipped),
                          slices_written=slices_written, seconds=time.perf_counter() - t0, config_hash=config_hash)
    log.info("%s", result.summary())
    return result


def _ingest_patient(ref: PatientRef, modality: str, sequence: str, size: int, split: str,
                    store: SliceStore) -> int:
    """Read one patient folder through the CHAOS reader, preprocess it and commit its shard; returns rows."""
    volumes = list(iter_volumes(ref.path, modalities=(modality,), sequences=(sequence,)))
    if len(volumes) != 1 or volumes[0].patient_id != ref.patient_id:
        raise ChaosError(f"{ref.path}: expected one {modality} volume of patient {ref.patient_id!r}, the reader "
                         f"gave {[(v.patient_id, v.sequence) for v in volumes]}")
    vol = volumes[0]
    if vol.liver is None:
        raise ChaosError(f"{ref.path}: patient {ref.patient_id!r} has no liver masks; ingest cannot use it")
    pv = preprocess_volume(vol, size)
    table = slices_to_table(pv.image, pv.mask, patient_id=pv.patient_id, modality=pv.modality,
                            sequence=pv.sequence, split=split, spacing=pv.spacing, native_shape=pv.native_shape,
                            config_hash=store.config_hash, mask_native=pv.mask_native)
    store.write_shard(ref.patient_id, table)
    return table.num_rows
