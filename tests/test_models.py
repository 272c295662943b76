"""Shared model tests over the registry: output size, crop offsets from geometry, gradients, layer names."""

import pytest
import torch
from torch import nn

import fcnseg
from fcnseg.models.geometry import AffineMap, crop_offset, layer_map, path_map
from fcnseg.models.layers import bilinear_kernel, bilinear_upsampler
from fcnseg.models.registry import SIDE_OUTPUT_ARCHS

TINY = {"fcn-alexnet": (8, 16, 24, 24, 16, 32)}
TINY_VGG = (4, 8, 16, 32, 32, 32)


FCN_ARCHS = sorted(set(fcnseg.ARCHITECTURES) - set(SIDE_OUTPUT_ARCHS))
"""The nets that predict classes (HED and FSDS have their own outputs: tests/test_edges.py)."""


def tiny(arch: str, num_classes: int | None = 5) -> fcnseg.FCN:
    torch.manual_seed(0)
    return fcnseg.build_model(arch, num_classes, widths=TINY.get(arch, TINY_VGG)).eval()


@pytest.mark.parametrize("arch", FCN_ARCHS)
@pytest.mark.parametrize("size", [(1, 1), (2, 3), (31, 17), (64, 64), (97, 131)])
def test_output_has_the_input_size(arch, size):
    model = tiny(arch)
    out = model(torch.randn(2, 3, *size))
    assert out.shape == (2, 5, *size)


@pytest.mark.parametrize(
    "arch, offset, skips",
    [
        ("fcn32s", 19, {}),
        ("fcn16s", 27, {"pool4": 5}),
        ("fcn8s", 31, {"pool4": 5, "pool3": 9}),
        ("fcn8s-atonce", 31, {"pool4": 5, "pool3": 9}),
        ("fcn-alexnet", 18, {}),
    ],
)
def test_crop_offsets_derived_from_geometry_match_the_original_nets(arch, offset, skips):
    model = tiny(arch)
    assert model.output_offset == offset
    assert model.skip_offsets == skips


def test_geometry_worked_example_vgg16_fcn32s():
    backbone = fcnseg.build_model("fcn32s", widths=TINY_VGG).backbone
    pool5 = path_map(backbone[: list(dict(backbone.named_children())).index("pool5") + 1])
    assert (pool5.scale, pool5.shift) == (32, -83.5)
    score = path_map(backbone)
    assert (score.scale, score.shift) == (32, 12.5)


def test_layer_maps():
    assert layer_map(nn.Conv2d(1, 1, 3, padding=100)) == AffineMap(1, -99)
    assert layer_map(nn.MaxPool2d(2, 2)) == AffineMap(2, 0.5)
    assert layer_map(nn.Conv2d(1, 1, 3, padding=2, dilation=2)) == AffineMap(1, 0)
    up = layer_map(nn.ConvTranspose2d(1, 1, 64, stride=32))
    assert up.scale * 32 == 1 and up.shift * 32 == -31.5
    with pytest.raises(TypeError, match="Linear"):
        layer_map(nn.Linear(2, 2))


def test_crop_offset_rejects_misaligned_blobs():
    with pytest.raises(ValueError, match="strides differ"):
        crop_offset(AffineMap(2, 0), AffineMap(4, 0))
    with pytest.raises(ValueError, match="not a non-negative integer"):
        crop_offset(AffineMap(2, 0), AffineMap(2, 1))


def _odd_backbone(first_kernel: int) -> nn.Sequential:
    # A backbone the original paper never had: stride-2 convolution, odd and even kernels.
    return nn.Sequential(
        nn.Conv2d(3, 4, first_kernel, padding=40),
        nn.ReLU(),
        nn.Conv2d(4, 8, 3, stride=2, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2, 2, ceil_mode=True),
    )


def test_new_backbone_gets_alignment_by_construction():
    # conv k6 p40: b = 2.5 - 40; stride-2 conv: b = 0; pool: a = 2, b = 0.5 (x2 = 1);
    # x_data = 4 * x - 36.5, and the 8/4 upsampling adds -3.5: crop at 40.
    model = fcnseg.FCN(_odd_backbone(6), 3).eval()
    assert model.output_offset == 40
    assert model(torch.randn(1, 3, 40, 23)).shape == (1, 3, 40, 23)


