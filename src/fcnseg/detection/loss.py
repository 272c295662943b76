"""SSD's MultiBox loss: smooth L1 on matched priors plus softmax cross-entropy with hard negatives."""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from fcnseg.detection.boxes import encode
from fcnseg.detection.matching import match_priors
from fcnseg.detection.priors import VARIANCES

__all__ = ["MultiBoxLoss", "valid_boxes"]


def valid_boxes(target: dict[str, torch.Tensor], where: str) -> dict[str, torch.Tensor]:
    """``target`` without the boxes that cannot be learned (zero or negative width or height, not
    finite), with a warning naming them: they would give an infinite regression target."""
    boxes = target["boxes"]
    good = torch.isfinite(boxes).all(1) & (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
    if not bool(good.all()):
        bad = [tuple(round(float(v), 4) for v in box) for box in boxes[~good][:5]]
        warnings.warn(
            f"{where}: dropped {int((~good).sum())} degenerate box(es) (xmin >= xmax or ymin >= ymax): {bad}",
            stacklevel=3,
        )
        return {key: value[good] for key, value in target.items()}
    return target


class MultiBoxLoss(nn.Module):
    """Caffe's MultiBoxLoss as ssd_pascal.py configures it.

    ``forward((loc (N, P, 4), conf (N, P, C)), targets)``: ``targets`` is one dict per image
    with ``boxes`` (n, 4) corners in [0, 1], ``labels`` (n,) in 1..C-1 (0 is the background)
    and optionally ``difficult`` (n,) bool. Priors are matched (:func:`match_priors`, IoU
    ``threshold``); matched priors regress their box's code (smooth L1) and classify its
    label; of the unmatched ones whose best IoU is below ``neg_overlap``, the
    ``neg_pos_ratio`` times as many as there are matches in the image with the highest
    background loss are classified as background (MAX_NEGATIVE mining). Both sums are
    divided by the number of matches in the batch, at least 1 (normalization VALID), so a
    batch without objects costs 0 and never NaN. Degenerate boxes are dropped with a
    warning; with ``use_difficult=False`` difficult boxes are left out.
    """

    def __init__(
        self,
        priors: torch.Tensor,
        variances: Sequence[float] = VARIANCES,
        threshold: float = 0.5,
        neg_pos_ratio: float = 3.0,
        neg_overlap: float = 0.5,
        loc_weight: float = 1.0,
        use_difficult: bool = True,
    ):
        super().__init__()
        self.register_buffer("priors", priors.float(), persistent=False)
        self.variances = tuple(variances)
        self.threshold, self.neg_pos_ratio, self.neg_overlap = threshold, neg_pos_ratio, neg_overlap
        self.loc_weight, self.use_difficult = loc_weight, use_difficult

    def targets(
        self, targets: Sequence[dict[str, torch.Tensor]], num_classes: int
    ) -> tuple[torch.Tensor, ...]:
        """(N, P) class of each prior (0: background), (N, P, 4) regression targets, (N, P) best IoU."""
        labels, codes, overlaps = [], [], []
        for i, target in enumerate(targets):
            target = valid_boxes(target, f"image {i} of the batch")
            if not self.use_difficult and "difficult" in target:
                target = {key: value[~target["difficult"].bool()] for key, value in target.items()}
            boxes, classes = target["boxes"].to(self.priors), target["labels"].long()
            if len(classes) and not bool(((classes >= 1) & (classes < num_classes)).all()):
                raise ValueError(
                    f"image {i} of the batch: box labels {classes.tolist()} must lie in 1..{num_classes - 1} "
                    "(0 is the background)"
                )
            matched, overlap = match_priors(boxes, self.priors, self.threshold)
            hit = matched >= 0
            label = (
                torch.where(hit, classes[matched.clamp(min=0)], 0)
                if len(classes)
                else torch.zeros_like(matched)
            )
            code = self.priors.new_zeros(self.priors.shape)
            if bool(hit.any()):
                code[hit] = encode(boxes[matched[hit]], self.priors[hit], self.variances)
            labels.append(label)
            codes.append(code)
            overlaps.append(overlap)
        return torch.stack(labels), torch.stack(codes), torch.stack(overlaps)

    def forward(
        self,
        outputs: tuple[torch.Tensor, torch.Tensor],
        targets: Sequence[dict[str, torch.Tensor]],
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """The loss of a batch; ``generator`` is unused (mining is deterministic)."""
        loc, conf = outputs
        if loc.shape[1] != self.priors.shape[0] or conf.shape[1] != self.priors.shape[0]:
            raise ValueError(
                f"the net predicts for {loc.shape[1]} priors but there are {self.priors.shape[0]}: "
                "is the input the size the priors were made for?"
            )
        if len(targets) != loc.shape[0]:
            raise ValueError(f"{loc.shape[0]} images but {len(targets)} targets")
        with torch.no_grad():
            labels, codes, overlaps = self.targets(targets, conf.shape[-1])
        positive = labels > 0
        matches = positive.sum()
        loc_loss = F.smooth_l1_loss(loc[positive].float(), codes[positive], reduction="sum", beta=1.0)
        ce = F.cross_entropy(conf.float().flatten(0, 1), labels.flatten(), reduction="none").view(
            labels.shape
        )
        with torch.no_grad():
            eligible = ~positive & (overlaps < self.neg_overlap)
            ranked = ce.masked_fill(~eligible, -torch.inf).argsort(1, descending=True).argsort(1)
            wanted = torch.minimum(positive.sum(1) * self.neg_pos_ratio, eligible.sum(1)).floor()
            negative = eligible & (ranked < wanted[:, None])
        conf_loss = ce[positive | negative].sum()
        return (self.loc_weight * loc_loss + conf_loss) / matches.clamp(min=1)

    def extra_repr(self) -> str:
        return (
            f"priors={self.priors.shape[0]}, threshold={self.threshold}, neg_pos_ratio={self.neg_pos_ratio}, "
            f"use_difficult={self.use_difficult}"
        )
