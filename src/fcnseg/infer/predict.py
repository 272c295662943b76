"""Segmenting images with a trained FCN: preprocessing from the model, batching, tiling and TTA.

Images of one size are stacked into a batch; images of different sizes never
are. Padding them to a common size would change the scores: an FCN's output
near a border depends on the zero padding its convolutions see there.
"""

from __future__ import annotations

import functools
import os
import warnings
from collections.abc import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from fcnseg.accel import evaluating, for_inference
from fcnseg.accel.quantize import Calibration, calibration_of
from fcnseg.accel.runtimes import BACKENDS, runtime_forward
from fcnseg.data.images import read_image
from fcnseg.data.preprocess import preprocess, preprocessing_of
from fcnseg.devices import cpu_flags, resolve_device
from fcnseg.errors import ConfigError
from fcnseg.infer.crf import CRFSettings, refine
from fcnseg.infer.tiling import (
    BYTES_PER_VALUE,
    activation_bytes,
    default_max_memory,
    plan_tiles,
    tiled_scores,
)
from fcnseg.models.fcn import FCN
from fcnseg.models.heads import MultiHeadFCN

__all__ = [
    "BACKENDS",
    "PRECISIONS",
    "cpu_has_native_bf16",
    "has_native_bf16",
    "inference_forward",
    "predict",
    "predict_batch",
    "resolve_precision",
]

PRECISIONS = ("fp32", "bf16", "auto", "int8")
"""fp32: exact. bf16: the backbone in bfloat16 (autocast on CUDA). auto: bf16 where the hardware has it.
int8: the trunk in int8, calibrated on a few images (a runtime backend)."""


_BF16_CPU_FLAGS = {"avx512_bf16", "amx_bf16"}

Forward = Callable[[torch.Tensor], torch.Tensor]

Calibrating = Calibration | str | os.PathLike | Sequence[np.ndarray] | None
"""What int8 is calibrated by: a :class:`~fcnseg.accel.quantize.Calibration`, a folder of images,
or the images themselves ((H, W, 3) uint8 RGB)."""


def inference_forward(
    model: nn.Module,
    precision: str = "fp32",
    backend: str = "torch",
    calibration: Calibrating = None,
    device: str | torch.device | None = None,
) -> Callable[[torch.Tensor], torch.Tensor]:
    """What runs ``model`` (eval mode) for ``predict``, ``evaluate`` and ``serve``:
    (N, C, H, W) float32 -> (N, classes, H, W) float32 scores.

    ``backend="torch"``: :func:`fcnseg.accel.for_inference` in the dtype ``precision`` means
    (float32: the same scores as ``model(x)`` to about 1e-6 relative). A runtime backend:
    :func:`fcnseg.accel.runtimes.runtime_forward` (the CPU only; int8 needs ``calibration``).
    """
    if backend not in BACKENDS:
        raise ConfigError(f"backend must be one of {', '.join(BACKENDS)}; got {backend!r}")
    device = next(model.parameters()).device if device is None else resolve_device(device)
    if precision == "int8" and backend == "torch":
        raise ConfigError(
            "precision int8 runs on a runtime backend: give --backend onnxruntime or openvino "
            "(backend='onnxruntime' or 'openvino')"
        )
    if backend == "torch":
        return for_inference(model, resolve_precision(precision, device))
    if device.type != "cpu":
        raise ConfigError(f"backend {backend} runs on the CPU; the net is on {device}: use --device cpu")
    if precision == "int8":
        return runtime_forward(model, backend, "int8", calibration_of(model, calibration))
    dtype = resolve_precision(precision, device)
    return runtime_forward(model, backend, "bf16" if dtype == torch.bfloat16 else "fp32")


@functools.cache
def cpu_has_native_bf16() -> bool:
    """Whether the CPU computes in bfloat16 natively (x86 AVX512-BF16 or AMX-BF16, from /proc/cpuinfo).

    Elsewhere bfloat16 is emulated and slower than float32; where there is no
    /proc/cpuinfo (macOS, Windows) the answer is False.
    """
    return bool(_BF16_CPU_FLAGS & cpu_flags())


def has_native_bf16(device: torch.device) -> bool:
    """Whether ``device`` computes in bfloat16 natively; where torch cannot say (MPS has no
    ``is_bf16_supported``), no: ``auto`` then keeps float32, which is exact."""
    if device.type == "cpu":
        return cpu_has_native_bf16()
    runtime = getattr(torch, device.type, None)
    return bool(getattr(runtime, "is_bf16_supported", lambda: False)())


