"""``fcnseg demo``: the whole pipeline in minutes on a CPU, with no data and no network.

It generates the synthetic set, trains a narrow FCN-8s (or HED, FSDS) from scratch, scores it
on held-out images, and leaves in one folder everything a user would look at: overlays of
image / ground truth / prediction, the training curves, the metrics and the checkpoint.
"""

from __future__ import annotations

import argparse
import functools
import json
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from fcnseg import distributed
from fcnseg.cli.options import add_device, add_threads, set_threads
from fcnseg.data.datasets import IGNORE_INDEX, InMemory
from fcnseg.files import atomic_write
from fcnseg.logs import show_bars
from fcnseg.tasks import Task, get_task
from fcnseg.tasks.common import InferenceOptions
from fcnseg.train.config import TrainConfig
from fcnseg.train.trainer import Trainer
from fcnseg.weights.checkpoint import save_checkpoint

# Chosen by trying settings on 2 CPU cores, on held-out mean IU in the same time. From scratch,
# with no BatchNorm, the net sits on the "all background" plateau for hundreds of steps;
# median-frequency class weights push it off (their square root, power 0.5, costs the
# background less: 0.544 against 0.518 mean IU after 1,500 steps), He init and no dropout speed
# it up, and Adam with the normalised loss takes an ordinary learning rate (after 7,000 steps,
# lr 2e-3 scored 0.635 and 1e-3 0.612). Narrow wins: in the same time widths (4, 8, 16, 32, 32,
# 64) make twice the steps of (8, 16, 32, 64, 64, 128). Training stops at the time limit,
# annealing the poly schedule by time, so the demo keeps to its budget on slower machines.
FULL = {
    "arch": "fcn8s",
    "widths": (4, 8, 16, 32, 32, 64),
    "weight_init": "kaiming",
    "init": None,
    "dropout": 0.0,
    "frozen_upsampling": "final",  # the 2x upsamplings learn, as when the demo's scores were measured
    "preprocess": "imagenet",
    "loss": "mean",
    "class_balance": True,
    "class_balance_power": 0.5,
    "optimizer": "adam",
    "lr": 2e-3,
    "weight_decay": 0.0,
    "caffe_bias": False,
    "lr_schedule": "poly",
    "batch_size": 4,
    "flip": True,
    "epochs": 100,
    "time_limit": 260.0,
    "val_every": 250,
}
FULL_DATA = {"train_images": 2000, "val_images": 30, "test_images": 100, "image_size": (64, 96)}
QUICK = {**FULL, "widths": (4, 8, 8, 16, 16, 32), "epochs": 1, "time_limit": None, "val_every": 0}
QUICK_DATA = {"train_images": 16, "val_images": 4, "test_images": 6, "image_size": (32, 48)}
# Edges and skeletons: a narrow HED or FSDS from scratch with the loop's defaults (per-pixel mean of
# the class-balanced loss, Adam, He init). In 60 s on one thread HED made 848 steps to 0.439 held-out
# ODS and FSDS 742 steps to 0.386 F; validation runs once, at the end, as matching is slow.
SIDES = {
    "widths": (8, 16, 32, 32, 32),
    "weight_init": "kaiming",
    "init": None,
    "preprocess": "imagenet",
    "loss": "mean",
    "optimizer": "adam",
    "lr": 2e-3,
    "lr_schedule": "poly",
    "batch_size": 4,
    "flip": True,
    "epochs": 100,
    "time_limit": 60.0,
}
SIDES_DATA = {"train_images": 1000, "val_images": 10, "test_images": 20, "image_size": (64, 96)}
SIDES_QUICK = {**SIDES, "widths": (4, 8, 8, 8, 8), "epochs": 1, "time_limit": None}
SIDES_QUICK_DATA = {"train_images": 8, "val_images": 2, "test_images": 2, "image_size": (32, 40)}
_OUTPUTS = (
    "config.toml", "last.pt", "best.pt", "model.pt", "log.csv", "steps.csv", "curves.png", "metrics.json", "overlays",
)  # fmt: skip


def _all_background(test_set: Dataset) -> str:
    """What calling every pixel background scores on ``test_set``: a floor to read the net's scores by."""
    labels = np.concatenate([label.ravel() for _, label in test_set])
    background = float(np.mean(labels[labels != IGNORE_INDEX] == 0))
    return (
        f"(calling every pixel background would score pixel acc. {100 * background:.1f}, mean IU "
        f"{100 * background / test_set.num_classes:.1f})"
    )


@dataclass(frozen=True)
class Demo:
    """The demo of one task: its net's name for people, its settings and data (full and ``--quick``),
    and what a trivial prediction would score, if that says something."""

    net: str
    settings: dict[str, Any]
    data: dict[str, Any]
    quick: dict[str, Any]
    quick_data: dict[str, Any]
    floor: Callable[[Dataset], str] | None = None


