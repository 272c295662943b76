"""Tiled inference: stride-aligned, margin-trimmed tiles reproduce the whole-image scores."""

import numpy as np
import pytest
import torch
from tiny_nets import TINY, tiny_fcn

import fcnseg
from fcnseg.infer import predict as predict_module
from fcnseg.infer.predict import predict
from fcnseg.infer.tiling import (
    TilePlan,
    activation_bytes,
    context_margin,
    output_stride,
    parse_memory,
    plan_tiles,
    ramp,
    receptive_field,
    tile_spans,
    tiled_scores,
)


def test_geometry_of_the_paper_nets():
    vgg, alexnet = fcnseg.build_model("fcn8s", widths=TINY), tiny_fcn("fcn-alexnet", 3)
    assert receptive_field(vgg) == 404 and output_stride(vgg) == 32 and context_margin(vgg) == 288
    assert receptive_field(alexnet) == 355 and output_stride(alexnet) == 32 and context_margin(alexnet) == 256


def test_tile_spans_cover_the_axis_with_stride_aligned_starts():
    plan = TilePlan(tile=704, step=96, margin=288)
    assert tile_spans(900, plan) == [(0, 704), (96, 800), (192, 896), (288, 900)]
    assert tile_spans(500, plan) == [(0, 500)]
    assert tile_spans(704, plan) == [(0, 704)]


def test_ramp_is_zero_in_the_margin_then_linear():
    plan = TilePlan(tile=10, step=4, margin=1)  # overlap 6: ramp over 4 pixels after 1 of margin
    np.testing.assert_allclose(ramp(10, plan, True, False), [0, 0.125, 0.375, 0.625, 0.875, 1, 1, 1, 1, 1])
    np.testing.assert_allclose(ramp(10, plan, False, True), ramp(10, plan, True, False).flip(0))
    assert ramp(10, plan, False, False).eq(1).all()
    with pytest.raises(ValueError, match="overlap > 2"):
        TilePlan(tile=10, step=8, margin=1)


def test_tiled_scores_equal_whole_image_scores(tiny_model):
    model = tiny_model
    stride, margin = output_stride(model), context_margin(model)
    plan = TilePlan(tile=2 * margin + 2 * stride + 64, step=stride + 64, margin=margin)
    width = plan.tile + 2 * plan.step + 50  # three tiles at least
    if model.config["arch"].startswith("tv-fcn"):  # its resize scales by h / H: the same in every
        width -= 2  # tile only where every side is a multiple of its stride (8)
    x = torch.randn(1, model.in_channels, 16, width, generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        whole = model(x)
        tiled = tiled_scores(model, x, model.num_classes, plan)
    assert len(tile_spans(width, plan)) >= 3
    # float rounding only: measured max |diff| / max |score| is about 1e-7
    assert (tiled - whole).abs().max() <= 1e-5 * whole.abs().max()
    assert torch.equal(tiled.argmax(1), whole.argmax(1))


def test_tiles_off_the_stride_grid_or_without_margin_do_not_match():
    """Why the plan is what it is: both rules are needed for exact scores."""
    model = tiny_fcn(num_classes=3)
    x = torch.randn(1, 3, 16, 900, generator=torch.Generator().manual_seed(2))
    with torch.inference_mode():
        whole = model(x)
        misaligned = tiled_scores(model, x, 3, TilePlan(tile=736, step=100, margin=288))
        no_margin = tiled_scores(model, x, 3, TilePlan(tile=736, step=128, margin=0))
    scale = whole.abs().max()
    assert (misaligned - whole).abs().max() > 1e-3 * scale
    assert (no_margin - whole).abs().max() > 1e-3 * scale


def test_plan_tiles_picks_the_largest_tile_that_fits():
    model = tiny_fcn(num_classes=3)
    budget = 200 * 2**20
    plan = plan_tiles(model, budget)
    assert plan.tile % 32 == 0 and plan.step % 32 == 0 and plan.overlap == 2 * 288 + 32
    assert activation_bytes(model, plan.tile, plan.tile) <= budget
    assert activation_bytes(model, plan.tile + 32, plan.tile + 32) > budget
    with pytest.raises(ValueError, match="too small for even one 640x640 tile"):
        plan_tiles(model, 1000)


def test_activation_estimate_scales_with_batch_and_area():
    model = fcnseg.build_model("fcn8s", widths=(64, 8, 8, 8, 8, 8))  # conv1_2 dominates, as in VGG16
    one = activation_bytes(model, 500, 500)
    assert activation_bytes(model, 500, 500, batch=3) == 3 * one
    # conv1_2 sees (500 + 198)^2 pixels of 64 channels in and out, float32, twice (backend copies)
    assert 2 * 128 * 698**2 * 4 < one < 1.3 * 2 * 128 * 698**2 * 4


def test_predict_tiles_when_over_budget_with_the_same_labels(monkeypatch):
    model = tiny_fcn(num_classes=3)
    image = np.random.default_rng(3).integers(0, 256, (768, 768, 3), dtype=np.uint8)
    blended = 4 * (model.num_classes + 1) * 768 * 768  # blended scores and weights
    budget = activation_bytes(model, 704, 704) + blended
    assert activation_bytes(model, 768, 768) > budget
    calls = []

    def recording(forward, x, num_classes, plan):
        calls.append(plan)
        return tiled_scores(forward, x, num_classes, plan)

    monkeypatch.setattr(predict_module, "tiled_scores", recording)
    labels = predict(model, image, max_memory=budget)
    assert calls == [TilePlan(704, 96, 288)]  # 2 x 2 tiles
    np.testing.assert_array_equal(labels, predict(model, image, max_memory=2**40))
    assert len(calls) == 1


def test_parse_memory():
    assert parse_memory("4G") == 4 * 2**30
    assert parse_memory("512m") == 512 * 2**20
    assert parse_memory("1.5GiB") == 3 * 2**29
    assert parse_memory("1000") == 1000
    for bad in ("lots", "-1G", "0"):
        with pytest.raises(ValueError):
            parse_memory(bad)
