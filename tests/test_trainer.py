"""Tests for the trainer: exact resume, safe checkpoints, divergence, staged and fixed training."""

import csv
import dataclasses
import errno
import hashlib
import json
import logging
import math
import random
import signal
import subprocess
import sys
import time

import pytest
import torch
from tiny_datasets import write_pascal
from torch import nn

import fcnseg
import fcnseg.infer.predict as predict_module
import fcnseg.tasks.losses as losses_module
import fcnseg.weights.checkpoint as checkpoint_module
from fcnseg import build_model, load_checkpoint
from fcnseg.cli import main
from fcnseg.data.preprocess import preprocess
from fcnseg.data.registry import open_dataset
from fcnseg.errors import ConfigError
from fcnseg.files import WriteError
from fcnseg.metrics.segmentation import confusion_matrix, evaluate_confusion, scores
from fcnseg.tasks import get_task
from fcnseg.tasks.segmentation import SegmentationTask
from fcnseg.train.config import TrainConfig
from fcnseg.train.initial import initial_weights, initialise, kaiming_init
from fcnseg.train.run_folder import RunFolder, StepLog
from fcnseg.train.state import seed_everything
from fcnseg.train.trainer import Trainer, TrainingDiverged, log_columns, train
from fcnseg.weights.checkpoint import CheckpointError
from fcnseg.weights.transfer import copy_matching_layers

TINY = (4, 8, 8, 16, 16, 32)
LOG_COLUMNS = log_columns(SegmentationTask())


RUN_FILES = ["best.pt", "config.toml", "curves.png", "last.pt", "log.csv", "steps.csv"]
"""What a run folder holds after training: checkpoints, settings, curves and logs, nothing half-written."""


def tiny_config(tmp_path, name="run", **overrides):
    """6 synthetic training images of 32-48 px; 3 steps per epoch with batches of 2 padded images."""
    values = dict(
        arch="fcn8s",
        widths=TINY,
        train_images=6,
        val_images=3,
        image_size=(32, 48),
        loss="mean",
        optimizer="sgd",
        lr=0.01,
        momentum=0.9,
        batch_size=2,
        epochs=2,
        val_every=2,
        flip=True,
        scale_range=(0.8, 1.2),
        loss_keep_prob=0.7,
        preprocess="imagenet",
        weight_init="kaiming",
        progress=False,
        seed=3,
        out=str(tmp_path / name),
    )
    values.update(overrides)
    return TrainConfig(**values)


