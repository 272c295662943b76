"""``fcnseg export``: a checkpoint as an ONNX or TorchScript file with dynamic batch, height and width."""

from __future__ import annotations

import argparse
from pathlib import Path

from fcnseg.accel.quantize import calibration_of
from fcnseg.cli.options import add_threads, add_weights, parse_size, set_threads
from fcnseg.infer.export import export_onnx, export_runtime_onnx, export_torchscript
from fcnseg.weights.load import load, segmentation_only


def run(args: argparse.Namespace) -> int:
    set_threads(args.threads)
    weights, out = Path(args.weights), Path(args.out)
    if out.resolve() == weights.resolve():
        raise ValueError(f"--out {out} is the weights file itself; choose another path")
    model = segmentation_only(load(weights), weights, "export")
    if (args.int8 or args.size) and args.format != "onnx":
        raise ValueError("--int8 and --size export ONNX: give the format onnx")
    if args.int8 and not args.calibration:
        raise ValueError("--int8 needs --calibration DIR: a few images like the ones to segment")
    if args.calibration and not args.int8:
        raise ValueError("--calibration calibrates --int8: give both")
    if args.int8 or args.size:
        calibration = calibration_of(model, args.calibration)  # None without --int8 (refused above)
        export_runtime_onnx(model, out, size=args.size, calibration=calibration)
        what = f"onnx, {'int8' if args.int8 else 'fp32'}, " + (
            f"trimmed for {args.size[0]}x{args.size[1]}" if args.size else "any size"
        )
    elif args.format == "onnx":
        export_onnx(model, out, dynamo=False if args.legacy else None, opset=args.opset)
        what = "onnx"
    else:
        export_torchscript(model, out)
        what = "torchscript"
    print(f"wrote {out} ({what}, {out.stat().st_size / 2**20:.1f} MiB)")
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
    parser.add_argument(
        "--int8",
        action="store_true",
        help="ONNX in int8 (QDQ: onnxruntime and OpenVINO run it in integers), the trunk calibrated "
        "on --calibration",
    )
    parser.add_argument(
        "--calibration", metavar="DIR", help="--int8: a folder of a few images like the ones to segment"
    )
    parser.add_argument(
        "--size",
        type=parse_size,
        default=None,
        help="HxW, e.g. 500x500: the trimmed graph for inputs of that size only (faster: it skips "
        "the work the padded net spends on its padding); default: the padded net, any size",
    )
    add_threads(parser)
    parser.set_defaults(run=run)
