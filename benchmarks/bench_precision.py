"""``fcnseg predict --precision bf16`` against fp32 on the CPU: speed and label agreement.

Run from the repository root::

    python benchmarks/bench_precision.py              # full VGG16 FCN-8s and a narrow one, 500x375
    python benchmarks/bench_precision.py --no-write   # print only

Both precisions run through ``predict_batch`` (the path of ``fcnseg predict``: the fast twin,
in float32 or with its backbone in bfloat16), one image per call, timed in turn round after
round so that a busy machine slows both alike. The nets have random He-scaled weights and the
images come from the synthetic set, resized to 500x375. The results go between the
``precision`` markers of benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import datetime
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _results import cpu_flags, machine, write_section  # noqa: E402
from bench_inference import seeded_model  # noqa: E402

from fcnseg.data.synthetic import SyntheticSegmentation  # noqa: E402
from fcnseg.infer.predict import cpu_has_native_bf16, predict_batch  # noqa: E402

NETS = {"VGG16 FCN-8s (full)": None, "FCN-8s narrow (4, 8, 16, 32, 32, 64)": (4, 8, 16, 32, 32, 64)}


def images(count: int, width: int, height: int) -> list[np.ndarray]:
    """Synthetic scenes (shapes on clutter), resized to ``width`` x ``height``."""
    data = SyntheticSegmentation(count, seed=3, size_range=(min(width, height), max(width, height)))
    return [
        np.asarray(Image.fromarray(data[i][0]).resize((width, height), Image.BILINEAR)) for i in range(count)
    ]


def measure(widths, pictures: list[np.ndarray], rounds: int) -> dict[str, float]:
    """Median and best seconds per image of each precision, and how far bf16 strays from fp32."""
    model = seeded_model("fcn8s", widths=widths)
    times: dict[str, list[float]] = {"fp32": [], "bf16": []}
    labels: dict[str, list[np.ndarray]] = {"fp32": [], "bf16": []}
    probs: dict[str, list[np.ndarray]] = {"fp32": [], "bf16": []}
    for precision in times:  # warm-up: builds the twin and packs its weights for this shape
        predict_batch(model, pictures[0][None], precision=precision)
    for round_ in range(rounds):
        for picture in pictures:
            for precision in times:
                start = time.perf_counter()
                out, p = predict_batch(model, picture[None], precision=precision, return_probs=round_ == 0)
                times[precision].append(time.perf_counter() - start)
                if round_ == 0:
                    labels[precision].append(out[0])
                    probs[precision].append(p[0])
    agree = [float((a == b).mean()) for a, b in zip(labels["fp32"], labels["bf16"], strict=True)]
    error = max(float(np.abs(a - b).max()) for a, b in zip(probs["fp32"], probs["bf16"], strict=True))
    return {
        "fp32": statistics.median(times["fp32"]),
        "bf16": statistics.median(times["bf16"]),
        "fp32_best": min(times["fp32"]),
        "bf16_best": min(times["bf16"]),
        "agree_mean": float(np.mean(agree)),
        "agree_min": min(agree),
        "prob_error": error,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=4, help="how many images")
    parser.add_argument("--size", default="500x375", help="WxH of the images")
    parser.add_argument("--rounds", type=int, default=5, help="timed rounds over the images")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--no-write", action="store_true", help="print only; leave RESULTS.md alone")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    width, height = (int(v) for v in args.size.split("x"))
    pictures = images(args.images, width, height)
    load_before = os.getloadavg()[0]
    rows = []
    for name, widths in NETS.items():
        result = measure(widths, pictures, args.rounds)
        rows.append((name, result))
        print(
            f"{name}: fp32 {result['fp32']:.3f} s, bf16 {result['bf16']:.3f} s per image "
            f"(x{result['fp32'] / result['bf16']:.2f}; best x{result['fp32_best'] / result['bf16_best']:.2f}); labels agree on {100 * result['agree_mean']:.2f}% "
            f"(worst image {100 * result['agree_min']:.2f}%); max |prob difference| {result['prob_error']:.3f}",
            flush=True,
        )
    load_after = os.getloadavg()[0]
    command = "python benchmarks/bench_precision.py " + " ".join(sys.argv[1:] if argv is None else argv)
    lines = [
        "## Inference precision: bf16 vs fp32 (CPU, `fcnseg predict --precision`)",
        "",
        f"- command: `{command.strip()}`",
        f"- machine: {machine()}; bfloat16 flags: {cpu_flags()} (native bf16 detected: "
        f"{cpu_has_native_bf16()}); torch {torch.__version__}, {args.threads} threads; "
        f"{datetime.datetime.now().astimezone():%Y-%m-%d %H:%M %Z}",
        f"- load average (1 min) before/after: {load_before:.1f} / {load_after:.1f} (a shared machine: "
        "the two precisions are timed in turn, image by image)",
        f"- {args.images} synthetic images at {width}x{height}, random He-scaled weights; seconds per "
        f"image (median and best of {args.images} x {args.rounds} calls), through `predict_batch` (the fast twin)",
        "- agree: pixels whose bf16 label equals the fp32 label (mean over images, worst image); "
        "prob: max |softmax difference|",
        "",
        "| net | fp32 s/img (median, best) | bf16 s/img (median, best) | bf16 speed-up (median, best) "
        "| labels agree | worst image | max prob diff |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, r in rows:
        lines.append(
            f"| {name} | {r['fp32']:.3f}, {r['fp32_best']:.3f} | {r['bf16']:.3f}, {r['bf16_best']:.3f} "
            f"| {r['fp32'] / r['bf16']:.2f}x, {r['fp32_best'] / r['bf16_best']:.2f}x "
            f"| {100 * r['agree_mean']:.2f}% | {100 * r['agree_min']:.2f}% | {r['prob_error']:.3f} |"
        )
    section = "\n".join(lines)
    print(section)
    if not args.no_write:
        write_section("precision", section)


if __name__ == "__main__":
    main()
