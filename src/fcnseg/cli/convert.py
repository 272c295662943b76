"""``fcnseg convert``: weights from other frameworks into an fcnseg checkpoint."""

from __future__ import annotations

import argparse
from pathlib import Path

from torch import nn

from fcnseg.models.registry import BUILDERS, SEGMENTATION_NETS
from fcnseg.tasks import task_of
from fcnseg.weights.caffe import load_caffe
from fcnseg.weights.checkpoint import save_checkpoint
from fcnseg.weights.imagenet import fcn_from_imagenet


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("convert", help="convert Caffe or torchvision weights to a checkpoint")
    sources = parser.add_subparsers(dest="source", required=True, metavar="SOURCE")
    caffe = sources.add_parser("caffe", help="an original Caffe FCN, HED, FSDS or SSD model (.caffemodel)")
    caffe.add_argument("weights", type=Path, help="the .caffemodel file")
    caffe.add_argument(
        "--arch", choices=sorted(BUILDERS), help="expected net (read from the file if left out)"
    )
    caffe.add_argument("--out", type=Path, required=True, help="checkpoint to write (.pt)")
    caffe.add_argument("--classes", type=Path, help="text file with one class name per line")
    caffe.set_defaults(run=run_caffe)
    imagenet = sources.add_parser(
        "imagenet", help="an ImageNet classifier (torchvision .pth or Caffe .caffemodel) as FCN backbone"
    )
    imagenet.add_argument("weights", type=Path, help="the classifier's weights (.pth or .caffemodel)")
    imagenet.add_argument("--arch", choices=sorted(SEGMENTATION_NETS), required=True, help="the FCN to build")
    imagenet.add_argument("--num-classes", type=int, default=21, help="classes of the new score layers")
    imagenet.add_argument("--out", type=Path, required=True, help="checkpoint to write (.pt)")
    imagenet.add_argument("--classes", type=Path, help="text file with one class name per line")
    imagenet.set_defaults(run=run_imagenet)


def _read_class_names(path: Path | None, num_classes: int) -> list[str] | None:
    if path is None:
        return None
    names = [line.strip() for line in path.read_text().splitlines() if line.strip()]
    if len(names) != num_classes:
        raise ValueError(f"{path} lists {len(names)} class names; the model has {num_classes} classes")
    return names


def _save(model: nn.Module, args: argparse.Namespace) -> int:
    task = task_of(model)
    names = _read_class_names(args.classes, model.num_classes) or task.default_class_names(model)
    if names is not None:
        model.meta["class_names"] = names
    if args.out.resolve() == args.weights.resolve():
        raise ValueError(f"--out {args.out} would overwrite the input")
    save_checkpoint(model, args.out)
    widths = ",".join(map(str, model.config["widths"] or ())) or "the architecture's own"
    print(
        f"{args.weights} -> {args.out}: {model.config['arch']}, {task.predicts(model)}, "
        f"widths {widths}, preprocess {model.meta['preprocess']}, "
        f"{sum(p.numel() for p in model.parameters()):,} parameters"
    )
    return 0


def run_caffe(args: argparse.Namespace) -> int:
    return _save(load_caffe(args.weights, args.arch), args)


def run_imagenet(args: argparse.Namespace) -> int:
    return _save(fcn_from_imagenet(args.arch, args.weights, args.num_classes), args)
