"""``fcnseg info``: a net's layers, output stride, crop offsets (or SSD's source maps and priors),
receptive fields, parameters and GFLOPs."""

from __future__ import annotations

import argparse
from collections import OrderedDict
from pathlib import Path

import torch
from torch import nn

from fcnseg.models.fcn import FCN
from fcnseg.models.flops import ComputeCost, compute_cost
from fcnseg.models.registry import ARCHITECTURES, BUILDERS, build_model
from fcnseg.models.sides import FSDS, HED
from fcnseg.models.ssd import SSD
from fcnseg.models.trunk import SequentialTrunk
from fcnseg.weights.checkpoint import read_checkpoint
from fcnseg.weights.transfer import caffe_name


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "info",
        help="show a net's layers, output stride, crop offsets or priors, receptive field, parameters and GFLOPs",
        description="Describe an architecture (by name) or a checkpoint's net at an input size, "
        "without computing anything: the net is built on PyTorch's meta device.",
    )
    parser.add_argument(
        "net",
        metavar="ARCH|WEIGHTS",
        help=f"one of {', '.join(ARCHITECTURES)}, hed, fsds, ssd300, ssd512, or a checkpoint of any of them",
    )
    parser.add_argument(
        "--size", type=parse_size, help="input HxW (default: 500x500; an SSD's design size: 300x300, 512x512)"
    )
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
    size: tuple[int, int] | None = None,
    num_classes: int | None = None,
    widths: tuple[int, ...] | None = None,
    all_layers: bool = False,
) -> str:
    """The report ``fcnseg info`` prints, for an architecture name or a checkpoint path; ``size``
    (H, W) defaults to 500x500, or to an SSD's design size (its priors' image size)."""
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
    if isinstance(model, SSD):
        side = model.prior_spec.image_size
        return _describe_ssd(model, title, size or (side, side), all_layers)
    if not hasattr(model, "backbone"):
        raise ValueError(
            f"{title} is a late fusion of {len(model.streams)} fcn32s streams: `fcnseg info fcn32s` describes each"
        )
    cost = compute_cost(model, size or (500, 500))
    side_outputs = isinstance(model, HED | FSDS)
    predicts = f"{model.task}, {model.outputs} outputs" if side_outputs else f"{model.num_classes} classes"
    lines = [f"{title}: {predicts}, input {'x'.join(map(str, cost.input_shape))}", ""]
    fields = {name: (tap.stride, tap.field) for name, tap in model.backbone.taps.items()}
    if not side_outputs:
        fields["score_fr"] = fields[model.backbone.output.name]  # 1x1: the trunk output's positions
    plane = "x".join(map(str, cost.input_shape[1:]))
    if side_outputs:
        outputs = [("(output)", "sides, then fused", f"{model.outputs}x{plane}")]
    else:
        outputs = [("(output)", f"crop at {model.output_offset}", f"{model.num_classes}x{plane}")]
    lines += _layer_table(model, cost, all_layers, fields, outputs)
    lines += [""] + (_side_summary(model, cost, fields) if side_outputs else _summary(model, cost, fields))
    return "\n".join(lines)


def _describe_ssd(model: SSD, title: str, size: tuple[int, int], all_layers: bool) -> str:
    """The layers in the reference prototxt's order (trunk, extras, conv4_3_norm, heads), which is
    also the order they run in; then one line per source map with its priors."""
    cost = compute_cost(model, size)
    lines = [f"{title}: detection, {model.num_classes} classes, input {'x'.join(map(str, cost.input_shape))}"]
    fields = _ssd_fields(model)
    count = len(model.priors(size))
    outputs = [
        ("(loc)", "box offsets per prior", f"{count}x4"),
        ("(conf)", "class logits per prior", f"{count}x{model.num_classes}"),
    ]
    lines += ["", *_layer_table(model, cost, all_layers, fields, outputs), ""]
    return "\n".join(lines + _ssd_summary(model, cost, fields))


def _ssd_fields(model: SSD) -> dict[str, tuple[int, int]]:
    """(stride, receptive field) of every layer of the trunk and extras, conv4_3_norm and the heads,
    from the geometry of the layers on each one's path from the input."""
    layers = [*model.backbone.named_children(), *model.extras.named_children()]
    fields = {
        name: (tap.stride, tap.field) for name, tap in SequentialTrunk(OrderedDict(layers)).taps.items()
    }
    names = [name for name, _ in layers]
    for source, reader in zip(model.sources, model.head_inputs, strict=True):
        fields[reader] = fields[source]  # conv4_3_norm scales each position: its geometry is conv4_3's
        path = layers[: names.index(source) + 1]
        for head in (f"{reader}_mbox_loc", f"{reader}_mbox_conf"):
            tap = SequentialTrunk(OrderedDict([*path, (head, model.heads[head])])).output
            fields[head] = (tap.stride, tap.field)
    return fields


def _ratio(value: float) -> str:
    return f"{value:g}" if value >= 1 else f"1/{1 / value:g}"


def _ssd_summary(model: SSD, cost: ComputeCost, fields: dict[str, tuple[int, int]]) -> list[str]:
    """One line per source map: its size (as the run gave it), stride and receptive field in input
    pixels, then its priors: their step (the spacing of their centres), sizes, aspect ratios and count."""
    shapes = {caffe_name(row.name): row.output_shape for row in cost.layers}
    header = (
        f"{'source':<14}{'map':>8}{'stride':>8}{'field':>7}{'step':>6}{'min':>7}{'max':>7}"
        f"  {'aspect ratios':<15}{'per location':>12}{'priors':>8}"
    )
    lines, total = [header, "-" * len(header)], 0
    for reader, layer, per_location in zip(
        model.head_inputs, model.prior_spec.layers, model.prior_spec.per_location, strict=True
    ):
        _, height, width = shapes[f"{reader}_mbox_loc"]
        stride, field = fields[reader]
        count = height * width * per_location
        total += count
        largest = "-" if layer.max_size is None else f"{layer.max_size:g}"
        ratios = ",".join(_ratio(r) for r in layer.ratios(model.prior_spec.flip))
        lines.append(
            f"{reader:<14}{f'{height}x{width}':>8}{stride:>8}{field:>7}{layer.step:>6g}{layer.min_size:>7g}"
            f"{largest:>7}  {ratios:<15}{per_location:>12}{count:>8,}"
        )
    return [
        *lines,
        f"priors            {total:,} (at (i + 0.5) * step: a min-sized box per aspect ratio, a sqrt(min*max) square)",
        *_totals(cost),
    ]


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
    model: FCN | HED | FSDS | SSD,
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
        *_totals(cost),
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
        *_totals(cost),
    ]
