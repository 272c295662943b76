"""Several classifications from one trunk: the two-headed SIFT Flow FCN (semantic and geometric)."""

from __future__ import annotations

import re
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
    refused. The heads' names (:attr:`head_names`) are metadata, as class names are.
    """

    task = "siftflow"  # the fcnseg.tasks entry that trains and evaluates it: a loss and scores per head

    def __init__(self, backbone: nn.Sequential, heads: Sequence[int], **options: Any) -> None:
        heads = tuple(int(h) for h in heads)
        if len(heads) < 2 or min(heads) < 1:
            raise ValueError(f"heads must be two or more class counts, got {heads}")
        frozen = options.setdefault("frozen_upsampling", "all")
        if frozen != "all":
            raise ValueError(f"a multi-head FCN keeps every upsampling frozen (bilinear), not {frozen!r}")
        super().__init__(backbone, sum(heads), **options)
        self.heads = heads

    @property
    def head_names(self) -> tuple[str, ...]:
        """The heads' names in channel order, from ``meta["head_names"]`` (SIFT Flow's: semantic,
        geometric); ``head0``, ``head1``... where the metadata has none. They name output files, so
        each must be letters, digits, ``-`` or ``_``."""
        names = getattr(self, "meta", {}).get("head_names")
        if names is None:
            return tuple(f"head{i}" for i in range(len(self.heads)))
        names = tuple(names)
        if (
            len(names) != len(self.heads)
            or len(set(names)) != len(names)
            or not all(isinstance(n, str) and re.fullmatch(r"[\w-]+", n, re.ASCII) for n in names)
        ):
            raise ValueError(
                f"meta's head_names {list(names)} must be {len(self.heads)} distinct names of letters, "
                "digits, - or _, one per head"
            )
        return names

    def split(self, scores: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """(N, sum(heads), H, W) -> one (N, classes, H, W) score map per head."""
        return scores.split(self.heads, dim=1)
