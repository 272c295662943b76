"""``fcnseg evaluate``: the paper's four metrics and per-class IU of saved weights on a data set (of each
head for SIFT Flow's two-headed nets); for edge and skeleton nets (HED, FSDS) the benchmark's ODS, OIS
and AP; for a detector VOC mean average precision."""

from __future__ import annotations

import argparse
import json
from functools import partial

import torch

from fcnseg.data.preprocess import preprocessing_of
from fcnseg.data.registry import DATASETS, DEFAULT_SPLITS, open_dataset
from fcnseg.distributed import Context
from fcnseg.infer import crf
from fcnseg.infer.edge_outputs import EDGE_OUTPUTS
from fcnseg.infer.predict import resolve_device
from fcnseg.metrics.segmentation import evaluate_confusion, format_metrics, scores
from fcnseg.models.ssd import SSD
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
    parser.add_argument(
        "--crf",
        action="store_true",
        help=f"score the labels after a dense CRF (DeepLab's VOC parameters; needs pip install '{crf.EXTRA}')",
    )
    parser.add_argument(
        "--edge-output",
        choices=EDGE_OUTPUTS,
        help="HED: the map to score; fuse: the fused output (default); merge: the mean of the fused and "
        "side-mean maps, each thinned first, as the reference's merge_res.m (the paper's best)",
    )
    parser.add_argument("--json", action="store_true", help="print the metrics as JSON")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    dataset_name = args.dataset or ("synthetic" if args.data == "synthetic" else "folder")
    model = load(args.weights)
    if args.crf and model.task != "segmentation":
        raise ValueError(
            f"--crf: only for segmentation nets of one output; {args.weights} is a net of the {model.task} task"
        )
    if args.crf:
        crf.require()
    if args.edge_output is not None and model.config.get("arch") != "hed":
        raise ValueError(
            f"--edge-output: only for HED nets (its fused and side outputs); {args.weights} is not one"
        )
    if isinstance(model, SSD):
        return _run_detection(args, model, dataset_name)
    if model.task != "segmentation":
        return _run_task(args, model, dataset_name)
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


def _run_task(args: argparse.Namespace, model: torch.nn.Module, dataset_name: str) -> int:
    """Score a net of another task (the one it was made for: edges, skeletons, SIFT Flow's two heads) on
    that task's validation split."""
    from fcnseg.tasks import get_task  # the tasks know the training settings; segmentation needs neither
    from fcnseg.train.config import TrainConfig

    task = get_task(model.task)
    synthetic = dataset_name == "synthetic"
    config = TrainConfig(
        task=model.task,
        arch=model.config["arch"],
        dataset=dataset_name,
        data=None if synthetic else args.data,
        val_split=args.split,
        val_images=args.images,
        train_images=0,
        init=None,
        preprocess=preprocessing_of(model),
        val_batch_size=args.batch_size,
        edge_output=args.edge_output or "fuse",
    )
    if synthetic:
        _, dataset = task.datasets(config)
    elif dataset_name not in getattr(task, "datasets_known", ()):
        known = ", ".join(getattr(task, "datasets_known", ()))
        raise ValueError(
            f"{args.weights} is a net of the {model.task} task: give --dataset, one of {known}, not {dataset_name}"
        )
    else:  # the split alone: the training split need not be there
        open_split = getattr(task, "open_split", partial(open_dataset, dataset_name))
        dataset = open_split(args.data, args.split or DEFAULT_SPLITS[dataset_name][1])
    device = resolve_device(args.device or "auto")
    metrics = task.evaluate(model.to(device), dataset, config, Context(device=device), progress=True)
    if args.json:
        print(json.dumps(metrics, indent=2))
    else:
        print(f"{args.weights} ({model.task}) on {args.data} ({len(dataset)} images)")
        print(task.summary(metrics, model))
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
