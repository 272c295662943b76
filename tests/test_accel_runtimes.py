"""The runtime backends (fcnseg.accel.runtimes): onnxruntime and OpenVINO on the trimmed graph, fp32
and int8, against ``model(x)``; their cache, their fallbacks, and the faces that choose them."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch

import fcnseg
from fcnseg.accel.graphs import CanvasGraph, onnx_graph
from fcnseg.accel.quantize import Calibration, calibrate, quantized_net
from fcnseg.accel.runtimes import FIXED_SIZES, RuntimeFCN, runtime_forward
from fcnseg.errors import ConfigError, MissingExtraError
from fcnseg.infer.predict import inference_forward, predict

WIDTHS = (4, 8, 8, 16, 16, 32)


def seeded_net(seed: int = 0, classes: int = 5) -> torch.nn.Module:
    """A narrow FCN-8s with He-scaled random weights (scores far from ties)."""
    torch.manual_seed(seed)
    model = fcnseg.build_model("fcn8s", classes, widths=WIDTHS).eval()
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.Conv2d):
                fan_in = module.in_channels * module.kernel_size[0] * module.kernel_size[1]
                module.weight.normal_(0, (2 / fan_in) ** 0.5)
                module.bias.normal_(0, 0.1)
    return model


def images(count: int, height: int, width: int, seed: int) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (height, width, 3), dtype=np.uint8) for _ in range(count)]


def relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max())


def test_canvas_graph_equals_the_plain_net_in_torch():
    model = seeded_net()
    x = torch.randn(2, 3, 37, 51) * 50
    with torch.no_grad():
        assert relative(CanvasGraph(model, 37, 51)(x), model(x)) < 1e-5
        with pytest.raises(ValueError, match=r"takes \(37, 51\) inputs"):
            CanvasGraph(model, 37, 51)(x[..., :50])


def test_int8_graph_quantizes_every_trunk_convolution_and_stores_int8_weights():
    pytest.importorskip("onnx")
    model = seeded_net()
    calibration = calibrate(model, images(2, 40, 44, seed=1))
    proto = onnx_graph(CanvasGraph(model, 40, 44, calibration), torch.zeros(1, 3, 40, 44), False)
    ops = [node.op_type for node in proto.graph.node]
    convolutions = sum(isinstance(m, torch.nn.Conv2d) for m in model.backbone.modules())
    # each trunk convolution reads a dequantized input and dequantized weights; the head stays float
    produced = {out: node for node in proto.graph.node for out in node.output}
    quantized = [
        node
        for node in proto.graph.node
        if node.op_type == "Conv"
        and all(produced.get(i) and produced[i].op_type == "DequantizeLinear" for i in node.input[:2])
    ]
    assert len(quantized) == convolutions
    assert ops.count("Conv") == convolutions + 3  # score_fr, score_pool4, score_pool3
    weights = {i.name: i for i in proto.graph.initializer}
    assert all(
        weights[produced[node.input[1]].input[0]].data_type == 3
        for node in quantized  # INT8
    )


@pytest.mark.parametrize("backend", ["onnxruntime", "openvino"])
def test_fp32_backend_equals_the_plain_net_and_is_cached(backend):
    pytest.importorskip(backend)
    model = seeded_net()
    run = runtime_forward(model, backend, "fp32")
    assert isinstance(run, RuntimeFCN) and runtime_forward(model, backend, "fp32") is run
    x = torch.randn(2, 3, 45, 38) * 50
    with torch.no_grad():
        expected = model(x)
    got = run(x)
    assert relative(got, expected) < 1e-4
    assert run.graphs[(45, 38)] is not None and run.check_errors[(45, 38)] < 1e-4
    assert torch.equal(got.argmax(1), expected.argmax(1))
    run(x[:1])  # another batch of the same size: the same graph
    assert list(run.graphs) == [(45, 38)]
    with torch.no_grad():
        model.score_fr.bias.add_(1.0)  # new weights: a new runtime
    assert runtime_forward(model, backend, "fp32") is not run


def test_sizes_beyond_the_fixed_ones_share_the_padded_graph():
    pytest.importorskip("onnxruntime")
    model = seeded_net()
    run = runtime_forward(model, "onnxruntime", "fp32")
    sizes = [(20 + i, 24) for i in range(FIXED_SIZES + 2)]
    for size in sizes:
        x = torch.randn(1, 3, *size) * 50
        with torch.no_grad():
            assert relative(run(x), model(x)) < 1e-4
    engines = [run.graphs[s] for s in sizes]
    assert len({id(e) for e in engines[:FIXED_SIZES]}) == FIXED_SIZES
    assert engines[FIXED_SIZES] is engines[FIXED_SIZES + 1] is run.padded


def test_sizes_whose_graph_failed_are_not_built_again(monkeypatch):
    """A runtime that refuses every graph: each size is tried once, and beyond the fixed sizes the
    padded graph is tried once for all; never a build per image."""
    pytest.importorskip("onnxruntime")
    from fcnseg.accel import runtimes

    builds = []

    def refusing(*args):
        builds.append(args)
        raise RuntimeError("this runtime refuses the graph")

    monkeypatch.setitem(runtimes._ENGINES, "onnxruntime", refusing)
    model = seeded_net()
    run = runtime_forward(model, "onnxruntime", "fp32")
    sizes = [(20 + i, 24) for i in range(FIXED_SIZES + 3)]
    for size in [*sizes, *sizes]:
        x = torch.randn(1, 3, *size) * 50
        with torch.no_grad():
            assert relative(run(x), model(x)) < 1e-4  # torch's fast path stands in
    assert len(builds) == FIXED_SIZES + 1 and run.padded is None


@pytest.mark.parametrize("backend", ["onnxruntime", "openvino"])
def test_int8_backend_keeps_the_labels_of_fp32(backend):
    pytest.importorskip(backend)
    model = seeded_net()
    calibration = calibrate(model, images(3, 48, 56, seed=1))
    assert calibration.images == 3 and calibration.weight_bits in (7, 8)
    picture = images(1, 48, 56, seed=2)[0]
    labels = predict(model, picture, backend=backend, precision="int8", calibration=calibration)
    expected = predict(model, picture)
    assert labels.shape == expected.shape and labels.dtype == expected.dtype
    assert (labels == expected).mean() > 0.95
    run = runtime_forward(model, backend, "int8", calibration)
    assert run.check_errors[(48, 56)] < 0.05  # against the same graph in torch


def test_quantized_net_leaves_the_net_alone():
    model = seeded_net()
    calibration = calibrate(model, images(1, 30, 30, seed=1))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    twin = quantized_net(model, calibration)
    x = torch.randn(1, 3, 30, 33) * 50
    with torch.no_grad():
        assert relative(twin(x), model(x)) < 0.1
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert type(model.backbone.conv1_1) is torch.nn.Conv2d


def test_a_hooked_net_runs_on_torch_and_says_why(caplog):
    pytest.importorskip("onnxruntime")
    model = seeded_net()
    seen = []
    model.score_fr.register_forward_hook(lambda *_: seen.append(1))
    with caplog.at_level(logging.WARNING, logger="fcnseg.accel"):
        run = runtime_forward(model, "onnxruntime", "fp32")
    assert not isinstance(run, RuntimeFCN)
    assert "onnxruntime fp32: the net runs on torch: hooks are registered on score_fr" in caplog.text
    run(torch.randn(1, 3, 20, 20))
    assert seen  # the hook saw the forward


def test_a_graph_that_fails_its_check_runs_on_torch(monkeypatch, caplog):
    pytest.importorskip("onnxruntime")
    from fcnseg.accel import runtimes

    model = seeded_net()
    real = runtimes._ENGINES["onnxruntime"]

    def off_by_one(*args):  # a runtime that computes something else
        engine = real(*args)
        return lambda x: engine(x) + 1.0

    monkeypatch.setitem(runtimes._ENGINES, "onnxruntime", off_by_one)
    run = runtime_forward(model, "onnxruntime", "fp32")
    x = torch.randn(1, 3, 26, 30) * 50
    with caplog.at_level(logging.WARNING, logger="fcnseg.accel"):
        got = run(x)
    with torch.no_grad():
        assert relative(got, model(x)) < 1e-4  # torch's fast path stood in
    assert run.graphs[(26, 30)] is None
    assert "onnxruntime fp32 at 26x30 runs on torch: it differs from the plain net" in caplog.text


def test_clear_errors(monkeypatch):
    model = seeded_net()
    with pytest.raises(ConfigError, match="int8 runs on a runtime backend"):
        inference_forward(model, "int8")
    with pytest.raises(ConfigError, match="backend must be one of torch, onnxruntime, openvino"):
        inference_forward(model, "fp32", "tensorrt")
    pytest.importorskip("onnxruntime")
    with pytest.raises(ConfigError, match="int8 needs calibration"):
        inference_forward(model, "int8", "onnxruntime")
    import builtins

    real_import = builtins.__import__

    def no_openvino(name, *args, **kwargs):
        if name == "openvino":
            raise ImportError("no openvino")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_openvino)
    with pytest.raises(MissingExtraError, match=r"pip install 'fcnseg\[openvino\]'"):
        inference_forward(model, "fp32", "openvino")


def test_calibration_from_a_folder_is_computed_once(tmp_path):
    from PIL import Image

    from fcnseg.accel.quantize import calibration_of

    for i, picture in enumerate(images(2, 30, 34, seed=4)):
        Image.fromarray(picture).save(tmp_path / f"{i}.png")
    model = seeded_net()
    first = calibration_of(model, tmp_path)
    assert isinstance(first, Calibration) and first.images == 2
    assert calibration_of(model, str(tmp_path)) is first
    assert first == calibrate(model, images(2, 30, 34, seed=4), weight_bits=first.weight_bits)
    with pytest.raises(ValueError, match="holds no image files"):
        calibration_of(model, tmp_path / "..")


def test_a_cached_runtime_does_not_keep_its_net_alive():
    pytest.importorskip("onnxruntime")
    import gc
    import weakref

    model = seeded_net()
    run = runtime_forward(model, "onnxruntime", "fp32")
    run(torch.randn(1, 3, 20, 22) * 50)
    alive = weakref.ref(model)
    del model, run
    gc.collect()
    assert alive() is None


def test_a_precision_the_runtime_lacks_runs_on_torch_and_says_why(caplog):
    pytest.importorskip("onnxruntime")
    model = seeded_net()
    with caplog.at_level(logging.WARNING, logger="fcnseg.accel"):
        run = runtime_forward(model, "onnxruntime", "bf16")
    assert not isinstance(run, RuntimeFCN)
    assert (
        "onnxruntime bf16: the net runs on torch: onnxruntime runs fp32 and int8 on this CPU" in caplog.text
    )


def test_int8_on_the_padded_graph_of_dynamic_size(monkeypatch):
    pytest.importorskip("onnxruntime")
    from fcnseg.accel import runtimes

    monkeypatch.setattr(runtimes, "FIXED_SIZES", 0)  # every size on the padded graph
    model = seeded_net()
    calibration = calibrate(model, images(2, 40, 40, seed=1))
    run = runtime_forward(model, "onnxruntime", "int8", calibration)
    for size in ((33, 41), (40, 36)):
        x = torch.from_numpy(np.stack(images(1, *size, seed=5))).permute(0, 3, 1, 2).float() - 120
        with torch.no_grad():
            expected = model(x)
        got = run(x)
        assert run.graphs[size] is run.padded is not None
        assert (got.argmax(1) == expected.argmax(1)).float().mean() > 0.95
