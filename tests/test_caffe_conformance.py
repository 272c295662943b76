"""Our nets against the blobs the real Caffe computed: every fixture net, both file formats, both sizes."""

import numpy as np
import pytest
import torch

from fcnseg.weights.caffe import load_caffe_fcn

NETS = {  # model file -> blobs file prefix
    "fcn32s": "fcn32s",
    "fcn16s": "fcn16s",
    "fcn8s": "fcn8s",
    "fcn8s_v1layers": "fcn8s",
    "fcn_alexnet": "fcn_alexnet",
}
SIZES = ("97x131", "500x375")


def within(ours: np.ndarray, caffe: np.ndarray) -> float:
    assert ours.shape == caffe.shape
    return float(np.abs(ours - caffe).max() / np.abs(caffe).max())


def forward_with_blobs(model, x: torch.Tensor) -> dict[str, np.ndarray]:
    """Run the net, keeping the intermediate blobs Caffe stored (ReLU in place: fc7 after ReLU)."""
    blobs = {}
    h = x
    for name, layer in model.backbone.named_children():
        h = layer(h)
        blobs[name] = h
    blobs["fc7"] = blobs["relu7"]
    blobs["score_fr"] = model.score_fr(h)
    blobs["score"] = model(x)
    return {k: v.numpy() for k, v in blobs.items()}


@pytest.fixture(scope="module")
def models(caffe_fixtures):
    return {name: load_caffe_fcn(caffe_fixtures / f"{name}.caffemodel") for name in NETS}


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("net", sorted(NETS))
def test_blobs_match_caffe(caffe_fixtures, models, net, size):
    x = torch.from_numpy(np.load(caffe_fixtures / f"input_{size}.npz")["data"])
    ref = np.load(caffe_fixtures / f"{NETS[net]}_{size}.npz")
    with torch.no_grad():
        ours = forward_with_blobs(models[net], x)
    for blob in ("pool3", "pool4", "pool5", "fc7", "score_fr"):
        if blob in ref:
            assert within(ours[blob], ref[blob]) <= 1e-4, blob
    score = ours["score"]
    assert score.shape[-2:] == x.shape[-2:]
    if "score" in ref:
        assert within(score, ref["score"]) <= 1e-4
        return
    assert list(score.shape) == ref["score_shape"].tolist()
    assert within(score[:, :, ::7, ::7], ref["score_sub7"]) <= 1e-4
    assert within(score[:, :, -1, :], ref["score_lastrow"]) <= 1e-4
    assert within(score[:, :, :, -1], ref["score_lastcol"]) <= 1e-4
    sums = score.astype(np.float64).sum((0, 2, 3))
    assert np.abs(sums - ref["score_sum_per_class"]).max() <= 1e-4 * np.abs(ref["score_sum_per_class"]).max()
    # float32 near-ties may flip a few labels; Caffe's own argmax is the reference
    assert (score[0].argmax(0) == ref["score_argmax"]).mean() >= 0.999


def test_architecture_widths_and_classes_come_from_the_file(models):
    assert models["fcn8s"].config["arch"] == "fcn8s"
    assert models["fcn8s"].config["widths"] == [4, 8, 16, 32, 32, 64]
    assert models["fcn_alexnet"].config["widths"] == [8, 16, 24, 24, 16, 64]
    assert models["fcn_alexnet"].config["groups"] == 2
    assert models["fcn16s"].num_classes == 21
    assert models["fcn8s"].meta["preprocess"] == "caffe"


def test_legacy_v1_file_loads_the_same_weights(models):
    v2, v1 = models["fcn8s"].state_dict(), models["fcn8s_v1layers"].state_dict()
    assert v2.keys() == v1.keys()
    for key in v2:
        assert torch.equal(v2[key], v1[key]), key
