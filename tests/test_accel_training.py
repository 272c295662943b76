"""fcnseg.accel's training wrappers: the nets on the images' reach give the plain net's loss and gradients.

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

from fcnseg.accel import for_training, head, kernels, reach
from fcnseg.accel.canvas import Window, layer_windows
from fcnseg.accel.training import TrimmedFCN
from fcnseg.models.fcn import FCN
from fcnseg.models.layers import bilinear_upsampler
from fcnseg.models.vgg import vgg16_backbone

ARCHS = ["fcn32s", "fcn16s", "fcn8s", "fcn8s-atonce", "fcn-alexnet"]
# (height, width, batch): a single pixel, odd sizes, and batches the shared frame applies to
SIZES = [(1, 1, 2), (2, 3, 2), (17, 23, 1), (45, 38, 3), (64, 96, 4)]


def relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.detach(), b.detach()
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-300)) if a.numel() else 0.0


def run(model: FCN, trim: bool) -> nn.Module:
    """The net on the images' reach, or as written."""
    return TrimmedFCN(model) if trim else model


def train_step(model: nn.Module, x: torch.Tensor, labels: torch.Tensor, trim: bool, seed: int = 5):
    """Loss, every parameter's gradient, and the random state after one forward/backward."""
    model.zero_grad(set_to_none=True)
    torch.manual_seed(seed)  # the same dropout masks, if both paths draw them alike
    loss = F.cross_entropy(run(model, trim)(x), labels, reduction="sum")
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
    monkeypatch.setattr(kernels, "HUGE_KERNEL", 0)  # every convolution as unfold + matrix product
    for model in (
        random_net("fcn8s", frozen_upsampling="none"),
        random_net("fcn-alexnet", groups=1, lrn=False),
    ):
        model = model.double().train()
        x = 60 * torch.randn(3, 3, 41, 30, dtype=torch.float64)
        assert_same_training(model, x, torch.randint(0, 21, (3, 41, 30)))


@pytest.mark.parametrize("channels_last", [False, True], ids=["default", "channels_last"])
@pytest.mark.parametrize(
    "kernel, padding, dilation, size, batch",
    [
        (3, 0, 1, (9, 7), 1),
        (3, 1, 1, (5, 11), 3),
        ((2, 3), (1, 0), 1, (6, 6), 2),
        (1, 0, 1, (4, 3), 2),
        (7, 0, 1, (7, 8), 1),
        (3, 2, 2, (9, 10), 2),
        (3, 1, 1, (1, 3), 1),
    ],
)
def test_weight_gradient_as_products_equals_autograd(
    kernel, padding, dilation, size, batch, channels_last: bool, monkeypatch
) -> None:
    """The product route's input, weight and bias gradients are autograd's, for every layout and shape."""
    monkeypatch.setattr(kernels, "PRODUCT_GRADIENT_WIDTH", 1)
    torch.manual_seed(0)
    layer = nn.Conv2d(5, 4, kernel, padding=padding, dilation=dilation).double()
    layout = torch.channels_last if channels_last else torch.contiguous_format
    x = torch.randn(batch, 5, *size, dtype=torch.float64).contiguous(memory_format=layout)
    grad = {}
    for route in ("products", "autograd"):
        layer.zero_grad(set_to_none=True)
        inputs = x.clone().requires_grad_()
        if route == "products":
            y = kernels.convolve(layer, inputs, layer.padding, cpu=True)
            assert y.grad_fn is not None and "ProductGradient" in type(y.grad_fn).__name__
        else:
            y = layer(inputs)
        (y * torch.linspace(-1, 1, y.numel(), dtype=y.dtype).view_as(y)).sum().backward()
        grad[route] = (inputs.grad, layer.weight.grad, layer.bias.grad)
    for ours, theirs in zip(grad["products"], grad["autograd"], strict=True):
        assert relative_error(ours, theirs) <= 1e-12


