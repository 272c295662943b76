"""Priors, box coding, matching, the MultiBox loss, NMS and VOC AP, against cases worked by hand."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from fcnseg.detection import (
    MultiBoxLoss,
    batched_nms,
    box_iou,
    decode,
    detect,
    encode,
    evaluate_detections,
    match_priors,
    nms,
    prior_boxes,
    voc_ap,
)
from fcnseg.detection.boxes import corners_to_centre

VAR = (0.1, 0.1, 0.2, 0.2)


def test_ssd300_has_8732_priors_in_caffe_order():
    priors = prior_boxes("ssd300")
    assert priors.shape == (8732, 4)
    s = 300.0
    first = [
        (4 / s, 4 / s, 30 / s, 30 / s),
        (4 / s, 4 / s, math.sqrt(30 * 60) / s, math.sqrt(30 * 60) / s),
        (4 / s, 4 / s, 30 * math.sqrt(2) / s, 30 / math.sqrt(2) / s),
        (4 / s, 4 / s, 30 / math.sqrt(2) / s, 30 * math.sqrt(2) / s),
        (12 / s, 4 / s, 30 / s, 30 / s),  # the next location along the row
    ]
    torch.testing.assert_close(priors[:5], torch.tensor(first))
    fc7 = priors[38 * 38 * 4 : 38 * 38 * 4 + 6]  # fc7's first location: ratios 1, max, 2, 1/2, 3, 1/3
    torch.testing.assert_close(fc7[:, 2] / fc7[:, 3], torch.tensor([1, 1, 2, 0.5, 3, 1 / 3]))
    torch.testing.assert_close(
        priors[-1], torch.tensor([0.5, 0.5, 264 / math.sqrt(2) / s, 264 * math.sqrt(2) / s])
    )
    assert priors[:, :2].max() > 1  # offset 0.5 at step 32 over 10 cells passes the edge: no clipping


def test_priors_of_another_size():
    priors = prior_boxes(
        "ssd300", image_size=(100, 200), map_sizes=[(2, 3), (1, 1), (1, 1), (1, 1), (1, 1), (1, 1)]
    )
    assert priors.shape == (2 * 3 * 4 + 3 * 6 + 4 + 4, 4)
    torch.testing.assert_close(priors[0], torch.tensor([4 / 200, 4 / 100, 30 / 200, 30 / 100]))
    with pytest.raises(ValueError, match="6 map sizes"):
        prior_boxes("ssd300", map_sizes=[(1, 1)])


def test_encode_by_hand_and_decode_inverts_it():
    prior = torch.tensor([[0.5, 0.5, 0.2, 0.2]])
    box = torch.tensor([[0.4, 0.45, 0.6, 0.65]])
    torch.testing.assert_close(encode(box, prior, VAR), torch.tensor([[0.0, 2.5, 0.0, 0.0]]))
    wide = torch.tensor([[0.3, 0.4, 0.7, 0.6]])  # twice as wide: log 2 / 0.2
    torch.testing.assert_close(encode(wide, prior, VAR), torch.tensor([[0.0, 0.0, math.log(2) / 0.2, 0.0]]))
    priors = prior_boxes("ssd300")
    boxes = torch.rand(8732, 2) * 0.5
    boxes = torch.cat([boxes, boxes + 0.05 + torch.rand(8732, 2) * 0.4], 1)
    torch.testing.assert_close(decode(encode(boxes, priors, VAR), priors, VAR), boxes, atol=1e-5, rtol=1e-5)


def test_iou_by_hand():
    a = torch.tensor([[0.0, 0.0, 0.5, 0.5]])
    b = torch.tensor(
        [[0.25, 0.25, 0.75, 0.75], [0.5, 0.5, 1.0, 1.0], [0.0, 0.0, 0.5, 0.5], [0.2, 0.2, 0.2, 0.2]]
    )
    torch.testing.assert_close(box_iou(a, b), torch.tensor([[0.0625 / 0.4375, 0.0, 1.0, 0.0]]))


def _corners(*boxes):
    return torch.tensor(boxes, dtype=torch.float32)


def test_matching_bipartite_then_per_prediction():
    priors = corners_to_centre(
        _corners(
            [0, 0, 0.5, 0.5],
            [0.5, 0, 1, 0.5],
            [0.1, 0.1, 0.6, 0.6],
            [0.5, 0.5, 1, 1],
            [0.02, 0.02, 0.52, 0.52],
        )
    )
    gts = _corners(
        [0, 0, 0.5, 0.5],  # prior 0 exactly; prior 4 at 0.856 too (per prediction)
        [0.03, 0.03, 0.53, 0.53],  # best prior is 4 (0.887) then 0 (0.79): bipartite gives it 4 ...
        [0.55, 0.55, 0.75, 0.75],  # overlaps only prior 3, by 0.16 < 0.5: bipartite still gives it 3
    )
    iou = box_iou(
        gts,
        torch.tensor(
            [
                [0, 0, 0.5, 0.5],
                [0.5, 0, 1, 0.5],
                [0.1, 0.1, 0.6, 0.6],
                [0.5, 0.5, 1, 1],
                [0.02, 0.02, 0.52, 0.52],
            ]
        ),
    )
    assert iou[1, 4] > iou[0, 4] and iou[2, 3] < 0.5 and iou[1, 2] > 0.5 > iou[0, 2]
    matched, best = match_priors(gts, priors, 0.5)
    # ... and prior 2 goes to box 1, its best overlap above 0.5, once the bipartite round is over
    assert matched.tolist() == [0, -1, 1, 2, 1]
    torch.testing.assert_close(best, iou.max(0).values)
    empty, overlap = match_priors(torch.zeros(0, 4), priors)
    assert empty.tolist() == [-1] * 5 and overlap.tolist() == [0.0] * 5


def _loss_by_hand(loc, conf, labels, codes, eligible, ratio=3):
    """The MultiBox loss written out prior by prior."""
    total, matches = 0.0, 0
    for n in range(loc.shape[0]):
        pos = [p for p in range(loc.shape[1]) if labels[n][p] > 0]
        matches += len(pos)
        for p in pos:
            diff = (loc[n, p] - codes[n][p]).abs()
            total += float(torch.where(diff < 1, 0.5 * diff**2, diff - 0.5).sum())
            total -= float(conf[n, p].log_softmax(0)[labels[n][p]])
        background = {p: -float(conf[n, p].log_softmax(0)[0]) for p in eligible[n]}
        hardest = sorted(background, key=lambda p: -background[p])[: ratio * len(pos)]
        total += sum(background[p] for p in hardest)
    return total / max(1, matches)


def test_loss_equals_the_sum_written_out():
    torch.manual_seed(0)
    priors = corners_to_centre(
        _corners(*[[x, y, x + 0.25, y + 0.25] for y in (0, 0.25, 0.5, 0.75) for x in (0, 0.25, 0.5, 0.75)])
    )
    loc, conf = torch.randn(2, 16, 4), torch.randn(2, 16, 3) * 2
    targets = [
        {"boxes": _corners([0.01, 0.0, 0.26, 0.25]), "labels": torch.tensor([2])},  # prior 0 only
        {"boxes": _corners([0.5, 0.5, 0.75, 0.75], [0.0, 0.75, 0.25, 1.0]), "labels": torch.tensor([1, 2])},
    ]
    criterion = MultiBoxLoss(priors, VAR)
    labels = [[0] * 16, [0] * 16]
    labels[0][0], labels[1][10], labels[1][12] = 2, 1, 2
    codes = [
        {0: encode(targets[0]["boxes"][:1], priors[:1], VAR)[0]},
        {
            10: encode(targets[1]["boxes"][:1], priors[10:11], VAR)[0],
            12: encode(targets[1]["boxes"][1:], priors[12:13], VAR)[0],
        },
    ]
    eligible = [[p for p in range(16) if labels[n][p] == 0] for n in range(2)]
    expected = _loss_by_hand(loc, conf, labels, codes, eligible)
    loss = criterion((loc.requires_grad_(), conf.requires_grad_()), targets)
    assert loss.item() == pytest.approx(expected, rel=1e-5)
    loss.backward()
    # mining: image 0 has 1 match so 3 negatives, 12 untouched priors have no gradient
    touched = (conf.grad[0].abs().sum(1) > 0).sum().item()
    assert touched == 1 + 3 and (conf.grad[1].abs().sum(1) > 0).sum().item() == 2 + 6


def test_images_without_objects_cost_nothing_and_give_no_nan():
    priors = prior_boxes("ssd300")
    loc = torch.randn(2, 8732, 4, requires_grad=True)
    conf = torch.randn(2, 8732, 5, requires_grad=True)
    empty = {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.long)}
    loss = MultiBoxLoss(priors)((loc, conf), [empty, empty])
    loss.backward()
    assert loss.item() == 0.0 and torch.isfinite(conf.grad).all() and torch.isfinite(loc.grad).all()
    one = {"boxes": _corners([0.1, 0.1, 0.4, 0.5]), "labels": torch.tensor([3])}
    mixed = MultiBoxLoss(priors)((loc, conf), [empty, one])
    assert math.isfinite(mixed.item()) and mixed.item() > 0


def test_degenerate_boxes_are_dropped_with_a_warning_never_nan():
    priors = prior_boxes("ssd300")
    loc, conf = torch.zeros(1, 8732, 4), torch.zeros(1, 8732, 3)
    good = _corners([0.1, 0.1, 0.4, 0.5])
    bad = _corners([0.2, 0.2, 0.2, 0.6], [0.5, 0.1, 0.3, 0.4], [0.1, 0.3, 0.5, 0.3])  # w 0, xmin > xmax, h 0
    criterion = MultiBoxLoss(priors)
    with pytest.warns(UserWarning, match="dropped 3 degenerate"):
        loss = criterion(
            (loc, conf), [{"boxes": torch.cat([good, bad]), "labels": torch.tensor([1, 2, 2, 1])}]
        )
    clean = criterion((loc, conf), [{"boxes": good, "labels": torch.tensor([1])}])
    assert loss.item() == pytest.approx(clean.item())
    with pytest.warns(UserWarning, match="degenerate"):
        only_bad = criterion((loc, conf), [{"boxes": bad, "labels": torch.tensor([1, 1, 1])}])
    assert only_bad.item() == 0.0


def test_all_ignored_targets_cost_nothing():
    priors = prior_boxes("ssd300")
    loc, conf = torch.randn(1, 8732, 4), torch.randn(1, 8732, 3)
    target = {
        "boxes": _corners([0.1, 0.1, 0.4, 0.5]),
        "labels": torch.tensor([1]),
        "difficult": torch.tensor([True]),
    }
    assert MultiBoxLoss(priors, use_difficult=False)((loc, conf), [target]).item() == 0.0
    assert MultiBoxLoss(priors, use_difficult=True)((loc, conf), [target]).item() > 0


def test_loss_refuses_bad_labels_and_sizes():
    priors = prior_boxes("ssd300")
    target = {"boxes": _corners([0.1, 0.1, 0.4, 0.5]), "labels": torch.tensor([0])}
    with pytest.raises(ValueError, match=r"must lie in 1..2"):
        MultiBoxLoss(priors)((torch.zeros(1, 8732, 4), torch.zeros(1, 8732, 3)), [target])
    with pytest.raises(ValueError, match="8732"):
        MultiBoxLoss(priors)((torch.zeros(1, 10, 4), torch.zeros(1, 10, 3)), [target])


def _greedy(boxes, scores, threshold):
    order, kept = scores.argsort(descending=True).tolist(), []
    for i in order:
        if all(box_iou(boxes[i : i + 1], boxes[j : j + 1]).item() <= threshold for j in kept):
            kept.append(i)
    return kept


def test_nms_by_hand_and_against_a_plain_loop():
    boxes = _corners([0, 0, 1, 1], [0.0, 0.2, 1.0, 1.2], [0.0, 0.5, 1.0, 1.5])
    # A-B IoU 0.8/1.2 = 0.67, B-C 0.7/1.3 = 0.54, A-C 0.5/1.5 = 0.33: B goes, so C stays
    assert nms(boxes, torch.tensor([0.9, 0.8, 0.7]), 0.45).tolist() == [0, 2]
    assert nms(boxes, torch.tensor([0.8, 0.9, 0.7]), 0.45).tolist() == [1]
    gen = torch.Generator().manual_seed(0)
    corner = torch.rand(3, 60, 2, generator=gen)
    sets = torch.cat([corner, corner + 0.1 + torch.rand(3, 60, 2, generator=gen) * 0.3], -1)
    scores = torch.rand(3, 60, generator=gen)
    keep = batched_nms(sets, scores, 0.45)
    for s in range(3):
        assert sorted(keep[s].nonzero()[:, 0].tolist()) == sorted(_greedy(sets[s], scores[s], 0.45))


def test_detect_keeps_the_best_of_overlapping_boxes_per_class():
    priors = corners_to_centre(
        _corners([0, 0, 0.5, 0.5], [0.02, 0, 0.52, 0.5], [0.5, 0.5, 1, 1], [0, 0, 0.1, 0.1])
    )
    conf = torch.full((1, 4, 3), -10.0)
    conf[..., 0] = 10.0  # background, unless set below
    conf[0, :3, 0] = 0.0
    conf[0, 0, 1], conf[0, 1, 1] = 5.0, 4.0  # two overlapping class-1 boxes: one survives
    conf[0, 2, 2] = 5.0
    conf[0, 1, 2] = 3.0  # the same box also a weaker class 2: classes do not suppress each other
    out = detect(torch.zeros(1, 4, 4), conf, priors, VAR, conf_threshold=0.01)[0]
    assert out["labels"].tolist() == [1, 2, 2]
    torch.testing.assert_close(out["boxes"][0], torch.tensor([0, 0, 0.5, 0.5]))
    assert (out["scores"][:-1] >= out["scores"][1:]).all()
    assert len(detect(torch.zeros(1, 4, 4), conf, priors, VAR, keep_top_k=1)[0]["scores"]) == 1


def test_voc_ap_by_hand():
    recall, precision = [0.5, 0.5, 1.0], [1.0, 0.5, 2 / 3]
    assert voc_ap(recall, precision, eleven_point=True) == pytest.approx((6 + 5 * 2 / 3) / 11)
    assert voc_ap(recall, precision, eleven_point=False) == pytest.approx(0.5 + 0.5 * 2 / 3)
    assert voc_ap([0.3], [1.0], eleven_point=True) == pytest.approx(4 / 11)


def test_evaluate_detections_by_hand():
    a, b, d = [0, 0, 0.4, 0.4], [0.5, 0.5, 0.9, 0.9], [0.0, 0.5, 0.3, 0.9]
    gts = [
        {"boxes": _corners(a), "labels": torch.tensor([1]), "difficult": torch.tensor([False])},
        {"boxes": _corners(b, d), "labels": torch.tensor([1, 1]), "difficult": torch.tensor([False, True])},
    ]
    dets = [
        {
            "boxes": _corners(a, [0.01, 0, 0.4, 0.4]),
            "scores": torch.tensor([0.9, 0.5]),
            "labels": torch.tensor([1, 1]),
        },
        {
            "boxes": _corners(d, [0.6, 0, 1, 0.3], b),
            "scores": torch.tensor([0.8, 0.7, 0.6]),
            "labels": torch.tensor([1, 1, 1]),
        },
    ]
    # by score: tp, difficult (ignored), fp, tp, duplicate (fp): recall .5 .5 .5 1 1, precision 1 1 .5 2/3 .5
    result = evaluate_detections(dets, gts, num_classes=3, inclusive=False)
    assert result["ap07"][1] == pytest.approx((6 + 5 * 2 / 3) / 11)
    assert result["ap"][1] == pytest.approx(0.5 + 0.5 * 2 / 3)
    assert math.isnan(result["ap"][2]) and result["map"] == pytest.approx(result["ap"][1])
    missed = evaluate_detections(
        [{"boxes": torch.zeros(0, 4), "scores": torch.zeros(0), "labels": torch.zeros(0)}] * 2, gts, 3
    )
    assert missed["map07"] == 0.0


def test_evaluate_detections_as_the_devkit_measures_pixels():
    """VOCevaldet.m: a box spans xmax - xmin + 1 pixels, and a match needs IoU >= 0.5."""
    truth = [{"boxes": np.array([[1.0, 1, 10, 10]]), "labels": np.array([1]), "difficult": np.array([False])}]

    def found(box):
        return [{"boxes": np.array([box], float), "scores": np.array([0.9]), "labels": np.array([1])}]

    # rows 1..5 of a 10x10-pixel box: 50 of 100 pixels, IoU exactly 0.5, a true positive
    assert evaluate_detections(found([1, 1, 10, 5]), truth, 2)["map07"] == 1.0
    # as continuous coordinates the same corners overlap 36 / 81: a miss
    assert evaluate_detections(found([1, 1, 10, 5]), truth, 2, inclusive=False)["map07"] == 0.0
    # IoU exactly at the threshold counts, in either measure
    exact = [{**truth[0], "boxes": np.array([[0.0, 0, 10, 10]])}]
    assert evaluate_detections(found([0, 0, 10, 5]), exact, 2, inclusive=False)["map07"] == 1.0
    assert evaluate_detections(found([1, 1, 10, 4]), truth, 2)["map07"] == 0.0  # 40 / 100


def test_cross_entropy_matches_log_softmax():  # the hand sum above relies on it
    x = torch.randn(4, 3)
    assert F.cross_entropy(x, torch.tensor([0, 1, 2, 0]), reduction="sum").item() == pytest.approx(
        -sum(x[i].log_softmax(0)[c].item() for i, c in enumerate([0, 1, 2, 0])), rel=1e-5
    )
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        MultiBoxLoss(prior_boxes("ssd300"))  # building it warns of nothing
