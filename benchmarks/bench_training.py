"""Training step time in the default (NCHW) and the channels_last (NHWC) layout, CPU.

One step = forward, summed-softmax loss, backward and an Adam update, on the
demo's narrow FCN-8s (batch 4 at 80x80) and on full-width VGG16 FCN-8s (batch 1 at
224x224). The layouts are timed in turn, round after round, so that load on a shared
machine hits both alike; the table gives the median. Writes the ``training-speed``
section of benchmarks/RESULTS.md.

    python benchmarks/bench_training.py            # about 8 minutes on 2 cores
"""

from __future__ import annotations

import argparse
import datetime
import statistics
import time

import torch
import torch.nn.functional as F
from _results import machine, write_section

from fcnseg import build_model
from fcnseg.cli.demo import FULL as DEMO_RECIPE

CASES = {
    "demo net (narrow), batch 4, 80x80": (DEMO_RECIPE["widths"], 4, 80, 10),
    "VGG16, batch 1, 224x224": (None, 1, 224, 2),
}


def step_function(widths, batch: int, size: int, channels_last: bool):
    torch.manual_seed(0)
    layout = torch.channels_last if channels_last else torch.contiguous_format
    model = build_model("fcn8s", 6, widths=widths).to(memory_format=layout)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
    images = torch.randn(batch, 3, size, size).contiguous(memory_format=layout)
    labels = torch.randint(0, 6, (batch, size, size))

    def step() -> None:
        loss = F.cross_entropy(model(images), labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    step()  # first call: oneDNN primitives are created
    return step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--no-write", action="store_true", help="print only; leave RESULTS.md alone")
    args = parser.parse_args()
    rows = []
    for threads in args.threads:
        torch.set_num_threads(threads)
        for case, (widths, batch, size, steps) in CASES.items():
            steps_of = {cl: step_function(widths, batch, size, cl) for cl in (False, True)}
            times = {False: [], True: []}
            for _ in range(args.rounds):
                for cl, step in steps_of.items():
                    start = time.perf_counter()
                    for _ in range(steps):
                        step()
                    times[cl].append((time.perf_counter() - start) / steps)
            nchw, nhwc = statistics.median(times[False]), statistics.median(times[True])
            rows.append(f"| {case} | {threads} | {nchw:.3f} | {nhwc:.3f} | {nchw / nhwc:.2f} |")
            print(rows[-1], flush=True)
    text = "\n".join(
        [
            "## Training step: default layout vs channels_last (CPU)",
            "",
            "Forward, loss, backward and Adam update of FCN-8s; median over rounds in which the two "
            "layouts take turns. `TrainConfig(channels_last=True)` / `fcnseg train --channels-last`; "
            "the demo uses it.",
            "",
            "- command: `python benchmarks/bench_training.py`",
            f"- machine: {machine()}; torch {torch.__version__}; {datetime.date.today().isoformat()}",
            "",
            "| net | threads | s / step (default) | s / step (channels_last) | speed-up |",
            "|---|---|---|---|---|",
            *rows,
        ]
    )
    print(text)
    if not args.no_write:
        write_section("training-speed", text)


if __name__ == "__main__":
    main()
