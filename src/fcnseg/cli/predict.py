"""``fcnseg predict``: run a net on files, folders and globs and write what its task writes: palette
PNGs, overlays and probabilities (a PNG per head for a net of several), edge or skeleton maps, or
boxes as JSON and drawn on the image."""

from __future__ import annotations

import argparse
import glob
import os
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from torch import nn
from tqdm import tqdm

from fcnseg.cli.options import (
    add_device,
    add_inference,
    add_max_megapixels,
    add_threads,
    add_weights,
    fraction,
    inference_options,
    positive,
    set_threads,
)
from fcnseg.data.images import image_files, read_image
from fcnseg.devices import resolve_device
from fcnseg.files import DISK_FULL, WriteError
from fcnseg.infer import crf
from fcnseg.infer.detect import MIN_SCORE
from fcnseg.infer.edge_outputs import EDGE_OUTPUTS
from fcnseg.infer.tiling import parse_memory
from fcnseg.tasks import Task, task_of
from fcnseg.tasks.common import InferenceOptions
from fcnseg.weights.load import load

MAX_PENDING_FACTOR = 2
"""Images waiting for a same-size batch are flushed beyond this many batches' worth."""


def collect_inputs(specs: Sequence[str]) -> tuple[list[Path], list[str]]:
    """Files named by ``specs`` (files, folders, globs), in order, each once; and the problems met.

    A folder contributes its image files (by suffix, hidden files skipped, not
    recursive). Missing paths, empty matches and unreadable folders are reported,
    not raised, so that the other inputs still run.
    """
    files: list[Path] = []
    problems: list[str] = []
    for spec in specs:
        path = Path(spec)
        if path.is_dir():
            try:
                found = image_files(path)
            except OSError as error:
                problems.append(f"{path}: cannot read folder ({error.strerror or error})")
                continue
            if not found:
                problems.append(f"{path}: folder holds no image files")
            files += found
        elif path.exists():
            files.append(path)
        elif glob.has_magic(spec):
            matches = sorted(Path(p) for p in glob.glob(spec) if Path(p).is_file())
            if not matches:
                problems.append(f"{spec}: no file matches")
            files += matches
        else:
            problems.append(f"{spec}: no such file or folder")
    unique = list({p.resolve(): p for p in reversed(files)}.values())[::-1]
    return unique, problems


def output_stems(files: Sequence[Path], suffixes: Sequence[str]) -> list[str]:
    """A distinct output stem per input, so that no two inputs write the same file.

    The stem is the file's own unless another input shares it (case-insensitively):
    then it is the path from the clashing files' common folder joined by ``__``
    (``a/x.jpg``, ``b/x.jpg`` -> ``a__x``, ``b__x``), with the extension added when
    only that differs (``x_jpg``, ``x_png``). ``suffixes`` are the endings each stem
    gets (``.png``, ``_overlay.jpg``...); a stem whose outputs are already taken
    gets ``-2``, ``-3``...
    """
    resolved = [f.resolve() for f in files]
    by_stem: dict[str, list[Path]] = defaultdict(list)
    for path in resolved:
        by_stem[path.stem.lower()].append(path)
    taken: set[str] = set()
    stems = []
    for path in resolved:
        clash = by_stem[path.stem.lower()]
        stem = path.stem
        if len(clash) > 1:
            root = Path(os.path.commonpath([p.parent for p in clash]))
            stem = "__".join(path.relative_to(root).with_suffix("").parts)
            if sum(p.with_suffix("") == path.with_suffix("") for p in clash) > 1:
                stem += "_" + path.suffix.lstrip(".").lower()
        candidate, n = stem, 1
        while any((candidate + s).lower() in taken for s in suffixes):
            n += 1
            candidate = f"{stem}-{n}"
        taken.update((candidate + s).lower() for s in suffixes)
        stems.append(candidate)
    return stems


def _options(args: argparse.Namespace) -> InferenceOptions:
    """What the flags ask of the net and of the files written."""
    return inference_options(
        args,
        overlay=args.overlay,
        overlay_format=args.overlay_format,
        overlay_alpha=args.overlay_alpha,
        min_score=args.min_score,
        probs=args.probs,
        probs_dtype=args.probs_dtype,
        tta_flip=args.tta_flip,
        tta_scales=args.tta_scales,
        crf=args.crf,
        max_memory=args.max_memory,
        batch_size=args.batch_size,
        edge_output=args.edge_output,
    )


