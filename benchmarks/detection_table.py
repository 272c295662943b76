"""SSD300 on the synthetic shapes: VOC mAP of a narrow net trained from scratch on a CPU.

The net is ``build_model("ssd300")`` with narrow widths, trained through the training loop
(``--task detection``: the reference's augmentation, MultiBox loss with 3:1 hard negatives) for a
fixed number of steps (not a time limit, so the score does not depend on the machine's load),
seeded, and scored with :func:`fcnseg.detection.evaluate_detections` (VOC07 11-point and area
under the curve, the devkit's pixel areas and IoU >= 0.5, difficult boxes ignored) on held-out
synthetic images (seed 2: neither trained nor validated on). The baseline is the same net freshly initialised, before any step: what
boxes drawn by chance from the priors score.

The table replaces the ``detection-table`` section of ``benchmarks/RESULTS.md``.

    python benchmarks/detection_table.py            # the settings in RESULTS.md (25 min, one thread)
    python benchmarks/detection_table.py --quick    # a tiny run, seconds, no file written
"""

from __future__ import annotations

import argparse
import datetime
import math
import os
import shlex
import sys
import tempfile
import time
from pathlib import Path

import torch
from _results import machine, write_section

from fcnseg import build_model
from fcnseg.data.datasets import InMemory
from fcnseg.data.synthetic import CLASS_NAMES, SyntheticDetection
from fcnseg.tasks.detection import evaluate_detector
from fcnseg.train.config import TrainConfig
from fcnseg.train.initial import kaiming_init
from fcnseg.train.trainer import Trainer

SETTINGS = {
    "task": "detection",
    "arch": "ssd300",
    "widths": (4, 8, 16, 32, 32, 64),
    "weight_init": "kaiming",
    "init": None,
    "preprocess": "imagenet",
    "optimizer": "adam",
    "lr": 1e-3,
    "weight_decay": 0.0,
    "lr_schedule": "poly",
    "batch_size": 8,
}
DATA = {"train_images": 2000, "val_images": 50, "image_size": (64, 96)}
QUICK_DATA = {"train_images": 16, "val_images": 4, "image_size": (64, 96)}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=6000, help="training steps")
    parser.add_argument("--test-images", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0, help="seed of the training run")
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    parser.add_argument("--quick", action="store_true", help="5 steps, 4 test images; no file written")
    parser.add_argument("--dry-run", action="store_true", help="print the table, do not touch RESULTS.md")
    args = parser.parse_args(argv)
    if args.quick:
        args.steps, args.test_images, args.dry_run = 5, 4, True
    return args


def row(name: str, metrics: dict) -> str:
    per_class = " | ".join(f"{100 * ap:.1f}" for ap in metrics["ap07"][1:])
    return f"| {name} | {100 * metrics['map07']:.1f} | {100 * metrics['map']:.1f} | {per_class} |"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    load_before = os.getloadavg()
    data = QUICK_DATA if args.quick else DATA
    size = data["image_size"]
    train_set, val_set = (
        InMemory(SyntheticDetection(data[f"{split}_images"], seed=seed, size_range=size))
        for seed, split in enumerate(("train", "val"))
    )
    test_set = InMemory(SyntheticDetection(args.test_images, seed=2, size_range=size))
    with tempfile.TemporaryDirectory() as workdir:
        config = TrainConfig(
            **SETTINGS,
            epochs=10**6,
            max_steps=args.steps,
            val_every=max(1, args.steps // 4),
            seed=args.seed,
            image_size=size,
            progress=not args.quick,
            device="cpu",
            out=str(Path(workdir) / "ssd"),
        )
        torch.manual_seed(args.seed)
        initialised = build_model("ssd300", len(CLASS_NAMES), widths=SETTINGS["widths"])
        kaiming_init(initialised)
        chance = evaluate_detector(initialised.eval(), test_set, batch_size=8)
        result = Trainer(config, train_set=train_set, val_set=val_set).fit()
        trained_seconds = time.perf_counter() - start
        best = torch.load(Path(workdir) / "ssd" / "best.pt", weights_only=True)
        result.model.load_state_dict(best["state_dict"])
        trained = evaluate_detector(result.model.eval(), test_set, batch_size=8)
    load_after = os.getloadavg()
    minutes = (time.perf_counter() - start) / 60
    low, high = size
    widths = SETTINGS["widths"]
    command = "python benchmarks/detection_table.py " + shlex.join(argv if argv is not None else sys.argv[1:])
    classes = CLASS_NAMES[1:]
    text = "\n".join(
        [
            "## Detection: SSD300 on synthetic shapes",
            "",
            f"A narrow SSD300 (`--task detection`, widths {widths}: conv1..conv5 and fc6/fc7, the extra "
            "layers a quarter to an eighth of fc7) trained from scratch (He initialisation of the trunk) for "
            f"{args.steps} steps: batch {SETTINGS['batch_size']}, Adam lr {SETTINGS['lr']:g}, poly schedule, "
            "the reference's augmentation (colour distortion, expansion up to 4x, the seven IoU-constrained "
            f"crops, mirror, resize to 300), {data['train_images']} training images of {low}-{high} px, "
            f"seed {args.seed}; the checkpoint with the best validation mAP ({data['val_images']} images, "
            f"every {config.val_every} steps) scored on {args.test_images} held-out synthetic images "
            "(seed 2) with `evaluate_detections` as the VOC devkit scores boxes (pixel areas counting "
            "xmax - xmin + 1, a match at IoU >= 0.5): VOC07 11-point mAP and the area under the curve, "
            "difficult (mostly hidden) boxes ignored. The validation images pick the checkpoint; the "
            "held-out ones are scored once, at the end. Baseline: the same net freshly initialised, "
            "before its first step.",
            "",
            f"| net | mAP (11-point) | mAP (area) | {' | '.join(f'AP07 {c}' for c in classes)} |",
            "|---|---|---|" + "---|" * len(classes),
            row(f"SSD300 {widths}, {result.steps} steps", trained),
            row("the same net, He-initialised (0 steps)", chance),
            "",
            "Reference numbers on real data (not comparable with these synthetic ones): SSD300 on VOC2007 "
            "test, 74.3 mAP in the paper (Liu et al. 2016), 77.2 for the released "
            "`VGG_VOC0712_SSD_300x300_iter_120000` model, both from ImageNet VGG16 after 120k steps of "
            "batch 32.",
            "",
            f"- command: `{command.strip()}`",
            f"- machine: {machine()}; torch {torch.__version__}; {args.threads} thread(s)",
            f"- load average (1, 5, 15 min) before: {', '.join(f'{v:.1f}' for v in load_before)}; after: "
            f"{', '.join(f'{v:.1f}' for v in load_after)} (a shared machine: times are indicative)",
            f"- date: {datetime.date.today().isoformat()}; total {minutes:.1f} min "
            f"(training {trained_seconds / 60:.1f} min, {trained_seconds / max(1, result.steps):.2f} s a step "
            "with validation)",
        ]
    )
    print(text)
    if math.isnan(trained["map07"]):
        raise SystemExit("the held-out images hold no box: nothing was scored")
    if not args.dry_run:
        write_section("detection-table", text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
