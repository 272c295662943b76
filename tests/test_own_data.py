"""Training on one's own folder with no flags: classes from the masks, every pair checked up front,
ImageNet or a clear line, an estimate of the time, and a checkpoint on Ctrl-C, SIGTERM and the clock."""

import itertools
import os
import signal

import numpy as np
import pytest
import torch
from PIL import Image

import fcnseg.tasks.losses as losses_module
import fcnseg.train.trainer as trainer_module
from fcnseg.cli import main
from fcnseg.data.datasets import DataError
from fcnseg.data.folder import FolderSegmentation
from fcnseg.data.synthetic import write_synthetic_folder
from fcnseg.tasks import get_task
from fcnseg.train.config import TrainConfig
from fcnseg.train.initial import initial_weights
from fcnseg.train.trainer import TrainingInterrupted, train

TINY = (4, 8, 8, 16, 16, 32)


def narrow(tmp_path, data, name="run", **overrides):
    """The default settings, with only the net made small enough for a test."""
    return TrainConfig(data=str(data), widths=TINY, progress=False, out=str(tmp_path / name), **overrides)


@pytest.fixture
def folder(tmp_path):
    """Ten synthetic images with palette masks, and no classes.txt."""
    return write_synthetic_folder(tmp_path / "data", 10, seed=4, size_range=(32, 40))


def test_classes_are_counted_in_the_masks_or_given(folder):
    data = FolderSegmentation(folder)
    largest = max(int(np.asarray(Image.open(p)).max()) for p in (folder / "masks").glob("*.png"))
    assert data.num_classes == largest + 1 and data.classes_from == "masks"
    assert data.class_names[:2] == ("class0", "class1")
    assert FolderSegmentation(folder, num_classes=9).num_classes == 9
    (folder / "classes.txt").write_text("background\nthing\n")
    assert FolderSegmentation(folder).classes_from == "classes.txt"
    with pytest.raises(ValueError, match="num_classes=9 but 2 class names"):
        FolderSegmentation(folder, num_classes=9)


def test_without_validation_every_image_trains(tmp_path, folder):
    """val_split "none" holds nothing out: the 10% that would validate train too."""
    task = get_task("segmentation")
    train_set, val_set = task.datasets(narrow(tmp_path, folder))
    assert (len(train_set), len(val_set)) == (9, 1)
    train_set, val_set = task.datasets(narrow(tmp_path, folder, val_split="none"))
    assert (len(train_set), val_set) == (10, None)


def test_every_bad_pair_is_listed_before_the_first_step(tmp_path, folder):
    masks = sorted((folder / "masks").glob("*.png"))
    Image.fromarray(np.full((5, 5), 3, dtype=np.uint8)).save(masks[1])  # wrong size
    width, height = Image.open(masks[4]).size
    Image.fromarray(np.full((height, width), 9, dtype=np.uint8)).save(masks[4])  # 9 is not a class of 6
    masks[7].write_bytes(masks[7].read_bytes()[:60])  # truncated
    with pytest.raises(DataError) as caught:
        train(narrow(tmp_path, folder, num_classes=6))
    error = caught.value
    assert len(error.problems) == 3
    text = str(error)
    assert "3 of 10 image/mask pairs cannot be used" in text
    for mask in (masks[1], masks[4], masks[7]):
        assert mask.name in text
    assert "label values 9" in text and "sizes differ" in text
    assert not (tmp_path / "run").exists()  # nothing written, nothing trained


def test_no_flags_training_says_what_it_does(tmp_path, folder, capsys, monkeypatch):
    # The CLI's defaults apart from the narrow net (a full VGG16 is too slow for a test).
    monkeypatch.setattr(trainer_module._StepTimer, "STEPS", 2)
    out = tmp_path / "run"
    args = ["train", "--data", str(folder), "--out", str(out), "--widths", ",".join(map(str, TINY))]
    assert main([*args, "--epochs", "1"]) == 0
    printed = capsys.readouterr().err  # status lines, as the command shows them
    assert "training from scratch (narrow widths (4, 8, 8, 16, 16, 32))" in printed
    assert "data: 9 training and 1 validation images (held out of" in printed
    assert "classes: counted in the masks (ids 0..5)" in printed
    assert "per step:" in printed and "per epoch of 9 steps" in printed
    saved = torch.load(out / "last.pt", weights_only=True)
    config = saved["train_config"]
    assert (config["loss"], config["optimizer"], config["preprocess"]) == ("mean", "adam", "imagenet")
    best = torch.load(out / "best.pt", weights_only=True)
    assert "optimizer" not in best and best["meta"]["class_names"][5] == "class5"


