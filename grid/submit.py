"""`essgrid submit`: send `essgrid run` to a Ray cluster as a Ray Job.

The job's working_dir is a copy of the project's code (grid, models, datasets, analysis, pyproject.toml) plus the
resolved config, so data, stores and results never travel. The job runs `python -m grid.cli run` with the head's
`python` (the cluster's setup commands install essgrid's dependencies there) and joins the cluster
(`--address auto`). On a multi-node cluster the experiment must live on shared storage (`--exp s3://...`).
"""
from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from datasets import uri as U
from datasets.errors import EssgridError
from grid.config import ExperimentConfig, dump_yaml

PACKAGES = ("grid", "models", "datasets", "analysis")


def _package_dir(tmp: str, cfg: ExperimentConfig) -> str:
    root = Path(__file__).resolve().parent.parent
    for pkg in PACKAGES:
        shutil.copytree(root / pkg, Path(tmp) / pkg, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    for f in ("pyproject.toml", "README.md"):
        if (root / f).exists():
            shutil.copy(root / f, Path(tmp) / f)
    (Path(tmp) / "essgrid_job.yaml").write_text(dump_yaml(cfg))
    return tmp


def submit(cfg: ExperimentConfig, exp: str, address: str, wait: bool = False, say=print) -> str:
    """Submit the run; returns the job id.

    Raises:
        EssgridError: the Jobs address cannot be reached, or a local --exp is given for a remote cluster.
    """
    os.environ.setdefault("RAY_AUTH_MODE", "token")  # a Ray 2.60 head has token authentication on by default
    from ray.job_submission import JobSubmissionClient

    if not address.startswith(("http://", "https://")):
        raise EssgridError(f"--address {address!r}: expected the Ray Jobs address, e.g. http://HEAD:8265")
    if not U.is_remote(exp) and not os.path.isabs(exp):
        exp = os.path.abspath(exp)  # the job runs in another working directory
    try:
        client = JobSubmissionClient(address)
    except Exception as e:
        raise EssgridError(f"--address {address}: cannot reach the Ray Jobs API: {e}") from None
    with tempfile.TemporaryDirectory(prefix="essgrid-job-") as tmp:
        wd = _package_dir(tmp, cfg)
        job_id = client.submit_job(
            entrypoint=f"python -m grid.cli run essgrid_job.yaml --exp {exp} --address auto",
            runtime_env={"working_dir": wd, "env_vars": {"RAY_USAGE_STATS_ENABLED": "0"}},
        )
    say(f"submitted job {job_id} to {address}")
    say(f"follow it: ray job logs --address {address} --follow {job_id}")
    say(f"status:    essgrid status {exp}")
    if wait:
        import time

        while True:
            status = client.get_job_status(job_id)
            if status.is_terminal():
                break
            time.sleep(2)
        say(client.get_job_logs(job_id))
        say(f"job {job_id}: {status}")
        if str(status) != "SUCCEEDED" and getattr(status, "value", "") != "SUCCEEDED":
            raise EssgridError(f"job {job_id} ended {status}")
    return job_id
