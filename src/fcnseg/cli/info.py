"""``fcnseg info``: a net's layers, output stride, crop offsets (or SSD's source maps and priors),
receptive fields, parameters and GFLOPs."""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from torch import nn

from fcnseg.cli.options import integers, parse_size
from fcnseg.errors import FcnsegError
from fcnseg.models.flops import ComputeCost
from fcnseg.models.registry import ARCHITECTURES, BUILDERS, build_model
from fcnseg.tasks import task_of
from fcnseg.weights import hub
from fcnseg.weights.checkpoint import read_checkpoint
from fcnseg.weights.transfer import caffe_name


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "info",
        help="show a net's layers, output stride, crop offsets or priors, receptive field, parameters and GFLOPs",
        description="Describe an architecture (by name), a published model (by name, as 'fcnseg weights "
        "list' names it; nothing is downloaded) or a checkpoint's net at an input size, without computing "
        "anything: the net is built on PyTorch's meta device.",
    )
    parser.add_argument(
        "net",
        metavar="ARCH|NAME|WEIGHTS",
        help=f"one of {', '.join(ARCHITECTURES)}; a published model (voc-fcn8s); or a checkpoint of any of them",
    )
    parser.add_argument(
        "--size", type=parse_size, help="input HxW (default: 500x500; an SSD's design size: 300x300, 512x512)"
    )
    parser.add_argument(
        "--num-classes", type=int, help="architecture only (default: 21; HED and FSDS have their own)"
    )
    parser.add_argument(
        "--widths", type=integers, help="architecture only: narrower widths, e.g. 4,8,16,32,32,64"
    )
    parser.add_argument("--all-layers", action="store_true", help="also list ReLU and dropout layers")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    print(describe(args.net, args.size, args.num_classes, args.widths, args.all_layers))
    return 0


def describe(
    net: str,
    size: tuple[int, int] | None = None,
    num_classes: int | None = None,
    widths: tuple[int, ...] | None = None,
    all_layers: bool = False,
) -> str:
    """The report ``fcnseg info`` prints, for an architecture name, a published model's name (the net
    its weights load as, from the registry: nothing is downloaded) or a checkpoint path; ``size``
    (H, W) defaults to 500x500, or to an SSD's design size (its priors' image size)."""
    if net in BUILDERS:
        config = {"arch": net, "num_classes": num_classes, "widths": widths}
        title = net
    elif Path(net).is_file():
        config = read_checkpoint(net, map_location="meta")["config"]
        title = f"{net} ({config['arch']})"
    elif net in hub.WEIGHTS or net in hub.INIT_NAMES:
        config = _published(net)
        title = f"{net} ({config['arch']}, published weights; {'cached' if hub.is_cached(net) else 'not downloaded'})"
    else:
        raise FcnsegError(
            f"{net!r} is neither an architecture ({', '.join(BUILDERS)}), nor a published model "
            "('fcnseg weights list' names them), nor a file"
        )
    with torch.device("meta"):  # shapes only: nothing is allocated or computed
        model = build_model(**config)
    described = task_of(model).describe_net(model, size)
    cost = described.cost
    table = _layer_table(model, cost, all_layers, described.fields, described.outputs)
    title = f"{title}: {described.predicts}, input {'x'.join(map(str, cost.input_shape))}"
    return "\n".join([title, "", *table, "", *described.summary, *_totals(cost)])


def _published(name: str) -> dict:
    """The ``build_model`` arguments of the net a published model loads as, as the registry gives them."""
    if name in hub.INIT_NAMES:
        raise FcnsegError(
            f"{name} picks the ImageNet classifier that starts a net, and builds none itself: "
            "`fcnseg info fcn8s` describes a net it starts"
        )
    weights = hub.get(name)
    if weights.starts:
        kind = "an ImageNet classifier" if weights.is_classifier else "a trunk"
        raise FcnsegError(
            f"{name} is {kind} that starts a net, and builds none itself: `fcnseg info {weights.starts}` "
            "describes a net it starts"
        )
    return weights.model_args


def _first(value: int | tuple[int, ...]) -> int:
    return int(value[0]) if isinstance(value, tuple) else int(value)


def _kind(layer: nn.Module) -> str:
    """A short description: ``conv 3x3 pad 100``, ``max 2/2 ceil``, ``deconv 64/32``."""
    if isinstance(layer, nn.ConvTranspose2d):
        padding = _first(layer.padding)
        return f"deconv {_first(layer.kernel_size)}/{_first(layer.stride)}" + (
            f" pad {padding}" if padding else ""
        )
    if isinstance(layer, nn.Conv2d | nn.MaxPool2d):
        k, s, p, d = (_first(getattr(layer, a)) for a in ("kernel_size", "stride", "padding", "dilation"))
        text = f"conv {k}x{k}" if isinstance(layer, nn.Conv2d) else f"max {k}x{k}"
        text += f" /{s}" if s > 1 else ""
        text += f" pad {p}" if p else ""
        text += f" dil {d}" if d > 1 else ""
        return text + (" ceil" if getattr(layer, "ceil_mode", False) else "")
    return type(layer).__name__.lower()


def _layer_table(
    model: nn.Module,
    cost: ComputeCost,
    all_layers: bool,
    fields: dict[str, tuple[int, int]],
    outputs: list[tuple[str, str, str]],
) -> list[str]:
    """One row per layer as it ran, then ``outputs``: (name, what, shape) rows for the net's outputs."""
    modules = dict(model.named_modules())
    names = {row.name: caffe_name(row.name) for row in cost.layers}  # inception_3a/1x1 for GoogLeNet
    width = max(16, 2 + max(map(len, names.values())))
    header = (
        f"{'layer':<{width}}{'kind':<24}{'output':>16}{'stride':>8}{'field':>7}{'params':>13}{'GMACs':>9}"
    )
    lines = [header, "-" * len(header)]
    for row in cost.layers:
        layer = modules[row.name]
        if not all_layers and isinstance(layer, nn.ReLU | nn.Dropout):
            continue
        short = names[row.name]
        stride, field = fields.get(short, ("", ""))
        shape = "x".join(map(str, row.output_shape))
        gmacs = f"{row.macs / 1e9:.3f}" if row.macs else ""
        params = f"{row.params:,}" if row.params else ""
        row = f"{short:<{width}}{_kind(layer):<24}{shape:>16}{stride:>8}{field:>7}{params:>13}{gmacs:>9}"
        lines.append(row.rstrip())
    return lines + [f"{name:<{width}}{what:<24}{shape:>16}" for name, what, shape in outputs]


def _totals(cost: ComputeCost) -> list[str]:
    return [
        f"parameters        {cost.params:,} ({cost.params / 1e6:.1f} M)",
        f"compute           {cost.macs / 1e9:.1f} GMACs = {cost.gflops:.1f} GFLOPs "
        f"per {cost.input_shape[1]}x{cost.input_shape[2]} image (1 MAC = 2 FLOPs)",
    ]
