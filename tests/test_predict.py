"""The prediction API: labels and probabilities, batching, test-time augmentation, inputs."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from tiny_nets import tiny_fcn

import fcnseg
from fcnseg.accel import for_inference
from fcnseg.accel.inference import FastFCN
from fcnseg.data.preprocess import preprocess
from fcnseg.errors import ConfigError
from fcnseg.infer import predict as predict_module
from fcnseg.infer.predict import predict, predict_batch


def random_image(height: int, width: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def reference_scores(model: fcnseg.FCN, image: np.ndarray) -> torch.Tensor:
    with torch.no_grad():
        return model(preprocess(image, "caffe")[None])[0]


def test_labels_are_the_argmax_of_the_scores():
    model, image = tiny_fcn(), random_image(37, 50)
    labels = predict(model, image)
    assert labels.shape == (37, 50) and labels.dtype == np.uint8
    np.testing.assert_array_equal(labels, reference_scores(model, image).argmax(0).numpy())
    assert len(np.unique(labels)) > 1


def test_probabilities_are_the_softmax():
    model, image = tiny_fcn(), random_image(20, 31)
    labels, probs = predict(model, image, return_probs=True)
    assert probs.shape == (5, 20, 31) and probs.dtype == np.float32
    np.testing.assert_allclose(probs, reference_scores(model, image).softmax(0).numpy(), atol=1e-6)
    np.testing.assert_array_equal(labels, probs.argmax(0))


def test_preprocessing_comes_from_the_model():
    model, image = tiny_fcn(), random_image(16, 16)
    model.meta = {"preprocess": "imagenet"}
    _, probs = predict(model, image, return_probs=True)
    with torch.no_grad():
        expected = model(preprocess(image, "imagenet")[None])[0].softmax(0)
    np.testing.assert_allclose(probs, expected.numpy(), atol=1e-6)


def test_a_batch_equals_images_one_by_one():
    model = tiny_fcn()
    images = np.stack([random_image(24, 40, seed) for seed in range(3)])
    labels, probs = predict_batch(model, images, return_probs=True)
    for i in range(3):
        single_labels, single_probs = predict(model, images[i], return_probs=True)
        np.testing.assert_array_equal(labels[i], single_labels)
        np.testing.assert_allclose(probs[i], single_probs, atol=1e-6)


def test_padding_to_a_common_size_would_change_the_scores():
    """Why images of different sizes are never padded into one batch."""
    model, image = tiny_fcn(), random_image(40, 40)
    padded = np.zeros((64, 64, 3), np.uint8)
    padded[:40, :40] = image
    inside = reference_scores(model, padded)[:, :40, :40]
    assert (inside - reference_scores(model, image)).abs().max() > 1e-2


def test_flip_tta_is_mirror_equivariant():
    model, image = tiny_fcn(), random_image(24, 33)
    _, probs = predict(model, image, return_probs=True, tta_flip=True)
    _, mirrored = predict(model, image[:, ::-1].copy(), return_probs=True, tta_flip=True)
    np.testing.assert_allclose(probs, mirrored[:, :, ::-1], atol=1e-6)
    _, plain = predict(model, image, return_probs=True)
    assert np.abs(probs - plain).max() > 1e-3
    np.testing.assert_allclose(probs.sum(0), 1, atol=1e-5)


def test_scale_tta_averages_resized_probabilities():
    model, image = tiny_fcn(), random_image(30, 42)
    _, probs = predict(model, image, return_probs=True, tta_scales=(0.5, 1.0))
    x = preprocess(image, "caffe")[None]
    with torch.no_grad():
        half = model(F.interpolate(x, size=(15, 21), mode="bilinear", antialias=True)).softmax(1)
        half = F.interpolate(half, size=(30, 42), mode="bilinear")
        expected = (half + model(x).softmax(1)) / 2
    np.testing.assert_allclose(probs, expected[0].numpy(), atol=1e-6)
    _, same = predict(model, image, return_probs=True, tta_scales=(1.0, 1.0))
    np.testing.assert_allclose(same, predict(model, image, return_probs=True)[1], atol=1e-6)


def test_tta_handles_a_one_pixel_image():
    model = tiny_fcn()
    labels, probs = predict(
        model, random_image(1, 1), return_probs=True, tta_flip=True, tta_scales=(0.5, 1.5)
    )
    assert labels.shape == (1, 1) and probs.shape == (5, 1, 1)


def test_over_256_classes_give_int64_labels():
    model = tiny_fcn(num_classes=257)
    labels = predict(model, random_image(8, 8))
    assert labels.dtype == np.int64 and labels.shape == (8, 8)


def test_a_path_is_read_upright(tmp_path):
    image = random_image(20, 30)
    path = tmp_path / "rotated.jpg"
    exif = Image.Exif()
    exif[0x0112] = 6  # stored sideways: a viewer rotates it 90 degrees clockwise
    Image.fromarray(image).save(path, exif=exif, quality=95)
    labels = predict(tiny_fcn(), path)
    assert labels.shape == (30, 20)
    upright = np.asarray(Image.open(path).transpose(Image.Transpose.ROTATE_270).convert("RGB"))
    np.testing.assert_array_equal(labels, predict(tiny_fcn(), upright))


def test_training_mode_is_restored_and_dropout_off():
    model, image = tiny_fcn(), random_image(16, 16)
    expected = predict(model, image, return_probs=True)[1]
    model.train()
    np.testing.assert_allclose(predict(model, image, return_probs=True)[1], expected, atol=1e-6)
    assert model.training


def test_forward_is_the_single_call_site(monkeypatch):
    calls = []

    def forward_of(model, *_args):
        def forward(x):
            calls.append(tuple(x.shape))
            return model(x)

        return forward

    monkeypatch.setattr(predict_module, "inference_forward", forward_of)
    predict(tiny_fcn(), random_image(10, 12), tta_flip=True)
    assert calls == [(1, 3, 10, 12), (1, 3, 10, 12)]


def test_runs_under_inference_mode(monkeypatch):
    seen = []

    def forward_of(model, *_args):
        def forward(x):
            seen.append(torch.is_inference_mode_enabled())
            return model(x)

        return forward

    monkeypatch.setattr(predict_module, "inference_forward", forward_of)
    predict(tiny_fcn(), random_image(8, 8))
    assert seen == [True]


def test_bad_arguments():
    model = tiny_fcn()
    with pytest.raises(ValueError, match=r"\(H, W, 3\) uint8"):
        predict(model, np.zeros((8, 8), np.uint8))
    with pytest.raises(ValueError, match="uint8"):
        predict(model, np.zeros((8, 8, 3), np.float32))
    with pytest.raises(ValueError, match="positive"):
        predict(model, random_image(8, 8), tta_scales=(0,))
    if not torch.cuda.is_available():
        with pytest.raises(
            ValueError, match="device 'cuda' is not available here: torch finds no CUDA device"
        ):
            predict(model, random_image(8, 8), device="cuda")


def test_cpu_predictions_use_the_fast_twin_and_refresh_it_when_weights_change():
    from fcnseg.infer import predict as predict_module

    torch.manual_seed(0)
    model = fcnseg.build_model("fcn8s", 4, widths=(4, 8, 8, 16, 16, 32)).eval()
    for p in model.parameters():
        torch.nn.init.normal_(p, std=0.1)
    x = torch.randn(1, 3, 29, 35)
    with torch.inference_mode():
        first = predict_module.inference_forward(model)(x)
        twin = for_inference(model)
        assert isinstance(twin, FastFCN) and for_inference(model) is twin
        assert (first - model(x)).abs().max() <= 1e-4 * model(x).abs().max()
        with torch.no_grad():
            model.score_fr.bias.add_(1.0)
        second = predict_module.inference_forward(model)(x)
    assert for_inference(model) is not twin
    assert (second - model(x)).abs().max() <= 1e-4 * model(x).abs().max()


def test_bf16_runs_the_fast_twin_in_bfloat16_close_to_fp32(monkeypatch):
    monkeypatch.setattr(predict_module, "cpu_has_native_bf16", lambda: True)
    model, image = tiny_fcn(num_classes=4), random_image(40, 52)
    labels, probs = predict(model, image, return_probs=True)
    labels16, probs16 = predict(model, image, return_probs=True, precision="bf16")
    assert for_inference(model, torch.bfloat16).dtype == torch.bfloat16
    assert probs16.dtype == np.float32
    assert 0 < np.abs(probs16 - probs).max() < 0.05  # rounded, not another net
    assert (labels16 == labels).mean() > 0.95


def test_precision_auto_follows_the_hardware(monkeypatch):
    cpu = torch.device("cpu")
    monkeypatch.setattr(predict_module, "cpu_has_native_bf16", lambda: True)
    assert predict_module.resolve_precision("auto", cpu) == torch.bfloat16
    assert predict_module.resolve_precision("fp32", cpu) == torch.float32
    monkeypatch.setattr(predict_module, "cpu_has_native_bf16", lambda: False)
    assert predict_module.resolve_precision("auto", cpu) == torch.float32
    with pytest.warns(UserWarning, match="no native bfloat16 arithmetic: it will be slower than fp32"):
        assert predict_module.resolve_precision("bf16", cpu) == torch.bfloat16
    with pytest.raises(ConfigError, match="precision must be one of fp32, bf16, auto, int8; got 'fp16'"):
        predict(tiny_fcn(), random_image(8, 8), precision="fp16")
