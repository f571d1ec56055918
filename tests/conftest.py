"""Shared fixtures. One local Ray head per test session (`ray start --head`); drivers under test join it."""
from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from cli_helpers import BIN, SAMPLE, _free_port, cli_env

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
# One intra-op thread per process: tiny test networks gain nothing from more, and two Ray trials on two cores
# must not oversubscribe them (OpenMP spin-waiting made 2-thread tests 30x slower on a loaded machine).
os.environ.setdefault("OMP_NUM_THREADS", "1")


@pytest.fixture(scope="session")
def chaos_sample() -> Path:
    if not (SAMPLE / "DICOM_anon").is_dir():
        pytest.skip(f"{SAMPLE} is not here")
    return SAMPLE


@pytest.fixture(scope="session")
def ray_head(tmp_path_factory):
    """A local Ray head (2 CPUs, dashboard on for the Jobs API) shared by every test that needs a cluster.

    It gets its own temp dir, and teardown kills only the processes of that session, never other Ray clusters.
    """
    import tempfile

    import psutil

    port, dash = _free_port(), _free_port()
    temp_dir = tempfile.mkdtemp(prefix="ray-essgrid-", dir="/tmp")  # short: Ray puts unix sockets in it
    ray = str(BIN / "ray")
    subprocess.run([ray, "start", "--head", f"--port={port}", "--num-cpus=2", "--include-dashboard=true",
                    f"--dashboard-port={dash}", "--disable-usage-stats", f"--temp-dir={temp_dir}"], check=True,
                   env=cli_env(), capture_output=True, timeout=180)
    try:
        yield {"address": f"127.0.0.1:{port}", "jobs": f"http://127.0.0.1:{dash}"}
    finally:
        for p in psutil.process_iter(["cmdline"]):
            try:
                if temp_dir in " ".join(p.info["cmdline"] or []):
                    p.kill()
            except psutil.Error:
                continue
        subprocess.run(["rm", "-rf", temp_dir], check=False)


@pytest.fixture()
def s3_bucket(monkeypatch):
    """A moto S3 server on a free port; yields a bucket URI prefix. pyarrow reaches it through AWS_ENDPOINT_URL."""
    moto_server = pytest.importorskip("moto.server")
    boto3 = pytest.importorskip("boto3")
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    for key, value in (("AWS_ACCESS_KEY_ID", "test"), ("AWS_SECRET_ACCESS_KEY", "test"),
                       ("AWS_DEFAULT_REGION", "us-east-1"), ("AWS_ENDPOINT_URL", endpoint)):
        monkeypatch.setenv(key, value)
    boto3.client("s3", endpoint_url=endpoint).create_bucket(Bucket="essgrid")
    try:
        yield "s3://essgrid"
    finally:
        server.stop()
