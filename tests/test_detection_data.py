"""Detection data and training: VOC annotations, SSD augmentation keyed for exact resume, synthetic
boxes, and the detection task through the one training loop."""

from __future__ import annotations

import json
import logging
import math

import numpy as np
import pytest
import torch
from PIL import Image
from tiny_datasets import write_voc, write_voc_detection

import fcnseg
from fcnseg.cli import main
from fcnseg.data.datasets import DataError
from fcnseg.data.detection import (
    DetectionSamples,
    _crop,
    _expand,
    check_annotations,
    detection_collate,
    resize_for_net,
    ssd_augment,
    voc_detection_split,
)
from fcnseg.data.synthetic import make_detection_sample, make_sample, sample_seed
from fcnseg.detection.loss import MultiBoxLoss
from fcnseg.tasks.detection import DetectionTask
from fcnseg.train.config import TrainConfig
from fcnseg.train.optim import set_lr
from fcnseg.train.trainer import train

TINY_SSD = (4, 8, 8, 16, 16, 16)


@pytest.fixture
def voc(tmp_path):
    return write_voc_detection(tmp_path)


def test_evaluate_a_detector_on_voc2007_test(voc, tmp_path, capsys):
    fcnseg.save_checkpoint(fcnseg.build_model("ssd300", 21, widths=TINY_SSD), tmp_path / "ssd.pt")
    assert main(["evaluate", str(tmp_path / "ssd.pt"), str(voc), "--dataset", "voc", "--json"]) == 0
    metrics = json.loads(capsys.readouterr().out)
    assert metrics["class_names"][15] == "person" and not math.isnan(metrics["ap"][15])
    assert sum(not math.isnan(ap) for ap in metrics["ap"]) == 1  # only person has a box in 2007 test


def test_voc07_plus_12_reads_boxes_classes_and_difficult_flags(voc, caplog):
    train = voc_detection_split("2007-trainval+2012-trainval", voc)
    assert len(train) == 2 and train.num_classes == 21
    image, target = train[0]
    assert image.shape == (60, 80, 3)
    np.testing.assert_array_equal(target["boxes"], [[10, 5, 40, 30], [1, 1, 80, 60]])
    assert target["labels"].tolist() == [12, 8] and target["difficult"].tolist() == [False, True]  # dog, cat
    assert train[1][1]["labels"].tolist() == [7]  # car, from VOC2012
    assert check_annotations(train) == 3
    caplog.set_level(logging.INFO, logger="fcnseg")
    DetectionTask().check_data(train, voc_detection_split("2007-test", voc), progress=False)
    assert caplog.messages == ["data: 2 training and 1 validation images, 4 boxes; 20 classes"]
    with pytest.raises(ValueError, match="<year>-<split>"):
        voc_detection_split("trainval", voc)


def test_bad_annotations_are_listed_together(voc):
    write_voc(
        voc,
        "2007",
        "bad",
        {
            "a": [("dog", (40, 5, 10, 30))],
            "b": [("unicorn", (1, 1, 5, 5)), ("cat", (3, 3, 3, 9))],
            "c": [("cat", (3, 3, "inf", 9))],
        },
    )
    with pytest.raises(DataError) as found:
        check_annotations(voc_detection_split("2007-bad", voc))
    text = str(found.value)
    assert "3 annotation(s)" in text and "a.xml" in text and "degenerate box [40.0, 5.0, 10.0, 30.0]" in text
    assert "class 'unicorn'" in text and "object 1 (cat): degenerate" in text
    assert "c.xml: object 0 (cat): bndbox [3.0, 3.0, inf, 9.0] is not finite" in text