def _check_out_is_no_input_folder(out: Path, specs: Sequence[str], files: Sequence[Path]) -> None:
    """Refuse to write label PNGs among the images (``x.png`` beside ``x.jpg`` spoils a data set)."""
    target = out.resolve()
    folders = [Path(s) for s in specs if Path(s).is_dir()] + [f.parent for f in files]
    clash = next((folder for folder in folders if folder.resolve() == target), None)
    if clash is not None:
        same = "" if str(out) == str(clash) else f" (both are {target})"
        raise ValueError(
            f"--out {out} is the input folder {clash}{same}: the outputs would mix with the images; "
            "choose another output folder"
        )


def _check_no_overwrite(inputs: Sequence[Path], weights: Path, outputs: Sequence[Path]) -> None:
    protected = {p.resolve() for p in inputs} | {weights.resolve()}
    clobbered = [str(p) for p in outputs if p.resolve() in protected]
    if clobbered:
        raise ValueError(
            f"--out {outputs[0].parent} would overwrite input file(s) {', '.join(clobbered[:5])}; "
            "choose another output folder"
        )


def _prepare_out(out: Path) -> None:
    """Create the output folder and prove it writable before any work is done."""
    try:
        out.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=out):
            pass
    except OSError as error:
        raise OSError(f"output folder {out} cannot be written ({error.strerror or error})") from None


def _describe(path: Path, error: BaseException) -> str:
    message = str(error)
    return message if str(path) in message else f"{path}: {message}"


class _DiskFull(Exception):
    """The output disk has no room left: ``error`` (which names the file), after ``done`` images."""

    def __init__(self, error: WriteError, done: int) -> None:
        super().__init__(str(error))
        self.error, self.done = error, done


def _predict(
    task: Task,
    model: nn.Module,
    options: InferenceOptions,
    files: Sequence[Path],
    stems: Sequence[str],
    out: Path,
    max_pixels: int | None,
    failures: list[str],
) -> int:
    """Read, batch by size, predict and write each image's files (the task's); returns how many
    images were written. A full disk stops it (:class:`_DiskFull`): every later image would fail
    the same way."""
    done = 0
    pending: dict[tuple[int, int], list[tuple[Path, str, np.ndarray]]] = defaultdict(list)
    bar = tqdm(total=len(files), unit="img", desc="fcnseg predict", disable=None)

    def predict_group(group: list[tuple[Path, str, np.ndarray]]) -> None:
        nonlocal done
        try:
            predictions = task.predict_images(model, np.stack([image for _, _, image in group]), options)
        except (ValueError, RuntimeError) as error:
            failures.extend(_describe(path, error) for path, _, _ in group)
            bar.update(len(group))
            return
        for (path, stem, image), prediction in zip(group, predictions, strict=True):
            try:
                task.write_prediction(model, out / stem, image, prediction, options)
                done += 1
            except WriteError as error:
                if error.errno in DISK_FULL:
                    raise _DiskFull(error, done) from error
                failures.append(_describe(path, error))
            except (ValueError, OSError) as error:
                failures.append(_describe(path, error))
            bar.update(1)

    try:
        for path, stem in zip(files, stems, strict=True):
            try:
                image = read_image(path, max_pixels=max_pixels)
            except (ValueError, OSError) as error:
                failures.append(_describe(path, error))
                bar.update(1)
                continue
            group = pending[image.shape[:2]]
            group.append((path, stem, image))
            if len(group) >= options.batch_size:
                predict_group(pending.pop(image.shape[:2]))
            elif sum(map(len, pending.values())) > MAX_PENDING_FACTOR * options.batch_size:
                predict_group(pending.pop(max(pending, key=lambda size: len(pending[size]))))
        for size in list(pending):
            predict_group(pending.pop(size))
    finally:
        bar.close()
    return done


def run(args: argparse.Namespace) -> int:
    set_threads(args.threads)
    device = resolve_device(args.device)
    weights, out = Path(args.weights), Path(args.out)
    files, failures = collect_inputs(args.inputs)
    model = load(weights)
    task, options = task_of(model), _options(args)
    task.check_prediction(model, options, str(weights))
    suffixes = task.prediction_suffixes(model, options)
    stems = output_stems(files, suffixes)
    _check_out_is_no_input_folder(out, args.inputs, files)
    _check_no_overwrite(files, weights, [out / (s + x) for s in stems for x in suffixes])
    _prepare_out(out)
    model.to(device)
    start = time.perf_counter()
    try:
        done = (
            _predict(task, model, options, files, stems, out, args.max_megapixels, failures) if files else 0
        )
    except _DiskFull as full:
        _report(full.done, files, out, start, failures, task.predicted(model))
        raise OSError(
            f"{full.error}: stopped after {full.done} of {len(files)} images; what is in {out} is whole "
            "(each file is written completely or not at all): make room and run again for the rest"
        ) from full.error
    return _report(done, files, out, start, failures, task.predicted(model))


