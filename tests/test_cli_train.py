"""Tests for ``fcnseg train`` and ``fcnseg evaluate``, and for the recipe files."""

import io
import json
import sys
from pathlib import Path

import pytest
import torch

import fcnseg
import fcnseg.infer.predict as predict_module
from fcnseg.cli import main
from fcnseg.cli.train import load_recipe
from fcnseg.data.synthetic import write_synthetic_folder
from fcnseg.errors import ConfigError
from fcnseg.train.config import TrainConfig

RECIPES = sorted((Path(__file__).parents[1] / "recipes").glob("*.toml"))
TINY = ["--widths", "4,8,8,16,16,32", "--weight-init", "kaiming", "--preprocess", "imagenet"]
SYNTHETIC = ["--train-images", "4", "--val-images", "2", "--image-size", "32", "40"]
FAST = ["--loss", "mean", "--lr", "0.01", "--momentum", "0.9", "--quiet"]


def test_train_with_flags_then_resume_for_more_epochs(tmp_path, capsys):
    out = tmp_path / "run"
    args = ["train", "--arch", "fcn16s", *TINY, *SYNTHETIC, *FAST, "--batch-size", "2", "--out", str(out)]
    assert main([*args, "--epochs", "1"]) == 0
    printed = capsys.readouterr().out
    assert "trained fcn16s for 2 steps" in printed and "mean IU" in printed and "triangle" in printed
    assert main(["train", "--out", str(out), "--resume", "--epochs", "2", "--quiet"]) == 0
    saved = torch.load(out / "last.pt", weights_only=True)
    assert saved["step"] == 4 and saved["train_config"]["epochs"] == 2
    assert saved["train_config"]["arch"] == "fcn16s"
    assert [line.split(",")[0] for line in (out / "log.csv").read_text().splitlines()] == ["step", "2", "4"]


def test_recipe_file_with_flag_overrides(tmp_path):
    recipe = tmp_path / "tiny.toml"
    recipe.write_text(
        '[model]\narch = "fcn32s"\nwidths = [4, 8, 8, 16, 16, 32]\n\n'
        '[data]\ndataset = "synthetic"\ntrain_images = 2\nval_images = 2\nimage_size = [32, 40]\n\n'
        '[optim]\nloss = "mean"\nlr = 0.001\nepochs = 3\n'
    )
    out = tmp_path / "run"
    assert main(["train", "--config", str(recipe), "--epochs", "1", "--out", str(out), "--quiet"]) == 0
    config = torch.load(out / "last.pt", weights_only=True)["train_config"]
    assert (config["arch"], config["epochs"], config["lr"], config["widths"]) == (
        "fcn32s",
        1,
        0.001,
        [4, 8, 8, 16, 16, 32],
    )


def test_bad_recipe_is_a_clean_error(tmp_path, capsys):
    recipe = tmp_path / "bad.toml"
    recipe.write_text('arch = "fcn8s"\nlearning_rate = 1\n')
    assert main(["train", "--config", str(recipe), "--quiet"]) == 2
    assert "unknown training settings: learning_rate" in capsys.readouterr().err
    recipe.write_text("arch = \n")
    assert main(["train", "--config", str(recipe), "--quiet"]) == 2
    assert "not valid TOML" in capsys.readouterr().err
    recipe.write_bytes(b'arch = "fcn\xff8s"\n')
    assert main(["train", "--config", str(recipe), "--quiet"]) == 2
    assert "bad.toml: not valid TOML ('utf-8' codec can't decode byte 0xff" in capsys.readouterr().err


def test_recipe_settings_of_the_wrong_type_are_named(tmp_path):
    recipe = tmp_path / "typed.toml"
    recipe.write_text('batch_size = 2.5\nwidths = "4,8"\nflip = 1\nimage_size = [32]\nlr = 1\ncrop = []\n')
    with pytest.raises(ConfigError) as error:
        TrainConfig.from_dict(load_recipe(recipe))
    assert str(error.value) == (
        "training settings of the wrong type: batch_size = 2.5 (expected int); "
        "widths = '4,8' (expected tuple[int, ...] | None); flip = 1 (expected bool); "
        "image_size = [32] (expected tuple[int, int]); crop = [] (expected int | None)"
    )  # lr = 1 is fine: an integer is a float


def test_folder_training_and_evaluate(tmp_path, capsys):
    data = write_synthetic_folder(tmp_path / "data", 6, seed=5, size_range=(32, 40))
    (data / "classes.txt").write_text("\n".join(["background", "disc", "square", "triangle", "ring", "bar"]))
    out = tmp_path / "run"
    args = ["train", "--arch", "fcn8s", *TINY, *FAST, "--data", str(data), "--val-fraction", "0.34"]
    assert main([*args, "--epochs", "1", "--out", str(out)]) == 0
    log = (out / "log.csv").read_text().splitlines()
    assert log[1].startswith("4,")  # 4 training images (2 held out), batch 1
    capsys.readouterr()

    assert main(["evaluate", str(out / "best.pt"), str(data), "--json"]) == 0
    metrics = json.loads(capsys.readouterr().out)
    assert set(metrics) == {"pixel_acc", "mean_acc", "mean_iu", "fw_iu", "per_class_iu", "class_names"}
    assert metrics["class_names"][3] == "triangle" and len(metrics["per_class_iu"]) == 6
    assert 0 < metrics["pixel_acc"] <= 1

    assert main(["evaluate", str(out / "best.pt"), str(data)]) == 0
    table = capsys.readouterr().out
    assert "pixel acc." in table and "f.w. IU" in table and "ring" in table


