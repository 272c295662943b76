"""fcnseg.models.canvas: training on the trimmed canvas gives the padded net's loss and gradients.

Gradients are compared in float64: a ReLU whose input lands within rounding of
zero passes or stops the gradient depending on the order of a sum, so float32
gradients of any two exact implementations can differ at a kink; float64 leaves
no room for that, and any real difference (a missed copy, a wrong mask) shows.
"""

from __future__ import annotations

from collections import OrderedDict

import pytest
import torch
import torch.nn.functional as F
from tiny_nets import random_net
from torch import nn

from fcnseg.models import canvas
from fcnseg.models.fcn import FCN
from fcnseg.models.layers import bilinear_upsampler
from fcnseg.models.vgg import vgg16_backbone

ARCHS = ["fcn32s", "fcn16s", "fcn8s", "fcn8s-atonce", "fcn-alexnet"]
# (height, width, batch): a single pixel, odd sizes, and batches the shared frame applies to
SIZES = [(1, 1, 2), (2, 3, 2), (17, 23, 1), (45, 38, 3), (64, 96, 4)]


def relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.detach(), b.detach()
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-300)) if a.numel() else 0.0


def train_step(model: nn.Module, x: torch.Tensor, labels: torch.Tensor, trim: bool, seed: int = 5):
    """Loss, every parameter's gradient, and the random state after one forward/backward."""
    model.trim_padding = trim
    model.zero_grad(set_to_none=True)
    torch.manual_seed(seed)  # the same dropout masks, if both paths draw them alike
    loss = F.cross_entropy(model(x), labels, reduction="sum")
    loss.backward()
    grads = {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}
    return loss.detach(), grads, torch.get_rng_state()


def assert_same_training(model: nn.Module, x: torch.Tensor, labels: torch.Tensor) -> None:
    padded_loss, padded, padded_rng = train_step(model, x, labels, trim=False)
    loss, grads, rng = train_step(model, x, labels, trim=True)
    assert relative_error(loss, padded_loss) <= 1e-4
    assert grads.keys() == padded.keys() and len(grads) > 10
    errors = {name: relative_error(grads[name], padded[name]) for name in padded}
    assert max(errors.values()) <= 1e-4, {k: v for k, v in errors.items() if v > 1e-4}
    assert torch.equal(rng, padded_rng)  # later draws (the next step's masks) agree too


@pytest.mark.parametrize("channels_last", [False, True], ids=["default", "channels_last"])
@pytest.mark.parametrize("arch", ARCHS)
def test_training_with_dropout_equals_the_padded_net(arch: str, channels_last: bool) -> None:
    layout = torch.channels_last if channels_last else torch.contiguous_format
    model = random_net(arch).double().train().to(memory_format=layout)
    assert any(isinstance(m, nn.Dropout) and m.p == 0.5 for m in model.modules())
    for height, width, batch in SIZES:
        torch.manual_seed(height)
        x = (60 * torch.randn(batch, 3, height, width, dtype=torch.float64)).contiguous(memory_format=layout)
        labels = torch.randint(0, 21, (batch, height, width))
        assert_same_training(model, x, labels)


def test_learned_upsampling_single_tower_alexnet_and_fc_as_matrix_product(monkeypatch) -> None:
    """Learnable (class-mixing) upsamplers, AlexNet without groups or LRN, and the im2col route."""
    monkeypatch.setattr(canvas, "HUGE_KERNEL", 0)  # every convolution as unfold + matrix product
    for model in (
        random_net("fcn8s", frozen_upsampling="none"),
        random_net("fcn-alexnet", groups=1, lrn=False),
    ):
        model = model.double().train()
        x = 60 * torch.randn(3, 3, 41, 30, dtype=torch.float64)
        assert_same_training(model, x, torch.randint(0, 21, (3, 41, 30)))


def test_float32_training_forward_matches() -> None:
    """The float32 kernels (channels-last convolutions, bilinear products): same scores and loss."""
    model = random_net("fcn8s").train().to(memory_format=torch.channels_last)
    x = (60 * torch.randn(4, 3, 64, 96)).contiguous(memory_format=torch.channels_last)
    scores = {}
    for trim in (False, True):
        model.trim_padding = trim
        torch.manual_seed(1)
        scores[trim] = model(x).detach()
    assert relative_error(scores[True], scores[False]) <= 1e-4


def relu_sizes(model: FCN, x: torch.Tensor) -> list[tuple[int, ...]]:
    """The spatial size each ReLU of the backbone sees, in order."""
    sizes = []
    hooks = [
        m.register_forward_hook(lambda _m, _i, out: sizes.append(tuple(out.shape[-2:])))
        for m in model.backbone.modules()
        if isinstance(m, nn.ReLU)
    ]
    try:
        model(x)
    finally:
        for hook in hooks:
            hook.remove()
    return sizes


