"""Predicting and scoring with SIFT Flow's two-headed net: a label map per head, each head's metrics,
and a clear refusal from everything that takes one-headed nets only."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from tiny_datasets import write_siftflow
from tiny_nets import narrow_widths, random_net

import fcnseg
from fcnseg.cli import main
from fcnseg.data.preprocess import preprocess
from fcnseg.data.siftflow import SiftFlowSegmentation
from fcnseg.infer import predict as predict_module
from fcnseg.infer.predict import predict_batch
from fcnseg.infer.tiling import TilePlan, activation_bytes, tiled_scores
from fcnseg.tasks.siftflow import SiftFlowTask
from fcnseg.train.config import TrainConfig

HEADS = (33, 3)


def two_headed(heads: tuple[int, int] = HEADS, **meta) -> fcnseg.FCN:
    """The trunk as built, the score layers' weights drawn at random (no biases): labels vary by pixel."""
    torch.manual_seed(0)
    model = fcnseg.build_model("fcn8s", sum(heads), widths=narrow_widths("fcn8s"), heads=heads).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.startswith("score"):
                p.normal_(0, 1) if name.endswith("weight") else p.zero_()
    model.meta = {"preprocess": "siftflow", "heads": list(heads), **meta}
    return model


def head_argmax(model, images: np.ndarray) -> list[np.ndarray]:
    """Each head's labels straight from the net's output (the plain forward pass, no fast twin)."""
    with torch.no_grad():
        scores = model(preprocess(images, "siftflow"))
    return [part.argmax(1).numpy() for part in model.split(scores)]


def write_image(path: Path, height: int, width: int, seed: int) -> np.ndarray:
    path.parent.mkdir(parents=True, exist_ok=True)
    image = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    Image.fromarray(image).save(path)
    return image


def test_python_predict_gives_a_label_map_per_head():
    model = two_headed(head_names=["semantic", "geometric"])
    image = np.random.default_rng(0).integers(0, 256, (29, 41, 3), dtype=np.uint8)
    semantic, geometric = head_argmax(model, image[None])
    assert len(np.unique(semantic)) > 1 and len(np.unique(geometric)) > 1  # labels vary by pixel
    labels = fcnseg.predict(model, image)
    assert list(labels) == ["semantic", "geometric"]
    assert labels["semantic"].dtype == np.uint8 and labels["semantic"].shape == (29, 41)
    np.testing.assert_array_equal(labels["semantic"], semantic[0])
    np.testing.assert_array_equal(labels["geometric"], geometric[0])
    batch, probs = predict_batch(model, np.stack([image, image[::-1].copy()]))
    assert probs is None and batch["geometric"].shape == (2, 29, 41)
    np.testing.assert_array_equal(batch["geometric"][1], head_argmax(model, image[None, ::-1].copy())[1][0])


def test_an_image_over_the_memory_budget_is_tiled_with_the_same_labels_per_head(monkeypatch):
    model = two_headed(heads=(5, 3))  # few classes: the blended scores leave room for a 704 tile only
    image = np.random.default_rng(3).integers(0, 256, (800, 800, 3), dtype=np.uint8)
    budget = activation_bytes(model, 704, 704) + 4 * (model.num_classes + 1) * 800 * 800
    assert activation_bytes(model, 800, 800) > budget
    calls = []

    def recording(forward, x, num_classes, plan):
        calls.append(plan)
        return tiled_scores(forward, x, num_classes, plan)

    monkeypatch.setattr(predict_module, "tiled_scores", recording)
    tiled = fcnseg.predict(model, image, max_memory=budget)
    assert calls == [TilePlan(704, 96, 288)]  # overlapping tiles, both heads blended
    whole = fcnseg.predict(model, image, max_memory=2**40)
    assert len(calls) == 1 and list(tiled) == list(whole) == ["head0", "head1"]
    for name in whole:
        assert len(np.unique(whole[name])) > 1
        np.testing.assert_array_equal(tiled[name], whole[name])


