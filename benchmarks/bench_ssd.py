"""SSD300 on the CPU: each convolution by the trunk's route against the layers called as written.

``SSD`` runs every convolution through :func:`fcnseg.models.reach.convolve`, as the FCN trunk
does: on the CPU, layers up to ``CHANNELS_LAST_WIDTH`` output channels run channels-last and
wider ones in the default layout, whatever the input's layout. *as written* calls each
``nn.Conv2d`` itself, in the default layout (what tracing and export get). Both variants take
turns in each round, from the same weights and images; the outputs of one forward are checked
equal (max |x - ref| / max |ref|). Training: forward, the sum of both outputs, backward;
inference: a forward under ``torch.no_grad``. The table replaces the ``ssd-speed`` section of
``benchmarks/RESULTS.md``.

    python benchmarks/bench_ssd.py             # about 3 minutes, one thread
    python benchmarks/bench_ssd.py --no-write  # print only
    python benchmarks/bench_ssd.py --quick     # the narrow net, batch 2, one round, seconds; print only
"""

from __future__ import annotations

import argparse
import datetime
import os
import statistics
import sys
import time
from contextlib import contextmanager

import torch
from _results import machine, write_section

from fcnseg import build_model
from fcnseg.models.ssd import SSD

CASES = [((4, 8, 16, 32, 32, 64), 8), (None, 2)]
"""(widths, batch): the README's narrow synthetic run, and the full net."""


@contextmanager
def as_written():
    """Every convolution of SSD called as the layer itself."""
    routed = SSD.__dict__["_conv"]  # the staticmethod itself
    SSD._conv = staticmethod(lambda layer, x: layer(x))
    try:
        yield
    finally:
        SSD._conv = routed


def train_step(model: SSD, x: torch.Tensor) -> None:
    model.zero_grad(set_to_none=True)
    loc, conf = model(x)
    (loc.sum() + conf.sum()).backward()


def infer(model: SSD, x: torch.Tensor) -> None:
    with torch.no_grad():
        model(x)


def relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--no-write", action="store_true", help="print only; leave RESULTS.md alone")
    parser.add_argument("--quick", action="store_true", help="the narrow net, batch 2, one round; print only")
    args = parser.parse_args()
    cases = [(CASES[0][0], 2)] if args.quick else CASES
    if args.quick:
        args.rounds, args.no_write = 1, True
    torch.set_num_threads(args.threads)
    load_before = os.getloadavg()[0]
    rows = []
    for widths, batch in cases:
        torch.manual_seed(0)
        model = build_model("ssd300", 21, widths=widths)
        x = torch.randn(batch, 3, 300, 300)
        with torch.no_grad():
            routed = model(x)
            with as_written():
                written = model(x)
        error = max(relative_error(a, b) for a, b in zip(routed, written, strict=True))
        for what, run in (("training step", train_step), ("inference", infer)):
            times: dict[str, list[float]] = {"as written": [], "fcnseg": []}
            for round_ in range(args.rounds + 1):
                for variant in times:
                    if variant == "as written":
                        with as_written():
                            start = time.perf_counter()
                            run(model, x)
                    else:
                        start = time.perf_counter()
                        run(model, x)
                    if round_:  # the first round makes oneDNN's primitives
                        times[variant].append(time.perf_counter() - start)
            ratio = statistics.median(
                a / b for a, b in zip(times["as written"], times["fcnseg"], strict=True)
            )
            label = f"SSD300 {'widths ' + str(widths) if widths else 'full width'}, batch {batch}, 300x300"
            row = (
                f"| {label} | {what} | {statistics.median(times['as written']):.3f} "
                f"| {statistics.median(times['fcnseg']):.3f} | {ratio:.2f} | {error:.0e} |"
            )
            rows.append(row)
            print(row, flush=True)
    text = "\n".join(
        [
            "## SSD300 on the CPU: the trunk's convolution routes",
            "",
            "Median seconds over rounds in which the variants take turns, and the median of the per-round "
            "ratio. *as written*: every `nn.Conv2d` called itself (default layout); *fcnseg*: each "
            "convolution by `fcnseg.models.reach.convolve` (channels-last up to 128 output channels on the "
            "CPU), as the FCN trunk runs them. Error: the two forwards' outputs, max |x - ref| / max |ref|. "
            "Training step: forward, the sum of both outputs, backward.",
            "",
            f"- command: `python benchmarks/bench_ssd.py{' ' + ' '.join(sys.argv[1:]) if sys.argv[1:] else ''}`",
            f"- machine: {machine()}; torch {torch.__version__}; {args.threads} thread(s); "
            f"{datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC",
            f"- load average (1 min) before/after: {load_before:.1f} / {os.getloadavg()[0]:.1f}",
            "",
            "| net | what | as written, s | fcnseg, s | x as written | output err |",
            "|---|---|---|---|---|---|",
            *rows,
        ]
    )
    print(text)
    if not args.no_write:
        write_section("ssd-speed", text)


if __name__ == "__main__":
    main()
