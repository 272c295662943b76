"""Dense CRF post-processing: a fully connected CRF over a net's scores, as DeepLab applies it.

The CRF (Krähenbühl and Koltun 2011) takes each pixel's unary energy from the net
(-log softmax) and adds two pairwise Potts terms between all pixel pairs: a Gaussian
kernel on position, which smooths, and a bilateral kernel on position and colour,
which pulls labels onto the image's edges. Mean-field inference runs on the
permutohedral lattice of ``pydensecrf2`` (the ``crf`` extra), on the CPU.
"""

from __future__ import annotations

from dataclasses import dataclass
from numbers import Real
from types import ModuleType

import numpy as np

from fcnseg.errors import ConfigError, MissingExtraError

__all__ = ["EXTRA", "CRFSettings", "refine", "require", "unary"]

EXTRA = "fcnseg[crf]"
"""What to install for the CRF: ``pydensecrf2``, Krähenbühl's C++ code with Python bindings."""

PROB_FLOOR = 1e-8
"""Probabilities are clipped to this before the log, so a zero probability costs a finite energy."""


@dataclass(frozen=True)
class CRFSettings:
    """The CRF's parameters; the defaults are DeepLab's for PASCAL VOC (cross-validated there).

    ``*_compat`` is the weight of each kernel's Potts term (pydensecrf's ``compat``: the
    energy a pair pays for disagreeing, scaled by the kernel); ``*_sxy`` are standard
    deviations in pixels and ``bilateral_srgb`` in colour levels (0-255).
    """

    iterations: int = 10
    gaussian_sxy: float = 1.0
    gaussian_compat: float = 3.0
    bilateral_sxy: float = 67.0
    bilateral_srgb: float = 3.0
    bilateral_compat: float = 4.0

    def __post_init__(self) -> None:
        problems = []
        if not isinstance(self.iterations, int) or isinstance(self.iterations, bool) or self.iterations < 0:
            problems.append(f"iterations={self.iterations!r} (an integer >= 0)")
        for name in _WEIGHTS:
            if not (isinstance(value := getattr(self, name), Real) and value >= 0):
                problems.append(f"{name}={value!r} (>= 0)")
        for name in _SCALES:
            if not (isinstance(value := getattr(self, name), Real) and value > 0):
                problems.append(f"{name}={value!r} (> 0)")
        if problems:
            raise ConfigError(f"CRF settings out of range: {'; '.join(problems)}")


_WEIGHTS = ("gaussian_compat", "bilateral_compat")
_SCALES = ("gaussian_sxy", "bilateral_sxy", "bilateral_srgb")


def require() -> ModuleType:
    """The ``pydensecrf.densecrf`` module, or :class:`MissingExtraError` naming the extra to install."""
    try:
        import pydensecrf.densecrf as dcrf  # optional: only the CRF needs it
    except ImportError as error:
        raise MissingExtraError(f"the dense CRF needs the crf extra: pip install '{EXTRA}'") from error
    return dcrf


def unary(scores_or_probs: np.ndarray, *, are_probs: bool = False) -> np.ndarray:
    """(C, H, W) scores (or softmax probabilities) -> (C, H * W) float32 energies, -log softmax."""
    x = np.asarray(scores_or_probs, dtype=np.float64)
    if are_probs:
        energy = -np.log(np.clip(x, PROB_FLOOR, None))
    else:
        shifted = x - x.max(axis=0, keepdims=True)
        energy = np.log(np.exp(shifted).sum(axis=0, keepdims=True)) - shifted
    return np.ascontiguousarray(energy.reshape(x.shape[0], -1), dtype=np.float32)


def refine(
    image: np.ndarray,
    scores_or_probs: np.ndarray,
    *,
    are_probs: bool = False,
    settings: CRFSettings | None = None,
) -> np.ndarray:
    """(H, W, 3) uint8 RGB image and its (C, H, W) scores -> (H, W) labels after the dense CRF.

    ``scores_or_probs`` are the net's raw scores, or with ``are_probs`` its softmax
    probabilities (averaged over test-time augmentations, say). Labels are int64; zero
    iterations give the net's own argmax.
    """
    settings = settings or CRFSettings()
    image = np.asarray(image)
    values = np.asarray(scores_or_probs)
    problems = []
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        problems.append(f"expected an (H, W, 3) uint8 RGB image, got shape {image.shape} {image.dtype}")
    if values.ndim != 3:
        problems.append(f"expected (C, H, W) scores, got shape {values.shape}")
    elif image.ndim == 3 and values.shape[1:] != image.shape[:2]:
        problems.append(f"scores are {values.shape[1:]} (H, W) but the image is {image.shape[:2]}")
    if problems:
        raise ValueError("; ".join(problems))
    if not np.isfinite(values).all():
        raise ValueError("scores hold NaN or infinite values")
    dcrf = require()
    classes, height, width = values.shape
    crf = dcrf.DenseCRF2D(width, height, classes)
    crf.setUnaryEnergy(unary(values, are_probs=are_probs))
    crf.addPairwiseGaussian(sxy=settings.gaussian_sxy, compat=settings.gaussian_compat)
    crf.addPairwiseBilateral(
        sxy=settings.bilateral_sxy,
        srgb=settings.bilateral_srgb,
        rgbim=np.ascontiguousarray(image),
        compat=settings.bilateral_compat,
    )
    q = np.asarray(crf.inference(settings.iterations)).reshape(classes, height, width)
    return q.argmax(0)
