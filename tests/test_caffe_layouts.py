"""The original two-headed SIFT Flow nets and the colour + HHA late fusion, from their Caffe layer names."""

import numpy as np
import pytest
import torch
from tiny_nets import (
    caffe_layer,
    fusion_caffe_layers,
    fusion_nets,
    narrow_widths,
    siftflow_caffe_layers,
    siftflow_nets,
)

import fcnseg
from fcnseg.cli import main
from fcnseg.data.nyud import NYUD_CLASSES
from fcnseg.data.siftflow import SIFTFLOW_GEOMETRIC_CLASSES, SIFTFLOW_SEMANTIC_CLASSES
from fcnseg.models.fusion import LateFusionFCN
from fcnseg.models.heads import MultiHeadFCN
from fcnseg.models.layers import crop_like
from fcnseg.weights.caffe import load_caffe_weights
from fcnseg.weights.caffe_format import write_caffemodel
from fcnseg.weights.transfer import WeightsMismatchError


def _input(channels: int = 3, seed: int = 0) -> torch.Tensor:
    return torch.randn(1, channels, 37, 45, generator=torch.Generator().manual_seed(seed)) * 50


def _without(layers, name):
    assert any(layer.name == name for layer in layers), name
    return [layer for layer in layers if layer.name != name]


def _layer(layers, name):
    return next(layer for layer in layers if layer.name == name)


@pytest.mark.parametrize("arch", ["fcn32s", "fcn16s", "fcn8s"])
def test_siftflow_heads_equal_two_single_head_nets(tmp_path, arch):
    sem, geo = siftflow_nets(arch)
    path = tmp_path / f"siftflow-{arch}.caffemodel"
    write_caffemodel(path, siftflow_caffe_layers(sem, geo))
    model = fcnseg.load(path)
    assert isinstance(model, MultiHeadFCN) and model.config["arch"] == arch and model.heads == (5, 3)
    assert model.meta["preprocess"] == "siftflow" and model.meta["heads"] == [5, 3]
    assert model.head_names == ("semantic", "geometric")  # the layers' _sem and _geo say which is which
    assert "class_names" not in model.meta  # 5 + 3 classes are not SIFT Flow's
    x = _input()
    with torch.no_grad():
        scores_sem, scores_geo = model.split(model(x))
        for scores, single in ((scores_sem, sem(x)), (scores_geo, geo(x))):  # float32 rounding apart
            assert (scores - single).abs().max() <= 1e-6 * single.abs().max()
        assert scores_geo.abs().max() > 1  # the geometric head carries signal of its own


def test_siftflow_convert_gives_its_class_names_and_preprocessing(tmp_path, capsys):
    sem, geo = siftflow_nets("fcn16s", (len(SIFTFLOW_SEMANTIC_CLASSES), len(SIFTFLOW_GEOMETRIC_CLASSES)))
    path, out = tmp_path / "siftflow-fcn16s.caffemodel", tmp_path / "siftflow.pt"
    write_caffemodel(path, siftflow_caffe_layers(sem, geo), legacy_v1=True)  # biases as 1x1x1xN
    assert main(["convert", "caffe", str(path), "--arch", "fcn16s", "--out", str(out)]) == 0
    assert "fcn16s, 36 classes (heads 33+3)" in capsys.readouterr().out
    model = fcnseg.load(out)
    assert isinstance(model, MultiHeadFCN) and model.heads == (33, 3)
    assert model.meta["class_names"] == [*SIFTFLOW_SEMANTIC_CLASSES, *SIFTFLOW_GEOMETRIC_CLASSES]
    assert model.meta["preprocess"] == "siftflow"
    x = _input(seed=1)
    with torch.no_grad():
        assert torch.allclose(model(x), torch.cat([sem(x), geo(x)], 1), atol=1e-5)


def test_siftflow_file_that_does_not_fit_is_refused_naming_the_layer(tmp_path):
    sem, geo = siftflow_nets("fcn8s")
    layers = siftflow_caffe_layers(sem, geo)
    model = fcnseg.build_model("fcn8s", 8, widths=narrow_widths("fcn8s"), heads=(5, 3))
    before = {k: v.clone() for k, v in model.state_dict().items()}

    missing = _without(layers, "score_pool4_geo")
    misshaped = siftflow_caffe_layers(sem, geo)
    blobs = _layer(misshaped, "score_pool3_geo").blobs
    blobs[0], blobs[1] = np.concatenate([blobs[0], blobs[0][:1]]), np.concatenate([blobs[1], blobs[1][:1]])
    learned = siftflow_caffe_layers(sem, geo)
    _layer(learned, "upscore8_geo").blobs[0][0, 1] = 0.5  # class 0 from class 1: not bilinear
    cases = {
        "missing": (missing, "layers missing from the file: score_pool4_geo"),
        "misshaped": (
            misshaped,
            "layer score_pool3_geo weight: expected shape (3, 16, 1, 1), file has (4, 16, 1, 1)",
        ),
        "learned": (learned, "not bilinear, class by class: upscore8_geo"),
    }
    for name, (case, message) in cases.items():
        path = tmp_path / f"{name}.caffemodel"
        write_caffemodel(path, case)
        for load in (fcnseg.load, lambda p: load_caffe_weights(model, p)):
            with pytest.raises(WeightsMismatchError) as error:
                load(path)
            assert message in str(error.value) and path.name in str(error.value), name
        assert all(torch.equal(before[k], v) for k, v in model.state_dict().items()), name

    path = tmp_path / "whole.caffemodel"
    write_caffemodel(path, layers)
    x = _input(seed=2)
    with torch.no_grad():
        assert torch.allclose(
            load_caffe_weights(model, path).eval()(x), torch.cat([sem(x), geo(x)], 1), atol=1e-5
        )


