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
    import scipy.io

    from fcnseg import build_model, save_checkpoint

    data = tmp_path / "BSR" / "BSDS500" / "data"
    (data / "groundTruth" / "val").mkdir(parents=True)
    (data / "images" / "val").mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name in ("1", "2"):
        Image.fromarray(rng.integers(0, 255, (24, 30, 3), dtype=np.uint8)).save(
            data / "images" / "val" / f"{name}.jpg"
        )
        cells = np.empty((1, 1), object)
        boundaries = np.zeros((24, 30), np.uint16)
        boundaries[12] = 1
        cells[0, 0] = {"Boundaries": boundaries}
        scipy.io.savemat(data / "groundTruth" / "val" / f"{name}.mat", {"groundTruth": cells})
    torch.manual_seed(0)
    weights = save_checkpoint(build_model("hed", widths=(4, 8, 8, 8, 8)), tmp_path / "hed.pt")
    assert (
        main(["evaluate", str(weights), str(tmp_path / "BSR"), "--dataset", "bsds500", "--split", "val"]) == 0
    )
    printed = capsys.readouterr().out
    assert "(edges) on" in printed and "(2 images)" in printed and "ODS" in printed
