"""Several classifications from one trunk: the two-headed SIFT Flow FCN (semantic and geometric)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from fcnseg.models.fcn import FCN


class MultiHeadFCN(FCN):
    """An FCN whose score channels are several heads, each with its own softmax.

    The original SIFT Flow nets give each head its own score layers (``score_fr_sem`` with 33
    outputs beside ``score_fr_geo`` with 3, and so on for every skip) and its own bilinear
    upsampling, over one shared trunk. Those 1x1 score layers side by side are one 1x1 layer with
    33 + 3 outputs, and with every upsampling frozen (bilinear, class by class) nothing mixes
    channels; so this net is an FCN of ``sum(heads)`` classes whose output :meth:`split` cuts into
    the heads: the same net, with one trunk pass. Learned upsampling would mix the heads, so it is
    refused.
    """

    def __init__(self, backbone: nn.Sequential, heads: Sequence[int], **options: Any) -> None:
        heads = tuple(int(h) for h in heads)
        if len(heads) < 2 or min(heads) < 1:
            raise ValueError(f"heads must be two or more class counts, got {heads}")
        frozen = options.setdefault("frozen_upsampling", "all")
        if frozen != "all":
            raise ValueError(f"a multi-head FCN keeps every upsampling frozen (bilinear), not {frozen!r}")
        super().__init__(backbone, sum(heads), **options)
        self.heads = heads

    def split(self, scores: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """(N, sum(heads), H, W) -> one (N, classes, H, W) score map per head."""
        return scores.split(self.heads, dim=1)