def resolve_precision(precision: str, device: torch.device) -> torch.dtype:
    """The dtype that ``precision`` (``"fp32"``, ``"bf16"``, ``"auto"``) means on ``device``.

    ``"bf16"`` on a CPU without native bfloat16 warns: it runs, but slower than float32.
    """
    if precision not in PRECISIONS:
        raise ConfigError(f"precision must be one of {', '.join(PRECISIONS)}; got {precision!r}")
    if precision == "int8":
        raise ConfigError(
            "precision int8 is no torch dtype: it runs on a runtime backend (inference_forward)"
        )
    native = has_native_bf16(device)
    if precision == "bf16" and not native:
        warnings.warn(
            f"bf16 requested but this {device.type.upper()} has no native bfloat16 arithmetic: "
            "it will be slower than fp32",
            stacklevel=2,
        )
    return torch.bfloat16 if precision == "bf16" or (precision == "auto" and native) else torch.float32


def _scores(model: FCN, x: torch.Tensor, budget: int, forward: Forward) -> torch.Tensor:
    """(N, 3, H, W) -> (N, C, H, W): whole images in chunks that fit ``budget``, else tiled."""
    n, _, height, width = x.shape
    per_image = activation_bytes(model, height, width)
    if per_image <= budget:
        chunk = budget // per_image
        return torch.cat([forward(x[i : i + chunk]) for i in range(0, n, chunk)])
    # the blended scores and their weights stay in memory beside the tiles
    plan = plan_tiles(model, budget - BYTES_PER_VALUE * (model.num_classes + 1) * height * width)
    return torch.cat([tiled_scores(forward, x[i : i + 1], model.num_classes, plan) for i in range(n)])


def _resized(x: torch.Tensor, height: int, width: int) -> torch.Tensor:
    if x.shape[-2:] == (height, width):
        return x
    shrinking = height < x.shape[-2] or width < x.shape[-1]
    return F.interpolate(x, size=(height, width), mode="bilinear", align_corners=False, antialias=shrinking)


def _tta_probabilities(
    model: FCN, x: torch.Tensor, flip: bool, scales: Sequence[float], budget: int, forward: Forward
) -> torch.Tensor:
    """(N, 3, H, W) -> (N, C, H, W): softmax averaged over scales (and mirror images), each
    resized back to H x W. Resizing the preprocessed input equals resizing the image, since
    preprocessing is affine per channel."""
    height, width = x.shape[-2:]
    total = torch.zeros(x.shape[0], model.num_classes, height, width, device=x.device)
    budget -= 3 * BYTES_PER_VALUE * total.numel()  # the sum, one view's softmax and its resized copy
    views = 0
    for scale in scales:
        scaled = _resized(x, max(1, round(height * scale)), max(1, round(width * scale)))
        for mirrored in (False, True) if flip else (False,):
            inputs = scaled.flip(-1) if mirrored else scaled
            probs = _scores(model, inputs, budget, forward).softmax(1)
            probs = probs.flip(-1) if mirrored else probs
            total += _resized(probs, height, width)
            views += 1
    return total.div_(views)


def _as_image(image: np.ndarray | Image.Image | str | os.PathLike) -> np.ndarray:
    """An (H, W, 3) uint8 RGB array from an array, a PIL image or a path (EXIF orientation honoured)."""
    if isinstance(image, str | os.PathLike):
        return read_image(image)
    if isinstance(image, Image.Image):
        return np.array(image.convert("RGB"))
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"expected an (H, W, 3) uint8 RGB image, got shape {image.shape} {image.dtype}")
    return image


def _label_dtype(num_classes: int) -> type:
    return np.uint8 if num_classes <= 256 else np.int64


