"""The researcher's one command: ingest -> EssNet -> generate -> Tune grid -> analysis, in one Ray driver.

Every stage is idempotent and recorded in the experiment directory, so `essgrid run` on an existing experiment and
`essgrid resume EXP` are the same walk: finished stages are skipped, unfinished shards redone, the Tune experiment
restored. A driver killed with SIGKILL leaves its local Ray cluster running; the next driver for the same experiment
stops those leftovers (and only those) before starting its own cluster.
"""
from __future__ import annotations

import contextlib
import logging
import os
import time

from datasets import uri as U
from datasets.errors import EssgridError
from grid.config import ExperimentConfig
from grid.experiment import Experiment

log = logging.getLogger(__name__)


def _stop_leftover_cluster(exp: Experiment, say=print) -> None:
    """Kill the processes of a local Ray cluster that an earlier, dead driver of this experiment started."""
    rec_uri = exp.path("ray_local.json")
    if not U.exists(rec_uri):
        return
    import psutil

    rec = U.read_json(rec_uri)
    if psutil.pid_exists(int(rec.get("driver_pid", -1))) and int(rec["driver_pid"]) != os.getpid():
        try:
            if "essgrid" in " ".join(psutil.Process(int(rec["driver_pid"])).cmdline()):
                raise EssgridError(f"{exp.root}: another essgrid driver (pid {rec['driver_pid']}) is running this "
                                   "experiment; stop it first")
        except psutil.Error:
            pass
    session = os.path.basename(str(rec.get("session_dir", "")).rstrip("/"))
    if not session:
        return
    killed = 0
    for p in psutil.process_iter(["pid", "cmdline"]):
        try:
            if p.pid != os.getpid() and session in " ".join(p.info["cmdline"] or []):
                p.kill()
                killed += 1
        except psutil.Error:
            continue
    if killed:
        say(f"[ray] stopped {killed} leftover process(es) of the interrupted run's local cluster ({session})")
    U.delete(rec_uri)


def use_token_auth_if_available() -> None:
    """Clusters started by `ray start` (Ray 2.60) require the auth token; a client only sends it in token mode."""
    from pathlib import Path

    if "RAY_AUTH_MODE" in os.environ:
        return
    if os.environ.get("RAY_AUTH_TOKEN") or os.environ.get("RAY_AUTH_TOKEN_PATH") or (
            Path.home() / ".ray" / "auth_token").is_file():
        os.environ["RAY_AUTH_MODE"] = "token"


STORAGE_ENV = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_DEFAULT_REGION",
               "AWS_REGION", "AWS_ENDPOINT_URL", "AWS_PROFILE", "GOOGLE_APPLICATION_CREDENTIALS")


def _storage_env() -> dict[str, str]:
    """Object-store settings of the driver, passed to workers of an existing cluster (they do not inherit them)."""
    return {k: os.environ[k] for k in STORAGE_ENV if os.environ.get(k)}


@contextlib.contextmanager
def ray_session(exp: Experiment, address: str | None, say=print):
    """Connect to `address`, or start a local cluster (address="local") recorded in the experiment."""
    if address:
        use_token_auth_if_available()  # before Ray reads its config
    import ray

    if ray.is_initialized():  # a caller (a notebook, a test) already holds a session: use it as it is
        yield
        return
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")  # inherited by the workers of a local cluster
    if address:
        if os.environ.get("RAY_JOB_ID") or os.environ.get("RAY_JOB_CONFIG_JSON_ENV_VAR"):
            ray.init(address=address)  # inside a Ray Job the job's runtime_env applies; adding one would conflict
        else:
            ray.init(address=address, runtime_env={"env_vars": _storage_env()})
    else:
        _stop_leftover_cluster(exp, say)
        ctx = ray.init(address="local", num_cpus=os.cpu_count(), include_dashboard=False)
        if not U.is_remote(exp.root):
            U.write_json(exp.path("ray_local.json"), {"driver_pid": os.getpid(),
                                                      "session_dir": ctx.address_info.get("session_dir", "")})
    try:
        yield
    finally:
        ray.shutdown()
        if not address and U.exists(exp.path("ray_local.json")):
            U.delete(exp.path("ray_local.json"))


def run_experiment(cfg: ExperimentConfig, exp_root: str, address: str | None = None, say=print,
                   analyze: bool = True) -> dict:
    """Run (or continue) the whole experiment in `exp_root`. Returns stage figures.

    Raises:
        EssgridError: bad config, data or experiment (the message names the field or file).
    """
    from grid.alignment import run_alignment
    from grid.config import stage_key
    from grid.generate import run_generate
    from grid.trainable import check_trial_data
    from grid.trials import build_trials
    from grid.stages import run_essnet, run_ingest
    from grid.tune_stage import run_grid

    exp = Experiment(exp_root)
    _check_data(cfg)
    exp.check_compatible(cfg)
    exp.save_config(cfg)
    say(f"[essgrid] experiment {exp.root} (preset {cfg.preset})")
    t0 = time.time()
    out: dict = {}
    with ray_session(exp, address, say):
        out["ingest"] = run_ingest(exp, cfg, say)
        check_trial_data(exp, build_trials(cfg), cfg, before_generation=True)  # refuse impossible mixes now
        out["essnet"] = run_essnet(exp, cfg, say)
        out["generate"] = run_generate(exp, cfg, say)
        out["alignment"] = run_alignment(exp, cfg, stage_key(cfg, "trials"), say)
        out["grid"] = run_grid(exp, cfg, say)
    out["wall_s"] = time.time() - t0
    if analyze:
        out["analysis"] = run_analysis(exp, say)
    say(f"[essgrid] finished in {out['wall_s'] / 60:.1f} min")
    return out


def _check_data(cfg: ExperimentConfig) -> None:
    """A --data path that is missing or not CHAOS fails here, before the experiment or Ray is touched."""
    if cfg.data.source == "phantom":
        return
    from datasets.chaos import find_patients

    if not os.path.isdir(cfg.data.source):
        raise EssgridError(f"data.source: {cfg.data.source}: CHAOS folder does not exist")
    find_patients(cfg.data.source)


def run_analysis(exp: Experiment, say=print):
    """Stage 5: results table, statistics, figures and report; prints the summary and the alignment scores."""
    from analysis.report import analyze

    res = analyze([exp.root], None)
    say("")
    say(res.summary)  # summary table, saturation points, alignment scores
    say(f"[essgrid] results: {res.results}")
    say(f"[essgrid] plot:    {U.join(res.out, 'saturation.png')}")
    say(f"[essgrid] report:  {res.report}")
    return res


def resume_experiment(exp_root: str, address: str | None = None, say=print) -> dict:
    """Continue an experiment with the config saved in it."""
    exp = Experiment(exp_root)
    cfg = exp.saved_config()
    if cfg is None:
        raise EssgridError(f"{exp_root}: not an essgrid experiment (no config.yaml); start one with `essgrid run`")
    return run_experiment(cfg, exp_root, address=address, say=say)
