"""SSD300 and SSD512: the reduced VGG16 trunk, the extra layers, the heads' layout and the priors they
predict for."""

from __future__ import annotations

import pytest
import torch

import fcnseg
from fcnseg.detection import prior_boxes
from fcnseg.models.ssd import L2Normalize, reduce_vgg16, ssd_trunk
from fcnseg.models.vgg import vgg16_backbone

TINY_SSD = (4, 8, 8, 16, 16, 16)


def tiny(num_classes: int = 4) -> torch.nn.Module:
    torch.manual_seed(0)
    return fcnseg.build_model("ssd300", num_classes, widths=TINY_SSD).eval()


def test_full_ssd300_layout_as_in_ssd_pascal():
    with torch.device("meta"):
        model = fcnseg.build_model("ssd300", 21)
    trunk = model.backbone
    assert trunk.conv1_1.padding == (1, 1)
    assert (trunk.pool5.kernel_size, trunk.pool5.stride, trunk.pool5.padding) == (3, 1, 1)
    assert (
        trunk.fc6.weight.shape == (1024, 512, 3, 3)
        and trunk.fc6.dilation == (6, 6)
        and trunk.fc6.padding == (6, 6)
    )
    assert trunk.fc7.weight.shape == (1024, 1024, 1, 1)
    assert not any(isinstance(m, torch.nn.Dropout) for m in model.modules())
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert shapes["conv4_3_norm.scale"] == (512,)
    expected = {
        "conv6_1": (256, 1024, 1, 1), "conv6_2": (512, 256, 3, 3), "conv7_1": (128, 512, 1, 1),
        "conv7_2": (256, 128, 3, 3), "conv8_1": (128, 256, 1, 1), "conv8_2": (256, 128, 3, 3),
        "conv9_1": (128, 256, 1, 1), "conv9_2": (256, 128, 3, 3),
    }  # fmt: skip
    assert {k: shapes[f"extras.{k}.weight"] for k in expected} == expected
    heads = {
        k.split(".")[1]: v[0] for k, v in shapes.items() if k.startswith("heads.") and k.endswith("weight")
    }
    assert heads == {
        "conv4_3_norm_mbox_loc": 16, "conv4_3_norm_mbox_conf": 84, "fc7_mbox_loc": 24, "fc7_mbox_conf": 126,
        "conv6_2_mbox_loc": 24, "conv6_2_mbox_conf": 126, "conv7_2_mbox_loc": 24, "conv7_2_mbox_conf": 126,
        "conv8_2_mbox_loc": 16, "conv8_2_mbox_conf": 84, "conv9_2_mbox_loc": 16, "conv9_2_mbox_conf": 84,
    }  # fmt: skip
    assert model.map_sizes((300, 300)) == [(38, 38), (19, 19), (10, 10), (5, 5), (3, 3), (1, 1)]


def test_full_ssd512_layout_as_in_ssd_pascal_512():
    """ssd_pascal_512.py: conv8_2 and conv9_2 of stride 2, conv10_2 a 4x4 convolution (padding 1),
    seven sources from 64x64 to 1x1, priors from 7% and 15% to 90% of 512 pixels: 24,564."""
    assert prior_boxes("ssd512").shape == (24564, 4)
    spec = fcnseg.detection.prior_spec("ssd512")
    assert [layer.min_size for layer in spec.layers] == pytest.approx(
        [35.84, 76.8, 153.6, 230.4, 307.2, 384.0, 460.8]
    )
    assert [layer.max_size for layer in spec.layers] == pytest.approx(
        [76.8, 153.6, 230.4, 307.2, 384.0, 460.8, 537.6]
    )
    assert spec.per_location == [4, 6, 6, 6, 6, 4, 4]
    with torch.device("meta"):
        model = fcnseg.build_model("ssd512", 21)
        loc, conf = model(torch.empty(2, 3, 512, 512))
    assert loc.shape == (2, 24564, 4) and conf.shape == (2, 24564, 21)
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert shapes["backbone.fc6.weight"] == (1024, 512, 3, 3)
    expected = {
        "conv6_2": (512, 256, 3, 3), "conv7_2": (256, 128, 3, 3), "conv8_2": (256, 128, 3, 3),
        "conv9_2": (256, 128, 3, 3), "conv10_1": (128, 256, 1, 1), "conv10_2": (256, 128, 4, 4),
    }  # fmt: skip
    assert {k: shapes[f"extras.{k}.weight"] for k in expected} == expected
    assert model.extras.conv10_2.padding == (1, 1) and model.extras.conv8_2.stride == (2, 2)
    assert shapes["heads.conv10_2_mbox_conf.weight"] == (84, 256, 3, 3)
    assert shapes["heads.conv8_2_mbox_loc.weight"] == (24, 256, 3, 3)
    assert model.map_sizes((512, 512)) == [(64, 64), (32, 32), (16, 16), (8, 8), (4, 4), (2, 2), (1, 1)]
    # the first prior of conv10_2: the image's centre, 460.8 pixels wide
    assert prior_boxes("ssd512")[-4].tolist() == pytest.approx([0.5, 0.5, 0.9, 0.9])


