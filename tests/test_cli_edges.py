"""``fcnseg train / evaluate / predict / convert / demo`` for edges (HED) and skeletons (FSDS)."""

import json
import re

import numpy as np
import pytest
import torch
from PIL import Image
from tiny_datasets import write_bsds500

from fcnseg import build_model, save_checkpoint
from fcnseg.cli import main
from fcnseg.data.edges import BSDS500
from fcnseg.data.preprocess import preprocess
from fcnseg.infer.edge_outputs import edge_output
from fcnseg.metrics.edges import edge_counts, scores, suppress
from fcnseg.tasks.edges import grey_map, predict_map
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


def _random_hed(path, seed=0):
    """A narrow HED with every layer random (the sides too, which start at 0), saved as a checkpoint."""
    torch.manual_seed(seed)
    model = build_model("hed", widths=(4, 8, 8, 8, 8))
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.normal_(0, 0.3)
    model.meta = {"preprocess": "imagenet", "task": "edges"}
    save_checkpoint(model, path)
    return model.eval()


def test_hed_merge_is_fuse_and_side_mean_halved():
    """merge_res.m: (fused map + mean of the five side maps) / 2, probabilities."""
    torch.manual_seed(0)
    hed = build_model("hed", widths=(4, 8, 8, 8, 8))
    with torch.no_grad():
        for p in hed.parameters():
            if p.requires_grad:
                p.normal_(0, 0.3)
    logits = hed(torch.randn(2, 3, 20, 28))
    p = torch.sigmoid(logits)
    want = (p[:, 5] + (p[:, 0] + p[:, 1] + p[:, 2] + p[:, 3] + p[:, 4]) / 5) / 2
    torch.testing.assert_close(edge_output(hed, logits, "merge"), want)
    torch.testing.assert_close(edge_output(hed, logits, "fuse"), p[:, 5])
    assert not torch.allclose(want, p[:, 5], atol=1e-3)
    fsds = build_model("fsds", widths=(4, 8, 8, 8, 8))
    with pytest.raises(ValueError, match="merge output is HED's"):
        edge_output(fsds, fsds(torch.randn(1, 3, 16, 16)), "merge")


def test_predict_and_evaluate_hed_merge(tmp_path, capsys):
    hed = _random_hed(tmp_path / "hed.pt")
    root = write_bsds500(tmp_path / "BSR")
    test = BSDS500(root, "test")
    image_path = test.pairs[0][0]
    assert (
        main(
            [
                "predict",
                str(tmp_path / "hed.pt"),
                str(image_path),
                "--out",
                str(tmp_path / "m"),
                "--edge-output",
                "merge",
            ]
        )
        == 0
    )
    written = np.array(Image.open(tmp_path / "m" / f"{image_path.stem}.png"))
    image = test[0][0]
    np.testing.assert_array_equal(written, grey_map(predict_map(hed, image, output="merge")))
    assert not np.array_equal(written, grey_map(predict_map(hed, image)))
    capsys.readouterr()
    args = [
        "evaluate",
        str(tmp_path / "hed.pt"),
        str(root),
        "--dataset",
        "bsds500",
        "--split",
        "test",
        "--json",
    ]
    assert main([*args, "--edge-output", "merge"]) == 0
    merged = json.loads(capsys.readouterr().out)
    # by hand: each image's fused map and side mean, each thinned, averaged, scored without more NMS
    counts = []
    for image, truth in test:
        with torch.no_grad():
            p = torch.sigmoid(hed(preprocess(image, "imagenet")[None]))[0].numpy()
        merge = (suppress(p[5]) + suppress(p[:5].mean(0))) / 2
        counts.append(edge_counts(merge, list(truth), nms=False))
    want = scores(counts)
    assert merged == pytest.approx(want, abs=0.02)
    assert main([*args, "--edge-output", "fuse"]) == 0
    assert json.loads(capsys.readouterr().out) != merged
    fsds = tmp_path / "fsds.pt"
    save_checkpoint(build_model("fsds", widths=(4, 8, 8, 8, 8)), fsds)
    assert (
        main(["predict", str(fsds), str(image_path), "--out", str(tmp_path / "f"), "--edge-output", "merge"])
        == 2
    )
    assert "only for HED nets" in capsys.readouterr().err
