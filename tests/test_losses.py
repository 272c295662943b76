"""Tests for the per-pixel softmax loss, loss sampling and median-frequency class weights."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from fcnseg.tasks.losses import (
    class_pixel_counts,
    loss_sampling_mask,
    median_frequency_weights,
    segmentation_loss,
)


def scores_and_target(n=2, c=4, h=6, w=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    scores = torch.randn(n, c, h, w, generator=g)
    target = torch.randint(0, c, (n, h, w), generator=g)
    return scores, target


def test_sum_is_summed_log_loss_and_mean_divides_by_pixels():
    scores, target = scores_and_target()
    per_pixel = -F.log_softmax(scores, 1).gather(1, target[:, None])[:, 0]
    total = segmentation_loss(scores, target, reduction="sum")
    mean = segmentation_loss(scores, target, reduction="mean")
    assert total.item() == pytest.approx(per_pixel.sum().item(), rel=1e-6)
    assert mean.item() == pytest.approx(per_pixel.sum().item() / target.numel(), rel=1e-6)
    assert mean.item() == pytest.approx(F.cross_entropy(scores, target).item(), rel=1e-6)


def test_uniform_scores_give_log_c_per_pixel():
    scores = torch.zeros(1, 5, 3, 4)
    target = torch.zeros(1, 3, 4, dtype=torch.int64)
    assert segmentation_loss(scores, target).item() == pytest.approx(12 * math.log(5), rel=1e-6)


def test_ignored_pixels_add_nothing():
    scores, target = scores_and_target()
    ignored = target.clone()
    ignored[:, :3] = 255
    kept = segmentation_loss(scores[:, :, 3:], target[:, 3:], reduction="sum")
    assert segmentation_loss(scores, ignored, reduction="sum").item() == pytest.approx(kept.item(), rel=1e-6)
    mean = segmentation_loss(scores, ignored, reduction="mean")
    assert mean.item() == pytest.approx(kept.item() / target[:, 3:].numel(), rel=1e-6)


def test_all_ignored_gives_zero_not_nan():
    scores, target = scores_and_target()
    target[:] = 255
    for reduction in ("sum", "mean"):
        assert segmentation_loss(scores, target, reduction=reduction).item() == 0.0


def test_class_weights_match_weighted_cross_entropy():
    scores, target = scores_and_target()
    weight = torch.tensor([0.5, 2.0, 1.0, 3.0])
    expected = F.cross_entropy(scores, target, weight=weight)
    assert segmentation_loss(scores, target, reduction="mean", weight=weight).item() == pytest.approx(
        expected.item(), rel=1e-6
    )
    expected_sum = F.cross_entropy(scores, target, weight=weight, reduction="sum")
    assert segmentation_loss(scores, target, weight=weight).item() == pytest.approx(
        expected_sum.item(), rel=1e-6
    )


def test_gradient_of_sum_is_unnormalised():
    scores, target = scores_and_target()
    a = scores.clone().requires_grad_()
    b = scores.clone().requires_grad_()
    segmentation_loss(a, target, reduction="sum").backward()
    segmentation_loss(b, target, reduction="mean").backward()
    torch.testing.assert_close(a.grad, b.grad * target.numel())


def test_sampling_with_p_one_is_the_full_loss():
    scores, target = scores_and_target()
    full = segmentation_loss(scores, target)
    sampled = segmentation_loss(scores, target, keep_prob=1.0, generator=torch.Generator().manual_seed(3))
    assert sampled.item() == full.item()


def test_sampling_keeps_about_p_of_the_terms():
    mask = loss_sampling_mask((4, 100, 100), 0.3, generator=torch.Generator().manual_seed(0))
    assert mask.shape == (4, 100, 100)
    assert mask.float().mean().item() == pytest.approx(0.3, abs=0.01)
    # Independent per image: the masks of two images differ.
    assert (mask[0] != mask[1]).any()


def test_batch_scope_shares_one_mask():
    mask = loss_sampling_mask((3, 20, 30), 0.5, scope="batch", generator=torch.Generator().manual_seed(0))
    assert torch.equal(mask[0], mask[1]) and torch.equal(mask[1], mask[2])
    assert 0.35 < mask.float().mean().item() < 0.65


def test_cells_are_kept_or_dropped_whole():
    mask = loss_sampling_mask((2, 64, 70), 0.5, cell=32, generator=torch.Generator().manual_seed(1))
    cells = mask[:, :64, :64].reshape(2, 2, 32, 2, 32)
    assert torch.equal(cells.amin((2, 4)), cells.amax((2, 4)))
    assert mask.shape == (2, 64, 70)


def test_sampling_is_deterministic_with_a_generator():
    scores, target = scores_and_target(h=30, w=30)
    a = segmentation_loss(scores, target, keep_prob=0.5, generator=torch.Generator().manual_seed(7))
    b = segmentation_loss(scores, target, keep_prob=0.5, generator=torch.Generator().manual_seed(7))
    c = segmentation_loss(scores, target, keep_prob=0.5, generator=torch.Generator().manual_seed(8))
    assert a.item() == b.item()
    assert a.item() != c.item()


def test_sampled_sum_matches_the_kept_terms():
    scores, target = scores_and_target(h=30, w=30)
    per_pixel = F.cross_entropy(scores, target, reduction="none")
    mask = loss_sampling_mask(tuple(target.shape), 0.4, generator=torch.Generator().manual_seed(5))
    loss = segmentation_loss(scores, target, keep_prob=0.4, generator=torch.Generator().manual_seed(5))
    assert loss.item() == pytest.approx(per_pixel[mask].sum().item(), rel=1e-6)
    mean = segmentation_loss(
        scores, target, reduction="mean", keep_prob=0.4, generator=torch.Generator().manual_seed(5)
    )
    assert mean.item() == pytest.approx(per_pixel[mask].mean().item(), rel=1e-6)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"reduction": "avg"},
        {"keep_prob": 0.0},
        {"keep_prob": 1.5},
        {"sampling_scope": "pixel", "keep_prob": 0.5},
    ],
)
def test_bad_options_are_errors(kwargs):
    scores, target = scores_and_target()
    with pytest.raises(ValueError):
        segmentation_loss(scores, target, **kwargs)


def test_shape_mismatch_is_an_error():
    scores, target = scores_and_target()
    with pytest.raises(ValueError, match="expected scores"):
        segmentation_loss(scores, target[:, :-1])


def test_median_frequency_weights():
    # Image 1: 6 px of class 0, 2 of class 1. Image 2: 4 px of class 0, 4 of class 2 (and 2 ignored).
    labels = [
        np.array([[0, 0, 0, 1], [0, 0, 0, 1]]),
        np.array([[0, 0, 2, 2, 255], [0, 0, 2, 2, 255]]),
    ]
    class_pixels, image_pixels = class_pixel_counts(labels, num_classes=4)
    np.testing.assert_array_equal(class_pixels, [10, 2, 4, 0])
    np.testing.assert_array_equal(image_pixels, [16, 8, 8, 0])
    weights = median_frequency_weights(class_pixels, image_pixels)
    freq = np.array([10 / 16, 2 / 8, 4 / 8])
    expected = np.median(freq) / freq
    np.testing.assert_allclose(weights[:3].numpy(), expected, rtol=1e-6)
    assert weights[3].item() == 1.0  # never seen: neutral
    gentle = median_frequency_weights(class_pixels, image_pixels, power=0.5)
    np.testing.assert_allclose(gentle[:3].numpy(), np.sqrt(expected), rtol=1e-6)
    assert gentle[3].item() == 1.0


def test_class_counts_reject_foreign_ids():
    with pytest.raises(ValueError, match="outside"):
        class_pixel_counts([np.array([[0, 7]])], num_classes=3)
