"""Segmentation metrics from one confusion matrix, as in the original FCN ``score.py``.

The paper reports pixel accuracy, mean accuracy, mean IU and frequency-weighted IU,
all derived from a single (ground truth x prediction) histogram accumulated over the
whole evaluation set, so per-image matrices can simply be summed: over images, over
batches and over the processes of a ``torchrun``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from fcnseg import distributed
from fcnseg.accel import for_inference
from fcnseg.data.datasets import IGNORE_INDEX
from fcnseg.data.preprocess import preprocessing_of
from fcnseg.data.transforms import NetPairs, pad_collate
from fcnseg.infer.crf import CRFSettings, refine

__all__ = [
    "METRIC_NAMES",
    "OUT_OF_RANGE",
    "confusion_matrix",
    "evaluate_confusion",
    "format_metrics",
    "scores",
]

METRIC_NAMES = {
    "pixel_acc": "pixel acc.",
    "mean_acc": "mean acc.",
    "mean_iu": "mean IU",
    "fw_iu": "f.w. IU",
}
"""The paper's four metrics: the keys of :func:`scores` and how tables name them."""


OUT_OF_RANGE = ("error", "drop")
"""What :func:`confusion_matrix` does with ground-truth ids outside [0, num_classes) other than the
ignore label: refuse them, or drop them as the original ``score.py`` does."""


def _as_label_tensor(x: torch.Tensor | np.ndarray, name: str) -> torch.Tensor:
    """Class ids as int64, from integer, boolean or float arrays (Caffe's label blobs are float32).

    Float ids must be whole numbers: 2.5 is no class, and truncating it would count it as one.
    """
    if isinstance(x, np.ndarray) and any(stride < 0 for stride in x.strides):
        x = x.copy()  # torch refuses negative strides (``a[::-1]``)
    t = torch.as_tensor(x)
    if t.is_complex():
        raise ValueError(f"{name} must hold class ids, got dtype {t.dtype}")
    if t.is_floating_point():
        bad = t[~torch.isfinite(t) | (t != t.round())]
        if bad.numel():
            offending = torch.unique(bad)[:10].tolist()
            raise ValueError(f"{name} holds non-integral class ids {offending} (dtype {t.dtype})")
    return t.long()


def _as_label_map(t: torch.Tensor, name: str) -> torch.Tensor:
    """(N, 1, H, W) label blobs (Caffe's layout) lose their channel axis; other ranks stay."""
    if t.dim() == 4:
        if t.shape[1] != 1:
            raise ValueError(
                f"{name} of shape {tuple(t.shape)} is (N, C, H, W) with C={t.shape[1]}: pass class ids, "
                "e.g. the scores' argmax(1), not scores"
            )
        t = t[:, 0]
    if t.dim() not in (1, 2, 3):
        raise ValueError(
            f"expected {name} as (L,), (H, W), (N, H, W) or (N, 1, H, W) class ids, got shape {tuple(t.shape)}"
        )
    return t


def _without_unit_axes(shape: torch.Size) -> tuple[int, ...]:
    return tuple(size for size in shape if size != 1)


def _check_range(values: torch.Tensor, name: str, num_classes: int, hint: str = "") -> None:
    bad = values[(values < 0) | (values >= num_classes)]
    if bad.numel():
        offending = torch.unique(bad)[:10].tolist()
        raise ValueError(
            f"{name} holds class ids {offending} outside [0, {num_classes}) for num_classes={num_classes}{hint}"
        )


