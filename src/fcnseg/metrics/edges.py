"""Edge and skeleton scores as the benchmarks compute them: ODS, OIS and AP over 99 thresholds for
edges (the BSDS benchmark); for skeletons over 100, each map first divided by its maximum (FSDS's
evaluation, :func:`skeleton_counts`).

Each predicted map is thinned by non-maximum suppression (HED's evaluation runs the structured-edge
toolbox's ``edgesNmsMex`` first), cut at each threshold, thinned to one pixel (``bwmorph thin``) and
matched one-to-one to every annotator's boundaries within ``max_dist`` of the image diagonal
(``correspondPixels``). The matching and thinning are pyEdgeEval's ports of the benchmark's C++ and
MATLAB code (the ``edges`` extra). Recall counts the annotators' pixels that are matched; precision
the predicted pixels matched to any annotator. Like the benchmark's, the matching samples its sparse
graph with a time-seeded generator: a pixel or two may match differently from one run to the next.

An image with no ground-truth pixels (an empty edge map or skeleton) adds nothing to recall, which
counts annotated pixels, while every pixel predicted there is unmatched and lowers precision; its F
is 0 at every threshold, and in OIS it takes the threshold where it predicts the fewest pixels
(the benchmark's code would take the lowest, charging it with every weak response). Scores with no
ground-truth pixel in any image are undefined: :func:`scores` raises then.
"""

from __future__ import annotations

import contextlib
import io
import warnings
from collections.abc import Sequence

import numpy as np

from fcnseg.errors import MissingExtraError

__all__ = [
    "EDGE_MAX_DIST",
    "SKELETON_MAX_DIST",
    "edge_counts",
    "evaluate_edges",
    "evaluate_skeletons",
    "problems",
    "scores",
    "skeleton_counts",
    "suppress",
]

EDGE_MAX_DIST = 0.0075
"""The BSDS benchmark's matching tolerance, as a fraction of the image diagonal."""
SKELETON_MAX_DIST = 0.01
"""The skeleton benchmarks' tolerance (SYMMAX, SK506, SK-LARGE), a fraction of the diagonal."""
THRESHOLDS = 99
"""The BSDS benchmark's thresholds (``edgesEvalImg``'s ``thrs``)."""
SKELETON_THRESHOLDS = 100
"""The skeleton evaluation's (``skeval_demo.m``: ``opts.nthresh = 100``)."""
_MAX_FLOOR = 1e-6
"""forward_all.py divides by ``max(skeleton.max(), 1e-6)``: an empty map stays empty."""


def _edge_eval():
    try:
        # it prints a note about .mat readers on import, and imports a deprecated scipy name
        with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            from pyEdgeEval.common.binary_label import evaluate_boundaries_threshold_multiple_gts
            from pyEdgeEval.preprocess import fast_nms
    except ImportError:
        raise MissingExtraError(
            "edge and skeleton evaluation needs pyEdgeEval: pip install 'fcnseg[edges]'"
        ) from None
    return evaluate_boundaries_threshold_multiple_gts, fast_nms


def thresholds(count: int = THRESHOLDS) -> np.ndarray:
    """The benchmark's thresholds: ``count`` evenly spaced in (0, 1), ends excluded."""
    return np.linspace(1 / (count + 1), 1 - 1 / (count + 1), count)


def problems(prediction: np.ndarray, ground_truths: Sequence[np.ndarray]) -> list[str]:
    """What keeps one image's prediction and ground truths from being scored (empty when nothing):
    a prediction that is not an (H, W) map in [0, 1], ground truths missing or of another size."""
    prediction = np.asarray(prediction, dtype=np.float64)
    found = []
    if prediction.ndim != 2:
        found.append(f"the prediction must be an (H, W) map, got shape {prediction.shape}")
    nan = int(np.isnan(prediction).sum())
    if nan:
        found.append(f"the prediction has {nan} NaN pixel(s)")
    if nan < prediction.size:
        low, high = float(np.nanmin(prediction)), float(np.nanmax(prediction))
        if low < 0 or high > 1:
            hint = (
                " (an 8-bit map? divide it by 255)" if low >= 0 and high <= 255 and high.is_integer() else ""
            )
            found.append(f"the prediction's values lie in [{low:g}, {high:g}], not in [0, 1]{hint}")
    if prediction.ndim != 2:
        return found
    truths = _annotators(ground_truths)
    wrong = [f"annotator {k + 1} {t.shape}" for k, t in enumerate(truths) if t.shape != prediction.shape]
    if wrong:
        found.append(f"ground truths must have the prediction's size {prediction.shape}: {', '.join(wrong)}")
    elif not truths:
        found.append("no ground truth (give a list of (H, W) maps, one per annotator)")
    return found


