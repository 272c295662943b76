"""Tests for the trainer: exact resume, safe checkpoints, divergence, staged and fixed training."""

import csv
import dataclasses
import hashlib
import json
import math

import pytest
import torch
from tiny_datasets import write_pascal
from torch import nn

import fcnseg
import fcnseg.tasks.losses as losses_module
import fcnseg.weights.checkpoint as checkpoint_module
from fcnseg import build_model, load_checkpoint
from fcnseg.cli import main
from fcnseg.data.preprocess import preprocess
from fcnseg.data.registry import open_dataset
from fcnseg.errors import ConfigError
from fcnseg.metrics.segmentation import confusion_matrix, evaluate_confusion, scores
from fcnseg.tasks.segmentation import SegmentationTask
from fcnseg.train.config import TrainConfig
from fcnseg.train.initial import initial_weights, initialise, kaiming_init
from fcnseg.train.trainer import Trainer, TrainingDiverged, log_columns, train
from fcnseg.weights.transfer import copy_matching_layers

TINY = (4, 8, 8, 16, 16, 32)
LOG_COLUMNS = log_columns(SegmentationTask())


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


def digest(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def assert_same_state(a, b):
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


def test_killed_run_resumes_to_the_same_weights(tmp_path, monkeypatch):
    straight = train(tiny_config(tmp_path, "straight"))
    assert straight.steps == 6

    # Checkpoints fall at steps 2, 4 and 6; dying in step 5 (mid-epoch 2) loses step 5 only.
    kill_at_call(monkeypatch, 5)
    with pytest.raises(KeyboardInterrupt):
        train(tiny_config(tmp_path, "killed"))
    monkeypatch.undo()
    assert torch.load(tmp_path / "killed" / "last.pt", weights_only=True)["step"] == 4
    # The resumed process uses a worker process: augmentation must not depend on it.
    resumed = train(tiny_config(tmp_path, "killed", workers=1), resume=True)

    assert resumed.steps == 6
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


def test_failed_save_leaves_the_previous_checkpoint(tmp_path, monkeypatch):
    real_save = torch.save
    calls = {"n": 0}

    def full_disk(obj, f, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] > 2:  # step 2 writes last.pt and best.pt; step 4 finds the disk full
            f.write(b"partial")
            raise OSError(28, "No space left on device")
        return real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(checkpoint_module.torch, "save", full_disk)
    with pytest.raises(OSError, match="No space left"):
        train(tiny_config(tmp_path))
    monkeypatch.undo()
    run = tmp_path / "run"
    assert torch.load(run / "last.pt", weights_only=True)["step"] == 2
    assert sorted(p.name for p in run.iterdir()) == ["best.pt", "curves.png", "last.pt", "log.csv"]
    resumed = train(tiny_config(tmp_path), resume=True)
    assert resumed.steps == 6


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
    initialise(model, config, initial_weights(config, say=print), say=print)
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


def test_class_balance_and_amp_on_cpu_train(tmp_path):
    with pytest.warns(UserWarning, match="needs CUDA"):
        result = train(tiny_config(tmp_path, class_balance=True, amp="bf16", max_steps=2))
    assert result.steps == 2
    assert all(v.dtype == torch.float32 for v in result.model.state_dict().values() if v.is_floating_point())


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


def test_init_made_for_other_preprocessing_warns(tmp_path):
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
    with pytest.warns(UserWarning, match="made for 'imagenet' preprocessing"):
        train(config)
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