def test_narrow_ssd512_forward_and_its_priors():
    torch.manual_seed(0)
    model = fcnseg.build_model("ssd512", 3, widths=TINY_SSD).eval()
    loc, conf = model(torch.randn(1, 3, 512, 512))
    assert loc.shape == (1, 24564, 4) and conf.shape == (1, 24564, 3)
    torch.testing.assert_close(model.priors((512, 512)), prior_boxes("ssd512"))


def test_extra_layers_start_as_caffe_xavier():
    """ssd_pascal.py fills the extra layers and heads with Caffe's xavier: uniform in +-sqrt(3 / fan_in)."""
    torch.manual_seed(0)
    with torch.no_grad():
        model = fcnseg.build_model("ssd300", 21)
    for name in ("conv6_1", "conv7_2"):
        w = getattr(model.extras, name).weight.detach()
        bound = (3 / w[0].numel()) ** 0.5
        assert w.abs().max() <= bound and w.abs().max() > 0.99 * bound
        assert float(w.var()) == pytest.approx(bound**2 / 3, rel=0.05)  # a uniform's variance
        assert torch.all(getattr(model.extras, name).bias == 0)


def test_every_layer_may_have_its_own_width():
    """15 trunk widths (conv1_1 .. conv5_3, fc6, fc7) and the extra layers' own widths."""
    trunk = [3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17]
    extras = [5, 6, 7, 8, 9, 10, 11, 12]
    model = fcnseg.build_model("ssd300", 3, widths=trunk, extra_widths=extras)
    assert model.backbone.conv3_2.weight.shape == (8, 7, 3, 3) and model.backbone.fc7.weight.shape == (
        17,
        16,
        1,
        1,
    )
    assert model.extras.conv9_2.weight.shape == (12, 11, 3, 3)
    assert model.heads["conv9_2_mbox_conf"].weight.shape == (12, 12, 3, 3)
    assert model.config["extra_widths"] == extras
    loc, _ = model(torch.randn(1, 3, 300, 300))
    assert loc.shape == (1, 8732, 4)
    with pytest.raises(ValueError, match="8 extra layers .* need as many widths"):
        fcnseg.build_model("ssd300", widths=trunk, extra_widths=extras[:3])


def test_forward_gives_one_prediction_per_prior_in_prior_order():
    model = tiny()
    x = torch.randn(2, 3, 300, 300)
    loc, conf = model(x)
    assert loc.shape == (2, 8732, 4) and conf.shape == (2, 8732, 4)
    torch.testing.assert_close(model.priors((300, 300)), prior_boxes("ssd300"))
    # Caffe's Permute(0, 2, 3, 1) / Flatten / Concat: prior (row 2, column 5, shape 3) of fc7
    with torch.no_grad():
        fc7 = model.features(x)[1]
        raw_loc = model.heads["fc7_mbox_loc"](fc7)  # (N, 6 * 4, 19, 19)
        raw_conf = model.heads["fc7_mbox_conf"](fc7)  # (N, 6 * 4 classes, 19, 19)
    index = 38 * 38 * 4 + (2 * 19 + 5) * 6 + 3
    torch.testing.assert_close(loc[:, index], raw_loc[:, 12:16, 2, 5])
    torch.testing.assert_close(conf[:, index], raw_conf[:, 12:16, 2, 5])
    assert prior_boxes("ssd300")[index, :2].tolist() == pytest.approx([5.5 * 16 / 300, 2.5 * 16 / 300])