# A task shown here has ``synthetic(num_images, seed=, size_range=)``, its data set in the synthetic
# world, and ``sample_figure(model, image, truth, scale)``: image | ground truth | prediction.
DEMOS = {
    "segmentation": Demo("FCN-8s", FULL, FULL_DATA, QUICK, QUICK_DATA, _all_background),
    "edges": Demo("HED", SIDES, SIDES_DATA, SIDES_QUICK, SIDES_QUICK_DATA),
    "skeleton": Demo("FSDS", SIDES, SIDES_DATA, SIDES_QUICK, SIDES_QUICK_DATA),
}
"""The tasks ``fcnseg demo --task`` shows."""


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "demo",
        help="generate data, train a small FCN-8s and show its segmentations (about 4 minutes on a CPU; --task edges or skeleton: HED or FSDS)",
        description="Generate the synthetic set, train a narrow FCN-8s from scratch, evaluate it on "
        "held-out images and write overlays, curves, metrics.json and the checkpoint to --out.",
    )
    parser.add_argument("--out", type=Path, default=Path("fcnseg-demo"), help="output folder")
    parser.add_argument(
        "--task",
        choices=tuple(DEMOS),
        default="segmentation",
        help="edges: a narrow HED on the synthetic boundaries; skeleton: a narrow FSDS on their medial "
        "axes (about a minute and a half each)",
    )
    parser.add_argument("--quick", action="store_true", help="a tiny net for a few seconds (for tests)")
    parser.add_argument("--seed", type=int, default=0, help="random seed of the training run")
    parser.add_argument("--overlays", type=int, default=4, help="how many overlay PNGs to write")
    add_device(parser)
    # The demo trains against the clock, where a thread too many costs most: one by default.
    add_threads(
        parser,
        default=1,
        why=" (a second thread helps a little when the cores are idle and does great harm when they "
        "are shared; in 210 s on 2 idle cores 1 thread made 1,916 steps and 2 threads 2,228, and on 2 "
        "busy cores 1 thread made 1,440 and 2 threads 85)",
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bars (status lines still show)")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    start = time.perf_counter()
    set_threads(args.threads)
    out = _prepare(args.out)
    progress = show_bars(not args.quiet)
    demo, task = DEMOS[args.task], get_task(args.task)
    settings, data = (demo.quick, demo.quick_data) if args.quick else (demo.settings, demo.data)
    size = data["image_size"]
    # Seed 2: test images neither trained on nor used to pick the best checkpoint.
    train_set, val_set, test_set = (
        InMemory(
            task.synthetic(data[f"{split}_images"], seed=seed, size_range=size),
            f"generating {split} set",
            progress,
        )
        for seed, split in enumerate(("train", "val", "test"))
    )
    config = TrainConfig(
        task=args.task, **settings, seed=args.seed, out=str(out), device=args.device, progress=progress,
        image_size=size,
    )  # fmt: skip
    result = Trainer(config, train_set=train_set, val_set=val_set).fit()
    model = result.model
    device = next(model.parameters()).device
    metrics = task.measure(model, test_set, InferenceOptions(), distributed.Context(device=device), progress)
    model.meta["metrics"] = metrics
    save_checkpoint(model.cpu(), out / "model.pt")
    names = task.class_names(model)
    summary = json.dumps({**metrics, **({"class_names": names} if names else {})}, indent=2) + "\n"
    atomic_write(out / "metrics.json", lambda f: f.write(summary.encode()))
    written = _write_overlays(task, model.eval(), test_set, out / "overlays", args.overlays)

    print(
        f"\n{demo.net} {settings['widths']} trained {result.steps} steps; held-out synthetic images ({len(test_set)}):"
    )
    print(task.summary(metrics, model))
    if demo.floor is not None:
        print(demo.floor(test_set))
    print(
        f"\nwrote {out}/: model.pt, best.pt, last.pt, metrics.json, log.csv, curves.png, {len(written)} overlays"
    )
    print(f"total time {time.perf_counter() - start:.0f} s")
    return 0


def _prepare(out: Path) -> Path:
    """Make ``out``, clearing a previous demo there; refuse a folder that holds anything else."""
    if out.exists():
        entries = {p.name for p in out.iterdir()}
        others = entries - set(_OUTPUTS)
        if others:
            raise ValueError(
                f"{out} holds files that are not from a demo ({', '.join(sorted(others)[:5])}); use --out"
            )
        for name in entries:
            path = out / name
            shutil.rmtree(path) if path.is_dir() else path.unlink()
    out.mkdir(parents=True, exist_ok=True)
    return out


def _write_overlays(
    task: Task, model: torch.nn.Module, dataset: Dataset, folder: Path, count: int
) -> list[Path]:
    """PNGs of image | ground truth | prediction (the task's figure), enlarged 3x so the small images
    can be seen."""
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for i in range(min(count, len(dataset))):
        picture = Image.fromarray(task.sample_figure(model, *dataset[i], scale=3))
        written.append(
            atomic_write(folder / f"sample_{i}.png", functools.partial(picture.save, format="PNG"))
        )
    return written
