"""The dense CRF (``--crf``) on held-out synthetic images: accuracy overall and near object edges, and time.

Run from the repository root::

    python benchmarks/bench_crf.py                          # trains the demo's net (about 260 s), then scores
    python benchmarks/bench_crf.py --weights fcnseg-demo/model.pt   # a net from ``fcnseg demo``
    python benchmarks/bench_crf.py --time-limit 30 --images 10 --no-write   # a quick look

The net is the one ``fcnseg demo`` trains (its recipe and data; trained here unless
``--weights`` names one). Each of the demo's held-out images (seed 2, never trained on
nor used to pick a checkpoint) is segmented by the net (``predict``) and then refined
by the CRF with DeepLab's VOC parameters (the default of ``fcnseg.infer.crf``) and with
the example parameters of pydensecrf's README, for comparison; neither was tuned on
these images. Scored: pixel accuracy and mean IU over whole images, and the same within
a band around the ground truth's object edges (pixels at most ``--band`` px, Euclidean,
from a pixel with a differently labelled neighbour; ``scipy.ndimage``), where a CRF
should help most. Times are seconds per image, in one thread. The results go between
the ``crf`` markers of benchmarks/RESULTS.md. Needs the ``crf`` extra and scipy.
"""

from __future__ import annotations

import argparse
import datetime
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from scipy import ndimage

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _results import machine, write_section  # noqa: E402

from fcnseg.cli.demo import FULL as DEMO_RECIPE  # noqa: E402
from fcnseg.cli.demo import FULL_DATA as DEMO_DATA  # noqa: E402
from fcnseg.data.datasets import IGNORE_INDEX, InMemory  # noqa: E402
from fcnseg.data.synthetic import SyntheticSegmentation  # noqa: E402
from fcnseg.infer.crf import CRFSettings, refine  # noqa: E402
from fcnseg.infer.predict import predict  # noqa: E402
from fcnseg.metrics.segmentation import confusion_matrix, scores  # noqa: E402
from fcnseg.train.config import TrainConfig  # noqa: E402
from fcnseg.train.trainer import Trainer  # noqa: E402
from fcnseg.weights.load import load  # noqa: E402

SETTINGS = {
    "dense CRF, DeepLab's VOC parameters (the default)": CRFSettings(),
    "dense CRF, pydensecrf's example parameters": CRFSettings(
        gaussian_sxy=3, gaussian_compat=3, bilateral_sxy=80, bilateral_srgb=13, bilateral_compat=10
    ),
}


def edge_band(label: np.ndarray, width: float) -> np.ndarray:
    """Pixels at most ``width`` px from a pixel whose 3x3 neighbourhood holds another label."""
    edges = ndimage.grey_dilation(label, size=3) != ndimage.grey_erosion(label, size=3)
    return ndimage.distance_transform_edt(~edges) <= width


def train(time_limit: float, workdir: str) -> tuple[torch.nn.Module, str]:
    """The demo's net, trained as ``fcnseg demo`` trains it, for ``time_limit`` seconds."""
    size = DEMO_DATA["image_size"]
    train_set, val_set = (
        InMemory(SyntheticSegmentation(DEMO_DATA[f"{part}_images"], seed=seed, size_range=size))
        for seed, part in enumerate(("train", "val"))
    )
    config = TrainConfig(
        **{**DEMO_RECIPE, "time_limit": time_limit},
        seed=0,
        out=workdir,
        device="cpu",
        progress=False,
        image_size=size,
    )
    start = time.perf_counter()
    result = Trainer(config, train_set=train_set, val_set=val_set).fit()
    seconds = time.perf_counter() - start
    return result.model, f"trained here with the demo's recipe: {result.steps} steps in {seconds:.0f} s"


