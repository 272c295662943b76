"""HED and FSDS on the synthetic set against image-gradient baselines: ODS / OIS / AP and skeleton F.

Each net is trained from scratch for a fixed number of steps (not a time limit, so the scores do
not depend on the machine's load) with the settings and data of ``fcnseg demo --task edges`` and
``--task skeleton``, seeded, and scored with :func:`fcnseg.evaluate_edges` and
:func:`fcnseg.evaluate_skeletons` on held-out synthetic images (seed 2: neither trained nor
validated on). The baselines are scored on the same images:

- Sobel: the gradient magnitude of the grey image (``scipy.ndimage.sobel``), divided by its
  maximum so it lies in [0, 1]; a detector of boundaries with no learning.
- distance to Sobel edges (skeletons only): Blum's medial axis is the ridge of the distance to the
  boundary, so the distance of every pixel to the nearest strong Sobel response (above half the
  maximum), divided by its maximum; the evaluation's non-maximum suppression keeps its ridges.

The table replaces the ``edges-table`` section of ``benchmarks/RESULTS.md``.

    python benchmarks/edges_table.py            # the settings in RESULTS.md (about 7 min, 2 shared cores)
    python benchmarks/edges_table.py --quick    # tiny nets and sets, seconds, no file written
"""

from __future__ import annotations

import argparse
import datetime
import os
import shlex
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import torch
from _results import machine, write_section
from scipy import ndimage

from fcnseg.cli.demo import SIDES, SIDES_DATA, SIDES_QUICK, SIDES_QUICK_DATA
from fcnseg.data.datasets import InMemory
from fcnseg.data.edges import SyntheticEdges, SyntheticSkeletons
from fcnseg.metrics.edges import evaluate_edges, evaluate_skeletons
from fcnseg.tasks import get_task
from fcnseg.tasks.edges import predict_map
from fcnseg.train.config import TrainConfig
from fcnseg.train.trainer import Trainer

TASKS = {"edges": ("HED", SyntheticEdges), "skeleton": ("FSDS", SyntheticSkeletons)}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=2000, help="training steps per net")
    parser.add_argument("--test-images", type=int, default=50)
    parser.add_argument("--seed", type=int, default=0, help="seed of the training runs")
    parser.add_argument("--jobs", type=int, default=2, help="nets trained in parallel, one torch thread each")
    parser.add_argument(
        "--quick", action="store_true", help="tiny nets, 5 steps, 2 test images; no file written"
    )
    parser.add_argument("--dry-run", action="store_true", help="print the table, do not touch RESULTS.md")
    args = parser.parse_args(argv)
    if args.quick:
        args.steps, args.test_images, args.dry_run = 5, 2, True
    return args


def sobel(image: np.ndarray) -> np.ndarray:
    """The grey image's gradient magnitude divided by its maximum: an (H, W) map in [0, 1]."""
    grey = image.astype(np.float64).mean(axis=2)
    magnitude = np.hypot(ndimage.sobel(grey, axis=0), ndimage.sobel(grey, axis=1))
    return magnitude / max(magnitude.max(), 1e-12)


def sobel_distance(image: np.ndarray) -> np.ndarray:
    """The distance of each pixel to the nearest strong Sobel response, divided by its maximum."""
    distance = ndimage.distance_transform_edt(sobel(image) < 0.5)
    return distance / max(distance.max(), 1e-12)


def train_and_score(task: str, args: argparse.Namespace, workdir: str) -> tuple[dict, int, float]:
    """Train the task's net with the demo's settings for ``args.steps``; its held-out scores,
    the steps made and seconds."""
    start = time.perf_counter()
    torch.set_num_threads(1)
    settings, data = (SIDES_QUICK, SIDES_QUICK_DATA) if args.quick else (SIDES, SIDES_DATA)
    size = data["image_size"]
    kind = TASKS[task][1]
    train_set, val_set = (
        InMemory(kind(data[f"{split}_images"], seed=seed, size_range=size))
        for seed, split in enumerate(("train", "val"))
    )
    config = TrainConfig(
        **{**settings, "epochs": 10**6, "time_limit": None, "val_every": args.steps},
        task=task,
        max_steps=args.steps,
        seed=args.seed,
        image_size=size,
        progress=False,
        device="cpu",
        out=str(Path(workdir) / task),
    )
    result = Trainer(config, train_set=train_set, val_set=val_set).fit()
    scores = score(task, lambda image: predict_map(result.model, image), args)
    return scores, result.steps, time.perf_counter() - start


def held_out(task: str, args: argparse.Namespace) -> InMemory:
    """The images no run trains or validates on (seed 2), as the demo scores them."""
    data = SIDES_QUICK_DATA if args.quick else SIDES_DATA
    return InMemory(TASKS[task][1](args.test_images, seed=2, size_range=data["image_size"]))