def confusion_matrix(
    pred: torch.Tensor | np.ndarray,
    target: torch.Tensor | np.ndarray,
    num_classes: int,
    ignore_index: int = IGNORE_INDEX,
    *,
    out_of_range: str = "error",
) -> torch.Tensor:
    """Count (ground truth, prediction) pairs over all labelled pixels.

    ``pred`` and ``target`` hold class ids as (L,) (flattened, as the original
    ``fast_hist`` takes them), (H, W), (N, H, W) or Caffe's (N, 1, H, W) label blob, of
    one shape up to axes of length 1 (``scores.argmax(1)`` against the blob). Ids may be integers, booleans or whole-numbered floats. Pixels whose
    target is ``ignore_index`` are dropped (PASCAL's void border). Any other target id
    outside [0, num_classes) is an error (``out_of_range="error"``), since it means the
    data and the net disagree with ``num_classes``; ``out_of_range="drop"`` drops those
    pixels too, which is what ``score.py`` does. Predictions at dropped pixels are not
    checked; elsewhere they must be in range.

    Returns a (num_classes, num_classes) int64 tensor on the target's device;
    rows are ground truth, columns prediction.
    """
    if num_classes < 1:
        raise ValueError(f"num_classes must be positive, got {num_classes}")
    if out_of_range not in OUT_OF_RANGE:
        raise ValueError(f"out_of_range must be one of {', '.join(OUT_OF_RANGE)}; got {out_of_range!r}")
    p = _as_label_map(_as_label_tensor(pred, "pred"), "pred")
    t = _as_label_map(_as_label_tensor(target, "target"), "target")
    if _without_unit_axes(p.shape) != _without_unit_axes(t.shape):
        raise ValueError(f"pred and target shapes differ: pred {tuple(p.shape)}, target {tuple(t.shape)}")
    p = p.to(t.device).reshape(t.shape)
    keep = t != ignore_index
    if out_of_range == "drop":
        keep &= (t >= 0) & (t < num_classes)
    t, p = t[keep], p[keep]
    hint = '; out_of_range="drop" drops such pixels as score.py does' if out_of_range == "error" else ""
    _check_range(t, "target", num_classes, hint)
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


def evaluate_confusion(
    model: nn.Module,
    dataset: Dataset,
    num_classes: int,
    *,
    batch_size: int = 1,
    device: torch.device | str = "cpu",
    context: distributed.Context | None = None,
    progress: bool = False,
    crf: CRFSettings | None = None,
    forward: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> torch.Tensor:
    """The (num_classes, num_classes) confusion matrix of ``model`` over ``dataset``.

    Images are preprocessed as the model's weights expect (``model.meta``) and scored
    at their own size; batches of several are padded with the ignore label, which the
    matrix skips. Under ``torchrun`` (``context``, whose device is used) each process
    scores every ``world_size``-th image and the matrices are summed. With ``crf`` the
    labels scored are the dense CRF's over each image's softmax (on the CPU). ``forward`` gives the
    scores (default: :func:`fcnseg.accel.for_inference`, float32; see
    :func:`fcnseg.infer.predict.inference_forward` for other precisions and backends).
    """
    context = context or distributed.Context(device=torch.device(device))
    shard = list(range(context.rank, len(dataset), context.world_size))
    loader = DataLoader(
        NetPairs(dataset, preprocessing_of(model)),
        batch_size=batch_size,
        sampler=[(0, i) for i in shard],
        collate_fn=pad_collate,
    )
    confusion = torch.zeros(num_classes, num_classes, dtype=torch.int64, device=context.device)
    was_training = model.training
    model.eval()
    forward = forward or for_inference(model)
    with torch.no_grad():
        batches = [shard[i : i + batch_size] for i in range(0, len(shard), batch_size)]
        for (images, labels), indices in zip(
            tqdm(loader, desc="validate", leave=False, disable=not progress), batches, strict=True
        ):
            labels = labels.to(context.device)
            scores = forward(images.to(context.device))
            pred = scores.argmax(1) if crf is None else _refined(scores, dataset, indices, crf)
            confusion += confusion_matrix(pred, labels, num_classes, IGNORE_INDEX)
    model.train(was_training)
    return distributed.all_reduce_sum(confusion, context).cpu()


def _refined(scores: torch.Tensor, dataset: Dataset, indices: list[int], crf: CRFSettings) -> torch.Tensor:
    """The dense CRF's labels for a padded batch of scores, each image refined at its own size."""
    pred = torch.zeros(scores.shape[0], *scores.shape[2:], dtype=torch.int64)
    probs = scores.float().softmax(1).cpu().numpy()
    for i, index in enumerate(indices):
        image = dataset[index][0]
        height, width = image.shape[:2]
        pred[i, :height, :width] = torch.from_numpy(
            refine(image, probs[i, :, :height, :width], are_probs=True, settings=crf)
        )
    return pred.to(scores.device)


def format_metrics(metrics: dict[str, Any], class_names: Sequence[str]) -> str:
    """The four metrics as one table row, then per-class IU, in percent; absent classes show '-'."""
    header = " | ".join(f"{name:>10}" for name in METRIC_NAMES.values())
    values = " | ".join(f"{100 * metrics[key]:10.1f}" for key in METRIC_NAMES)
    width = max(len("class"), *(len(n) for n in class_names))
    lines = [header, values, "", f"{'class':<{width}}  IU"]
    for name, iu in zip(class_names, metrics["per_class_iu"], strict=True):
        lines.append(f"{name:<{width}}  {'-' if math.isnan(iu) else f'{100 * iu:.1f}'}")
    return "\n".join(lines)
