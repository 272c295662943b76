"""Every net is a plain module: hooks see each layer, torch.fx traces it, and the speed layer that the
tools use never diverges from ``model(x)`` (a subclass, a hook, a net of one's own run as written)."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch
from torch import nn

import fcnseg
from fcnseg.accel import for_inference, for_training, plain_reason
from fcnseg.accel.inference import FastFCN
from fcnseg.accel.training import TrimmedFCN
from fcnseg.models.registry import BUILDERS, DETECTORS

SIDES = {"hed": (4, 8, 8, 16, 16), "fsds": (4, 8, 8, 16, 16)}
DETECTOR_WIDTHS = (4, 8, 8, 16, 16, 32)


def small(arch: str) -> nn.Module:
    """The architecture at narrow widths, with random weights in every layer (score layers too)."""
    from tiny_nets import tiny_widths

    widths = SIDES.get(arch) or (DETECTOR_WIDTHS if arch in DETECTORS else tiny_widths(arch))
    torch.manual_seed(0)
    model = fcnseg.build_model(arch, widths=widths).eval()
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.Conv2d):
                module.weight.normal_(0, (2 / module.weight[0].numel()) ** 0.5)
                if module.bias is not None:  # ResNet's convolutions have none (BatchNorm follows)
                    module.bias.normal_(0, 0.1)
    return model


def sample(model: nn.Module) -> torch.Tensor:
    size = (300, 300) if type(model).__name__ == "SSD" else (37, 45)
    return torch.randn(1, model.in_channels, *size, generator=torch.Generator().manual_seed(1))


def outputs(result) -> list[torch.Tensor]:
    return list(result) if isinstance(result, tuple) else [result]


def relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max())


@pytest.mark.parametrize("arch", sorted(BUILDERS))
def test_every_layer_is_called_as_a_module(arch: str) -> None:
    model = small(arch)
    layers = {
        name: m
        for name, m in model.named_modules()
        if isinstance(m, nn.Conv2d | nn.ConvTranspose2d | nn.MaxPool2d)
    }
    fired: set[str] = set()
    for name, layer in layers.items():
        layer.register_forward_hook(lambda *_, name=name: fired.add(name))
    with torch.no_grad():
        model(sample(model))
    assert len(layers) > 10 and sorted(set(layers) - fired) == []


@pytest.mark.parametrize("arch", sorted(set(BUILDERS) - set(DETECTORS)))
def test_torch_fx_traces_every_net(arch: str) -> None:
    model = small(arch)
    traced = torch.fx.symbolic_trace(model)
    called = {node.target for node in traced.graph.nodes if node.op == "call_module"}
    convolutions = {name for name, m in model.named_modules() if isinstance(m, nn.Conv2d)}
    assert convolutions and convolutions <= called  # each layer a node of the graph, as written
    for size in [(37, 45), (20, 13)]:  # the crops follow the input's size: nothing is baked in
        x = torch.randn(2, model.in_channels, *size, generator=torch.Generator().manual_seed(size[0]))
        with torch.no_grad():
            expected = model(x)
            assert relative_error(traced(x), expected) <= 1e-5
    with pytest.raises(ValueError, match="expected input"):
        traced(torch.zeros(1, model.in_channels + 1, 9, 9))


@pytest.mark.parametrize("arch", sorted(DETECTORS))
def test_torch_export_exports_the_detector(arch: str) -> None:
    model = small(arch)
    x = sample(model)
    exported = torch.export.export(model, (x,))
    with torch.no_grad():
        for got, expected in zip(exported.module()(x), model(x), strict=True):
            assert relative_error(got, expected) <= 1e-5
        with pytest.raises(ValueError, match="too small for SSD"):
            model(torch.zeros(1, 3, 100, 100))


def class_two_everywhere(_module, _inputs, output: torch.Tensor) -> torch.Tensor:
    boosted = output.clone()
    boosted[:, 2] += 1000
    return boosted


class Boosted(fcnseg.FCN):
    """A user's subclass whose forward changes the scores."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scores = super().forward(x)
        return scores + 1000 * torch.nn.functional.one_hot(torch.tensor(2), scores.shape[1]).view(1, -1, 1, 1)


