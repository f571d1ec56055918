"""cluster.yaml passes Ray's own schema; `essgrid submit` runs the pipeline as a Ray Job on a local head."""
import pyarrow.parquet as pq
import pytest
import yaml

from cli_helpers import ROOT, run_cli


def test_cluster_yaml_is_valid_for_the_ray_cluster_launcher():
    from ray.autoscaler._private.util import prepare_config, validate_config

    raw = yaml.safe_load((ROOT / "cluster.yaml").read_text())
    cfg = prepare_config(raw)
    validate_config(cfg)
    gpu = cfg["available_node_types"]["gpu_worker"]
    assert isinstance(gpu["resources"]["GPU"], int) and gpu["resources"]["GPU"] >= 1
    assert gpu["min_workers"] == 0 and gpu["max_workers"] >= 1
    assert any("pip install -e" in c for c in cfg["setup_commands"])


def test_cluster_yaml_with_a_float_gpu_count_is_refused():
    from ray.autoscaler._private.util import prepare_config, validate_config

    raw = yaml.safe_load((ROOT / "cluster.yaml").read_text())
    raw["available_node_types"]["gpu_worker"]["resources"]["GPU"] = 0.5
    with pytest.raises(Exception):
        validate_config(prepare_config(raw))


@pytest.mark.slow
def test_submit_to_a_local_head_produces_results(ray_head, tmp_path):
    exp = tmp_path / "submitted"
    out = run_cli("submit", "--smoke", "--set", "grid.generators=[none]", "--address", ray_head["jobs"],
                  "--exp", str(exp), "--wait", timeout=600).stdout
    assert "submitted job" in out
    states = pq.read_table(exp / "trial_states.parquet").to_pandas()
    assert states["status"].tolist() == ["TERMINATED"]
    assert len(list((exp / "results").glob("*.parquet"))) == 1