def kill_at_call(monkeypatch, call):
    """Make the ``call``-th loss evaluation raise, as if the process died there."""
    real = losses_module.segmentation_loss
    calls = {"n": 0}

    def loss(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == call:
            raise KeyboardInterrupt("killed")
        return real(*args, **kwargs)

    monkeypatch.setattr(losses_module, "segmentation_loss", loss)


def steps_of(run):
    """The rows of a run's steps.csv, less the clock (which differs between runs)."""
    with (run / "steps.csv").open() as f:
        return [{k: v for k, v in row.items() if k != "seconds"} for row in csv.DictReader(f)]


def digest(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def assert_same_state(a, b):
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


@pytest.mark.parametrize("amp", ["off", "bf16"])
def test_killed_run_resumes_to_the_same_weights(tmp_path, monkeypatch, caplog, amp):
    """In float32 and in bfloat16 on the CPU alike: both compute the same on the same machine."""
    straight = train(tiny_config(tmp_path, "straight", amp=amp))
    assert straight.steps == 6
    assert [row["step"] for row in steps_of(tmp_path / "straight")] == [str(s) for s in range(1, 7)]

    # Checkpoints fall at steps 2, 4 and 6; dying in step 5 (mid-epoch 2) loses step 5 only.
    kill_at_call(monkeypatch, 5)
    with pytest.raises(KeyboardInterrupt):
        train(tiny_config(tmp_path, "killed", amp=amp))
    monkeypatch.undo()
    assert torch.load(tmp_path / "killed" / "last.pt", weights_only=True)["step"] == 4
    assert steps_of(tmp_path / "killed") == steps_of(tmp_path / "straight")[:4]
    with (tmp_path / "killed" / "steps.csv").open("a") as f:  # as if killed later, in step 6's write
        f.write("5,1.6667,0.25,0.0033,9.5\n6,2,0.2")
    # The resumed process uses a worker process: augmentation must not depend on it.
    caplog.set_level(logging.INFO, logger="fcnseg")
    resumed = train(tiny_config(tmp_path, "killed", workers=1, amp=amp), resume=True)

    assert f"resuming {tmp_path / 'killed' / 'last.pt'} at step 4 (epoch 2)" in caplog.messages
    assert resumed.steps == 6
    assert steps_of(tmp_path / "killed") == steps_of(tmp_path / "straight")  # none twice, none lost
    assert_same_state(straight.model.state_dict(), resumed.model.state_dict())
    saved_a = torch.load(tmp_path / "straight" / "last.pt", weights_only=True)
    saved_b = torch.load(tmp_path / "killed" / "last.pt", weights_only=True)
    for state_a, state_b in zip(
        saved_a["optimizer"]["state"].values(), saved_b["optimizer"]["state"].values(), strict=True
    ):
        assert torch.equal(state_a["momentum_buffer"], state_b["momentum_buffer"])
    rows = [[r[k] for k in LOG_COLUMNS if k != "seconds"] for r in straight.history]
    assert rows == [[r[k] for k in LOG_COLUMNS if k != "seconds"] for r in resumed.history]


def test_checkpoints_are_safe_loadable_and_complete(tmp_path):
    result = train(tiny_config(tmp_path))
    run = tmp_path / "run"
    data = torch.load(run / "last.pt", weights_only=True)
    for key in (
        "format",
        "config",
        "meta",
        "state_dict",
        "optimizer",
        "step",
        "epoch",
        "rng",
        "train_config",
    ):
        assert key in data
    assert data["step"] == 6 and data["epoch"] == 2 and data["epoch_step"] == 0
    assert set(data["rng"][0]) >= {"torch", "numpy", "python"}
    model = load_checkpoint(run / "best.pt")
    best = torch.load(run / "best.pt", weights_only=True)
    assert best["meta"]["metrics"]["mean_iu"] == max(r["mean_iu"] for r in result.history)
    assert model.meta["class_names"][1] == "disc"
    assert model.config["widths"] == list(TINY)

    with (run / "log.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert [int(r["step"]) for r in rows] == [2, 4, 6]
    assert list(rows[0]) == list(LOG_COLUMNS)
    assert 0 <= float(rows[-1]["mean_iu"]) <= 1
    assert (run / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_existing_run_is_not_overwritten_and_resume_checks_settings(tmp_path):
    train(tiny_config(tmp_path, max_steps=2))
    with pytest.raises(ValueError, match="already holds a run"):
        train(tiny_config(tmp_path, max_steps=2))
    with pytest.raises(ValueError, match="lr: 0.01 -> 0.02"):
        train(tiny_config(tmp_path, max_steps=2, lr=0.02), resume=True)


def test_a_training_state_of_an_older_fcnseg_is_refused_saying_what_to_do(tmp_path, capsys):
    train(tiny_config(tmp_path, max_steps=2))
    last = tmp_path / "run" / "last.pt"
    data = torch.load(last, weights_only=True)
    del data["best_score"], data["history"]  # as written before the run state held them
    torch.save(data, last)
    with pytest.raises(ValueError, match=r"older fcnseg \(without best_score, history\).*--init \S*last.pt"):
        train(tiny_config(tmp_path, max_steps=4), resume=True)
    assert main(["train", "--out", str(tmp_path / "run"), "--resume", "--quiet"]) == 2
    assert "cannot be resumed; start a new run from its weights" in capsys.readouterr().err


def test_a_damaged_training_state_is_refused_by_name(tmp_path):
    train(tiny_config(tmp_path, max_steps=2))
    last = tmp_path / "run" / "last.pt"
    data = torch.load(last, weights_only=True)
    torch.save({**data, "step": "2", "history": {}}, last)
    with pytest.raises(CheckpointError) as raised:
        train(tiny_config(tmp_path, max_steps=2), resume=True)
    assert str(raised.value) == (
        f"{last} holds a damaged training state:\n  'step' is str, not int\n  'history' is dict, not list"
    )
    torch.save({**data, "optimizer": {"state": {}, "param_groups": []}}, last)
    with pytest.raises(CheckpointError, match=r"does not fit its own settings \(ValueError: .*--init"):
        train(tiny_config(tmp_path, max_steps=2), resume=True)


def test_nan_loss_stops_naming_the_step_and_keeps_the_checkpoint(tmp_path, monkeypatch):
    config = tiny_config(tmp_path)
    real = losses_module.segmentation_loss
    calls = {"n": 0}

    def loss(*args, **kwargs):
        calls["n"] += 1
        value = real(*args, **kwargs)
        return value * float("nan") if calls["n"] == 3 else value

    monkeypatch.setattr(losses_module, "segmentation_loss", loss)
    with pytest.raises(TrainingDiverged, match="at step 3 .*last good checkpoint"):
        train(config)
    last = tmp_path / "run" / "last.pt"
    assert torch.load(last, weights_only=True)["step"] == 2
    before = digest(last)
    assert all(torch.isfinite(v).all() for v in load_checkpoint(last).state_dict().values())
    assert digest(last) == before


def test_a_full_disk_stops_the_run_naming_the_file_and_resuming_loses_nothing(tmp_path, monkeypatch):
    straight = train(tiny_config(tmp_path, "straight"))
    real_save = torch.save
    calls = {"n": 0}

    def full_disk(obj, f, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] > 2:  # step 2 writes last.pt and best.pt; step 4 finds the disk full
            f.write(b"partial")
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(checkpoint_module.torch, "save", full_disk)
    with pytest.raises(WriteError) as raised:
        train(tiny_config(tmp_path))
    monkeypatch.undo()
    run = tmp_path / "run"
    message = str(raised.value)
    assert message.startswith(f"cannot write {run / 'last.pt'}: No space left on device (")
    assert f"free on the disk of {run}); training stopped at step 4. " in message
    assert message.endswith("make room and continue with --resume")
    assert RunFolder(run).read_last()["step"] == 2 and load_checkpoint(run / "best.pt")
    assert sorted(p.name for p in run.iterdir()) == RUN_FILES
    resumed = train(tiny_config(tmp_path), resume=True)
    assert resumed.steps == 6
    assert_same_state(straight.model.state_dict(), resumed.model.state_dict())
    assert steps_of(run) == steps_of(tmp_path / "straight")


def test_a_step_record_that_cannot_be_written_stops_the_run_at_the_next_save(tmp_path, monkeypatch):
    """steps.csv refused at step 3: the run stops at the next save (the validation that ends the
    epoch, at step 3) with the file's error, and leaves last.pt of step 2 whole, to resume from."""
    real_add = StepLog.add

    def refuse_step_3(log, row):
        if row["step"] == 3:
            raise WriteError(log.path, OSError(errno.ENOSPC, "No space left on device"))
        real_add(log, row)

    monkeypatch.setattr(StepLog, "add", refuse_step_3)
    config = tiny_config(tmp_path, val_every=0, checkpoint_every="2steps")
    with pytest.raises(
        WriteError, match=r"steps.csv: No space left on device .*training stopped at step 3\."
    ):
        train(config)
    monkeypatch.undo()
    assert RunFolder(tmp_path / "run").read_last()["step"] == 2
    assert train(config, resume=True).steps == 6


def test_checkpoints_every_n_steps_resume_mid_epoch_to_the_same_weights(tmp_path, monkeypatch):
    """Validations at the ends of epochs (steps 3 and 6), and last.pt every 2 steps between them."""
    config = dict(val_every=0, checkpoint_every="2steps", dropout=0.5)
    straight = train(tiny_config(tmp_path, "straight", **config))
    kill_at_call(monkeypatch, 6)
    with pytest.raises(KeyboardInterrupt):
        train(tiny_config(tmp_path, "killed", **config))
    monkeypatch.undo()
    saved = torch.load(tmp_path / "killed" / "last.pt", weights_only=True)
    assert (saved["step"], saved["epoch"], saved["epoch_step"], saved["loss_count"]) == (5, 1, 2, 2)
    assert saved["train_config"]["checkpoint_every"] == "2steps"
    resumed = train(tiny_config(tmp_path, "killed", **config), resume=True)
    assert_same_state(straight.model.state_dict(), resumed.model.state_dict())
    assert [r["train_loss"] for r in resumed.history] == [r["train_loss"] for r in straight.history]


@pytest.mark.parametrize(
    "every, expected",
    [
        (600, 600.0),
        ("600s", 600.0),
        ("10min", 600.0),
        ("1.5h", 5400.0),
        ("50steps", "50steps"),
        ("1step", "1step"),
    ],
)
def test_checkpoint_every_is_seconds_or_steps(every, expected):
    config = TrainConfig(checkpoint_every=every)
    assert config.checkpoint_every == expected
    steps = isinstance(expected, str)
    assert (config.checkpoint_steps is not None, config.checkpoint_seconds is not None) == (steps, not steps)


@pytest.mark.parametrize("every", ["soon", "-5", "2.5steps", "10 minutes", float("nan")])
def test_a_bad_checkpoint_interval_is_named(every):
    with pytest.raises(ValueError, match="checkpoint_every"):
        TrainConfig(checkpoint_every=every)


def test_resume_before_the_first_checkpoint_starts_afresh_from_the_flags(tmp_path, capsys):
    recipe = tmp_path / "tiny.toml"
    recipe.write_text('arch = "fcn32s"\nwidths = [4, 8, 8, 16, 16, 32]\ntrain_images = 2\nval_images = 1\n')
    out = tmp_path / "run"
    out.mkdir()
    (out / ".last.pt.k1ll3d.tmp").write_bytes(b"PK\x03\x04 cut short by a kill")
    args = [
        "train",
        "--config",
        str(recipe),
        "--image-size",
        "32",
        "32",
        "--max-steps",
        "2",
        "--out",
        str(out),
    ]
    assert main([*args, "--resume", "--threads", "1"]) == 0
    said = capsys.readouterr().err.splitlines()
    assert f"no {out / 'last.pt'} yet (stopped before its first checkpoint): starting the run afresh" in said
    saved = RunFolder(out).read_last()
    assert saved["step"] == 2 and saved["train_config"]["arch"] == "fcn32s"
    assert sorted(p.name for p in out.iterdir()) == RUN_FILES


KILLED_RUN = [
    *(
        "--widths",
        "4,8,16,32,32,64",
        "--init",
        "none",
        "--weight-init",
        "kaiming",
        "--preprocess",
        "imagenet",
    ),
    *("--train-images", "24", "--val-images", "3", "--image-size", "48", "64", "--batch-size", "2"),
    *("--flip", "--loss-keep-prob", "0.7", "--max-steps", "30", "--val-every", "8", "--seed", "0"),
    *("--checkpoint-every", "1step", "--threads", "1", "--quiet"),
]
"""A run that checkpoints at every step: 12 steps an epoch, dropout, flips and loss sampling."""


def _step_on_disk(last):
    try:
        return torch.load(last, weights_only=True)["step"]
    except FileNotFoundError:
        return None


def test_a_run_killed_by_sigkill_at_any_moment_resumes_to_the_same_bits(tmp_path):
    """SIGKILL before the first checkpoint, then mid-epoch at a random moment of a step (or of its
    save); ``--resume`` each time. Every .pt on disk loads after every kill, and the run ends as
    one that was never killed: weights, optimiser and log. (benchmarks/soak_training.py kills a
    longer run more often.)"""
    assert main(["train", *KILLED_RUN, "--out", str(tmp_path / "straight")]) == 0
    out = tmp_path / "killed"
    command = [sys.executable, "-m", "fcnseg", "train", *KILLED_RUN, "--out", str(out), "--resume"]
    rng = random.Random(0)
    for kill_after in (None, 10):  # the step on disk after which to kill (None: before any)
        process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 300
        if kill_after is None:
            time.sleep(0.2)  # torch is not yet imported
        else:
            while (_step_on_disk(out / "last.pt") or 0) < kill_after:
                assert process.poll() is None and time.monotonic() < deadline, process.stderr.read()
                time.sleep(0.05)
            time.sleep(rng.uniform(0, 0.1))  # somewhere in one of the next steps, or in its save
        assert process.poll() is None
        process.send_signal(signal.SIGKILL)
        assert process.wait() == -signal.SIGKILL
        process.stderr.close()
        if kill_after is None:
            assert not (out / "last.pt").exists()
        else:
            assert RunFolder(out).read_last()["step"] > kill_after
            for path in out.glob("*.pt"):
                assert fcnseg.load_checkpoint(path).config["widths"] == [4, 8, 16, 32, 32, 64], path
    done = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr

    straight, killed = (
        torch.load(tmp_path / n / "last.pt", weights_only=True) for n in ("straight", "killed")
    )
    assert killed["step"] == 30
    assert_same_state(straight["state_dict"], killed["state_dict"])
    for a, b in zip(
        straight["optimizer"]["state"].values(), killed["optimizer"]["state"].values(), strict=True
    ):
        assert_same_state(a, b)
    assert [{k: v for k, v in row.items() if k != "seconds"} for row in killed["history"]] == [
        {k: v for k, v in row.items() if k != "seconds"} for row in straight["history"]
    ]
    assert sorted(p.name for p in out.iterdir()) == RUN_FILES
    assert steps_of(out) == steps_of(tmp_path / "straight")
    assert [row["step"] for row in steps_of(out)] == [str(s) for s in range(1, 31)]


def test_defaults_learn_and_the_paper_recipe_is_there_by_name():
    config = TrainConfig()
    assert (config.loss, config.optimizer, config.lr, config.lr_schedule, config.init) == (
        "mean",
        "adam",
        1e-4,
        "poly",
        "auto",
    )
    paper = TrainConfig.from_dict({"recipe": "paper", "momentum": 0.9})
    assert (paper.loss, paper.optimizer, paper.lr, paper.weight_decay, paper.batch_size) == (
        "sum",
        "sgd",
        1e-10,
        5e-4,
        1,
    )
    assert paper.caffe_bias and paper.lr_schedule == "fixed" and paper.preprocess == "caffe"
    assert paper.momentum == 0.9  # keys beside the recipe override it
    with pytest.raises(ValueError, match="unknown recipe 'caffe'; choose one of fcnseg, paper"):
        TrainConfig.from_dict({"recipe": "caffe"})


def test_caffe_bias_groups(tmp_path):
    train(
        tiny_config(tmp_path, max_steps=1, val_every=1, optimizer="sgd", weight_decay=5e-4, caffe_bias=True)
    )
    groups = torch.load(tmp_path / "run" / "last.pt", weights_only=True)["optimizer"]["param_groups"]
    assert [(g["lr"], g["weight_decay"]) for g in groups] == [(0.01, 5e-4), (0.02, 0.0)]


def test_summed_loss_paper_recipe_trains_with_one_image_batches(tmp_path):
    config = tiny_config(
        tmp_path,
        loss="sum",
        lr=1e-6,
        momentum=0.99,
        batch_size=1,
        preprocess="caffe",
        max_steps=4,
        val_every=4,
    )
    result = train(config)
    assert result.steps == 4
    assert result.history[-1]["train_loss"] > 100  # summed over every pixel, not averaged


def test_fixed_backbone_and_frozen_upsampling_do_not_move(tmp_path):
    config = tiny_config(tmp_path, arch="fcn32s-fixed", max_steps=2)
    torch.manual_seed(config.seed)
    result = train(config)
    fresh = build_model("fcn32s-fixed", 6, widths=TINY)
    saved = torch.load(tmp_path / "run" / "last.pt", weights_only=True)
    # The backbone after training equals the backbone as initialised (same seed, same init).
    torch.manual_seed(config.seed)
    init = build_model("fcn32s-fixed", 6, widths=TINY)
    kaiming_init(init)
    for name, value in init.backbone.state_dict().items():
        assert torch.equal(saved["state_dict"][f"backbone.{name}"], value), name
    assert torch.equal(result.model.upscore.weight, fresh.upscore.weight)  # bilinear, frozen
    assert not torch.equal(result.model.score_fr.weight, torch.zeros_like(result.model.score_fr.weight))


@pytest.mark.parametrize("arch", ["fcn8s", "hed", "fsds", "ssd300"])
def test_kaiming_init_reaches_every_trunk(arch):
    """He initialisation (std sqrt(2 / fan-in), zero bias) of the trunk of each kind of net, not only
    FCN's: PyTorch's default (std about 0.58 / sqrt(fan-in)) stalls a deep plain VGG from scratch."""
    torch.manual_seed(0)
    sides = arch in ("hed", "fsds")
    model = build_model(arch, None if sides else 6, widths=(8, 16, 32, 32, 32) + (() if sides else (64,)))
    kaiming_init(model)
    convs = [m for m in model.backbone.modules() if isinstance(m, nn.Conv2d) and m.weight.numel() >= 4000]
    assert len(convs) >= 8
    for conv in convs:
        fan_in = conv.weight[0].numel()
        assert conv.weight.std().item() == pytest.approx((2 / fan_in) ** 0.5, rel=0.1)
        assert torch.count_nonzero(conv.bias) == 0


def test_staged_training_copies_matching_layers(tmp_path):
    coarse = train(tiny_config(tmp_path, "fcn32s", arch="fcn32s", max_steps=2)).model
    config = tiny_config(
        tmp_path, "fcn16s", arch="fcn16s", max_steps=1, init=str(tmp_path / "fcn32s" / "last.pt")
    )
    model = build_model("fcn16s", 6, widths=TINY)
    initialise(model, config, initial_weights(config))
    for name, value in coarse.state_dict().items():
        if name.startswith(("backbone.", "score_fr.")):
            assert torch.equal(model.state_dict()[name], value), name
    assert torch.count_nonzero(model.score_pool4.weight) == 0  # new layer keeps its zero init
    assert train(config).steps == 1


def test_copy_matching_layers_reports_what_it_copied():
    source = build_model("fcn16s", 6, widths=TINY)
    with torch.no_grad():
        source.score_pool4.weight.fill_(0.5)
        source.upscore2.weight.fill_(0.25)
    target = build_model("fcn8s", 6, widths=TINY)
    copied = copy_matching_layers(target, source.state_dict())
    assert "score_pool4.weight" in copied and "upscore2.weight" in copied
    assert "upscore16.weight" not in copied  # 16s's final upsampler has no place in 8s
    assert torch.equal(target.score_pool4.weight, source.score_pool4.weight)
    assert torch.equal(target.upscore2.weight, source.upscore2.weight)
    other = build_model("fcn-alexnet", 6, widths=(4, 8, 8, 8, 8, 16))
    with pytest.raises(ValueError, match="shares no layer"):
        copy_matching_layers(build_model("fcn8s", 3, widths=TINY), {"x": torch.zeros(1)})
    assert "score_fr.bias" in copy_matching_layers(
        other, build_model("fcn-alexnet", 6, widths=(4, 8, 8, 8, 8, 16)).state_dict()
    )
    # A layer is taken whole or not at all: SSD's 3x3 fc6 keeps its own bias beside its own weights.
    fcn, ssd = build_model("fcn32s", 6, widths=TINY), build_model("ssd300", 6, widths=TINY)
    before = ssd.backbone.fc6.bias.clone()
    copied = copy_matching_layers(ssd, fcn.state_dict())
    assert "backbone.conv1_2.weight" in copied and "backbone.fc7.bias" in copied
    assert "backbone.fc6.bias" not in copied and torch.equal(ssd.backbone.fc6.bias, before)


def test_bf16_trains_on_the_cpu_close_to_float32_and_warns_once_where_it_is_emulated(
    tmp_path, monkeypatch, caplog
):
    common = dict(class_balance=True, max_steps=4, val_every=4, dropout=0.0)
    full = train(tiny_config(tmp_path, "fp32", **common))
    monkeypatch.setattr(predict_module, "cpu_has_native_bf16", lambda: False)
    half = train(tiny_config(tmp_path, "bf16", amp="bf16", **common))
    assert half.steps == 4
    config = tiny_config(tmp_path, "bf16", amp="bf16", **common)
    seed_everything(config.seed)  # the initial weights, built as the trainer builds them
    start = get_task("segmentation").build_model(config, get_task("segmentation").datasets(config)[0])
    initialise(start, config, None)
    trained, initial = half.model.state_dict(), start.state_dict()
    changed = {name for name, value in initial.items() if not torch.equal(value, trained[name])}
    assert {"backbone.conv1_1.weight", "score_fr.weight", "score_fr.bias"} <= changed
    step = trained["backbone.conv1_1.weight"] - initial["backbone.conv1_1.weight"]
    assert step.norm() < 0.5 * initial["backbone.conv1_1.weight"].norm()  # from these weights, not others
    assert all(torch.isfinite(value).all() for value in trained.values() if value.is_floating_point())
    assert all(v.dtype == torch.float32 for v in half.model.state_dict().values() if v.is_floating_point())
    losses = {name: [float(r["loss"]) for r in steps_of(tmp_path / name)] for name in ("fp32", "bf16")}
    assert losses["bf16"] == pytest.approx(losses["fp32"], rel=1e-3)
    assert losses["bf16"] != losses["fp32"]  # computed in bfloat16 all the same
    assert half.history[-1]["mean_iu"] == pytest.approx(full.history[-1]["mean_iu"], abs=0.05)
    [warning] = [r for r in caplog.records if r.levelname == "WARNING"]
    assert warning.name == "fcnseg.train.trainer" and warning.message == (
        "amp bf16: this CPU has no native bfloat16 arithmetic; it is emulated, and training will be "
        "slower than in float32"
    )
    with pytest.raises(ConfigError, match="amp fp16 trains on CUDA only, not on cpu; on the CPU use bf16"):
        train(tiny_config(tmp_path, "fp16", amp="fp16", max_steps=1))


def test_evaluate_confusion_sums_per_image_matrices():
    model = build_model("fcn8s", 6, widths=TINY)
    torch.manual_seed(0)
    with torch.no_grad():
        model.score_fr.weight.normal_()
        model.score_fr.bias.normal_()
    dataset = open_dataset("synthetic", split="val", num_images=3, image_size=(32, 48))
    expected = torch.zeros(6, 6, dtype=torch.int64)
    for image, label in (dataset[i] for i in range(3)):
        pred = model.eval()(preprocess(image)[None]).argmax(1)[0]
        expected += confusion_matrix(pred, torch.as_tensor(label), 6)
    assert torch.equal(evaluate_confusion(model, dataset, 6), expected)  # preprocessed as meta says: caffe
    assert expected.sum() == sum(dataset[i][1].size for i in range(3))


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"loss": "avg"}, "loss must be one of"),
        ({"lr": 0}, "lr must be positive"),
        ({"dataset": "folder"}, "needs a data folder"),
        ({"loss_keep_prob": 0}, "loss_keep_prob"),
    ],
)
def test_bad_settings_are_named(kwargs, message):
    with pytest.raises(ValueError, match=message):
        TrainConfig(**kwargs)


