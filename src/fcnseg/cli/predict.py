"""``fcnseg predict``: segment files, folders and globs into palette PNGs, overlays and probabilities
(a PNG per head for a net of several); or, with a detector, find boxes and write them as JSON and
drawn on the image."""

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
from typing import Any

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from fcnseg.data.images import MAX_PIXELS, read_image
from fcnseg.infer import crf
from fcnseg.infer.detect import MIN_SCORE, detect_images
from fcnseg.infer.edge_outputs import EDGE_OUTPUTS
from fcnseg.infer.predict import PRECISIONS, predict_batch, resolve_device
from fcnseg.infer.tiling import parse_memory
from fcnseg.models.fcn import FCN
from fcnseg.models.heads import MultiHeadFCN
from fcnseg.models.ssd import SSD
from fcnseg.tasks import get_task
from fcnseg.tasks.detection import DetectionTask
from fcnseg.tasks.edges import predict_map
from fcnseg.tasks.segmentation import SegmentationTask
from fcnseg.weights.load import load

IMAGE_SUFFIXES = frozenset(ext for ext, fmt in Image.registered_extensions().items() if fmt in Image.OPEN)
"""Files a folder contributes: those whose suffix PIL can open."""

MAX_PENDING_FACTOR = 2
"""Images waiting for a same-size batch are flushed beyond this many batches' worth."""

SEGMENTATION = SegmentationTask()
DETECTION = DetectionTask()
"""What predict writes: the task's files for each image."""


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
                found = sorted(
                    p
                    for p in path.iterdir()
                    if p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith(".") and p.is_file()
                )
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


def _output_options(args: argparse.Namespace) -> dict[str, Any]:
    """What ``SegmentationTask.write_prediction`` writes besides the label PNG, from the flags."""
    return {"overlay_format": args.overlay_format if args.overlay else None}


def _output_suffixes(args: argparse.Namespace, model: torch.nn.Module) -> list[str]:
    if isinstance(model, SSD):
        return DETECTION.prediction_suffixes(overlay_format=args.overlay_format)
    if isinstance(model, MultiHeadFCN):
        return get_task(model.task).prediction_suffixes(**_output_options(args), heads=model.head_names)
    if model.task != "segmentation":
        return get_task(model.task).prediction_suffixes(**_output_options(args))
    return SEGMENTATION.prediction_suffixes(**_output_options(args), probs=args.probs)


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


def _segment(
    args: argparse.Namespace, model: FCN, files: Sequence[Path], stems: Sequence[str], failures: list[str]
) -> int:
    """Read, batch by size, segment and write (a label map per head for a net of several: its task's
    files); returns how many images were written."""
    task = get_task(model.task)
    done = 0
    pending: dict[tuple[int, int], list[tuple[Path, str, np.ndarray]]] = defaultdict(list)
    bar = tqdm(total=len(files), unit="img", desc="fcnseg predict", disable=None)

    def segment_group(group: list[tuple[Path, str, np.ndarray]]) -> None:
        nonlocal done
        try:
            labels, probs = predict_batch(
                model,
                np.stack([image for _, _, image in group]),
                return_probs=args.probs,
                tta_flip=args.tta_flip,
                tta_scales=args.tta_scales,
                max_memory=args.max_memory,
                precision=args.precision,
                crf=crf.CRFSettings() if args.crf else None,
            )
        except (ValueError, RuntimeError) as error:
            failures.extend(_describe(path, error) for path, _, _ in group)
            bar.update(len(group))
            return
        options = {**_output_options(args), "overlay_alpha": args.overlay_alpha}
        for i, (path, stem, image) in enumerate(group):
            try:
                if isinstance(labels, dict):  # one map per head
                    task.write_prediction(
                        Path(args.out) / stem, image, {h: m[i] for h, m in labels.items()}, **options
                    )
                else:
                    prediction = (labels[i], probs[i] if probs is not None else None)
                    task.write_prediction(
                        Path(args.out) / stem, image, prediction, **options, probs_dtype=args.probs_dtype
                    )
                done += 1
            except OSError as error:
                failures.append(_describe(path, error))
            bar.update(1)

    for path, stem in zip(files, stems, strict=True):
        try:
            image = read_image(path, max_pixels=args.max_megapixels)
        except (ValueError, OSError) as error:
            failures.append(_describe(path, error))
            bar.update(1)
            continue
        group = pending[image.shape[:2]]
        group.append((path, stem, image))
        if len(group) >= args.batch_size:
            segment_group(pending.pop(image.shape[:2]))
        elif sum(map(len, pending.values())) > MAX_PENDING_FACTOR * args.batch_size:
            segment_group(pending.pop(max(pending, key=lambda size: len(pending[size]))))
    for size in list(pending):
        segment_group(pending.pop(size))
    bar.close()
    return done


