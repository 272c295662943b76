"""Cost of the ResNet nets on the CPU: GMACs and milliseconds per 500x500 image, beside VGG16's FCN-8s.

Run from the repository root::

    python benchmarks/bench_resnet.py                 # every ResNet FCN, torchvision's two, fcn8s (~10 min)
    python benchmarks/bench_resnet.py --archs fcn8s-resnet18 --rounds 1 --no-write   # a quick look

Each net has full widths and random weights (BatchNorm statistics included), in eval mode; one
image of 500x500 at batch 1, float32, ``--threads`` torch threads. Every net is timed two ways,
all of them in turn round after round, so that a busy machine slows them alike: the plain net (``model(x)`` under
``torch.inference_mode``) and what ``fcnseg predict`` runs (``fcnseg.accel.for_inference``: for a
ResNet FCN the trunk as written and the head only where the crops keep; torchvision's FCN as it
is). The table gives the best and the median round. GMACs count convolutions and transposed convolutions as
``fcnseg info`` does. The results go between the ``resnet-speed`` markers of benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import datetime
import os
import shlex
import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _results import machine, write_section  # noqa: E402
from bench_inference import seeded_model, time_cell  # noqa: E402

import fcnseg  # noqa: E402
from fcnseg.accel import for_inference  # noqa: E402
from fcnseg.models.flops import compute_cost  # noqa: E402
from fcnseg.models.registry import RESNET_FCNS, TORCHVISION_FCNS  # noqa: E402

ARCHS = (*RESNET_FCNS, *TORCHVISION_FCNS, "fcn8s")
SIZE = (500, 500)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--archs", nargs="+", default=list(ARCHS), choices=ARCHS, metavar="ARCH")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--no-write", action="store_true", help="print the table, do not touch RESULTS.md")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    load = os.getloadavg()[0]
    x = torch.randn(1, 3, *SIZE, generator=torch.Generator().manual_seed(0))
    rows = [
        "| net | trunk output stride | GMACs | params (M) | plain `model(x)` ms, best (median) | "
        "`fcnseg predict`'s path ms, best (median) |",
        "|---|---|---|---|---|---|",
    ]
    models = {arch: seeded_model(arch) for arch in args.archs}
    runs = {
        (arch, way): net
        for arch, m in models.items()
        for way, net in (("plain", m), ("fast", for_inference(m)))
    }
    times = {key: [1000 * s for s in seconds] for key, seconds in time_cell(runs, x, args.rounds).items()}
    for arch, model in models.items():
        with torch.device("meta"):
            cost = compute_cost(fcnseg.build_model(arch), SIZE)
        ms = {
            way: f"{min(times[arch, way]):.0f} ({statistics.median(times[arch, way]):.0f})"
            for way in ("plain", "fast")
        }
        stride = model.backbone.output.stride
        row = f"| {arch} | {stride} | {cost.macs / 1e9:.1f} | {cost.params / 1e6:.1f} | {ms['plain']} | {ms['fast']} |"
        print(row, flush=True)
        rows.append(row)
    command = "python benchmarks/bench_resnet.py " + shlex.join(argv if argv is not None else sys.argv[1:])
    text = "\n".join(
        [
            "## ResNet nets on the CPU: GMACs and milliseconds per 500x500 image",
            "",
            "Full widths, random weights, eval mode, one 500x500 image, float32, 21 classes; the best "
            f"and the median of {args.rounds} rounds after a warm-up (on a shared machine the best round is "
            "the nearest to the net's own cost).",
            "",
            *rows,
            "",
            f"- command: `{command.strip()}`",
            f"- machine: {machine()}; torch {torch.__version__}; {args.threads} thread(s); load average "
            f"{load:.1f} at the start, {os.getloadavg()[0]:.1f} at the end (a shared machine: other work slows "
            "some rounds)",
            f"- date: {datetime.date.today().isoformat()}",
        ]
    )
    print(text)
    if not args.no_write:
        write_section("resnet-speed", text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