def test_unknown_recipe_keys_are_errors():
    with pytest.raises(ValueError, match="unknown training settings: learning_rate"):
        TrainConfig.from_dict({"learning_rate": 0.1})


def test_init_made_for_other_preprocessing_warns(tmp_path, caplog):
    source = fcnseg.build_model("fcn32s", 6, widths=TINY)
    source.meta = {"preprocess": "imagenet"}
    init = fcnseg.save_checkpoint(source, tmp_path / "init.pt")
    config = TrainConfig(
        arch="fcn32s",
        widths=TINY,
        init=str(init),
        max_steps=1,
        train_images=2,
        val_images=2,
        image_size=(32, 32),
        preprocess="caffe",
        out=str(tmp_path / "run"),
        progress=False,
    )
    train(config)
    [warning] = [r for r in caplog.records if r.levelname == "WARNING"]
    assert warning.name == "fcnseg.train.initial" and "made for 'imagenet' preprocessing" in warning.message
    # Left to "auto", the run takes the preprocessing the initial weights were made for.
    auto = train(dataclasses.replace(config, preprocess="auto", out=str(tmp_path / "auto")))
    assert auto.model.meta["preprocess"] == "imagenet"
    assert (
        torch.load(tmp_path / "auto" / "last.pt", weights_only=True)["train_config"]["preprocess"]
        == "imagenet"
    )