def test_head_names_come_from_the_metadata():
    image = np.zeros((16, 16, 3), np.uint8)
    assert list(fcnseg.predict(two_headed(), image)) == ["head0", "head1"]
    assert list(fcnseg.predict(two_headed(head_names=["sem", "geo"]), image)) == ["sem", "geo"]
    for bad in (["semantic"], ["a", "a"], ["semantic", "../geometric"]):
        with pytest.raises(ValueError, match="distinct names of letters, digits, - or _, one per head"):
            fcnseg.predict(two_headed(head_names=bad), image)


def test_python_predict_refuses_what_a_two_headed_net_cannot_give():
    model, image = two_headed(), np.zeros((16, 16, 3), np.uint8)
    with pytest.raises(
        ValueError, match=r"^return_probs: a net of 2 heads \(head0, head1\) gives label maps"
    ):
        fcnseg.predict(model, image, return_probs=True)
    with pytest.raises(ValueError, match=r"^tta_flip, tta_scales, crf: a net of 2 heads"):
        fcnseg.predict(model, image, tta_flip=True, tta_scales=(1.0, 1.5), crf=fcnseg.CRFSettings())


def test_predict_command_writes_a_palette_png_per_head(tmp_path, capsys):
    train_set = SiftFlowSegmentation(write_siftflow(tmp_path / "data"), "trainval", task="both")
    config = TrainConfig(
        task="siftflow",
        dataset="siftflow",
        data=str(tmp_path / "data"),
        widths=narrow_widths("fcn8s"),
        init=None,
        preprocess="siftflow",
    )
    model = SiftFlowTask().build_model(config, train_set)  # the names a training run gives its net
    model.load_state_dict(two_headed().state_dict())
    model.eval()
    weights = fcnseg.save_checkpoint(model, tmp_path / "sift.pt")
    images = {
        "a": write_image(tmp_path / "in" / "a.png", 30, 40, 1),
        "b": write_image(tmp_path / "in" / "b.jpg", 17, 23, 2),
    }
    assert (
        main(["predict", str(weights), str(tmp_path / "in"), "--out", str(tmp_path / "out"), "--overlay"])
        == 0
    )
    assert "wrote semantic and geometric label maps of 2 of 2 images into" in capsys.readouterr().out
    endings = (".png", "_overlay.jpg", "_geometric.png", "_geometric_overlay.jpg")
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == sorted(
        s + e for s in "ab" for e in endings
    )
    for stem, image in images.items():
        if stem == "b":  # the net saw the decoded JPEG
            image = np.asarray(Image.open(tmp_path / "in" / "b.jpg").convert("RGB"))
        expected = head_argmax(model, image[None])
        for suffix, classes, labels in (("", 33, expected[0]), ("_geometric", 3, expected[1])):
            png = Image.open(tmp_path / "out" / f"{stem}{suffix}.png")
            assert png.mode == "P" and png.size == (image.shape[1], image.shape[0])
            written = np.asarray(png)
            assert written.max() < classes
            np.testing.assert_array_equal(written, labels[0])
            overlay = Image.open(tmp_path / "out" / f"{stem}{suffix}_overlay.jpg")
            assert overlay.size == png.size


def score_py(pred: np.ndarray, label: np.ndarray, classes: int) -> dict[str, float]:
    """The original score.py: fast_hist over the labelled pixels, then its four numbers."""
    k = label != 255
    hist = np.bincount(classes * label[k].astype(int) + pred[k], minlength=classes**2).reshape(
        classes, classes
    )
    with np.errstate(divide="ignore", invalid="ignore"):
        iu = np.diag(hist) / (hist.sum(1) + hist.sum(0) - np.diag(hist))
        freq = hist.sum(1) / hist.sum()
        return {
            "pixel_acc": np.diag(hist).sum() / hist.sum(),
            "mean_acc": np.nanmean(np.diag(hist) / hist.sum(1)),
            "mean_iu": np.nanmean(iu),
            "fw_iu": (freq[freq > 0] * iu[freq > 0]).sum(),
        }