def test_evaluate_rejects_a_class_count_mismatch(tmp_path, capsys):
    data = write_synthetic_folder(tmp_path / "data", 2, size_range=(32, 32))
    (data / "classes.txt").write_text("background\nthing\n")
    out = tmp_path / "run"
    assert (
        main(["train", "--arch", "fcn32s", *TINY, *SYNTHETIC, *FAST, "--max-steps", "1", "--out", str(out)])
        == 0
    )
    capsys.readouterr()
    assert main(["evaluate", str(out / "last.pt"), str(data)]) == 2
    assert "predicts 6 classes" in capsys.readouterr().err


def test_evaluate_takes_the_class_count_from_the_model_when_the_folder_has_no_list(tmp_path, capsys):
    data = write_synthetic_folder(tmp_path / "data", 2, size_range=(32, 32))
    out = tmp_path / "run"
    assert (
        main(["train", "--arch", "fcn32s", *TINY, *SYNTHETIC, *FAST, "--max-steps", "1", "--out", str(out)])
        == 0
    )
    capsys.readouterr()
    assert main(["evaluate", str(out / "last.pt"), str(data), "--json"]) == 0
    assert 0 <= json.loads(capsys.readouterr().out)["mean_iu"] <= 1


@pytest.mark.parametrize("recipe", RECIPES, ids=[p.stem for p in RECIPES])
def test_recipes_are_valid_configs(recipe):
    values = load_recipe(recipe)
    config = TrainConfig.from_dict(values)
    arch, backbone, data, batch = recipe.stem.split("_")
    assert config.arch == arch
    assert backbone in ("vgg16", "alexnet", "vgg16-narrow")
    accumulated = f"x{config.iter_size}" if config.iter_size > 1 else ""  # batches per step
    assert batch == f"batch{config.batch_size}{accumulated}"
    assert config.notes, "every recipe says what experiment it is"


def test_there_are_recipes_for_the_papers_nets():
    names = {p.stem.split("_")[0] for p in RECIPES}
    assert {
        "fcn32s",
        "fcn32s-fixed",
        "fcn16s",
        "fcn8s",
        "fcn8s-atonce",
        "fcn-alexnet",
        "hed",
        "fsds",
    } <= names


def test_evaluate_on_cuda_without_cuda_says_so(tmp_path, capsys, monkeypatch):
    weights = fcnseg.save_checkpoint(
        fcnseg.build_model("fcn32s", 6, widths=(4, 8, 8, 16, 16, 32)), tmp_path / "m.pt"
    )
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(SystemExit) as stopped:
        main(["evaluate", str(weights), "synthetic", "--images", "1", "--device", "cuda"])
    assert stopped.value.code == 2
    assert "device 'cuda' is not available here: torch finds no CUDA device" in capsys.readouterr().err


def test_status_lines_and_warnings_show_with_or_without_quiet_and_no_bar_off_a_terminal(
    tmp_path, capsys, monkeypatch
):
    """stderr is no terminal here: no progress bar either way, so no carriage return nor escape code."""
    monkeypatch.setattr(predict_module, "cpu_has_native_bf16", lambda: False)  # a warning to show
    args = [
        "train",
        "--arch",
        "fcn32s",
        *TINY,
        *SYNTHETIC,
        "--max-steps",
        "6",
        "--amp",
        "bf16",
        "--threads",
        "1",
    ]
    warning = (
        "warning: amp bf16: this CPU has no native bfloat16 arithmetic; it is emulated, and training will "
        "be slower than in float32"
    )
    for quiet in ([], ["--quiet"]):
        assert main([*args, *quiet, "--out", str(tmp_path / f"run{len(quiet)}")]) == 0
        said = capsys.readouterr()
        assert "trained fcn32s for 6 steps" in said.out
        assert "\r" not in said.err and "\x1b" not in said.err
        lines = said.err.splitlines()
        assert lines[:2] == [warning, "training from scratch (narrow widths (4, 8, 8, 16, 16, 32))"]
        assert len(lines) == 3 and lines[2].startswith("about ") and " per step: " in lines[2]


def test_a_progress_bar_is_drawn_on_a_terminal_unless_quiet(tmp_path, monkeypatch):
    class Terminal(io.StringIO):
        def isatty(self):
            return True

    args = ["train", "--arch", "fcn32s", *TINY, *SYNTHETIC, "--max-steps", "2", "--threads", "1"]
    for quiet in ([], ["--quiet"]):
        monkeypatch.setattr(sys, "stderr", Terminal())
        assert main([*args, *quiet, "--out", str(tmp_path / f"run{len(quiet)}")]) == 0
        drawn = sys.stderr.getvalue()
        assert "training from scratch" in drawn
        assert ("\r" in drawn and "2/2" in drawn) == (not quiet)
