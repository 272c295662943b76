"""Training step time on the CPU: the plain (padded) net, the speed layer's reach (the trainer's default), torchfcn.

One step = forward, loss, backward and optimizer update, with the trainer's optimizer
(``fcnseg.train.optim``: fused on the CPU) for every variant. Two nets:

- the demo's: FCN-8s of widths (4, 8, 16, 32, 32, 64), batch 4 of 64x96 images,
  channels_last, mean loss, Adam (``fcnseg demo``'s settings); also the reach in
  the default layout. torchfcn's nets have fixed widths: no peer here.
- full VGG16 FCN-8s, batch 1 of 500x500, summed loss, SGD with momentum 0.99 and
  Caffe's bias rule (the recipe "paper"), against torchfcn's ``FCN8s`` holding the
  same weights (every upsampling frozen, as in the original nets and fcnseg).

Every variant starts from the same weights and sees the same images; before
timing, one step's scores and gradients are compared with the padded net's in
float64 (dropout off, so that torchfcn's Dropout2d can be compared too;
tests/test_reach.py checks dropout). Variants are timed in turn, round after round, so that
load on a shared machine hits them alike; the table gives medians. Writes the
``training-speed:measured`` block of benchmarks/RESULTS.md.

    python benchmarks/bench_training.py            # about 20 minutes on 2 cores
"""

from __future__ import annotations

import argparse
import copy
import datetime
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _peers import torchfcn_twin  # noqa: E402
from _results import machine, write_section  # noqa: E402

from fcnseg import build_model  # noqa: E402
from fcnseg.accel import for_training  # noqa: E402
from fcnseg.accel.training import TrimmedFCN  # noqa: E402
from fcnseg.cli.demo import FULL as DEMO_RECIPE  # noqa: E402
from fcnseg.data.synthetic import CLASS_NAMES  # noqa: E402
from fcnseg.train.config import RECIPES, TrainConfig  # noqa: E402
from fcnseg.train.optim import make_optimizer  # noqa: E402


def seeded_net(widths, classes: int) -> nn.Module:
    """He-scaled random weights everywhere (score layers too), dropout off: every path carries signal."""
    torch.manual_seed(0)
    model = build_model("fcn8s", classes, widths=widths).train()
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.Conv2d):
                module.weight.normal_(0, (2 / module.weight[0].numel()) ** 0.5)
                module.bias.normal_(0, 0.1)
            elif isinstance(module, nn.Dropout):
                module.p = 0.0
    return model


def step_function(model: nn.Module, optimizer: torch.optim.Optimizer, x, labels, reduction: str):
    def step() -> None:
        loss = F.cross_entropy(model(x), labels, reduction=reduction)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return step


def scores_and_grads(model: nn.Module, x, labels, reduction: str, names: dict[str, str]):
    """One forward/backward from the current weights: scores and gradients by fcnseg's names."""
    model.zero_grad(set_to_none=True)
    out = model(x)
    F.cross_entropy(out, labels, reduction=reduction).backward()
    grads = {names.get(n, n): p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return out.detach(), grads


def relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max())


def build_case(
    name: str, threads: int
) -> tuple[dict[str, Callable[[], None]], dict[str, tuple[float, float]]]:
    """The case's step functions by variant, and each variant's (score, gradient) error.

    Errors are measured against the padded net in float64, so that each variant's own
    float32 rounding shows (the padded net's included).
    """
    torch.set_num_threads(threads)
    if name == "demo":
        widths, batch, (height, width), classes = DEMO_RECIPE["widths"], 4, (64, 96), len(CLASS_NAMES)
        layouts = {"padded": True, "reach": True, "reach, default layout": False}
        reduction = "mean"
        config = TrainConfig(**{k: DEMO_RECIPE[k] for k in ("optimizer", "lr", "weight_decay")})
    else:
        widths, batch, (height, width), classes = None, 1, (500, 500), 21
        layouts = {"padded": False, "reach": False, "torchfcn": False}
        reduction = "sum"
        config = TrainConfig(
            **{k: RECIPES["paper"][k] for k in ("optimizer", "lr", "momentum", "weight_decay", "caffe_bias")}
        )
    base = seeded_net(widths, classes)
    torch.manual_seed(1)
    images = torch.randn(batch, 3, height, width)
    labels = torch.randint(0, classes, (batch, height, width))
    padded64 = copy.deepcopy(base).double()
    reference = scores_and_grads(padded64, images.double(), labels, reduction, {})
    del padded64
    steps, errors = {}, {}
    for variant, channels_last in layouts.items():
        layout = torch.channels_last if channels_last else torch.contiguous_format
        names: dict[str, str] = {}
        if variant == "torchfcn":
            model = torchfcn_twin(base, "fcn8s").train()
            for upsampling in (model.upscore2, model.upscore_pool4, model.upscore8):
                upsampling.weight.requires_grad_(False)  # all frozen, as in fcnseg and the original nets
            for module in model.modules():
                if isinstance(module, nn.modules.dropout._DropoutNd):
                    module.p = 0.0
            names = {
                n: f"backbone.{n}" for n, _ in model.named_parameters() if not n.startswith(("score", "up"))
            }
        else:
            model = copy.deepcopy(base)
        model = model.to(memory_format=layout)
        x = images.contiguous(memory_format=layout)
        optimizer = make_optimizer(model, config)
        if variant.startswith("reach"):
            model = for_training(model)
            assert isinstance(model, TrimmedFCN), "the trainer would run the plain net"
            names = {n: n.removeprefix("model.") for n, _ in model.named_parameters()}
        out, grads = scores_and_grads(model, x, labels, reduction, names)
        assert grads.keys() == reference[1].keys(), sorted(set(grads) ^ set(reference[1]))
        errors[variant] = (
            relative_error(out.double(), reference[0]),
            max(relative_error(grads[k].double(), reference[1][k]) for k in grads),
        )
        steps[variant] = step_function(model, optimizer, x, labels, reduction)
        steps[variant]()  # first call: oneDNN primitives and plans are made
    return steps, errors