def test_evaluate_command_scores_each_head_as_score_py(tmp_path, capsys):
    root = write_siftflow(tmp_path / "data")
    model = two_headed(head_names=["semantic", "geometric"])
    weights = fcnseg.save_checkpoint(model, tmp_path / "sift.pt")
    split = SiftFlowSegmentation(root, "trainval", task="both")
    preds = [head_argmax(model, image[None]) for image, _ in (split[i] for i in range(len(split)))]
    labels = [label for _, label in (split[i] for i in range(len(split)))]
    args = ["evaluate", str(weights), str(root), "--dataset", "siftflow", "--split", "trainval"]
    assert main([*args, "--json", "--batch-size", "2"]) == 0
    printed = json.loads(capsys.readouterr().out)
    for h, (head, classes) in enumerate((("sem", 33), ("geo", 3))):
        pred = np.concatenate([p[h][0].ravel() for p in preds])
        label = np.concatenate([lab[h].ravel() for lab in labels])
        for key, value in score_py(pred, label, classes).items():
            assert printed[f"{head}_{key}"] == pytest.approx(value, rel=1e-9), (head, key)
    assert main(args) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"{weights} (siftflow) on {root} (2 images)\nsemantic:\npixel acc. |")
    assert "\n\ngeometric:\npixel acc. |" in out and out.count("mean IU") == 2
    assert f"{100 * printed['geo_mean_iu']:10.1f}" in out.split("geometric:")[1]


def test_evaluate_refuses_data_whose_labels_do_not_fit_the_heads(tmp_path, capsys):
    model = random_net("fcn8s", num_classes=8, heads=(5, 3))
    weights = fcnseg.save_checkpoint(model, tmp_path / "sift.pt")
    root = write_siftflow(tmp_path / "data")
    assert main(["evaluate", str(weights), str(root), "--dataset", "siftflow"]) == 2
    assert "the net's heads have [5, 3] classes, the data's labels [33, 3]" in capsys.readouterr().err
    assert main(["evaluate", str(weights), str(root)]) == 2
    assert (
        "is a net of the siftflow task: give --dataset, one of siftflow, not folder"
        in capsys.readouterr().err
    )


def test_what_takes_one_headed_nets_refuses_a_two_headed_one_before_any_work(tmp_path, capsys):
    weights = fcnseg.save_checkpoint(two_headed(), tmp_path / "sift.pt")
    write_image(tmp_path / "in" / "a.png", 12, 12, 0)
    out = tmp_path / "out"
    for flags, named in ((["--crf"], "--crf"), (["--tta-flip", "--probs"], "--probs, --tta-flip")):
        assert main(["predict", str(weights), str(tmp_path / "in"), "--out", str(out), *flags]) == 2
        err = capsys.readouterr().err
        assert err == (
            f"fcnseg predict: error: {named}: only for segmentation nets of one output; {weights} is a net "
            "of the siftflow task\n"
        )
    assert not out.exists()
    assert main(["evaluate", str(weights), str(tmp_path), "--dataset", "siftflow", "--crf"]) == 2
    assert capsys.readouterr().err.startswith("fcnseg evaluate: error: --crf: only for segmentation nets")
    assert main(["export", "onnx", str(weights), "--out", str(tmp_path / "sift.onnx")]) == 2
    assert "holds a net of the siftflow task (fcn8s); fcnseg export works on segmentation nets of one" in (
        capsys.readouterr().err
    )
    assert not (tmp_path / "sift.onnx").exists()
    from fcnseg.serve.app import Predictor

    with pytest.raises(
        ValueError, match="sift.pt: a net of the siftflow task; fcnseg serve shows segmentation"
    ):
        Predictor(fcnseg.load(weights), "sift.pt")
