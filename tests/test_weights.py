"""Weight import and checkpoints: torchvision and Caffe classifiers, bad files, atomic saves."""

import os
import shutil
import stat

import numpy as np
import pytest
import torch
from PIL import Image
from tiny_nets import TINY_GOOGLENET, googlenet_caffe_layers
from torch import nn

import fcnseg
from fcnseg import files
from fcnseg.cli import main
from fcnseg.models.googlenet import GOOGLENET_CONVS
from fcnseg.weights import checkpoint
from fcnseg.weights.caffe import load_caffe_fcn, load_caffe_weights
from fcnseg.weights.caffe_format import CaffeLayer, read_caffemodel, write_caffemodel
from fcnseg.weights.transfer import WeightsMismatchError

TINY_VGG = (4, 8, 16, 32, 32, 32)


class TorchvisionStyle(nn.Module):
    """The module layout of torchvision's classifiers, so its state dict has their keys."""

    def __init__(self, features: nn.Sequential, pool: int, classifier: nn.Sequential) -> None:
        super().__init__()
        self.features, self.avgpool, self.classifier = features, nn.AdaptiveAvgPool2d(pool), classifier

    def forward(self, x):
        return self.classifier(torch.flatten(self.avgpool(self.features(x)), 1))


def torchvision_vgg16(widths=(8, 16, 16, 32, 32), fc=64) -> TorchvisionStyle:
    layers, c = [], 3
    for width, repeats in zip(widths, (2, 2, 3, 3, 3), strict=True):
        for _ in range(repeats):
            layers += [nn.Conv2d(c, width, 3, padding=1), nn.ReLU(inplace=True)]
            c = width
        layers.append(nn.MaxPool2d(2, 2))
    head = [
        nn.Linear(c * 49, fc),
        nn.ReLU(True),
        nn.Dropout(),
        nn.Linear(fc, fc),
        nn.ReLU(True),
        nn.Dropout(),
    ]
    return TorchvisionStyle(nn.Sequential(*layers), 7, nn.Sequential(*head, nn.Linear(fc, 1000)))


def torchvision_alexnet() -> TorchvisionStyle:
    """torchvision's AlexNet, with its real shapes."""
    features = nn.Sequential(
        nn.Conv2d(3, 64, 11, 4, 2), nn.ReLU(True), nn.MaxPool2d(3, 2),
        nn.Conv2d(64, 192, 5, padding=2), nn.ReLU(True), nn.MaxPool2d(3, 2),
        nn.Conv2d(192, 384, 3, padding=1), nn.ReLU(True),
        nn.Conv2d(384, 256, 3, padding=1), nn.ReLU(True),
        nn.Conv2d(256, 256, 3, padding=1), nn.ReLU(True), nn.MaxPool2d(3, 2),
    )  # fmt: skip
    classifier = nn.Sequential(
        nn.Dropout(), nn.Linear(9216, 4096), nn.ReLU(True), nn.Dropout(), nn.Linear(4096, 4096), nn.ReLU(True),
        nn.Linear(4096, 1000),
    )  # fmt: skip
    return TorchvisionStyle(features, 6, classifier)


def fc7_of(model: fcnseg.FCN, x: torch.Tensor, first: str) -> torch.Tensor:
    """fc7 of our backbone with the classifier's own input padding, to compare at 224x224."""
    getattr(model.backbone, first).padding = (1, 1) if first == "conv1_1" else (2, 2)
    return model.backbone(x)


@pytest.mark.parametrize("arch", ["fcn32s", "fcn8s"])
def test_torchvision_vgg16_becomes_the_fcn_backbone(arch, tmp_path):
    torch.manual_seed(0)
    classifier = torchvision_vgg16().eval()
    path = tmp_path / "vgg16.pth"
    torch.save(classifier.state_dict(), path)
    model = fcnseg.fcn_from_imagenet(arch, path, num_classes=5).eval()
    assert model.config["widths"] == [8, 16, 16, 32, 32, 64]
    assert model.meta["preprocess"] == "imagenet"
    assert torch.equal(model.backbone.fc6.weight, classifier.classifier[0].weight.reshape(64, 32, 7, 7))
    assert torch.all(model.score_fr.weight == 0)
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        expected = classifier.classifier[:5](torch.flatten(classifier.features(x), 1))
        ours = fc7_of(model, x, "conv1_1")
    assert ours.shape == (1, 64, 1, 1)
    assert torch.allclose(ours.flatten(), expected.flatten(), rtol=1e-4, atol=1e-5)


