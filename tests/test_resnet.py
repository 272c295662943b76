"""ResNet trunks in torchvision's layout, FCN-32s/16s/8s aligned on them, and torchvision's own FCN.

Reference facts (torchvision's models/resnet.py, models/segmentation/fcn.py and _utils.py): the
key names and shapes below, its parameter counts (ResNet-18 11,689,512 and ResNet-50 25,557,032 with
``fc``; fcn_resnet50 35,322,218 and fcn_resnet101 54,314,346 with the auxiliary head), the dilation
rule of ``replace_stride_with_dilation`` and ``FCNHead``. The reference forward is written here with
``torch.nn.functional`` from those facts, reading a state dict made here, not fcnseg's modules.
"""

from __future__ import annotations

import logging
import re
from collections import OrderedDict

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torchvision_states import BLOCKS, torchvision_fcn_state, torchvision_resnet

import fcnseg
from fcnseg.accel import for_inference, for_training
from fcnseg.accel.inference import FastFCN
from fcnseg.accel.training import TrimmedFCN
from fcnseg.cli import main
from fcnseg.models.geometry import AffineMap
from fcnseg.models.layers import bilinear_upsampler
from fcnseg.models.registry import BUILDERS
from fcnseg.models.resnet import resnet_trunk
from fcnseg.models.trunk import SequentialTrunk
from fcnseg.weights.transfer import WeightsMismatchError

NARROW = (8, 16, 16, 32)
ALIGNED = [f"fcn{n}s-resnet{d}" for d in (18, 50) for n in (32, 16, 8)]


def reference_fcn(state: dict, x: torch.Tensor, depth: int) -> torch.Tensor:
    """torchvision's fcn_resnet forward, ``model(x)["out"]``, from its documented structure."""

    def bn(h, name):
        mean, var = state[f"{name}.running_mean"], state[f"{name}.running_var"]
        return F.batch_norm(h, mean, var, state[f"{name}.weight"], state[f"{name}.bias"], False, 0.0, 1e-5)

    h = F.relu(bn(F.conv2d(x, state["backbone.conv1.weight"], stride=2, padding=3), "backbone.bn1"))
    h = F.max_pool2d(h, 3, 2, 1)
    dilation = 1
    for i, count in enumerate(BLOCKS[depth], start=1):
        stride, previous = (1 if i == 1 else 2), dilation
        if i >= 3:  # replace_stride_with_dilation=[False, True, True]
            dilation, stride = dilation * stride, 1
        for j in range(count):
            p = f"backbone.layer{i}.{j}"
            d, s = (previous, stride) if j == 0 else (dilation, 1)
            out = F.relu(bn(F.conv2d(h, state[f"{p}.conv1.weight"]), f"{p}.bn1"))
            out = F.relu(
                bn(F.conv2d(out, state[f"{p}.conv2.weight"], stride=s, padding=d, dilation=d), f"{p}.bn2")
            )
            out = bn(F.conv2d(out, state[f"{p}.conv3.weight"]), f"{p}.bn3")
            if f"{p}.downsample.0.weight" in state:
                h = bn(F.conv2d(h, state[f"{p}.downsample.0.weight"], stride=s), f"{p}.downsample.1")
            h = F.relu(out + h)
    h = F.relu(bn(F.conv2d(h, state["classifier.0.weight"], padding=1), "classifier.1"))
    h = F.conv2d(h, state["classifier.4.weight"], state["classifier.4.bias"])
    return F.interpolate(h, size=x.shape[-2:], mode="bilinear", align_corners=False)


def relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max())


# ---------------------------------------------------------------------------------------- the trunk


@pytest.mark.parametrize("depth, params", [(18, 11_689_512), (50, 25_557_032)])
def test_the_trunk_is_torchvisions_resnet_without_fc(depth, params):
    with torch.device("meta"):
        trunk = resnet_trunk(depth)
    expected = {
        k: v.shape for k, v in torchvision_resnet(depth, meta=True).items() if not k.startswith("fc.")
    }
    assert {k: v.shape for k, v in trunk.state_dict().items()} == expected
    assert sum(p.numel() for p in trunk.parameters()) + 1000 * (trunk.output.channels + 1) == params


