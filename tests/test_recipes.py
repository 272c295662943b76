"""Every recipe of recipes/ builds its net and data pipeline and trains a step on a tiny copy of its
data set in the real layout, narrowed so that it runs in seconds; and says what the original did."""

import math
from pathlib import Path

import pytest
import torch
from tiny_datasets import (
    write_bsds500,
    write_context,
    write_hed_bsds,
    write_nyud,
    write_pascal,
    write_siftflow,
    write_sk_large,
    write_voc_detection,
)

from fcnseg import build_model, save_checkpoint
from fcnseg.cli.train import load_recipe
from fcnseg.data.preprocess import get_preprocessing
from fcnseg.train.config import TrainConfig
from fcnseg.train.trainer import train

RECIPES = sorted((Path(__file__).parent.parent / "recipes").glob("*.toml"))
TINY = {"vgg16": (4, 8, 8, 16, 16, 32), "alexnet": (4, 8, 8, 8, 8, 16)}
WRITERS = {
    "voc": write_pascal,
    "nyud": write_nyud,
    "siftflow": write_siftflow,
    "context": write_context,
    "hed-bsds": write_hed_bsds,
    "sk-large": write_sk_large,
}
CLASSES = {
    "voc": 21,
    "nyud": 40,
    "siftflow": 36,
    "context": 5,
}  # context: the tiny copy's 4 classes + background


def _checkpoint(path: Path, arch: str, backbone: str, dataset: str) -> str:
    """A narrow stand-in for the weights a recipe starts from: ImageNet, or the previous stage."""
    heads = {"heads": [33, 3]} if dataset == "siftflow" else {}
    model = build_model(arch, CLASSES[dataset], widths=TINY[backbone], **heads)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.01)
    save_checkpoint(model, path)
    return str(path)


def _previous_stage(init: str) -> str:
    """The arch of the run a staged recipe starts from (``runs/<recipe>/best.pt``)."""
    return load_recipe(Path(__file__).parent.parent / "recipes" / f"{Path(init).parent.name}.toml")["arch"]


def test_every_experiment_of_the_original_repository_has_a_recipe():
    names = {p.stem for p in RECIPES}
    for data, archs in {
        "voc-sbd": ("fcn32s", "fcn16s", "fcn8s", "fcn8s-atonce"),
        "siftflow": ("fcn32s", "fcn16s", "fcn8s"),
        "context": ("fcn32s", "fcn16s", "fcn8s"),
    }.items():
        assert {f"{a}_vgg16_{data}_batch1" for a in archs} <= names
    assert "fcn-alexnet_alexnet_voc-sbd_batch20" in names
    nyud = {"fcn32s_vgg16_nyud-rgb", "fcn32s_vgg16_nyud-hha", "fcn32s_vgg16_nyud-rgbd"}
    assert {f"{n}_batch1" for n in nyud} | {"fcn32s-late-fusion_vgg16_nyud-rgbhha_batch1"} <= names


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.stem)
def test_recipe_trains_a_step_on_a_tiny_copy_of_its_data(path, tmp_path):
    values = load_recipe(path)
    written = TrainConfig.from_dict(values)  # the recipe as written is a valid config
    accumulated = f"x{written.iter_size}" if written.iter_size > 1 else ""  # batches per step
    assert path.stem.startswith(f"{written.arch}_")
    assert path.stem.endswith(f"_batch{written.batch_size}{accumulated}")
    assert written.out == f"runs/{path.stem}"
    backbone = path.stem.split("_")[1].removesuffix("-narrow")
    dataset = written.dataset
    values.update(widths=list(TINY[backbone]), max_steps=1, out=str(tmp_path / "run"), progress=False)
    if written.task == "detection":
        values["data"] = str(write_voc_detection(tmp_path / "data"))
    elif dataset in WRITERS:
        values["data"] = str(WRITERS[dataset](tmp_path / "data"))
    else:
        values.update(train_images=4, val_images=2)
    if written.val_data:  # HED trains on HED-BSDS and is scored on BSDS500
        values["val_data"] = str(write_bsds500(tmp_path / "val"))
    if written.init not in (None, "auto"):
        staged = written.init.startswith("runs/")
        arch = (
            _previous_stage(written.init) if staged else "fcn-alexnet" if backbone == "alexnet" else "fcn32s"
        )
        values["init"] = _checkpoint(tmp_path / "init.pt", arch, backbone, dataset if staged else "voc")
    for stream, source in (written.init_streams or {}).items():
        values["init_streams"][stream] = _checkpoint(
            tmp_path / f"{stream}.pt", _previous_stage(source), backbone, dataset
        )
    result = train(TrainConfig.from_dict(values))
    assert result.steps == 1 and math.isfinite(result.history[-1]["train_loss"])
    model = result.model
    assert model.in_channels == get_preprocessing(written.preprocess).channels
    scores = {"siftflow": "sem_mean_iu", "edges": "ods", "skeleton": "ods", "detection": "map07"}
    score = scores.get(written.task, "mean_iu")
    assert 0 <= result.history[-1][score] <= 1
