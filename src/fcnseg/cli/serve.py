"""``fcnseg serve``: a local web page to try a model on your images, and the HTTP API under it."""

from __future__ import annotations

import argparse
import ipaddress
import sys
from pathlib import Path

from fcnseg.cli.options import (
    add_device,
    add_inference,
    add_max_megapixels,
    add_threads,
    add_weights,
    inference_options,
    positive,
    positive_float,
    set_threads,
)
from fcnseg.devices import resolve_device
from fcnseg.serve import MAX_QUEUE, TIMEOUT
from fcnseg.weights.load import load


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def run(args: argparse.Namespace) -> int:
    from fcnseg.serve import app as web  # needs the serve extra: say so before loading anything

    set_threads(args.threads)
    device = resolve_device(args.device)
    # A taken port fails before a model is loaded (or downloaded).
    with web.listen(args.host, args.port) as sock:
        model = load(args.weights).to(device)
        predictor = web.Predictor(
            model, Path(args.weights).name, max_pixels=args.max_megapixels, options=inference_options(args)
        )
        classes = f", {model.num_classes} classes" if predictor.info()["classes"] else ""
        print(
            f"fcnseg serve: {args.weights} ({model.config['arch']}, {predictor.task.name}{classes}) "
            f"at {web.url_of(sock)}  (Ctrl-C to stop)",
            flush=True,
        )
        if not _is_loopback(args.host):
            print(f"fcnseg serve: listening on {args.host}: other machines can reach it", file=sys.stderr)
        app = web.create_app(predictor, round(args.max_upload_mb * web.MB), args.max_queue, args.timeout)
        web.serve(app, sock)
    return 0


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "serve",
        help="a local web page to try a model on your images",
        description=(
            "Serve a page on which to drop an image (or pick a built-in sample) and see what the model "
            "makes of it, by its task: a segmentation net's label map, an overlay and each class's share "
            "of the pixels; an edge (HED) or skeleton (FSDS) net's map in grey and over the image; a "
            "detector's boxes with their classes and scores, and how many of each class; and the forward "
            "time. The HTTP API under it: GET /info (the model, its task, classes and preprocessing as "
            "JSON), POST /predict (a multipart field 'image' -> JSON; ?format=png for the task's picture), "
            "POST /segment (segmentation nets: a palette PNG label map), GET /health. Every refusal is "
            "JSON with an error message and a 4xx status, or 503 with Retry-After when the server is "
            "busy. Needs the serve extra: pip install 'fcnseg[serve]'."
        ),
    )
    add_weights(parser)
    parser.add_argument(
        "--host", default="127.0.0.1", help="address to listen on; 0.0.0.0 lets other machines in"
    )
    parser.add_argument("--port", type=int, default=8000, help="port to listen on; 0 picks a free one")
    parser.add_argument(
        "--max-upload-mb", type=positive_float, default=50, help="larger uploads are refused (HTTP 413)"
    )
    add_max_megapixels(parser, "refused from their header, before decoding (HTTP 413)")
    parser.add_argument(
        "--max-queue",
        type=positive,
        default=MAX_QUEUE,
        help="uploads taken in at once (read, waiting for the model, or running); more get HTTP 503 "
        "with Retry-After, and memory stays under this many uploads",
    )
    parser.add_argument(
        "--timeout",
        type=positive_float,
        default=TIMEOUT,
        help="seconds an upload may take to arrive (else HTTP 408) and then to reach the model "
        "(else HTTP 503); a forward pass that has begun runs to its end",
    )
    add_device(parser)
    add_inference(parser)
    add_threads(parser)
    parser.set_defaults(run=run)
