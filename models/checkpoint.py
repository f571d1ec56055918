"""Save and load training checkpoints as plain containers, readable with `torch.load(weights_only=True)`.

A checkpoint holds only tensors, dicts, lists, tuples, str, int, float, bool and None (state dicts, config as a dict,
step, RNG states as tensors), so loading never unpickles arbitrary objects. Writes go to a temporary name in the same
directory and are renamed into place, so a crash mid-write leaves the previous checkpoint intact.
"""
from __future__ import annotations

import os
import tempfile
from importlib import metadata
from pathlib import Path
from typing import Any, BinaryIO

import torch

from datasets.errors import EssgridError

__all__ = ["CheckpointError", "save_checkpoint", "load_checkpoint", "versions"]


class CheckpointError(EssgridError):
    """A checkpoint file that is missing, unreadable or lacks a required entry."""


def versions() -> dict[str, str]:
    """Versions stamped into every checkpoint (torch, essgrid)."""
    try:
        essgrid_version = metadata.version("essgrid")
    except metadata.PackageNotFoundError:
        essgrid_version = "unknown"
    return {"torch": str(torch.__version__), "essgrid": str(essgrid_version)}


def save_checkpoint(path_or_file: str | os.PathLike | BinaryIO, state: dict[str, Any]) -> None:
    """Write `state` plus a "versions" entry with torch.save.

    Args:
        path_or_file: a local path (written atomically: temp file then os.replace) or a writable binary file object.
        state: e.g. {"config": dict, "step": int, "netG_A": state_dict, ...}; plain containers and tensors only.

    Raises:
        ValueError: if `state` is not a dict or already has a "versions" key with a non-dict value.
    """
    if not isinstance(state, dict):
        raise ValueError(f"state must be a dict, got {type(state).__name__}")
    payload = dict(state)
    payload["versions"] = versions()
    if isinstance(path_or_file, (str, os.PathLike)):
        path = Path(path_or_file)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        try:
            with os.fdopen(fd, "wb") as f:
                torch.save(payload, f)
            os.replace(tmp, path)
        except BaseException:
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise
    else:
        torch.save(payload, path_or_file)


def load_checkpoint(path: str | os.PathLike | BinaryIO, map_location: str | torch.device | None = "cpu") -> dict[str, Any]:
    """Read a checkpoint written by `save_checkpoint` (weights_only=True: no arbitrary unpickling).

    Args:
        path: a local path or a readable binary file object.
        map_location: where tensors land (default CPU; move models afterwards).

    Returns:
        The saved dict, including "versions".

    Raises:
        CheckpointError: the file is missing or cannot be read as a checkpoint (message names the path).
    """
    name = str(path) if isinstance(path, (str, os.PathLike)) else getattr(path, "name", "<file object>")
    if isinstance(path, (str, os.PathLike)) and not Path(path).is_file():
        raise CheckpointError(f"{name}: checkpoint not found")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # torch raises a zoo of types for corrupt/foreign files
        raise CheckpointError(f"{name}: cannot read checkpoint ({type(exc).__name__}: {exc})") from exc
    if not isinstance(state, dict):
        raise CheckpointError(f"{name}: checkpoint is a {type(state).__name__}, expected a dict")
    return state
