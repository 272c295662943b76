"""HED and FSDS: nets, crops, losses, labels, readers, Caffe import, and the edge benchmark's scores."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.io
import torch
from PIL import Image

import fcnseg
from fcnseg.accel import for_training
from fcnseg.accel.training import TrimmedSides
from fcnseg.data.datasets import IGNORE_INDEX, DataError
from fcnseg.data.edges import (
    BSDS500,
    SCALE_THRESHOLDS,
    SkeletonDataset,
    SyntheticEdges,
    SyntheticSkeletons,
    edge_labels,
    label_boundaries,
    medial_axis,
    quantise_scales,
    skeleton_scales,
)
from fcnseg.metrics.edges import edge_counts, evaluate_skeletons, scores, skeleton_counts
from fcnseg.models.sides import side_taps
from fcnseg.tasks.losses import FSDSLoss, HEDLoss, balanced_sigmoid_loss, balanced_softmax_loss
from fcnseg.train.config import TrainConfig
from fcnseg.train.optim import make_optimizer
from fcnseg.weights.caffe import load_caffe_fcn
from fcnseg.weights.caffe_format import CaffeLayer, write_caffemodel
from fcnseg.weights.transfer import WeightsMismatchError

TINY = (4, 8, 8, 16, 16)


def tiny(arch: str, seed: int = 0):
    torch.manual_seed(seed)
    return fcnseg.build_model(arch, widths=TINY).eval()


# Nets
def test_hed_crop_offsets_derived_from_geometry_are_caffes():
    """Caffe's auto-offset Crop layers of the HED prototxt cut at 34, 35, 36, 38 and 42."""
    assert tiny("hed").crop_offsets == [34, 35, 36, 38, 42]
    assert tiny("fsds").crop_offsets == [35, 36, 38, 42]
    taps = side_taps(tiny("hed").backbone, ["conv3_3"])
    assert (taps[0].name, taps[0].channels) == ("relu3_3", 8)
    assert (taps[0].geometry.scale, taps[0].geometry.shift) == (4, -32.5)


@pytest.mark.parametrize("size", [(1, 1), (2, 3), (31, 17), (50, 64)])
def test_outputs_have_the_input_size(size):
    assert tiny("hed")(torch.randn(2, 3, *size)).shape == (2, 6, *size)
    fsds = tiny("fsds")
    logits = fsds(torch.randn(1, 3, *size))
    assert logits.shape == (1, 2 + 3 + 4 + 5 + 5, *size)
    edges = fsds.edge_map(logits)
    assert edges.shape == (1, *size) and 0 <= edges.min() <= edges.max() <= 1


