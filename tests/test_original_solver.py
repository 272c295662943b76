"""The original repository's solver details: frozen and reset upsampling, FCN-AlexNet's bias
multipliers and per-image normalised loss, and the data sets' own means and splits."""

import logging
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from fcnseg import build_model
from fcnseg.data.preprocess import get_preprocessing, preprocess
from fcnseg.errors import ConfigError
from fcnseg.models.layers import bilinear_kernel
from fcnseg.tasks.losses import segmentation_loss
from fcnseg.train.config import TrainConfig
from fcnseg.train.initial import initialise
from fcnseg.train.optim import make_optimizer

TINY = (4, 8, 8, 16, 16, 32)
TINY_ALEXNET = (4, 8, 8, 8, 8, 16)


def test_image_mean_averages_each_images_normalised_loss():
    g = torch.Generator().manual_seed(0)
    scores = torch.randn(3, 5, 6, 7, generator=g)
    target = torch.randint(0, 5, (3, 6, 7), generator=g)
    target[0, :5] = 255  # the first image has few labelled pixels: it weighs as much as the others
    target[2, :, :2] = 255
    per_image = [
        F.cross_entropy(s[None], t[None], ignore_index=255) for s, t in zip(scores, target, strict=True)
    ]
    image_mean = segmentation_loss(scores, target, reduction="image-mean")
    pixel_mean = segmentation_loss(scores, target, reduction="mean")
    assert image_mean.item() == pytest.approx(sum(per_image).item() / 3, rel=1e-6)
    assert not math.isclose(image_mean.item(), pixel_mean.item(), rel_tol=1e-3)
    nothing = torch.full((1, 6, 7), 255)
    assert segmentation_loss(scores[:1], nothing, reduction="image-mean").item() == 0


def _groups(model, **settings):
    config = TrainConfig(arch=model.config["arch"], caffe_bias=True, weight_decay=5e-4, **settings)
    optimizer = make_optimizer(model, config)
    names = {id(p): n for n, p in model.named_parameters()}
    return {
        (g["lr_mult"], g.get("weight_decay", 5e-4)): {names[id(p)] for p in g["params"]}
        for g in optimizer.param_groups
    }


def test_fcn_alexnet_backbone_biases_learn_at_the_lr_with_decay_as_its_net_py():
    groups = _groups(build_model("fcn-alexnet", 3, widths=TINY_ALEXNET))
    assert groups[(2.0, 0.0)] == {"score_fr.bias"}
    assert {"backbone.conv1.bias", "backbone.fc7.bias"} <= groups[(1.0, 5e-4)]
    vgg = _groups(build_model("fcn32s", 3, widths=TINY))
    assert {"backbone.conv1_1.bias", "score_fr.bias"} <= vgg[(2.0, 0.0)]
    forced = _groups(build_model("fcn-alexnet", 3, widths=TINY_ALEXNET), caffe_bias_backbone=True)
    assert "backbone.conv1.bias" in forced[(2.0, 0.0)]


def test_staged_init_resets_every_upsampling_to_bilinear_unless_told_not_to(caplog):
    coarse = build_model("fcn16s", 4, widths=TINY, frozen_upsampling="none")
    with torch.no_grad():
        coarse.upscore2.weight.add_(0.5)  # as if learned
        coarse.score_pool4.weight.fill_(0.25)
    initial = {"state_dict": coarse.state_dict(), "source": "fcn16s run"}
    caplog.set_level(logging.INFO, logger="fcnseg")
    fine = build_model("fcn8s", 4, widths=TINY)
    initialise(fine, TrainConfig(weight_init="default"), initial)
    assert torch.equal(fine.upscore2.weight, bilinear_kernel(4, 4))
    assert torch.equal(fine.score_pool4.weight, coarse.score_pool4.weight)
    assert caplog.messages[-1] == "upsampling reset to bilinear: upscore2, upscore_pool4, upscore8"
    kept = build_model("fcn8s", 4, widths=TINY)
    initialise(kept, TrainConfig(weight_init="default", reset_upsampling=False), initial)
    assert torch.equal(kept.upscore2.weight, coarse.upscore2.weight)


def test_data_set_means_and_depth_as_the_data_layers():
    rgb = np.zeros((1, 2, 3), np.uint8)
    rgb[..., 0], rgb[..., 1], rgb[..., 2] = 10, 20, 30
    assert preprocess(rgb, "siftflow")[:, 0, 0].tolist() == pytest.approx(
        [30 - 114.578, 20 - 115.294, 10 - 108.353]
    )
    assert preprocess(rgb, "nyud-hha")[:, 0, 0].tolist() == pytest.approx(
        [10 - 132.431, 20 - 94.076, 30 - 118.477]
    )
    depth = np.array([[[1000], [0]]], np.uint16)
    d = preprocess(depth, "nyud-depth")
    assert d.shape == (1, 1, 2) and d[0, 0, 0].item() == pytest.approx(math.log(1000) - 7.844, rel=1e-6)
    assert d[0, 0, 1].item() == pytest.approx(-7.844)  # no reading: log 1, never -inf
    rgbd = np.concatenate([rgb.astype(np.uint16), depth], axis=2)
    x = preprocess(rgbd, "nyud-color-depth")
    assert x.shape == (4, 1, 2)
    assert torch.equal(x[:3], preprocess(rgb, "nyud-color")) and torch.equal(x[3:], d)
    rgbhha = np.concatenate([rgb, rgb], axis=2)
    assert torch.equal(preprocess(rgbhha, "nyud-color-hha")[3:], preprocess(rgb, "nyud-hha"))
    assert [
        get_preprocessing(n).channels for n in ("caffe", "nyud-depth", "nyud-color-depth", "nyud-color-hha")
    ] == [3, 1, 4, 6]
    with pytest.raises(ValueError, match=r"nyud-color-depth preprocessing expects an \(H, W, 4\)"):
        preprocess(rgb, "nyud-color-depth")


def test_modality_and_preprocessing_must_agree():
    TrainConfig(dataset="nyud", data="x", modality="rgbd", preprocess="nyud-color-depth")
    with pytest.raises(ConfigError, match="takes 3 channels but modality 'rgbd' gives 4"):
        TrainConfig(dataset="nyud", data="x", modality="rgbd", preprocess="nyud-color")
    with pytest.raises(ConfigError, match="modality must be one of"):
        TrainConfig(modality="lidar")
