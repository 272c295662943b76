"""Tests for the confusion matrix and the paper's four metrics, against hand arithmetic."""

import math

import numpy as np
import pytest
import torch

from fcnseg.metrics.segmentation import confusion_matrix, scores

# Three classes, one ignored pixel. Counted (gt, pred) pairs:
# (0,0) (0,1) (1,1) (1,2) (2,2)
TARGET = torch.tensor([[0, 0, 1], [1, 2, 255]])
PRED = torch.tensor([[0, 1, 1], [2, 2, 0]])
HIST = [[1, 1, 0], [0, 1, 1], [0, 0, 1]]


def test_confusion_matrix_counts_rows_gt_cols_pred():
    hist = confusion_matrix(PRED, TARGET, num_classes=3)
    assert hist.dtype == torch.int64
    assert hist.device.type == "cpu"
    assert hist.tolist() == HIST


def test_confusion_matrix_accepts_numpy_and_batches_sum():
    batch_t = np.stack([TARGET.numpy(), TARGET.numpy()[::-1]])
    batch_p = np.stack([PRED.numpy(), PRED.numpy()[::-1]])
    hist = confusion_matrix(batch_p, batch_t, num_classes=3)
    # The flipped copy holds the same pixel pairs, so every count doubles.
    assert hist.tolist() == [[2 * v for v in row] for row in HIST]


def test_scores_by_hand():
    s = scores(torch.tensor(HIST))
    # diag = [1, 1, 1], total = 5
    assert s["pixel_acc"] == pytest.approx(3 / 5)
    # gt counts (row sums) = [2, 2, 1] -> class acc [1/2, 1/2, 1/1]
    assert s["mean_acc"] == pytest.approx((1 / 2 + 1 / 2 + 1) / 3)
    # pred counts (column sums) = [1, 2, 2]
    # iu = diag / (gt + pred - diag) = [1/(2+1-1), 1/(2+2-1), 1/(1+2-1)] = [1/2, 1/3, 1/2]
    assert s["per_class_iu"] == pytest.approx([1 / 2, 1 / 3, 1 / 2])
    assert s["mean_iu"] == pytest.approx((1 / 2 + 1 / 3 + 1 / 2) / 3)
    # freq = [2/5, 2/5, 1/5]; fw = 2/5*1/2 + 2/5*1/3 + 1/5*1/2 = 13/30
    assert s["fw_iu"] == pytest.approx(13 / 30)
    assert all(isinstance(s[k], float) for k in ("pixel_acc", "mean_acc", "mean_iu", "fw_iu"))


def test_scores_absent_classes():
    # Four classes: 2 is predicted once but never in the ground truth, 3 appears nowhere.
    target = torch.tensor([[0, 0], [1, 1]])
    pred = torch.tensor([[0, 2], [1, 1]])
    hist = confusion_matrix(pred, target, num_classes=4)
    assert hist.tolist() == [[1, 0, 1, 0], [0, 2, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0]]
    s = scores(hist)
    assert s["pixel_acc"] == pytest.approx(3 / 4)
    # class acc = [1/2, 2/2, nan, nan]: absent ground-truth classes are left out
    assert s["mean_acc"] == pytest.approx((1 / 2 + 1) / 2)
    # iu = [1/(2+1-1), 2/(2+2-2), 0/(0+1-0), 0/0] = [1/2, 1, 0, nan]
    iu = s["per_class_iu"]
    assert iu[:3] == pytest.approx([1 / 2, 1.0, 0.0])
    assert math.isnan(iu[3])
    # a predicted-but-absent class counts as IU 0; the class absent everywhere is left out
    assert s["mean_iu"] == pytest.approx((1 / 2 + 1 + 0) / 3)
    # freq = [1/2, 1/2, 0, 0]; fw = 1/2*1/2 + 1/2*1
    assert s["fw_iu"] == pytest.approx(3 / 4)


def test_perfect_prediction_scores_one():
    target = torch.tensor([[0, 1], [2, 255]])
    s = scores(confusion_matrix(target.clamp(max=2), target, num_classes=3))
    assert s["pixel_acc"] == s["mean_acc"] == s["mean_iu"] == s["fw_iu"] == pytest.approx(1.0)


def test_custom_ignore_index_and_unchecked_ignored_predictions():
    target = torch.tensor([[1, -1]])
    pred = torch.tensor([[1, 99]])
    hist = confusion_matrix(pred, target, num_classes=2, ignore_index=-1)
    assert hist.tolist() == [[0, 0], [0, 1]]


def test_out_of_range_target_names_value_and_num_classes():
    with pytest.raises(ValueError, match=r"target.*\[3, 7\].*num_classes=3"):
        confusion_matrix(torch.zeros(2, 2, dtype=torch.long), torch.tensor([[0, 3], [7, 255]]), 3)


def test_out_of_range_prediction_raises():
    with pytest.raises(ValueError, match=r"pred.*\[-1\].*num_classes=2"):
        confusion_matrix(torch.tensor([[0, -1]]), torch.tensor([[0, 1]]), 2)


