"""``fcnseg train``: run a recipe file or flags, on one process or under ``torchrun``."""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path
from typing import Any

from fcnseg import distributed
from fcnseg.cli import shown_default
from fcnseg.cli.options import DEVICE_HELP, add_threads, device_name, integers, set_threads
from fcnseg.data.preprocess import PRESETS
from fcnseg.data.registry import DATASETS, MODALITY_CHANNELS
from fcnseg.errors import ConfigError
from fcnseg.tasks import TASKS
from fcnseg.tasks.losses import REDUCTIONS
from fcnseg.train.config import RECIPES, TrainConfig, load_recipe, parse_every
from fcnseg.train.run_folder import RunFolder
from fcnseg.train.trainer import Trainer, TrainingInterrupted


def _every(text: str) -> float | str:
    try:
        return parse_every(text)
    except ConfigError as error:
        raise argparse.ArgumentTypeError(str(error).removeprefix("checkpoint_every ")) from None


# Flags that map one to one onto TrainConfig fields (dest == field name).
_FLAGS: list[tuple[str, dict[str, Any]]] = [
    ("--task", {"choices": tuple(TASKS), "help": "what to train"}),
    (
        "--arch",
        {
            "help": "fcn32s, fcn32s-fixed, fcn16s, fcn8s, fcn8s-atonce, fcn-alexnet, fcn32s-googlenet, "
            "fcn32s-late-fusion (NYUD colour + HHA); fcn32s/16s/8s-resnet18/34/50/101, "
            "tv-fcn-resnet50/101 (torchvision's); hed, fsds; ssd300, ssd512 "
            "(default: the task's: fcn8s; hed for --task edges, fsds for skeleton, ssd300 for detection)"
        },
    ),
    (
        "--widths",
        {"type": integers, "help": "narrow trunk: VGG16 c1,c2,c3,c4,c5,fc; ResNet layer1..layer4 planes"},
    ),
    (
        "--init",
        {
            "help": "checkpoint, torchvision state dict or published name to start from (imagenet, "
            "voc-fcn32s, ...); "
            "auto: ImageNet when it can be had, else from scratch; none: from scratch"
        },
    ),
    (
        "--weight-init",
        {
            "choices": ("default", "kaiming"),
            "help": "kaiming: He init of the backbone, for training from scratch",
        },
    ),
    (
        "--frozen-upsampling",
        {
            "choices": ("all", "final", "none"),
            "help": "which bilinear upsamplers stay fixed (all: the original nets; final: the paper's text)",
        },
    ),
    (
        "--dataset",
        {"choices": DATASETS, "help": "data set kind (default: folder with --data, else synthetic)"},
    ),
    ("--data", {"help": "data folder: images/ and masks/, or the root of --dataset"}),
    ("--val-data", {"help": "folder data set: a separate validation folder; hed-bsds: the BSDS500 folder"}),
    ("--val-fraction", {"type": float, "help": "folder data set: fraction held out for validation"}),
    (
        "--num-classes",
        {"type": int, "help": "folder data set without classes.txt (else counted in the masks)"},
    ),
    ("--train-split", {"help": "split to train on (default: the paper's)"}),
    (
        "--modality",
        {"choices": tuple(MODALITY_CHANNELS), "help": "NYUD input: rgb, hha, depth, rgbd or rgbhha"},
    ),
    (
        "--val-split",
        {
            "help": "split to validate on and pick best.pt by (default: the paper's); none: no validation, "
            "best.pt is the final snapshot"
        },
    ),
    ("--test-split", {"help": "split to report: scored once at the end on best.pt (test.json)"}),
    ("--test-data", {"help": "the test split's folder, where not --data's (HED: the BSDS500 folder)"}),
    ("--train-images", {"type": int, "help": "synthetic: number of training images"}),
    ("--val-images", {"type": int, "help": "synthetic: number of validation images"}),
    ("--image-size", {"type": int, "nargs": 2, "metavar": ("MIN", "MAX"), "help": "synthetic: side range"}),
    (
        "--preprocess",
        {
            "choices": ("auto", *PRESETS),
            "help": "input preprocessing (auto: the initial weights')",
        },
    ),
    ("--flip", {"action": "store_const", "const": True, "help": "random horizontal flips"}),
    ("--scale-range", {"type": float, "nargs": 2, "metavar": ("MIN", "MAX"), "help": "random rescaling"}),
    ("--crop", {"type": int, "help": "random crops of this side, padded with the ignore label"}),
    (
        "--loss",
        {
            "choices": REDUCTIONS,
            "help": "sum: the paper's unnormalised loss; mean: per pixel; image-mean: per pixel in each "
            "image, then over the images",
        },
    ),
    ("--class-balance", {"action": "store_const", "const": True, "help": "median-frequency class weights"}),
    ("--class-balance-power", {"type": float, "help": "class weights to this power (0.5: gentler balance)"}),
    (
        "--loss-keep-prob",
        {"type": float, "help": "loss sampling: keep each pixel's term with this probability"},
    ),
    ("--loss-sampling", {"choices": ("image", "batch"), "help": "one sampling mask per image or per batch"}),
    (
        "--loss-sampling-cell",
        {"type": int, "help": "sample square cells of this side (32: final-layer cells)"},
    ),
    ("--optimizer", {"choices": ("sgd", "adam")}),
    ("--lr", {"type": float, "help": "learning rate (paper: 1e-10 with the summed loss)"}),
    ("--momentum", {"type": float}),
    ("--weight-decay", {"type": float}),
    ("--lr-schedule", {"choices": ("fixed", "poly", "step", "multistep")}),
    ("--lr-step-size", {"type": int, "help": "step schedule: steps between lr drops"}),
    (
        "--lr-steps",
        {"type": integers, "help": "multistep: e.g. 80000,100000"},
    ),
    ("--lr-gamma", {"type": float, "help": "step and multistep schedules: factor of each lr drop"}),
    (
        "--batch-size",
        {"type": int, "help": "images per step; different sizes are padded with the ignore label"},
    ),
    ("--iter-size", {"type": int, "help": "batches whose mean gradient makes one step (Caffe's iter_size)"}),
    ("--epochs", {"type": int}),
    ("--max-steps", {"type": int, "help": "stop after this many steps"}),
    (
        "--time-limit",
        {"type": float, "help": "stop after this many seconds (a poly schedule anneals by time)"},
    ),
    (
        "--amp",
        {
            "choices": ("off", "bf16", "fp16"),
            "help": "mixed precision: bf16 on CUDA or the CPU (where it has no native bfloat16 it is "
            "emulated, and slower), fp16 on CUDA",
        },
    ),
    (
        "--channels-last",
        {
            "action": "store_const",
            "const": True,
            "help": "NHWC memory layout: faster steps for narrow nets on CPU (measure yours)",
        },
    ),
    (
        "--no-accel",
        {
            "dest": "accel",
            "action": "store_const",
            "const": False,
            "help": "run model(x) as written; by default the exact, faster wrappers of fcnseg.accel run it",
        },
    ),
    ("--seed", {"type": int}),
    ("--val-every", {"type": int, "help": "steps between validations and checkpoints; 0: once per epoch"}),
    (
        "--checkpoint-every",
        {
            "type": _every,
            "metavar": "EVERY",
            "help": "how often last.pt is also saved between validations: seconds (600, 10min, 1.5h) or "
            "steps (50steps); 0: only at validations",
        },
    ),
    ("--val-batch-size", {"type": int}),
    ("--workers", {"type": int, "help": "DataLoader worker processes"}),
    ("--device", {"type": device_name, "help": DEVICE_HELP}),
    (
        "--out",
        {"help": "run folder: config.toml, last.pt, best.pt, log.csv, steps.csv, curves.png, test.json"},
    ),
    (
        "--tensorboard",
        {
            "action": "store_const",
            "const": True,
            "help": "TensorBoard event files in the run folder: the loss and lr of every step, the metrics "
            "and a few pictures of predictions at every validation (pip install 'fcnseg[tensorboard]')",
        },
    ),
]


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "train",
        help="train an FCN (or HED, FSDS, SSD) from a recipe file or flags",
        description="Train an FCN. Settings come from the defaults, then --recipe, then --config, "
        "then flags. Under torchrun every process trains its share; rank 0 writes.",
    )
    parser.add_argument(
        "--config", type=Path, help="a recipe file (TOML), or a run's config.toml to run its settings again"
    )
    parser.add_argument(
        "--recipe",
        choices=tuple(RECIPES),
        help="named starting point for the settings (paper: the original solver, summed loss at lr 1e-10)",
    )
    parser.add_argument(
        "--resume", action="store_true", help="continue the run in --out from its last.pt, with its settings"
    )
    parser.add_argument(
        "--quiet",
        action="store_true",
        help="no progress bars; status lines, warnings and errors still show",
    )
    add_threads(parser)
    defaults = {f.name: f.default for f in dataclasses.fields(TrainConfig)}
    for flag, options in _FLAGS:
        # default=None: a flag left out lets the recipe decide; the help shows TrainConfig's default
        parser.add_argument(
            flag,
            default=None,
            **_with_default(options, defaults[options.get("dest", flag[2:].replace("-", "_"))]),
        )
    parser.set_defaults(run=run)