@pytest.mark.parametrize("arch", ["hed", "fsds"])
@pytest.mark.parametrize("size", [(1, 1), (7, 12), (40, 33)])
def test_skipping_the_input_padding_keeps_scores_and_gradients(arch, size):
    """Training runs the trunk on the images' reach: the padded net's outputs and gradients."""
    assert type(for_training(tiny(arch))) is TrimmedSides
    model = tiny(arch).double().train()
    with torch.no_grad():
        for p in model.parameters():  # signal everywhere; positive biases keep narrow ReLUs alive
            p.copy_(torch.randn_like(p) * 0.3 if p.dim() > 1 else torch.rand_like(p) * 0.2 + 0.05)
    x = torch.randn(2, 3, *size, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    results = []
    for trim in (True, False):
        model.zero_grad()
        out = (for_training(model) if trim else model)(x)
        (out * torch.linspace(-1, 1, out.numel(), dtype=torch.float64).view_as(out)).sum().backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
        results.append((out.detach(), grads))
    (trimmed, trimmed_grads), (padded, padded_grads) = results
    assert torch.allclose(trimmed, padded, rtol=1e-9, atol=1e-9)
    assert trimmed_grads.keys() == padded_grads.keys() and trimmed_grads
    for name, grad in padded_grads.items():
        assert (trimmed_grads[name] - grad).abs().max() <= 1e-9 * max(1.0, grad.abs().max()), name


def test_hed_layers_are_the_prototxts():
    hed = tiny("hed")
    names = {n.rsplit(".", 1)[0] for n, _ in hed.named_parameters()}
    assert {"score-dsn1", "upsample_2", "upsample_16", "new-score-weighting", "backbone.conv5_3"} <= names
    assert "backbone.pool5" not in dict(hed.named_modules()) and "backbone.fc6" not in names
    assert hed.backbone.conv1_1.padding == (35, 35)
    fuse = getattr(hed, "new-score-weighting")
    assert torch.all(fuse.weight == 0.2) and fuse.weight.shape == (1, 5, 1, 1)
    frozen = [n for n, p in hed.named_parameters() if not p.requires_grad]
    assert sorted(frozen) == sorted(f"upsample_{f}.{k}" for f in (2, 4, 8, 16) for k in ("weight", "bias"))
    # the fusion is the 1x1 convolution of the sides: at 0.2 each, their mean times 5 / 5
    with torch.no_grad():
        for name, p in hed.named_parameters():
            if name.startswith("score-dsn"):
                p.normal_()
    out = hed(torch.randn(1, 3, 20, 24))
    torch.testing.assert_close(out[:, 5], 0.2 * out[:, :5].sum(1) + fuse.bias)


@pytest.mark.parametrize("arch", ["hed", "fsds"])
def test_side_layers_start_at_zero_and_the_fusion_as_the_prototxt(arch):
    """The prototxts give score-dsn* no filler: Caffe's default constant 0 fills weights and biases.
    The fusion layers have constant fillers (HED 0.2; FSDS 0.25, 0.25, 0.333, 0.5, 1) and zero biases."""
    net = fcnseg.build_model(arch)
    sides = {n: p for n, p in net.named_parameters() if n.startswith("score-dsn")}
    assert len(sides) == (10 if arch == "hed" else 8)
    assert all(torch.count_nonzero(p) == 0 for p in sides.values())
    fusions = ["new-score-weighting"] if arch == "hed" else [f"cat{c}-score" for c in range(5)]
    starts = [0.2] if arch == "hed" else [0.25, 0.25, 0.333, 0.5, 1.0]
    for name, value in zip(fusions, starts, strict=True):
        layer = getattr(net, name)
        assert torch.all(layer.weight == torch.tensor(value)) and torch.all(layer.bias == 0)
    logits = net(torch.randn(1, 3, 24, 20))
    assert torch.count_nonzero(logits) == 0  # every side and fused logit starts at 0
    logits.sum().backward()
    assert all(
        p.grad is not None and p.grad.abs().sum() > 0 for n, p in sides.items() if n.endswith("weight")
    )


def test_fsds_fuses_each_scale_from_the_sides_that_see_it():
    fsds = tiny("fsds")
    with torch.no_grad():
        for name, p in fsds.named_parameters():
            if name.startswith("score-dsn"):
                p.normal_()
    widths = [getattr(fsds, f"cat{c}-score").weight.shape[1] for c in range(5)]
    assert widths == [4, 4, 3, 2, 1]
    assert [getattr(fsds, f"cat{c}-score").weight[0, 0].item() for c in range(5)] == pytest.approx(
        [0.25, 0.25, 0.333, 0.5, 1.0]
    )
    logits = fsds(torch.randn(1, 3, 16, 16))
    sides = torch.split(logits[:, :14], (2, 3, 4, 5), dim=1)
    cat3 = getattr(fsds, "cat3-score")
    expected = cat3.weight[0, 0] * sides[2][:, 3] + cat3.weight[0, 1] * sides[3][:, 3] + cat3.bias
    torch.testing.assert_close(logits[:, 14 + 3], expected)


def test_reference_lr_multipliers_reach_the_optimizer():
    hed = tiny("hed")
    config = TrainConfig(
        task="edges", optimizer="sgd", lr=1e-6, weight_decay=2e-4, caffe_bias=True, init=None
    )
    optimizer = make_optimizer(hed, config)
    by_param = {id(p): g for g in optimizer.param_groups for p in g["params"]}

    def group(name):
        return by_param[id(dict(hed.named_parameters())[name])]

    assert (
        group("backbone.conv1_1.weight")["lr_mult"] == 1
        and group("backbone.conv1_1.weight")["weight_decay"] == 2e-4
    )
    assert (
        group("backbone.conv1_1.bias")["lr_mult"] == 2 and group("backbone.conv1_1.bias")["weight_decay"] == 0
    )
    assert (
        group("backbone.conv5_2.weight")["lr_mult"] == 100
        and group("backbone.conv5_2.bias")["lr_mult"] == 200
    )
    assert group("score-dsn3.weight")["lr_mult"] == 0.01 and group("score-dsn3.bias")["lr_mult"] == 0.02
    assert group("new-score-weighting.weight")["lr_mult"] == 0.001
    assert not any(id(p) in by_param for n, p in hed.named_parameters() if n.startswith("upsample"))
    fsds = tiny("fsds")
    groups = make_optimizer(fsds, config).param_groups
    mult = {id(p): g["lr_mult"] for g in groups for p in g["params"]}
    assert (
        mult[id(getattr(fsds, "cat2-score").weight)] == 0.01
        and mult[id(getattr(fsds, "cat1-score").weight)] == 0.05
    )


# Losses
def test_balanced_sigmoid_loss_is_the_reference_formula():
    torch.manual_seed(0)
    logits = torch.randn(2, 5, 7)
    target = torch.randint(0, 2, (2, 5, 7))
    target[0, 0, :3] = IGNORE_INDEX
    expected = 0.0
    for x, y in zip(logits, target, strict=True):
        p = torch.sigmoid(x)
        pos, neg = y == 1, y == 0
        n_pos, n_neg = pos.sum().item(), neg.sum().item()
        loss_pos = -torch.log(p[pos]).sum() * n_neg / (n_pos + n_neg)
        loss_neg = -torch.log(1 - p[neg]).sum() * n_pos / (n_pos + n_neg)
        expected += loss_pos + loss_neg
    torch.testing.assert_close(balanced_sigmoid_loss(logits, target), expected / 2)
    six = torch.randn(2, 6, 5, 7)
    total = sum(balanced_sigmoid_loss(six[:, i], target) for i in range(6))
    torch.testing.assert_close(HEDLoss()(six, target), total)


def test_balanced_softmax_loss_counts_unseen_scales_as_background():
    torch.manual_seed(1)
    logits = torch.randn(1, 3, 4, 6)
    target = torch.tensor([[[0, 1, 2, 3, 4, 0], [0, 0, 0, 2, 0, 0], [1, 0, 0, 0, 0, IGNORE_INDEX], [0] * 6]])
    classes = torch.where(target >= 3, 0, target)  # this side has 3 channels: scales 3, 4 are background
    logp = torch.log_softmax(logits, 1)[0]
    pos, neg = (classes[0] > 0) & (target[0] != IGNORE_INDEX), (classes[0] == 0) & (target[0] != IGNORE_INDEX)
    nll = -logp.gather(0, classes.clamp(max=2)[0][None])[0]
    n_pos, n_neg = pos.sum().item(), neg.sum().item()
    expected = nll[pos].sum() * n_neg / (n_pos + n_neg) + nll[neg].sum() * n_pos / (n_pos + n_neg)
    torch.testing.assert_close(balanced_softmax_loss(logits, target), expected)
    full = torch.randn(1, 19, 4, 6)
    parts = torch.split(full, (2, 3, 4, 5, 5), dim=1)
    torch.testing.assert_close(
        FSDSLoss((2, 3, 4, 5, 5))(full, target), sum(balanced_softmax_loss(p, target) for p in parts)
    )


# Labels
def test_edge_labels_are_hed_consensus():
    """At least half of the annotators: an edge; fewer: a negative (or ignored, on request)."""
    maps = np.zeros((5, 1, 4), bool)
    maps[:1, 0, 1] = maps[:2, 0, 2] = maps[:3, 0, 3] = True
    np.testing.assert_array_equal(edge_labels(maps), [[0, 0, 0, 1]])
    np.testing.assert_array_equal(edge_labels(maps, ignore_weak=True), [[0, IGNORE_INDEX, IGNORE_INDEX, 1]])


def test_skeleton_scales_and_fsds_classes():
    edges = np.zeros((9, 40), bool)
    edges[0], edges[8] = True, True  # a bar 7 pixels thick
    skeleton = np.zeros_like(edges)
    skeleton[4, 5:35] = True
    scales = skeleton_scales(skeleton, edges)
    assert np.all(scales[4, 5:35] == 8) and scales.sum() == 8 * 30
    thresholds = SCALE_THRESHOLDS["sk506"]
    values = np.array([0, 0.4, 1, 9.4, 9.6, 10, 25, 26, 59, 60, 149, 150, 400])
    np.testing.assert_array_equal(
        quantise_scales(values, thresholds), [0, 0, 1, 1, 2, 2, 2, 3, 3, 4, 4, 0, 0]
    )
    large = quantise_scales(np.array([31, 32, 79, 80, 179, 180]), SCALE_THRESHOLDS["sk-large"])
    np.testing.assert_array_equal(large, [2, 3, 3, 4, 4, 0])


def test_medial_axis_of_a_bar_and_synthetic_truths():
    mask = np.zeros((11, 30), bool)
    mask[2:9, 3:27] = True  # 7 x 24
    axis, distance = medial_axis(mask)
    for column in range(8, 22):  # one pixel thick, on the middle row to within the pixel grid's tie
        rows = np.flatnonzero(axis[:, column])
        assert len(rows) == 1 and abs(rows[0] - 5) <= 1
    assert distance[5, 15] == 4
    label = np.zeros((6, 6), np.int64)
    label[2:, 3:] = 2
    edges = label_boundaries(label)
    assert edges.sum() == 4 + 3 and edges[2:, 2].all() and edges[1, 3:].all()
    image, truth = SyntheticEdges(1)[0]
    assert truth.shape == (1, *image.shape[:2]) and truth.dtype == bool and truth.any()
    image, scales = SyntheticSkeletons(1)[0]
    assert scales.shape == image.shape[:2] and (scales > 0).any() and scales.min() == 0


# Readers, on tiny copies in the real layouts
def _image(path, size, seed):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.random.default_rng(seed).integers(0, 255, (*size, 3), dtype=np.uint8)).save(path)


