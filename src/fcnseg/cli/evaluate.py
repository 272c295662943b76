"""``fcnseg evaluate``: the paper's four metrics and per-class IU of saved weights on a data set (of each
head for SIFT Flow's two-headed nets); for edge and skeleton nets (HED, FSDS) the benchmark's ODS, OIS
and AP; for a detector VOC mean average precision."""

from __future__ import annotations

import argparse
import json

from fcnseg.cli.options import (
    add_device,
    add_inference,
    add_threads,
    add_weights,
    inference_options,
    positive,
    set_threads,
)
from fcnseg.data.registry import DATASETS
from fcnseg.devices import resolve_device
from fcnseg.distributed import Context
from fcnseg.infer import crf
from fcnseg.infer.edge_outputs import EDGE_OUTPUTS
from fcnseg.logs import show_bars
from fcnseg.tasks import task_of
from fcnseg.weights.load import load


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "evaluate",
        help="score saved weights on a labelled data set",
        description="Pixel accuracy, mean accuracy, mean IU and frequency-weighted IU (percent), "
        "and the IU of every class, of WEIGHTS on DATA (for a two-headed SIFT Flow net, of each head: "
        "semantic and geometric, --dataset siftflow); for an edge (HED) or skeleton (FSDS) net, "
        "ODS, OIS and AP as the BSDS benchmark computes them (--dataset bsds500, sk-large, sk506); "
        "for a detector (ssd300, ssd512), VOC mAP (VOC07 11-point and area under the curve, difficult boxes "
        "ignored) and the AP of every class.",
    )
    add_weights(parser)
    parser.add_argument(
        "data",
        help="a folder (images/ and masks/), the root of --dataset, or 'synthetic' for the held-out synthetic set",
    )
    parser.add_argument("--dataset", choices=DATASETS, help="data set kind (default: folder, or synthetic)")
    parser.add_argument(
        "--split",
        help="split of --dataset (default: the paper's validation split; detection on voc: 2007-test)",
    )
    parser.add_argument("--images", type=int, default=100, help="synthetic only: how many images")
    parser.add_argument("--batch-size", type=positive, default=1, help="images per forward pass (padded)")
    add_device(parser)
    add_inference(parser)
    add_threads(parser)
    parser.add_argument(
        "--crf",
        action="store_true",
        help=f"score the labels after a dense CRF (DeepLab's VOC parameters; needs pip install '{crf.EXTRA}')",
    )
    parser.add_argument(
        "--edge-output",
        choices=EDGE_OUTPUTS,
        default="fuse",
        help="HED: the map to score; fuse: the fused output (default); merge: the mean of the fused and "
        "side-mean maps, each thinned first, as the reference's merge_res.m (the paper's best)",
    )
    parser.add_argument("--json", action="store_true", help="print the metrics as JSON")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    set_threads(args.threads)
    device = resolve_device(args.device)
    dataset_name = args.dataset or ("synthetic" if args.data == "synthetic" else "folder")
    model = load(args.weights)
    task = task_of(model)
    options = inference_options(args, crf=args.crf, batch_size=args.batch_size, edge_output=args.edge_output)
    task.check_options(model, options, args.weights)
    dataset = task.evaluation_set(model, dataset_name, args.data, args.split, args.images, args.weights)
    metrics = task.measure(
        model.to(device), dataset, options, Context(device=device), show_bars(not args.quiet)
    )
    if args.json:
        names = task.class_names(model, dataset)
        print(json.dumps({**metrics, **({"class_names": names} if names else {})}, indent=2))
    else:
        print(
            f"{args.weights} ({task.name}) on {args.data} ({len(dataset)} images{', dense CRF' if args.crf else ''})"
        )
        print(task.summary(metrics, model, dataset))
    return 0