def test_weight_gradient_route_stays_out_of_autocast(monkeypatch) -> None:
    """Under CPU autocast (``--amp bf16``) the convolution is autograd's, which autocast casts."""
    monkeypatch.setattr(kernels, "PRODUCT_GRADIENT_WIDTH", 1)
    layer = nn.Conv2d(4, 4, 3)
    x = torch.randn(2, 4, 9, 9, requires_grad=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = kernels.convolve(layer, x, (0, 0), cpu=True)
    assert y.dtype == torch.bfloat16 and "ProductGradient" not in type(y.grad_fn).__name__
    y.float().sum().backward()
    assert layer.weight.grad.dtype == torch.float32 and x.grad.shape == x.shape


@pytest.mark.parametrize("arch", ["fcn8s", "fcn-alexnet"])
def test_training_with_product_weight_gradients_equals_the_padded_net(arch: str, monkeypatch) -> None:
    """Every stride-1 convolution of the reach taking its weight gradient as matrix products."""
    monkeypatch.setattr(kernels, "PRODUCT_GRADIENT_WIDTH", 1)
    model = random_net(arch).double().train()
    for layout in (torch.contiguous_format, torch.channels_last):
        torch.manual_seed(3)
        x = (60 * torch.randn(2, 3, 45, 38, dtype=torch.float64)).contiguous(memory_format=layout)
        assert_same_training(model.to(memory_format=layout), x, torch.randint(0, 21, (2, 45, 38)))


def test_float32_training_forward_matches() -> None:
    """The float32 kernels (channels-last convolutions, bilinear products): same scores and loss."""
    model = random_net("fcn8s").train().to(memory_format=torch.channels_last)
    x = (60 * torch.randn(4, 3, 64, 96)).contiguous(memory_format=torch.channels_last)
    scores = {}
    for trim in (False, True):
        torch.manual_seed(1)
        scores[trim] = run(model, trim)(x).detach()
    assert relative_error(scores[True], scores[False]) <= 1e-4


def relu_shapes(model: FCN, x: torch.Tensor, trim: bool = True) -> list[tuple[int, ...]]:
    """The (batch, height, width) each ReLU of the backbone sees, in order."""
    shapes = []
    hooks = [
        m.register_forward_hook(lambda _m, _i, out: shapes.append((out.shape[0], *out.shape[-2:])))
        for m in model.backbone.modules()
        if isinstance(m, nn.ReLU)
    ]
    try:
        run(model, trim)(x)
    finally:
        for hook in hooks:
            hook.remove()
    return shapes


def image_sizes(model: FCN, x: torch.Tensor, trim: bool = True) -> list[tuple[int, ...]]:
    """The (height, width) each ReLU sees on the images (the blank image's frame has a batch of 1)."""
    return [shape[1:] for shape in relu_shapes(model, x, trim) if shape[0] == x.shape[0]]


@pytest.mark.parametrize("arch", [*ARCHS, "fcn32s-fixed", "fcn16s-dilated"])
def test_training_runs_the_reach_where_exact(arch: str) -> None:
    model = random_net(arch).train()
    assert reach.untrimmable_reason(model.backbone) is None
    assert type(for_training(model)) is TrimmedFCN and for_training(model).model is model
    x = torch.randn(2, 3, 20, 24)
    trimmed = image_sizes(model, x)
    padded = image_sizes(model, x, trim=False)
    # conv1's padding 100 is gone: VGG's conv1_1 gives 218 x 222 padded, the images' reach 26 x 30
    assert 2 * trimmed[0][0] < padded[0][0] and 2 * trimmed[0][1] < padded[0][1]
    assert trimmed[0][0] < x.shape[2] + 10 and trimmed[0][1] < x.shape[3] + 10


@pytest.fixture
def free_copies(monkeypatch):
    """Copies and calls cost nothing: the reach is used even for nets too small for it to pay."""
    monkeypatch.setattr(reach, "COPY_COST", 0)
    monkeypatch.setattr(reach, "CALL_COST", 0)
    reach.plan_reach.cache_clear()
    yield
    reach.plan_reach.cache_clear()


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


def test_batch_statistics_and_unknown_layers_fall_back_to_the_padded_net(free_copies) -> None:
    model = small_fcn(nn.BatchNorm2d(4)).train()
    assert "middle: BatchNorm" in reach.untrimmable_reason(model.backbone)
    x = torch.randn(2, 3, 9, 11)
    assert image_sizes(model, x)[0] == (47, 49)  # 9 + 2 * 20 - 2: padded
    torch.manual_seed(0)
    out = TrimmedFCN(model)(x)
    torch.manual_seed(0)
    assert relative_error(out, model(x)) <= 1e-5
    # with running statistics BatchNorm acts on each position alone: trimmed, and exact
    model.eval()
    assert reach.untrimmable_reason(model.backbone) is None
    assert image_sizes(model, x)[0][0] < 47
    with torch.no_grad():
        assert relative_error(TrimmedFCN(model)(x), model(x)) <= 1e-5
    # a nested block: the geometry composes it, the canvas does not look inside
    nested = small_fcn(nn.Sequential(nn.Conv2d(4, 4, 3, padding=1), nn.ReLU()))
    assert reach.untrimmable_reason(nested.backbone) == "middle: no trimmed canvas known for layer Sequential"
    assert image_sizes(nested, x)[-1] == (47, 49)


def test_a_backbone_without_input_padding_runs_as_it_is() -> None:
    backbone = vgg16_backbone((4, 4, 4, 4, 4, 8), input_padding=0)
    assert reach.untrimmable_reason(backbone) == "the first convolution has no zero padding to skip"


def test_average_pooling_whose_padding_counts_as_zeros_is_exact(free_copies) -> None:
    model = small_fcn(nn.AvgPool2d(3, stride=1, padding=1)).double().train()
    x = 60 * torch.randn(3, 3, 9, 11, dtype=torch.float64)
    assert image_sizes(model, x)[0][0] < 47
    labels = torch.randint(0, 3, (3, 9, 11))
    padded_loss, padded, _ = train_step(model, x, labels, trim=False)
    loss, grads, _ = train_step(model, x, labels, trim=True)
    assert relative_error(loss, padded_loss) <= 1e-10
    assert max(relative_error(grads[name], padded[name]) for name in padded) <= 1e-10
    for pooling in (nn.AvgPool2d(3, padding=1, ceil_mode=True), nn.AvgPool2d(3, count_include_pad=False)):
        assert "average pooling whose padding" in reach.untrimmable_reason(small_fcn(pooling).backbone)


@pytest.mark.parametrize("arch", ["fcn8s", "fcn-alexnet"])
def test_positions_the_reach_leaves_to_the_frame_are_the_same_for_every_image(arch: str) -> None:
    """The geometry the reach relies on: outside ``seen`` a blob does not depend on the image,
    and its first and last seen positions along each axis do."""
    model = random_net(arch).double().eval()
    layers = list(model.backbone.children())[: reach._cut(list(model.backbone.children()))]
    windows = [layer_windows(layer) for layer in layers]
    pad0 = layers[0].padding[0]
    windows[0] = tuple(Window(w.span, w.stride, 0) for w in windows[0])
    height, width = 13, 21
    (lengths, rows), (_, cols) = (
        reach._seen([w[axis] if w else None for w in windows], pad0, size)
        for axis, size in ((0, height), (1, width))
    )
    h = F.pad(torch.randn(2, 3, height, width, dtype=torch.float64), (pad0, pad0, pad0, pad0))
    for i, layer in enumerate(layers):
        h = (
            F.conv2d(h, layer.weight, layer.bias, layer.stride, 0, layer.dilation, layer.groups)
            if i == 0
            else layer(h)
        )
        (top, bottom), (left, right) = rows[i + 1], cols[i + 1]
        assert h.shape[-2:] == (
            lengths[i + 1],
            reach._seen([w[1] if w else None for w in windows], pad0, width)[0][i + 1],
        )
        outside = torch.ones(h.shape[-2:], dtype=torch.bool)
        outside[top:bottom, left:right] = False
        assert torch.allclose(h[0][:, outside], h[1][:, outside], rtol=1e-12, atol=1e-12)
        for edge in (h[:, :, top], h[:, :, bottom - 1], h[:, :, :, left], h[:, :, :, right - 1]):
            assert not torch.allclose(edge[0], edge[1])


def planned_work(layers: list[nn.Module], shape: tuple[int, ...], plan: reach.ReachPlan) -> tuple[int, int]:
    """Multiply-adds of the convolutions as planned (the images' and the blank's), and as padded."""
    planned = padded = 0
    for i, layer in enumerate(layers):
        if isinstance(layer, nn.Conv2d):
            full = plan.lengths[0][i + 1] * plan.lengths[1][i + 1]
            (a, b), (c, d) = plan.held[0][i + 1], plan.held[1][i + 1]
            blank = plan.blank[0].canvas[i + 1] * plan.blank[1].canvas[i + 1] if i < plan.depth else 0
            images = full if i >= plan.whole else (b - a) * (d - c)
            planned += layer.weight.numel() * (shape[0] * images + blank)
            padded += layer.weight.numel() * shape[0] * full
    return planned, padded


def test_the_images_compute_their_reach_and_the_frame_runs_once() -> None:
    """VGG16 FCN-8s at 500x500: the stages the image leaves a frame in compute the reach only
    (each image on its own trimmed canvas did 82% of the padded net's multiply-adds, the reach 70%)."""
    with torch.device("meta"):
        backbone = vgg16_backbone()
    layers = list(backbone.children())[: reach._cut(list(backbone.children()))]
    names = [name for name, _ in backbone.named_children()]
    outputs = (names.index("pool3") + 1, names.index("pool4") + 1)
    plan = reach.trunk_plan(layers, (1, 3, 500, 500), outputs)
    conv4_2 = names.index("conv4_2")
    assert plan.whole > conv4_2 and plan.depth > conv4_2  # stage 4 on the reach, its frame from the blank
    assert (
        plan.held[0][conv4_2 + 1] == (8, 80) and plan.lengths[0][conv4_2 + 1] == 88
    )  # what reaches the image
    planned, padded = planned_work(layers, (1, 3, 500, 500), plan)
    assert planned < 0.72 * padded
    # a batch computes the frame once, on a blank image: ReLUs see batches of 1 (frame) and 4 (images)
    model = random_net("fcn8s").train()
    assert {shape[0] for shape in relu_shapes(model, torch.randn(4, 3, 64, 96))} == {1, 4}


@pytest.mark.parametrize(
    ("copy_cost", "call_cost"), [(0, 0), (0, 10**9), (10**4, 0), (10**9, 10**12)], ids=str
)
def test_every_plan_is_exact(copy_cost: int, call_cost: int, monkeypatch) -> None:
    """Costs that favour segments everywhere, few of them, or whole blobs early: all exact."""
    monkeypatch.setattr(reach, "COPY_COST", copy_cost)
    monkeypatch.setattr(reach, "CALL_COST", call_cost)
    reach.plan_reach.cache_clear()
    try:
        for arch, (height, width, batch) in [
            ("fcn8s", (45, 38, 3)),
            ("fcn8s", (1, 1, 2)),
            ("fcn-alexnet", (41, 30, 2)),
        ]:
            model = random_net(arch).double().train()
            torch.manual_seed(height)
            x = 60 * torch.randn(batch, 3, height, width, dtype=torch.float64)
            assert_same_training(model, x, torch.randint(0, 21, (batch, height, width)))
    finally:
        reach.plan_reach.cache_clear()


def test_the_cost_model_picks_different_plans() -> None:
    """The plans the exactness test above runs differ: segments at every window, whole blobs early."""
    with torch.device("meta"):
        backbone = vgg16_backbone()
    layers = list(backbone.children())[: reach._cut(list(backbone.children()))]
    plans = {}
    for costs in [(0, 0), (10**9, 10**12)]:
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(reach, "COPY_COST", costs[0])
            patch.setattr(reach, "CALL_COST", costs[1])
            reach.plan_reach.cache_clear()
            plans[costs] = reach.trunk_plan(layers, (2, 3, 45, 38))
    reach.plan_reach.cache_clear()
    many, few = plans[(0, 0)], plans[(10**9, 10**12)]
    assert len(many.bounds) > len(few.bounds) and many.whole > few.whole


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
    assert head._is_frozen_bilinear(layer) == frozen
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
        got = head.upsample_and_crop(layer, x, offset, height, width)
        assert got.shape == expected.shape and relative_error(got, expected) <= 1e-5
        (grad,) = torch.autograd.grad(got.sum(), x)
        (expected_grad,) = torch.autograd.grad(expected.sum(), x, retain_graph=True)
        assert relative_error(grad, expected_grad) <= 1e-5
    with pytest.raises(ValueError, match="cannot crop"):
        head.upsample_and_crop(layer, x, 1000, 4, 4)
