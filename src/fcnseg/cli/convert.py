"""``fcnseg convert``: weights from other frameworks into an fcnseg checkpoint."""

from __future__ import annotations

import argparse
from pathlib import Path

from fcnseg.data.voc import VOC_CLASSES
from fcnseg.models.heads import MultiHeadFCN
from fcnseg.models.registry import ARCHITECTURES, BUILDERS
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
    imagenet.add_argument("--arch", choices=sorted(ARCHITECTURES), required=True, help="the FCN to build")
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


def _save(model, args: argparse.Namespace) -> int:
    names = _read_class_names(args.classes, model.num_classes)
    if names is None and model.task == "segmentation" and model.num_classes == len(VOC_CLASSES):
        names = list(VOC_CLASSES)
    if names is not None:
        model.meta["class_names"] = names
    if args.out.resolve() == args.weights.resolve():
        raise ValueError(f"--out {args.out} would overwrite the input")
    save_checkpoint(model, args.out)
    widths = ",".join(map(str, model.config["widths"]))
    classified = model.task in ("segmentation", "siftflow", "detection")
    predicts = f"{model.num_classes} classes" if classified else model.task
    if isinstance(model, MultiHeadFCN):
        predicts += f" (heads {'+'.join(map(str, model.heads))})"
    print(
        f"{args.weights} -> {args.out}: {model.config['arch']}, {predicts}, "
        f"widths {widths}, preprocess {model.meta['preprocess']}, "
        f"{sum(p.numel() for p in model.parameters()):,} parameters"
    )
    return 0


def run_caffe(args: argparse.Namespace) -> int:
    return _save(load_caffe(args.weights, args.arch), args)


def run_imagenet(args: argparse.Namespace) -> int:
    return _save(fcn_from_imagenet(args.arch, args.weights, args.num_classes), args)
