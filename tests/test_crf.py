"""The dense CRF: it cleans noisy scores along colour edges, its settings reach pydensecrf, and its flags."""

import json
import sys

import numpy as np
import pytest
import torch
from PIL import Image
from tiny_nets import random_net, tiny_fcn

import fcnseg
from fcnseg.cli import main
from fcnseg.data.preprocess import preprocess
from fcnseg.data.registry import open_dataset
from fcnseg.data.synthetic import SyntheticSegmentation
from fcnseg.errors import ConfigError, MissingExtraError
from fcnseg.infer import crf
from fcnseg.infer.crf import CRFSettings, refine
from fcnseg.infer.predict import predict
from fcnseg.metrics.segmentation import confusion_matrix, evaluate_confusion, scores

HEIGHT, WIDTH = 40, 60
EDGE = WIDTH // 2


def two_halves() -> tuple[np.ndarray, np.ndarray]:
    """A dark left half and a light right half, and the ground truth that follows the colour edge."""
    image = np.full((HEIGHT, WIDTH, 3), 20, np.uint8)
    image[:, EDGE:] = (200, 180, 40)
    truth = np.zeros((HEIGHT, WIDTH), np.int64)
    truth[:, EDGE:] = 1
    return image, truth


def noisy_scores(boundary: int, seed: int = 0) -> np.ndarray:
    """Two-class scores that favour class 1 right of ``boundary``, buried in strong noise."""
    rng = np.random.default_rng(seed)
    scores = np.zeros((2, HEIGHT, WIDTH))
    scores[1] = np.where(np.arange(WIDTH) >= boundary, 1.0, -1.0)[None] + rng.normal(0, 1.5, (HEIGHT, WIDTH))
    return scores


@pytest.mark.parametrize("seed", range(3))
def test_crf_cleans_noisy_scores_up_to_the_colour_edge(seed):
    image, truth = two_halves()
    scores = noisy_scores(EDGE, seed)
    assert (scores.argmax(0) == truth).mean() < 0.8
    labels = refine(image, scores)
    assert labels.shape == (HEIGHT, WIDTH) and labels.dtype == np.int64
    assert (labels == truth).mean() > 0.99


def test_bilateral_kernel_moves_a_boundary_onto_the_colour_edge():
    # The net puts the boundary 5 px left of the colour edge: the colour kernel pulls the
    # strip to the dark side it shares its colour with; the position kernel alone does not.
    image, truth = two_halves()
    scores = noisy_scores(EDGE - 5)
    strip = np.s_[:, EDGE - 5 : EDGE]
    assert (scores.argmax(0)[strip] == 1).mean() > 0.7
    assert (refine(image, scores)[strip] == 0).mean() > 0.98
    assert (refine(image, scores, settings=CRFSettings(bilateral_compat=0))[strip] == 1).mean() > 0.8


def test_probabilities_and_scores_give_the_same_labels():
    image, _ = two_halves()
    scores = noisy_scores(EDGE - 3, seed=4)
    probs = torch.from_numpy(scores).softmax(0).numpy()
    np.testing.assert_array_equal(refine(image, probs, are_probs=True), refine(image, scores))
    np.testing.assert_array_equal(refine(image, scores, settings=CRFSettings(iterations=0)), scores.argmax(0))


class Recorder:
    """Stands in for ``pydensecrf.densecrf``: records the calls, infers the unary's softmax."""

    calls: list

    def __init__(self):
        self.calls = []
        recorder = self

        class DenseCRF2D:
            def __init__(self, width, height, classes):
                recorder.calls.append(("DenseCRF2D", width, height, classes))

            def setUnaryEnergy(self, energy):
                recorder.calls.append(("unary", energy))
                self.energy = energy

            def addPairwiseGaussian(self, **kwargs):
                recorder.calls.append(("gaussian", kwargs))

            def addPairwiseBilateral(self, **kwargs):
                recorder.calls.append(("bilateral", kwargs))

            def inference(self, iterations):
                recorder.calls.append(("inference", iterations))
                return np.exp(-self.energy)

        self.DenseCRF2D = DenseCRF2D


def test_settings_reach_pydensecrf(monkeypatch):
    recorder = Recorder()
    monkeypatch.setattr(crf, "require", lambda: recorder)
    image = np.random.default_rng(0).integers(0, 256, (3, 5, 3), dtype=np.uint8)
    scores = np.random.default_rng(1).normal(size=(4, 3, 5)).astype(np.float32)
    labels = refine(image, scores)
    np.testing.assert_array_equal(labels, scores.argmax(0))
    (_, width, height, classes), (_, energy), gaussian, bilateral, inference = recorder.calls
    assert (width, height, classes) == (5, 3, 4)
    assert energy.dtype == np.float32 and energy.shape == (4, 15) and energy.flags.c_contiguous
    expected = -torch.from_numpy(scores).log_softmax(0).reshape(4, 15).numpy()
    np.testing.assert_allclose(energy, expected, rtol=1e-6, atol=1e-6)
    # DeepLab's VOC parameters by default
    assert gaussian == ("gaussian", {"sxy": 1.0, "compat": 3.0})
    assert bilateral[1].pop("rgbim") is not None
    assert bilateral == ("bilateral", {"sxy": 67.0, "srgb": 3.0, "compat": 4.0})
    assert inference == ("inference", 10)

    recorder.calls.clear()
    settings = CRFSettings(
        iterations=3,
        gaussian_sxy=2,
        gaussian_compat=5,
        bilateral_sxy=30,
        bilateral_srgb=13,
        bilateral_compat=6,
    )
    refine(image, scores, settings=settings)
    assert recorder.calls[2] == ("gaussian", {"sxy": 2, "compat": 5})
    assert recorder.calls[3][1]["rgbim"].shape == (3, 5, 3)
    assert {k: v for k, v in recorder.calls[3][1].items() if k != "rgbim"} == {
        "sxy": 30,
        "srgb": 13,
        "compat": 6,
    }
    assert recorder.calls[4] == ("inference", 3)