def test_bsds500_reader(tmp_path):
    data = tmp_path / "BSR" / "BSDS500" / "data"
    _image(data / "images" / "val" / "3096.jpg", (6, 8), 0)
    first, second = np.zeros((6, 8), np.uint16), np.zeros((6, 8), np.uint16)
    first[2, :] = 1
    second[:, 5] = 1
    cells = np.empty((1, 2), object)
    cells[0, 0] = {"Segmentation": np.ones((6, 8), np.uint16), "Boundaries": first}
    cells[0, 1] = {"Segmentation": np.ones((6, 8), np.uint16), "Boundaries": second}
    (data / "groundTruth" / "val").mkdir(parents=True)
    scipy.io.savemat(data / "groundTruth" / "val" / "3096.mat", {"groundTruth": cells})
    dataset = fcnseg.data.registry.open_dataset("bsds500", str(tmp_path), "val")
    image, truth = dataset[0]
    assert image.shape == (6, 8, 3) and truth.shape == (2, 6, 8)
    np.testing.assert_array_equal(truth[0], first != 0)
    np.testing.assert_array_equal(truth[1], second != 0)
    _image(data / "images" / "val" / "42.jpg", (6, 8), 1)
    with pytest.raises(DataError, match="lack ground truth") as error:
        BSDS500(tmp_path, "val")
    assert "42.mat" in error.value.problems[0]
    with pytest.raises(DataError, match="images/test/"):
        BSDS500(tmp_path, "test")


