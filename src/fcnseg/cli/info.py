"""``fcnseg info``: a net's layers, output stride, crop offsets, receptive field, parameters and GFLOPs."""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from torch import nn

from fcnseg.models.fcn import FCN
from fcnseg.models.flops import ComputeCost, compute_cost
from fcnseg.models.registry import ARCHITECTURES, BUILDERS, build_model
from fcnseg.models.sides import FSDS, HED
from fcnseg.weights.checkpoint import read_checkpoint
from fcnseg.weights.load import segmentation_only
from fcnseg.weights.transfer import caffe_name


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "info",
        help="show a net's layers, output stride, crop offsets, receptive field, parameters and GFLOPs",
        description="Describe an architecture (by name) or a checkpoint's net at an input size, "
        "without computing anything: the net is built on PyTorch's meta device.",
    )
    parser.add_argument(
        "net", metavar="ARCH|WEIGHTS", help=f"one of {', '.join(ARCHITECTURES)}, hed, fsds, or a checkpoint"
    )
    parser.add_argument("--size", type=parse_size, default=(500, 500), help="input HxW (default: 500x500)")
    parser.add_argument(
        "--num-classes", type=int, help="architecture only (default: 21; HED and FSDS have their own)"
    )
    parser.add_argument(
        "--widths", type=parse_widths, help="architecture only: narrower widths, e.g. 4,8,16,32,32,64"
    )
    parser.add_argument("--all-layers", action="store_true", help="also list ReLU and dropout layers")
    parser.set_defaults(run=run)


def parse_size(text: str) -> tuple[int, int]:
    """``500x375`` -> (500, 375) as (H, W); a single number is a square."""
    parts = text.lower().split("x")
    try:
        size = tuple(int(p) for p in parts) * (2 if len(parts) == 1 else 1)
    except ValueError:
        raise argparse.ArgumentTypeError(f"size must look like 500x500, got {text!r}") from None
    if len(size) != 2 or min(size) < 1:
        raise argparse.ArgumentTypeError(f"size must be two positive numbers HxW, got {text!r}")
    return size


def parse_widths(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(w) for w in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"widths must be comma-separated integers, got {text!r}") from None


def run(args: argparse.Namespace) -> int:
    print(describe(args.net, args.size, args.num_classes, args.widths, args.all_layers))
    return 0


def describe(
    net: str,
    size: tuple[int, int],
    num_classes: int | None = None,
    widths: tuple[int, ...] | None = None,
    all_layers: bool = False,
) -> str:
    """The report ``fcnseg info`` prints, for an architecture name or a checkpoint path."""
    if net in BUILDERS:
        config = {"arch": net, "num_classes": num_classes, "widths": widths}
        title = net
    elif Path(net).is_file():
        config = read_checkpoint(net, map_location="meta")["config"]
        title = f"{net} ({config['arch']})"
    else:
        raise ValueError(f"{net!r} is neither an architecture ({', '.join(BUILDERS)}) nor a file")
    with torch.device("meta"):  # shapes only: nothing is allocated or computed
        model = build_model(**config)
    if getattr(model, "task", "segmentation") == "detection":
        segmentation_only(model, net, "info")
    if not hasattr(model, "backbone"):
        raise ValueError(
            f"{title} is a late fusion of {len(model.streams)} fcn32s streams: `fcnseg info fcn32s` describes each"
        )
    cost = compute_cost(model, size)
    side_outputs = isinstance(model, HED | FSDS)
    predicts = f"{model.task}, {model.outputs} outputs" if side_outputs else f"{model.num_classes} classes"
    lines = [f"{title}: {predicts}, input {'x'.join(map(str, cost.input_shape))}", ""]
    fields = {name: (tap.stride, tap.field) for name, tap in model.backbone.taps.items()}
    if not side_outputs:
        fields["score_fr"] = fields[model.backbone.output.name]  # 1x1: the trunk output's positions
    lines += _layer_table(model, cost, all_layers, fields)
    lines += [""] + (_side_summary(model, cost, fields) if side_outputs else _summary(model, cost, fields))
    return "\n".join(lines)


def _first(value: int | tuple[int, ...]) -> int:
    return int(value[0]) if isinstance(value, tuple) else int(value)


def _kind(layer: nn.Module) -> str:
    """A short description: ``conv 3x3 pad 100``, ``max 2/2 ceil``, ``deconv 64/32``."""
    if isinstance(layer, nn.ConvTranspose2d):
        return f"deconv {_first(layer.kernel_size)}/{_first(layer.stride)}"
    if isinstance(layer, nn.Conv2d | nn.MaxPool2d):
        k, s, p, d = (_first(getattr(layer, a)) for a in ("kernel_size", "stride", "padding", "dilation"))
        text = f"conv {k}x{k}" if isinstance(layer, nn.Conv2d) else f"max {k}x{k}"
        text += f" /{s}" if s > 1 else ""
        text += f" pad {p}" if p else ""
        text += f" dil {d}" if d > 1 else ""
        return text + (" ceil" if getattr(layer, "ceil_mode", False) else "")
    return type(layer).__name__.lower()


def _layer_table(
    model: FCN, cost: ComputeCost, all_layers: bool, fields: dict[str, tuple[int, int]]
) -> list[str]:
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
    if isinstance(model, HED | FSDS):
        output = f"{model.outputs}x{cost.input_shape[1]}x{cost.input_shape[2]}"
        lines.append(f"{'(output)':<{width}}{'sides, then fused':<24}{output:>16}")
        return lines
    output = f"{model.num_classes}x{cost.input_shape[1]}x{cost.input_shape[2]}"
    lines.append(f"{'(output)':<{width}}{f'crop at {model.output_offset}':<24}{output:>16}")
    return lines


def _side_summary(model: HED | FSDS, cost: ComputeCost, fields: dict[str, tuple[int, int]]) -> list[str]:
    lines = []
    for tap, (score, _, offset) in zip(model.taps, model.sides, strict=True):
        stride, field = fields[tap.name]
        lines.append(
            f"{score:<17} on {tap.name.replace('relu', 'conv')}: stride {stride}, receptive field "
            f"{field}x{field}, crop at {offset}"
        )
    return [
        *lines,
        f"parameters        {cost.params:,} ({cost.params / 1e6:.1f} M)",
        f"compute           {cost.macs / 1e9:.1f} GMACs = {cost.gflops:.1f} GFLOPs "
        f"per {cost.input_shape[1]}x{cost.input_shape[2]} image (1 MAC = 2 FLOPs)",
    ]


def _summary(model: FCN, cost: ComputeCost, fields: dict[str, tuple[int, int]]) -> list[str]:
    coarse = model.backbone.output.geometry
    stride, field = fields["score_fr"]
    final = getattr(model, model.final_name)
    offsets = [f"{model.final_name} {model.output_offset}"]
    offsets += [f"score_{tap} {offset}" for tap, offset in model.skip_offsets.items()]
    return [
        f"output stride     {stride} (score_fr), upsampled by {model.final_name} "
        f"({_first(final.kernel_size)}/{_first(final.stride)})",
        f"score_fr centres  x = {coarse.scale} * i + {float(coarse.shift):g} in input pixels",
        f"crop offsets      {', '.join(offsets)}",
        f"receptive field   {field}x{field} pixels (score_fr)",
        f"parameters        {cost.params:,} ({cost.params / 1e6:.1f} M)",
        f"compute           {cost.macs / 1e9:.1f} GMACs = {cost.gflops:.1f} GFLOPs "
        f"per {cost.input_shape[1]}x{cost.input_shape[2]} image (1 MAC = 2 FLOPs)",
    ]
