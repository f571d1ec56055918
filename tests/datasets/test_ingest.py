"""datasets/ingest.py on a tiny phantom tree through the real CHAOS reader: counts, splits, reruns, crashes."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

import datasets.ingest as ingest_mod
from datasets.chaos import iter_volumes
from datasets.errors import ChaosError, ConfigError, StoreError
from datasets.ingest import choose_splits, ingest
from datasets.phantom import write_phantom
from datasets.store import SliceStore, tensor_column_to_numpy, unpack_native_mask

SIZE = 32


@pytest.fixture(scope="module")
def tree(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("phantom") / "chaos"
    return write_phantom(out, ct_patients=3, mr_patients=5, seed=3, ct_size=48, mr_size=32, ct_slices=(4, 6),
                         mr_slices=(4, 6), sequences=("T2SPIR",))


def _dicoms(tree: Path) -> dict[str, dict[str, int]]:
    return {"CT": {p.name: len(list((p / "DICOM_anon").glob("*.dcm"))) for p in (tree / "CT").iterdir()},
            "MR": {p.name: len(list((p / "T2SPIR" / "DICOM_anon").glob("*.dcm"))) for p in (tree / "MR").iterdir()}}


def _rows_per_patient(store_uri: str) -> dict[str, int]:
    ids = SliceStore(store_uri).read(columns=["patient_id"]).column("patient_id").to_pylist()
    return {p: ids.count(p) for p in set(ids)}


def test_row_counts_shards_and_content(tree, tmp_path):
    res = ingest(tree, str(tmp_path / "s"), size=SIZE)
    files = _dicoms(tree)
    assert res.ct_patients == 3 and res.mr_patients == 5
    assert res.ct_slices == sum(files["CT"].values()) and res.mr_slices == sum(files["MR"].values())
    assert res.slices_written == res.slices and res.slices_per_s > 0 and len(res.written) == 8
    assert _rows_per_patient(str(tmp_path / "s" / "real_ct")) == files["CT"]
    assert _rows_per_patient(str(tmp_path / "s" / "real_mr")) == files["MR"]
    mr = SliceStore(str(tmp_path / "s" / "real_mr"))
    assert mr.committed_shards() == sorted(files["MR"], key=int)  # one shard per patient, named by id
    table = mr.read(patient_id="2")
    image = tensor_column_to_numpy(table, "image")
    assert image.shape == (files["MR"]["2"], SIZE, SIZE) and image.min() >= -1 and image.max() <= 1
    assert set(np.unique(tensor_column_to_numpy(table, "mask"))) <= {0, 1}
    assert set(table.column("sequence").to_pylist()) == {"T2SPIR"}
    assert set(table.column("origin").to_pylist()) == {"real"}
    # the native mask is the reader's liver mask, slice for slice
    (vol,) = iter_volumes(tree / "MR" / "2", modalities=("MR",))
    for k in range(vol.image.shape[0]):
        row = table.slice(k, 1)
        assert row.column("slice_index")[0].as_py() == k
        native = unpack_native_mask(row.column("mask_native")[0].as_py(), row.column("native_shape")[0].as_py())
        np.testing.assert_array_equal(native, vol.liver[k])
    assert json.loads((tmp_path / "s" / "real_mr" / "manifest.json").read_text())["rows"] == res.mr_slices


def test_splits_are_disjoint_by_patient_and_recorded(tree, tmp_path):
    ingest(tree, str(tmp_path / "s"), size=SIZE, seed=4)
    splits = json.loads((tmp_path / "s" / "splits.json").read_text())
    mr_ids, ct_ids = set(_dicoms(tree)["MR"]), set(_dicoms(tree)["CT"])
    assert splits["seed"] == 4 and len(splits["mr"]["test"]) == 1  # default 20 % of 5
    assert not set(splits["mr"]["test"]) & set(splits["mr"]["trainval"])
    assert set(splits["mr"]["test"]) | set(splits["mr"]["trainval"]) == mr_ids
    assert len(splits["ct"]["val"]) == 1 and set(splits["ct"]["val"]) | set(splits["ct"]["train"]) == ct_ids
    mr = SliceStore(str(tmp_path / "s" / "real_mr")).read(columns=["patient_id", "split"])
    by_split = {s: set() for s in ("test", "trainval")}
    for pid, split in zip(mr.column("patient_id").to_pylist(), mr.column("split").to_pylist()):
        by_split[split].add(pid)
    assert by_split == {"test": set(splits["mr"]["test"]), "trainval": set(splits["mr"]["trainval"])}
    ct = SliceStore(str(tmp_path / "s" / "real_ct")).read(columns=["patient_id"], split="val")
    assert set(ct.column("patient_id").to_pylist()) == set(splits["ct"]["val"])


def test_seeded_reproducibility(tree, tmp_path):
    a = ingest(tree, str(tmp_path / "a"), size=SIZE, seed=7, n_test_mr=2)
    b = ingest(tree, str(tmp_path / "b"), size=SIZE, seed=7, n_test_mr=2)
    assert a.config_hash == b.config_hash
    assert (tmp_path / "a" / "splits.json").read_text() == (tmp_path / "b" / "splits.json").read_text()
    ta = SliceStore(str(tmp_path / "a" / "real_mr")).read(columns=["image", "split"])
    tb = SliceStore(str(tmp_path / "b" / "real_mr")).read(columns=["image", "split"])
    assert tensor_column_to_numpy(ta, "image").tobytes() == tensor_column_to_numpy(tb, "image").tobytes()
    assert ta.column("split").to_pylist() == tb.column("split").to_pylist()
    ids = [str(i) for i in range(1, 11)]
    tests = {tuple(choose_splits([], ids, 2, 0, seed)["mr"]["test"]) for seed in range(6)}
    assert len(tests) > 1  # the seed matters


def test_rerun_is_a_noop_and_other_config_is_refused(tree, tmp_path):
    root = tmp_path / "s"
    ingest(tree, str(root), size=SIZE)
    before = {p: p.stat().st_mtime_ns for p in root.rglob("shards/*")}
    again = ingest(tree, str(root), size=SIZE)
    assert again.written == () and len(again.skipped) == 8 and again.slices_written == 0
    assert {p: p.stat().st_mtime_ns for p in root.rglob("shards/*")} == before
    with pytest.raises(StoreError, match=r"size \(32 -> 64\)"):
        ingest(tree, str(root), size=64)
    with pytest.raises(StoreError, match=r"seed \(0 -> 1\)"):
        ingest(tree, str(root), size=SIZE, seed=1)


def test_crash_on_second_patient_then_rerun_completes_without_duplicates(tree, tmp_path, monkeypatch):
    real = ingest_mod.preprocess_volume
    calls = {"n": 0}

    def flaky(vol, size, **kw):
        calls["n"] += 1
        if calls["n"] == 2:
            raise RuntimeError("worker died")
        return real(vol, size, **kw)

    monkeypatch.setattr(ingest_mod, "preprocess_volume", flaky)
    with pytest.raises(RuntimeError, match="worker died"):
        ingest(tree, str(tmp_path / "s"), size=SIZE)
    assert len(SliceStore(str(tmp_path / "s" / "real_ct")).committed_shards()) == 1
    monkeypatch.setattr(ingest_mod, "preprocess_volume", real)
    res = ingest(tree, str(tmp_path / "s"), size=SIZE)
    assert len(res.skipped) == 1 and len(res.written) == 7
    files = _dicoms(tree)
    for kind, modality in (("real_ct", "CT"), ("real_mr", "MR")):
        table = SliceStore(str(tmp_path / "s" / kind)).read(columns=["patient_id", "slice_index"])
        keys = list(zip(table.column("patient_id").to_pylist(), table.column("slice_index").to_pylist()))
        assert len(keys) == len(set(keys)) == sum(files[modality].values())


def test_crash_between_data_and_manifest_leaves_nothing_visible(tree, tmp_path, monkeypatch):
    real_write = SliceStore._write_atomic

    def no_manifest(self, path, data):
        if path.endswith(".manifest.json") and "/real_mr/" in path:
            raise OSError("lost the node")
        return real_write(self, path, data)

    monkeypatch.setattr(SliceStore, "_write_atomic", no_manifest)
    with pytest.raises(OSError, match="lost the node"):
        ingest(tree, str(tmp_path / "s"), size=SIZE)
    mr = SliceStore(str(tmp_path / "s" / "real_mr"))
    assert mr.committed_shards() == [] and mr.read().num_rows == 0  # the data file is there, but not committed
    assert len(mr.verify().torn) == 1
    monkeypatch.setattr(SliceStore, "_write_atomic", real_write)
    res = ingest(tree, str(tmp_path / "s"), size=SIZE)
    assert res.mr_slices == sum(_dicoms(tree)["MR"].values()) and mr.verify().ok


def test_mr_patient_without_ground_is_named(tree, tmp_path):
    copy = tmp_path / "chaos"
    shutil.copytree(tree, copy)
    shutil.rmtree(copy / "MR" / "5" / "T2SPIR" / "Ground")
    with pytest.raises(ChaosError, match=r"MR T2SPIR patient '5' has no Ground"):
        ingest(copy, str(tmp_path / "s"), size=SIZE)
    assert not (tmp_path / "s").exists()  # refused before anything was written


def test_bad_arguments(tree, tmp_path):
    with pytest.raises(ConfigError, match="n_test_mr"):
        ingest(tree, str(tmp_path / "s"), size=SIZE, n_test_mr=5)
    with pytest.raises(ConfigError, match="sequence"):
        ingest(tree, str(tmp_path / "s"), size=SIZE, sequence="T3")
    with pytest.raises(ChaosError):
        ingest(tmp_path / "missing", str(tmp_path / "s"), size=SIZE)


def test_real_ct_sample(chaos_sample, tmp_path):
    res = ingest(chaos_sample, str(tmp_path / "s"), size=64)
    assert res.ct_patients == 1 and res.ct_slices == 78 and res.mr_patients == 0 and res.mr_slices == 0
    table = SliceStore(str(tmp_path / "s" / "real_ct")).read(columns=["native_shape", "has_liver", "split"])
    assert table.column("native_shape")[0].as_py() == [512, 512]
    assert set(table.column("split").to_pylist()) == {"train"} and any(table.column("has_liver").to_pylist())


def test_ingest_into_s3_and_rerun(tree, s3_bucket):
    s3_root = f"{s3_bucket}/exp/stores"
    res = ingest(tree, s3_root, size=SIZE)
    assert res.mr_slices == sum(_dicoms(tree)["MR"].values()) and len(res.written) == 8
    assert ingest(tree, s3_root, size=SIZE).written == ()
    assert SliceStore(f"{s3_root}/real_mr").read(columns=["patient_id"]).num_rows == res.mr_slices