def test_crop_keeps_boxes_whose_centre_is_inside_clipped_to_the_window():
    image = np.zeros((100, 100, 3), np.uint8)
    target = {
        "boxes": np.array([[0.1, 0.1, 0.3, 0.3], [0.4, 0.4, 0.9, 0.9], [0.45, 0.0, 0.6, 0.2]], np.float32),
        "labels": np.array([1, 2, 3]),
    }
    cut, kept = _crop(image, target, np.array([0.2, 0.2, 0.7, 0.7], np.float32))
    assert cut.shape == (50, 50, 3)
    assert kept["labels"].tolist() == [1, 2]  # box 3's centre (0.525, 0.1) lies above the window
    np.testing.assert_allclose(kept["boxes"], [[0, 0, 0.2, 0.2], [0.4, 0.4, 1, 1]], atol=1e-6)


def test_expand_keeps_each_box_on_its_pixels():
    rng = np.random.default_rng(1)
    image = rng.integers(0, 255, (40, 60, 3), dtype=np.uint8)
    boxes = np.array([[0.25, 0.25, 0.5, 1.0]], np.float32)
    for seed in range(6):
        canvas, moved = _expand(image, boxes, np.random.default_rng(seed))
        h, w = canvas.shape[:2]
        x0, y0, x1, y1 = np.rint(moved[0] * [w, h, w, h]).astype(int)
        np.testing.assert_array_equal(canvas[y0:y1, x0:x1], image[10:40, 15:30])


def test_augmentation_is_a_function_of_seed_epoch_and_index():
    from fcnseg.data.synthetic import SyntheticDetection

    samples = DetectionSamples(SyntheticDetection(4, size_range=(40, 60)), "imagenet", ssd_augment, seed=7)
    a, b, c = samples[(0, 2)], samples[(0, 2)], samples[(1, 2)]
    assert a[0].shape == (3, 300, 300)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1]["boxes"], b[1]["boxes"])
    assert not torch.equal(a[0], c[0])
    for epoch in range(8):
        boxes = samples[(epoch, 1)][1]["boxes"]
        assert ((boxes >= 0) & (boxes <= 1)).all() and (boxes[:, 2:] > boxes[:, :2]).all()
    images, targets = detection_collate([a, c])
    assert images.shape == (2, 3, 300, 300) and isinstance(targets, list) and len(targets) == 2


def test_synthetic_boxes_bound_the_visible_pixels_of_each_object():
    for index in range(5):
        seed = sample_seed(0, index)
        image, label = make_sample(seed)
        same, target = make_detection_sample(seed)
        np.testing.assert_array_equal(image, same)  # the segmentation images, unchanged
        assert len(target["boxes"]) >= 1 and (target["labels"] >= 1).all()
        for (x0, y0, x1, y1), cls in zip(target["boxes"].astype(int), target["labels"], strict=True):
            window = label[y0:y1, x0:x1] == cls
            assert window[0].any() and window[-1].any() and window[:, 0].any() and window[:, -1].any()


def test_multistep_lr_as_caffe():
    config = TrainConfig(lr=1e-3, lr_schedule="multistep", lr_steps=(3, 5), optimizer="sgd")
    optimizer = torch.optim.SGD([{"params": [torch.zeros(1, requires_grad=True)], "lr_mult": 2.0}], lr=1)
    lrs = [set_lr(optimizer, config, 0.0, step) for step in range(7)]
    assert lrs == pytest.approx([1e-3] * 3 + [1e-4] * 2 + [1e-5] * 2)
    assert optimizer.param_groups[0]["lr"] == pytest.approx(2e-5)
    with pytest.raises(ValueError, match="lr_steps"):
        TrainConfig(lr_schedule="multistep")
    with pytest.raises(ValueError, match="increasing"):
        TrainConfig(lr_steps=(5, 3))


def tiny_config(tmp_path, name, **overrides):
    values = dict(
        task="detection", widths=TINY_SSD, train_images=4, val_images=2, image_size=(40, 60),
        optimizer="sgd", lr=1e-3, lr_schedule="multistep", lr_steps=(3,), batch_size=2, epochs=2,
        val_every=2, preprocess="caffe", progress=False, seed=5, out=str(tmp_path / name),
    )  # fmt: skip
    values.update(overrides)
    return TrainConfig(**values)