def test_impossible_alignment_is_refused_not_rounded():
    with pytest.raises(ValueError, match="crop offset 81/2"):
        fcnseg.FCN(_odd_backbone(5), 3)


def test_bilinear_kernel_interpolates_per_class_without_mixing():
    k = bilinear_kernel(3, 4)
    assert torch.equal(k[0, 1], torch.zeros(4, 4))
    assert torch.allclose(k[1, 1][0], torch.tensor([0.0625, 0.1875, 0.1875, 0.0625]))
    up = bilinear_upsampler(2, 2)
    x = torch.arange(8.0).reshape(1, 2, 2, 2)
    y = up(x)[:, :, 1:-1, 1:-1]  # crop the (k - s) / 2 = 1 border
    # Exact bilinear interpolation between the samples: the midpoint of 0 and 1 is 0.5.
    assert y.shape == (1, 2, 4, 4)
    assert torch.allclose(y[0, 0, 1, 1:3], torch.tensor([0.75, 1.25]))


def test_final_upsampling_frozen_by_default_and_optional():
    model = fcnseg.build_model("fcn8s", widths=TINY_VGG)
    assert not model.upscore8.weight.requires_grad
    assert model.upscore2.weight.requires_grad
    free = fcnseg.build_model("fcn8s", widths=TINY_VGG, frozen_upsampling="none")
    assert free.upscore8.weight.requires_grad
    frozen = fcnseg.build_model("fcn8s", widths=TINY_VGG, frozen_upsampling="all")
    assert not frozen.upscore2.weight.requires_grad


def test_fcn32s_fixed_trains_only_the_score_layer():
    model = fcnseg.build_model("fcn32s-fixed", widths=TINY_VGG)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {"score_fr.weight", "score_fr.bias"}


def test_atonce_scales_skips():
    model = fcnseg.build_model("fcn8s-atonce", widths=TINY_VGG)
    assert torch.all(model.scale_pool4.weight == 0.01)
    assert torch.all(model.scale_pool3.weight == 0.0001)
    assert not any("scale" in n for n, _ in model.named_parameters())


def test_state_dict_reads_like_the_paper():
    keys = set(fcnseg.build_model("fcn8s", widths=TINY_VGG).state_dict())
    for name in ["conv1_1", "conv5_3", "fc6", "fc7"]:
        assert f"backbone.{name}.weight" in keys
    for name in ["score_fr", "score_pool4", "score_pool3"]:
        assert f"{name}.weight" in keys and f"{name}.bias" in keys
    for name in ["upscore2", "upscore_pool4", "upscore8"]:
        assert f"{name}.weight" in keys and f"{name}.bias" not in keys
    alex = fcnseg.build_model("fcn-alexnet", widths=TINY["fcn-alexnet"])
    assert alex.backbone.conv2.groups == 2 and alex.backbone.fc6.kernel_size == (6, 6)
    assert alex.upscore.kernel_size == (63, 63)


@pytest.mark.parametrize("arch", sorted(fcnseg.ARCHITECTURES))
def test_backward_reaches_every_trainable_parameter(arch):
    model = tiny(arch, None if arch in SIDE_OUTPUT_ARCHS else 5).train()
    for p in model.parameters():  # score layers start at zero; give them signal
        if p.requires_grad:
            nn.init.normal_(p, std=0.1)
    model(torch.randn(1, 3, 40, 36)).square().mean().backward()
    for name, p in model.named_parameters():
        if p.requires_grad:
            assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_any_number_of_classes_and_channels():
    model = fcnseg.build_model("fcn16s", 2, widths=TINY_VGG, in_channels=6).eval()
    assert model(torch.randn(1, 6, 20, 30)).shape == (1, 2, 20, 30)
    with pytest.raises(ValueError, match=r"expected input \(N, 6, H, W\)"):
        model(torch.randn(1, 3, 20, 30))


def test_bad_build_arguments():
    with pytest.raises(ValueError, match="unknown architecture"):
        fcnseg.build_model("fcn4s")
    with pytest.raises(ValueError, match="6 widths"):
        fcnseg.build_model("fcn8s", widths=(1, 2, 3))
    with pytest.raises(ValueError, match="num_classes"):
        fcnseg.build_model("fcn8s", 0, widths=TINY_VGG)
