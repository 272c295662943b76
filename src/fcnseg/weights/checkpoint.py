"""fcnseg's own checkpoint: weights with everything needed to use them, written atomically."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import torch

from fcnseg.data.preprocess import DEFAULT_PREPROCESS, PRESETS
from fcnseg.errors import FcnsegError
from fcnseg.files import atomic_write
from fcnseg.models.fcn import FCN
from fcnseg.models.registry import BUILDERS, build_model
from fcnseg.weights.transfer import state_dict_problems

FORMAT = "fcnseg"
VERSION = 1

_CHECKPOINT_STARTS = (b"PK\x03\x04", *(b"\x80" + bytes([protocol]) for protocol in range(2, 6)))
"""A zip archive, as ``torch.save`` writes, or a pickle (its legacy format)."""
_FOREIGN = (
    (b"\xff\xd8\xff", "a JPEG image"),
    (b"\x89PNG\r\n\x1a\n", "a PNG image"),
    (b"GIF87a", "a GIF image"),
    (b"GIF89a", "a GIF image"),
    (b"II*\x00", "a TIFF image"),
    (b"MM\x00*", "a TIFF image"),
    (b"\x1f\x8b", "a gzip file"),
    (b"BZh", "a bzip2 file"),
    (b"\xfd7zXZ\x00", "an xz file"),
    (b"%PDF", "a PDF document"),
    (b"\x89HDF\r\n\x1a\n", "an HDF5 file"),
    (b"MATLAB", "a MAT-file"),
    (b"<!DOCTYPE html", "an HTML page (a failed download?)"),
    (b"<html", "an HTML page (a failed download?)"),
)
"""First bytes of formats that people mistake for weights, or rename by accident."""

# NetParameter's fields: (number, wire type) pairs that a Caffe model can start with.
_NET_PARAMETER_KEYS = {(1, 2), (2, 2), (3, 2), (4, 0), (4, 2), (5, 0), (6, 2), (7, 0), (8, 2), (100, 2)}


class CheckpointError(FcnsegError):
    """A file that is not a usable fcnseg checkpoint (or Caffe model); the message says what it is."""


def atomic_save(obj: Any, path: str | os.PathLike) -> Path:
    """``torch.save`` through :func:`atomic_write`."""
    return atomic_write(path, lambda f: torch.save(obj, f))


def checkpoint_dict(model: FCN) -> dict[str, Any]:
    """The saved form of a model: build arguments, metadata and weights."""
    if not hasattr(model, "config"):
        raise ValueError(
            "model was not made by fcnseg.build_model: its architecture is unknown (a net of one's own "
            "saves once its builder is registered: fcnseg.register_model)"
        )
    unsaved = [f"{k} (a {type(v).__name__})" for k, v in model.config.items() if not _plain(v)]
    if unsaved:
        raise ValueError(
            f"model was built with {', '.join(unsaved)}, which a checkpoint cannot rebuild: register a "
            "builder that makes it (fcnseg.register_model) and build the net by that name"
        )
    return {
        "format": FORMAT,
        "version": VERSION,
        "config": dict(model.config),
        "meta": dict(getattr(model, "meta", {})),
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
    }


def _plain(value: Any) -> bool:
    """Whether a build argument is a plain value that a checkpoint stores and a safe load reads."""
    if isinstance(value, list | tuple):
        return all(map(_plain, value))
    if isinstance(value, dict):
        return all(isinstance(k, str) and _plain(v) for k, v in value.items())
    return value is None or isinstance(value, bool | int | float | str)


def save_checkpoint(model: FCN, path: str | os.PathLike) -> Path:
    """Write ``model`` with its architecture, class names and preprocessing to ``path``."""
    return atomic_save(checkpoint_dict(model), path)


def _foreign_format(head: bytes, size: int) -> str | None:
    """The name of a known non-weights format that ``head`` starts, e.g. "a JPEG image"."""
    for magic, name in _FOREIGN:
        if head.startswith(magic):
            return name
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "a WebP image"
    if head[:2] == b"BM" and int.from_bytes(head[2:6], "little") == size:  # BMP: its own size follows
        return "a BMP image"
    return None


def _looks_like_net_parameter(head: bytes) -> bool:
    """Whether ``head`` starts with a field that a binary Caffe NetParameter can start with."""
    key = shift = 0
    for byte in head[:5]:
        key |= (byte & 0x7F) << shift
        shift += 7
        if byte < 0x80:
            return (key >> 3, key & 7) in _NET_PARAMETER_KEYS
    return False


def _head(path: Path) -> bytes:
    """The first bytes of a weights file; a CheckpointError if it is empty or of a known other format."""
    with path.open("rb") as f:
        head = f.read(64)
    if not head:
        raise CheckpointError(f"{path} is empty (0 bytes): not a checkpoint or Caffe model")
    foreign = _foreign_format(head, path.stat().st_size)
    if foreign:
        raise CheckpointError(f"{path} is {foreign}, not a checkpoint or Caffe model")
    return head


def weights_format(path: str | os.PathLike) -> str:
    """``"checkpoint"`` or ``"caffe"``: what a weights file holds, from its first bytes.

    A zip archive (what ``torch.save`` writes; a legacy pickle too) is a checkpoint; a file named
    ``.caffemodel`` or starting like a protobuf NetParameter is a Caffe model. Anything else, an
    empty file or an image above all, raises a ``CheckpointError`` that says what the file is.
    """
    path = Path(path)
    head = _head(path)
    if path.suffix == ".caffemodel":
        return "caffe"
    if head.startswith(_CHECKPOINT_STARTS):
        return "checkpoint"
    if _looks_like_net_parameter(head):
        return "caffe"
    raise CheckpointError(
        f"{path} is neither an fcnseg checkpoint (a zip archive, as torch.save writes) nor a Caffe "
        f"model (a protobuf NetParameter); it starts with {head[:8]!r}"
    )


def _load_failure(error: Exception) -> str:
    """Why ``torch.load`` refused a file, without its advice to retry with ``weights_only=False``:
    that runs whatever code the file holds."""
    text = str(error)
    if "WeightsUnpickler error:" in text:
        detail = text.split("WeightsUnpickler error:", 1)[1].strip().split("\n\n")[0]
        detail = re.split(r"\. Please|\n", detail)[0].strip()
        return f"it holds Python objects that a safe load refuses: {detail}"
    return re.split(r"\. |\n", text)[0]


def safe_load(path: Path, map_location: str | torch.device = "cpu", what: str = "torch file") -> Any:
    """``torch.load(weights_only=True)``: tensors and plain values, never code; a CheckpointError
    naming the file (and not suggesting an unsafe load) when that fails."""
    _head(path)
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as error:  # torch.load's failures on a corrupt file have no common type
        raise CheckpointError(f"{path} is not a readable {what} ({_load_failure(error)})") from error


def _structure_problems(data: Any) -> list[str]:
    """What is missing or of the wrong kind in a loaded checkpoint dict (format tag aside)."""
    problems = []
    config, state, meta = data.get("config"), data.get("state_dict"), data.get("meta", {})
    if not isinstance(config, dict) or not all(isinstance(k, str) for k in config):
        problems.append("'config' is not a dict of build arguments")
    elif not isinstance(config.get("arch"), str) or config["arch"] not in BUILDERS:
        problems.append(
            f"config names architecture {config.get('arch')!r}, not one of {', '.join(BUILDERS)} (a net of "
            "one's own loads once its builder is registered again: fcnseg.register_model)"
        )
    if not isinstance(state, dict) or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()
    ):
        problems.append("'state_dict' is not a dict of named tensors")
    if not isinstance(meta, dict):
        problems.append("'meta' is not a dict")
    else:
        preprocess = meta.get("preprocess", DEFAULT_PREPROCESS)
        if not isinstance(preprocess, str) or preprocess not in PRESETS:
            problems.append(f"meta names preprocessing {preprocess!r}, not one of {', '.join(PRESETS)}")
        names = meta.get("class_names")
        if names is not None and not (
            isinstance(names, list | tuple) and all(isinstance(n, str) for n in names)
        ):
            problems.append("meta's class_names is not a list of names")
    return problems


def read_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint dict safely (``weights_only=True``), with errors that name the file.

    Anything that is not an fcnseg checkpoint, down to a corrupt one, raises a ``CheckpointError``.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    if weights_format(path) != "checkpoint":
        out = path.with_name(f"{path.stem}{'-fcnseg' if path.suffix == '.pt' else ''}.pt")
        raise CheckpointError(
            f"{path} is a Caffe model, not an fcnseg checkpoint: load it with fcnseg.load, or convert "
            f"it: `fcnseg convert caffe {path} --out {out}`"
        )
    return checked_checkpoint(safe_load(path, map_location, "fcnseg checkpoint"), path)


def is_state_dict(data: Any) -> bool:
    """A bare dict of tensors, as ``torch.save(model.state_dict())`` writes (torchvision's files): no
    fcnseg checkpoint."""
    return isinstance(data, dict) and bool(data) and all(isinstance(v, torch.Tensor) for v in data.values())


def checked_checkpoint(data: Any, path: Path) -> dict[str, Any]:
    """``data``, as loaded from ``path``, if it is a whole fcnseg checkpoint; else a CheckpointError."""
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not an fcnseg checkpoint (no '{FORMAT}' format tag)")
    version = data.get("version", 0)
    if not isinstance(version, int):
        raise CheckpointError(f"{path}: checkpoint version {version!r} is not a number")
    if version > VERSION:
        raise CheckpointError(f"{path} has checkpoint version {version}; this fcnseg reads {VERSION}")
    problems = _structure_problems(data)
    if problems:
        raise CheckpointError(f"{path} is a damaged fcnseg checkpoint:\n  " + "\n  ".join(problems))
    return data


def model_from_checkpoint(data: dict[str, Any], source: str) -> FCN:
    """Rebuild the net a checkpoint describes and load its weights strictly."""
    try:  # on the meta device first: a damaged config may describe an enormous net
        with torch.device("meta"):
            expected = build_model(**data["config"]).state_dict()
    except (TypeError, ValueError, RuntimeError) as error:
        raise CheckpointError(f"{source}: its config describes no net ({error}): {data['config']}") from error
    state = data["state_dict"]
    problems = state_dict_problems(expected, state)
    if problems:
        raise CheckpointError(
            f"{source}: weights do not fit architecture {data['config']['arch']}:\n  " + "\n  ".join(problems)
        )
    model = build_model(**data["config"])
    model.load_state_dict(state)
    model.meta = dict(data.get("meta", {}))
    return model


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> FCN:
    """The model saved at ``path``, in eval mode, with ``model.meta`` restored."""
    return model_from_checkpoint(read_checkpoint(path, map_location), str(path)).eval()