def test_detection_trains_through_the_loop_and_resumes_exactly(tmp_path, monkeypatch):
    straight = train(tiny_config(tmp_path, "straight"))
    assert straight.steps == 4 and straight.model.config["arch"] == "ssd300"
    assert set(straight.best_metrics) >= {"map07", "map", "ap07"}
    real, calls = MultiBoxLoss.forward, {"n": 0}

    def dies_in_step_3(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt("killed")
        return real(self, *args, **kwargs)

    monkeypatch.setattr(MultiBoxLoss, "forward", dies_in_step_3)
    with pytest.raises(KeyboardInterrupt):
        train(tiny_config(tmp_path, "killed"))
    monkeypatch.undo()
    resumed = train(tiny_config(tmp_path, "killed"), resume=True)
    for key, value in straight.model.state_dict().items():
        assert torch.equal(value, resumed.model.state_dict()[key]), key


def test_predict_and_evaluate_a_detection_checkpoint(tmp_path, capsys):
    flags = "--task detection --widths 4,8,8,16,16,16 --train-images 4 --val-images 2 --image-size 40 60 "
    flags += f"--batch-size 2 --max-steps 2 --preprocess caffe --quiet --out {tmp_path / 'run'}"
    assert main(["train", *flags.split()]) == 0
    assert "trained ssd300 for 2 steps" in capsys.readouterr().out
    best = tmp_path / "run" / "best.pt"
    image = make_detection_sample(3)[0]
    Image.fromarray(image).save(tmp_path / "shapes.png")
    assert (
        main(
            [
                "predict",
                str(best),
                str(tmp_path / "shapes.png"),
                "--out",
                str(tmp_path / "out"),
                "--min-score",
                "0",
            ]
        )
        == 0
    )
    record = json.loads((tmp_path / "out" / "shapes.json").read_text())
    assert record["width"] == image.shape[1] and len(record["detections"]) <= 200
    for found in record["detections"]:
        x0, y0, x1, y1 = found["box"]
        assert 0 <= x0 <= x1 <= image.shape[1] and 0 <= y0 <= y1 <= image.shape[0]
        assert found["class"] in ("disc", "square", "triangle", "ring", "bar")
    assert Image.open(tmp_path / "out" / "shapes_boxes.jpg").size == (image.shape[1], image.shape[0])
    capsys.readouterr()
    assert main(["evaluate", str(best), "synthetic", "--images", "3", "--json"]) == 0
    metrics = json.loads(capsys.readouterr().out)
    assert 0 <= metrics["map07"] <= 1 and len(metrics["ap"]) == 6
    assert main(["export", "onnx", str(best), "--out", str(tmp_path / "m.onnx")]) == 2
    assert (
        "holds a net of the detection task (ssd300); fcnseg export works on segmentation nets"
        in capsys.readouterr().err
    )


def test_the_test_warp_is_opencvs_bilinear():
    """The reference warps test images with cv::resize (INTER_LINEAR): no smoothing when shrinking,
    unlike Pillow's bilinear; ours matches it to OpenCV's fixed-point rounding of one grey level."""
    cv2 = pytest.importorskip("cv2")
    rng = np.random.default_rng(0)
    for height, width, size in ((375, 500, 300), (97, 131, 300), (600, 800, 512)):
        image = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
        ours = resize_for_net(image, size).astype(int)
        theirs = cv2.resize(image, (size, size), interpolation=cv2.INTER_LINEAR).astype(int)
        assert ours.shape == (size, size, 3) and np.abs(ours - theirs).max() <= 1
        if height > size:  # shrinking: Pillow's bilinear (the warp before) smooths, far from the reference
            pillow = np.asarray(Image.fromarray(image).resize((size, size), Image.BILINEAR)).astype(int)
            assert np.abs(pillow - theirs).max() > 10
