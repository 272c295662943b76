"""fcnseg's own checkpoint: weights with everything needed to use them, written atomically."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO

import torch

from fcnseg.models.fcn import FCN
from fcnseg.models.registry import build_model

FORMAT = "fcnseg"
VERSION = 1


def atomic_write(path: str | os.PathLike, write: Callable[[BinaryIO], None]) -> Path:
    """Call ``write`` on a temporary file beside ``path``, flush it to disk, then rename it over ``path``.

    A crash or a full disk leaves either the old file or the new one, never a torn one.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def atomic_save(obj: Any, path: str | os.PathLike) -> Path:
    """``torch.save`` through :func:`atomic_write`."""
    return atomic_write(path, lambda f: torch.save(obj, f))


def checkpoint_dict(model: FCN) -> dict[str, Any]:
    """The saved form of a model: build arguments, metadata and weights."""
    if not hasattr(model, "config"):
        raise ValueError("model was not made by fcnseg.build_model: its architecture is unknown")
    return {
        "format": FORMAT,
        "version": VERSION,
        "config": dict(model.config),
        "meta": dict(getattr(model, "meta", {})),
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
    }


def save_checkpoint(model: FCN, path: str | os.PathLike) -> Path:
    """Write ``model`` with its architecture, class names and preprocessing to ``path``."""
    return atomic_save(checkpoint_dict(model), path)


def read_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint dict safely (``weights_only=True``), with errors that name the file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        data = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as error:
        raise ValueError(f"{path} is not a readable fcnseg checkpoint ({error})") from error
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise ValueError(f"{path} is not an fcnseg checkpoint (no '{FORMAT}' format tag)")
    if data.get("version", 0) > VERSION:
        raise ValueError(f"{path} has checkpoint version {data['version']}; this fcnseg reads {VERSION}")
    return data


def model_from_checkpoint(data: dict[str, Any], source: str) -> FCN:
    """Rebuild the net a checkpoint describes and load its weights strictly."""
    model = build_model(**data["config"])
    state = data["state_dict"]
    expected = model.state_dict()
    problems = [f"missing {k}" for k in expected if k not in state]
    problems += [f"unexpected {k}" for k in state if k not in expected]
    problems += [
        f"{k}: expected shape {tuple(expected[k].shape)}, file has {tuple(v.shape)}"
        for k, v in state.items()
        if k in expected and v.shape != expected[k].shape
    ]
    if problems:
        raise ValueError(
            f"{source}: weights do not fit architecture {data['config']['arch']}:\n  " + "\n  ".join(problems)
        )
    model.load_state_dict(state)
    model.meta = dict(data.get("meta", {}))
    return model


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> FCN:
    """The model saved at ``path``, in eval mode, with ``model.meta`` restored."""
    return model_from_checkpoint(read_checkpoint(path, map_location), str(path)).eval()