def test_bad_settings_and_inputs_are_named_at_once():
    with pytest.raises(ConfigError, match=r"iterations=-1.*gaussian_compat='x'.*bilateral_srgb=0 \(> 0\)"):
        CRFSettings(iterations=-1, gaussian_compat="x", bilateral_srgb=0)
    with pytest.raises(
        ValueError, match=r"uint8 RGB image, got shape \(4, 5, 3\) float32; scores are \(4, 6\)"
    ):
        refine(np.zeros((4, 5, 3), np.float32), np.zeros((2, 4, 6)))
    with pytest.raises(ValueError, match="NaN"):
        refine(np.zeros((4, 5, 3), np.uint8), np.full((2, 4, 5), np.nan))


def tiny(num_classes: int = 6) -> fcnseg.FCN:
    model = tiny_fcn(num_classes=num_classes)
    model.meta = {"class_names": [f"c{i}" for i in range(num_classes)], "preprocess": "caffe"}
    return model


def test_predict_with_crf_refines_the_nets_probabilities():
    model = random_net("fcn8s", num_classes=6)
    model.meta = {"class_names": [f"c{i}" for i in range(6)], "preprocess": "caffe"}
    image = SyntheticSegmentation(1, seed=3, size_range=(48, 64))[0][0]
    labels, probs = predict(model, image, return_probs=True)
    refined, same_probs = predict(model, image, return_probs=True, crf=CRFSettings())
    assert refined.dtype == np.uint8
    np.testing.assert_array_equal(same_probs, probs)
    np.testing.assert_array_equal(refined, refine(image, probs, are_probs=True))
    assert (refined != labels).any()  # the CRF did something on this image
    np.testing.assert_array_equal(predict(model, image, crf=CRFSettings(iterations=0)), labels)


def test_evaluate_confusion_with_crf_scores_the_refined_labels():
    model = tiny()
    dataset = SyntheticSegmentation(3, seed=5, size_range=(40, 56))
    expected = torch.zeros(6, 6, dtype=torch.int64)
    for image, label in (dataset[i] for i in range(len(dataset))):
        with torch.no_grad():
            probs = model(preprocess(image, "caffe")[None])[0].softmax(0).numpy()
        expected += confusion_matrix(refine(image, probs, are_probs=True), label, 6)
    got = evaluate_confusion(model, dataset, 6, crf=CRFSettings())
    assert torch.equal(got, expected)
    assert not torch.equal(got, evaluate_confusion(model, dataset, 6))
    # padded batches: each image is refined at its own size; the padding stays unscored
    assert evaluate_confusion(model, dataset, 6, batch_size=2, crf=CRFSettings()).sum() == expected.sum()


def test_predict_and_evaluate_commands_take_crf(tmp_path, capsys):
    model = tiny()
    weights = fcnseg.save_checkpoint(model, tmp_path / "tiny.pt")
    image = SyntheticSegmentation(1, seed=3, size_range=(48, 64))[0][0]
    Image.fromarray(image).save(tmp_path / "x.png")
    assert (
        main(["predict", str(weights), str(tmp_path / "x.png"), "--out", str(tmp_path / "out"), "--crf"]) == 0
    )
    written = np.asarray(Image.open(tmp_path / "out" / "x.png"))
    np.testing.assert_array_equal(written, predict(model, image, crf=CRFSettings()))
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["x.png"]  # no probabilities unasked

    capsys.readouterr()
    assert main(["evaluate", str(weights), "synthetic", "--images", "2", "--crf", "--json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    dataset = open_dataset("synthetic", "synthetic", None, num_images=2, num_classes=6)
    assert printed["mean_iu"] == pytest.approx(
        scores(evaluate_confusion(model, dataset, 6, crf=CRFSettings()))["mean_iu"]
    )
    assert main(["evaluate", str(weights), "synthetic", "--images", "2", "--crf"]) == 0
    assert "(2 images, dense CRF)" in capsys.readouterr().out


MESSAGE = "the dense CRF needs the crf extra: pip install 'fcnseg[crf]'"


@pytest.fixture
def without_pydensecrf(monkeypatch):
    for name in ("pydensecrf", "pydensecrf.densecrf"):
        monkeypatch.setitem(sys.modules, name, None)  # what a plain install looks like: import fails


def test_missing_extra_is_named(without_pydensecrf, tmp_path, capsys):
    with pytest.raises(MissingExtraError, match=MESSAGE.replace("[", r"\[").replace("]", r"\]")):
        refine(np.zeros((4, 5, 3), np.uint8), np.zeros((2, 4, 5)))
    weights = fcnseg.save_checkpoint(tiny(), tmp_path / "tiny.pt")
    image = tmp_path / "x.png"
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(image)
    capsys.readouterr()
    assert main(["predict", str(weights), str(image), "--out", str(tmp_path / "out"), "--crf"]) == 2
    assert capsys.readouterr().err.strip() == f"fcnseg predict: error: {MESSAGE}"
    assert not (tmp_path / "out").exists()  # refused before anything was written
    assert main(["evaluate", str(weights), "synthetic", "--images", "1", "--crf"]) == 2
    assert capsys.readouterr().err.strip() == f"fcnseg evaluate: error: {MESSAGE}"
    assert main(["predict", str(weights), str(image), "--out", str(tmp_path / "out")]) == 0  # needs no extra