def test_torchvision_alexnet_with_its_real_shapes():
    torch.manual_seed(0)
    classifier = torchvision_alexnet().eval()
    model = fcnseg.fcn_from_imagenet("fcn-alexnet", classifier.state_dict(), num_classes=21).eval()
    assert model.config["widths"] == [64, 192, 384, 256, 256, 4096]
    assert model.config["groups"] == 1 and model.config["lrn"] is False
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        expected = classifier.classifier[:6](torch.flatten(classifier.features(x), 1))
        ours = fc7_of(model, x, "conv1")
    assert torch.allclose(ours.flatten(), expected.flatten(), rtol=1e-4, atol=1e-4)


def test_torchvision_state_dict_with_unexpected_keys_is_refused():
    state = torchvision_vgg16().state_dict()
    state["features.0.extra"] = torch.zeros(1)
    with pytest.raises(WeightsMismatchError, match="unexpected keys.*features.0.extra"):
        fcnseg.fcn_from_imagenet("fcn8s", state)
    bn = torchvision_vgg16().state_dict() | {"features.1.running_mean": torch.zeros(8)}
    with pytest.raises(WeightsMismatchError, match="batch-normalised"):
        fcnseg.fcn_from_imagenet("fcn8s", bn)


@pytest.mark.parametrize("legacy_v1", [False, True])
def test_caffe_imagenet_classifier_with_inner_product_fc6(tmp_path, legacy_v1):
    rng = np.random.default_rng(0)
    layers, c = [], 3
    names = fcnseg.models.vgg.VGG16_CONVS
    for name in names:
        width = {"1": 4, "2": 8, "3": 8, "4": 16, "5": 16}[name[4]]
        w = rng.standard_normal((width, c, 3, 3)).astype(np.float32)
        layers.append(CaffeLayer(name, "Convolution", [w, rng.standard_normal(width).astype(np.float32)], {}))
        c = width
    for name, shape in (("fc6", (32, 16 * 49)), ("fc7", (32, 32)), ("fc8", (1000, 32))):
        w = rng.standard_normal(shape).astype(np.float32)
        layers.append(CaffeLayer(name, "InnerProduct", [w, np.zeros(shape[0], np.float32)], {}))
    path = tmp_path / "VGG_ILSVRC_16_layers.caffemodel"
    write_caffemodel(path, layers, legacy_v1=legacy_v1)
    model = fcnseg.fcn_from_imagenet("fcn16s", path, num_classes=3)
    assert model.meta["preprocess"] == "caffe"
    assert np.array_equal(
        model.backbone.fc6.weight.detach().numpy(), layers[13].blobs[0].reshape(32, 16, 7, 7)
    )
    assert np.array_equal(model.backbone.conv5_3.bias.detach().numpy(), layers[12].blobs[1])


def _fixture_layers(caffe_fixtures, name="fcn8s"):
    return read_caffemodel(caffe_fixtures / f"{name}.caffemodel")


def test_caffe_model_missing_a_layer(caffe_fixtures, tmp_path):
    path = tmp_path / "broken.caffemodel"
    write_caffemodel(
        path, [layer for layer in _fixture_layers(caffe_fixtures) if layer.name != "score_pool3"]
    )
    with pytest.raises(WeightsMismatchError, match="broken.caffemodel"):
        load_caffe_fcn(path, "fcn8s")  # the file now looks like a 16s: refused for --arch fcn8s
    with pytest.raises(
        WeightsMismatchError, match="layers in the file that the net does not have: upscore8, upscore_pool4"
    ):
        load_caffe_fcn(path)