def test_taps_declare_channels_strides_and_fields():
    trunk = resnet_trunk(50, NARROW)
    assert list(trunk.taps) == ["conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4"]
    for name, channels, stride in [
        ("maxpool", 8, 4),
        ("layer1", 32, 4),
        ("layer2", 64, 8),
        ("layer3", 64, 16),
    ]:
        tap = trunk.taps[name]
        assert (tap.channels, tap.stride, tap.geometry) == (channels, stride, AffineMap(stride, 0)), name
    assert (trunk.output.name, trunk.output.channels, trunk.output.stride) == ("layer4", 128, 32)
    assert trunk.output.field == 427 and resnet_trunk(18).output.field == 435  # ResNet's known fields
    with torch.no_grad():  # sizes as declared: ceil(n / stride), every padding keeps centres
        taps, out = trunk.features(torch.zeros(1, 3, 97, 131), ["layer2"])
    assert taps["layer2"].shape[-2:] == (13, 17) and out.shape[-2:] == (4, 5)
    assert trunk.blob_sizes(97, 131)["layer4"] == (4, 5)


@pytest.mark.parametrize("output_stride", [16, 8])
def test_dilation_follows_torchvisions_replace_stride_with_dilation(output_stride):
    trunk = resnet_trunk(50, NARROW, output_stride=output_stride)
    layer3, layer4 = trunk.layer3, trunk.layer4
    if output_stride == 8:  # layer3's first block keeps dilation 1, the others take 2; layer4: 2, then 4
        assert [b.conv2.dilation[0] for b in layer3] == [1, 2, 2, 2, 2, 2]
        assert layer3[0].conv2.stride == (1, 1)
        assert [b.conv2.dilation[0] for b in layer4] == [2, 4, 4]
    else:
        assert [b.conv2.dilation[0] for b in layer4] == [1, 2, 2] and layer3[0].conv2.stride == (2, 2)
    assert layer4[0].downsample[0].stride == (1, 1) and trunk.output.stride == output_stride
    assert trunk.output.geometry == AffineMap(output_stride, 0)
    x = torch.randn(1, 3, 45, 61)
    with torch.no_grad():
        assert trunk.eval()(x).shape[-2:] == trunk.blob_sizes(45, 61)["layer4"]


# ---------------------------------------------------------------------------------------- FCN heads


def probe_ready(model: nn.Module) -> nn.Module:
    """Positive constant weights, average pooling for max pooling: every path carries a gradient, and
    one output pixel's input gradient is symmetric about where its scores sit."""
    for module in list(model.modules()):
        for name, child in module.named_children():
            if isinstance(child, nn.MaxPool2d):
                setattr(module, name, nn.AvgPool2d(child.kernel_size, child.stride, child.padding))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if not name.startswith("upscore"):
                p.fill_(1 / p[0].numel()) if p.dim() > 1 else p.fill_(0 if name.endswith("bias") else 1)
    return model.eval()


