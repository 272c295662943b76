"""The trunk contract: taps with channels and geometry, read by the FCN head for any backbone.

The alignment probe: with positive weights, average pooling for max pooling and a
positive input, every ReLU passes and every path carries a gradient, so the input
columns that one output pixel depends on are its whole receptive field. A score at
pixel x interpolates coarse scores centred within one stride of x, so with the right
crop its field covers [x - h, x + h] (h: half the trunk output's field) and spans at
most 2h + stride; a crop one pixel off breaks the first rule at some x of every stride.
"""

from __future__ import annotations

from collections import OrderedDict

import pytest
import torch
from tiny_nets import NARROW, tiny_fcn
from torch import nn

import fcnseg
from fcnseg.accel import for_inference
from fcnseg.accel.reach import run_trunk
from fcnseg.accel.training import TrimmedFCN
from fcnseg.models.geometry import AffineMap, layer_map, out_length
from fcnseg.models.googlenet import GOOGLENET_PADDING, Inception, googlenet_backbone
from fcnseg.models.trunk import SequentialTrunk, Tap, Trunk
from fcnseg.models.vgg import vgg16_backbone

SIZES = [(1, 1), (2, 3), (5, 1), (17, 23), (40, 33), (64, 64)]


class Residual(nn.Module):
    """relu(conv(relu(conv_s(x))) + proj_s(x)): a residual block of stride s, stating its geometry."""

    def __init__(self, in_channels: int, out_channels: int, stride: int = 2) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride, 1)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, 1, 1)
        self.proj = nn.Conv2d(in_channels, out_channels, 1, stride)
        self.in_channels, self.out_channels = in_channels, out_channels
        self.geometry = AffineMap(stride, 0)  # centres kept: (3 - 1)/2 - 1 = 0 for both convolutions
        self.span = 3 + 2 * stride  # conv1's 3, then conv2's 3 at stride s

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.conv2(torch.relu(self.conv1(x))) + self.proj(x))


def residual_trunk() -> SequentialTrunk:
    torch.manual_seed(0)
    return SequentialTrunk(
        OrderedDict(
            stem=nn.Conv2d(3, 8, 3, padding=4),
            relu=nn.ReLU(),
            block1=Residual(8, 16),
            block2=Residual(16, 32),
            block3=Residual(32, 32),
        )
    )


class TwoStages(Trunk):
    """A trunk that is no layer sequence: it declares its taps by hand and runs itself."""

    def __init__(self, padding: int = 6) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=padding)
        self.conv2 = nn.Conv2d(8, 16, 5)
        self.pool = nn.MaxPool2d(2, 2, ceil_mode=True)
        self.in_channels = 3
        # conv1 shifts by 1 - padding, a 2x2/2 pooling maps x to 2x + 0.5, conv2 (5x5) shifts by 2
        self.taps = {
            "pool1": Tap("pool1", 8, AffineMap(2, 1.5 - padding), 4),
            "pool2": Tap("pool2", 16, AffineMap(4, 6.5 - padding), 14),
        }

    def features(self, x, taps=()):
        pool1 = self.pool(torch.relu(self.conv1(x)))
        pool2 = self.pool(torch.relu(self.conv2(pool1)))
        return {name: blob for name, blob in (("pool1", pool1), ("pool2", pool2)) if name in taps}, pool2


def probe_ready(model: fcnseg.FCN) -> fcnseg.FCN:
    """Positive weights and average pooling: every input pixel in a field reaches the output."""
    torch.manual_seed(1)
    for module in list(model.modules()):
        for name, child in module.named_children():
            if isinstance(child, nn.MaxPool2d):
                setattr(
                    module,
                    name,
                    nn.AvgPool2d(child.kernel_size, child.stride, child.padding, child.ceil_mode),
                )
    with torch.no_grad():
        for name, p in model.named_parameters():
            if not name.startswith("upscore"):
                p.uniform_(0.5, 1.0).div_(p[0].numel() if p.dim() > 1 else 1)
    return model.eval()


def field_columns(model: fcnseg.FCN, width: int, columns: list[int]) -> list[tuple[int, int]]:
    """(first, last) input column that output column x depends on, for each x (one image each)."""
    x = torch.full((len(columns), model.in_channels, 1, width), 1.0, requires_grad=True)
    out = model(x)
    picked = out[torch.arange(len(columns)), :, 0, torch.tensor(columns)]
    picked.sum().backward()
    seen = x.grad.abs().sum((1, 2)) > 0
    return [(int(row.nonzero().min()), int(row.nonzero().max())) for row in seen]


