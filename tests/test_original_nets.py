"""The nets of the original repository beyond the VOC ones: SIFT Flow's two heads, NYUD's late fusion
of colour and HHA, and the early-fusion RGB-D first layer."""

import logging

import pytest
import torch
import torch.nn.functional as F

import fcnseg
from fcnseg import build_model
from fcnseg.errors import ConfigError
from fcnseg.models.layers import crop_like
from fcnseg.tasks.losses import SegmentationLoss
from fcnseg.tasks.siftflow import HeadsLoss, SiftFlowTask
from fcnseg.train.config import TrainConfig
from fcnseg.train.initial import initial_weights, initialise, widen_first_conv

TINY = (4, 8, 8, 16, 16, 32)


def _randomise(model, seed=0):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "upscore" not in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.1)
    return model.eval()


def test_two_heads_are_two_separate_score_paths_over_one_trunk():
    both = _randomise(build_model("fcn8s", 36, widths=TINY, heads=(33, 3)))
    x = torch.randn(1, 3, 37, 45)
    sem_out, geo_out = both.split(both(x))
    for head, rows, out in (("sem", slice(0, 33), sem_out), ("geo", slice(33, 36), geo_out)):
        alone = build_model("fcn8s", rows.stop - rows.start, widths=TINY).eval()
        state = {
            k: (v[rows] if k.startswith(("score_fr", "score_pool")) else v)
            for k, v in both.state_dict().items()
            if not k.startswith("upscore")
        }
        alone.load_state_dict(state, strict=False)
        torch.testing.assert_close(out, alone(x), msg=head)
    with pytest.raises(ValueError, match="every upsampling frozen"):
        build_model("fcn8s", 36, widths=TINY, heads=(33, 3), frozen_upsampling="final")
    with pytest.raises(ValueError, match="add up to num_classes"):
        build_model("fcn8s", 21, widths=TINY, heads=(33, 3))


def test_heads_loss_is_the_sum_of_each_heads_loss_and_collate_stacks_labels():
    g = torch.Generator().manual_seed(0)
    scores = torch.randn(2, 36, 5, 6, generator=g)
    target = torch.stack(
        [torch.randint(0, 33, (2, 5, 6), generator=g), torch.randint(0, 3, (2, 5, 6), generator=g)], 1
    )
    loss = HeadsLoss((33, 3), SegmentationLoss(reduction="sum"))(scores, target)
    expected = F.cross_entropy(scores[:, :33], target[:, 0], reduction="sum") + F.cross_entropy(
        scores[:, 33:], target[:, 1], reduction="sum"
    )
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6)
    images, labels = SiftFlowTask.collate(
        [(torch.zeros(3, 4, 5), torch.ones(2, 4, 5)), (torch.zeros(3, 6, 5), torch.zeros(2, 6, 5))]
    )
    assert images.shape == (2, 3, 6, 5) and labels.shape == (2, 2, 6, 5)
    assert (labels[0, :, 4:] == 255).all() and (labels[0, :, :4] == 1).all()


def test_late_fusion_equals_upsampling_the_averaged_scores_as_the_original(tmp_path):
    fused = _randomise(build_model("fcn32s-late-fusion", 5, widths=TINY, in_channels=6))
    x = torch.randn(2, 6, 29, 35)
    scores = {}
    for name, stream in fused.streams.items():
        stream.score_fr.register_forward_hook(lambda m, i, out, name=name: scores.__setitem__(name, out))
    out = fused(x)
    color = fused.streams["color"]
    averaged = 0.5 * scores["color"] + 0.5 * scores["hha"]  # score_fused: Eltwise SUM, coeff 0.5, 0.5
    expected = crop_like(color.upscore(averaged), color.output_offset, 29, 35)
    torch.testing.assert_close(out, expected)
    fcnseg.save_checkpoint(fused, tmp_path / "fused.pt")
    torch.testing.assert_close(fcnseg.load(tmp_path / "fused.pt")(x), out)
    with pytest.raises(ValueError, match="6 input channels"):
        build_model("fcn32s-late-fusion", 5, widths=TINY, in_channels=4)


def test_init_streams_fill_each_stream_and_name_unknown_ones(tmp_path, caplog):

    color = _randomise(build_model("fcn32s", 5, widths=TINY), seed=1)
    fcnseg.save_checkpoint(color, tmp_path / "color.pt")
    fused = build_model("fcn32s-late-fusion", 5, widths=TINY)
    config = TrainConfig(
        arch="fcn32s-late-fusion", weight_init="default", init_streams={"color": str(tmp_path / "color.pt")}
    )
    caplog.set_level(logging.INFO, logger="fcnseg")
    initialise(fused, config, initial_weights(config))
    assert torch.equal(fused.streams["color"].backbone.conv1_1.weight, color.backbone.conv1_1.weight)
    assert not torch.equal(fused.streams["hha"].backbone.conv1_1.weight, color.backbone.conv1_1.weight)
    assert caplog.messages[0].startswith(
        f"initialised from color from {tmp_path / 'color.pt'}; new layers: streams.hha."
    )
    with pytest.raises(ConfigError, match=r"streams color, hha \(got depth\)"):
        TrainConfig(arch="fcn32s-late-fusion", init_streams={"depth": "x.pt"})
    with pytest.raises(ConfigError, match="replaces init"):
        TrainConfig(arch="fcn32s-late-fusion", init="voc-fcn32s", init_streams={"color": "x.pt"})
    with pytest.raises(ConfigError, match="not fcn32s"):
        TrainConfig(arch="fcn32s", init_streams={"color": "x.pt"})


def test_rgbd_first_layer_takes_the_colour_filters_and_their_mean_for_depth():
    colour = _randomise(build_model("fcn32s", 5, widths=TINY))
    rgbd = build_model("fcn32s", 5, widths=TINY, in_channels=4)
    assert widen_first_conv(rgbd, colour.state_dict()) == "backbone.conv1_1"
    w, given = rgbd.backbone.conv1_1.weight, colour.backbone.conv1_1.weight
    assert torch.equal(w[:, :3], given) and torch.allclose(w[:, 3], given.mean(1))
    assert torch.equal(rgbd.backbone.conv1_1.bias, colour.backbone.conv1_1.bias)
    assert widen_first_conv(build_model("fcn32s", 5, widths=TINY), colour.state_dict()) is None


def test_a_two_headed_checkpoint_rebuilds_its_heads_and_their_names(tmp_path):
    both = _randomise(build_model("fcn16s", 36, widths=TINY, heads=[33, 3]))
    assert both.task == "siftflow" and both.head_names == ("head0", "head1")  # no names in its metadata
    both.meta = {"head_names": ["semantic", "geometric"]}
    fcnseg.save_checkpoint(both, tmp_path / "sift.pt")
    again = fcnseg.load(tmp_path / "sift.pt")
    assert again.heads == (33, 3) and again.head_names == ("semantic", "geometric")
    x = torch.randn(1, 3, 21, 19)
    torch.testing.assert_close(again(x), both(x))
