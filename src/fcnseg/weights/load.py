"""``fcnseg.load``: one call for any weights file fcnseg understands."""

from __future__ import annotations

import os
from pathlib import Path

import torch

from fcnseg.models.fcn import FCN
from fcnseg.models.ssd import SSD
from fcnseg.weights import hub
from fcnseg.weights.checkpoint import load_checkpoint, weights_format


def load(
    path: str | os.PathLike, arch: str | None = None, map_location: str | torch.device = "cpu"
) -> FCN | SSD:
    """A ready model (eval mode) from an fcnseg checkpoint, an original Caffe FCN or SSD model, or a
    published model by name (``"voc-fcn8s"``; ``fcnseg weights list``), downloaded and converted once.

    Caffe models are recognised by their ``.caffemodel`` suffix or their first bytes
    (``weights_format``); ``arch`` is only needed to check a Caffe
    file against what you expect, since the file itself says which net it holds.
    """
    path = Path(path)
    if hub.is_name(path):
        path = hub.checkpoint(str(path))
    if not path.is_file():
        raise FileNotFoundError(f"weights file not found: {path}")
    if weights_format(path) == "caffe":
        from fcnseg.weights.caffe import load_caffe  # the protobuf schema, for Caffe files only

        return load_caffe(path, arch)
    model = load_checkpoint(path, map_location)
    if arch is not None and model.config["arch"] != arch:
        raise ValueError(f"{path} holds an {model.config['arch']} model, not {arch}")
    return model


def segmentation_only(model: torch.nn.Module, source: str | os.PathLike, command: str) -> FCN:
    """``model`` if it segments with one output; a ValueError saying what to do with an edge, skeleton
    or box net, or SIFT Flow's two heads."""
    task = getattr(model, "task", "segmentation")
    if task == "segmentation":
        return model
    raise ValueError(
        f"{source} holds a net of the {task} task ({model.config['arch']}); fcnseg {command} works on "
        "segmentation nets of one output (fcnseg predict and evaluate take every task's)"
    )