def test_skeleton_reader(tmp_path):
    root = tmp_path / "SK-LARGE"
    _image(root / "images" / "train" / "a.jpg", (9, 40), 0)
    edge = np.zeros((9, 40), np.uint8)
    edge[0], edge[8] = 1, 1
    symmetry = np.zeros((9, 40), np.uint8)
    symmetry[4, 5:35] = 1
    (root / "groundTruth" / "train").mkdir(parents=True)
    scipy.io.savemat(root / "groundTruth" / "train" / "a.mat", {"edge": edge, "symmetry": symmetry})
    dataset = SkeletonDataset(tmp_path, "train", "sk-large")
    image, scales = dataset[0]
    assert image.shape == (9, 40, 3) and scales[4, 5] == 8 and scales[3].sum() == 0
    assert dataset.thresholds == (10, 32, 80, 180)


# Evaluation
def _lines(size=200):
    truth = np.zeros((size, size), bool)
    truth[60, 30:170] = truth[140, 30:170] = True
    return truth


def test_evaluate_edges_hand_cases():
    truth = _lines()
    perfect = fcnseg.evaluate_edges([truth.astype(float)], [[truth]], nms=False)
    # (the benchmark's matching draws a sparse graph at random, time-seeded: a pixel may go either way)
    assert perfect["ods"] == pytest.approx(1, abs=0.01) and perfect["ois"] == pytest.approx(1, abs=0.01)
    assert fcnseg.evaluate_edges([np.zeros(truth.shape)], [[truth]]) == {"ods": 0.0, "ois": 0.0, "ap": 0.0}
    # one pixel off is within 0.0075 of a 283-pixel diagonal; four pixels are not
    shifted = fcnseg.evaluate_edges([np.roll(truth, 1, 0).astype(float)], [[truth]], nms=False)
    assert shifted["ods"] == pytest.approx(1, abs=0.01)
    far = fcnseg.evaluate_edges([np.roll(truth, 4, 0).astype(float)], [[truth]], nms=False)
    assert far["ods"] == 0.0
    # NMS first smooths the map: a perfect thin map loses only the lines' end pixels
    assert fcnseg.evaluate_edges([truth.astype(float)], [[truth]])["ods"] > 0.98
    # two annotators: recall over both (one far off), precision against either
    counts = edge_counts(truth.astype(float), [truth, np.roll(truth, 8, 0)], nms=False)
    n = truth.sum()
    # (the time-seeded matching may drop a pixel or a few: 3 of 280 seen)
    np.testing.assert_allclose(counts[:, 0], [n, 2 * n, n, n], rtol=0.03)
    skeleton = evaluate_skeletons([truth.astype(float)], [truth])
    assert skeleton["ods"] > 0.98


