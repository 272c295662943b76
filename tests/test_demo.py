"""Tests for ``fcnseg demo --quick``: every promised file, in the promised form."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from fcnseg import load_checkpoint
from fcnseg.cli import main
from fcnseg.cli.demo import QUICK_DATA
from fcnseg.data.palette import pascal_palette
from fcnseg.data.preprocess import preprocess
from fcnseg.data.synthetic import CLASS_NAMES, SyntheticSegmentation
from fcnseg.infer.overlay import colorize, figure, overlay

QUICK_TEST_SET = SyntheticSegmentation(QUICK_DATA["test_images"], seed=2, size_range=QUICK_DATA["image_size"])


def test_quick_demo_writes_everything(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--quick", "--out", str(out), "--quiet"]) == 0
    printed = capsys.readouterr().out
    assert "mean IU" in printed and "triangle" in printed and "total time" in printed
    assert "calling every pixel background would score pixel acc." in printed

    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics) == {"pixel_acc", "mean_acc", "mean_iu", "fw_iu", "per_class_iu", "class_names"}
    assert 0 < metrics["pixel_acc"] <= 1 and len(metrics["per_class_iu"]) == 6
    assert metrics["class_names"] == list(CLASS_NAMES)

    model = load_checkpoint(out / "model.pt")
    assert model.config["arch"] == "fcn8s"
    assert model.meta["metrics"]["mean_iu"] == metrics["mean_iu"]
    assert model.meta["class_names"][0] == "background"
    for name in ("best.pt", "last.pt", "log.csv"):
        assert (out / name).is_file()

    overlays = sorted((out / "overlays").glob("*.png"))
    assert len(overlays) == 4
    low, high = QUICK_DATA["image_size"]
    for path in overlays:
        width, height = Image.open(path).size
        panel, gaps = divmod(width - 2 * 4, 3)  # three panels of the same size, two 4-pixel gaps
        assert gaps == 0 and low * 3 <= panel <= high * 3
        assert height > low * 3 + 30  # titles above, the legend below
    # Each overlay is the test image, its truth and the saved model's prediction, with the legend.
    image, label = QUICK_TEST_SET[0]
    with torch.no_grad():
        pred = model(preprocess(image, model.meta["preprocess"])[None]).argmax(1)[0].numpy()
    panels = [("image", image), ("ground truth", label), ("prediction", pred)]
    expected = figure(panels, CLASS_NAMES, scale=3)
    np.testing.assert_array_equal(np.asarray(Image.open(overlays[0]).convert("RGB")), expected)
    assert (expected[:, -1] != 255).any()  # the panels reach the right edge: something is drawn
    with Image.open(out / "curves.png") as curves:
        assert curves.size == (920, 320)
        assert np.asarray(curves.convert("L")).min() < 128  # something was drawn


def test_demo_reruns_in_its_folder_but_not_in_a_foreign_one(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--quick", "--out", str(out), "--quiet", "--overlays", "1"]) == 0
    assert main(["demo", "--quick", "--out", str(out), "--quiet", "--overlays", "1"]) == 0
    assert len(list((out / "overlays").glob("*.png"))) == 1
    capsys.readouterr()
    (out / "notes.txt").write_text("mine")
    assert main(["demo", "--quick", "--out", str(out), "--quiet"]) == 2
    assert "not from a demo" in capsys.readouterr().err
    assert (out / "notes.txt").read_text() == "mine"


def test_overlay_blends_classes_and_leaves_background_and_void():
    image = np.full((2, 3, 3), 100, dtype=np.uint8)
    label = np.array([[0, 1, 255], [2, 2, 0]])
    shown = overlay(image, label, alpha=0.5)
    np.testing.assert_array_equal(shown[0, 0], [100, 100, 100])  # background
    np.testing.assert_array_equal(shown[0, 2], [100, 100, 100])  # void
    np.testing.assert_array_equal(shown[0, 1], [114, 50, 50])  # halfway to class 1's (128, 0, 0)
    np.testing.assert_array_equal(shown[1, 0], [50, 114, 50])  # class 2 is (0, 128, 0)
    np.testing.assert_array_equal(overlay(image, label, alpha=0.0), image)
    custom = overlay(image, label, np.array([[0, 0, 0], [255, 255, 255]]), alpha=1.0)
    np.testing.assert_array_equal(custom[0, 1], [255, 255, 255])
    with pytest.raises(ValueError, match="differ in size"):
        overlay(image, label[:, :2])


def test_colorize_keeps_ids_in_a_pascal_palette_png(tmp_path):
    label = np.array([[0, 1], [5, 255]])
    image = colorize(label)
    assert image.mode == "P"
    assert image.getpalette()[3:6] == [128, 0, 0]
    image.save(tmp_path / "mask.png")
    np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "mask.png")), label)
    assert np.asarray(image.convert("RGB"))[1, 1].tolist() == [224, 224, 192]  # VOC's void colour


def test_figure_draws_label_panels_in_palette_colours_with_a_legend():
    label = np.array([[0, 1, 2], [3, 4, 5]])
    image = np.full((2, 3, 3), 200, dtype=np.uint8)
    names = ["background", "disc", "square", "triangle", "ring", "bar"]
    shown = figure([("image", image), ("truth", label)], names, scale=4, font_size=12)
    top = 12 + 8  # one title line
    truth = shown[top : top + 8 : 4, 12 + 4 : 12 + 4 + 12 : 4]
    np.testing.assert_array_equal(truth, pascal_palette()[label])
    np.testing.assert_array_equal(shown[top : top + 8, :12], 200)
    legend = shown[top + 8 :]
    for class_id in range(1, 6):  # every class colour has a swatch in the legend
        assert (legend == pascal_palette()[class_id]).all(axis=-1).sum() >= 12 * 12 // 2, names[class_id]
