"""Section 3 study: does loss sampling speed convergence, and four routes to a stride-8 output.

Part 1 trains the demo's narrow FCN-8s (the recipe of ``fcnseg demo``, for a fixed
number of steps instead of a time limit) on the synthetic set, keeping every
pixel's loss term (p = 1) or each 32x32 cell's (one final-layer cell of VGG16)
with probability p = 0.5 or 0.25: patchwise training done as loss sampling. It
records validation mean IU against epochs and against wall-clock seconds, and
held-out mean IU at the end, over several seeds. Part 2 trains an FCN-32s the
same way and scores, on held-out images, that net as trained, the same weights
made denser by shift-and-stitch (16 passes) and by rarefying pool4 and pool5
(one pass), both at output stride 8, the FCN head on the rarefied backbone
(``dilated_fcn``), and the FCN-8s of part 1: mean IU and time per image.
Tables go into the ``section3`` section of benchmarks/RESULTS.md, curves into
benchmarks/section3_sampling.png.

    python benchmarks/section3_study.py            # about 30 minutes on 2 CPU cores
    python benchmarks/section3_study.py --quick    # a smoke run of about a minute; writes nothing
"""

from __future__ import annotations

import argparse
import datetime
import shlex
import statistics
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import torch
from _results import machine, write_section
from PIL import Image, ImageDraw, ImageFont

from fcnseg import confusion_matrix, preprocess, scores
from fcnseg.cli.demo import FULL as DEMO_RECIPE
from fcnseg.cli.demo import FULL_DATA as DEMO_DATA
from fcnseg.data.datasets import InMemory
from fcnseg.data.synthetic import SyntheticSegmentation
from fcnseg.metrics.segmentation import evaluate_confusion
from fcnseg.models.dense import coarse_part, dilated_fcn, rarefy, shift_and_stitch, to_pixels
from fcnseg.models.geometry import path_map
from fcnseg.train.config import TrainConfig
from fcnseg.train.trainer import Trainer
from fcnseg.weights.checkpoint import load_checkpoint, save_checkpoint

HERE = Path(__file__).resolve().parent
KEEP_PROBS = (1.0, 0.5, 0.25)
CELL = 32  # loss sampling keeps or drops whole final-layer cells of VGG16, as in the paper
THRESHOLD = 0.9  # "converged" = reached this fraction of p = 1's final validation mean IU
QUICK_DATA = {"train_images": 8, "val_images": 4, "test_images": 4, "image_size": (40, 48)}


def datasets(data: dict) -> tuple[InMemory, InMemory, InMemory]:
    """Train (seed 0), validation (seed 1) and held-out test (seed 2) images, as in the demo."""
    size = data["image_size"]
    return tuple(
        InMemory(SyntheticSegmentation(data[f"{part}_images"], seed=seed, size_range=size))
        for seed, part in enumerate(("train", "val", "test"))
    )