def test_skeleton_scores_divide_each_map_by_its_maximum():
    """FSDS's evaluation divides each map by its maximum before cutting it at 100 thresholds: a net
    whose maps peak at 0.9 on one image and 0.12 on another scores as if both peaked at 1."""
    truth = _lines()
    noise = np.zeros(truth.shape)
    noise[[20, 100, 180], 30:170] = 0.5  # weaker false lines beside the true ones, half the map's peak
    maps = [peak * (truth + noise) for peak in (0.9, 0.12)]
    normalised = [m / m.max() for m in maps]
    as_given = fcnseg.evaluate_skeletons(maps, [truth, truth])
    assert as_given["ods"] == pytest.approx(
        fcnseg.evaluate_skeletons(normalised, [truth, truth])["ods"], abs=0.01
    )
    assert as_given["ods"] > 0.95  # above 0.5 of each peak only the true lines remain
    # undivided, no one threshold keeps both images' lines and drops both false ones
    undivided = fcnseg.evaluate_edges(maps, [[truth], [truth]], max_dist=0.01)
    assert undivided["ods"] < 0.75
    counts = skeleton_counts(maps[1], truth)
    assert counts.shape == (4, 100)
    with pytest.raises(ValueError, match="not in \\[0, 1\\]"):  # 8-bit maps are refused, not divided
        skeleton_counts(255 * truth.astype(float), truth)


def test_scores_from_counts_by_hand():
    """Two images at three thresholds: ODS from the summed counts (interpolated between thresholds),
    OIS from each image's best threshold, AP from the precision at recall 0, 0.01, ..., 1."""
    # rows: matched truth, truth, matched predictions, predictions
    a = np.array([[10, 5, 0], [10, 10, 10], [10, 5, 0], [25, 5, 0]], float)  # R 1, .5, 0; P .4, 1, 0
    b = np.array([[4, 4, 2], [4, 4, 4], [4, 4, 2], [4, 4, 2]], float)  # R 1, 1, .5; P 1, 1, 1
    result = scores([a, b])
    recall, precision = np.array([1, 9 / 14, 2 / 14]), np.array([14 / 29, 1, 1])
    d = np.linspace(0, 1, 101)[:, None]
    r, p = recall[1:] * d + recall[:-1] * (1 - d), precision[1:] * d + precision[:-1] * (1 - d)
    assert result["ods"] == pytest.approx((2 * p * r / (p + r)).max())
    # OIS: a is best at its second threshold (F 2/3 against 4/7), b at its first: R 9/14, P 9/9
    assert result["ois"] == pytest.approx(2 * (9 / 14) / (1 + 9 / 14))
    grid = np.linspace(0, 1, 101)
    inside = grid >= 2 / 14
    assert result["ap"] == pytest.approx(np.interp(grid[inside], recall[::-1], precision[::-1]).sum() / 100)


# Caffe import
def _caffe_layers(arch: str, seed: int) -> list[CaffeLayer]:
    rng = np.random.default_rng(seed)
    model = tiny(arch)
    layers = []
    for name, module in model.named_modules():
        if list(module.parameters(recurse=False)):
            kind = "Deconvolution" if name.startswith("upsample") else "Convolution"
            blobs = [
                rng.standard_normal(tuple(p.shape)).astype(np.float32) for p in (module.weight, module.bias)
            ]
            layers.append(CaffeLayer(name.removeprefix("backbone."), kind, blobs, {}))
    return layers


