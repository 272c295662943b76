"""The arguments several commands share, and the argument types that check values as they are read."""

from __future__ import annotations

import argparse
from typing import Any

import torch

from fcnseg.data.images import MAX_PIXELS
from fcnseg.devices import AUTO, default_threads, resolve_device
from fcnseg.errors import ConfigError
from fcnseg.tasks.common import InferenceOptions

__all__ = [
    "DEVICE_HELP",
    "add_device",
    "add_inference",
    "add_max_megapixels",
    "add_threads",
    "add_weights",
    "device_name",
    "fraction",
    "inference_options",
    "integers",
    "megapixels",
    "parse_size",
    "positive",
    "positive_float",
    "set_threads",
]


def add_weights(parser: argparse.ArgumentParser) -> None:
    """The positional ``weights``: anything ``fcnseg.load`` reads."""
    parser.add_argument(
        "weights",
        help="an fcnseg checkpoint (.pt), an original Caffe model (.caffemodel), torchvision's FCN "
        "state dict (.pth) or a published name (voc-fcn8s; fcnseg weights list)",
    )


DEVICE_HELP = "a torch device: cpu, cuda, cuda:1, mps, xpu...; auto: CUDA when available, else the CPU"


def device_name(text: str) -> str:
    """A ``--device`` value, checked against this machine as it is read, so that a device it lacks
    stops the command before any data or weights are loaded; kept as named (under ``torchrun`` a
    bare ``cuda`` is each process's own GPU)."""
    try:
        resolve_device(text)
    except ConfigError as error:
        raise argparse.ArgumentTypeError(str(error)) from None
    return text


def add_device(parser: argparse.ArgumentParser) -> None:
    """``--device``: where the command computes (:func:`fcnseg.devices.resolve_device`)."""
    parser.add_argument("--device", type=device_name, default=AUTO, help=DEVICE_HELP)


def add_threads(parser: argparse.ArgumentParser, default: int | None = None, why: str = "") -> None:
    """``--threads``: the CPU threads torch runs on, within and between operations (set them with
    :func:`set_threads`); one makes a run's numbers the same bit for bit whatever the machine's
    number of cores. ``default`` None is :func:`fcnseg.devices.default_threads`'s count; ``why``
    says why a command has another."""
    note = (
        why
        if default is not None
        else "; without it, OMP_NUM_THREADS or the physical cores this process may use"
    )
    parser.add_argument(
        "--threads",
        type=positive,
        default=default,
        help=f"CPU threads for torch, within and between operations{note}",
    )


def set_threads(count: int | None) -> None:
    """Run torch on ``count`` CPU threads, within operations and between them (None: as many as
    :func:`fcnseg.devices.default_threads` says)."""
    count = default_threads() if count is None else count
    torch.set_num_threads(count)
    try:
        torch.set_num_interop_threads(count)
    except RuntimeError:  # allowed once, before any parallel work; later the pool stays as it is
        pass


def add_inference(parser: argparse.ArgumentParser) -> None:
    """``--precision``, ``--backend`` and ``--calibration`` of the commands that run a net on images."""
    from fcnseg.infer.predict import BACKENDS, PRECISIONS

    parser.add_argument(
        "--precision",
        choices=PRECISIONS,
        default="fp32",
        help="fp32: exact; bf16: the net in bfloat16, faster where the hardware has it (CPUs with "
        "AVX512-BF16 or AMX, recent GPUs), labels may differ at a few pixels; auto: bf16 where the "
        "hardware has it, else fp32; int8: the trunk in int8 on a runtime backend (--backend "
        "onnxruntime or openvino), calibrated on --calibration",
    )
    parser.add_argument(
        "--backend",
        choices=BACKENDS,
        default="torch",
        help="torch: fcnseg's own fast path; onnxruntime, openvino: the net's trimmed graph compiled by "
        "that runtime, on the CPU (pip install 'fcnseg[onnxruntime]' or 'fcnseg[openvino]'); a graph "
        "is built per input size (seconds to a minute for VGG16), then reused",
    )
    parser.add_argument(
        "--calibration",
        metavar="DIR",
        default=None,
        help="--precision int8: a folder of a few images like the ones to segment (training images, "
        "not those you score), to calibrate the int8 ranges on",
    )


def inference_options(args: argparse.Namespace, **more: Any) -> InferenceOptions:
    """The options :func:`add_inference`'s flags give, with ``more`` of a command's own."""
    return InferenceOptions(
        precision=args.precision, backend=args.backend, calibration=args.calibration, **more
    )


def add_max_megapixels(parser: argparse.ArgumentParser, refused: str) -> None:
    """``--max-megapixels``: the decompression-bomb guard of the commands that read images;
    ``refused`` says what happens to a larger one."""
    parser.add_argument(
        "--max-megapixels",
        type=megapixels,
        default=str(MAX_PIXELS / 1e6),
        help=f"larger images are {refused}, a guard against decompression bombs (PIL's limit; 0: no limit)",
    )


def megapixels(text: str) -> int | None:
    """Megapixels -> a pixel count; 0 means no limit (None)."""
    value = float(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 (no limit) or positive, got {text}")
    return round(value * 1e6) or None


def positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {text}")
    return value


def positive_float(text: str) -> float:
    value = float(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be positive, got {text}")
    return value


def fraction(text: str) -> float:
    value = float(text)
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError(f"must be in [0, 1], got {text}")
    return value


def integers(text: str) -> tuple[int, ...]:
    """``4,8,16`` -> (4, 8, 16)."""
    try:
        return tuple(int(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


def parse_size(text: str) -> tuple[int, int]:
    """``500x375`` -> (500, 375) as (H, W); a single number is a square."""
    parts = text.lower().split("x")
    try:
        size = tuple(int(p) for p in parts) * (2 if len(parts) == 1 else 1)
    except ValueError:
        raise argparse.ArgumentTypeError(f"size must look like 500x500, got {text!r}") from None
    if len(size) != 2 or min(size) < 1:
        raise argparse.ArgumentTypeError(f"size must be two positive numbers HxW, got {text!r}")
    return size