def test_other_input_sizes_get_their_own_priors():
    model = tiny()
    loc, conf = model(torch.randn(1, 3, 260, 340))
    assert loc.shape[1] == model.priors((260, 340)).shape[0] == conf.shape[1]
    with pytest.raises(ValueError, match="too small.*conv9_2"):
        model(torch.randn(1, 3, 200, 300))
    with pytest.raises(ValueError, match=r"expected input \(N, 3, H, W\)"):
        model(torch.randn(1, 1, 300, 300))


def test_l2_normalize_by_hand():
    layer = L2Normalize(2)
    x = torch.tensor([3.0, 4.0]).view(1, 2, 1, 1)
    torch.testing.assert_close(layer(x).flatten(), torch.tensor([12.0, 16.0]))


def test_reduce_vgg16_subsamples_the_rarefied_fc_layers():
    torch.manual_seed(0)
    vgg = vgg16_backbone((4, 8, 8, 16, 16, 64))  # fc6 7x7 over 16 channels, 64 wide; padding 100
    for p in vgg.parameters():
        torch.nn.init.normal_(p, std=0.1)
    trunk = reduce_vgg16(vgg).eval()
    assert str(trunk) == str(ssd_trunk(TINY_SSD))  # the same layers as a fresh trunk
    torch.testing.assert_close(trunk.fc6.weight, vgg.fc6.weight[::4, :, ::3, ::3])
    torch.testing.assert_close(trunk.fc7.weight, vgg.fc7.weight[::4, ::4])
    torch.testing.assert_close(trunk.conv5_3.weight, vgg.conv5_3.weight)
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        pool5 = trunk[: list(dict(trunk.named_children())).index("pool5") + 1](x)
        fc6 = trunk.fc6(pool5)
    # fc6 at (y, x) reads pool5 at offsets -6, 0, 6: VGG16's taps 0, 3, 6 at pool5's old stride 2
    y0, x0 = 6, 7
    taps = pool5[0, :, y0 - 6 : y0 + 7 : 6, x0 - 6 : x0 + 7 : 6]
    by_hand = torch.einsum("oiyx,iyx->o", vgg.fc6.weight[::4, :, ::3, ::3], taps) + vgg.fc6.bias[::4]
    torch.testing.assert_close(fc6[0, :, y0, x0], by_hand)


def test_backward_reaches_every_parameter():
    model = tiny().train()
    loc, conf = model(torch.randn(1, 3, 300, 300))
    (loc.square().mean() + conf.square().mean()).backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_bad_arguments():
    with pytest.raises(ValueError, match="6 widths .* or 15"):
        fcnseg.build_model("ssd300", widths=(1, 2, 3))
    with pytest.raises(ValueError, match="at least 2"):
        fcnseg.build_model("ssd300", 1, widths=TINY_SSD)


def test_ssd_from_an_imagenet_vgg16_reduces_fc6_and_fc7():
    from fcnseg.train.initial import IMAGENET
    from fcnseg.weights.imagenet import ssd_from_imagenet

    gen = torch.Generator().manual_seed(0)
    widths, state, index, channels = (4, 8, 8, 16, 16), {}, 0, 3
    for width, repeats in zip(widths, (2, 2, 3, 3, 3), strict=True):
        for _ in range(repeats):
            state[f"features.{index}.weight"] = torch.randn(width, channels, 3, 3, generator=gen)
            state[f"features.{index}.bias"] = torch.randn(width, generator=gen)
            index, channels = index + 2, width
        index += 1
    for n, shape in ((0, (64, 16 * 7 * 7)), (3, (64, 64)), (6, (10, 64))):  # fc6, fc7, fc8 (dropped)
        state[f"classifier.{n}.weight"] = torch.randn(*shape, generator=gen)
        state[f"classifier.{n}.bias"] = torch.randn(shape[0], generator=gen)
    model = ssd_from_imagenet(state, num_classes=4)
    assert model.config["widths"] == [*widths, 16] and model.meta["preprocess"] == "imagenet"
    fc6 = state["classifier.0.weight"].reshape(64, 16, 7, 7)
    torch.testing.assert_close(model.backbone.fc6.weight, fc6[::4, :, ::3, ::3])
    torch.testing.assert_close(model.backbone.fc7.weight[:, :, 0, 0], state["classifier.3.weight"][::4, ::4])
    torch.testing.assert_close(model.backbone.conv5_3.weight, state["features.28.weight"])
    assert IMAGENET["ssd300"] == "imagenet"  # training starts from it by default, as the reference
