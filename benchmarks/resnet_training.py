"""FCN-8s on ResNet beside VGG16's FCN-8s and torchvision's FCN, trained on the synthetic set alike.

Each net is trained from scratch with the recipe and data of ``fcnseg demo`` (as
``benchmarks/skip_table.py`` trains the VGG16 nets), at narrow widths of about the same number of
parameters, once per seed, and scored on held-out synthetic images. ``fcn8s-resnet50`` and
``tv-fcn-resnet50`` share their trunk's widths: the aligned FCN-8s head against torchvision's head
and resize. The table replaces the ``resnet-training`` section of ``benchmarks/RESULTS.md``.

    python benchmarks/resnet_training.py                  # the settings in RESULTS.md (~15 min, 2 cores)
    python benchmarks/resnet_training.py --steps 50 --seeds 1 --dry-run   # a quick look, no file written
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

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _results import machine, write_section  # noqa: E402
from skip_table import DEMO_DATA, DEMO_RECIPE, METRICS, train_and_score  # noqa: E402

import fcnseg  # noqa: E402

NETS = {
    "fcn8s": DEMO_RECIPE["widths"],
    "fcn8s-resnet18": (8, 16, 32, 64),
    "fcn8s-resnet50": (4, 8, 16, 32),
    "tv-fcn-resnet50": (4, 8, 16, 32),
}
"""The nets and their widths (VGG16: conv1..conv5, fc; ResNet: the planes of layer1..layer4)."""


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=2000, help="training steps per run (the shared budget)")
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--test-images", type=int, default=100)
    parser.add_argument("--jobs", type=int, default=2, help="runs in parallel, one torch thread each")
    parser.add_argument("--dry-run", action="store_true", help="print the table, do not touch RESULTS.md")
    return parser.parse_args(argv)


def parameters(arch: str, widths: tuple[int, ...]) -> int:
    with torch.device("meta"):
        model = fcnseg.build_model(arch, 6, widths=widths)
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    results: dict[str, list[tuple[dict, float]]] = {arch: [] for arch in NETS}
    start = time.perf_counter()
    runs = [(arch, seed) for seed in range(args.seeds) for arch in NETS]
    with tempfile.TemporaryDirectory() as workdir, ProcessPoolExecutor(args.jobs) as pool:
        futures = {
            pool.submit(train_and_score, arch, seed, args, workdir, NETS[arch]): (arch, seed)
            for arch, seed in runs
        }
        for future in as_completed(futures):
            arch, seed = futures[future]
            metrics, seconds = future.result()
            results[arch].append((metrics, seconds))
            print(f"{arch} seed {seed}: mean IU {100 * metrics['mean_iu']:.1f} ({seconds:.0f} s)", flush=True)
    header = (
        "| net | widths | trained params | " + " | ".join(label for _, label in METRICS) + " | min per run |"
    )
    lines = [header, "|---" * (len(METRICS) + 4) + "|"]
    for arch, done in results.items():
        cells = []
        for key, _ in METRICS:
            values = [100 * metrics[key] for metrics, _ in done]
            spread = statistics.stdev(values) if len(values) > 1 else 0.0
            cells.append(f"{statistics.mean(values):.1f} ± {spread:.1f}")
        minutes = statistics.mean(seconds for _, seconds in done) / 60
        widths = ", ".join(map(str, NETS[arch]))
        lines.append(
            f"| {arch} | ({widths}) | {parameters(arch, NETS[arch]):,} | {' | '.join(cells)} | {minutes:.1f} |"
        )
    total = (time.perf_counter() - start) / 60
    command = "python benchmarks/resnet_training.py " + shlex.join(argv if argv is not None else sys.argv[1:])
    text = "\n".join(
        [
            "## FCN-8s on ResNet beside VGG16's FCN-8s, synthetic shapes",
            "",
            f"Each net trained from scratch for {args.steps} steps with the recipe and data of `fcnseg demo` "
            f"(batch {DEMO_RECIPE['batch_size']}, Adam lr {DEMO_RECIPE['lr']:g}, poly schedule, mean loss, "
            f"class weights to the power {DEMO_RECIPE['class_balance_power']:g}, He init, dropout off, "
            f"{DEMO_DATA['train_images']} training images, BatchNorm training), {args.seeds} seeds; scored "
            f"on {args.test_images} held-out synthetic images of {DEMO_DATA['image_size'][0]}-"
            f"{DEMO_DATA['image_size'][1]} px. Percent, mean ± std over seeds.",
            "",
            *lines,
            "",
            f"- command: `{command.strip()}`",
            f"- machine: {machine()}; torch {torch.__version__}; {args.jobs} run(s) at a time, one thread each",
            f"- date: {datetime.date.today().isoformat()}; total {total:.1f} min",
        ]
    )
    print(text)
    if not args.dry_run:
        write_section("resnet-training", text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