def _report(done: int, files: Sequence[Path], out: Path, start: float, failures: list[str], verb: str) -> int:
    seconds = time.perf_counter() - start
    print(f"{verb} {done} of {len(files)} images into {out} in {seconds:.1f} s")
    if failures:
        print(f"fcnseg predict: {len(failures)} input(s) failed:", file=sys.stderr)
        for line in failures:
            print(f"  {line}", file=sys.stderr)
        return 1
    return 0


def _scales(text: str) -> tuple[float, ...]:
    try:
        scales = tuple(float(s) for s in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected numbers like 0.75,1,1.25, got {text!r}") from None
    if any(s <= 0 for s in scales):
        raise argparse.ArgumentTypeError(f"scales must be positive, got {text!r}")
    return scales


def _memory(text: str) -> int:
    try:
        return parse_memory(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "predict",
        help="segment images (or draw edge or skeleton maps, or find boxes) with a trained model",
        description=(
            "Segment images: for each input write <stem>.png, a palette PNG of class ids in the "
            "PASCAL colours, into --out. Images of one size are batched together; larger images "
            "than --max-memory allows are segmented in overlapping, blended tiles. With an edge (HED) "
            "or skeleton (FSDS) net, <stem>.png is the map in grey (white: sure) and --overlay draws it "
            "in red over the image. With a net of two heads (SIFT Flow's), <stem>.png is the first "
            "head's labels (semantic) and <stem>_<head>.png each other's (<stem>_geometric.png). With a "
            "detector (ssd300, ssd512) write <stem>.json, every box with its class and score, and <stem>_boxes.jpg."
        ),
    )
    add_weights(parser)
    parser.add_argument("inputs", nargs="+", help="image files, folders (not recursive) or quoted globs")
    parser.add_argument(
        "--out",
        required=True,
        help="output folder (created if missing; refused if it is an input folder or an output would "
        "overwrite an input)",
    )
    parser.add_argument(
        "--overlay", action="store_true", help="also write <stem>_overlay.jpg: colours over the image"
    )
    parser.add_argument(
        "--overlay-format", choices=("jpg", "png"), default="jpg", help="overlay (and drawn boxes) file type"
    )
    parser.add_argument(
        "--min-score",
        type=float,
        default=MIN_SCORE,
        help="detectors: draw the boxes of at least this score (JSON has all)",
    )
    parser.add_argument("--overlay-alpha", type=fraction, default=0.5, help="colour weight in the overlay")
    parser.add_argument(
        "--edge-output",
        choices=EDGE_OUTPUTS,
        default="fuse",
        help="HED: the map to write; fuse: the fused output (default); merge: (fuse + mean of the side "
        "outputs) / 2, the late merging HED's paper reports best",
    )
    parser.add_argument(
        "--probs", action="store_true", help="also write <stem>_probs.npy: (C, H, W) softmax probabilities"
    )
    parser.add_argument(
        "--probs-dtype",
        choices=("float16", "float32"),
        default="float16",
        help="float16 halves the files and keeps probabilities to about 3 decimal digits",
    )
    parser.add_argument("--tta-flip", action="store_true", help="average with the mirrored image")
    parser.add_argument(
        "--tta-scales", type=_scales, default=None, help="average over rescaled copies, e.g. 0.75,1,1.25"
    )
    parser.add_argument(
        "--crf",
        action="store_true",
        help="refine the labels with a dense CRF (DeepLab's VOC parameters, 10 mean-field iterations, "
        f"on the CPU; needs pip install '{crf.EXTRA}')",
    )
    add_device(parser)
    add_threads(parser)
    add_inference(parser)
    parser.add_argument(
        "--max-memory",
        type=_memory,
        default=None,
        help="activation memory budget, e.g. 4G (default: half the memory available)",
    )
    parser.add_argument("--batch-size", type=positive, default=4, help="images of one size per forward pass")
    add_max_megapixels(parser, "refused")
    parser.set_defaults(run=run)
