"""The paper's skip table on the synthetic set: FCN-32s, FCN-16s and FCN-8s trained with the same budget.

Each net is trained from scratch for the same number of steps with the same
recipe, once per seed, and scored on held-out synthetic images (a seed no run
trains or validates on). The four metrics, mean ± std over seeds, replace the
``skip-table`` section of ``benchmarks/RESULTS.md``.

    python benchmarks/skip_table.py                  # the settings in RESULTS.md (about 27 min, 2 cores)
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

from fcnseg.data.synthetic import SyntheticSegmentation
from fcnseg.train.metrics import scores
from fcnseg.train.trainer import TrainConfig, Trainer, evaluate_confusion

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
    parser.add_argument("--widths", default="4,8,16,32,32,64", help="narrow VGG16 widths")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--image-size", type=int, nargs=2, default=(64, 96))
    parser.add_argument("--train-images", type=int, default=400)
    parser.add_argument("--test-images", type=int, default=100)
    parser.add_argument(
        "--class-balance",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="median-frequency class weights (default; without them, nets from scratch sit on background)",
    )
    parser.add_argument("--jobs", type=int, default=2, help="runs in parallel, one torch thread each")
    parser.add_argument("--dry-run", action="store_true", help="print the table, do not touch RESULTS.md")
    return parser.parse_args(argv)


def train_and_score(arch: str, seed: int, args: argparse.Namespace, workdir: str) -> tuple[dict, float]:
    """Train one net from scratch with the shared recipe; its metrics on the test set, and seconds."""
    start = time.perf_counter()
    if args.jobs > 1:
        torch.set_num_threads(1)
    config = TrainConfig(
        arch=arch,
        widths=tuple(int(w) for w in args.widths.split(",")),
        weight_init="kaiming",
        dropout=0.0,
        preprocess="imagenet",
        loss="mean",
        optimizer="adam",
        lr=args.lr,
        weight_decay=0.0,
        lr_schedule="poly",
        caffe_bias=False,
        class_balance=args.class_balance,
        batch_size=args.batch_size,
        flip=True,
        train_images=args.train_images,
        val_images=20,
        image_size=tuple(args.image_size),
        epochs=10**6,
        max_steps=args.steps,
        val_every=args.steps,
        seed=seed,
        progress=False,
        device="cpu",
        out=str(Path(workdir) / f"{arch}-{seed}"),
    )
    model = Trainer(config).fit().model
    test_set = SyntheticSegmentation(args.test_images, seed=2, size_range=tuple(args.image_size))
    confusion = evaluate_confusion(model, test_set, model.num_classes, preprocess_mode="imagenet")
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
            f"Each net trained from scratch for {args.steps} steps (batch {args.batch_size}, Adam lr {args.lr:g}, "
            f"poly schedule, mean loss{', median-frequency class weights' if args.class_balance else ''}, "
            f"widths {args.widths}, He init, no dropout), {args.seeds} seeds; scored on "
            f"{args.test_images} held-out synthetic images of {args.image_size[0]}-{args.image_size[1]} px. "
            "Percent, mean ± std over seeds.",
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
