"""``fcnseg evaluate``: the paper's four metrics and per-class IU of saved weights on a data set."""

from __future__ import annotations

import argparse
import json

from fcnseg.data.registry import DATASETS, open_dataset
from fcnseg.infer import crf
from fcnseg.infer.predict import resolve_device
from fcnseg.metrics.segmentation import evaluate_confusion, format_metrics, scores
from fcnseg.weights.load import load


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "evaluate",
        help="score saved weights on a labelled data set",
        description="Pixel accuracy, mean accuracy, mean IU and frequency-weighted IU (percent), "
        "and the IU of every class, of WEIGHTS on DATA.",
    )
    parser.add_argument("weights", help="an fcnseg checkpoint (.pt) or a Caffe model")
    parser.add_argument(
        "data",
        help="a folder (images/ and masks/), the root of --dataset, or 'synthetic' for the held-out synthetic set",
    )
    parser.add_argument("--dataset", choices=DATASETS, help="data set kind (default: folder, or synthetic)")
    parser.add_argument("--split", help="split of --dataset (default: the paper's validation split)")
    parser.add_argument("--images", type=int, default=100, help="synthetic only: how many images")
    parser.add_argument("--batch-size", type=int, default=1, help="images per forward pass (padded)")
    parser.add_argument("--device", help="cpu or cuda (default: cuda when available)")
    parser.add_argument(
        "--crf",
        action="store_true",
        help=f"score the labels after a dense CRF (DeepLab's VOC parameters; needs pip install '{crf.EXTRA}')",
    )
    parser.add_argument("--json", action="store_true", help="print the metrics as JSON")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    if args.crf:
        crf.require()
    dataset_name = args.dataset or ("synthetic" if args.data == "synthetic" else "folder")
    model = load(args.weights)
    if getattr(model, "heads", None):
        raise ValueError(
            f"{args.weights} has {len(model.heads)} heads: its training run's log.csv scores each"
        )
    dataset = open_dataset(
        dataset_name, args.data, args.split, num_images=args.images, num_classes=model.num_classes
    )
    if model.num_classes != dataset.num_classes:
        raise ValueError(
            f"{args.weights} predicts {model.num_classes} classes but {args.data} has {dataset.num_classes}"
        )
    device = resolve_device(args.device or "auto")
    confusion = evaluate_confusion(
        model.to(device),
        dataset,
        model.num_classes,
        batch_size=args.batch_size,
        device=device,
        progress=True,
        crf=crf.CRFSettings() if args.crf else None,
    )
    metrics = scores(confusion)
    class_names = list(model.meta.get("class_names") or dataset.class_names)
    if args.json:
        print(json.dumps({**metrics, "class_names": class_names}, indent=2))
    else:
        print(f"{args.weights} on {args.data} ({len(dataset)} images{', dense CRF' if args.crf else ''})")
        print(format_metrics(metrics, class_names))
    return 0
