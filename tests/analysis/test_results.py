"""analysis/results.py: the tidy table from result files, unfinished trials listed apart, saved twice."""
import pandas as pd
import pytest

from analysis.results import ResultsError, load_results, save_results
from known_results import build_results, write_experiment


def test_one_row_per_trial_and_volume_and_unfinished_apart(tmp_path):
    df = build_results(seeds=[0, 1])
    errored = {"generator": "essnet", "replicate": 0, "fraction": 0.9, "n_syn_abs": -1, "n_real": 40, "seed": 0,
               "fold": 0, "trial_id": "essnet-r0_f0.900_nr40_s0_k0", "status": "ERROR", "error": "RuntimeError: x"}
    pending = {**errored, "seed": 1, "trial_id": "essnet-r0_f0.900_nr40_s1_k0", "status": "PENDING", "error": ""}
    exp = write_experiment(tmp_path / "expA", df, [errored, pending])
    table, unfinished = load_results([exp])
    assert len(table) == len(df) and table["trial_id"].nunique() == df["trial_id"].nunique()
    assert set(table["exp"]) == {"expA"} and set(table["n_real_key"]) == {"40"}
    assert sorted(unfinished["status"]) == ["ERROR", "PENDING"]
    assert unfinished.set_index("status").loc["ERROR", "error"] == "RuntimeError: x"
    pq, csv = save_results(table, str(tmp_path / "out"))
    assert len(pd.read_parquet(pq)) == len(pd.read_csv(csv)) == len(table)


def test_several_experiments_with_one_folder_name(tmp_path):
    a = write_experiment(tmp_path / "a" / "exp", build_results(seeds=[0]))
    b = write_experiment(tmp_path / "b" / "exp", build_results(seeds=[1]))
    table, _ = load_results([a, b])
    assert sorted(table["exp"].unique()) == ["exp#1", "exp#2"]


def test_errors_name_the_folder_or_file(tmp_path):
    with pytest.raises(ResultsError, match="nope.*does not exist"):
        load_results([str(tmp_path / "nope")])
    (tmp_path / "empty").mkdir()
    with pytest.raises(ResultsError, match="empty.*no results"):
        load_results([str(tmp_path / "empty")])
    exp = write_experiment(tmp_path / "bad", build_results(seeds=[0]))
    one = next((tmp_path / "bad" / "results").iterdir())
    pd.read_parquet(one).drop(columns=["dice"]).to_parquet(one)
    with pytest.raises(ResultsError, match=f"{one.name}.*'dice' missing"):
        load_results([exp])