CASES = {
    "demo": "demo net (4, 8, 16, 32, 32, 64), batch 4, 64x96, Adam",
    "vgg16": "VGG16 FCN-8s, batch 1, 500x500, SGD",
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5, help="rounds for the demo net (VGG16: 2 fewer)")
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--cases", nargs="+", default=list(CASES), choices=list(CASES))
    parser.add_argument("--no-write", action="store_true", help="print only; leave RESULTS.md alone")
    args = parser.parse_args()
    load_before = os.getloadavg()[0]
    rows = []
    for threads in args.threads:
        for case in args.cases:
            steps, errors = build_case(case, threads)
            repeat, rounds = (10, args.rounds) if case == "demo" else (1, max(1, args.rounds - 2))
            times: dict[str, list[float]] = {v: [] for v in steps}
            for _ in range(rounds):
                for variant, step in steps.items():
                    start = time.perf_counter()
                    for _ in range(repeat):
                        step()
                    times[variant].append((time.perf_counter() - start) / repeat)
            load = os.getloadavg()[0]
            for variant, ts in times.items():
                ratio = statistics.median(p / t for p, t in zip(times["padded"], ts, strict=True))
                score_err, grad_err = errors[variant]
                rows.append(
                    f"| {CASES[case]} | {threads} | {variant} | {statistics.median(ts):.3f} | {min(ts):.3f} "
                    f"| {ratio:.2f} | {score_err:.0e} | {grad_err:.0e} | {load:.1f} |"
                )
                print(rows[-1], flush=True)
    load_after = os.getloadavg()[0]
    text = "\n".join(
        [
            "### Measured: padded net, the images' reach, torchfcn",
            "",
            "Forward, loss, backward and optimizer update of FCN-8s (the trainer's optimizer, fused on the "
            "CPU, for every variant); median and best over rounds in which the variants take turns, and the "
            "median over rounds of the padded step's time over the variant's in that round. *padded*: "
            "`model(x)`, the layers as written; *reach*: what the trainer runs, "
            "`fcnseg.accel.for_training(model)` (`fcnseg.accel.reach`); *torchfcn*: its `FCN8s` with the same weights. Errors of one step "
            "from the same weights in float32 (dropout off), against the padded net in float64: "
            "max |x - ref| / max |ref| of the scores and of each parameter's gradient (the worst). Load: "
            "the 1-minute load average when the rounds ended.",
            "",
            f"- command: `python benchmarks/bench_training.py{' ' + ' '.join(sys.argv[1:]) if sys.argv[1:] else ''}`",
            f"- machine: {machine()}; torch {torch.__version__}; "
            f"{datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC",
            f"- load average (1 min) before/after: {load_before:.1f} / {load_after:.1f} (the machine is "
            "shared: variants are timed in turn so that load hits them alike)",
            "",
            "| net | threads | variant | median s / step | best s / step | x padded (median of rounds) "
            "| score err | gradient err | load |",
            "|---|---|---|---|---|---|---|---|---|",
            *rows,
        ]
    )
    print(text)
    if not args.no_write:
        write_section("training-speed:measured", text, inside="training-speed")


if __name__ == "__main__":
    main()