def test_caffe_model_with_a_misshaped_or_extra_layer(caffe_fixtures, tmp_path):
    layers = _fixture_layers(caffe_fixtures)
    conv = next(layer for layer in layers if layer.name == "conv3_2")
    conv.blobs[0] = conv.blobs[0][:, :8]
    layers.append(CaffeLayer("fc8", "InnerProduct", [np.zeros((2, 2), np.float32)], {}))
    path = tmp_path / "odd.caffemodel"
    write_caffemodel(path, layers)
    with pytest.raises(WeightsMismatchError) as error:
        load_caffe_fcn(path)
    message = str(error.value)
    assert "odd.caffemodel" in message and "fc8" in message
    assert "conv3_2 weight: expected shape (16, 16, 3, 3), file has (16, 8, 3, 3)" in message


def test_wrong_class_count_leaves_the_model_untouched(caffe_fixtures):
    model = fcnseg.build_model("fcn8s", 5, widths=(4, 8, 16, 32, 32, 64))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(WeightsMismatchError, match=r"score_fr weight: expected shape \(5, 64, 1, 1\)"):
        load_caffe_weights(model, caffe_fixtures / "fcn8s.caffemodel")
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_truncated_caffe_model(caffe_fixtures, tmp_path):
    path = tmp_path / "half.caffemodel"
    path.write_bytes((caffe_fixtures / "fcn32s.caffemodel").read_bytes()[:100_000])
    with pytest.raises(ValueError, match="half.caffemodel"):
        fcnseg.load(path)


def test_checkpoint_round_trip_keeps_architecture_classes_and_preprocessing(caffe_fixtures, tmp_path):
    model = load_caffe_fcn(caffe_fixtures / "fcn16s.caffemodel")
    model.meta["class_names"] = [f"c{i}" for i in range(21)]
    path = fcnseg.save_checkpoint(model, tmp_path / "m.pt")
    loaded = fcnseg.load(path)
    assert loaded.config == model.config and loaded.meta == model.meta
    assert not loaded.training
    x = torch.randn(1, 3, 45, 61)
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))
    raw = torch.load(path, weights_only=True)
    assert raw["format"] == "fcnseg" and raw["config"]["arch"] == "fcn16s"


def test_failed_save_leaves_the_previous_checkpoint(tmp_path, monkeypatch):
    model = fcnseg.build_model("fcn32s", 3, widths=TINY_VGG)
    path = fcnseg.save_checkpoint(model, tmp_path / "m.pt")
    good = path.read_bytes()

    def disk_full(obj, f):
        f.write(b"partial")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(checkpoint.torch, "save", disk_full)
    with pytest.raises(OSError, match="No space"):
        fcnseg.save_checkpoint(model, path)
    assert path.read_bytes() == good
    assert [p.name for p in tmp_path.iterdir()] == ["m.pt"]


def test_bad_checkpoints_name_the_file(tmp_path):
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"PK\x03\x04 not really a zip")
    with pytest.raises(ValueError, match="junk.pt"):
        fcnseg.load(junk)
    plain = tmp_path / "plain.pt"
    torch.save({"a": torch.zeros(1)}, plain)
    with pytest.raises(ValueError, match="plain.pt is not an fcnseg checkpoint"):
        fcnseg.load(plain)
    model = fcnseg.build_model("fcn32s", 3, widths=TINY_VGG)
    data = checkpoint.checkpoint_dict(model)
    data["state_dict"]["score_fr.weight"] = torch.zeros(4, 32, 1, 1)
    data["state_dict"]["surprise"] = torch.zeros(1)
    torch.save(data, tmp_path / "bad.pt")
    with pytest.raises(ValueError, match=r"bad.pt(.|\n)*unexpected surprise(.|\n)*score_fr.weight: expected"):
        fcnseg.load(tmp_path / "bad.pt")
    with pytest.raises(FileNotFoundError):
        fcnseg.load(tmp_path / "absent.pt")


def test_load_checks_the_expected_arch(caffe_fixtures, tmp_path):
    shutil.copy(caffe_fixtures / "fcn32s.caffemodel", tmp_path / "weights.bin")
    assert fcnseg.load(tmp_path / "weights.bin").config["arch"] == "fcn32s"  # recognised without suffix
    path = fcnseg.save_checkpoint(fcnseg.build_model("fcn32s", 3, widths=TINY_VGG), tmp_path / "m.pt")
    with pytest.raises(ValueError, match="holds an fcn32s model, not fcn8s"):
        fcnseg.load(path, arch="fcn8s")


class NotWeights:
    """A class of the test module: what a pickle of arbitrary objects holds."""