def measure(model: torch.nn.Module, images: int, band: float) -> dict[str, dict]:
    """Confusion matrices (whole images, edge band), seconds per image and changed pixels, per method."""
    classes = model.num_classes
    test_set = SyntheticSegmentation(images, seed=2, size_range=DEMO_DATA["image_size"])
    methods = ["net alone (argmax)", *SETTINGS]
    result = {
        m: {
            "whole": torch.zeros(classes, classes, dtype=torch.int64),
            "band": torch.zeros(classes, classes, dtype=torch.int64),
            "seconds": 0.0,
            "changed": 0,
        }
        for m in methods
    }
    pixels = band_pixels = 0
    for i in range(images):
        image, label = test_set[i]
        near_edge = np.where(edge_band(label, band), label, IGNORE_INDEX)
        pixels += label.size
        band_pixels += int((near_edge != IGNORE_INDEX).sum())
        start = time.perf_counter()
        net_labels, probs = predict(model, image, return_probs=True)
        net_seconds = time.perf_counter() - start
        for method in methods:
            start = time.perf_counter()
            settings = SETTINGS.get(method)
            labels = (
                net_labels if settings is None else refine(image, probs, are_probs=True, settings=settings)
            )
            entry = result[method]
            entry["seconds"] += net_seconds if settings is None else time.perf_counter() - start
            entry["changed"] += int((labels != net_labels).sum())
            entry["whole"] += confusion_matrix(labels, label, classes)
            entry["band"] += confusion_matrix(labels, near_edge, classes)
    for entry in result.values():
        entry["seconds"] /= images
        entry["changed"] /= pixels
    result["net alone (argmax)"]["band_share"] = band_pixels / pixels
    return result


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--weights", help="a net from fcnseg demo (default: train one here)")
    parser.add_argument(
        "--time-limit", type=float, default=DEMO_RECIPE["time_limit"], help="training seconds"
    )
    parser.add_argument("--images", type=int, default=DEMO_DATA["test_images"], help="held-out images")
    parser.add_argument("--band", type=float, default=3.0, help="edge band half-width, px")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--no-write", action="store_true", help="print only; leave RESULTS.md alone")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.weights:
        model, origin = load(args.weights), f"`{args.weights}` (from `fcnseg demo`)"
    else:
        with tempfile.TemporaryDirectory() as workdir:
            model, origin = train(args.time_limit, workdir)
    load_before = os.getloadavg()
    result = measure(model.cpu().eval(), args.images, args.band)
    load_after = os.getloadavg()
    command = "python benchmarks/bench_crf.py " + " ".join(sys.argv[1:] if argv is None else argv)
    height, width = DEMO_DATA["image_size"]
    lines = [
        "## Dense CRF post-processing (`--crf`) on the synthetic set",
        "",
        f"- command: `{command.strip()}`",
        f"- machine: {machine()}; torch {torch.__version__}, {args.threads} thread(s); "
        f"{datetime.datetime.now().astimezone():%Y-%m-%d %H:%M %Z}",
        f"- load average (1, 5, 15 min) before: {', '.join(f'{v:.1f}' for v in load_before)}; after: "
        f"{', '.join(f'{v:.1f}' for v in load_after)} (a shared machine: times are indicative)",
        f"- net: the demo's FCN-8s {tuple(DEMO_RECIPE['widths'])}, {origin}",
        f"- {args.images} held-out synthetic images (seed 2) of {height}-{width} px; edge band: pixels within "
        f"{args.band:g} px of a ground-truth edge, {100 * result['net alone (argmax)']['band_share']:.1f}% of "
        "all pixels",
        "- percent; s/img: the net's `predict` for the net alone, the CRF's `refine` (after the net) for the CRF rows",
        "",
        "| labels | pixel acc. | mean IU | edge band pixel acc. | edge band mean IU | pixels changed | s/img |",
        "|---|---|---|---|---|---|---|",
    ]
    for method, entry in result.items():
        whole, near = scores(entry["whole"]), scores(entry["band"])
        lines.append(
            f"| {method} | {100 * whole['pixel_acc']:.1f} | {100 * whole['mean_iu']:.1f} "
            f"| {100 * near['pixel_acc']:.1f} | {100 * near['mean_iu']:.1f} | {100 * entry['changed']:.1f}% "
            f"| {entry['seconds']:.4f} |"
        )
    section = "\n".join(lines)
    print(section)
    if not args.no_write:
        write_section("crf", section)


if __name__ == "__main__":
    main()
