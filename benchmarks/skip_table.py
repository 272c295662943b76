"""The paper's skip table on the synthetic set: FCN-32s, FCN-16s and FCN-8s trained with the same budget.

Each net is trained from scratch for the same number of steps with the demo's
recipe and data (``fcnseg demo``), once per seed, and scored on held-out
synthetic images (a seed no run trains or validates on). The four metrics, mean ± std over seeds, replace the
``skip-table`` section of ``benchmarks/RESULTS.md``.

    python benchmarks/skip_table.py                  # the settings in RESULTS.md (about 12 min, 2 cores)
    python benchmarks/skip_table.py --steps 50 --seeds 1 --dry-run   # a quick look, no file written
"""

from __future__ import annotations

import argparse
import datetime
import shlex
import statistics
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path

import torch
from _results import machine, write_section

from fcnseg.cli.demo import FULL as DEMO_RECIPE
from fcnseg.cli.demo import FULL_DATA as DEMO_DATA
from fcnseg.data.datasets import InMemory
from fcnseg.data.synthetic import SyntheticSegmentation
from fcnseg.metrics.segmentation import evaluate_confusion, scores
from fcnseg.train.config import TrainConfig
from fcnseg.train.trainer import Trainer

ARCHS = ("fcn32s", "fcn16s", "fcn8s")
METRICS = (
    ("pixel_acc", "pixel acc."),
    ("mean_acc", "mean acc."),
    ("mean_iu", "mean IU"),
    ("fw_iu", "f.w. IU"),
)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=2000, help="training steps per run (the shared budget)")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--test-images", type=int, default=100)
    parser.add_argument("--jobs", type=int, default=2, help="runs in parallel, one torch thread each")
    parser.add_argument("--dry-run", action="store_true", help="print the table, do not touch RESULTS.md")
    return parser.parse_args(argv)


def train_and_score(
    arch: str, seed: int, args: argparse.Namespace, workdir: str, widths: tuple[int, ...] | None = None
) -> tuple[dict, float]:
    """Train one net from scratch with the shared recipe (at ``widths``, else the demo's); its metrics on
    the test set, and seconds."""
    start = time.perf_counter()
    if args.jobs > 1:
        torch.set_num_threads(1)
    train_set, val_set = (
        InMemory(
            SyntheticSegmentation(DEMO_DATA[f"{part}_images"], seed=seed, size_range=DEMO_DATA["image_size"])
        )
        for seed, part in enumerate(("train", "val"))
    )
    recipe = {**DEMO_RECIPE, "epochs": 10**6, "time_limit": None, "val_every": args.steps}
    config = TrainConfig(
        **{**recipe, "arch": arch, **({"widths": widths} if widths is not None else {})},
        max_steps=args.steps,
        seed=seed,
        image_size=DEMO_DATA["image_size"],
        progress=False,
        device="cpu",
        out=str(Path(workdir) / f"{arch}-{'-'.join(map(str, widths or ()))}-{seed}"),
    )
    model = Trainer(config, train_set=train_set, val_set=val_set).fit().model
    test_set = SyntheticSegmentation(args.test_images, seed=2, size_range=DEMO_DATA["image_size"])
    confusion = evaluate_confusion(model, test_set, model.num_classes)
    return scores(confusion), time.perf_counter() - start


def table(results: dict[str, list[dict]]) -> str:
    """Markdown rows of mean ± std (percent) per net."""
    lines = ["| net | " + " | ".join(label for _, label in METRICS) + " |", "|---" * (len(METRICS) + 1) + "|"]
    for arch, runs in results.items():
        cells = []
        for key, _ in METRICS:
            values = [100 * run[key] for run in runs]
            spread = statistics.stdev(values) if len(values) > 1 else 0.0
            cells.append(f"{statistics.mean(values):.1f} ± {spread:.1f}")
        lines.append(f"| FCN-{arch.removeprefix('fcn')} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    results: dict[str, list[dict]] = {arch: [] for arch in ARCHS}
    start = time.perf_counter()
    runs = [(arch, seed) for seed in range(args.seeds) for arch in ARCHS]
    with tempfile.TemporaryDirectory() as workdir, ProcessPoolExecutor(args.jobs) as pool:
        futures = {
            pool.submit(train_and_score, arch, seed, args, workdir): (arch, seed) for arch, seed in runs
        }
        for future in as_completed(futures):
            arch, seed = futures[future]
            metrics, seconds = future.result()
            results[arch].append(metrics)
            print(f"{arch} seed {seed}: mean IU {100 * metrics['mean_iu']:.1f} ({seconds:.0f} s)", flush=True)
    minutes = (time.perf_counter() - start) / 60
    command = "python benchmarks/skip_table.py " + shlex.join(argv if argv is not None else sys.argv[1:])
    text = "\n".join(
        [
            "## Skip table: FCN-32s vs FCN-16s vs FCN-8s on synthetic shapes",
            "",
            f"Each net trained from scratch for {args.steps} steps with the recipe and data of `fcnseg demo` "
            f"(widths {DEMO_RECIPE['widths']}, batch {DEMO_RECIPE['batch_size']}, Adam lr {DEMO_RECIPE['lr']:g}, "
            f"poly schedule, mean loss, class weights to the power {DEMO_RECIPE['class_balance_power']:g}, "
            f"{DEMO_DATA['train_images']} training images), {args.seeds} seeds; scored on "
            f"{args.test_images} held-out synthetic images of {DEMO_DATA['image_size'][0]}-"
            f"{DEMO_DATA['image_size'][1]} px. Percent, mean ± std over seeds.",
            "",
            table(results),
            "",
            f"- command: `{command.strip()}`",
            f"- machine: {machine()}; torch {torch.__version__}; {args.jobs} run(s) at a time",
            f"- date: {datetime.date.today().isoformat()}; total {minutes:.1f} min",
        ]
    )
    print(text)
    if not args.dry_run:
        write_section("skip-table", text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
