"""The whole pipeline on a tiny phantom through the CLI, joining the session's Ray head.

One run serves several checks (end to end, an actor killed mid-generation, status, adding a seed). The fault tests
(a trial raising, the driver SIGKILLed mid-grid) each run their own tiny experiment.
"""
from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
import pytest

from cli_helpers import BIN, ROOT, cli_env, run_cli

pytestmark = pytest.mark.slow

METRIC_COLUMNS = ["trial_id", "patient_id", "dice", "iou", "ravd", "assd", "mssd", "val_dice", "best_step",
                  "n_real", "n_syn"]


def results_table(exp: Path) -> pd.DataFrame:
    frames = [pd.read_parquet(p) for p in sorted((exp / "results").glob("*.parquet"))]
    return pd.concat(frames).sort_values(["trial_id", "patient_id"]).reset_index(drop=True)


def result_bytes(exp: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted((exp / "results").glob("*.parquet"))}


@pytest.fixture(scope="module")
def smoke_exp(ray_head, tmp_path_factory):
    exp = tmp_path_factory.mktemp("exp") / "smoke"
    proc = run_cli("run", "--smoke", "--exp", str(exp), "--address", ray_head["address"],
                   "--set", "debug={kill_actor_on_shard: '1'}")
    return exp, proc.stdout + proc.stderr


def test_end_to_end(smoke_exp):
    exp, out = smoke_exp
    df = results_table(exp)
    assert set(df["generator"]) == {"none", "cyclegan", "essnet"}
    assert df["dice"].between(0, 1).all() and len(df["trial_id"].unique()) == 3
    assert (df["n_syn"] > 0).sum() > 0 and (df.loc[df.generator == "none", "n_syn"] == 0).all()
    states = pq.read_table(exp / "trial_states.parquet").to_pandas()
    assert set(states["status"]) == {"TERMINATED"}
    for stage in ("ingest", "essnet-essnet-r0", "essnet-cyclegan-r0", "generate-essnet-r0", "generate-cyclegan-r0"):
        assert (exp / "stages" / f"{stage}.json").exists(), stage
    assert (exp / "analysis" / "report.html").exists()
    assert "alignment" in out


def test_killed_actor_shard_redone_once(smoke_exp):
    exp, out = smoke_exp
    assert "actor lost on shard 1" in out
    for gen in ("essnet-r0", "cyclegan-r0"):
        shards = exp / "stores" / "synthetic_mr" / gen / "shards"
        data = sorted(p.name for p in shards.glob("*.parquet"))
        manifests = sorted(p.name for p in shards.glob("*.manifest.json"))
        assert [d[:-8] for d in data] == [m[: -len(".manifest.json")] for m in manifests]
        ct_shards = sorted(p.name for p in (exp / "stores" / "real_ct" / "shards").glob("*.parquet"))
        assert data == ct_shards  # one synthetic shard per CT patient: none lost, none duplicated
        rows = sum(pq.ParquetFile(shards / d).metadata.num_rows for d in data)
        ct_rows = sum(pq.ParquetFile(exp / "stores" / "real_ct" / "shards" / d).metadata.num_rows for d in ct_shards)
        assert rows == ct_rows


def test_status(smoke_exp):
    exp, _ = smoke_exp
    out = run_cli("status", str(exp)).stdout
    assert "3 terminated, 0 errored" in out and "best on validation" in out


def test_adding_a_seed_trains_only_the_new_trials(smoke_exp, ray_head):
    exp, _ = smoke_exp
    before = result_bytes(exp)
    ess = (exp / "stages" / "essnet-essnet-r0.json").read_text()
    out = run_cli("run", "--smoke", "--exp", str(exp), "--address", ray_head["address"], "--set", "grid.seeds=[0,1]")
    after = result_bytes(exp)
    assert {k: after[k] for k in before} == before  # finished trials untouched, byte for byte
    assert sorted(set(after) - set(before)) == sorted(f for f in after if "_s1_" in f) and len(after) == 6
    assert (exp / "stages" / "essnet-essnet-r0.json").read_text() == ess
    assert "3 done earlier, 3 to run" in out.stdout


def test_incompatible_change_is_refused(smoke_exp, ray_head):
    exp, _ = smoke_exp
    proc = run_cli("run", "--smoke", "--exp", str(exp), "--address", ray_head["address"], "--set", "unet.lr=0.5",
                   check=False)
    assert proc.returncode == 2
    assert "unet.lr" in proc.stderr and "already holds results" in proc.stderr


def test_failing_and_nan_trials_are_retried_recorded_and_resumed(ray_head, tmp_path):
    exp = tmp_path / "fail"
    run_cli("run", "--smoke", "--exp", str(exp), "--address", ray_head["address"], "--set", "grid.generators=[none]",
            "--set", "grid.seeds=[0,1]", "--set", "grid.max_failures=1",
            "--set", "debug={fail_trials: [_s0_], fail_times: 2, fail_at_step: 10, nan_trials: [_s1_]}")
    states = pq.read_table(exp / "trial_states.parquet").to_pandas().set_index("seed")
    assert states["status"].tolist() == ["ERROR", "ERROR"]
    assert "injected failure #2" in states.loc[0, "error"]  # retried once (max_failures=1), then recorded
    assert "nan" in states.loc[1, "error"].lower()  # the NaN guard names the problem
    assert not list((exp / "results").glob("*.parquet"))
    assert "2 errored" in run_cli("status", str(exp)).stdout
    run_cli("resume", str(exp), "--address", ray_head["address"])
    states = pq.read_table(exp / "trial_states.parquet").to_pandas().set_index("seed")
    assert states.loc[0, "status"] == "TERMINATED"  # the raising trial finished on resume
    assert states.loc[1, "status"] == "ERROR"  # NaN data stays NaN: still errored, with its reason
    assert [p.stem for p in (exp / "results").glob("*.parquet")] == [states.loc[0, "trial_id"]]


