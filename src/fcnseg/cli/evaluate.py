"""``fcnseg evaluate``: the paper's four metrics and per-class IU of saved weights on a data set, or a
detector's VOC mean average precision."""

from __future__ import annotations

import argparse
import json

from fcnseg.data.registry import DATASETS, open_dataset
from fcnseg.infer.predict import resolve_device
from fcnseg.metrics.segmentation import evaluate_confusion, format_metrics, scores
from fcnseg.models.ssd import SSD
from fcnseg.weights.load import load


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "evaluate",
        help="score saved weights on a labelled data set",
        description="Pixel accuracy, mean accuracy, mean IU and frequency-weighted IU (percent), "
        "and the IU of every class, of WEIGHTS on DATA; for a detector (ssd300), VOC mAP (VOC07 "
        "11-point and area under the curve, difficult boxes ignored) and the AP of every class.",
    )
    parser.add_argument("weights", help="an fcnseg checkpoint (.pt) or a Caffe model")
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
    parser.add_argument("--batch-size", type=int, default=1, help="images per forward pass (padded)")
    parser.add_argument("--device", help="cpu or cuda (default: cuda when available)")
    parser.add_argument("--json", action="store_true", help="print the metrics as JSON")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    dataset_name = args.dataset or ("synthetic" if args.data == "synthetic" else "folder")
    model = load(args.weights)
    if isinstance(model, SSD):
        return _run_detection(args, model, dataset_name)
    dataset = open_dataset(
        dataset_name, args.data, args.split, num_images=args.images, num_classes=model.num_classes
    )
    if model.num_classes != dataset.num_classes:
        raise ValueError(
            f"{args.weights} predicts {model.num_classes} classes but {args.data} has {dataset.num_classes}"
        )
    device = resolve_device(args.device or "auto")
    confusion = evaluate_confusion(
        model.to(device), dataset, model.num_classes, batch_size=args.batch_size, device=device, progress=True
    )
    metrics = scores(confusion)
    class_names = list(model.meta.get("class_names") or dataset.class_names)
    if args.json:
        print(json.dumps({**metrics, "class_names": class_names}, indent=2))
    else:
        print(f"{args.weights} on {args.data} ({len(dataset)} images)")
        print(format_metrics(metrics, class_names))
    return 0


def _run_detection(args: argparse.Namespace, model: SSD, dataset_name: str) -> int:
    from fcnseg.data.detection import DEFAULT_DETECTION_SPLITS, voc_detection_split
    from fcnseg.data.synthetic import SyntheticDetection
    from fcnseg.tasks.detection import DetectionTask, evaluate_detector

    if dataset_name == "synthetic":
        dataset = SyntheticDetection(args.images, seed=1)  # the training runs' validation images
    elif dataset_name == "voc":
        dataset = voc_detection_split(args.split or DEFAULT_DETECTION_SPLITS[1], args.data)
    else:
        raise ValueError(f"a detector is evaluated on --dataset synthetic or voc, not {dataset_name}")
    if model.num_classes != dataset.num_classes:
        raise ValueError(
            f"{args.weights} detects {model.num_classes - 1} classes but {args.data} has {dataset.num_classes - 1}"
        )
    model.to(resolve_device(args.device or "auto"))
    metrics = evaluate_detector(model, dataset, args.batch_size, progress=True)
    if args.json:
        print(json.dumps({**metrics, "class_names": list(dataset.class_names)}, indent=2))
    else:
        print(f"{args.weights} on {args.data} ({len(dataset)} images)")
        print(DetectionTask().summary(metrics, model))
    return 0