def _annotators(ground_truths: Sequence[np.ndarray] | np.ndarray) -> list[np.ndarray]:
    """One image's annotators' maps: a list of (H, W) maps or a (K, H, W) array; one (H, W) map is one."""
    if isinstance(ground_truths, np.ndarray) and ground_truths.ndim == 2:
        return [ground_truths.astype(bool)]
    return [np.asarray(t, dtype=bool) for t in ground_truths]


def suppress(prediction: np.ndarray) -> np.ndarray:
    """An (H, W) map thinned by the evaluation's non-maximum suppression (the structured-edge
    toolbox's ``edgesNmsMex`` with r 1, s 5, m 1.01, as HED's ``nms_process.m`` and FSDS's ``nms.m``)."""
    _, fast_nms = _edge_eval()
    return fast_nms(np.asarray(prediction, dtype=np.float64), r=1, s=5, m=1.01)


def edge_counts(
    prediction: np.ndarray,
    ground_truths: Sequence[np.ndarray],
    *,
    max_dist: float = EDGE_MAX_DIST,
    nms: bool = True,
    count: int = THRESHOLDS,
) -> np.ndarray:
    """One image's (4, count) matches: matched and total annotator pixels, matched and total predicted
    pixels, at each threshold. Summed over images they give the data set's scores (:func:`scores`).
    ``prediction``: (H, W) in [0, 1]; ``ground_truths``: the annotators' (H, W) maps."""
    evaluate, _ = _edge_eval()
    found = problems(prediction, ground_truths)
    if found:
        raise ValueError("; ".join(found))
    prediction = np.asarray(prediction, dtype=np.float64)
    if nms:
        prediction = suppress(prediction)
    matched_r, total_r, matched_p, total_p = evaluate(
        thresholds(count),
        prediction,
        _annotators(ground_truths),
        max_dist=max_dist,
        apply_thinning=True,
        apply_nms=False,
    )
    return np.stack([matched_r, total_r, matched_p, total_p])


def skeleton_counts(
    prediction: np.ndarray,
    skeleton: np.ndarray,
    *,
    max_dist: float = SKELETON_MAX_DIST,
    nms: bool = True,
) -> np.ndarray:
    """One image's (4, 100) matches as FSDS's evaluation counts them: the (H, W) map in [0, 1] divided
    by its maximum (zeakey/skeleton's forward_all.py saves it so, and skeval_demo.m divides again),
    then NMS and 100 thresholds against the (H, W) skeleton. Without the division a net whose maps
    peak at different heights in different images is cut at thresholds that mean different things
    in each. Summed over images they give :func:`scores`."""
    found = problems(prediction, [skeleton])
    if found:
        raise ValueError("; ".join(found))
    prediction = np.asarray(prediction, dtype=np.float64)
    prediction = prediction / max(float(prediction.max()), _MAX_FLOOR)
    return edge_counts(prediction, [skeleton], max_dist=max_dist, nms=nms, count=SKELETON_THRESHOLDS)


