"""Tests for what a run leaves in its folder besides the checkpoints: config.toml, steps.csv and
TensorBoard's event files."""

import csv
import dataclasses
import sys

import numpy as np
import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tiny_datasets import write_siftflow

from fcnseg.cli import build_parser, main
from fcnseg.cli.train import config_from_args
from fcnseg.errors import MissingExtraError
from fcnseg.tasks import get_task
from fcnseg.train.board import pictures, require_tensorboard
from fcnseg.train.config import TrainConfig, load_recipe
from fcnseg.train.run_folder import RunFolder

EVERY_FIELD = dict(
    task="segmentation", arch="fcn32s-late-fusion", widths=(4, 8, 8, 16, 16, 32), frozen_upsampling="final",
    reset_upsampling=False, init=None, init_streams={"color": "runs/rgb/best.pt", "hha": 'C:\\runs\\"hha".pt'},
    weight_init="default", dropout=0.0, dataset="nyud", data="data/nyud ü", val_data="data/val",
    val_fraction=0.25, train_split="trainval", val_split="none", test_split="test", test_data="data/test",
    modality="rgbhha", train_images=7, val_images=0, image_size=(48, 64), preprocess="nyud-color-hha",
    flip=True, scale_range=(0.5, 2.0), crop=320, num_classes=40, loss="sum", class_balance=True,
    class_balance_power=0.5, loss_keep_prob=0.25, loss_sampling="batch", loss_sampling_cell=32,
    optimizer="sgd", lr=1e-12, momentum=0.99, weight_decay=5e-4, caffe_bias=True, caffe_bias_backbone=False,
    lr_schedule="multistep", lr_step_size=7, lr_steps=(80000, 100000), lr_gamma=0.5, batch_size=2,
    iter_size=10, epochs=3, max_steps=100000, time_limit=1.5, amp="bf16", channels_last=True, accel=False,
    edge_output="fuse", seed=7, val_every=2000, checkpoint_every="50steps", val_batch_size=4, workers=2,
    device="cpu", out="runs/x", tensorboard=True, progress=False,
    notes='two\nlines, a "quote", a tab\t, a DEL \x7f and a backslash \\',
)  # fmt: skip
"""A value for every setting, most of them not the default: None, tuples, a table, odd strings."""


@pytest.mark.parametrize("config", [TrainConfig(**EVERY_FIELD), TrainConfig()], ids=["set", "defaults"])
def test_config_toml_reads_back_to_the_same_settings(config, tmp_path):
    assert set(EVERY_FIELD) == {f.name for f in dataclasses.fields(TrainConfig)}, "a new setting: add it"
    folder = RunFolder(tmp_path)
    folder.write_config(config)
    values = load_recipe(folder.config)
    assert "progress" not in values  # how an invocation shows itself, not a setting of the run
    again = TrainConfig.from_dict(values)
    assert again == dataclasses.replace(config, progress=True)
    assert isinstance(again.image_size, tuple) and again.init == config.init


TINY = [
    "--arch",
    "fcn32s",
    "--widths",
    "4,8,8,16,16,32",
    "--weight-init",
    "kaiming",
    "--preprocess",
    "imagenet",
]
SYNTHETIC = ["--train-images", "4", "--val-images", "2", "--image-size", "32", "40"]