def test_channels_last_trains_the_same_net_and_hands_back_the_usual_layout(tmp_path):
    # Without dropout: its masks are drawn in memory order, so they differ between layouts.
    plain = Trainer(tiny_config(tmp_path, "plain", dropout=0.0)).fit()
    nhwc = Trainer(tiny_config(tmp_path, "nhwc", dropout=0.0, channels_last=True)).fit()
    for (name, a), b in zip(plain.model.state_dict().items(), nhwc.model.state_dict().values(), strict=True):
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-5, msg=name)
        assert b.is_contiguous(), name
    assert [r["mean_iu"] for r in nhwc.history] == pytest.approx(
        [r["mean_iu"] for r in plain.history], abs=0.02
    )


def test_a_data_folder_without_a_data_set_name_means_folder():
    assert TrainConfig(data="my-data").dataset == "folder"
    assert TrainConfig.from_dict({"data": "my-data"}).dataset == "folder"
    assert TrainConfig().dataset == "synthetic"
    assert TrainConfig(dataset="voc", data="VOC").dataset == "voc"


def test_iter_size_accumulates_batches_into_one_step(tmp_path):
    """k batches of one image whose gradients are averaged make the step that one batch of k makes,
    for a loss summed over each image's pixels and divided by the batch (HED's)."""
    common = dict(
        task="edges",
        widths=(4, 8, 8, 8, 8),
        init=None,
        train_images=4,
        val_images=0,
        image_size=(24, 24),
        loss="sum",
        optimizer="sgd",
        lr=1e-3,
        momentum=0.9,
        weight_decay=2e-4,
        caffe_bias=True,
        max_steps=2,
        progress=False,
        checkpoint_every=0,
    )
    whole = train(TrainConfig(**common, batch_size=4, iter_size=1, out=str(tmp_path / "whole")))
    parts = train(TrainConfig(**common, batch_size=1, iter_size=4, out=str(tmp_path / "parts")))
    assert whole.steps == parts.steps == 2
    for (name, a), b in zip(whole.model.state_dict().items(), parts.model.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=name)
    moved = train(
        TrainConfig(**{**common, "max_steps": 1}, batch_size=1, iter_size=1, out=str(tmp_path / "one"))
    )
    assert not torch.equal(moved.model.backbone.conv1_1.weight, whole.model.backbone.conv1_1.weight)


