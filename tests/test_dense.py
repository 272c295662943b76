"""Shift-and-stitch equals filter rarefaction; dilated FCNs keep the weights of the net they come from."""

import random

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import fcnseg
from fcnseg.models.dense import (
    coarse_part,
    dilated_fcn,
    exact_region,
    output_stride,
    rarefied_kernel,
    rarefy,
    shift_and_stitch,
    to_pixels,
)
from fcnseg.models.geometry import AffineMap, path_map

TINY_VGG = (4, 8, 8, 8, 8, 8)


def random_net(seed: int) -> nn.Sequential:
    """Convolutions and max-pooling of random kernels, strides, paddings and rounding; stride 4 or 8."""
    rng = random.Random(seed)
    layers, channels = [], 2
    strides = rng.choice([(2, 2), (2, 2, 2), (4, 2)])
    for i, stride in enumerate(strides):
        k = rng.choice([1, 2, 3])
        layers += [
            nn.Conv2d(channels, 3, k, stride=stride if i == 0 else 1, padding=rng.randint(0, k // 2)),
            nn.ReLU(),
        ]
        if i > 0:
            layers.append(nn.MaxPool2d(rng.choice([2, 3]), stride, ceil_mode=rng.random() < 0.5))
        channels = 3
    layers.append(nn.Conv2d(channels, 2, rng.choice([1, 3]), padding=rng.randint(0, 1)))
    torch.manual_seed(seed)
    net = nn.Sequential(*layers)
    for p in net.parameters():
        nn.init.normal_(p)  # non-zero biases: zero padding and shifted-in zeros give different values
    return net


def rarefy_all(net: nn.Sequential, names: list[str]) -> nn.Sequential:
    for name in names:
        net = rarefy(net, name)
    return net


def strided_names(net: nn.Sequential) -> list[str]:
    return [
        name
        for name, m in net.named_children()
        if isinstance(m, nn.Conv2d | nn.MaxPool2d) and m.stride not in (1, (1, 1))
    ]


def compare(
    a: torch.Tensor, b: torch.Tensor, region: tuple[slice, slice]
) -> tuple[torch.Tensor, torch.Tensor]:
    """Max difference inside ``region`` and the mask of differing pixels, where both are defined."""
    h, w = min(a.shape[-2], b.shape[-2]), min(a.shape[-1], b.shape[-1])
    diff = (a[..., :h, :w] - b[..., :h, :w]).abs().amax(dim=(0, 1))
    inside = torch.zeros(h, w, dtype=torch.bool)
    inside[region] = True
    return diff[inside].max(), (diff > 1e-4) & ~inside


@pytest.mark.parametrize("seed", range(8))
def test_full_rarefaction_equals_shift_and_stitch_on_its_exact_region(seed):
    net = random_net(seed)
    x = torch.randn(2, 2, 36 + seed, 44 - seed)
    dense = rarefy_all(net, strided_names(net))
    assert output_stride(dense) == 1 and output_stride(net) in (4, 8)
    with torch.no_grad():
        stitched, rarefied = shift_and_stitch(net, x), dense(x)
    region = exact_region(dense, x.shape[-2:])
    assert region[0].stop - region[0].start >= 5 and region[1].stop - region[1].start >= 5
    worst, _ = compare(stitched, rarefied, region)
    assert worst < 1e-4


def test_outside_the_exact_region_the_borders_differ():
    net = nn.Sequential(
        nn.Conv2d(1, 2, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2, 2), nn.Conv2d(2, 1, 3, padding=1)
    )
    torch.manual_seed(0)
    for p in net.parameters():
        nn.init.normal_(p)
    x = torch.randn(1, 1, 20, 20)
    dense = rarefy(net, "2")
    with torch.no_grad():
        stitched, rarefied = shift_and_stitch(net, x), dense(x)
    # conv 3x3 pad 1 at stride 2 reads 2 pixels of padding: rows/cols 0-1 and 17-18 are not exact
    assert exact_region(dense, (20, 20)) == (slice(2, 17), slice(2, 17))
    assert stitched.shape[-2:] == rarefied.shape[-2:] == (19, 19)
    worst, differ = compare(stitched, rarefied, exact_region(dense, (20, 20)))
    assert worst < 1e-5
    # the shifted pass (odd rows/cols) sees relu(bias) where the rarefied conv sees zero padding
    assert differ[1, 5] and differ[5, 1] and differ.sum() > 0
    assert not differ[0, 5]  # the unshifted pass pads exactly as the rarefied net does


def test_without_padding_or_rounding_they_agree_everywhere_both_are_defined():
    torch.manual_seed(1)
    net = nn.Sequential(
        nn.Conv2d(3, 4, 3), nn.ReLU(), nn.MaxPool2d(2, 2), nn.Conv2d(4, 4, 3), nn.MaxPool2d(2, 2)
    )
    x = torch.randn(1, 3, 30, 26)
    dense = rarefy_all(net, ["2", "4"])
    with torch.no_grad():
        stitched, rarefied = shift_and_stitch(net, x), dense(x)
    assert stitched.shape[-2:] == rarefied.shape[-2:] == (21, 17)
    torch.testing.assert_close(stitched, rarefied, rtol=1e-5, atol=1e-5)


def test_partial_rarefaction_is_shift_and_stitch_by_a_smaller_factor():
    torch.manual_seed(2)
    net = nn.Sequential(nn.Conv2d(3, 4, 3, stride=2), nn.ReLU(), nn.MaxPool2d(2, 2), nn.Conv2d(4, 2, 3))
    x = torch.randn(1, 3, 37, 41)
    once = rarefy(net, "2")
    assert output_stride(once) == 2
    with torch.no_grad():
        stitched, rarefied = shift_and_stitch(net, x, factor=2), once(x)
    assert stitched.shape[-2:] == rarefied.shape[-2:] == (13, 15)
    torch.testing.assert_close(stitched, rarefied, rtol=1e-5, atol=1e-5)


def test_fcn_coarse_part_pool5_rarefied_matches_shift_and_stitch():
    torch.manual_seed(0)
    model = fcnseg.build_model("fcn32s", 3, widths=TINY_VGG).eval()
    for p in model.parameters():
        nn.init.normal_(p, std=0.3)
    x = torch.randn(1, 3, 240, 245)
    dense = rarefy(coarse_part(model), "pool5")
    with torch.no_grad():
        stitched, rarefied = shift_and_stitch(model, x, factor=2), dense(x)
    assert stitched.shape[-2:] == (16, 16) and rarefied.shape[-2:] == (15, 15)
    # VGG pads every conv after conv1_1: only the middle of a 240-pixel image is exact at stride 16
    region = exact_region(dense, (240, 245))
    assert region == (slice(6, 8), slice(6, 9))
    worst, differ = compare(stitched, rarefied, region)
    assert worst < 1e-6 * stitched.abs().max()
    assert differ.any()


def test_shift_and_stitch_keeps_the_coarse_output_on_its_own_lattice():
    torch.manual_seed(3)
    model = fcnseg.build_model("fcn32s", 3, widths=TINY_VGG).eval()
    x = torch.randn(1, 3, 40, 50)
    with torch.no_grad():
        stitched = shift_and_stitch(model, x, factor=4)
        coarse = coarse_part(model)(x)
    torch.testing.assert_close(stitched[..., ::4, ::4], coarse[..., : stitched[..., ::4, ::4].shape[-2], :])


def test_rarefaction_keeps_centres_and_divides_the_stride():
    model = fcnseg.build_model("fcn32s", widths=TINY_VGG)
    net = coarse_part(model)
    assert path_map(net) == AffineMap(32, 12.5)
    assert path_map(rarefy(net, "pool5")) == AffineMap(16, 12.5)
    assert path_map(rarefy_all(net, ["pool5", "pool4", "pool3", "pool2", "pool1"])) == AffineMap(1, 12.5)
    fc6 = rarefy_all(net, ["pool5", "pool4"]).fc6
    assert fc6.dilation == (4, 4) and fc6.padding == (0, 0) and net.fc6.dilation == (1, 1)
    conv5 = rarefy(net, "pool4").conv5_1
    assert conv5.dilation == (2, 2) and conv5.padding == (2, 2)
    assert rarefy(net, "pool4").fc7.dilation == (1, 1)  # a 1x1 filter is its own rarefaction


def test_rarefied_kernel_is_zero_stuffed_and_equals_dilation():
    torch.manual_seed(4)
    weight = torch.randn(2, 3, 3, 3)
    stuffed = rarefied_kernel(weight, 2)
    assert stuffed.shape == (2, 3, 5, 5)
    assert torch.equal(stuffed[..., ::2, ::2], weight)
    assert stuffed[..., 1::2, :].abs().sum() == 0 and stuffed[..., :, 1::2].abs().sum() == 0
    x = torch.randn(1, 3, 12, 11)
    torch.testing.assert_close(F.conv2d(x, stuffed, padding=2), F.conv2d(x, weight, padding=2, dilation=2))


def test_rarefy_refuses_what_it_cannot_do():
    net = nn.Sequential(nn.Conv2d(1, 1, 3), nn.MaxPool2d(2, 2), nn.AvgPool2d(2), nn.Conv2d(1, 1, 3))
    with pytest.raises(ValueError, match="stride 1"):
        rarefy(net, "0")
    with pytest.raises(ValueError, match="no layer"):
        rarefy(net, "pool9")
    with pytest.raises(TypeError, match="AvgPool2d"):
        rarefy(net, "1")
    with pytest.raises(ValueError, match="does not divide"):
        shift_and_stitch(nn.Sequential(nn.MaxPool2d(4, 4)), torch.zeros(1, 1, 8, 8), factor=3)


@pytest.mark.parametrize(
    "arch, stride, padding, offset", [("fcn16s-dilated", 16, 105, 8), ("fcn8s-dilated", 8, 109, 4)]
)
def test_dilated_variants(arch, stride, padding, offset):
    model = fcnseg.build_model(arch, 5, widths=TINY_VGG).eval()
    assert output_stride(model) == stride and model.config["arch"] == arch
    assert model.backbone.conv1_1.padding == (padding, padding) and model.output_offset == offset
    final = getattr(model, model.final_name)
    assert final.kernel_size == (2 * stride, 2 * stride) and not final.weight.requires_grad
    for size in [(1, 1), (17, 30), (64, 64)]:
        assert model(torch.randn(1, 3, *size)).shape == (1, 5, *size)


def test_dilated_fcn_keeps_the_weights_and_is_the_rarefied_net_on_a_padded_input(tmp_path):
    torch.manual_seed(5)
    fcn32s = fcnseg.build_model("fcn32s", 3, widths=TINY_VGG).eval()
    nn.init.normal_(fcn32s.score_fr.weight)
    dilated = dilated_fcn(fcn32s, 16)
    assert dilated.config["arch"] == "fcn16s-dilated" and not dilated.training
    assert torch.equal(dilated.backbone.fc6.weight, fcn32s.backbone.fc6.weight)
    assert torch.equal(dilated.score_fr.weight, fcn32s.score_fr.weight)
    # conv1_1 pads 105 instead of 100: the same as 5 more zero pixels around the image
    x = torch.randn(1, 3, 30, 40)
    with torch.no_grad():
        ours = coarse_part(dilated)(x)
        rarefied = rarefy(coarse_part(fcn32s), "pool5")(F.pad(x, (5, 5, 5, 5)))
    torch.testing.assert_close(ours, rarefied)
    fcnseg.save_checkpoint(dilated, tmp_path / "d.pt")
    loaded = fcnseg.load_checkpoint(tmp_path / "d.pt")
    torch.testing.assert_close(loaded(x), dilated(x))
    with pytest.raises(ValueError, match="skips"):
        dilated_fcn(fcnseg.build_model("fcn8s", widths=TINY_VGG), 16)
    with pytest.raises(ValueError, match="not reachable"):
        dilated_fcn(fcn32s, 12)


def test_to_pixels_interpolates_between_centres_and_holds_the_ends():
    scores = torch.tensor([0.0, 2.0, 4.0]).view(1, 1, 1, 3)
    out = to_pixels(scores, AffineMap(4, 1.5), (1, 12))
    expected = torch.tensor([0, 0, 0.25, 0.75, 1.25, 1.75, 2.25, 2.75, 3.25, 3.75, 4, 4])
    torch.testing.assert_close(out[0, 0, 0], expected)