def score(task: str, predict, args: argparse.Namespace) -> dict[str, float]:
    """ODS, OIS and AP of ``predict(image)``, an (H, W) map in [0, 1], on the held-out images."""
    images, truths = zip(*held_out(task, args), strict=True)
    predictions = [predict(image) for image in images]
    maps = [get_task(task).truths(truth) for truth in truths]  # the annotators' maps; one skeleton
    if task == "edges":
        return evaluate_edges(predictions, maps)
    return evaluate_skeletons(predictions, [skeleton for (skeleton,) in maps])


def table(rows: list[tuple[str, dict]], metric_names: tuple[str, str, str]) -> str:
    lines = [f"| method | {' | '.join(metric_names)} |", "|---|---|---|---|"]
    for name, s in rows:
        lines.append(f"| {name} | {s['ods']:.3f} | {s['ois']:.3f} | {s['ap']:.3f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    start = time.perf_counter()
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory() as workdir, ProcessPoolExecutor(args.jobs) as pool:
        futures = {task: pool.submit(train_and_score, task, args, workdir) for task in TASKS}
        baselines = {
            "edges": [("Sobel magnitude", score("edges", sobel, args))],
            "skeleton": [
                ("Sobel magnitude", score("skeleton", sobel, args)),
                ("distance to Sobel edges", score("skeleton", sobel_distance, args)),
            ],
        }
        trained = {}
        for task, future in futures.items():
            scores, steps, seconds = future.result()
            trained[task] = (steps, seconds, scores)
            print(f"{TASKS[task][0]}: {steps} steps, ODS {scores['ods']:.3f} ({seconds:.0f} s)", flush=True)
    load_after = os.getloadavg()
    minutes = (time.perf_counter() - start) / 60
    settings, data = (SIDES_QUICK, SIDES_QUICK_DATA) if args.quick else (SIDES, SIDES_DATA)
    low, high = data["image_size"]
    command = "python benchmarks/edges_table.py " + shlex.join(argv if argv is not None else sys.argv[1:])
    sections = []
    for task, names in (("edges", ("ODS", "OIS", "AP")), ("skeleton", ("F (ODS)", "F (OIS)", "AP"))):
        net = TASKS[task][0]
        steps, seconds, scores = trained[task]
        rows = [(f"{net} {settings['widths']}, {steps} steps", scores), *baselines[task]]
        sections += [f"### {'Edges' if task == 'edges' else 'Skeletons'}", "", table(rows, names), ""]
    text = "\n".join(
        [
            "## Edges and skeletons: HED and FSDS on synthetic shapes against Sobel",
            "",
            f"HED (`--task edges`) and FSDS (`--task skeleton`) trained from scratch for {args.steps} steps "
            f"with the settings and data of `fcnseg demo` (widths {settings['widths']}, batch "
            f"{settings['batch_size']}, Adam lr {settings['lr']:g}, poly schedule, flips, "
            f"{data['train_images']} training images of {low}-{high} px), seed {args.seed}; scored on "
            f"{args.test_images} held-out synthetic images with `evaluate_edges` (BSDS tolerance 0.0075 "
            "of the diagonal; 99 thresholds) and `evaluate_skeletons` (0.01; each map divided by its maximum, "
            "100 thresholds, as FSDS's evaluation), after non-maximum suppression. The nets' side layers "
            "start at zero, as the reference prototxts leave them. "
            "Baselines on the same images: the grey image's Sobel gradient magnitude over its maximum; "
            "for skeletons also the distance to the nearest strong Sobel response (> half the maximum) "
            "over its maximum, whose ridges are the medial axes of the regions the edges enclose "
            "(background regions too). The matching samples a sparse graph with a time-seeded "
            "generator, as the benchmark's does: the third decimal may move between runs.",
            "",
            *sections,
            "Reference numbers on real data (not comparable with these synthetic ones): HED on BSDS500 "
            "test, ODS 0.782 in the paper (Xie and Tu 2015), ODS 0.790 / OIS 0.808 for the released "
            "model; FSDS on SK-LARGE, F 0.633 in its paper (Shen et al. 2017).",
            "",
            f"- command: `{command.strip()}`",
            f"- machine: {machine()}; torch {torch.__version__}; {args.jobs} net(s) at a time, one thread each",
            f"- load average (1, 5, 15 min) before: {', '.join(f'{v:.1f}' for v in load_before)}; after: "
            f"{', '.join(f'{v:.1f}' for v in load_after)} (a shared machine: times are indicative)",
            f"- date: {datetime.date.today().isoformat()}; total {minutes:.1f} min "
            f"(HED {trained['edges'][1]:.0f} s, FSDS {trained['skeleton'][1]:.0f} s, training and scoring)",
        ]
    )
    print(text)
    if not args.dry_run:
        write_section("edges-table", text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
