"""Exporting a model to ONNX and TorchScript with dynamic batch, height and width.

The crops of an FCN (``model.output_offset``, ``model.skip_offsets``) slice by
the runtime input size (``x.shape``), and both exporters record that as
``Shape`` -> ``Slice`` rather than as constants, so the exported graph crops
exactly at every input size, not only the example's.

ONNX: the ``torch.export``-based exporter (torch's default) when ``onnxscript``
is installed; otherwise the TorchScript-based one (``dynamo=False``), which
torch deprecates but still ships, needs nothing extra and is much faster.
Both give the same graph numerically.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import warnings
from pathlib import Path
from typing import Any

import torch

import fcnseg
from fcnseg.accel.graphs import CanvasGraph, onnx_graph, padded_graph
from fcnseg.accel.quantize import Calibration
from fcnseg.data.preprocess import Preprocessing, get_preprocessing, preprocessing_of
from fcnseg.errors import MissingExtraError
from fcnseg.files import atomic_write_path
from fcnseg.models.fcn import FCN

__all__ = ["export_onnx", "export_runtime_onnx", "export_torchscript", "onnx_metadata"]

EXAMPLE_SIZE = 64
"""Side of the example input traced; any size works since every dimension but channels is dynamic."""

LEGACY_OPSET = 17

EXTRA = "fcnseg[export]"
"""What to install for ONNX export: onnx, onnxscript (the newer exporter) and onnxruntime (to run it)."""


def onnx_metadata(model: FCN) -> dict[str, str]:
    """What a runtime needs beside the graph: classes, preprocessing, input/output layout.

    Values are strings (ONNX ``metadata_props``); lists and dicts are JSON.
    """
    meta: dict[str, Any] = dict(getattr(model, "meta", {}))
    preprocess = get_preprocessing(preprocessing_of(model))
    class_names = meta.get("class_names") or [str(i) for i in range(model.num_classes)]
    return {
        "fcnseg_version": fcnseg.__version__,
        "config": json.dumps(getattr(model, "config", {})),
        "class_names": json.dumps(list(class_names)),
        "num_classes": str(model.num_classes),
        "preprocess": preprocess.name,
        "preprocess_params": json.dumps(
            {"parts": [_params(part) for part in preprocess.parts]}
            if preprocess.parts
            else _params(preprocess)
        ),
        "input": "image: (N, 3, H, W) float32, preprocessed as preprocess_params say",
        "output": "scores: (N, C, H, W) float32 class scores (logits); argmax over C gives labels",
    }


def _params(preset: Preprocessing) -> dict[str, Any]:
    """One preset's arithmetic; ``log``: the natural log of the value (at least 1) comes first."""
    params = {"bgr": preset.bgr, "scale": preset.scale, "mean": preset.mean, "std": preset.std}
    return {**params, "log": True} if preset.log else params


def _export_graph(model: FCN, path: Path, dynamo: bool, opset: int | None) -> None:
    example = torch.zeros(1, model.in_channels, EXAMPLE_SIZE, EXAMPLE_SIZE)
    names = {"input_names": ["image"], "output_names": ["scores"]}
    if dynamo:
        from torch.export import Dim

        dims = {0: Dim("batch"), 2: Dim("height"), 3: Dim("width")}
        onnx_logger = logging.getLogger("torch.onnx")
        level = onnx_logger.level
        onnx_logger.setLevel(logging.ERROR)  # "torchvision is not installed": irrelevant here
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", FutureWarning)  # torch's own pytree deprecations
                torch.onnx.export(
                    model, (example,), path, dynamo=True, dynamic_shapes=(dims,), external_data=False,
                    opset_version=opset, verbose=False, **names,
                )  # fmt: skip
        finally:
            onnx_logger.setLevel(level)
        return
    axes = {0: "batch", 2: "height", 3: "width"}
    with warnings.catch_warnings():
        # the shape checks in forward become constants: expected, they only guard misuse
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(
            model, (example,), path, dynamo=False, opset_version=opset or LEGACY_OPSET,
            dynamic_axes={"image": axes, "scores": axes}, **names,
        )  # fmt: skip


