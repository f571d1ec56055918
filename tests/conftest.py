"""Shared fixtures. One local Ray head per test session (`ray start --head`); drivers under test join it."""
from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
SAMPLE = ROOT.parent / "shared" / "chaos-ct-sample"

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cli_env() -> dict:
    env = dict(os.environ)
    env["RAY_USAGE_STATS_ENABLED"] = "0"
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    env["PYTHONUNBUFFERED"] = "1"
    return env


def run_cli(*args: str, timeout: float = 600, check: bool = True, cwd: str | None = None):
    """Run `essgrid ARGS` in a subprocess; return the CompletedProcess (stdout+stderr as text)."""
    proc = subprocess.run([str(BIN / "essgrid"), *args], capture_output=True, text=True, timeout=timeout,
                          env=cli_env(), cwd=cwd or str(ROOT))
    if check and proc.returncode != 0:
        raise AssertionError(f"essgrid {' '.join(args)} exited {proc.returncode}\n{proc.stdout[-4000:]}\n"
                             f"{proc.stderr[-6000:]}")
    return proc


@pytest.fixture(scope="session")
def chaos_sample() -> Path:
    if not (SAMPLE / "DICOM_anon").is_dir():
        pytest.skip(f"{SAMPLE} is not here")
    return SAMPLE


@pytest.fixture(scope="session")
def ray_head(tmp_path_factory):
    """A local Ray head (2 CPUs, dashboard on for the Jobs API) shared by every test that needs a cluster."""
    port, dash = _free_port(), _free_port()
    ray = str(BIN / "ray")
    subprocess.run([ray, "start", "--head", f"--port={port}", "--num-cpus=2", "--include-dashboard=true",
                    f"--dashboard-port={dash}", "--disable-usage-stats"], check=True, env=cli_env(),
                   capture_output=True, timeout=180)
    try:
        yield {"address": f"127.0.0.1:{port}", "jobs": f"http://127.0.0.1:{dash}"}
    finally:
        subprocess.run([ray, "stop", "--force"], env=cli_env(), capture_output=True, timeout=120)