def test_convert_hed_caffemodel(tmp_path):
    layers = _caffe_layers("hed", 0)
    path = tmp_path / "hed_pretrained_bsds.caffemodel"
    write_caffemodel(path, layers)
    model = load_caffe_fcn(path, "hed")
    assert model.config["arch"] == "hed" and model.config["widths"] == list(TINY)
    assert model.meta == {"preprocess": "caffe", "source": path.name, "task": "edges"}
    blobs = {layer.name: layer.blobs for layer in layers}
    np.testing.assert_array_equal(model.backbone.conv3_2.weight.detach().numpy(), blobs["conv3_2"][0])
    np.testing.assert_array_equal(getattr(model, "score-dsn4").bias.detach().numpy(), blobs["score-dsn4"][1])
    np.testing.assert_array_equal(model.upsample_8.weight.detach().numpy(), blobs["upsample_8"][0])
    write_caffemodel(path, [layer for layer in layers if layer.name != "score-dsn3"])
    with pytest.raises(WeightsMismatchError, match="score-dsn3"):
        load_caffe_fcn(path)


def test_bad_files_are_listed_together(tmp_path):
    from fcnseg.tasks.edges import EdgeTask

    data = tmp_path / "BSDS500" / "data"
    (data / "groundTruth" / "train").mkdir(parents=True)
    for name in ("a", "b"):
        _image(data / "images" / "train" / f"{name}.jpg", (6, 8), 0)
        (data / "groundTruth" / "train" / f"{name}.mat").write_bytes(b"not a MAT-file")
    with pytest.raises(DataError, match="2 sample") as error:
        EdgeTask().check_data(BSDS500(tmp_path, "train"), None, progress=False)
    assert ["a.mat" in error.value.problems[0], "b.mat" in error.value.problems[1]] == [True, True]


def test_hed_and_fsds_keep_their_own_outputs():
    with pytest.raises(ValueError, match="HED predicts 1 class"):
        fcnseg.build_model("hed", 21)
    assert fcnseg.build_model("fsds", 5, widths=TINY).config["num_classes"] == 5
    assert fcnseg.build_model("fcn8s", widths=(4, 8, 8, 16, 16, 32)).num_classes == 21


def test_hed_pair_list_and_its_consensus(tmp_path):
    from fcnseg.data.registry import open_dataset

    root = tmp_path / "HED-BSDS"
    _image(root / "train" / "aug_data" / "0.0_1_0" / "a.jpg", (2, 3), 0)
    (root / "train" / "aug_gt" / "0.0_1_0").mkdir(parents=True)
    mean = np.array([[0, 51, 127], [128, 204, 255]], np.uint8)  # 0/5 ... 5/5 annotators, and 127, 128
    Image.fromarray(mean).save(root / "train" / "aug_gt" / "0.0_1_0" / "a.png")
    (root / "train_pair.lst").write_text("train/aug_data/0.0_1_0/a.jpg train/aug_gt/0.0_1_0/a.png\n")
    dataset = open_dataset("hed-bsds", str(root), "train")
    image, truth = dataset[0]
    assert image.shape == (2, 3, 3) and truth.shape == (1, 2, 3)
    # Caffe's integer label / 255 rounds: 128 and up (at least half the annotators) is an edge
    np.testing.assert_array_equal(edge_labels(truth), [[0, 0, 0], [1, 1, 1]])
    (root / "train_pair.lst").write_text("train/a.jpg train/a.png\nonly-one-name\n")
    with pytest.raises(DataError, match="2 line") as error:
        open_dataset("hed-bsds", str(root), "train")
    assert "no such file" in error.value.problems[0] and "only-one-name" in error.value.problems[1]


def test_convert_fsds_caffemodel(tmp_path):
    layers = _caffe_layers("fsds", 1)
    assert {"score-dsn-2", "upsample-16", "cat2-score"} <= {layer.name for layer in layers}
    path = tmp_path / "fsds.caffemodel"
    write_caffemodel(path, layers)
    model = load_caffe_fcn(path)
    assert model.config["arch"] == "fsds" and model.meta["task"] == "skeleton"
    blobs = {layer.name: layer.blobs for layer in layers}
    np.testing.assert_array_equal(
        getattr(model, "cat2-score").weight.detach().numpy(), blobs["cat2-score"][0]
    )


