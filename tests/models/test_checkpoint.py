import io

import pytest
import torch

from models.checkpoint import CheckpointError, load_checkpoint, save_checkpoint


def test_round_trip_adds_versions_and_leaves_no_temp_files(tmp_path):
    path = tmp_path / "sub" / "checkpoint.pt"
    state = {"net": {"w": torch.arange(4.0)}, "config": {"ngf": 8, "name": "x"}, "step": 5, "pool": [torch.ones(1)]}
    save_checkpoint(path, state)
    loaded = load_checkpoint(path)
    assert torch.equal(loaded["net"]["w"], torch.arange(4.0))
    assert loaded["config"] == {"ngf": 8, "name": "x"} and loaded["step"] == 5
    assert set(loaded["versions"]) == {"torch", "essgrid"}
    assert [p.name for p in path.parent.iterdir()] == ["checkpoint.pt"]


def test_file_objects_work():
    buf = io.BytesIO()
    save_checkpoint(buf, {"step": 1})
    buf.seek(0)
    assert load_checkpoint(buf)["step"] == 1


def test_missing_and_corrupt_files_raise_naming_the_path(tmp_path):
    with pytest.raises(CheckpointError, match="nope.pt"):
        load_checkpoint(tmp_path / "nope.pt")
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="bad.pt"):
        load_checkpoint(bad)


class _Foreign:
    pass


def test_non_plain_objects_are_refused_on_load(tmp_path):
    path = tmp_path / "obj.pt"
    torch.save({"obj": _Foreign()}, path)  # an arbitrary class: weights_only must refuse it
    with pytest.raises(CheckpointError, match="obj.pt"):
        load_checkpoint(path)