@torch.inference_mode()
def predict_batch(
    model: FCN,
    images: np.ndarray,
    *,
    return_probs: bool = False,
    tta_flip: bool = False,
    tta_scales: Sequence[float] | None = None,
    device: str | torch.device | None = None,
    max_memory: int | None = None,
    precision: str = "fp32",
    crf: CRFSettings | None = None,
    backend: str = "torch",
    calibration: Calibrating = None,
) -> tuple[np.ndarray | dict[str, np.ndarray], np.ndarray | None]:
    """(N, H, W, 3) uint8 RGB images of one size -> (N, H, W) labels and (N, C, H, W) probabilities.

    The batch is split into chunks that fit ``max_memory`` (bytes; default half the
    memory available on the device); an image too large for it alone is segmented
    in overlapping tiles. Probabilities (float32) are ``None`` unless asked for or
    implied by test-time augmentation. ``model`` is moved to ``device`` if given: any torch
    device (``"cpu"``, ``"cuda:1"``, ``"mps"``...) or ``"auto"``, refused at once if this machine
    lacks it (:func:`fcnseg.devices.resolve_device`); None leaves the model where it is.
    ``precision`` is one of :data:`PRECISIONS` and ``backend`` one of :data:`BACKENDS`
    (:func:`inference_forward`; int8 is calibrated by ``calibration``). With ``crf`` the labels are the dense
    CRF's (:func:`fcnseg.infer.crf.refine`) over the probabilities; the probabilities
    returned stay the net's.

    A net of several heads (:class:`~fcnseg.models.heads.MultiHeadFCN`, SIFT Flow's) gives a dict
    of (N, H, W) labels by head name (``model.head_names``), each the argmax of its head's scores,
    and no probabilities; it takes none of ``return_probs``, ``tta_*`` and ``crf``.
    """
    multihead = isinstance(model, MultiHeadFCN)
    if multihead:
        asked = {"return_probs": return_probs, "tta_flip": tta_flip, "tta_scales": tta_scales, "crf": crf}
        given = [name for name, value in asked.items() if value is not None and value is not False]
        if given:
            raise ValueError(
                f"{', '.join(given)}: a net of {len(model.heads)} heads ({', '.join(model.head_names)}) "
                "gives label maps only"
            )
    images = np.asarray(images)
    if images.ndim != 4 or images.shape[-1] != 3 or images.dtype != np.uint8:
        raise ValueError(f"expected (N, H, W, 3) uint8 RGB images, got shape {images.shape} {images.dtype}")
    scales = tuple(tta_scales) if tta_scales else (1.0,)
    if any(s <= 0 for s in scales):
        raise ValueError(f"TTA scales must be positive, got {scales}")
    device = next(model.parameters()).device if device is None else resolve_device(device)
    model.to(device)
    forward = inference_forward(model, precision, backend, calibration, device)
    budget = max_memory if max_memory is not None else default_max_memory(device)
    x = preprocess(images, preprocessing_of(model)).to(device)
    augmented = tta_flip or scales != (1.0,)
    with evaluating(model):
        if return_probs or augmented or crf is not None:
            probs = _tta_probabilities(model, x, tta_flip, scales, budget, forward)
            labels = probs.argmax(1)
        elif multihead:
            parts = model.split(_scores(model, x, budget, forward))
            return {
                name: part.argmax(1).cpu().numpy().astype(_label_dtype(classes))
                for name, classes, part in zip(model.head_names, model.heads, parts, strict=True)
            }, None
        else:
            probs, labels = None, _scores(model, x, budget, forward).argmax(1)
    probs = probs.cpu().numpy() if probs is not None else None
    if crf is None:
        labels = labels.cpu().numpy()
    else:
        labels = np.stack(
            [refine(im, p, are_probs=True, settings=crf) for im, p in zip(images, probs, strict=True)]
        )
        probs = probs if return_probs or augmented else None
    return labels.astype(_label_dtype(model.num_classes)), probs


def predict(
    model: FCN,
    image_or_path: np.ndarray | Image.Image | str | os.PathLike,
    *,
    return_probs: bool = False,
    tta_flip: bool = False,
    tta_scales: Sequence[float] | None = None,
    device: str | torch.device | None = None,
    max_memory: int | None = None,
    precision: str = "fp32",
    crf: CRFSettings | None = None,
    backend: str = "torch",
    calibration: Calibrating = None,
) -> np.ndarray | tuple[np.ndarray, np.ndarray] | dict[str, np.ndarray]:
    """Segment one image: (H, W, 3) uint8 RGB (or a path, or a PIL image) -> (H, W) label map.

    Labels are uint8 when the model has at most 256 classes, else int64. With
    ``return_probs`` returns ``(labels, probs)``, probs (C, H, W) float32 softmax.
    ``tta_flip`` adds the mirrored image and ``tta_scales`` (e.g. ``(0.75, 1, 1.25)``)
    rescaled copies; their probabilities are resized back and averaged.
    Preprocessing is the one in ``model.meta["preprocess"]`` (``"caffe"`` if unset).
    ``precision="bf16"`` runs the backbone in bfloat16: faster on CPUs with native
    bfloat16, with labels that may differ from float32's at a few pixels; ``"auto"``
    picks it where the hardware has it. ``crf=CRFSettings()`` refines the labels with a
    dense CRF (DeepLab's VOC parameters; needs the ``crf`` extra). ``device`` is as
    :func:`predict_batch` takes it: a torch device, ``"auto"``, or None (where the model is).

    A net of several heads (SIFT Flow's) gives a dict instead: head name -> (H, W) label map, e.g.
    ``{"semantic": ..., "geometric": ...}`` in the net's head order (``model.head_names``); it
    takes no ``return_probs``, ``tta_*`` or ``crf``.
    """
    labels, probs = predict_batch(
        model,
        _as_image(image_or_path)[None],
        return_probs=return_probs,
        tta_flip=tta_flip,
        tta_scales=tta_scales,
        device=device,
        max_memory=max_memory,
        precision=precision,
        crf=crf,
        backend=backend,
        calibration=calibration,
    )
    if isinstance(labels, dict):
        return {name: maps[0] for name, maps in labels.items()}
    return (labels[0], probs[0]) if return_probs else labels[0]