# Bad input to the evaluation
def test_evaluation_lists_every_bad_input_at_once():
    truth = np.zeros((40, 40), bool)
    truth[20, 5:35] = True
    nan = truth.astype(float)
    nan[3, 4] = np.nan
    predictions = [np.zeros((40, 41)), nan, 255.0 * truth, truth - 0.5, np.zeros((1, 40, 40))]
    with pytest.raises(ValueError, match="5 problem") as error:
        fcnseg.evaluate_edges(predictions, [[truth]] * 5)
    message = str(error.value)
    assert "image 0: ground truths must have the prediction's size (40, 41): annotator 1 (40, 40)" in message
    assert "image 1: the prediction has 1 NaN pixel(s)" in message
    assert "image 2: the prediction's values lie in [0, 255], not in [0, 1] (an 8-bit map?" in message
    assert "image 3: the prediction's values lie in [-0.5, 0.5], not in [0, 1]\n" in message
    assert "image 4: the prediction must be an (H, W) map, got shape (1, 40, 40)" in message
    # one image alone: a clear error, not the matcher's abort on NaN
    with pytest.raises(ValueError, match="NaN"):
        edge_counts(nan, [truth])
    with pytest.raises(ValueError, match=r"image 0: ground truths must have .*\(41, 40\)"):
        evaluate_skeletons([np.zeros((40, 40))], [np.zeros((41, 40), bool)])


def test_an_image_without_ground_truth_adds_no_recall_and_its_predictions_cost_precision():
    truth = _lines()
    found = 0.8 * np.roll(truth, 1, 1)  # a good map of the annotated image
    alone = fcnseg.evaluate_edges([found], [[truth]], nms=False)
    empty = np.zeros_like(truth)
    weak = np.zeros(truth.shape)
    weak[20, 10:90] = 0.3  # a weak response on an image with nothing to find
    silent = fcnseg.evaluate_edges([found, np.zeros(truth.shape)], [[truth], [empty]], nms=False)
    assert silent == pytest.approx(alone, abs=0.01)
    counts = edge_counts(weak, [empty], nms=False)
    assert not counts[1].any() and counts[3, 0] == 80 and counts[3, -1] == 0
    noisy = fcnseg.evaluate_edges([found, weak], [[truth], [empty]], nms=False)
    # the weak line counts against precision below 0.3: the data set's best threshold lies above it
    total = edge_counts(found, [truth], nms=False) + counts
    assert total[2, 0] / total[3, 0] == pytest.approx(truth.sum() / (truth.sum() + 80), abs=0.01)
    assert noisy["ods"] == pytest.approx(alone["ods"], abs=0.01)
    # each image at its own best threshold: the unannotated one where it predicts nothing
    assert noisy["ois"] == pytest.approx(alone["ois"], abs=0.01)
    skeleton = evaluate_skeletons([found, weak], [truth, empty])
    assert 0 < skeleton["ods"] <= 1 and all(np.isfinite(list(skeleton.values())))
    with pytest.raises(ValueError, match="none of the 2 image"):
        evaluate_skeletons([found, weak], [empty, empty])


def test_an_image_with_no_skeleton_trains_as_background(tmp_path):
    """FSDS's balanced loss of an all-background label is 0 with finite gradients (nothing to learn)."""
    root = tmp_path / "SK-LARGE"
    _image(root / "images" / "train" / "a.jpg", (24, 30), 0)
    (root / "groundTruth" / "train").mkdir(parents=True)
    nothing = np.zeros((24, 30), np.uint8)
    scipy.io.savemat(root / "groundTruth" / "train" / "a.mat", {"edge": nothing, "symmetry": nothing})
    image, scales = SkeletonDataset(tmp_path, "train", "sk-large")[0]
    label = torch.from_numpy(quantise_scales(scales, SCALE_THRESHOLDS["sk-large"]))[None]
    assert scales.shape == (24, 30) and not label.any()
    model = tiny("fsds").train()
    loss = fcnseg.tasks.losses.FSDSLoss((2, 3, 4, 5, 5))(model(torch.rand(1, 3, 24, 30)), label)
    loss.backward()
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert loss == 0 and grads and all(torch.isfinite(g).all() for g in grads)