def centroid_offsets(model: nn.Module, stride: int = 32, width: int = 1200) -> torch.Tensor:
    """Per output column x of one stride's phases in the middle of a row: the centroid of
    |d score(x) / d input| minus x."""
    columns = torch.arange(width // 2, width // 2 + stride)
    x = torch.ones(len(columns), model.in_channels, 1, width, requires_grad=True)
    model(x)[torch.arange(len(columns)), :, 0, columns].sum().backward()
    weight = x.grad.abs().sum((1, 2)).double()
    return (weight * torch.arange(width)).sum(1) / weight.sum(1) - columns


@pytest.mark.parametrize("arch", ALIGNED)
def test_an_output_pixel_sees_a_field_centred_on_it(arch):
    model = probe_ready(fcnseg.build_model(arch, 2, widths=(2, 2, 2, 2)))
    assert centroid_offsets(model).abs().mean() <= 0.25
    for size in [(1, 1), (97, 131), (500, 375)]:
        with torch.no_grad():
            assert model(torch.zeros(1, 3, *size)).shape == (1, 2, *size)


def test_the_centroid_sees_half_a_pixel_and_torchvisions_resize():
    """The probe's power: the 64/32 kernel cropped at 31 is half a pixel off; torchvision's resize
    of the stride-8 scores (align_corners=False) is 3.5 pixels off."""
    model = probe_ready(fcnseg.build_model("fcn32s-resnet18", 2, widths=(2, 2, 2, 2)))
    assert model.upscore.kernel_size == (63, 63) and model.output_offset == 31
    model.upscore = bilinear_upsampler(2, 32, 64, frozen=True)
    assert 0.45 <= centroid_offsets(model).abs().mean() <= 0.55
    tv = probe_ready(fcnseg.build_model("tv-fcn-resnet50", 2, widths=(2, 2, 2, 2)))
    assert 3.4 <= centroid_offsets(tv, stride=8, width=600).abs().mean() <= 3.6


def test_skips_are_layer3_and_layer2_and_the_upsamplers_chosen_to_align():
    model = fcnseg.build_model("fcn8s-resnet34", 3, widths=NARROW)
    assert model.skips == ("layer3", "layer2") and model.skip_offsets == {"layer3": 0, "layer2": 0}
    # 4/2 would crop the skips at -3/2: 3/2 padded by 1 starts on the skip's first position
    for name in ("upscore2", "upscore_layer3"):
        layer = getattr(model, name)
        assert (layer.kernel_size, layer.padding, layer.output_padding) == ((3, 3), (1, 1), (1, 1))
    assert model.upscore8.kernel_size == (15, 15) and model.output_offset == 7
    for depth in (34, 101):
        net = fcnseg.build_model(f"fcn16s-resnet{depth}", 3, widths=(2, 2, 2, 2)).eval()
        with torch.no_grad():
            for size in [(1, 1), (33, 64), (97, 131)]:
                assert net(torch.zeros(1, 3, *size)).shape == (1, 3, *size)


# ------------------------------------------------------------------------------- torchvision's FCN


def test_torchvision_fcn_equals_torchvisions_forward(tmp_path):
    state = torchvision_fcn_state(50, 21)
    path = tmp_path / "fcn_resnet50_coco.pth"
    torch.save(state, path)
    model = fcnseg.load(path, arch="tv-fcn-resnet50")
    assert model.config["aux"] is True and model.meta["preprocess"] == "imagenet"
    assert model.state_dict().keys() == state.keys()
    for size in [(45, 61), (64, 40)]:
        x = torch.randn(1, 3, *size, generator=torch.Generator().manual_seed(size[0]))
        with torch.no_grad():
            out = model(x)
            assert relative_error(out, reference_fcn(state, x, 50)) <= 1e-4
    outputs = model.outputs(x)
    assert torch.equal(outputs["out"], out) and outputs["aux"].shape == out.shape
    with pytest.raises(
        WeightsMismatchError, match="holds torchvision's FCN on ResNet-50, not tv-fcn-resnet101"
    ):
        fcnseg.load(path, arch="tv-fcn-resnet101")


@pytest.mark.parametrize("depth, params", [(50, 35_322_218), (101, 54_314_346)])
def test_torchvision_fcn_has_torchvisions_parameters(depth, params):
    with torch.device("meta"):
        model = fcnseg.build_model(f"tv-fcn-resnet{depth}", aux=True)
    assert sum(p.numel() for p in model.parameters()) == params
    assert [type(m).__name__ for m in model.classifier] == [
        "Conv2d",
        "BatchNorm2d",
        "ReLU",
        "Dropout",
        "Conv2d",
    ]
    assert model.classifier[0].out_channels == 512 and model.aux_classifier[0].out_channels == 256


# ---------------------------------------------------------------------------------------- ImageNet


def test_imagenet_resnet_fills_every_trunk_tensor(tmp_path):
    state = torchvision_resnet(50, NARROW)
    path = tmp_path / "resnet50-0676ba61.pth"
    torch.save(state, path)
    model = fcnseg.fcn_from_imagenet("fcn8s-resnet50", path, num_classes=5)
    trunk = model.backbone.state_dict()
    assert trunk.keys() == {k for k in state if not k.startswith("fc.")}
    assert all(torch.equal(trunk[k], v) for k, v in state.items() if k in trunk)
    assert model.config["widths"] == list(NARROW) and model.meta["preprocess"] == "imagenet"
    with pytest.raises(WeightsMismatchError, match="holds ResNet-50; fcn8s-resnet18 is built on resnet18"):
        fcnseg.fcn_from_imagenet("fcn8s-resnet18", path)
    del state["layer2.1.bn2.running_var"]
    with pytest.raises(WeightsMismatchError, match="missing layer2.1.bn2.running_var"):
        fcnseg.fcn_from_imagenet("fcn8s-resnet50", state)


# --------------------------------------------------------------------------------- the speed layer


def test_the_speed_layer_is_exact_with_batchnorm_training_or_says_why_not(caplog):
    torch.manual_seed(0)
    model = fcnseg.build_model("fcn8s-resnet18", 3, widths=NARROW).train()
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.3) if p.dim() > 1 else p.uniform_(0.5, 1.5)
    twin = fcnseg.build_model("fcn8s-resnet18", 3, widths=NARROW).train()
    twin.load_state_dict(model.state_dict())
    wrapper = for_training(model)
    assert isinstance(wrapper, TrimmedFCN)  # the head trimmed; the trunk (batch statistics) as written
    x = torch.randn(2, 3, 45, 61, generator=torch.Generator().manual_seed(1))
    got, expected = wrapper(x), twin(x)
    assert relative_error(got.detach(), expected.detach()) <= 1e-5
    got.square().mean().backward()
    expected.square().mean().backward()
    for (name, a), b in zip(model.named_parameters(), twin.parameters(), strict=True):
        if a.requires_grad:  # the frozen upsamplings have none
            assert torch.allclose(a.grad, b.grad, rtol=1e-4, atol=1e-6 * b.grad.abs().max()), name
    assert torch.allclose(model.backbone.bn1.running_mean, twin.backbone.bn1.running_mean)
    fast = for_inference(model.eval())
    assert isinstance(fast, FastFCN) and fast.as_written is not None
    with torch.no_grad():
        assert relative_error(fast(x), model(x)) <= 1e-5
    model.backbone.layer1.register_forward_hook(lambda *_: None)
    tv = fcnseg.build_model("tv-fcn-resnet50", 3, widths=(2, 2, 2, 2))
    with caplog.at_level(logging.WARNING, logger="fcnseg.accel"):
        assert for_training(model) is model and for_training(tv) is tv and for_inference(tv.eval()) is tv
    assert "hooks are registered on backbone.layer1" in caplog.text
    assert "torchvision's FCN has no faster exact path" in caplog.text


