"""The class-balanced losses of HED (sigmoid, edges) and FSDS (softmax over scales, skeletons).

Edges and skeletons are a few percent of the pixels, so each image's loss weighs its positive
pixels by the share of negatives and its negatives by the share of positives. Both follow the
reference Caffe layers: HED's ``SigmoidCrossEntropyLossLayer`` (s9xie/hed) and DeepSkeleton's
``SoftmaxWithLossLayer`` (zeakey/DeepSkeleton), summed over pixels and divided by the batch size.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from fcnseg.data.datasets import IGNORE_INDEX

__all__ = ["HEDLoss", "FSDSLoss", "balanced_sigmoid_loss", "balanced_softmax_loss"]


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