def test_poly_lr_is_zero_past_the_time_limit():
    """A validation can overrun the time limit: the schedule then ends at 0, a real number."""
    from fcnseg.train.optim import set_lr

    model = torch.nn.Conv2d(1, 1, 1)
    config = TrainConfig(optimizer="sgd", lr=0.1, init=None)
    optimizer = torch.optim.SGD([{"params": model.parameters(), "lr_mult": 1.0}], lr=0.1)
    assert set_lr(optimizer, config, 1.3) == 0.0 and optimizer.param_groups[0]["lr"] == 0.0
    step = TrainConfig(optimizer="sgd", lr=0.1, init=None, lr_schedule="step", lr_step_size=10, lr_gamma=0.1)
    assert [set_lr(optimizer, step, 0.5, s) for s in (0, 9, 10, 25)] == pytest.approx([0.1, 0.1, 0.01, 0.001])


def _pascal_config(tmp_path, root, **overrides):
    values = dict(
        arch="fcn32s", widths=TINY, dataset="voc", data=str(root), train_split="sbd-train",
        test_split="seg11valid", loss="mean", optimizer="sgd", lr=0.05, momentum=0.9, batch_size=1,
        epochs=1, max_steps=3, val_every=1, preprocess="imagenet", weight_init="kaiming",
        init=None, progress=False, seed=1, out=str(tmp_path / "run"),
    )  # fmt: skip
    return TrainConfig(**{**values, **overrides})