def test_frozen_batchnorm_stays_in_eval_mode():
    model = fcnseg.build_model("fcn16s-resnet18", 3, widths=NARROW, frozen_batchnorm=True).train()
    norms = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    assert norms and not any(m.training for m in norms) and model.backbone.conv1.training
    before = model.backbone.bn1.running_mean.clone()
    model(torch.randn(2, 3, 40, 40))
    assert torch.equal(model.backbone.bn1.running_mean, before)
    assert fcnseg.build_model("fcn16s-resnet18", 3, widths=NARROW).train().backbone.bn1.training


# ---------------------------------------------------------------------------------- nets of one's own


def small_trunk() -> SequentialTrunk:
    return SequentialTrunk(
        OrderedDict(
            conv1=nn.Conv2d(3, 8, 3, padding=1),
            relu1=nn.ReLU(),
            pool1=nn.MaxPool2d(2, 2),
            conv2=nn.Conv2d(8, 16, 3, padding=1),
            relu2=nn.ReLU(),
            pool2=nn.MaxPool2d(2, 2),
        )
    )


def test_a_net_of_ones_own_registers_once_then_saves_and_loads(tmp_path, monkeypatch):
    model = fcnseg.build_model("fcn8s", 4, backbone=resnet_trunk(18, (2, 2, 2, 2)))
    assert model.skips == ("layer3", "layer2")  # the trunk's first taps of strides 16 and 8
    with pytest.raises(ValueError, match=r"built with backbone .*fcnseg\.register_model"):
        fcnseg.save_checkpoint(model, tmp_path / "no.pt")
    monkeypatch.setitem(BUILDERS, "small-fcn16s", None)  # removed again after the test

    @fcnseg.register_model("small-fcn16s")
    def small_fcn16s(num_classes: int, width: int = 1) -> fcnseg.FCN:
        return fcnseg.build_model("fcn16s", num_classes, backbone=small_trunk())

    with pytest.raises(ValueError, match="no tap of stride 16 to fuse; its taps: conv1 1"):
        fcnseg.build_model("small-fcn16s", 3)
    monkeypatch.setitem(BUILDERS, "small-fcn", None)
    fcnseg.register_model(
        "small-fcn", lambda num_classes, **_: fcnseg.FCN(small_trunk(), num_classes, ["pool1"])
    )
    net = fcnseg.build_model("small-fcn", 3, width=2)
    assert net.config == {
        "arch": "small-fcn", "num_classes": 3, "widths": None, "in_channels": 3, "frozen_upsampling": "all", "width": 2
    }  # fmt: skip
    loaded = fcnseg.load(fcnseg.save_checkpoint(net, tmp_path / "net.pt"))
    x = torch.randn(1, 3, 21, 34)
    with torch.no_grad():
        assert torch.equal(loaded(x), net.eval()(x))
    with pytest.raises(ValueError, match="one of fcnseg's own"):
        fcnseg.register_model("fcn8s", small_fcn16s)
    del BUILDERS["small-fcn"]
    with pytest.raises(fcnseg.FcnsegError, match=re.escape("'small-fcn', not one of")):
        fcnseg.load(tmp_path / "net.pt")


