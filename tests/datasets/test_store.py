"""datasets/store.py: round trips, the commit rule (torn, foreign, second copies), config hashes, filters, URIs."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from datasets.errors import StoreError
from datasets.store import (SLICE_SCHEMA, SliceStore, hash_config, read_store, slice_schema, slices_to_table,
                            tensor_column_to_numpy, unpack_native_mask)

S = 16
H, W = 20, 24
CONFIG = {"size": S, "sequence": "T2SPIR", "seed": 0}
HASH = hash_config(CONFIG)


def _slices(pid: str, n: int = 4, split: str = "trainval", seed: int = 0, config_hash: str = HASH) -> tuple:
    rng = np.random.default_rng(seed)
    image = rng.uniform(-1, 1, (n, S, S)).astype(np.float16)
    mask = rng.uniform(size=(n, S, S)) > 0.6
    mask[0] = False  # one slice without liver
    native = rng.uniform(size=(n, H, W)) > 0.5
    table = slices_to_table(image, mask, patient_id=pid, modality="MR", sequence="T2SPIR", split=split,
                            spacing=(1.5, 1.5, 6.0), native_shape=(H, W), config_hash=config_hash,
                            mask_native=native)
    return table, image, mask, native


def _store(tmp_path, name: str = "st", **kw) -> SliceStore:
    return SliceStore(str(tmp_path / name), kind="real_mr", create=True, config=CONFIG, **kw)


def test_round_trip_is_bit_exact(tmp_path):
    store = _store(tmp_path)
    table, image, mask, native = _slices("3", n=5)
    manifest = store.write_shard("3", table)
    assert manifest["rows"] == 5 and manifest["config_hash"] == HASH and manifest["shard"] == "3"
    out = store.read()
    assert out.schema.equals(slice_schema(S))
    got = tensor_column_to_numpy(out, "image")
    assert got.dtype == np.float16 and got.shape == (5, S, S)
    assert got.tobytes() == image.tobytes()  # bit for bit, not just close
    np.testing.assert_array_equal(tensor_column_to_numpy(out, "mask"), mask.astype(np.uint8))
    assert out.column("has_liver").to_pylist() == [bool(m.any()) for m in mask]
    assert out.column("slice_index").to_pylist() == list(range(5))
    for k in range(5):
        row_native = unpack_native_mask(out.column("mask_native")[k].as_py(), out.column("native_shape")[k].as_py())
        np.testing.assert_array_equal(row_native, native[k])
    np.testing.assert_allclose(out.column("spacing")[0].as_py(), [1.5, 1.5, 6.0])
    assert np.isnan(out.column("quality").to_numpy()).all()
    assert set(out.column("source_patient").to_pylist()) == {"3"}


def test_single_shard_read_is_zero_copy(tmp_path):
    store = _store(tmp_path)
    store.write_shard("1", _slices("1")[0])
    out = store.read(columns=["image"])
    chunk = out.column("image").chunk(0)
    arr = tensor_column_to_numpy(out, "image")
    assert arr.ctypes.data == chunk.storage.values.buffers()[1].address + chunk.storage.values.offset * 2


def test_refuses_a_second_copy_of_a_shard(tmp_path):
    store = _store(tmp_path)
    store.write_shard("p7", _slices("p7")[0])
    with pytest.raises(StoreError, match="p7.*already committed"):
        store.write_shard("p7", _slices("p7", seed=1)[0])
    assert store.read().num_rows == 4  # still one copy


def test_truncated_data_file_is_not_committed_and_is_redone(tmp_path):
    store = _store(tmp_path)
    table = _slices("2")[0]
    store.write_shard("1", _slices("1")[0])
    store.write_shard("2", table)
    path = tmp_path / "st" / "shards" / "2.parquet"
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    assert not store.is_committed("2")
    assert store.committed_shards() == ["1"]
    assert set(store.read().column("patient_id").to_pylist()) == {"1"}
    report = store.verify()
    assert "2" in report.torn and "bytes" in report.torn["2"] and not report.ok
    store.write_shard("2", table)  # the redo replaces the torn file
    assert store.is_committed("2") and store.read().num_rows == 8 and store.verify().ok


def test_same_size_corruption_is_caught_by_sha256(tmp_path):
    store = _store(tmp_path)
    store.write_shard("1", _slices("1")[0])
    path = tmp_path / "st" / "shards" / "1.parquet"
    raw = bytearray(path.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    path.write_bytes(bytes(raw))
    assert not store.is_committed("1")
    assert "sha256" in store.verify().torn["1"]


def test_data_without_manifest_is_torn_and_discarded(tmp_path):
    store = _store(tmp_path)
    store.write_shard("1", _slices("1")[0])
    store.write_shard("2", _slices("2")[0])
    (tmp_path / "st" / "shards" / "2.manifest.json").unlink()
    (tmp_path / "st" / "shards" / ".tmp-deadbeef-3.parquet").write_bytes(b"half a file")
    assert store.committed_shards() == ["1"]
    report = store.verify()
    assert "manifest" in report.torn["2"] and len(report.temporaries) == 1
    removed = store.discard_uncommitted()
    assert any(p.endswith("2.parquet") for p in removed) and any(".tmp-" in p for p in removed)
    assert sorted(p.name for p in (tmp_path / "st" / "shards").iterdir()) == ["1.manifest.json", "1.parquet"]
    assert store.verify().ok


def test_foreign_parquet_file_is_reported_by_name(tmp_path):
    store = _store(tmp_path)
    store.write_shard("1", _slices("1")[0])
    pq.write_table(pa.table({"x": [1, 2, 3]}), tmp_path / "st" / "shards" / "intruder.parquet")
    report = store.verify()
    assert any(p.endswith("intruder.parquet") for p in report.foreign)
    assert "schema" in next(iter(report.foreign.values()))
    with pytest.raises(StoreError, match=r"intruder\.parquet.*schema"):
        store.read()  # never mixed in, never silently ignored
    store.discard_uncommitted()
    assert (tmp_path / "st" / "shards" / "intruder.parquet").exists()  # foreign files are left to a human


def test_shard_copied_from_another_config_is_refused_naming_the_file(tmp_path):
    store = _store(tmp_path)
    store.write_shard("1", _slices("1")[0])
    other_cfg = {**CONFIG, "seed": 9}
    other = SliceStore(str(tmp_path / "other"), kind="real_mr", create=True, config=other_cfg)
    other.write_shard("5", _slices("5", config_hash=hash_config(other_cfg))[0])
    for name in ("5.parquet", "5.manifest.json"):
        shutil.copy(tmp_path / "other" / "shards" / name, tmp_path / "st" / "shards" / name)
    with pytest.raises(StoreError, match=r"5\.parquet.*config_hash"):
        store.read()
    assert any(p.endswith("5.parquet") for p in store.verify().foreign)
    # and a foreign file passed off with a forged manifest is caught by its schema metadata
    man = json.loads((tmp_path / "st" / "shards" / "5.manifest.json").read_text())
    man["config_hash"] = HASH
    (tmp_path / "st" / "shards" / "5.manifest.json").write_text(json.dumps(man))
    with pytest.raises(StoreError, match=r"5\.parquet.*config_hash"):
        store.read()


def test_table_with_other_config_hash_is_refused(tmp_path):
    store = _store(tmp_path)
    with pytest.raises(StoreError, match="config_hash"):
        store.write_shard("1", _slices("1", config_hash="0123456789abcdef")[0])
    assert store.committed_shards() == []


def test_reopening_with_another_config_names_hashes_and_fields(tmp_path):
    _store(tmp_path)
    new = {**CONFIG, "size": 32}
    with pytest.raises(StoreError) as err:
        SliceStore(str(tmp_path / "st"), config=new)
    msg = str(err.value)
    assert HASH in msg and hash_config(new) in msg and "size (16 -> 32)" in msg and "seed" not in msg
    # the same config opens, and a bare open adopts the recorded hash
    assert SliceStore(str(tmp_path / "st"), config=CONFIG).config_hash == HASH
    assert SliceStore(str(tmp_path / "st")).config_hash == HASH


def test_open_errors_missing_store_and_wrong_kind(tmp_path):
    with pytest.raises(StoreError, match="not a slice store"):
        SliceStore(str(tmp_path / "nothing"))
    _store(tmp_path)
    with pytest.raises(StoreError, match="real_ct"):
        SliceStore(str(tmp_path / "st"), kind="real_ct")
    with pytest.raises(StoreError, match="shard name"):
        SliceStore(str(tmp_path / "st")).write_shard("../escape", _slices("1")[0])


def test_column_and_row_filters(tmp_path):
    store = _store(tmp_path)
    store.write_shard("1", _slices("1", split="test")[0])
    store.write_shard("2", _slices("2", split="trainval")[0])
    store.write_shard("10", _slices("10", split="trainval")[0])
    assert store.committed_shards() == ["1", "2", "10"]  # natural order
    test = store.read(columns=["patient_id", "slice_index"], split="test")
    assert test.column_names == ["patient_id", "slice_index"] and set(test.column("patient_id").to_pylist()) == {"1"}
    picked = store.read(columns=["patient_id"], patient_id=["2", "10"])
    assert sorted(set(picked.column("patient_id").to_pylist())) == ["10", "2"] and picked.num_rows == 8
    liver = store.read(columns=["patient_id", "image"], filter=pc.field("has_liver"), split="trainval")
    assert liver.num_rows == 6  # slice 0 of each shard has no liver
    assert tensor_column_to_numpy(liver, "image").shape == (6, S, S)
    with pytest.raises(StoreError, match="unknown columns"):
        store.read(columns=["nope"])
    with pytest.raises(StoreError, match="cannot filter"):
        store.read(image=1)


def test_file_uri_and_read_store(tmp_path):
    uri = (tmp_path / "st").as_uri()
    assert uri.startswith("file:///")
    store = SliceStore(uri, kind="real_mr", create=True, config=CONFIG)
    store.write_shard("1", _slices("1")[0])
    assert store.is_committed("1")
    assert (tmp_path / "st" / "shards" / "1.parquet").is_file()
    assert read_store(uri, columns=["patient_id"]).num_rows == 4
    assert SliceStore(str(tmp_path / "st")).read().num_rows == 4


def test_merge_manifests_and_empty_reads(tmp_path):
    store = _store(tmp_path)
    assert store.read().num_rows == 0 and store.read().schema.equals(SLICE_SCHEMA)
    store.write_shard("1", _slices("1")[0])
    store.write_shard("2", _slices("2", n=3)[0])
    merged = store.merge_manifests()
    on_disk = json.loads((tmp_path / "st" / "manifest.json").read_text())
    assert on_disk == merged and merged["rows"] == 7 and [m["shard"] for m in merged["shards"]] == ["1", "2"]
    assert json.loads((tmp_path / "st" / "store.json").read_text())["config"] == CONFIG


def test_slices_to_table_rejects_bad_inputs():
    image = np.zeros((2, S, S), np.float32)
    with pytest.raises(ValueError, match="image"):
        slices_to_table(image + 2, image, patient_id="1", modality="MR", sequence="T2SPIR", split="test",
                        spacing=(1, 1, 1), native_shape=(S, S), config_hash=HASH)
    with pytest.raises(ValueError, match="mask"):
        slices_to_table(image, image[:1], patient_id="1", modality="MR", sequence="T2SPIR", split="test",
                        spacing=(1, 1, 1), native_shape=(S, S), config_hash=HASH)
    with pytest.raises(ValueError, match="split"):
        slices_to_table(image, image, patient_id="1", modality="MR", sequence="T2SPIR", split=["test"] * 3,
                        spacing=(1, 1, 1), native_shape=(S, S), config_hash=HASH)


def test_s3_store_commit_rule_and_reads(s3_bucket):
    store = SliceStore(f"{s3_bucket}/stores/real_mr", kind="real_mr", create=True, config=CONFIG)
    table, image, _, _ = _slices("1", split="test")
    store.write_shard("1", table)
    store.write_shard("2", _slices("2")[0])
    with pytest.raises(StoreError, match="already committed"):
        store.write_shard("1", table)
    got = SliceStore(f"{s3_bucket}/stores/real_mr", config=CONFIG).read(split="test")
    assert tensor_column_to_numpy(got, "image").tobytes() == image.tobytes()
    assert store.merge_manifests()["rows"] == 8 and store.verify().ok
