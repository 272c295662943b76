"""The faces of the runtime backends: ``fcnseg export --int8 --size``, ``predict``, ``evaluate`` and
``serve`` with ``--backend`` and ``--precision int8``."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from test_accel_runtimes import images, seeded_net

import fcnseg
from fcnseg.cli import main
from fcnseg.data.preprocess import preprocess
from fcnseg.infer.predict import predict
from fcnseg.tasks import get_task
from fcnseg.tasks.common import InferenceOptions


@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> Path:
    model = seeded_net(classes=6)  # the synthetic set's
    model.meta = {"class_names": ["bg", "a", "b", "c", "d", "e"], "preprocess": "caffe"}
    path = tmp_path_factory.mktemp("weights") / "net.pt"
    fcnseg.save_checkpoint(model, path)
    return path


@pytest.fixture(scope="module")
def calibration(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("calibration")
    for i, picture in enumerate(images(3, 40, 48, seed=11)):
        Image.fromarray(picture).save(folder / f"{i}.png")
    return folder


def test_export_int8_trimmed_graph_runs_in_onnxruntime(weights, calibration, tmp_path, capsys):
    ort = pytest.importorskip("onnxruntime")
    onnx = pytest.importorskip("onnx")
    out = tmp_path / "net.int8.onnx"
    args = ["export", "onnx", str(weights), "--out", str(out), "--int8", "--calibration", str(calibration)]
    assert main([*args, "--size", "40x48"]) == 0
    assert "int8, trimmed for 40x48" in capsys.readouterr().out
    meta = {p.key: p.value for p in onnx.load(out).metadata_props}
    assert meta["graph"] == "trimmed canvas for 40x48 inputs only" and meta["precision"] == "int8"
    assert json.loads(meta["int8"])["images"] == 3
    model = fcnseg.load(weights)
    picture = images(1, 40, 48, seed=3)[0]
    x = preprocess(picture, "caffe")[None].numpy()
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    labels = session.run(None, {"image": np.concatenate([x, x])})[0].argmax(1)
    assert labels.shape == (2, 40, 48)
    assert (labels[0] == predict(model, picture)).mean() > 0.95
    assert main(["export", "onnx", str(weights), "--out", str(tmp_path / "x.onnx"), "--int8"]) != 0
    assert "--int8 needs --calibration DIR" in capsys.readouterr().err


def test_predict_and_evaluate_on_a_runtime(weights, calibration, tmp_path, capsys):
    pytest.importorskip("openvino")
    folder = tmp_path / "in"
    folder.mkdir()
    pictures = images(2, 36, 44, seed=5)
    for i, picture in enumerate(pictures):
        Image.fromarray(picture).save(folder / f"{i}.png")
    out = tmp_path / "out"
    args = ["predict", str(weights), str(folder), "--out", str(out), "--backend", "openvino"]
    assert main([*args, "--precision", "int8", "--calibration", str(calibration)]) == 0
    model = fcnseg.load(weights)
    for i, picture in enumerate(pictures):
        assert (np.asarray(Image.open(out / f"{i}.png")) == predict(model, picture)).mean() > 0.95
    capsys.readouterr()
    evaluate = ["evaluate", str(weights), "synthetic", "--images", "3", "--json"]
    assert main(evaluate) == 0
    on_torch = json.loads(capsys.readouterr().out)
    assert main([*evaluate, "--backend", "openvino"]) == 0
    on_openvino = json.loads(capsys.readouterr().out)
    assert on_openvino["mean_iu"] == pytest.approx(on_torch["mean_iu"], abs=1e-3)


def test_serve_runs_on_the_backend_asked_for(weights):
    pytest.importorskip("starlette")
    pytest.importorskip("onnxruntime")
    from fcnseg.serve.app import Predictor

    model = fcnseg.load(weights)
    predictor = Predictor(model, "net.pt", options=InferenceOptions(backend="onnxruntime"))
    assert predictor.info()["backend"] == "onnxruntime"
    result = predictor.predict(_png(Image.fromarray(images(1, 30, 34, seed=9)[0])), "x.png")
    np.testing.assert_array_equal(result.output[0], predict(model, result.image))


def test_tasks_without_runtimes_refuse_them():
    for task in ("edges", "skeleton", "detection"):
        with pytest.raises(ValueError, match="--backend openvino: the runtime backends and int8 run FCN"):
            get_task(task).check_options(None, InferenceOptions(backend="openvino"), "net.pt")
        with pytest.raises(ValueError, match="--precision int8"):
            get_task(task).check_options(None, InferenceOptions(precision="int8"), "net.pt")


def _png(image: Image.Image) -> bytes:
    import io

    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()