@pytest.mark.parametrize("arch", [*ARCHS, "fcn32s-fixed", "fcn16s-dilated"])
def test_the_trimmed_canvas_is_the_default_where_exact(arch: str) -> None:
    model = random_net(arch).train()
    assert model.trim_padding and canvas.untrimmable_reason(model.backbone) is None
    x = torch.randn(1, 3, 20, 24)
    trimmed = relu_sizes(model, x)
    model.trim_padding = False
    padded = relu_sizes(model, x)
    # conv1's padding 100 is mostly gone (VGG: conv1_1 gives 218 x 222 padded, 34 x 38 trimmed)
    assert 2 * trimmed[0][0] < padded[0][0] and 2 * trimmed[0][1] < padded[0][1]


def small_fcn(middle: nn.Module) -> FCN:
    """conv (padding 20), ``middle``, ReLU, pool, conv: an FCN-32s in miniature."""
    torch.manual_seed(0)
    layers = OrderedDict(
        conv1=nn.Conv2d(3, 4, 3, padding=20),
        middle=middle,
        relu1=nn.ReLU(),
        pool1=nn.MaxPool2d(2, 2, ceil_mode=True),
        fc=nn.Conv2d(4, 8, 3),
    )
    model = FCN(nn.Sequential(layers), 3)
    nn.init.normal_(model.score_fr.weight)
    return model


def test_batch_statistics_and_unknown_layers_fall_back_to_the_padded_net() -> None:
    model = small_fcn(nn.BatchNorm2d(4)).train()
    assert "middle: BatchNorm" in canvas.untrimmable_reason(model.backbone)
    x = torch.randn(2, 3, 9, 11)
    assert relu_sizes(model, x)[0] == (47, 49)  # 9 + 2 * 20 - 2: padded
    out = model(x)
    model.trim_padding = False
    assert relative_error(out, model(x)) <= 1e-5
    # with running statistics BatchNorm acts on each position alone: trimmed, and exact
    model.eval()
    model.trim_padding = True
    assert canvas.untrimmable_reason(model.backbone) is None
    assert relu_sizes(model, x)[0][0] < 47
    expected = model.eval()
    with torch.no_grad():
        trimmed = model(x)
        model.trim_padding = False
        assert relative_error(trimmed, expected(x)) <= 1e-5
    # a nested block: the geometry composes it, the canvas does not look inside
    nested = small_fcn(nn.Sequential(nn.Conv2d(4, 4, 3, padding=1), nn.ReLU()))
    assert (
        canvas.untrimmable_reason(nested.backbone) == "middle: no trimmed canvas known for layer Sequential"
    )
    assert relu_sizes(nested, x)[-1] == (47, 49)


def test_a_backbone_without_input_padding_runs_as_it_is() -> None:
    backbone = vgg16_backbone((4, 4, 4, 4, 4, 8), input_padding=0)
    assert canvas.untrimmable_reason(backbone) == "the first convolution has no zero padding to skip"


@pytest.mark.parametrize(
    ("classes", "factor", "kernel", "frozen"), [(5, 8, None, True), (3, 32, 63, True), (4, 2, None, False)]
)
def test_upsample_and_crop_equals_upsampling_then_cropping(classes, factor, kernel, frozen) -> None:
    """Bilinear frozen layers take the matrix route, learnable ones the sliced one: same numbers."""
    torch.manual_seed(0)
    layer = bilinear_upsampler(classes, factor, kernel, frozen=frozen)
    if not frozen:
        with torch.no_grad():
            layer.weight.add_(0.1 * torch.randn_like(layer.weight))
    assert canvas._is_frozen_bilinear(layer) == frozen
    x = torch.randn(2, classes, 6, 9, requires_grad=True)
    full = layer(x)
    rows, cols = full.shape[-2:]
    half = rows // 2  # up to the bottom edge
    for offset, height, width in [
        (0, 1, 1),
        (factor - 1, rows - 2 * factor, cols - 2 * factor),
        (half, rows - half, 5),
    ]:
        expected = full[:, :, offset : offset + height, offset : offset + width]
        got = canvas.upsample_and_crop(layer, x, offset, height, width)
        assert got.shape == expected.shape and relative_error(got, expected) <= 1e-5
        (grad,) = torch.autograd.grad(got.sum(), x)
        (expected_grad,) = torch.autograd.grad(expected.sum(), x, retain_graph=True)
        assert relative_error(grad, expected_grad) <= 1e-5
    with pytest.raises(ValueError, match="cannot crop"):
        canvas.upsample_and_crop(layer, x, 1000, 4, 4)


def test_a_batch_shares_what_lies_beyond_its_images(monkeypatch) -> None:
    """Batches of 64x96 images compute the frame of stages 3 and 4 once: still exact (above), and used."""
    shared = []
    assemble = canvas._assemble
    monkeypatch.setattr(canvas, "_assemble", lambda *a: shared.append(a[1].shape) or assemble(*a))
    model = random_net("fcn8s").train()
    model(torch.randn(4, 3, 64, 96))
    assert len(shared) >= 2 and all(size[0] == 3 for size in shared)
    shared.clear()
    model(torch.randn(1, 3, 64, 96))
    assert not shared
