"""The tasks' pixel losses: FCN's per-pixel softmax (segmentation, SIFT Flow's heads) with class
balancing weights and loss sampling, and the class-balanced losses of HED (edges) and FSDS (skeletons).

The paper trains with an unnormalised loss: the sum of every pixel's softmax log
loss, which is why its learning rate is as small as 1e-10. The mean is offered for
the usual learning rates. Section 4.3 shows that patchwise training is loss
sampling: keeping each spatial loss term with probability ``p`` is equivalent to
training on random patches, so it is a loss option rather than a data pipeline.

Edges and skeletons are a few percent of the pixels, so each image's loss weighs its positive
pixels by the share of negatives and its negatives by the share of positives. Both follow the
reference Caffe layers: HED's ``SigmoidCrossEntropyLossLayer`` (s9xie/hed) and DeepSkeleton's
``SoftmaxWithLossLayer`` (zeakey/DeepSkeleton), summed over pixels and divided by the batch size.

SSD's MultiBox loss is built of the box matching and encoding that detection shares, and lives
with them in :mod:`fcnseg.detection.loss`.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from fcnseg.data.datasets import IGNORE_INDEX

__all__ = [
    "REDUCTIONS",
    "SAMPLING_SCOPES",
    "FSDSLoss",
    "HEDLoss",
    "SegmentationLoss",
    "balanced_sigmoid_loss",
    "balanced_softmax_loss",
    "class_pixel_counts",
    "loss_sampling_mask",
    "median_frequency_weights",
    "segmentation_loss",
]

REDUCTIONS = ("sum", "mean", "image-mean")
SAMPLING_SCOPES = ("image", "batch")


def loss_sampling_mask(
    shape: tuple[int, int, int],
    keep_prob: float,
    *,
    scope: str = "image",
    cell: int = 1,
    generator: torch.Generator | None = None,
    device: torch.device | str = "cpu",
) -> torch.Tensor:
    """A boolean (N, H, W) mask keeping each loss term with probability ``keep_prob``.

    ``scope="image"`` draws an independent mask for every image; ``"batch"`` draws
    one (H, W) mask shared by the whole batch. ``cell`` > 1 keeps or drops square
    cells of ``cell`` x ``cell`` pixels together: with ``cell=32`` on VGG16 this is
    the paper's choice of ignoring whole final-layer cells.
    """
    if not 0.0 < keep_prob <= 1.0:
        raise ValueError(f"keep probability must be in (0, 1], got {keep_prob}")
    if scope not in SAMPLING_SCOPES:
        raise ValueError(f"sampling scope must be one of {SAMPLING_SCOPES}, got {scope!r}")
    if cell < 1:
        raise ValueError(f"sampling cell must be at least 1 pixel, got {cell}")
    n, height, width = shape
    if keep_prob == 1.0:
        return torch.ones(shape, dtype=torch.bool, device=device)
    draws = n if scope == "image" else 1
    coarse = (draws, -(-height // cell), -(-width // cell))
    # Drawn on the CPU so that a seeded CPU generator gives the same mask on any device.
    keep = torch.rand(coarse, generator=generator) < keep_prob
    keep = keep.repeat_interleave(cell, 1).repeat_interleave(cell, 2)[:, :height, :width]
    return keep.expand(n, height, width).to(device)


def segmentation_loss(
    scores: torch.Tensor,
    target: torch.Tensor,
    *,
    reduction: str = "sum",
    ignore_index: int = IGNORE_INDEX,
    weight: torch.Tensor | None = None,
    keep_prob: float = 1.0,
    sampling_scope: str = "image",
    sampling_cell: int = 1,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Softmax log loss of (N, C, H, W) ``scores`` against (N, H, W) ``target`` -> scalar.

    ``reduction="sum"`` adds every kept pixel's (weighted) loss, as the original nets
    do; ``"mean"`` divides by the sum of the kept pixels' weights (their count when
    unweighted), as ``F.cross_entropy`` does; ``"image-mean"`` takes that mean in each image
    and averages the images, as Caffe's normalised loss accumulated over ``iter_size`` single
    images does (FCN-AlexNet), so a small image counts as much as a large one. Pixels labelled ``ignore_index``
    contribute nothing. ``weight`` holds one factor per class (see
    :func:`median_frequency_weights`). ``keep_prob`` < 1 samples the loss terms
    (see :func:`loss_sampling_mask`); with ``keep_prob=1`` the loss is exact.
    A batch with no labelled pixel gives 0 for either reduction.
    """
    if reduction not in REDUCTIONS:
        raise ValueError(f"loss reduction must be one of {REDUCTIONS}, got {reduction!r}")
    if scores.dim() != 4 or target.dim() != 3 or scores.shape[:1] + scores.shape[2:] != target.shape:
        raise ValueError(
            f"expected scores (N, C, H, W) and target (N, H, W) of the same N, H, W; "
            f"got {tuple(scores.shape)} and {tuple(target.shape)}"
        )
    if weight is not None and weight.shape != (scores.shape[1],):
        raise ValueError(f"class weights must have shape ({scores.shape[1]},), got {tuple(weight.shape)}")
    if not 0.0 < keep_prob <= 1.0:
        raise ValueError(f"keep probability must be in (0, 1], got {keep_prob}")
    # Softmax in float32 even under autocast: a sum over ~1e5 pixels overflows fp16.
    scores = scores.float()
    labelled = target != ignore_index
    if keep_prob < 1.0:
        labelled = labelled & loss_sampling_mask(
            tuple(target.shape),
            keep_prob,
            scope=sampling_scope,
            cell=sampling_cell,
            generator=generator,
            device=target.device,
        )
    safe_target = torch.where(labelled, target, torch.zeros_like(target))
    per_pixel = F.cross_entropy(scores, safe_target, reduction="none")
    pixel_weight = labelled.to(per_pixel.dtype)
    if weight is not None:
        pixel_weight = pixel_weight * weight.to(per_pixel)[safe_target]
    tiny = torch.finfo(per_pixel.dtype).tiny
    if reduction == "image-mean":
        per_image = (per_pixel * pixel_weight).flatten(1).sum(1)
        return (per_image / pixel_weight.flatten(1).sum(1).clamp_min(tiny)).mean()
    total = (per_pixel * pixel_weight).sum()
    if reduction == "sum":
        return total
    return total / pixel_weight.sum().clamp_min(tiny)


