"""fcnseg.accel's inference twin: the trimmed-canvas net must equal the plain net for every input size."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from tiny_nets import family, random_net
from torch import nn

from fcnseg.accel import for_inference, inference
from fcnseg.accel.inference import FastFCN, _ConvReLU

SIZES = [(1, 1), (2, 3), (17, 23), (32, 32), (64, 48), (100, 7), (131, 1), (161, 203)]


def relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max())


@pytest.mark.parametrize("arch", ["fcn32s", "fcn16s", "fcn8s", "fcn8s-atonce", "fcn-alexnet"])
def test_equals_padded_net_at_every_size(arch: str) -> None:
    model = random_net(arch)
    fast = for_inference(model)
    for height, width in SIZES:
        x = 60 * torch.randn(2 if height * width < 1000 else 1, 3, height, width)
        with torch.no_grad():
            expected = model(x)
        got = fast(x)
        assert got.shape == expected.shape == (x.shape[0], 21, height, width)
        assert relative_error(got, expected) <= 1e-4, (arch, height, width)


def test_every_architecture_has_the_fast_path(tiny_model) -> None:
    """Trunks the canvas cannot run (GoogLeNet's inception modules, ResNet's residual blocks) run as
    written, same head; torchvision's FCN, which has no faster path, runs as it is."""
    fast = for_inference(tiny_model)
    for height, width in [(1, 1), (37, 50)]:
        x = 60 * torch.randn(2, tiny_model.in_channels, height, width)
        with torch.no_grad():
            expected = tiny_model(x)
        assert relative_error(fast(x), expected) <= 1e-4
    arch = tiny_model.config["arch"]
    if arch.startswith("tv-fcn"):
        assert fast is tiny_model
        return
    twins = list(fast.wrappers) if hasattr(fast, "wrappers") else [fast]  # a late fusion's
    assert all((twin.as_written is None) == (family(arch) in ("vgg", "alexnet")) for twin in twins)


def test_learned_upsampling_and_single_tower_alexnet() -> None:
    """Class-mixing deconvolutions keep the dense path; ungrouped AlexNet without LRN works too."""
    model = random_net("fcn8s", frozen_upsampling="none")
    with torch.no_grad():
        for name in ("upscore2", "upscore_pool4", "upscore8"):
            getattr(model, name).weight.normal_(0, 0.1)
    alexnet = random_net("fcn-alexnet", groups=1, lrn=False)
    for net in (model, alexnet):
        fast = for_inference(net)
        for height, width in [(1, 2), (45, 38)]:
            x = 60 * torch.randn(1, 3, height, width)
            with torch.no_grad():
                assert relative_error(fast(x), net(x)) <= 1e-4


def test_canvas_skips_the_padding() -> None:
    """At 500x500 VGG's first stage runs on 8 zeros of padding instead of 100, and copies back later."""
    fast = for_inference(random_net("fcn8s"))
    rows, cols = fast.plan(500, 500)
    assert rows.pad == cols.pad == (8, 8)
    # Canvas vs full length after pool1 and pool2; after pool3 the runs are too short: back to full.
    assert {step: len(index) for step, index in rows.reindex.items()} == {3: 269, 6: 151, 10: 88}
    assert [rows.lengths[step] for step in (3, 6, 10)] == [349, 175, 88]
    assert all(expand is None or expand.numel() > expand.max() for expand in rows.expand.values())


@pytest.mark.parametrize("im2col", [False, True])
@pytest.mark.parametrize(
    ("shape", "kernel", "stride", "padding"),
    [
        ((1, 6, 9, 9), 7, 1, 0),
        ((2, 6, 30, 30), 7, 1, 0),
        ((1, 5, 40, 33), 3, 1, 1),
        ((1, 3, 50, 50), 11, 4, 3),
    ],
)
def test_fused_convolution_routes_agree(shape, kernel, stride, padding, im2col, monkeypatch) -> None:
    """oneDNN (packed per input shape), im2col (huge kernels) and 1x1 products all equal conv + ReLU."""
    if im2col:
        monkeypatch.setattr(inference, "HUGE_KERNEL", 0)
    torch.manual_seed(1)
    conv = nn.Conv2d(shape[1], 16, kernel, stride, padding)
    fused = _ConvReLU(conv, relu=True)
    fused.pack()
    assert fused.as_matrix == im2col
    pointwise = _ConvReLU(nn.Conv2d(16, 8, 1), relu=False)
    pointwise.pack()
    for batch in (shape, (3, *shape[1:])):
        x = torch.randn(batch).contiguous(memory_format=torch.channels_last)
        with torch.no_grad():
            y = fused(x)
            assert relative_error(y, F.relu(conv(x))) <= 1e-5
            assert relative_error(pointwise(y), F.conv2d(y, pointwise.weight, pointwise.bias)) <= 1e-5


@pytest.mark.parametrize("arch", ["fcn8s", "fcn-alexnet", "fcn32s-googlenet"])  # the last two have LRN
def test_bfloat16_keeps_most_labels(arch) -> None:
    model = random_net(arch)
    x = 60 * torch.randn(1, 3, 40, 56)
    with torch.no_grad():
        expected = model(x)
    got = for_inference(model, torch.bfloat16)(x)
    assert got.dtype == torch.float32
    assert (got.argmax(1) == expected.argmax(1)).float().mean() > 0.9


def test_rejects_wrong_input() -> None:
    fast = FastFCN(random_net("fcn32s"))
    with pytest.raises(ValueError, match="expected input"):
        fast(torch.zeros(1, 4, 8, 8))