def test_auto_init_without_network_trains_from_scratch_and_says_so(tmp_path, monkeypatch, caplog):
    # A mirror nobody listens on: the download fails at once, as it does offline.
    monkeypatch.setenv("FCNSEG_MIRROR", "http://127.0.0.1:9")
    monkeypatch.setenv("FCNSEG_HOME", str(tmp_path / "home"))
    assert initial_weights(TrainConfig(arch="fcn32s")) is None
    [record] = [r for r in caplog.records if r.name == "fcnseg.train.initial"]
    assert record.levelname == "WARNING"
    assert "training from scratch: ImageNet weights (imagenet) cannot be had" in record.message
    assert "fcnseg weights get imagenet" in record.message
    assert not any((tmp_path / "home").rglob("*.pth"))


def stop_at_step(monkeypatch, step, signal_number):
    """Send ``signal_number`` to this process during training step ``step``."""
    real = losses_module.segmentation_loss
    calls = {"n": 0}

    def loss(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == step:
            os.kill(os.getpid(), signal_number)
        return real(*args, **kwargs)

    monkeypatch.setattr(losses_module, "segmentation_loss", loss)


@pytest.mark.parametrize("signal_number", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_saves_the_step_and_resume_ends_the_same(tmp_path, folder, monkeypatch, signal_number):
    config = dict(num_classes=6, epochs=2, val_every=0, dropout=0.5, flip=True)
    straight = train(narrow(tmp_path, folder, "straight", **config))

    stop_at_step(monkeypatch, 5, signal_number)
    with pytest.raises(
        TrainingInterrupted, match=f"stopped by {signal.Signals(signal_number).name} after step 5"
    ):
        train(narrow(tmp_path, folder, "stopped", **config))
    monkeypatch.undo()
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # handlers given back
    saved = torch.load(tmp_path / "stopped" / "last.pt", weights_only=True)
    assert (saved["step"], saved["epoch"], saved["epoch_step"]) == (5, 0, 5)  # before the first validation

    resumed = train(narrow(tmp_path, folder, "stopped", **config), resume=True)
    assert resumed.steps == straight.steps == 18
    for (name, a), b in zip(
        straight.model.state_dict().items(), resumed.model.state_dict().values(), strict=True
    ):
        assert torch.equal(a, b), name
    assert resumed.history[-1]["train_loss"] == straight.history[-1]["train_loss"]


def test_the_cli_says_how_to_continue_after_ctrl_c(tmp_path, folder, monkeypatch, capsys):
    stop_at_step(monkeypatch, 2, signal.SIGINT)
    out = tmp_path / "run"
    code = main(["train", "--data", str(folder), "--out", str(out), "--widths", "4,8,8,16,16,32", "--quiet"])
    assert code == 128 + signal.SIGINT
    assert "continue it with --resume" in capsys.readouterr().err
    assert torch.load(out / "last.pt", weights_only=True)["step"] == 2

    monkeypatch.undo()
    stop_at_step(monkeypatch, 1, signal.SIGINT)
    args = ["train", "--data", str(folder), "--out", str(out), "--widths", "4,8,8,16,16,32", "--resume"]
    assert main(args) == 128 + signal.SIGINT
    assert torch.load(out / "last.pt", weights_only=True)["step"] == 3
    assert f"resuming {out / 'last.pt'} at step 2 (epoch 1)" in capsys.readouterr().err


def test_last_checkpoint_is_written_on_the_clock_between_validations(tmp_path, folder, monkeypatch):
    saves = []
    real = trainer_module.Trainer._save

    def save(self, run, best=False):
        saves.append((run.state.step, best))
        real(self, run, best)

    monkeypatch.setattr(trainer_module.Trainer, "_save", save)
    train(narrow(tmp_path, folder, num_classes=6, epochs=1, checkpoint_every=1e-9))
    # After every step but the last, which is the end of the epoch and validates.
    assert [step for step, _ in saves] == list(range(1, 10))
    assert saves[-1] == (9, True)


def test_the_estimate_says_when_the_time_limit_stops_the_run(monkeypatch):
    clock = itertools.count()  # one second per step after the warm-up step
    monkeypatch.setattr(trainer_module.time, "perf_counter", lambda: float(next(clock)))
    limited = trainer_module._StepTimer(steps_per_epoch=100, steps_left=1000, seconds_left=60.0)
    said = [limited.tick() for _ in range(6)]
    assert said[:5] == [None] * 5
    assert "per epoch of 100 steps, the time limit stops it after 60.0 s, about 60 steps" in said[5]
    clock = itertools.count()
    unlimited = trainer_module._StepTimer(steps_per_epoch=100, steps_left=1000)
    assert "17 min for the 1000 steps to go" in [unlimited.tick() for _ in range(6)][5]