def test_a_run_writes_its_settings_its_steps_and_tensorboard_events(tmp_path):
    """30 steps, validated every 10: config.toml runs the same settings again; steps.csv and the
    event files hold the loss and lr of every step, and the events the metrics and pictures of each
    validation."""
    run = tmp_path / "run"
    args = [*TINY, *SYNTHETIC, "--max-steps", "30", "--val-every", "10", "--threads", "1", "--quiet"]
    assert main(["train", *args, "--tensorboard", "--out", str(run)]) == 0

    ran = TrainConfig.from_dict(torch.load(run / "last.pt", weights_only=True)["train_config"])
    command = ["train", "--config", str(run / "config.toml"), "--out", str(tmp_path / "run2"), "--quiet"]
    assert config_from_args(build_parser().parse_args(command)) == dataclasses.replace(
        ran, out=str(tmp_path / "run2")
    )
    assert (ran.preprocess, ran.tensorboard, ran.max_steps) == ("imagenet", True, 30)

    with (run / "steps.csv").open() as f:
        steps = list(csv.DictReader(f))
    assert [int(row["step"]) for row in steps] == list(range(1, 31))
    assert [float(row["epoch"]) for row in steps[:5]] == [0.25, 0.5, 0.75, 1.0, 1.25]  # 4 steps an epoch
    assert float(steps[0]["lr"]) == 1e-4 and float(steps[-1]["lr"]) < float(steps[0]["lr"])  # poly

    events = EventAccumulator(str(run), size_guidance={"scalars": 0, "images": 0})
    events.Reload()
    loss = events.Scalars("train/loss")
    assert [e.step for e in loss] == list(range(1, 31))
    assert [e.value for e in loss] == pytest.approx([float(row["loss"]) for row in steps], rel=1e-6)
    assert [e.value for e in events.Scalars("train/lr")] == pytest.approx([float(r["lr"]) for r in steps])
    with (run / "log.csv").open() as f:
        validations = list(csv.DictReader(f))
    mean_iu = events.Scalars("val/mean_iu")
    assert [e.step for e in mean_iu] == [10, 20, 30]
    assert [e.value for e in mean_iu] == pytest.approx([float(row["mean_iu"]) for row in validations])
    pictures = events.Images("predictions/0")
    assert [p.step for p in pictures] == [10, 20, 30] and pictures[0].width >= 3 * 32  # 3 panels
    assert set(events.Tags()["images"]) == {"predictions/0", "predictions/1"}  # the 2 validation images


def test_tensorboard_without_its_extra_is_refused_before_any_work(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # as when it is not installed
    run = tmp_path / "run"
    args = [*TINY, *SYNTHETIC, "--max-steps", "1", "--tensorboard", "--quiet", "--out", str(run)]
    assert main(["train", *args]) == 2
    assert capsys.readouterr().err == (
        "fcnseg train: error: --tensorboard needs the tensorboard extra: pip install 'fcnseg[tensorboard]'\n"
    )
    assert not run.exists()
    with pytest.raises(MissingExtraError, match=r"pip install 'fcnseg\[tensorboard\]'"):
        require_tensorboard()


@pytest.mark.parametrize(
    "task, panels", [("segmentation", 3), ("edges", 3), ("siftflow", 5), ("detection", 0)]
)
def test_each_task_pictures_its_predictions_or_none(task, panels, tmp_path):
    """Image | ground truth | prediction, SIFT Flow's two heads side by side; detection draws none."""
    preprocess = {"siftflow": "siftflow", "detection": "ssd"}.get(task, "imagenet")
    values = dict(
        task=task, init=None, preprocess=preprocess, train_images=1, val_images=2, image_size=(32, 32)
    )
    if task == "siftflow":
        values.update(dataset="siftflow", data=str(write_siftflow(tmp_path / "siftflow", 32, 32)))
    config = TrainConfig(**values, widths=(4, 8, 8, 8, 8) if task == "edges" else (4, 8, 8, 16, 16, 32))
    train_set, val_set = get_task(task).datasets(config)
    model = get_task(task).build_model(config, train_set).train()
    drawn = pictures(get_task(task), model, val_set)
    assert model.training  # as it was
    assert len(drawn) == (min(len(val_set), 3) if panels else 0)  # the first 3 images, at most
    for picture in drawn:
        assert picture.dtype == np.uint8 and picture.shape[2] == 3
        assert panels * 32 <= picture.shape[1] < (panels + 1) * 32  # the panels, with or without gaps