def test_fusion_equals_its_caffe_net_computed_from_the_blobs(tmp_path):
    color, hha = fusion_nets()
    path = tmp_path / "nyud-fcn32s-color-hha.caffemodel"
    write_caffemodel(path, fusion_caffe_layers(color, hha))
    model = fcnseg.load(path)
    assert isinstance(model, LateFusionFCN) and model.config["arch"] == "fcn32s-late-fusion"
    assert model.meta["preprocess"] == "nyud-color-hha" and "class_names" not in model.meta
    x = _input(6, seed=3)
    with torch.no_grad():  # as net.py: score_fused = 0.5 score_frcolor + 0.5 score_frhha, upscore, crop
        fused = 0.5 * color.score_fr(color.backbone(x[:, :3])) + 0.5 * hha.score_fr(hha.backbone(x[:, 3:]))
        expected = crop_like(color.upscore(fused), color.output_offset, *x.shape[-2:])
        assert torch.allclose(model(x), expected, rtol=1e-5, atol=1e-4), (model(x) - expected).abs().max()
        assert (hha(x[:, 3:]) - color(x[:, :3])).abs().max() > 1  # the streams differ


def test_fusion_convert_gives_the_nyud_class_names(tmp_path, capsys):
    color, hha = fusion_nets(len(NYUD_CLASSES))
    path, out = tmp_path / "nyud-fcn32s-color-hha.caffemodel", tmp_path / "fusion.pt"
    write_caffemodel(path, fusion_caffe_layers(color, hha))
    assert main(["convert", "caffe", str(path), "--out", str(out)]) == 0
    assert "fcn32s-late-fusion, 40 classes" in capsys.readouterr().out
    model = fcnseg.load(out)
    assert model.meta["class_names"] == list(NYUD_CLASSES) and model.meta["preprocess"] == "nyud-color-hha"
    assert torch.equal(model.streams.hha.backbone.conv1_1.weight, hha.backbone.conv1_1.weight)


def test_fusion_file_that_does_not_fit_lists_every_problem(tmp_path):
    color, hha = fusion_nets()
    layers = _without(_without(fusion_caffe_layers(color, hha), "fc7hha"), "upscore")
    conv = _layer(layers, "conv2_1hha")
    conv.blobs[0] = conv.blobs[0][:, :2]
    path = tmp_path / "broken.caffemodel"
    write_caffemodel(path, layers)
    model = fcnseg.build_model("fcn32s-late-fusion", 4, widths=narrow_widths("fcn32s"))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    for load in (fcnseg.load, lambda p: load_caffe_weights(model, p)):
        with pytest.raises(WeightsMismatchError) as error:
            load(path)
        message = str(error.value)
        assert "broken.caffemodel" in message and "layers missing from the file: fc7hha, upscore" in message
        assert "layer conv2_1hha weight: expected shape (8, 4, 3, 3), file has (8, 2, 3, 3)" in message
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    with pytest.raises(WeightsMismatchError, match="holds an fcn32s-late-fusion model"):
        fcnseg.load(path, arch="fcn32s")

    layers = fusion_caffe_layers(color, hha)
    _layer(layers, "upscore").blobs[0] = np.zeros((4, 3, 64, 64), np.float32)
    write_caffemodel(path, layers)
    with pytest.raises(WeightsMismatchError) as error:
        fcnseg.load(path)
    message = str(error.value)  # it fills both streams' upsampling, and is named once
    assert message.count("layer upscore weight: expected shape (4, 4, 64, 64), file has (4, 3, 64, 64)") == 1


PER_LAYER = {
    "fcn8s": (3, 5, 6, 4, 7, 5, 6, 9, 8, 7, 6, 5, 9, 11, 7),  # conv1_1 .. conv5_3, fc6, fc7
    "hed": (3, 5, 6, 4, 7, 5, 6, 9, 8, 7, 6, 5, 9),  # conv1_1 .. conv5_3
    "fsds": (4, 3, 5, 6, 7, 5, 6, 8, 9, 7, 6, 5, 9),
    "fcn-alexnet": (6, 8, 6, 4, 8, 12, 10),  # conv1 .. conv5, fc6, fc7 (groups of 2)
}


@pytest.mark.parametrize("arch", sorted(PER_LAYER))
def test_every_layer_width_is_read_from_the_file(arch, tmp_path):
    """A file whose every convolution has its own width (no stage of one width, fc7 unlike fc6) converts
    to a net of those widths that computes what the net the file was written from computes."""
    torch.manual_seed(0)
    kind = "fcn" if arch.startswith("fcn") else "side"
    net = fcnseg.build_model(arch, *((4,) if kind == "fcn" else ()), widths=PER_LAYER[arch]).eval()
    with torch.no_grad():
        for p in net.parameters():
            if p.requires_grad:
                p.normal_(0, 0.2)
    layers = [
        caffe_layer(name.removeprefix("backbone."), module)
        for name, module in net.named_modules()
        if isinstance(module, torch.nn.Conv2d | torch.nn.ConvTranspose2d)
    ]
    write_caffemodel(tmp_path / "net.caffemodel", layers)
    model = fcnseg.load(tmp_path / "net.caffemodel")
    assert model.config["arch"] == arch and model.config["widths"] == list(PER_LAYER[arch])
    x = _input()
    with torch.no_grad():
        torch.testing.assert_close(model(x), net(x))