def test_best_pt_is_picked_on_the_held_out_split_and_the_test_split_scored_once_on_it(tmp_path):
    root = write_pascal(tmp_path / "pascal")
    result = train(_pascal_config(tmp_path, root, val_split="sbd-heldout"))
    best = torch.load(tmp_path / "run" / "best.pt", weights_only=True)
    assert best["step"] == result.best_metrics["step"]
    record = json.loads((tmp_path / "run" / "test.json").read_text())
    assert (
        record["split"] == "seg11valid" and record["step"] == best["step"] and record["weights"] == "best.pt"
    )
    # the test metrics are best.pt's on seg11valid, computed once; they are in no log row
    model = load_checkpoint(tmp_path / "run" / "best.pt")
    by_hand = scores(evaluate_confusion(model, open_dataset("voc", str(root), "seg11valid"), 21))
    assert result.test_metrics["mean_iu"] == pytest.approx(by_hand["mean_iu"])
    assert len(result.history) == 3 and not any(math.isnan(row["mean_iu"]) for row in result.history)


def test_without_validation_best_pt_is_the_final_snapshot(tmp_path):
    root = write_pascal(tmp_path / "pascal")
    result = train(_pascal_config(tmp_path, root, val_split="none"))
    best = torch.load(tmp_path / "run" / "best.pt", weights_only=True)
    last = torch.load(tmp_path / "run" / "last.pt", weights_only=True)
    assert best["step"] == 3 and result.best_metrics is None
    assert all(torch.equal(best["state_dict"][k], v) for k, v in last["state_dict"].items())
    assert all(math.isnan(row["mean_iu"]) for row in result.history)  # nothing was validated
    assert 0 <= result.test_metrics["mean_iu"] <= 1
    with pytest.raises(ConfigError, match="best.pt would be picked on the split the run reports"):
        _pascal_config(tmp_path, root, val_split="seg11valid")