KILL_ARGS = ["--smoke", "--set", "grid.generators=[none]", "--set", "grid.seeds=[0,1]", "--set", "grid.max_concurrent=1",
             "--set", "unet.steps=80", "--set", "unet.eval_every=10"]


def _wait_for(cond, timeout: float, what: str):
    t0 = time.time()
    while time.time() - t0 < timeout:
        if cond():
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def test_sigkill_of_the_driver_mid_grid_then_resume(ray_head, tmp_path):
    ref = tmp_path / "ref"
    run_cli("run", *KILL_ARGS, "--exp", str(ref), "--address", ray_head["address"])
    exp = tmp_path / "killed"
    driver = subprocess.Popen([str(BIN / "essgrid"), "run", *KILL_ARGS, "--exp", str(exp), "--address",
                               ray_head["address"]], env=cli_env(), cwd=str(ROOT), stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)

    def one_done_one_checkpointed() -> bool:
        done = {p.stem for p in (exp / "results").glob("*.parquet")}
        if not done:
            return False
        ckpts = [p for p in (exp / "tune").glob("grid-*/*/checkpoint_*") if p.parent.name not in done]
        return bool(ckpts)

    try:
        _wait_for(one_done_one_checkpointed, 300, "a finished trial and a running one with a checkpoint")
    finally:
        driver.send_signal(signal.SIGKILL)
        driver.wait()
    finished = result_bytes(exp)
    running = [p.parent.name for p in (exp / "tune").glob("grid-*/*/checkpoint_*") if p.parent.name + ".parquet"
               not in finished]
    assert finished and running
    run_cli("resume", str(exp), "--address", ray_head["address"])
    after = result_bytes(exp)
    assert {k: after[k] for k in finished} == finished
    # the running trial continued from its checkpoint: its first report after resume is past that checkpoint
    progress = [json.loads(line) for f in sorted((exp / "tune").glob(f"grid-*/{running[0]}*/result.json"))
                for line in f.read_text().splitlines()]  # Tune gives a restored trial a new, suffixed folder
    resumed = [r for r in progress if (r.get("resumed_from") or -1) >= 0]
    assert resumed, "the interrupted trial was restarted from scratch"
    assert resumed[0]["step"] > resumed[0]["resumed_from"] > 0
    cols = [c for c in METRIC_COLUMNS]
    pd.testing.assert_frame_equal(results_table(exp)[cols], results_table(ref)[cols])


def test_report_has_every_figure_from_a_real_run(smoke_exp):
    exp, _ = smoke_exp
    out = exp / "analysis"
    for fig in ("saturation", "saturation_nsyn", "essnet_losses", "unet_val_dice", "gallery"):
        assert (out / f"{fig}.png").stat().st_size > 1000 and (out / f"{fig}.svg").exists(), fig
    html = (out / "report.html").read_text()
    assert html.count("data:image/png;base64,") + html.count("<svg") >= 5


def test_predict_then_evaluate_round_trip(smoke_exp, tmp_path):
    exp, _ = smoke_exp
    states = pq.read_table(exp / "trial_states.parquet").to_pandas()
    mr_test = json.loads((exp / "stores" / "splits.json").read_text())["mr"]["test"]
    patient = exp / "data" / "phantom" / "MR" / str(mr_test[0]) / "T2SPIR"
    out = tmp_path / "pred"
    run_cli("predict", str(exp), str(patient / "DICOM_anon"), str(out))
    pngs = sorted(out.glob("*.png"))
    assert len(pngs) == len(list((patient / "DICOM_anon").glob("*.dcm")))
    ev = run_cli("evaluate", str(out), str(patient / "Ground"), "--dicom", str(patient / "DICOM_anon")).stdout
    assert "DICE" in ev and "MSSD" in ev
    assert (states["status"] == "TERMINATED").all()


def test_pipeline_on_object_storage_with_resume(ray_head, s3_bucket):
    exp = f"{s3_bucket}/exp/tiny"
    args = ["--smoke", "--exp", exp, "--address", ray_head["address"], "--set", "grid.generators=[none, essnet]",
            "--set", "grid.seeds=[0]"]
    run_cli("run", *args)
    import pyarrow.fs as pafs

    fs, path = pafs.FileSystem.from_uri(exp)
    names = {pathlib_name(i.path) for i in fs.get_file_info(pafs.FileSelector(f"{path}/results"))}
    assert names == {"none-r0_f0.000_nrall_s0_k0.parquet", "essnet-r0_f0.500_nrall_s0_k0.parquet"}
    out = run_cli("resume", exp, "--address", ray_head["address"]).stdout
    assert "2 done earlier, 0 to run" in out
    assert run_cli("status", exp).stdout.count("2 terminated") == 1


def pathlib_name(p: str) -> str:
    return p.rstrip("/").rsplit("/", 1)[-1]


def test_a_mix_asking_for_more_slices_than_exist_fails_before_training(ray_head, tmp_path):
    exp = tmp_path / "toomany"
    proc = run_cli("run", "--smoke", "--exp", str(exp), "--address", ray_head["address"],
                   "--set", "grid.fractions=[0.98]", check=False)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "grid.fractions: f=0.98" in proc.stderr and "synthetic slices" in proc.stderr
    assert not (exp / "essnet").exists() and not (exp / "tune").exists()  # nothing trained
