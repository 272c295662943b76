"""int8 against fp32 on the demo's trained net: held-out mean IU through each runtime backend.

Run from the repository root, after ``fcnseg demo --out fcnseg-demo``::

    python benchmarks/int8_demo.py fcnseg-demo/model.pt

The held-out images are the demo's test set (100 synthetic images, seed 2, 64-96 px); int8 is
calibrated on images of the demo's training set (seed 0), never on the ones scored. Each
precision and backend scores the same images through ``evaluate_confusion`` (the path of
``fcnseg evaluate``), and the share of pixels whose label equals the plain net's is counted. The results go between the ``int8-demo`` markers of
benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import datetime
import os
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _results import cpu_flags, machine, write_section  # noqa: E402

import fcnseg  # noqa: E402
from fcnseg.accel.quantize import calibrate  # noqa: E402
from fcnseg.cli.demo import FULL_DATA  # noqa: E402
from fcnseg.data.datasets import InMemory  # noqa: E402
from fcnseg.data.preprocess import preprocess, preprocessing_of  # noqa: E402
from fcnseg.infer.predict import inference_forward  # noqa: E402
from fcnseg.metrics.segmentation import evaluate_confusion, scores  # noqa: E402
from fcnseg.tasks import get_task  # noqa: E402


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("weights", help="the demo's model.pt")
    parser.add_argument("--calibration-images", type=int, default=16)
    parser.add_argument("--test-images", type=int, default=FULL_DATA["test_images"])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--no-write", action="store_true", help="print only; leave RESULTS.md alone")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    model = fcnseg.load(args.weights).eval()
    task = get_task("segmentation")
    test = InMemory(
        task.synthetic(args.test_images, seed=2, size_range=FULL_DATA["image_size"]), "test set", False
    )
    train = task.synthetic(args.calibration_images, seed=0, size_range=FULL_DATA["image_size"])
    pictures = [train[i][0] for i in range(len(train))]
    inputs = [preprocess(image, preprocessing_of(model))[None] for image, _ in test]
    with torch.inference_mode():
        fp32 = [model(x).argmax(1) for x in inputs]
    rows = []
    for bits in (None, 8, 7):
        calibration = calibrate(model, pictures, weight_bits=bits) if bits else None
        for backend in ("torch",) if bits is None else ("onnxruntime", "openvino"):
            start = time.perf_counter()
            forward = inference_forward(model, "int8" if bits else "fp32", backend, calibration)
            confusion = evaluate_confusion(model, test, model.num_classes, forward=forward)
            with torch.inference_mode():
                same = sum(int((forward(x).argmax(1) == y).sum()) for x, y in zip(inputs, fp32, strict=True))
            agree = same / sum(y.numel() for y in fp32)
            row = (
                f"int8, {bits}-bit weights" if bits else "fp32",
                backend,
                scores(confusion)["mean_iu"],
                agree,
            )
            rows.append((*row, time.perf_counter() - start))
            print(
                f"{row[0]:24s} {backend:12s} mean IU {100 * row[2]:.2f} labels = fp32 {100 * agree:.2f}%",
                flush=True,
            )
    command = "python benchmarks/int8_demo.py " + " ".join(sys.argv[1:] if argv is None else argv)
    lines = [
        "## int8 on the demo's net: held-out mean IU (`--precision int8`)",
        "",
        f"- command: `{command.strip()}`",
        f"- machine: {machine()}; CPU flags: {cpu_flags()}; torch {torch.__version__}, "
        f"{args.threads} threads; {datetime.datetime.now().astimezone():%Y-%m-%d %H:%M %Z}; load average "
        f"(1 min) {os.getloadavg()[0]:.1f}",
        f"- net: {args.weights} (`fcnseg demo`: FCN-8s, widths {tuple(model.config.get('widths') or ())}); "
        f"{len(test)} held-out synthetic images (the demo's test set); int8 calibrated on "
        f"{len(pictures)} images of the demo's training set",
        "- the default on this CPU is "
        + (
            "8-bit weights (VNNI)"
            if "vnni" in cpu_flags() or "amx_int8" in cpu_flags()
            else "7-bit weights (no VNNI)"
        ),
        "",
        "| precision | backend | mean IU | labels = fp32 | seconds (build, scoring twice) |",
        "|---|---|---|---|---|",
        *(f"| {p} | {b} | {100 * iu:.2f} | {100 * a:.2f}% | {t:.0f} |" for p, b, iu, a, t in rows),
    ]
    section = "\n".join(lines)
    print(section)
    if not args.no_write:
        write_section("int8-demo", section)


if __name__ == "__main__":
    main()
