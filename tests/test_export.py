"""ONNX and TorchScript export: dynamic sizes with exact crops, checked against onnxruntime."""

import importlib.util
import json

import numpy as np
import pytest
import torch
from tiny_nets import tiny_fcn

import fcnseg
from fcnseg.cli import main
from fcnseg.infer.export import export_onnx, export_torchscript

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

SIZES = [(1, 64, 64), (2, 45, 77)]
"""The example size, and a batch of two at a size that is no multiple of 32 in either axis."""


def tiny() -> fcnseg.FCN:
    model = tiny_fcn(num_classes=3)
    model.meta = {"class_names": ["background", "cat", "dog"], "preprocess": "caffe"}
    return model


def assert_runs_like_torch(run, model):
    for n, h, w in SIZES:
        x = torch.randn(n, model.in_channels, h, w, generator=torch.Generator().manual_seed(h))
        with torch.no_grad():
            expected = model(x).numpy()
        got = run(x)
        assert got.shape == (n, 3, h, w)
        assert np.abs(got - expected).max() <= 1e-5 * np.abs(expected).max()


exporters = [pytest.param(False, id="torchscript-based")]
if importlib.util.find_spec("onnxscript") is not None:
    exporters.append(pytest.param(True, id="dynamo"))


@pytest.mark.parametrize("dynamo", exporters)
def test_onnx_matches_torch_at_every_size(tmp_path, dynamo):
    model = tiny()
    path = export_onnx(model, tmp_path / "m.onnx", dynamo=dynamo)
    graph = onnx.load(path)
    assert {"Shape", "Slice"} <= {node.op_type for node in graph.graph.node}  # crops by runtime size
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert_runs_like_torch(lambda x: session.run(["scores"], {"image": x.numpy()})[0], model)
    props = {p.key: p.value for p in graph.metadata_props}
    assert json.loads(props["class_names"]) == ["background", "cat", "dog"]
    assert props["preprocess"] == "caffe"
    assert json.loads(props["preprocess_params"])["mean"] == [104.00698793, 116.66876762, 122.67891434]
    assert json.loads(props["config"])["arch"] == "fcn8s"


def test_onnx_export_of_every_architecture(tiny_model, tmp_path):
    path = export_onnx(tiny_model, tmp_path / "m.onnx", dynamo=False)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert_runs_like_torch(lambda x: session.run(["scores"], {"image": x.numpy()})[0], tiny_model)


@pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated:DeprecationWarning")
def test_torchscript_matches_torch_at_every_size(tmp_path):
    model = tiny()
    extra = {"meta.json": ""}
    traced = torch.jit.load(str(export_torchscript(model, tmp_path / "m.pt")), _extra_files=extra)
    with torch.no_grad():
        assert_runs_like_torch(lambda x: traced(x).numpy(), model)
    assert json.loads(json.loads(extra["meta.json"])["class_names"]) == ["background", "cat", "dog"]


def test_export_command(tmp_path, capsys):
    weights = tmp_path / "tiny.pt"
    fcnseg.save_checkpoint(tiny(), weights)
    assert main(["export", "onnx", str(weights), "--out", str(tmp_path / "m.onnx"), "--legacy"]) == 0
    assert main(["export", "torchscript", str(weights), "--out", str(tmp_path / "m.pt")]) == 0
    assert "wrote" in capsys.readouterr().out
    assert (tmp_path / "m.onnx").is_file() and (tmp_path / "m.pt").is_file()
    assert main(["export", "onnx", str(weights), "--out", str(weights)]) == 2
    assert "is the weights file itself" in capsys.readouterr().err
