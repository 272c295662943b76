"""Which output of an edge net a map is read from: HED's fused output, or its "merge" of the fused
output with the mean of the five side outputs (the variant the HED paper reports best)."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

__all__ = ["EDGE_OUTPUTS", "edge_output", "merge_thinned", "side_mean"]

EDGE_OUTPUTS = ("fuse", "merge")
"""``fuse``: the net's own map (HED's fused output, FSDS's fused skeleton). ``merge`` (HED only):
(fuse + mean of the sides) / 2, as s9xie/hed_release's ``examples/eval/merge_res.m``."""


def side_mean(model: nn.Module, logits: torch.Tensor) -> torch.Tensor:
    """HED's logits (N, 6, H, W) -> (N, H, W): the mean of the five side outputs' probabilities."""
    _require_hed(model)
    return torch.sigmoid(logits[:, :5]).mean(1)


def edge_output(model: nn.Module, logits: torch.Tensor, output: str = "fuse") -> torch.Tensor:
    """The (N, H, W) map in [0, 1] that ``output`` (:data:`EDGE_OUTPUTS`) reads from a net's logits.

    ``merge`` is the code's late merging, which weighs the fused map 1/2 and each side 1/10; the
    paper's text (eq. 5) averages the six maps equally. The reference averages the two maps after
    thinning each (:func:`merge_thinned`, which evaluation uses); a written map is the average
    before thinning, as every map fcnseg writes is unthinned.
    """
    if output not in EDGE_OUTPUTS:
        raise ValueError(f"edge output must be one of {', '.join(EDGE_OUTPUTS)}, got {output!r}")
    if output == "fuse":
        return model.edge_map(logits)
    return (model.edge_map(logits) + side_mean(model, logits)) / 2


def merge_thinned(fuse: np.ndarray, sides: np.ndarray, thin) -> np.ndarray:
    """merge_res.m: the mean of the fused map and the side mean, each thinned first by ``thin``
    (the evaluation's non-maximum suppression), as the reference averages its NMS results."""
    return (thin(fuse) + thin(sides)) / 2


def _require_hed(model: nn.Module) -> None:
    if getattr(model, "config", {}).get("arch") != "hed":
        arch = getattr(model, "config", {}).get("arch", type(model).__name__)
        raise ValueError(f"the merge output is HED's (its fused and five side outputs); this net is {arch}")