def train_run(arch: str, keep_prob: float, seed: int, steps: int, data: dict, workdir: str) -> dict:
    """One training run on one CPU thread: its validation log, held-out scores and checkpoint."""
    torch.set_num_threads(1)  # the demo's narrow net: one thread per run, two runs on two cores
    train_set, val_set, test_set = datasets(data)
    recipe = {**DEMO_RECIPE, "epochs": 10**6, "time_limit": None, "val_every": max(1, steps // 20)}
    config = TrainConfig(
        **{**recipe, "arch": arch},
        max_steps=steps,
        loss_keep_prob=keep_prob,
        loss_sampling_cell=CELL,
        seed=seed,
        image_size=data["image_size"],
        device="cpu",
        progress=False,
        out=str(Path(workdir) / f"{arch}-p{keep_prob:g}-seed{seed}"),
    )
    result = Trainer(config, train_set=train_set, val_set=val_set).fit()
    confusion = evaluate_confusion(result.model, test_set, result.model.num_classes)
    checkpoint = save_checkpoint(result.model, Path(config.out) / "final.pt")
    return {"history": result.history, "test": scores(confusion), "checkpoint": str(checkpoint)}


def mean_std(values: list[float], scale: float = 100.0) -> str:
    spread = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{scale * statistics.mean(values):.1f} ± {scale * spread:.1f}"


def averaged(runs: list[dict]) -> list[dict[str, float]]:
    """The validation log averaged over seeds, row by row (every run validates at the same steps)."""
    rows = []
    for row_group in zip(*(run["history"] for run in runs), strict=True):
        rows.append(
            {k: statistics.mean(r[k] for r in row_group) for k in ("step", "epoch", "seconds", "mean_iu")}
        )
    return rows


def reached(history: list[dict], target: float) -> dict | None:
    """The first validation row at or above ``target`` mean IU."""
    return next((row for row in history if row["mean_iu"] >= target), None)


def sampling_tables(runs: dict[float, list[dict]]) -> tuple[str, str]:
    """The summary table, the curve table, and a plain statement of what they show."""
    target = THRESHOLD * statistics.mean(run["history"][-1]["mean_iu"] for run in runs[1.0])
    summary = [
        f"| keep prob. p | held-out mean IU | final val. mean IU | best val. mean IU | s / step "
        f"| steps to {100 * target:.1f} val. mean IU | seconds to it |",
        "|---|---|---|---|---|---|---|",
    ]
    facts = []
    for p, group in runs.items():
        steps = group[0]["history"][-1]["step"]
        hits = [reached(run["history"], target) for run in group]
        got = [h for h in hits if h is not None]
        when = (
            f"{statistics.mean(h['step'] for h in got):.0f}"
            + ("" if len(got) == len(hits) else f" ({len(got)} of {len(hits)} seeds)")
            if got
            else f"not within {steps}"
        )
        seconds = f"{statistics.mean(h['seconds'] for h in got):.0f}" if got else "-"
        per_step = statistics.mean(run["history"][-1]["seconds"] / steps for run in group)
        summary.append(
            f"| {p:g} | {mean_std([r['test']['mean_iu'] for r in group])} "
            f"| {mean_std([r['history'][-1]['mean_iu'] for r in group])} "
            f"| {mean_std([max(row['mean_iu'] for row in r['history']) for r in group])} "
            f"| {per_step:.3f} | {when} | {seconds} |"
        )
        facts.append((p, statistics.mean(r["test"]["mean_iu"] for r in group), per_step))
    curves = averaged(runs[1.0])
    table = [
        "| step | epoch | " + " | ".join(f"p = {p:g}" for p in runs) + " |",
        "|---" * (len(runs) + 2) + "|",
    ]
    means = {p: averaged(group) for p, group in runs.items()}
    for i, row in enumerate(curves):
        cells = [f"{100 * means[p][i]['mean_iu']:.1f} ({means[p][i]['seconds']:.0f} s)" for p in runs]
        table.append(f"| {row['step']:.0f} | {row['epoch']:g} | " + " | ".join(cells) + " |")
    statement = (
        "Held-out mean IU after the same number of steps: "
        + ", ".join(f"{100 * iu:.1f} for p = {p:g}" for p, iu, _ in facts)
        + f". A step costs the same whatever p ({', '.join(f'{s:.3f}' for _, _, s in facts)} s): the "
        "forward and backward passes cover the whole image and only loss terms are dropped, so equal "
        "steps are also equal seconds."
    )
    return "\n".join(summary) + "\n\n" + statement, (
        "Validation mean IU (percent, mean over seeds) against steps; seconds since the start in "
        "brackets, validation included:\n\n" + "\n".join(table)
    )


def dense_methods(fcn32s, fcn8s):
    """name -> (output stride, forward passes, function image -> (K, H, W) scores)."""
    rarefied = rarefy(rarefy(coarse_part(fcn32s), "pool5"), "pool4")
    dilated = dilated_fcn(fcn32s, 8)
    position = path_map(rarefied)  # where a stride-8 score sits: 8 i + 12.5

    def stitched(x):
        return to_pixels(shift_and_stitch(fcn32s, x, 4), position, x.shape[-2:])

    def rarefied_scores(x):
        return to_pixels(rarefied(x), position, x.shape[-2:])

    return {
        "FCN-32s (fixed bilinear 32x upsampling)": (32, 1, fcn32s),
        "FCN-32s + shift-and-stitch x4": (8, 16, stitched),
        "FCN-32s rarefied (pool4, pool5)": (8, 1, rarefied_scores),
        "FCN-32s rarefied + FCN head (dilated_fcn)": (8, 1, dilated),
        "FCN-8s (skips, trained)": (8, 1, fcn8s),
    }


def dense_table(methods, test_set, num_classes: int) -> str:
    lines = [
        "| method | output stride | passes | mean IU | pixel acc. | ms / image |",
        "|---|---|---|---|---|---|",
    ]
    images = [preprocess(image, DEMO_RECIPE["preprocess"])[None] for image, _ in test_set]
    for name, (stride, passes, method) in methods.items():
        confusion = torch.zeros(num_classes, num_classes, dtype=torch.int64)
        seconds = 0.0
        with torch.no_grad():
            for x, (_, label) in zip(images, test_set, strict=True):
                start = time.perf_counter()
                pred = method(x).argmax(1)[0]
                seconds += time.perf_counter() - start
                confusion += confusion_matrix(pred, torch.as_tensor(label), num_classes)
        metrics = scores(confusion)
        lines.append(
            f"| {name} | {stride} | {passes} | {100 * metrics['mean_iu']:.1f} | {100 * metrics['pixel_acc']:.1f} "
            f"| {1000 * seconds / len(images):.0f} |"
        )
    return "\n".join(lines)


def plot(runs: dict[float, list[dict[str, float]]], path: Path) -> None:
    """Two panels: mean IU against epochs and against seconds, one line per keep probability."""
    font = ImageFont.load_default(size=13)
    width, height, margin = 440, 300, (56, 34, 14, 42)
    image = Image.new("RGB", (2 * width, height), "white")
    draw = ImageDraw.Draw(image)
    colours = [(31, 119, 180), (214, 39, 40), (44, 160, 44)]
    for panel, key in enumerate(("epoch", "seconds")):
        left, top = panel * width + margin[0], margin[1]
        right, bottom = (panel + 1) * width - margin[2], height - margin[3]
        draw.rectangle((left, top, right, bottom), outline="black")
        draw.text(
            ((left + right) / 2, 10), f"validation mean IU by {key}", fill="black", font=font, anchor="mt"
        )
        x_high = max(r[key] for rows in runs.values() for r in rows)
        y_high = max(0.1, max(r["mean_iu"] for rows in runs.values() for r in rows) * 1.1)

        def xy(x, y, left=left, right=right, top=top, bottom=bottom, x_high=x_high, y_high=y_high):
            return left + x / x_high * (right - left), bottom - y / y_high * (bottom - top)

        for i in range(5):
            value = y_high * i / 4
            draw.text((left - 5, xy(0, value)[1]), f"{value:.2f}", fill="black", font=font, anchor="rm")
            value = x_high * i / 4
            draw.text((xy(value, 0)[0], bottom + 5), f"{value:.3g}", fill="black", font=font, anchor="mt")
        draw.text(((left + right) / 2, bottom + 22), key, fill="black", font=font, anchor="mt")
        for colour, (p, rows) in zip(colours, runs.items(), strict=False):
            draw.line([xy(r[key], r["mean_iu"]) for r in rows], fill=colour, width=2)
            draw.text((left + 8, top + 6 + 16 * colours.index(colour)), f"p = {p:g}", fill=colour, font=font)
    image.save(path)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=2000, help="training steps per run (default 2000)")
    parser.add_argument("--seeds", type=int, default=3, help="runs per keep probability (default 3)")
    parser.add_argument("--jobs", type=int, default=2, help="runs in parallel, one thread each (default 2)")
    parser.add_argument("--quick", action="store_true", help="a smoke run on tiny data; writes nothing")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    data, steps, seeds = (QUICK_DATA, 20, 1) if args.quick else (DEMO_DATA, args.steps, args.seeds)
    started = time.perf_counter()
    plan = [("fcn8s", p, seed) for seed in range(seeds) for p in KEEP_PROBS] + [("fcn32s", 1.0, 0)]
    with tempfile.TemporaryDirectory(prefix="section3-") as workdir:
        with ProcessPoolExecutor(args.jobs) as pool:
            futures = [pool.submit(train_run, *run, steps, data, workdir) for run in plan]
            results = {}
            for run, future in zip(plan, futures, strict=True):
                results[run] = future.result()
                print(
                    f"{run[0]} p={run[1]:g} seed {run[2]}: held-out mean IU "
                    f"{100 * results[run]['test']['mean_iu']:.1f}",
                    flush=True,
                )
        torch.set_num_threads(1)
        fcn32s = load_checkpoint(results[("fcn32s", 1.0, 0)]["checkpoint"]).eval()
        fcn8s = load_checkpoint(results[("fcn8s", 1.0, 0)]["checkpoint"]).eval()
        test_set = datasets(data)[2]
        dense = dense_table(dense_methods(fcn32s, fcn8s), test_set, fcn8s.num_classes)
    runs = {p: [results[("fcn8s", p, seed)] for seed in range(seeds)] for p in KEEP_PROBS}
    summary, curves = sampling_tables(runs)
    minutes = (time.perf_counter() - started) / 60
    command = "python benchmarks/section3_study.py " + shlex.join(argv if argv is not None else sys.argv[1:])
    size = data["image_size"]
    markdown = "\n\n".join(
        [
            "## Section 3: loss sampling, shift-and-stitch and rarefaction",
            f"The recipe of `fcnseg demo` (narrow VGG16 widths {DEMO_RECIPE['widths']}, He init, no dropout, "
            f"Adam lr {DEMO_RECIPE['lr']:g} with poly decay, mean loss with median-frequency class weights "
            f"to the power {DEMO_RECIPE['class_balance_power']:g}, "
            f"batch {DEMO_RECIPE['batch_size']}, flips), from scratch, for {steps} steps "
            f"({steps * DEMO_RECIPE['batch_size'] / data['train_images']:g} epochs of {data['train_images']} "
            f"synthetic images of {size[0]}-{size[1]} px); validation on {data['val_images']} images every "
            f"{max(1, steps // 20)} steps, held-out scores on {data['test_images']} more. Loss sampling keeps "
            f"each {CELL}x{CELL} cell's loss terms with probability p, drawn per image. Seeds 0-{seeds - 1} "
            "(initialisation, order, flips and masks; the images are the same). Mean IU in percent, "
            "mean ± std over seeds.",
            f"- command: `{command.strip()}`\n- machine: {machine()}; torch {torch.__version__}; "
            f"{args.jobs} runs at a time, one thread each\n- date: {datetime.date.today().isoformat()}; "
            f"whole study {minutes:.0f} min",
            "### Patchwise training is loss sampling: does sampling speed convergence?",
            summary,
            "![validation mean IU against epochs and seconds](section3_sampling.png)",
            curves,
            "### Dense output from FCN-32s: shift-and-stitch, rarefaction, skips",
            f"FCN-32s trained as above (p = 1, seed 0) and the FCN-8s of p = 1, seed 0; scored on the "
            f"{data['test_images']} held-out images, one thread. Shift-and-stitch and rarefaction give the "
            "same scores away from the borders (tests/test_dense.py); what differs is the cost: 16 passes "
            "against one.",
            dense,
        ]
    )
    print(markdown)
    if not args.quick:
        plot({p: averaged(group) for p, group in runs.items()}, HERE / "section3_sampling.png")
        write_section("section3", markdown)


if __name__ == "__main__":
    main()