@pytest.fixture
def foreign_files(tmp_path):
    """``.pt`` files that are not checkpoints: empty, images, a pickle of objects, text."""
    empty = tmp_path / "empty.pt"
    empty.write_bytes(b"")
    photo = tmp_path / "photo.pt"
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(photo, format="JPEG")
    mask = tmp_path / "mask.pt"
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(mask, format="PNG")
    objects = tmp_path / "objects.pt"
    torch.save({"format": "fcnseg", "thing": NotWeights()}, objects)
    text = tmp_path / "notes.pt"
    text.write_text("weights are elsewhere\n")
    return {
        empty: "empty.pt is empty (0 bytes): not a checkpoint",
        photo: "photo.pt is a JPEG image, not a checkpoint or Caffe model",
        mask: "mask.pt is a PNG image, not a checkpoint or Caffe model",
        objects: "objects.pt is not a readable fcnseg checkpoint (it holds Python objects that a safe load refuses",
        text: "notes.pt is neither an fcnseg checkpoint",
    }


@pytest.mark.parametrize("reader", [fcnseg.load, checkpoint.read_checkpoint, checkpoint.load_checkpoint])
def test_files_that_are_no_checkpoint_say_what_they_are(foreign_files, reader):
    for path, message in foreign_files.items():
        with pytest.raises(checkpoint.CheckpointError) as error:
            reader(path)
        assert message in str(error.value)
        assert "weights_only" not in str(error.value)  # torch's advice to load unsafely is not repeated


def test_imagenet_weights_that_are_no_state_dict_say_what_they_are(foreign_files):
    for path, message in foreign_files.items():
        if "neither" in message:  # text: torch.load's own complaint, as for any unreadable file
            message = "notes.pt is not a readable torch state dict"
        message = message.replace("readable fcnseg checkpoint", "readable torch state dict")
        with pytest.raises(checkpoint.CheckpointError) as error:
            fcnseg.fcn_from_imagenet("fcn32s", path)
        assert message in str(error.value) and "weights_only" not in str(error.value)


@pytest.mark.parametrize("command", ["predict", "evaluate"])
def test_commands_refuse_files_that_are_no_checkpoint(foreign_files, tmp_path, capsys, command):
    image = tmp_path / "in.png"
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(image)
    for path, message in foreign_files.items():
        extra = ["--out", str(tmp_path / "out")] if command == "predict" else []
        assert main([command, str(path), str(image) if command == "predict" else "synthetic", *extra]) == 2
        err = capsys.readouterr().err
        assert message in err and "weights_only" not in err
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_caffe_model_in_a_pt_file_is_loaded_but_is_no_checkpoint(caffe_fixtures, tmp_path):
    shutil.copy(caffe_fixtures / "fcn8s.caffemodel", tmp_path / "renamed.pt")
    assert fcnseg.load(tmp_path / "renamed.pt").config["arch"] == "fcn8s"
    with pytest.raises(
        checkpoint.CheckpointError, match="renamed.pt is a Caffe model, not an fcnseg checkpoint"
    ):
        checkpoint.read_checkpoint(tmp_path / "renamed.pt")


def test_caffe_layer_name_that_is_not_utf8_is_named_in_the_error(caffe_fixtures, tmp_path):
    data = (caffe_fixtures / "fcn8s.caffemodel").read_bytes()
    name_field = b"\n\x03fc7\x12"  # field 1 (name), length 3, then field 2 (type) follows
    assert data.count(name_field) == 1
    path = tmp_path / "odd.caffemodel"
    path.write_bytes(data.replace(name_field, b"\n\x03f\xff7\x12"))
    assert read_caffemodel(path)[-1].name  # names are text, whatever bytes the file holds
    with pytest.raises(WeightsMismatchError) as error:
        fcnseg.load(path)
    message = str(error.value)
    assert "layers missing from the file: fc7" in message
    assert "layers in the file that the net does not have: f\\xff7" in message


