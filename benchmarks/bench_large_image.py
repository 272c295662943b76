"""Peak memory and time of segmenting a 4096x4096 image, whole or in tiles, narrow and full-width.

Each case runs in its own subprocess so that its peak resident memory
(``ru_maxrss``, which also counts the oneDNN buffers torch allocates outside
Python) is its own. Writes the "large-image" section of benchmarks/RESULTS.md.

    python benchmarks/bench_large_image.py [--size 4096] [--cases narrow,full]

``full-4G`` (a 4 GiB budget) is left out by default: its 25 tiles of 1312 pixels
overlap by 608, so they cover about 2.5 times the image's pixels.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time

import numpy as np
import torch
from _results import write_section

import fcnseg
from fcnseg.infer.predict import predict
from fcnseg.infer.tiling import activation_bytes, default_max_memory, parse_memory, plan_tiles, tile_spans

NARROW = (4, 8, 16, 32, 32, 64)
CASES = {
    "narrow": (NARROW, None),
    "full": (None, None),
    "full-4G": (None, "4G"),
}
"""name -> (widths, max_memory); None widths is full-width VGG16, None memory the default budget."""


def _rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def run_case(name: str, size: int) -> dict:
    """Runs in the child: build, segment once, report peak memory and time."""
    widths, memory = CASES[name]
    torch.manual_seed(0)
    model = fcnseg.build_model("fcn8s", widths=widths).eval()
    image = np.random.default_rng(0).integers(0, 256, (size, size, 3), dtype=np.uint8)
    budget = parse_memory(memory) if memory else default_max_memory(torch.device("cpu"))
    whole = activation_bytes(model, size, size)
    tiled = whole > budget
    tiles = ""
    if tiled:
        plan = plan_tiles(model, budget - 4 * (model.num_classes + 1) * size * size)
        tiles = f"{len(tile_spans(size, plan)) ** 2} of {plan.tile} px"
    before = _rss_mib()
    start = time.perf_counter()
    labels = predict(model, image, max_memory=budget)
    seconds = time.perf_counter() - start
    assert labels.shape == (size, size)
    return {
        "case": name,
        "widths": "full" if widths is None else ",".join(map(str, widths)),
        "budget_gib": budget / 2**30,
        "estimate_whole_gib": whole / 2**30,
        "tiles": tiles or "whole image",
        "rss_before_mib": before,
        "peak_mib": _rss_mib(),
        "seconds": seconds,
        "load": os.getloadavg()[0],
    }


def write_results(rows: list[dict], size: int) -> None:
    lines = [
        f"## Large image: one {size}x{size} image, fcn8s, CPU",
        "",
        f"`python benchmarks/bench_large_image.py` on {platform.machine()}, {torch.get_num_threads()} torch "
        f"threads, torch {torch.__version__}. Peak = `ru_maxrss` of the case's own subprocess "
        "(model, image, activations and outputs); before = after building the model and the image; "
        "load = the machine's 1-minute load average as the case ended (times stretch with it).",
        "",
        "| case | widths | budget GiB | whole-image estimate GiB | run as | before MiB | peak MiB | time s | load |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['case']} | {r['widths']} | {r['budget_gib']:.1f} | {r['estimate_whole_gib']:.1f} | "
            f"{r['tiles']} | {r['rss_before_mib']:.0f} | {r['peak_mib']:.0f} | {r['seconds']:.1f} | "
            f"{r['load']:.1f} |"
        )
    write_section("large-image", "\n".join(lines))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=4096)
    parser.add_argument("--cases", default="narrow,full", help=f"any of {', '.join(CASES)}")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(run_case(args.child, args.size)))
        return
    rows = []
    for name in args.cases.split(","):
        done = subprocess.run(
            [sys.executable, __file__, "--child", name, "--size", str(args.size)],
            capture_output=True,
            text=True,
            check=True,
        )
        rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
        print(rows[-1], flush=True)
    write_results(rows, args.size)


if __name__ == "__main__":
    main()
