"""``fcnseg export``: a checkpoint as an ONNX or TorchScript file with dynamic batch, height and width."""

from __future__ import annotations

import argparse
from pathlib import Path

from fcnseg.cli.options import add_threads, add_weights, set_threads
from fcnseg.infer.export import export_onnx, export_torchscript
from fcnseg.weights.load import load, segmentation_only


def run(args: argparse.Namespace) -> int:
    set_threads(args.threads)
    weights, out = Path(args.weights), Path(args.out)
    if out.resolve() == weights.resolve():
        raise ValueError(f"--out {out} is the weights file itself; choose another path")
    model = segmentation_only(load(weights), weights, "export")
    if args.format == "onnx":
        export_onnx(model, out, dynamo=False if args.legacy else None, opset=args.opset)
    else:
        export_torchscript(model, out)
    print(f"wrote {out} ({args.format}, {out.stat().st_size / 2**20:.1f} MiB)")
    return 0


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "export",
        help="export a model to ONNX or TorchScript",
        description=(
            "Export a checkpoint: input 'image' (N, 3, H, W), preprocessed as the model's metadata "
            "says, to output 'scores' (N, C, H, W), for any N, H, W. ONNX files carry class names "
            "and preprocessing in their metadata_props, TorchScript files in meta.json."
        ),
    )
    parser.add_argument("format", choices=("onnx", "torchscript"), help="onnx needs the export extra")
    add_weights(parser)
    parser.add_argument("--out", required=True, help="file to write, e.g. model.onnx or model.pt")
    parser.add_argument("--opset", type=int, default=None, help="ONNX opset (default: the exporter's)")
    parser.add_argument(
        "--legacy",
        action="store_true",
        help="ONNX: use the TorchScript-based exporter even when onnxscript is installed",
    )
    add_threads(parser)
    parser.set_defaults(run=run)
