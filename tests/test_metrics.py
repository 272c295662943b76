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


def test_float_labels_and_wrong_rank_raise():
    with pytest.raises(ValueError, match="integer"):
        confusion_matrix(torch.zeros(2, 2), torch.zeros(2, 2, dtype=torch.long), 2)
    with pytest.raises(ValueError, match=r"\(H, W\)"):
        confusion_matrix(torch.zeros(4, dtype=torch.long), torch.zeros(4, dtype=torch.long), 2)


def test_empty_confusion_raises():
    hist = confusion_matrix(torch.tensor([[0]]), torch.tensor([[255]]), num_classes=2)
    assert hist.sum() == 0
    with pytest.raises(ValueError, match="empty"):
        scores(hist)
