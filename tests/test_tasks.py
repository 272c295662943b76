"""Tasks: the loop trains the task a config names, and one it has never seen through the same code."""

import csv
import logging
import re

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset

import fcnseg
from fcnseg.cli import main
from fcnseg.data.datasets import IGNORE_INDEX
from fcnseg.data.preprocess import preprocess
from fcnseg.data.registry import open_dataset
from fcnseg.data.transforms import NetPairs, pad_collate
from fcnseg.errors import ConfigError
from fcnseg.tasks import TASKS, get_task
from fcnseg.tasks.segmentation import SegmentationTask
from fcnseg.train.config import TrainConfig
from fcnseg.train.trainer import train

TINY = (4, 8, 8, 16, 16, 32)


class BoundaryMaps(Dataset):
    """A segmentation set's images with 1 where a pixel's right or lower neighbour has another class."""

    def __init__(self, dataset):
        self.dataset = dataset

    def __len__(self):
        return len(self.dataset)

    def __getitem__(self, index):
        image, label = self.dataset[index]
        edges = np.zeros(label.shape, np.int64)
        edges[:, :-1] |= label[:, 1:] != label[:, :-1]
        edges[:-1] |= label[1:] != label[:-1]
        return image, edges


class BoundaryLoss(nn.Module):
    def forward(self, scores, target, generator):
        keep = target != IGNORE_INDEX
        return F.binary_cross_entropy_with_logits(scores[:, 0][keep], target[keep].float())


class Edges:
    """Where class boundaries are, scored by F1: another target, loss, metric and score than segmentation."""

    name = "edges"
    score = "f1"
    metrics = ("precision", "recall", "f1")
    curves = {"f1": "F1"}

    def datasets(self, config):
        sizes = {"train": config.train_images, "val": config.val_images}
        return tuple(
            BoundaryMaps(open_dataset("synthetic", split=s, num_images=n, image_size=config.image_size))
            for s, n in sizes.items()
        )

    def check_data(self, train_set, val_set, progress):
        logging.getLogger(__name__).info(f"{len(train_set)} edge maps")

    def build_model(self, config, train_set):
        model = fcnseg.build_model(config.arch, 1, widths=config.widths)
        model.meta = {"preprocess": config.preprocess}
        return model

    def train_samples(self, train_set, config):
        return NetPairs(train_set, config.preprocess)

    collate = staticmethod(pad_collate)

    def criterion(self, config, train_set):
        return BoundaryLoss()

    def evaluate(self, model, dataset, config, context, progress):
        found = hit = true = 0
        model.eval()
        with torch.no_grad():
            for image, edges in (dataset[i] for i in range(len(dataset))):
                predicted = model(preprocess(image, config.preprocess)[None])[0, 0] > 0
                truth = torch.as_tensor(edges) == 1
                found, hit, true = (
                    found + predicted.sum(),
                    hit + (predicted & truth).sum(),
                    true + truth.sum(),
                )
        model.train()
        precision, recall = float(hit / max(found, 1)), float(hit / max(true, 1))
        return {
            "precision": precision,
            "recall": recall,
            "f1": 2 * precision * recall / (precision + recall or 1),
        }

    def summary(self, metrics, model):
        return f"F1 {metrics['f1']:.3f}"


def test_segmentation_is_the_default_and_an_unknown_task_lists_the_known_ones(capsys):
    assert TrainConfig().task == "segmentation" and isinstance(get_task("segmentation"), SegmentationTask)
    with pytest.raises(ConfigError, match=f"unknown task 'boxes'; choose one of {', '.join(TASKS)}$"):
        TrainConfig(task="boxes")
    with pytest.raises(ConfigError, match="unknown task 'boxes'"):
        TrainConfig.from_dict({"task": "boxes"})
    with pytest.raises(SystemExit):
        main(["train", "--task", "boxes"])
    assert re.search(
        r"--task: invalid choice: 'boxes' \(choose from '?segmentation'?, ", capsys.readouterr().err
    )


def test_the_loop_trains_a_new_task_by_its_name_alone(tmp_path, monkeypatch):
    monkeypatch.setitem(TASKS, "edges", Edges)
    config = dict(
        task="edges",
        arch="fcn32s",
        widths=TINY,
        train_images=4,
        val_images=2,
        image_size=(32, 40),
        batch_size=2,
        val_every=1,
        lr=1e-3,
        init=None,
        preprocess="imagenet",
        progress=False,
        out=str(tmp_path / "edges"),
    )
    result = train(TrainConfig(**config, epochs=1))
    resumed = train(TrainConfig(**config, epochs=2), resume=True)
    assert (result.steps, resumed.steps) == (2, 4)

    run = tmp_path / "edges"
    with (run / "log.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == ["step", "epoch", "train_loss", "precision", "recall", "f1", "lr", "seconds"]
    assert [int(r["step"]) for r in rows] == [1, 2, 3, 4]
    f1 = [float(r["f1"]) for r in rows]
    assert all(0 <= v <= 1 for v in f1)
    best = torch.load(run / "best.pt", weights_only=True)
    assert best["meta"]["metrics"]["f1"] == max(f1) == resumed.best_metrics["f1"]
    assert best["step"] == resumed.best_metrics["step"] == 1 + f1.index(max(f1))
    last = torch.load(run / "last.pt", weights_only=True)
    assert last["train_config"]["task"] == "edges" and last["best_score"] == max(f1)
    assert resumed.model.num_classes == 1
