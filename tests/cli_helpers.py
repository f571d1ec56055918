"""Helpers for tests that run the `essgrid` CLI in a subprocess (importable because tests/ is on sys.path)."""
from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
SAMPLE = ROOT.parent / "shared" / "chaos-ct-sample"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cli_env() -> dict:
    env = dict(os.environ)
    env["RAY_USAGE_STATS_ENABLED"] = "0"
    env["RAY_AUTH_MODE"] = "token"  # the test head keeps Ray's token authentication on; clients must send it
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