def test_shape_mismatch_names_both_shapes():
    with pytest.raises(ValueError, match=r"\(2, 3\).*\(3, 2\)"):
        confusion_matrix(torch.zeros(2, 3, dtype=torch.long), torch.zeros(3, 2, dtype=torch.long), 2)


def test_non_integral_labels_and_wrong_shapes_raise():
    with pytest.raises(ValueError, match=r"pred holds non-integral class ids \[0\.5, nan\]"):
        confusion_matrix(torch.tensor([[0.5, float("nan")], [0, 1]]), torch.zeros(2, 2, dtype=torch.long), 2)
    with pytest.raises(ValueError, match=r"target holds non-integral class ids \[1\.25\]"):
        confusion_matrix(np.zeros((2, 2), np.int64), np.array([[0, 1.25], [0, 255]], np.float32), 2)
    with pytest.raises(ValueError, match=r"\(N, C, H, W\) with C=3.*argmax"):
        confusion_matrix(torch.zeros(1, 3, 2, 2), torch.zeros(1, 1, 2, 2), 3)
    with pytest.raises(ValueError, match=r"\(N, 1, H, W\).*\(1, 1, 1, 2, 2\)"):
        confusion_matrix(torch.zeros(1, 1, 1, 2, 2), torch.zeros(1, 1, 1, 2, 2), 3)
    with pytest.raises(ValueError, match=r"pred \(4,\), target \(2, 2\)"):
        confusion_matrix(torch.zeros(4, dtype=torch.long), torch.zeros(2, 2, dtype=torch.long), 2)
    with pytest.raises(ValueError, match="out_of_range must be one of error, drop"):
        confusion_matrix(PRED, TARGET, 3, out_of_range="clip")


def test_out_of_range_target_error_points_to_drop():
    with pytest.raises(ValueError, match='out_of_range="drop"'):
        confusion_matrix(PRED, TARGET.clamp(max=3), 3)


def fast_hist(a: np.ndarray, b: np.ndarray, n: int) -> np.ndarray:
    """The original ``score.py``'s histogram, verbatim: ground truth ``a`` and prediction ``b``, flattened."""
    k = (a >= 0) & (a < n)
    return np.bincount(n * a[k].astype(int) + b[k], minlength=n**2).reshape(n, n)


@pytest.mark.parametrize("seed", range(20))
def test_every_input_score_py_takes_counts_as_fast_hist(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(1, 30))
    batch, height, width = (int(v) for v in rng.integers(1, 9, size=3))
    pred = rng.integers(0, n, size=(batch, height, width))
    # ids past num_classes and the void label 255, which score.py drops with the rest of [n, inf)
    target = rng.integers(0, n + 3, size=(batch, height, width))
    target[rng.random(target.shape) < 0.2] = 255
    expected = fast_hist(target.flatten(), pred.flatten(), n)
    assert expected.sum() == ((target < n) & (target >= 0)).sum()

    blob = target[:, None].astype(np.float32)  # Caffe's label blob, (N, 1, H, W) float32
    forms = [
        (pred, target),
        (pred.ravel(), target.ravel()),  # fast_hist's own flattened inputs
        (pred, blob),
        (pred[:, None], blob),
        (pred.astype(np.float64), target.astype(np.float64)),
        (pred.astype(np.uint8), target.astype(np.uint8)),
        (pred.astype(np.int32), target.astype(np.int16)),
        (torch.from_numpy(pred), torch.from_numpy(blob)),
        (pred[:, ::-1], target[:, ::-1]),  # negative strides: the same pixel pairs
    ]
    for p, t in forms:
        hist = confusion_matrix(p, t, n, out_of_range="drop")
        assert hist.dtype == torch.int64
        np.testing.assert_array_equal(hist.numpy(), expected)
    for i in range(batch):  # one image at a time, as compute_hist adds them up
        np.testing.assert_array_equal(
            confusion_matrix(pred[i], blob[i : i + 1], n, out_of_range="drop").numpy(),
            fast_hist(blob[i, 0].flatten(), pred[i].flatten(), n),
        )
    # where the ground truth holds only [0, n) and 255, the strict default counts the same
    in_range = np.where(target < n, target, 255)
    np.testing.assert_array_equal(
        confusion_matrix(pred, in_range[:, None].astype(np.float32), n).numpy(),
        fast_hist(in_range.flatten(), pred.flatten(), n),
    )


def test_boolean_masks_are_two_classes():
    target = np.array([[True, False], [True, True]])
    pred = np.array([[True, True], [False, True]])
    assert confusion_matrix(pred, target, 2).tolist() == fast_hist(target.ravel(), pred.ravel(), 2).tolist()


def test_empty_confusion_raises():
    hist = confusion_matrix(torch.tensor([[0]]), torch.tensor([[255]]), num_classes=2)
    assert hist.sum() == 0
    with pytest.raises(ValueError, match="empty"):
        scores(hist)