def _with_default(options: dict[str, Any], default: Any) -> dict[str, Any]:
    """``options`` with TrainConfig's default for the flag at the end of its help."""
    text = options.get("help", "")
    if default is None or default is dataclasses.MISSING or "default" in text:
        return options
    shown = shown_default(default, options.get("nargs")).replace("%", "%%")
    return {**options, "help": f"{text} (default: {shown})".lstrip()}


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """Defaults, then the saved run (``--resume`` of a run that has ``last.pt``) or ``--config``, then
    the flags given. ``--resume`` of a run killed before its first checkpoint starts it afresh, from
    ``--config`` and the flags, so that a supervisor can always restart with ``--resume``."""
    values: dict[str, Any] = {}
    recipe = load_recipe(args.config) if args.config else {}
    if args.resume:
        out = args.out or recipe.get("out")
        if not out:
            raise ValueError("--resume needs --out (or a --config naming out): the run folder to continue")
        folder = RunFolder(out)
        values.update(folder.read_last()["train_config"] if folder.last.exists() else recipe)
    else:
        values.update(recipe)
    if args.recipe:
        values["recipe"] = args.recipe
    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    flags = {name: value for name, value in vars(args).items() if name in fields and value is not None}
    values.update(flags)
    values["progress"] = not args.quiet  # this invocation's choice, also on --resume
    return TrainConfig.from_dict(values)


def run(args: argparse.Namespace) -> int:
    set_threads(args.threads)
    config = config_from_args(args)
    context = distributed.init_from_env(config.device)
    try:
        trainer = Trainer(config, context=context)
        result = trainer.fit(resume=args.resume)
    except TrainingInterrupted as stopped:
        if context.is_main:
            print(f"fcnseg train: {stopped}", file=sys.stderr)
        return 128 + stopped.signal_number
    finally:
        distributed.shutdown(context)
    if context.is_main:
        print(f"trained {config.arch} for {result.steps} steps; run folder {result.out}")
        if result.best_metrics:
            print(
                f"best validation (step {result.best_metrics['step']}), written to {result.out / 'best.pt'}:"
            )
            print(trainer.task.summary(result.best_metrics, result.model))
        if result.test_metrics:
            print(
                f"test split {config.test_split}, scored once on best.pt, written to {result.out / 'test.json'}:"
            )
            print(trainer.task.summary(result.test_metrics, result.model))
    return 0