def assert_centred(model: fcnseg.FCN, field: int, stride: int, width: int, spread: int | None = None) -> None:
    """Output column x sees [x - h, x + h] and at most ``spread`` (one stride) more."""
    half, spread = (field - 1) / 2, spread or stride
    start = int(half) + 2 * stride
    columns = list(range(start, start + stride))
    assert start + stride + half + 2 * stride < width
    for x, (first, last) in zip(columns, field_columns(model, width, columns), strict=True):
        assert first <= x - half and last >= x + half, (x, first, last)
        assert last - first <= 2 * half + spread, (x, first, last)


def test_a_residual_trunk_states_its_taps_and_an_fcn_aligns_on_it():
    trunk = residual_trunk()
    assert list(trunk.taps) == ["stem", "relu", "block1", "block2", "block3"]
    out = trunk.output
    assert out.channels == 32  # the blocks' width, not the last plain convolution's (the stem's 8)
    assert out.geometry == AffineMap(8, -3) and out.stride == 8  # stem: 1 - 4; blocks keep centres
    assert out.field == 3 + 6 * 1 + 6 * 2 + 6 * 4
    model = fcnseg.FCN(trunk, 3, final_kernel=15).eval()  # 15/8: an even kernel would crop at half a pixel
    assert model.output_offset == 4 + 6
    for size in SIZES:
        assert model(torch.randn(2, 3, *size)).shape == (2, 3, *size)
    assert_centred(probe_ready(model), out.field, 8, width=200)


def test_a_module_stating_no_geometry_is_named():
    class Opaque(nn.Module):
        def forward(self, x):
            return x

    with pytest.raises(TypeError, match="no geometry known for layer Opaque"):
        fcnseg.FCN(nn.Sequential(nn.Conv2d(3, 4, 3, padding=9), Opaque()), 2)
    half = Residual(4, 4)
    del half.span
    with pytest.raises(TypeError, match="states its geometry but not its span"):
        fcnseg.FCN(SequentialTrunk(nn.Conv2d(3, 4, 3), half), 2)


def test_declared_geometry_sizes_outputs_as_the_module_computes_them():
    block = Residual(2, 2)
    for length in range(1, 12):
        assert out_length(block, length) == block(torch.zeros(1, 2, length, 1)).shape[2]
    assert layer_map(block) == AffineMap(2, 0)


def test_a_trunk_that_is_no_sequence_declares_its_taps_by_hand():
    trunk = TwoStages()
    pool = OrderedDict(pool=nn.MaxPool2d(2, 2, ceil_mode=True))
    layers = OrderedDict(conv1=trunk.conv1, relu1=nn.ReLU(), pool1=nn.Sequential(pool), conv2=trunk.conv2)
    derived = SequentialTrunk(
        OrderedDict([*layers.items(), ("relu2", nn.ReLU()), ("pool2", nn.Sequential(pool))])
    ).taps
    for name, tap in trunk.taps.items():  # the hand-declared taps agree with the derived ones
        assert (tap.channels, tap.geometry, tap.field) == (
            derived[name].channels,
            derived[name].geometry,
            derived[name].field,
        )
    model = fcnseg.FCN(trunk, 3, skips=("pool1",)).eval()
    assert model.skip_offsets == {"pool1": 1} and model.output_offset == 4
    for size in SIZES:
        assert model(torch.randn(1, 3, *size)).shape == (1, 3, *size)
    with (
        torch.no_grad()
    ):  # sizes from the taps alone, as floor-mode windows give them: ceil mode adds up to 1
        blobs, out = trunk.features(torch.zeros(1, 3, 40, 33), ("pool1",))
    estimated = trunk.blob_sizes(40, 33)
    for name, blob in (("pool1", blobs["pool1"]), ("pool2", out)):
        assert all(0 <= a - b <= 1 for a, b in zip(blob.shape[-2:], estimated[name], strict=True)), name
    probe = probe_ready(model)
    # the coarse path's field dominates; its centres within 4 + 2 of x (both upsamplings), 4 apart
    assert_centred(probe, 14, 4, width=80, spread=8)
    with torch.no_grad():
        probe.score_fr.weight.zero_()
        probe.score_fr.bias.zero_()
    assert_centred(probe, 4, 2, width=80)  # pool1's path alone
    with pytest.raises(ValueError, match=r"skips \['conv1'\] are not taps of the trunk \(pool1, pool2\)"):
        fcnseg.FCN(trunk, 3, skips=("conv1",))


