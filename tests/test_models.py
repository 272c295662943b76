"""Shared model tests over the registry: output size, crop offsets from geometry, gradients, layer names."""

from fractions import Fraction

import pytest
import torch
from tiny_nets import TINY, TINY_ALEXNET, tiny_fcn
from torch import nn

import fcnseg
from fcnseg.models.geometry import AffineMap, crop_offset, layer_map, path_map
from fcnseg.models.layers import bilinear_kernel, bilinear_upsampler
from fcnseg.models.trunk import Tap, Trunk

TINY_VGG = TINY


def tiny(arch: str, num_classes: int = 5) -> fcnseg.FCN:
    return tiny_fcn(arch, num_classes)


@pytest.mark.parametrize("size", [(1, 1), (2, 3), (31, 17), (64, 64), (97, 131)])
def test_output_has_the_input_size(tiny_model, size):
    out = tiny_model(torch.randn(2, tiny_model.in_channels, *size))
    assert out.shape == (2, 3, *size)


def test_checkpoint_round_trip_rebuilds_the_same_net(tiny_model, tmp_path):
    tiny_model.meta = {"preprocess": "caffe"}
    path = fcnseg.save_checkpoint(tiny_model, tmp_path / "net.pt")
    loaded = fcnseg.load(path)
    assert loaded.config == tiny_model.config and loaded.meta["preprocess"] == "caffe"
    assert loaded.state_dict().keys() == tiny_model.state_dict().keys()
    x = torch.randn(1, tiny_model.in_channels, 21, 34, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        assert torch.equal(loaded(x), tiny_model(x))


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


def test_a_half_pixel_crop_takes_an_odd_kernel_and_an_impossible_one_is_refused_not_rounded():
    # conv k5 p40: b = 2 - 40; then x_data = 4 * x - 37: the 8/4 upsampling would crop at 81/2,
    # the 7/4 one (-3 in place of -3.5) crops at 40
    model = fcnseg.FCN(_odd_backbone(5), 3).eval()
    assert model.upscore.kernel_size == (7, 7) and model.output_offset == 40
    assert model(torch.randn(1, 3, 40, 23)).shape == (1, 3, 40, 23)

    class QuarterOff(Trunk):  # a declared map a quarter pixel off every bilinear grid
        in_channels = 3
        taps = {"out": Tap("out", 4, AffineMap(4, Fraction(-149, 4)), 9)}

    with pytest.raises(ValueError, match=r"cannot align score: .* -149/4 .* lands on a whole position"):
        fcnseg.FCN(QuarterOff(), 3)


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


def test_every_upsampling_frozen_by_default_as_in_the_repository_and_optional():
    model = fcnseg.build_model("fcn8s", widths=TINY_VGG)
    assert model.config["frozen_upsampling"] == "all"
    assert not any(getattr(model, n).weight.requires_grad for n in ("upscore2", "upscore_pool4", "upscore8"))
    free = fcnseg.build_model("fcn8s", widths=TINY_VGG, frozen_upsampling="none")
    assert free.upscore8.weight.requires_grad
    paper = fcnseg.build_model("fcn8s", widths=TINY_VGG, frozen_upsampling="final")
    assert paper.upscore2.weight.requires_grad and not paper.upscore8.weight.requires_grad


def test_checkpoint_rebuilds_the_upsampling_it_was_saved_with(tmp_path):
    paper = fcnseg.build_model("fcn16s", widths=TINY_VGG, frozen_upsampling="final")
    fcnseg.save_checkpoint(paper, tmp_path / "paper.pt")
    again = fcnseg.load(tmp_path / "paper.pt")
    assert again.config["frozen_upsampling"] == "final" and again.upscore2.weight.requires_grad


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
    alex = fcnseg.build_model("fcn-alexnet", widths=TINY_ALEXNET)
    assert alex.backbone.conv2.groups == 2 and alex.backbone.fc6.kernel_size == (6, 6)
    assert alex.upscore.kernel_size == (63, 63)


def test_backward_reaches_every_trainable_parameter(tiny_model):
    model = tiny_model.train()
    for p in model.parameters():  # score layers start at zero; give them signal
        if p.requires_grad:  # positive biases: no narrow branch of two channels dies at its ReLU
            nn.init.normal_(p, std=0.1) if p.dim() > 1 else nn.init.uniform_(p, 0.05, 0.15)
    model(torch.randn(1, model.in_channels, 40, 36)).square().mean().backward()
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


def test_architectures_names_every_net_build_model_knows(monkeypatch):
    from fcnseg.models.registry import BUILDERS, SEGMENTATION_NETS, register_model

    names = set(fcnseg.ARCHITECTURES)
    assert {"fcn8s", "fcn8s-resnet50", "tv-fcn-resnet101", "hed", "fsds", "ssd300", "ssd512"} <= names
    assert names == set(BUILDERS) and set(SEGMENTATION_NETS) < names
    with torch.device("meta"):  # each name builds its own net; shapes only
        assert all(fcnseg.build_model(arch).config["arch"] == arch for arch in sorted(names))
    monkeypatch.setitem(BUILDERS, "my-fcn", None)  # removed again after the test
    register_model("my-fcn", lambda num_classes, **options: fcnseg.build_model("fcn32s", num_classes))
    assert "my-fcn" in fcnseg.ARCHITECTURES and "my-fcn" in fcnseg.models.ARCHITECTURES
