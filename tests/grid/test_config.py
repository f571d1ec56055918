"""Presets load and validate; typos and out-of-range values are refused naming the field."""
import pytest

from datasets.errors import ConfigError
from grid.config import (apply_overrides, diff_fields, from_dict, load_config, read_yaml, preset_path, stage_key)


@pytest.mark.parametrize("preset", ["quick", "study", "paper"])
def test_presets_load(preset):
    cfg = load_config(preset=preset)
    assert cfg.preset == preset
    assert set(cfg.grid.generators) == {"none", "cyclegan", "essnet"}


def test_quick_preset_is_cpu_and_paper_asks_for_a_gpu():
    assert load_config(preset="quick").essnet.num_gpus == 0
    assert load_config(preset="paper").essnet.num_gpus == 1
    paper = load_config(preset="paper")
    assert paper.ingest.size == 256 and paper.unet["base"] == 64 and paper.grid.n_real == (350,)
    assert max(paper.grid.n_syn) + 350 == 1064 and len(paper.grid.seeds) >= 3


@pytest.mark.parametrize("override, field", [
    ("grid.fractoins=[0.5]", "grid.fractoins"),
    ("grid.fractions=[1.0]", "grid.fractions"),
    ("grid.generators=[essnet, pix2pix]", "grid.generators"),
    ("ingest.size=60", "ingest.size"),
    ("essnet.model.ngff=16", "ngff"),
    ("unet.stepz=10", "stepz"),
    ("grid.seeds=[0, true]", "grid.seeds"),
    ("essnet.num_gpus=-1", "essnet.num_gpus"),
    ("topping=1", "topping"),
])
def test_bad_values_name_the_field(override, field):
    with pytest.raises(ConfigError, match=field.replace(".", r"\.")):
        load_config(preset="quick", overrides=[override])


def test_typo_suggests_the_right_key():
    with pytest.raises(ConfigError, match="did you mean 'fractions'"):
        load_config(preset="quick", overrides=["grid.fractoins=[0.5]"])


def test_set_parses_yaml_values():
    cfg = load_config(preset="quick", overrides=["grid.seeds=[3,4,5]", "unet.steps=10"])
    assert cfg.grid.seeds == (3, 4, 5) and cfg.unet["steps"] == 10


def test_bad_set_syntax_and_missing_config_file(tmp_path):
    with pytest.raises(ConfigError, match="key=value"):
        apply_overrides({}, ["grid.seeds"])
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(str(tmp_path / "nope.yaml"))
    bad = tmp_path / "bad.yaml"
    bad.write_text("grid: [unclosed\n")
    with pytest.raises(ConfigError, match="bad.yaml"):
        read_yaml(bad)
    with pytest.raises(ConfigError, match="unknown preset"):
        preset_path("huge")


def test_grid_axes_do_not_change_upstream_stage_keys():
    a = load_config(preset="quick")
    b = load_config(preset="quick", overrides=["grid.seeds=[0,1,2,3]", "grid.fractions=[0.1, 0.5]"])
    for stage in ("ingest", "essnet", "generate", "trials"):
        assert stage_key(a, stage) == stage_key(b, stage)
    c = load_config(preset="quick", overrides=["essnet.model.lambda_seg=2.0"])
    assert stage_key(a, "ingest") == stage_key(c, "ingest")
    assert stage_key(a, "essnet") != stage_key(c, "essnet")
    assert any("lambda_seg" in d for d in diff_fields(a.to_dict(), c.to_dict()))


def test_config_round_trips_through_dict():
    cfg = load_config(preset="paper")
    assert from_dict(cfg.to_dict()) == cfg