def test_googlenet_is_the_bvlc_layout_scored_at_inception_5b():
    trunk = googlenet_backbone()
    assert list(trunk.taps)[:4] == ["conv1", "pool1", "conv2", "pool2"]
    assert [n for n in trunk.taps if n.startswith("pool")] == ["pool1", "pool2", "pool3", "pool4"]
    taps = trunk.taps
    assert (taps["inception_3a"].channels, taps["inception_4e"].channels) == (256, 832)
    assert (trunk.output.name, trunk.output.channels, trunk.output.stride) == ("inception_5b", 1024, 32)
    # conv1: 3 - 26 = -23 at stride 2; each 3x3/2 pooling adds 1 at its input's stride
    assert trunk.output.geometry == AffineMap(32, -23 + 2 + 4 + 8 + 16)
    keys = set(tiny_fcn("fcn32s-googlenet").state_dict())
    for key in (
        "backbone.conv1.7x7_s2.weight",
        "backbone.conv2.3x3_reduce.bias",
        "backbone.inception_5b.pool_proj.weight",
    ):
        assert key in keys
    assert isinstance(trunk.inception_3b, Inception) and trunk.pool1[0].ceil_mode


def test_fcn_googlenet_output_and_alignment():
    model = tiny_fcn("fcn32s-googlenet", 3)
    assert model.output_offset == GOOGLENET_PADDING - 2  # 32 i + 33 - P, then the 63/32 upsampling
    for size in SIZES:
        assert model(torch.randn(1, 3, *size)).shape == (1, 3, *size)
    assert_centred(probe_ready(model), model.backbone.output.field, 32, width=900)


def test_googlenet_padding_is_the_least_that_scores_a_single_pixel():
    def scores(padding: int, size: int) -> int:
        return list(googlenet_backbone(input_padding=padding).blob_sizes(size, size).values())[-1][0]

    assert scores(GOOGLENET_PADDING, 1) == 1 and scores(GOOGLENET_PADDING - 1, 1) == 0
    model = tiny_fcn("fcn32s-googlenet", 2)
    with torch.no_grad():
        for size in range(1, 70):  # every size reaches the output and the upsampling covers the crop
            assert model(torch.zeros(1, 3, size, 1)).shape[-2] == size


def test_vgg16_taps_every_layer_under_its_caffe_name():
    trunk = vgg16_backbone()
    taps = trunk.taps
    for name, channels, stride in [
        ("conv1_2", 64, 1),
        ("conv2_2", 128, 2),
        ("conv3_3", 256, 4),
        ("pool3", 256, 8),
        ("conv4_3", 512, 8),
        ("pool4", 512, 16),
        ("conv5_3", 512, 16),
        ("fc7", 4096, 32),
    ]:
        assert (taps[name].channels, taps[name].stride) == (channels, stride), name
    assert taps["pool5"].geometry == AffineMap(32, -83.5) and trunk.output.name == "drop7"
    assert taps["fc7"].field == 404 and trunk.in_channels == 3
    with pytest.raises(ValueError, match="'conv6' is not a tap of the trunk; taps: conv1_1, relu1_1"):
        trunk.tap("conv6")


def test_a_tap_is_its_layers_output_whatever_an_in_place_relu_does_next():
    """Caffe's conv5_3 blob is overwritten by its ReLU: here that is relu5_3, and conv5_3 stays."""
    torch.manual_seed(0)
    model = fcnseg.FCN(vgg16_backbone(NARROW["vgg"]), 3, skips=("conv5_3",)).double().eval()
    for p in model.parameters():
        nn.init.normal_(p, std=0.1)
    x = torch.randn(2, 3, 40, 50, dtype=torch.float64)
    wanted = ("conv1_2", "conv2_2", "conv3_3", "conv4_3", "conv5_3", "relu5_3", "pool4", "fc7")  # HED's, more
    weights = {name: torch.randn(1, dtype=torch.float64) for name in wanted}
    runs = {True: lambda *a: run_trunk(model.backbone, *a), False: model.backbone.features}
    grads = []
    for trim in (True, False):  # training through every tap: the same gradients on both paths
        model.backbone.zero_grad()
        taps, _ = runs[trim](x, wanted)
        sum((weights[name] * taps[name].tanh()).sum() for name in wanted).backward()
        grads.append([p.grad.clone() for p in model.backbone.parameters()])
    for trimmed, padded in zip(*grads, strict=True):
        assert torch.allclose(trimmed, padded, rtol=1e-9, atol=1e-12 * padded.abs().max())
    with torch.no_grad():
        trimmed, padded = (runs[trim](x, wanted)[0] for trim in (True, False))
        for name in wanted:
            assert torch.allclose(trimmed[name], padded[name], rtol=1e-9, atol=1e-12), name
        for taps in (trimmed, padded):
            assert taps["conv5_3"].min() < 0 and torch.equal(taps["relu5_3"], taps["conv5_3"].relu())
        padded = model.backbone.features(x)[1]
        assert torch.allclose(run_trunk(model.backbone, x, ("conv5_3",))[1], padded, rtol=1e-9, atol=0)
        expected = model(x)
        assert torch.allclose(TrimmedFCN(model)(x), expected, rtol=1e-9, atol=1e-9 * expected.abs().max())
        fast = for_inference(model.float())(x.float())
    assert torch.allclose(fast.double(), expected, atol=1e-4 * expected.abs().max())
