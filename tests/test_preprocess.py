"""Preprocessing presets: what each weight source expects."""

import numpy as np
import pytest
import torch

import fcnseg


def test_caffe_preprocessing_is_bgr_minus_mean():
    image = np.zeros((2, 3, 3), np.uint8)
    image[..., 0], image[..., 1], image[..., 2] = 200, 100, 50  # R, G, B
    x = fcnseg.preprocess(image, "caffe")
    assert x.shape == (3, 2, 3) and x.dtype == torch.float32
    assert torch.allclose(
        x[:, 0, 0], torch.tensor([50 - 104.00698793, 100 - 116.66876762, 200 - 122.67891434])
    )


def test_imagenet_preprocessing_is_rgb_normalised_and_batches():
    image = np.full((2, 4, 5, 3), 255, np.uint8)
    x = fcnseg.preprocess(image, "imagenet")
    assert x.shape == (2, 3, 4, 5)
    assert torch.allclose(
        x[0, :, 0, 0], (1 - torch.tensor([0.485, 0.456, 0.406])) / torch.tensor([0.229, 0.224, 0.225])
    )


def test_preprocessing_errors():
    with pytest.raises(ValueError, match="unknown preprocessing"):
        fcnseg.preprocess(np.zeros((2, 2, 3), np.uint8), "tf")
    with pytest.raises(ValueError, match=r"got shape \(2, 2, 4\)"):
        fcnseg.preprocess(np.zeros((2, 2, 4), np.uint8))


def test_same_colour_coding_differs_only_by_mean():
    from fcnseg.data.preprocess import same_colour_coding

    assert same_colour_coding("caffe", "siftflow")
    assert same_colour_coding("caffe", "nyud-color-depth")  # colour first, coded as Caffe's
    assert not same_colour_coding("caffe", "imagenet")
    assert not same_colour_coding("caffe", "nyud-hha")


@pytest.mark.parametrize(
    ("preprocess", "modality", "warns"),
    [("imagenet", None, True), ("siftflow", None, False), ("caffe", None, False), ("nyud-hha", "hha", False)],
)
def test_initial_weights_warn_only_when_colour_is_coded_otherwise(preprocess, modality, warns, caplog):
    from fcnseg.models.registry import build_model
    from fcnseg.train.config import TrainConfig
    from fcnseg.train.initial import initialise

    model = build_model("fcn32s", 3, widths=(4, 4, 4, 4, 4, 8))
    initial = {"source": "given.pt", "state_dict": model.state_dict(), "meta": {"preprocess": "caffe"}}
    config = TrainConfig(preprocess=preprocess, modality=modality, weight_init="default")
    initialise(model, config, initial)
    warned = [r for r in caplog.records if r.levelname == "WARNING" and r.name == "fcnseg.train.initial"]
    assert any("preprocessing but this run uses" in r.message for r in warned) == warns