def _detect(
    args: argparse.Namespace, model: SSD, files: Sequence[Path], stems: Sequence[str], failures: list[str]
) -> int:
    """Read, detect and write one image at a time; returns how many images were written."""
    done = 0
    names = list(model.meta.get("class_names") or map(str, range(model.num_classes)))
    for path, stem in tqdm(
        list(zip(files, stems, strict=True)), unit="img", desc="fcnseg predict", disable=None
    ):
        try:
            image = read_image(path, max_pixels=args.max_megapixels)
            found = detect_images(model, [image])[0]
            options = {"overlay_format": args.overlay_format, "min_score": args.min_score}
            DETECTION.write_prediction(Path(args.out) / stem, image, (found, names), **options)
            done += 1
        except (ValueError, OSError, RuntimeError) as error:
            failures.append(_describe(path, error))
    return done


def run(args: argparse.Namespace) -> int:
    weights, out = Path(args.weights), Path(args.out)
    files, failures = collect_inputs(args.inputs)
    model = load(weights)
    suffixes = _output_suffixes(args, model)
    stems = output_stems(files, suffixes)
    _check_out_is_no_input_folder(out, args.inputs, files)
    _check_no_overwrite(files, weights, [out / (s + x) for s in stems for x in suffixes])
    asked = {
        "--probs": args.probs,
        "--tta-flip": args.tta_flip,
        "--tta-scales": args.tta_scales,
        "--crf": args.crf,
    }
    given = [flag for flag, value in asked.items() if value]
    if args.edge_output is not None and getattr(model, "config", {}).get("arch") != "hed":
        raise ValueError(
            f"--edge-output: only for HED nets (its fused and side outputs); {weights} is not one"
        )
    if model.task != "segmentation" and given:
        raise ValueError(
            f"{', '.join(given)}: only for segmentation nets of one output; {weights} is a net of the {model.task} task"
        )
    if args.crf:
        crf.require()
    _prepare_out(out)
    if isinstance(model, SSD):
        model.to(resolve_device(args.device))
        start = time.perf_counter()
        done = _detect(args, model, files, stems, failures) if files else 0
        return _report(done, files, out, start, failures, "found boxes in")
    multihead = isinstance(model, MultiHeadFCN)
    if model.task != "segmentation" and not multihead:
        model.to(resolve_device(args.device))
        start = time.perf_counter()
        done = _edge_maps(args, model, files, stems, failures)
        return _report(done, files, out, start, failures, "drew edge or skeleton maps of")
    classes = max(model.heads) if multihead else model.num_classes
    if classes > 256:
        where = " in a head" if multihead else ""
        raise ValueError(f"{weights}: model has {classes} classes{where} but a palette PNG holds at most 256")
    model.to(resolve_device(args.device))
    start = time.perf_counter()
    done = _segment(args, model, files, stems, failures) if files else 0
    verb = f"wrote {' and '.join(model.head_names)} label maps of" if multihead else "segmented"
    return _report(done, files, out, start, failures, verb)


def _edge_maps(
    args: argparse.Namespace,
    model: torch.nn.Module,
    files: Sequence[Path],
    stems: Sequence[str],
    failures: list[str],
) -> int:
    """An edge (HED) or skeleton (FSDS) map per image, written by the net's task; returns how many."""
    task = get_task(model.task)
    device = next(model.parameters()).device
    done = 0
    for path, stem in tqdm(
        list(zip(files, stems, strict=True)), unit="img", desc="fcnseg predict", disable=None
    ):
        try:
            image = read_image(path, max_pixels=args.max_megapixels)
            edges = predict_map(model, image, device, args.edge_output or "fuse")
            task.write_prediction(
                Path(args.out) / stem, image, edges, **_output_options(args), overlay_alpha=args.overlay_alpha
            )
            done += 1
        except (ValueError, OSError, RuntimeError) as error:
            failures.append(_describe(path, error))
    return done


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


def _alpha(text: str) -> float:
    value = float(text)
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError(f"alpha must be in [0, 1], got {text}")
    return value


def _megapixels(text: str) -> int | None:
    """Megapixels -> a pixel count; 0 means no limit."""
    value = float(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 (no limit) or positive, got {text}")
    return round(value * 1e6) or None


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {text}")
    return value


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
    parser.add_argument("weights", help="fcnseg checkpoint")
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
    parser.add_argument("--overlay-alpha", type=_alpha, default=0.5, help="colour weight in the overlay")
    parser.add_argument(
        "--edge-output",
        choices=EDGE_OUTPUTS,
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
    parser.add_argument(
        "--device", choices=("cpu", "cuda", "auto"), default="auto", help="auto: CUDA when available"
    )
    parser.add_argument(
        "--precision",
        choices=PRECISIONS,
        default="fp32",
        help="fp32: exact; bf16: the net in bfloat16, faster where the hardware has it (CPUs with "
        "AVX512-BF16 or AMX, recent GPUs), labels may differ at a few pixels; auto: bf16 where the "
        "hardware has it, else fp32",
    )
    parser.add_argument(
        "--max-memory",
        type=_memory,
        default=None,
        help="activation memory budget, e.g. 4G (default: half the memory available)",
    )
    parser.add_argument("--batch-size", type=_positive, default=4, help="images of one size per forward pass")
    parser.add_argument(
        "--max-megapixels",
        type=_megapixels,
        default=str(MAX_PIXELS / 1e6),
        help="refuse larger images, a guard against decompression bombs (PIL's limit; 0 = no limit)",
    )
    parser.set_defaults(run=run)