def test_training_starts_from_a_torchvision_file(tmp_path):
    state = torchvision_resnet(18, NARROW)
    path = tmp_path / "resnet18-f37072fd.pth"
    torch.save(state, path)
    args = ["train", "--arch", "fcn16s-resnet18", "--widths", "8,16,16,32", "--init", str(path), "--quiet"]
    args += ["--train-images", "2", "--val-images", "1", "--image-size", "32", "40", "--max-steps", "1"]
    assert main([*args, "--lr", "1e-12", "--batch-size", "2", "--out", str(tmp_path / "run")]) == 0
    saved = torch.load(tmp_path / "run" / "last.pt", weights_only=True)
    assert saved["meta"]["preprocess"] == "imagenet"
    assert torch.allclose(
        saved["state_dict"]["backbone.layer3.1.conv1.weight"], state["layer3.1.conv1.weight"]
    )


def test_hed_fsds_and_ssd_read_the_taps_of_any_trunk():
    trunk = resnet_trunk(18, (2, 4, 4, 8)).eval()
    hed = fcnseg.build_model("hed", backbone=trunk, taps=("relu", "layer1", "layer2", "layer3", "layer4"))
    upsamplers = [getattr(hed, name) for _, name, _ in hed.sides]
    assert [u.kernel_size[0] for u in upsamplers] == [3, 7, 15, 31, 63]  # 2f - 1: s * i grids
    assert hed.crop_offsets == [1, 3, 7, 15, 31]
    fsds = fcnseg.build_model("fsds", backbone=trunk, taps=("layer1", "layer2", "layer3", "layer4"))
    with torch.no_grad():
        assert hed.eval()(torch.zeros(1, 3, 37, 50)).shape == (1, 6, 37, 50)
        assert fsds.eval()(torch.zeros(2, 3, 1, 9)).shape == (2, 19, 1, 9)
    with pytest.raises(ValueError, match="the side outputs read 5 taps, got 3"):
        fcnseg.build_model("hed", backbone=trunk, taps=("layer1", "layer2", "layer3"))
    ssd = fcnseg.build_model(
        "ssd300", backbone=resnet_trunk(18, (4, 8, 8, 16), output_stride=16), conv4_3="layer2"
    ).eval()
    assert ssd.map_sizes((300, 300)) == [(38, 38), (19, 19), (10, 10), (5, 5), (3, 3), (1, 1)]
    assert ssd.conv4_3_norm.scale.numel() == 8 and ssd.heads["fc7_mbox_loc"].in_channels == 16
    with torch.no_grad():
        loc, conf = ssd(torch.zeros(1, 3, 300, 300))
        assert loc.shape == (1, 8732, 4) and conf.shape == (1, 8732, 21)
        with pytest.raises(ValueError, match="too small for SSD: conv8_2, conv9_2 would be empty"):
            ssd(torch.zeros(1, 3, 100, 100))


def test_convert_imagenet_makes_a_checkpoint_of_a_full_width_resnet(tmp_path, capsys):
    shapes = torchvision_resnet(18, meta=True)  # torchvision's widths: the config records none
    state = {
        k: torch.zeros(v.shape, dtype=torch.long if v.dim() == 0 else torch.float32)
        for k, v in shapes.items()
    }
    torch.save(state, tmp_path / "resnet18-f37072fd.pth")
    out = tmp_path / "fcn32s-resnet18.pt"
    args = ["convert", "imagenet", str(tmp_path / "resnet18-f37072fd.pth"), "--arch", "fcn32s-resnet18"]
    assert main([*args, "--out", str(out)]) == 0
    assert (
        "fcn32s-resnet18, 21 classes, widths the architecture's own, preprocess imagenet"
        in capsys.readouterr().out
    )
    saved = torch.load(out, weights_only=True)
    assert saved["config"]["widths"] is None
    assert saved["state_dict"]["backbone.layer4.1.conv2.weight"].shape == (512, 512, 3, 3)