@pytest.mark.parametrize("mask", [0o022, 0o077, 0o002, 0o027])
def test_outputs_follow_the_umask(tmp_path, monkeypatch, mask):
    """Files get 0666 less the umask, as ``open`` gives them, whether /proc tells the umask or not."""
    model = fcnseg.build_model("fcn32s", 3, widths=TINY_VGG)
    previous = os.umask(mask)
    try:
        written = [
            fcnseg.save_checkpoint(model, tmp_path / "m.pt"),
            files.atomic_write(tmp_path / "a.bin", lambda f: f.write(b"x")),
        ]
        monkeypatch.setattr(files, "_PROC_STATUS", str(tmp_path / "no-proc"))
        written.append(files.atomic_write(tmp_path / "b.bin", lambda f: f.write(b"y")))
        assert os.umask(mask) == mask  # reading the umask left it as it was
    finally:
        os.umask(previous)
    for path in written:
        assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~mask, path


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        ({"config": {"arch": ["fcn32s"]}}, "config names architecture ['fcn32s'], not one of fcn32s,"),
        (
            {"meta": {"preprocess": ["caffe"]}},
            "meta names preprocessing ['caffe'], not one of caffe, imagenet",
        ),
        ({"meta": {"class_names": "abc"}}, "meta's class_names is not a list of names"),
        ({"state_dict": {"conv1_1.weight": 1.0}}, "'state_dict' is not a dict of named tensors"),
        ({"config": {"bogus": 1}}, "its config describes no net (FCN.__init__() got an unexpected keyword"),
        (
            {"config": {"widths": [4, 8, 16, 32, 32, 10**9]}},
            "fc6.bias: expected shape (1000000000,), file has",
        ),
    ],
)
def test_damaged_checkpoint_contents_are_named(tmp_path, damage, message):
    """Read with torch's safe loader, but of the wrong kind or size: named, and nothing huge is built."""
    data = checkpoint.checkpoint_dict(fcnseg.build_model("fcn32s", 3, widths=TINY_VGG))
    for key, value in damage.items():
        data[key] = {**data[key], **value} if key == "config" else value
    torch.save(data, tmp_path / "damaged.pt")
    with pytest.raises(checkpoint.CheckpointError) as error:
        fcnseg.load(tmp_path / "damaged.pt")
    assert "damaged.pt" in str(error.value) and message in str(error.value)


@pytest.mark.parametrize("legacy_v1", [False, True])
def test_caffe_googlenet_classifier_by_its_bvlc_names(tmp_path, legacy_v1):
    layers = googlenet_caffe_layers()
    path = tmp_path / "bvlc_googlenet.caffemodel"
    write_caffemodel(path, layers, legacy_v1=legacy_v1)
    model = fcnseg.fcn_from_imagenet("fcn32s-googlenet", path, num_classes=3)
    assert model.config["widths"] == list(TINY_GOOGLENET) and model.meta["preprocess"] == "caffe"
    by_name = {layer.name: layer.blobs for layer in layers}
    for name in GOOGLENET_CONVS:  # conv1/7x7_s2 is backbone.conv1.7x7_s2, inception_3a/1x1 ...
        conv = model.backbone.get_submodule(name.replace("/", "."))
        assert np.array_equal(conv.weight.detach().numpy(), by_name[name][0]), name
        assert np.array_equal(conv.bias.detach().numpy(), by_name[name][1]), name
    assert not model.score_fr.weight.any()  # the ImageNet classifiers are dropped, the scores start at zero
    with pytest.raises(WeightsMismatchError, match="bvlc_googlenet"):
        fcnseg.fcn_from_imagenet("fcn32s-googlenet", {"features.0.weight": torch.zeros(1)})


def test_caffe_fcn_googlenet_model_loads_as_its_architecture(tmp_path):
    layers = googlenet_caffe_layers(num_classes=4)
    path = tmp_path / "fcn32s-googlenet.caffemodel"
    write_caffemodel(path, layers)
    model = load_caffe_fcn(path)
    assert model.config["arch"] == "fcn32s-googlenet" and model.num_classes == 4
    assert np.array_equal(model.upscore.weight.detach().numpy(), layers[-1].blobs[0])
    assert np.array_equal(model.score_fr.weight.detach().numpy(), layers[-2].blobs[0])
    write_caffemodel(path, [layer for layer in layers if layer.name != "inception_4c/5x5"])
    with pytest.raises(
        WeightsMismatchError, match="googlenet needs layers that the file lacks: inception_4c/5x5"
    ):
        load_caffe_fcn(path)
