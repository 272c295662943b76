"""``fcnseg train / evaluate / predict / convert / demo`` for edges (HED) and skeletons (FSDS)."""

import json
import re

import numpy as np
import pytest
import torch
from PIL import Image

from fcnseg.cli import main
from fcnseg.weights.caffe_format import CaffeLayer, write_caffemodel

TINY = ["--widths", "4,8,8,8,8", "--init", "none", "--weight-init", "kaiming", "--preprocess", "imagenet"]
SYNTHETIC = ["--train-images", "4", "--val-images", "2", "--image-size", "32", "40"]


@pytest.mark.parametrize("task, arch", [("edges", "hed"), ("skeleton", "fsds")])
def test_train_evaluate_predict(task, arch, tmp_path, capsys):
    out = tmp_path / "run"
    args = ["train", "--task", task, *TINY, *SYNTHETIC, "--batch-size", "2", "--iter-size", "2", "--quiet"]
    assert main([*args, "--lr", "1e-3", "--epochs", "2", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert f"trained {arch} for 2 steps" in printed and "ODS" in printed and "AP" in printed
    saved = torch.load(out / "last.pt", weights_only=True)
    assert saved["config"]["arch"] == arch and saved["meta"]["task"] == task
    assert saved["train_config"]["iter_size"] == 2
    # evaluate takes the task from the checkpoint
    assert main(["evaluate", str(out / "best.pt"), "synthetic", "--images", "2", "--json"]) == 0
    metrics = json.loads(capsys.readouterr().out)
    assert set(metrics) == {"ods", "ois", "ap"} and all(0 <= v <= 1 for v in metrics.values())
    image = np.random.default_rng(0).integers(0, 255, (21, 30, 3), dtype=np.uint8)
    Image.fromarray(image).save(tmp_path / "a.jpg")
    maps = tmp_path / "maps"
    assert (
        main(["predict", str(out / "best.pt"), str(tmp_path / "a.jpg"), "--out", str(maps), "--overlay"]) == 0
    )
    grey, overlay = Image.open(maps / "a.png"), Image.open(maps / "a_overlay.jpg")
    assert grey.mode == "L" and grey.size == (30, 21) and overlay.size == (30, 21)
    assert (
        main(["predict", str(out / "best.pt"), str(tmp_path / "a.jpg"), "--out", str(maps), "--probs"]) == 2
    )
    assert "--probs" in capsys.readouterr().err


def test_convert_hed_caffemodel(tmp_path, capsys):
    torch.manual_seed(0)
    from fcnseg import build_model

    model = build_model("hed", widths=(4, 8, 8, 8, 8))
    with torch.no_grad():  # the side layers start at 0: give them values a conversion can get wrong
        for name, p in model.named_parameters():
            if name.startswith("score-dsn"):
                p.normal_()
    layers = [
        CaffeLayer(
            name.removeprefix("backbone."),
            "Deconvolution" if name.startswith("upsample") else "Convolution",
            [p.detach().numpy() * 2 for p in module.parameters(recurse=False)],
            {},
        )
        for name, module in model.named_modules()
        if list(module.parameters(recurse=False))
    ]
    path = tmp_path / "hed_pretrained_bsds.caffemodel"
    write_caffemodel(path, layers)
    out = tmp_path / "hed.pt"
    assert main(["convert", "caffe", str(path), "--arch", "hed", "--out", str(out)]) == 0
    assert "hed, edges, widths 4,8,8,8,8, preprocess caffe" in capsys.readouterr().out
    saved = torch.load(out, weights_only=True)
    torch.testing.assert_close(
        saved["state_dict"]["score-dsn2.weight"], 2 * model.state_dict()["score-dsn2.weight"]
    )
    assert main(["convert", "caffe", str(path), "--arch", "fsds", "--out", str(out)]) == 2
    assert "holds an hed model" in capsys.readouterr().err


@pytest.mark.parametrize("task", ["edges", "skeleton"])
def test_quick_demo(task, tmp_path, capsys):
    assert main(["demo", "--task", task, "--quick", "--quiet", "--out", str(tmp_path / "demo")]) == 0
    printed = capsys.readouterr().out
    assert "ODS" in printed and "OIS" in printed and "AP" in printed
    assert set(json.loads((tmp_path / "demo" / "metrics.json").read_text())) == {"ods", "ois", "ap"}
    assert (tmp_path / "demo" / "overlays" / "sample_0.png").is_file()


def test_info_lists_the_side_outputs(capsys):
    assert main(["info", "hed", "--size", "321x481"]) == 0
    printed = capsys.readouterr().out
    assert printed.startswith("hed: edges, 6 outputs, input 3x321x481")
    assert re.search(r"^new-score-weighting +conv 1x1 ", printed, re.M)
    fields = [
        int(line.split("receptive field ")[1].split("x")[0])
        for line in printed.splitlines()
        if " on conv" in line
    ]
    assert fields == [5, 14, 40, 92, 196]  # the receptive fields FSDS's scale classes are drawn from
    assert "score-dsn5        on conv5_3: stride 16, receptive field 196x196, crop at 42" in printed


def test_evaluation_without_the_edges_extra_says_what_to_install(monkeypatch):
    import sys

    import fcnseg
    from fcnseg.errors import MissingExtraError

    monkeypatch.setitem(sys.modules, "pyEdgeEval.common.binary_label", None)
    with pytest.raises(MissingExtraError, match=r"pip install 'fcnseg\[edges\]'"):
        fcnseg.evaluate_edges([np.zeros((4, 4))], [[np.zeros((4, 4), bool)]])


def test_evaluate_on_bsds500(tmp_path, capsys):
    from fcnseg import build_model, save_checkpoint

    boundaries = np.zeros((24, 30))
    boundaries[12] = 1
    root = _bsds_val(tmp_path, {"1": boundaries, "2": boundaries})
    torch.manual_seed(0)
    weights = save_checkpoint(build_model("hed", widths=(4, 8, 8, 8, 8)), tmp_path / "hed.pt")
    assert main(["evaluate", str(weights), str(root), "--dataset", "bsds500", "--split", "val"]) == 0
    printed = capsys.readouterr().out
    assert "(edges) on" in printed and "(2 images)" in printed and "ODS" in printed


def _caffe_file(path, model, extra=()):
    """A .caffemodel of ``model``'s learned layers by their Caffe names, and ``extra`` layers."""
    layers = [
        CaffeLayer(name.removeprefix("backbone."), "Convolution", [p.detach().numpy() for p in params], {})
        for name, module in model.named_modules()
        if (params := list(module.parameters(recurse=False)))
    ]
    write_caffemodel(path, [*layers, *extra])
    return path


@pytest.mark.parametrize(
    "holds, arch, says",
    [
        ("fcn8s", "hed", "--arch hed given, but the file holds an fcn8s model"),
        ("fcn8s", "fsds", "--arch fsds given, but the file holds an fcn8s model"),
        ("fsds", "hed", "--arch hed given, but the file holds an fsds model"),
        ("vgg16", "hed", "a VGG16 trunk with none of the score layers"),
    ],
)
def test_convert_refuses_a_caffemodel_of_another_net(holds, arch, says, tmp_path, capsys):
    from fcnseg import build_model

    torch.manual_seed(0)
    widths = (4, 8, 8, 8, 8)
    if holds == "vgg16":  # an ImageNet classifier: the trunk and fc6..fc8, no score layer
        trunk = build_model("hed", widths=widths).backbone
        fc = [
            CaffeLayer(name, "InnerProduct", [np.zeros((n, m), np.float32), np.zeros(n, np.float32)], {})
            for name, n, m in (("fc6", 16, 8 * 49), ("fc7", 16, 16), ("fc8", 1000, 16))
        ]
        path = _caffe_file(tmp_path / "vgg16.caffemodel", trunk, fc)
    else:
        net = build_model(holds, widths=(*widths, 16) if holds == "fcn8s" else widths)
        path = _caffe_file(tmp_path / f"{holds}.caffemodel", net)
    out = tmp_path / "out.pt"
    assert main(["convert", "caffe", str(path), "--arch", arch, "--out", str(out)]) == 2
    error = capsys.readouterr().err
    assert str(path) in error and says in error
    if holds == "vgg16":
        assert "fc6, fc7, fc8" in error and "fcnseg convert imagenet" in error
    assert not out.exists() and list(tmp_path.iterdir()) == [path]


def _bsds_val(tmp_path, boundaries: dict[str, np.ndarray]):
    """A BSDS500 validation split of random 24x30 images with one annotator's ``boundaries`` each."""
    import scipy.io

    data = tmp_path / "BSR" / "BSDS500" / "data"
    (data / "groundTruth" / "val").mkdir(parents=True)
    (data / "images" / "val").mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name, truth in boundaries.items():
        Image.fromarray(rng.integers(0, 255, (24, 30, 3), dtype=np.uint8)).save(
            data / "images" / "val" / f"{name}.jpg"
        )
        cells = np.empty((1, 1), object)
        cells[0, 0] = {"Boundaries": truth.astype(np.uint16)}
        scipy.io.savemat(data / "groundTruth" / "val" / f"{name}.mat", {"groundTruth": cells})
    return tmp_path / "BSR"


def test_evaluate_names_the_file_whose_score_cannot_be_computed(tmp_path, capsys):
    from fcnseg import build_model, save_checkpoint

    line, empty = np.zeros((24, 30)), np.zeros((24, 30))
    line[12] = 1
    root = _bsds_val(tmp_path, {"1": line, "2": empty})
    torch.manual_seed(0)
    model = build_model("hed", widths=(4, 8, 8, 8, 8))
    weights = save_checkpoint(model, tmp_path / "hed.pt")
    args = ["evaluate", str(weights), str(root), "--dataset", "bsds500", "--split", "val", "--json"]
    # an image with no edges is scored (it adds no recall), not refused
    assert main(args) == 0
    metrics = json.loads(capsys.readouterr().out)
    assert all(np.isfinite(v) and 0 <= v <= 1 for v in metrics.values())
    with torch.no_grad():
        model.backbone.conv1_1.bias.fill_(float("nan"))  # a net that diverged
    save_checkpoint(model, weights)
    assert main(args) == 2
    error = capsys.readouterr().err
    assert "groundTruth/val/1.mat: the prediction has 720 NaN pixel(s)" in error