class SegmentationLoss(nn.Module):
    """:func:`segmentation_loss` with its settings fixed; the class weights move with ``.to(device)``."""

    weight: torch.Tensor | None

    def __init__(
        self,
        *,
        reduction: str = "sum",
        weight: torch.Tensor | None = None,
        keep_prob: float = 1.0,
        sampling_scope: str = "image",
        sampling_cell: int = 1,
    ):
        super().__init__()
        self.reduction, self.keep_prob = reduction, keep_prob
        self.sampling_scope, self.sampling_cell = sampling_scope, sampling_cell
        self.register_buffer("weight", weight)

    def forward(
        self, scores: torch.Tensor, target: torch.Tensor, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """(N, C, H, W) scores and (N, H, W) target -> scalar; ``generator`` draws the loss sampling."""
        return segmentation_loss(
            scores,
            target,
            reduction=self.reduction,
            weight=self.weight,
            keep_prob=self.keep_prob,
            sampling_scope=self.sampling_scope,
            sampling_cell=self.sampling_cell,
            generator=generator,
        )


def class_pixel_counts(
    labels: Iterable[np.ndarray | torch.Tensor], num_classes: int, ignore_index: int = IGNORE_INDEX
) -> tuple[np.ndarray, np.ndarray]:
    """Per class: pixels of that class, and labelled pixels of the images containing it.

    Returns two (num_classes,) int64 arrays, the inputs of
    :func:`median_frequency_weights`. Ids other than ``ignore_index`` outside
    [0, num_classes) are an error.
    """
    class_pixels = np.zeros(num_classes, dtype=np.int64)
    image_pixels = np.zeros(num_classes, dtype=np.int64)
    for i, label in enumerate(labels):
        ids = np.asarray(label).reshape(-1)
        ids = ids[ids != ignore_index]
        if ids.size and (ids.min() < 0 or ids.max() >= num_classes):
            raise ValueError(f"label {i} holds ids outside [0, {num_classes}) other than {ignore_index}")
        counts = np.bincount(ids, minlength=num_classes)
        class_pixels += counts
        image_pixels[counts > 0] += ids.size
    return class_pixels, image_pixels


def median_frequency_weights(
    class_pixels: np.ndarray, image_pixels: np.ndarray, power: float = 1.0
) -> torch.Tensor:
    """Median frequency balancing (Eigen and Fergus 2015): weight_c = (median(freq) / freq_c) ** power.

    ``power`` below 1 softens the balance: rare classes still count more, but the
    frequent background is not weighted down so far that it is predicted too rarely.

    ``freq_c`` is class c's pixel count divided by the labelled pixels of the images
    where c appears, so a class that is rare but large where present is not
    over-weighted. Classes never seen get weight 1: they add no loss either way.
    Returns a (num_classes,) float32 tensor.
    """
    class_pixels = np.asarray(class_pixels, dtype=np.float64)
    image_pixels = np.asarray(image_pixels, dtype=np.float64)
    present = class_pixels > 0
    if not present.any():
        raise ValueError("no labelled pixels: cannot compute class weights")
    freq = np.zeros_like(class_pixels)
    freq[present] = class_pixels[present] / image_pixels[present]
    weights = np.ones_like(freq)
    weights[present] = (np.median(freq[present]) / freq[present]) ** power
    return torch.tensor(weights, dtype=torch.float32)


def _balance(
    per_pixel: torch.Tensor, positive: torch.Tensor, negative: torch.Tensor, reduction: str
) -> torch.Tensor:
    """Per image: positives' loss x |Y-|/|Y| + negatives' loss x |Y+|/|Y|; summed, over the batch."""
    dims = tuple(range(1, per_pixel.dim()))
    positives, negatives = positive.sum(dims).to(per_pixel.dtype), negative.sum(dims).to(per_pixel.dtype)
    counted = (positives + negatives).clamp(min=1)
    loss = (per_pixel * positive).sum(dims) * negatives / counted
    loss = loss + (per_pixel * negative).sum(dims) * positives / counted
    if reduction == "mean":
        loss = loss / counted
    return loss.sum() / per_pixel.shape[0]


def balanced_sigmoid_loss(logits: torch.Tensor, target: torch.Tensor, reduction: str = "sum") -> torch.Tensor:
    """HED's loss of (N, H, W) logits against an (N, H, W) target: 1 edge, 0 not, anything else
    (:data:`IGNORE_INDEX`, padding) left out. ``reduction="mean"`` divides each image's sum by its
    counted pixels, for the usual learning rates."""
    positive, negative = target == 1, target == 0
    per_pixel = F.binary_cross_entropy_with_logits(logits, positive.to(logits.dtype), reduction="none")
    return _balance(per_pixel, positive, negative, reduction)


def balanced_softmax_loss(logits: torch.Tensor, target: torch.Tensor, reduction: str = "sum") -> torch.Tensor:
    """FSDS's loss of (N, C, H, W) logits against an (N, H, W) class map (0 background, k a scale
    class): classes from C on, which this side cannot represent, count as background; positives
    are the pixels of any scale class. :data:`IGNORE_INDEX` is left out.

    The reference weighs by the batch's counts; with its one image per batch that is the image's,
    which this takes for every batch size, as HED's loss does.
    """
    counted = target != IGNORE_INDEX
    classes = torch.where(counted & (target < logits.shape[1]), target, 0)
    per_pixel = F.cross_entropy(logits, classes, reduction="none")
    return _balance(per_pixel, counted & (classes != 0), counted & (classes == 0), reduction)


class HEDLoss(nn.Module):
    """The sum of :func:`balanced_sigmoid_loss` over HED's outputs (the five sides and the fusion),
    each with loss weight 1 as in the reference."""

    def __init__(self, reduction: str = "sum"):
        super().__init__()
        self.reduction = reduction

    def forward(
        self, logits: torch.Tensor, target: torch.Tensor, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        return sum(
            balanced_sigmoid_loss(logits[:, i], target, self.reduction) for i in range(logits.shape[1])
        )


class FSDSLoss(nn.Module):
    """The sum of :func:`balanced_softmax_loss` over FSDS's outputs: each side (its own channels) and
    the fused five classes, each with loss weight 1 as in the reference."""

    def __init__(self, channels: tuple[int, ...], reduction: str = "sum"):
        super().__init__()
        self.channels, self.reduction = tuple(channels), reduction

    def forward(
        self, logits: torch.Tensor, target: torch.Tensor, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        if logits.shape[1] != sum(self.channels):
            raise ValueError(
                f"expected {sum(self.channels)} channels ({self.channels}), got {logits.shape[1]}"
            )
        parts = torch.split(logits, self.channels, dim=1)
        return sum(balanced_softmax_loss(part, target, self.reduction) for part in parts)