def export_onnx(
    model: FCN, path: str | os.PathLike, *, dynamo: bool | None = None, opset: int | None = None
) -> Path:
    """Write ``model`` as ONNX: input ``image`` (N, 3, H, W) -> output ``scores`` (N, C, H, W).

    Batch, height and width are dynamic; class names and preprocessing are in the
    model's ``metadata_props`` (see ``onnx_metadata``). ``dynamo=None`` picks the
    ``torch.export``-based exporter when ``onnxscript`` is installed, else the
    TorchScript-based one. The model is put in eval mode on the CPU.
    """
    try:
        import onnx  # optional: only exporting needs it
    except ImportError as error:
        raise MissingExtraError(f"ONNX export needs the export extra: pip install '{EXTRA}'") from error

    if dynamo is None:
        dynamo = importlib.util.find_spec("onnxscript") is not None
    model = model.eval().cpu()

    def write(tmp: Path) -> None:
        with torch.no_grad():
            _export_graph(model, tmp, dynamo, opset)
        graph = onnx.load(tmp)
        onnx.helper.set_model_props(graph, onnx_metadata(model))
        onnx.save(graph, tmp)

    return atomic_write_path(Path(path), write)


def export_runtime_onnx(
    model: FCN,
    path: str | os.PathLike,
    *,
    size: tuple[int, int] | None = None,
    calibration: Calibration | None = None,
) -> Path:
    """Write the graph a runtime backend runs (:mod:`fcnseg.accel.runtimes`) as ONNX.

    With ``size`` (H, W): the trimmed canvas graph for inputs of that size (dynamic batch), the
    work the padded net spends on its padding skipped; without, the padded net for any size.
    With ``calibration``: int8, the trunk between QuantizeLinear/DequantizeLinear pairs (weights
    per output channel, stored as int8) that onnxruntime and OpenVINO run in integers. The
    metadata says which graph it is (``graph``) and holds the calibration (``int8``).
    """
    try:
        import onnx
    except ImportError as error:
        raise MissingExtraError(f"ONNX export needs the export extra: pip install '{EXTRA}'") from error

    model = model.eval().cpu()
    if size is None:
        module, example, described = (
            padded_graph(model, calibration),
            torch.zeros(1, model.in_channels, EXAMPLE_SIZE, EXAMPLE_SIZE),
            "padded net, any input size",
        )
    else:
        module, example = CanvasGraph(model, *size, calibration), torch.zeros(1, model.in_channels, *size)
        described = f"trimmed canvas for {size[0]}x{size[1]} inputs only"
    meta = {**onnx_metadata(model), "graph": described, "precision": "int8" if calibration else "fp32"}
    if calibration is not None:
        meta["int8"] = json.dumps(calibration.to_dict())

    def write(tmp: Path) -> None:
        graph = onnx_graph(module, example, dynamic_size=size is None)
        onnx.helper.set_model_props(graph, meta)
        onnx.save(graph, tmp)

    return atomic_write_path(Path(path), write)


def export_torchscript(model: FCN, path: str | os.PathLike) -> Path:
    """Write ``model`` traced to TorchScript: (N, 3, H, W) -> (N, C, H, W) for any N, H, W.

    Tracing records the crops as slices by the runtime size, so they stay exact
    at every size (``torch.jit.script`` cannot compile the head's ``getattr``
    lookups). ``torch.jit`` is deprecated in torch 2.13 but still loads anywhere
    libtorch runs. Class names and preprocessing travel as ``meta.json``. The model
    is put in eval mode on the CPU.
    """
    model = model.eval().cpu()
    example = torch.zeros(1, model.in_channels, EXAMPLE_SIZE, EXAMPLE_SIZE)
    extra = {"meta.json": json.dumps(onnx_metadata(model))}
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore", torch.jit.TracerWarning)  # shape checks become constants
        warnings.simplefilter("ignore", DeprecationWarning)  # torch.jit itself: known, see above
        traced = torch.jit.trace(model, example, check_trace=False)
        return atomic_write_path(Path(path), lambda tmp: torch.jit.save(traced, str(tmp), _extra_files=extra))