def image(height: int = 37, width: int = 45) -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, (height, width, 3), dtype=np.uint8)


def plain_labels(model: nn.Module, rgb: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return model(fcnseg.preprocess(rgb[None])).argmax(1)[0].numpy()


def test_predict_follows_a_hook_that_changes_the_scores(caplog) -> None:
    model = small("fcn8s")
    assert (fcnseg.predict(model, image()) == 2).mean() < 0.5
    assert isinstance(for_inference(model), FastFCN)
    model.upscore8.register_forward_hook(class_two_everywhere)
    with caplog.at_level(logging.WARNING, logger="fcnseg.accel"):
        labels = fcnseg.predict(model, image())
    assert (labels == 2).all() and np.array_equal(labels, plain_labels(model, image()))
    assert "hooks are registered on upscore8" in caplog.text
    assert plain_reason(model) is not None and for_inference(model) is model


def test_predict_follows_a_subclass_forward(caplog) -> None:
    base = small("fcn8s")
    model = Boosted(fcnseg.build_model("fcn8s", widths=(4, 8, 8, 16, 16, 32)).backbone, 21, skips=base.skips)
    model.load_state_dict(base.state_dict())
    with caplog.at_level(logging.WARNING, logger="fcnseg.accel"):
        labels = fcnseg.predict(model.eval(), image())
    assert (labels == 2).all() and np.array_equal(labels, plain_labels(model, image()))
    assert "a Boosted is not one of fcnseg's own nets" in caplog.text


def test_evaluation_follows_a_hook() -> None:
    from fcnseg.metrics.segmentation import evaluate_confusion

    model = small("fcn8s")
    pairs = [(image(), np.full((37, 45), 2, np.uint8)), (image(20, 30), np.full((20, 30), 2, np.uint8))]
    assert evaluate_confusion(model, pairs, 21)[2, 2] < 37 * 45 + 20 * 30
    model.upscore8.register_forward_hook(class_two_everywhere)
    assert evaluate_confusion(model, pairs, 21)[2, 2] == 37 * 45 + 20 * 30


def test_training_wrapper_shares_the_parameters_and_refuses_what_it_does_not_know() -> None:
    model = small("fcn8s").train()
    wrapper = for_training(model)
    assert isinstance(wrapper, TrimmedFCN) and wrapper.model is model
    assert {id(p) for p in wrapper.parameters()} == {id(p) for p in model.parameters()}
    handle = model.backbone.conv1_1.register_forward_pre_hook(lambda *_: None)
    assert for_training(model) is model
    handle.remove()
    assert isinstance(for_training(model), TrimmedFCN)
    traced = torch.fx.symbolic_trace(model)
    assert for_training(traced) is traced  # a net of another class runs as written


def test_a_wrapper_that_disagrees_with_the_net_is_not_used(monkeypatch, caplog) -> None:
    """The self-check: a wrapper whose head goes wrong is caught before any image is scored."""
    from fcnseg.accel import head

    model = small("fcn16s")
    real = head.upsample

    def shifted(layer, x):
        return real(layer, x).roll(1, dims=-1)

    monkeypatch.setattr(head, "upsample", shifted)
    with caplog.at_level(logging.WARNING, logger="fcnseg.accel"):
        assert for_inference(model) is model
        assert for_training(model.train()) is model
    assert "the output differs from the plain net's" in caplog.text


def test_serve_follows_a_hook() -> None:
    """The served label PNG is the argmax of ``model(x)``, whatever a hook makes of the scores."""
    import io

    from PIL import Image
    from starlette.testclient import TestClient

    from fcnseg.serve import app as web

    model = small("fcn8s")
    model.upscore8.register_forward_hook(class_two_everywhere)
    client = TestClient(web.create_app(web.Predictor(model, "hooked.pt")))
    buffer = io.BytesIO()
    Image.fromarray(image()).save(buffer, format="PNG")
    response = client.post("/segment", files={"image": ("x.png", buffer.getvalue(), "image/png")})
    assert response.status_code == 200
    labels = np.array(Image.open(io.BytesIO(response.content)))
    assert (labels == 2).all() and np.array_equal(labels, plain_labels(model, image()))