def _rpf(counts: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    matched_r, total_r, matched_p, total_p = counts
    recall = matched_r / np.where(total_r == 0, 1, total_r)
    precision = matched_p / np.where(total_p == 0, 1, total_p)
    f = 2 * precision * recall / np.where(precision + recall == 0, 1, precision + recall)
    return recall, precision, f


def _best_interpolated(recall: np.ndarray, precision: np.ndarray) -> float:
    """The best F on the segments between neighbouring thresholds (the benchmark's ``findBestRPF``)."""
    t = np.linspace(0, 1, 101)[:, None]
    r = recall[1:] * t + recall[:-1] * (1 - t)
    p = precision[1:] * t + precision[:-1] * (1 - t)
    f = 2 * p * r / np.where(p + r == 0, 1, p + r)
    first = 2 * precision[0] * recall[0] / max(precision[0] + recall[0], 1e-300)
    return float(max(first, f.max(initial=0)))


def scores(per_image: Sequence[np.ndarray]) -> dict[str, float]:
    """ODS (the best F at one threshold for all images), OIS (each image at its best threshold) and
    AP (precision averaged over recall 0, 0.01, ..., 1 along the curve) from :func:`edge_counts`."""
    total = np.sum(per_image, axis=0)
    recall, precision, _ = _rpf(total)
    ods = _best_interpolated(recall, precision)
    if not total[1].any():
        raise ValueError(
            f"none of the {len(per_image)} image(s) has a ground-truth pixel: recall, and with it ODS, OIS "
            "and AP, is undefined (are the ground truths empty, or read at the wrong threshold?)"
        )
    best = np.zeros(4)
    for counts in per_image:
        unannotated = not counts[1].any()  # F is 0 everywhere: the fewest false positives is its best
        best += counts[:, int(np.argmin(counts[3]) if unannotated else np.argmax(_rpf(counts)[2]))]
    ois = float(_rpf(best[:, None])[2][0])
    order = np.argsort(recall, kind="stable")
    r, first = np.unique(recall[order], return_index=True)
    p = precision[order][first]
    ap = 0.0
    if len(r) > 1:
        grid = np.linspace(0, 1, 101)
        inside = (grid >= r[0]) & (grid <= r[-1])
        ap = float(np.interp(grid[inside], r, p).sum() / 100)
    return {"ods": ods, "ois": ois, "ap": ap}


def _check_all(predictions: Sequence[np.ndarray], ground_truths: Sequence[Sequence[np.ndarray]]) -> None:
    """Every image's :func:`problems`, raised together: one run reports all that is wrong."""
    if len(predictions) != len(ground_truths):
        raise ValueError(f"{len(predictions)} predictions but {len(ground_truths)} ground truths")
    if not predictions:
        raise ValueError("nothing to evaluate: no predictions")
    found = [
        f"image {i}: {p}"
        for i, pair in enumerate(zip(predictions, ground_truths, strict=True))
        for p in problems(*pair)
    ]
    if found:
        raise ValueError(
            f"{len(found)} problem(s) with the predictions or ground truths:\n  " + "\n  ".join(found)
        )


def evaluate_edges(
    predictions: Sequence[np.ndarray],
    ground_truths: Sequence[Sequence[np.ndarray]],
    *,
    max_dist: float = EDGE_MAX_DIST,
    nms: bool = True,
) -> dict[str, float]:
    """ODS, OIS and AP of edge maps (each (H, W) in [0, 1]) against each image's annotators' boundary
    maps (a list of (H, W) bool maps per image), as the BSDS benchmark scores them. Every image is
    checked first and all problems (sizes, NaN, values outside [0, 1]) are raised together."""
    _check_all(predictions, ground_truths)
    return scores(
        [
            edge_counts(p, t, max_dist=max_dist, nms=nms)
            for p, t in zip(predictions, ground_truths, strict=True)
        ]
    )


def evaluate_skeletons(
    predictions: Sequence[np.ndarray],
    ground_truths: Sequence[np.ndarray],
    *,
    max_dist: float = SKELETON_MAX_DIST,
) -> dict[str, float]:
    """The skeleton benchmarks' scores of skeleton maps (each (H, W) in [0, 1]) against one (H, W)
    bool skeleton per image, as FSDS's evaluation computes them (:func:`skeleton_counts`: each map
    divided by its maximum, the same NMS, 100 thresholds, their tolerance). ``ods`` is the
    F-measure these benchmarks report. Every image is checked first, as :func:`evaluate_edges` does."""
    _check_all(predictions, [[truth] for truth in ground_truths])
    return scores(
        [skeleton_counts(p, t, max_dist=max_dist) for p, t in zip(predictions, ground_truths, strict=True)]
    )
