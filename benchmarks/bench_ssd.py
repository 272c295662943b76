"""SSD300 on the CPU: the net as written against what fcnseg's tools run (the speed layer).

*as written* calls ``model(x)``, every layer in the default layout; *fcnseg* runs what the trainer
and ``predict`` run, :func:`fcnseg.accel.for_training` / :func:`~fcnseg.accel.for_inference`: for a
net of narrow convolutions (at most 128 outputs) on the CPU, the same forward on a channels-last
input (:mod:`fcnseg.accel.layout`); for the full-width net, the net itself. Both variants take
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

import torch
from _results import machine, write_section
from torch import nn

from fcnseg import build_model
from fcnseg.accel import for_inference, for_training

CASES = [((4, 8, 16, 32, 32, 64), 8), (None, 2)]
"""(widths, batch): the README's narrow synthetic run, and the full net."""


def train_step(model: nn.Module, x: torch.Tensor) -> None:
    model.zero_grad(set_to_none=True)
    loc, conf = model(x)
    (loc.sum() + conf.sum()).backward()


def infer(model: nn.Module, x: torch.Tensor) -> None:
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
        nets = {
            "training step": (train_step, model, for_training(model)),
            "inference": (infer, model, for_inference(model)),
        }
        with torch.no_grad():
            error = max(relative_error(a, b) for a, b in zip(nets["inference"][2](x), model(x), strict=True))
        for what, (run, written, fast) in nets.items():
            times: dict[str, list[float]] = {"as written": [], "fcnseg": []}
            for round_ in range(args.rounds + 1):
                for variant, net in (("as written", written), ("fcnseg", fast)):
                    start = time.perf_counter()
                    run(net, x)
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
            "## SSD300 on the CPU: the speed layer's channels-last inputs",
            "",
            "Median seconds over rounds in which the variants take turns, and the median of the per-round "
            "ratio. *as written*: `model(x)` in the default layout; *fcnseg*: what the trainer and "
            "`predict` run (`fcnseg.accel`): a net whose convolutions have at most 128 outputs gets a "
            "channels-last input on the CPU, the full-width net runs as written. Error: the two forwards' "
            "outputs, max |x - ref| / max |ref|. Training step: forward, the sum of both outputs, backward.",
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
