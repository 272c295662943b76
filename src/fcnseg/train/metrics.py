"""Segmentation metrics from one confusion matrix, as in the original FCN ``score.py``.

The paper reports pixel accuracy, mean accuracy, mean IU and frequency-weighted IU,
all derived from a single (ground truth x prediction) histogram accumulated over the
whole evaluation set, so per-image matrices can simply be summed.
"""

from __future__ import annotations

import numpy as np
import torch

__all__ = ["confusion_matrix", "scores"]


def _as_label_tensor(x: torch.Tensor | np.ndarray, name: str) -> torch.Tensor:
    t = torch.as_tensor(x)
    if t.is_floating_point() or t.is_complex() or t.dtype == torch.bool:
        raise ValueError(f"{name} must hold integer class ids, got dtype {t.dtype}")
    return t.long()


def _check_range(values: torch.Tensor, name: str, num_classes: int) -> None:
    bad = values[(values < 0) | (values >= num_classes)]
    if bad.numel():
        offending = torch.unique(bad)[:10].tolist()
        raise ValueError(
            f"{name} holds class ids {offending} outside [0, {num_classes}) for num_classes={num_classes}"
        )


def confusion_matrix(
    pred: torch.Tensor | np.ndarray,
    target: torch.Tensor | np.ndarray,
    num_classes: int,
    ignore_index: int = 255,
) -> torch.Tensor:
    """Count (ground truth, prediction) pairs over all labelled pixels.

    ``pred`` and ``target`` are label maps of the same shape, (H, W) or (N, H, W).
    Pixels whose target is ``ignore_index`` are dropped (PASCAL's void border);
    any other id outside [0, num_classes) is an error rather than being silently
    dropped, since it means the data or the net disagree with ``num_classes``.
    Predictions at ignored pixels are not checked.

    Returns a (num_classes, num_classes) int64 tensor on the inputs' device;
    rows are ground truth, columns prediction.
    """
    if num_classes < 1:
        raise ValueError(f"num_classes must be positive, got {num_classes}")
    p = _as_label_tensor(pred, "pred")
    t = _as_label_tensor(target, "target")
    if p.shape != t.shape:
        raise ValueError(f"pred and target shapes differ: pred {tuple(p.shape)}, target {tuple(t.shape)}")
    if p.dim() not in (2, 3):
        raise ValueError(f"expected (H, W) or (N, H, W) label maps, got shape {tuple(p.shape)}")
    p = p.to(t.device)
    keep = t != ignore_index
    t, p = t[keep], p[keep]
    _check_range(t, "target", num_classes)
    _check_range(p, "pred", num_classes)
    counts = torch.bincount(t * num_classes + p, minlength=num_classes * num_classes)
    return counts.reshape(num_classes, num_classes)


def scores(confusion: torch.Tensor | np.ndarray) -> dict:
    """The paper's four metrics (fractions in [0, 1]) and per-class IU.

    ``confusion`` is a (K, K) matrix from :func:`confusion_matrix` (summed over
    images). Classes absent from the ground truth are left out of mean accuracy;
    classes absent from both ground truth and prediction have NaN IU and are left
    out of mean IU. A class that is predicted but never present scores IU 0.
    """
    hist = torch.as_tensor(confusion).detach().cpu().to(torch.float64)
    if hist.dim() != 2 or hist.shape[0] != hist.shape[1]:
        raise ValueError(f"confusion must be a square (K, K) matrix, got {tuple(hist.shape)}")
    total = hist.sum()
    if total <= 0:
        raise ValueError("confusion matrix is empty: no labelled pixels were counted")
    diag = hist.diag()
    gt_count = hist.sum(1)
    pred_count = hist.sum(0)
    # 0/0 gives NaN, which is how absent classes drop out of the nan-means.
    class_acc = diag / gt_count
    iu = diag / (gt_count + pred_count - diag)
    freq = gt_count / total
    present = freq > 0
    return {
        "pixel_acc": float(diag.sum() / total),
        "mean_acc": float(class_acc.nanmean()),
        "mean_iu": float(iu.nanmean()),
        "fw_iu": float((freq[present] * iu[present]).sum()),
        "per_class_iu": iu.tolist(),
    }
