"""Weights by name: download through FCNSEG_MIRROR from a local server, verify, convert, cache, refuse."""

import dataclasses
import hashlib
import io
import logging
import re
import shlex
import tarfile
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch
from http_server import FileServer
from PIL import Image
from tiny_nets import (
    TINY_GOOGLENET,
    fusion_caffe_layers,
    fusion_nets,
    googlenet_caffe_layers,
    narrow_widths,
    siftflow_caffe_layers,
    siftflow_nets,
)
from torchvision_states import torchvision_fcn_state, torchvision_resnet

import fcnseg
from fcnseg.cli import main
from fcnseg.data.voc import VOC_CLASSES
from fcnseg.download import ChecksumError, DownloadError, RemoteFile
from fcnseg.models.registry import BUILDERS
from fcnseg.models.vgg import VGG16_CONVS, VGG16_WIDTHS
from fcnseg.train.config import TrainConfig
from fcnseg.train.initial import initial_weights, initialise
from fcnseg.weights import hub
from fcnseg.weights.caffe import load_caffe_fcn
from fcnseg.weights.caffe_format import CaffeLayer, write_caffemodel
from fcnseg.weights.checkpoint import CheckpointError
from fcnseg.weights.hub import UnknownWeightsError, Weights

FIXTURE_WIDTHS = (4, 8, 16, 32, 32, 64)  # the Caffe-written fcn8s fixture
# the real entries, before a test empties the registry
BVLC_GOOGLENET, BVLC_VGG16, BVLC_ALEXNET = (
    hub.WEIGHTS[n] for n in ("googlenet-caffe", "vgg16-caffe", "alexnet-caffe")
)
CAFFE_URL = "http://dl.caffe.berkeleyvision.org/fcn8s-heavy-pascal.caffemodel"
CAFFE_PATH = "/fcn8s-heavy-pascal.caffemodel"
TV_URL = "https://download.pytorch.org/models/vgg16-tiny.pth"
TV_PATH = "/models/vgg16-tiny.pth"


@pytest.fixture
def server(monkeypatch, tmp_path):
    """A local server as the mirror of every download, and an empty cache."""
    files = FileServer()
    monkeypatch.setenv("FCNSEG_MIRROR", files.url)
    monkeypatch.setenv("FCNSEG_HOME", str(tmp_path / "home"))
    yield files
    files.close()


@pytest.fixture
def registry(monkeypatch):
    """An empty registry to fill with test entries; the real one needs the real files."""
    weights: dict[str, Weights] = {}
    monkeypatch.setattr(hub, "WEIGHTS", weights)
    return weights


@pytest.fixture
def caffe_bytes(caffe_fixtures):
    return (caffe_fixtures / "fcn8s.caffemodel").read_bytes()


def fcn_entry(**file) -> Weights:
    return Weights(
        RemoteFile(CAFFE_URL, extract=False, unverified=not file, **file),
        "fcn8s",
        21,
        "PASCAL VOC + SBD",
        "caffe",
        FIXTURE_WIDTHS,
        class_names=VOC_CLASSES,
        score="65.5 seg11valid",
    )


def files_in(folder):
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())


def torchvision_vgg16_state(widths=(4, 8, 16, 32, 32), fc=64) -> dict[str, torch.Tensor]:
    """A narrow VGG16 with torchvision's keys: features.<index> convolutions, classifier.0/3/6."""
    generator = torch.Generator().manual_seed(0)
    state, index, channels = {}, 0, 3
    for width, repeats in zip(widths, (2, 2, 3, 3, 3), strict=True):
        for _ in range(repeats):
            state[f"features.{index}.weight"] = torch.randn(width, channels, 3, 3, generator=generator)
            state[f"features.{index}.bias"] = torch.randn(width, generator=generator)
            index, channels = index + 2, width  # convolution, ReLU
        index += 1  # max pool
    for index, (out, inp) in zip((0, 3, 6), ((fc, channels * 49), (fc, fc), (1000, fc)), strict=True):
        state[f"classifier.{index}.weight"] = torch.randn(out, inp, generator=generator)
        state[f"classifier.{index}.bias"] = torch.randn(out, generator=generator)
    return state


def tv_entry(**file) -> Weights:
    return Weights(
        RemoteFile(TV_URL, extract=False, **file), "vgg16", 1000, "ImageNet", "imagenet", FIXTURE_WIDTHS
    )


def test_load_by_name_end_to_end_then_from_the_cache(server, registry, caffe_bytes, caffe_fixtures):
    server.files[CAFFE_PATH] = caffe_bytes
    registry["voc-fcn8s"] = fcn_entry(sha1=hashlib.sha1(caffe_bytes).hexdigest())
    model = fcnseg.load("voc-fcn8s")
    reference = load_caffe_fcn(caffe_fixtures / "fcn8s.caffemodel")
    assert model.config["arch"] == "fcn8s" and not model.training
    for key, value in reference.state_dict().items():
        assert torch.equal(model.state_dict()[key], value), key
    assert model.meta["class_names"] == list(VOC_CLASSES) and model.meta["preprocess"] == "caffe"
    assert model.meta["weights"] == "voc-fcn8s"
    assert server.hits[CAFFE_PATH] == 1  # the mirror took the path of the original URL
    home = hub.home()
    # the original is gone once converted; the SHA-256 of the verified file stays
    assert files_in(home) == ["checkpoints/voc-fcn8s.pt", "downloads/fcn8s-heavy-pascal.caffemodel.sha256"]
    assert hub.is_cached("voc-fcn8s")
    server.files.clear()
    again = fcnseg.load("voc-fcn8s")
    assert server.hits[CAFFE_PATH] == 1  # no network the second time
    assert torch.equal(again.score_fr.weight, model.score_fr.weight)
    image = home.parent / "photo.png"
    Image.fromarray(np.random.RandomState(0).randint(0, 256, (20, 24, 3), dtype=np.uint8)).save(image)
    assert main(["predict", "voc-fcn8s", str(image), "--out", str(home.parent / "out")]) == 0
    assert np.asarray(Image.open(home.parent / "out" / "photo.png")).shape == (20, 24)


def test_checksum_mismatch_names_the_file_and_both_sums_and_keeps_nothing(server, registry, caffe_bytes):
    server.files[CAFFE_PATH] = caffe_bytes
    registry["voc-fcn8s"] = fcn_entry(sha1="0" * 40)
    with pytest.raises(ChecksumError) as info:
        fcnseg.load("voc-fcn8s")
    message = str(info.value)
    assert "fcn8s-heavy-pascal.caffemodel" in message and "0" * 40 in message
    assert hashlib.sha1(caffe_bytes).hexdigest() in message
    assert files_in(hub.home()) == []


@pytest.mark.parametrize("announced", [True, False], ids=["content-length", "no-content-length"])
def test_size_mismatch_is_refused_and_keeps_nothing(server, registry, caffe_bytes, announced):
    server.files[CAFFE_PATH] = caffe_bytes
    if not announced:
        server.no_length.add(CAFFE_PATH)
    registry["voc-fcn8s"] = fcn_entry(size=len(caffe_bytes) + 1)
    with pytest.raises(ChecksumError) as info:
        fcnseg.load("voc-fcn8s")
    assert f"{len(caffe_bytes):,}" in str(info.value) and f"{len(caffe_bytes) + 1:,}" in str(info.value)
    assert "fcn8s-heavy-pascal.caffemodel" in str(info.value)
    assert files_in(hub.home()) == []


def test_interrupted_download_leaves_no_partial_file(server, registry, caffe_bytes):
    server.files[CAFFE_PATH] = caffe_bytes
    server.truncate.add(CAFFE_PATH)
    registry["voc-fcn8s"] = fcn_entry()  # no published sum: only the length can tell
    with pytest.raises(
        DownloadError, match=rf"closed after {len(caffe_bytes) // 2:,} of {len(caffe_bytes):,}"
    ):
        fcnseg.load("voc-fcn8s")
    assert files_in(hub.home()) == []


def test_sha256_recorded_at_first_download_checks_later_copies(server, registry, caffe_bytes, caplog):
    server.files[CAFFE_PATH] = caffe_bytes
    registry["voc-fcn8s"] = fcn_entry(size=len(caffe_bytes))  # a pinned size, no published sum
    with caplog.at_level(logging.WARNING, logger="fcnseg"):
        first = fcnseg.load("voc-fcn8s")
    record = hub.home() / "downloads" / "fcn8s-heavy-pascal.caffemodel.sha256"
    digest = hashlib.sha256(caffe_bytes).hexdigest()
    assert [r.getMessage() for r in caplog.records] == [
        f"no checksum is published for fcn8s-heavy-pascal.caffemodel; its SHA-256 {digest} is recorded in "
        f"{record} and later downloads are checked against it"
    ]
    assert record.read_text() == f"{digest}  fcn8s-heavy-pascal.caffemodel\n"
    (hub.home() / "checkpoints" / "voc-fcn8s.pt").unlink()
    changed = bytearray(caffe_bytes)
    changed[-1] ^= 1  # same size, other content: a different file behind the same URL
    server.files[CAFFE_PATH] = bytes(changed)
    with pytest.raises(ChecksumError, match="recorded at its first download") as info:
        fcnseg.load("voc-fcn8s")
    assert digest in str(info.value) and hashlib.sha256(changed).hexdigest() in str(info.value)
    assert files_in(hub.home()) == ["downloads/fcn8s-heavy-pascal.caffemodel.sha256"]
    server.files[CAFFE_PATH] = caffe_bytes
    assert torch.equal(fcnseg.load("voc-fcn8s").score_fr.weight, first.score_fr.weight)


def test_unknown_name_lists_the_known_names(server, registry, caffe_bytes, capsys):
    registry["voc-fcn8s"] = fcn_entry()
    for call in (lambda: fcnseg.load("voc-fcn9s"), lambda: hub.resolve("imagenett", arch="fcn8s")):
        with pytest.raises(UnknownWeightsError, match="known names: voc-fcn8s"):
            call()
    assert main(["weights", "get", "voc-fcn9s"]) == 2
    assert "voc-fcn9s" in capsys.readouterr().err
    with pytest.raises(FileNotFoundError, match="missing.pt"):  # a path stays a path
        fcnseg.load("runs/missing.pt")
    assert sum(server.hits.values()) == 0


def test_siftflow_and_fusion_models_by_name(server, registry, tmp_path):
    sem, geo = siftflow_nets("fcn8s")
    color, hha = fusion_nets()
    for name, layers in (
        ("siftflow-fcn8s", siftflow_caffe_layers(sem, geo)),
        ("nyud-fcn32s-color-hha", fusion_caffe_layers(color, hha)),
    ):
        write_caffemodel(tmp_path / name, layers)
        server.files[f"/{name}-heavy.caffemodel"] = (tmp_path / name).read_bytes()

    def entry(name, arch, classes, preprocess, heads=()):
        url = f"http://dl.caffe.berkeleyvision.org/{name}-heavy.caffemodel"
        names = tuple(f"class {i}" for i in range(classes))
        file = RemoteFile(url, extract=False, unverified=True)
        widths = narrow_widths("fcn32s" if arch == "fcn32s-late-fusion" else arch)
        return Weights(file, arch, classes, "", preprocess, widths, class_names=names, heads=heads)

    registry["siftflow-fcn8s"] = entry("siftflow-fcn8s", "fcn8s", 8, "siftflow", heads=(5, 3))
    registry["nyud-fcn32s-color-hha"] = entry(
        "nyud-fcn32s-color-hha", "fcn32s-late-fusion", 4, "nyud-color-hha"
    )
    siftflow, fusion = fcnseg.load("siftflow-fcn8s"), fcnseg.load("nyud-fcn32s-color-hha")
    assert siftflow.heads == (5, 3) and siftflow.meta["class_names"][-1] == "class 7"
    assert siftflow.meta["preprocess"] == "siftflow" and siftflow.meta["weights"] == "siftflow-fcn8s"
    assert fusion.config["arch"] == "fcn32s-late-fusion" and fusion.meta["preprocess"] == "nyud-color-hha"
    x = torch.randn(1, 6, 33, 41, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.allclose(siftflow(x[:, :3]), torch.cat([sem(x[:, :3]), geo(x[:, :3])], 1), atol=1e-5)
        assert torch.allclose(fusion(x), (color(x[:, :3]) + hha(x[:, 3:])) / 2, atol=1e-5)

    (hub.home() / "checkpoints" / "siftflow-fcn8s.pt").unlink()
    registry["siftflow-fcn8s"] = entry("siftflow-fcn8s", "fcn8s", 8, "siftflow", heads=(4, 4))
    with pytest.raises(
        ValueError, match=r"holds 8 classes \(heads: \[5, 3\]\), expected 8 \(heads: \[4, 4\]\)"
    ):
        fcnseg.load("siftflow-fcn8s")


def test_weights_list_shows_what_each_is_and_the_cache(server, registry, caffe_bytes, capsys):
    server.files[CAFFE_PATH] = caffe_bytes
    registry["voc-fcn8s"] = fcn_entry(sha1=hashlib.sha1(caffe_bytes).hexdigest())
    registry["vgg16-torchvision"] = tv_entry(sha256="397923af", size=553_433_881)
    assert main(["weights", "list"]) == 0
    out = capsys.readouterr().out
    assert re.search(
        r"^voc-fcn8s +fcn8s +21 +PASCAL VOC \+ SBD +~\d+ MB +sha1, http +65.5 seg11valid +no$", out, re.M
    )
    assert re.search(r"^vgg16-torchvision .* 553.4 MB +sha256 \(8 digits\)\+size +- +no$", out, re.M)
    assert main(["weights", "get", "voc-fcn8s"]) == 0
    assert capsys.readouterr().out.strip() == str(hub.home() / "checkpoints" / "voc-fcn8s.pt")
    assert main(["weights", "list"]) == 0
    out = capsys.readouterr().out
    assert re.search(r"^voc-fcn8s .* yes$", out, re.M) and f"cache: {hub.home()}" in out


def test_real_weights_list_runs_offline(server, capsys):
    assert main(["weights", "list"]) == 0
    out = capsys.readouterr().out
    for name in hub.WEIGHTS:
        assert re.search(rf"^{name} ", out, re.M), name
    assert re.search(r"^siftflow-fcn8s +fcn8s +33\+3 +SIFT Flow .* no$", out, re.M)
    assert re.search(r"^nyud-fcn32s-color-hha +fcn32s-late-fusion +40 .* no$", out, re.M)
    assert "cannot load" not in out and "not loadable" not in out  # every published model loads
    assert sum(server.hits.values()) == 0


def test_real_registry_is_consistent():
    for name, weights in hub.WEIGHTS.items():
        assert weights.is_classifier or weights.is_trunk or weights.arch in BUILDERS, name
        if weights.class_names is not None:
            assert len(weights.class_names) == weights.num_classes, name
        if "download.pytorch.org" in weights.file.url:  # torchvision names carry the SHA-256's start
            prefix = re.search(r"-([0-9a-f]{8})\.pth$", weights.file.url).group(1)
            assert weights.file.sha256.startswith(prefix), name
    for by_family in hub.INIT_NAMES.values():
        assert all(hub.WEIGHTS[name].family == family for family, name in by_family.items())
    estimate_of_alexnet = 4 * 61_100_840  # torchvision's parameter count of its AlexNet
    assert hub.download_size("vgg16-torchvision") == (553_433_881, True)
    assert hub.download_size("vgg16-caffe") == (553_432_081, True)
    assert hub.download_size("alexnet-torchvision") == (estimate_of_alexnet, False)
    assert all(hub.download_size(name) is not None for name in hub.WEIGHTS)


def test_every_entry_has_a_checksum_a_size_or_says_unknown(server, capsys):
    """No source publishes a checksum or an exact size of these; they say so, in the registry and in
    the list, and are checked by their layout (Caffe models all) before their SHA-256 is recorded."""
    unverified = {name for name, weights in hub.WEIGHTS.items() if weights.file.unverified}
    fcn = {"voc-fcn32s", "voc-fcn16s", "voc-fcn8s-atonce", "voc-fcn-alexnet"}
    fcn |= {f"nyud-fcn32s-{m}" for m in ("color", "hha", "color-hha")}
    fcn |= {f"{d}-{a}" for d in ("siftflow", "pascalcontext") for a in ("fcn32s", "fcn16s", "fcn8s")}
    family = {"hed-bsds", "fsds-sk-large", "ssd300-voc0712", "ssd512-voc0712", "vgg16-hed", "vgg16-fsds"}
    assert unverified == fcn | family | {"vgg16-fc-reduced"}
    for name, weights in hub.WEIGHTS.items():
        file = weights.file
        digest = file.md5 or file.sha1 or file.sha256
        assert bool(digest or file.size is not None) != file.unverified, name
        assert weights.is_caffe or digest, name  # a layout check reads Caffe models only
        plain = not any(url.startswith("https://") for url in file.sources)
        assert file.verified_by.endswith(", http") == plain, name
    assert hub.WEIGHTS["vgg16-caffe"].file.sources[0].startswith("https://www.robots.ox.ac.uk/")
    assert hub.WEIGHTS["alexnet-caffe"].file.sources[0].startswith("https://nvidia.box.com/")
    assert main(["weights", "list"]) == 0
    out = capsys.readouterr().out
    for name, weights in hub.WEIGHTS.items():
        shown = re.escape(weights.file.verified_by)
        assert re.search(rf"^{name} .*  {shown}  ", out, re.M), name
        assert (re.search(rf"^{name} .*  no published checksum(, http)?  ", out, re.M) is not None) == (
            name in unverified
        )


def test_init_imagenet_resolves_to_the_converted_classifier(server, registry, monkeypatch):
    state = torchvision_vgg16_state()
    buffer = io.BytesIO()
    torch.save(state, buffer)
    server.files[TV_PATH] = buffer.getvalue()
    registry["vgg16-torchvision"] = tv_entry(sha256=hashlib.sha256(buffer.getvalue()).hexdigest())
    config = TrainConfig(
        arch="fcn16s", widths=FIXTURE_WIDTHS, init="imagenet", preprocess="imagenet", progress=False
    )
    model = fcnseg.build_model("fcn16s", 5, widths=FIXTURE_WIDTHS)
    initialise(model, config, initial_weights(config))
    assert torch.equal(model.backbone.conv1_1.weight, state["features.0.weight"])
    assert torch.equal(model.backbone.conv5_3.weight, state["features.28.weight"])
    assert torch.equal(model.backbone.fc6.weight, state["classifier.0.weight"].reshape(64, 32, 7, 7))
    assert (
        hub.resolve("imagenet", "fcn16s", FIXTURE_WIDTHS)
        == hub.home() / "checkpoints" / "vgg16-torchvision.fcn16s.pt"
    )
    assert server.hits[TV_PATH] == 1  # converted once, from the one download
    assert hub.resolve("imagenet", "fcn8s", FIXTURE_WIDTHS).name == "vgg16-torchvision.fcn8s.pt"
    assert server.hits[TV_PATH] == 1  # the classifier stays cached for other nets
    out = hub.home() / "run"
    args = ["train", "--arch", "fcn8s", "--widths", "4,8,16,32,32,64", "--init", "imagenet"]
    args += [
        "--preprocess",
        "imagenet",
        "--train-images",
        "2",
        "--val-images",
        "1",
        "--image-size",
        "32",
        "40",
    ]
    assert main([*args, "--max-steps", "1", "--lr", "1e-12", "--quiet", "--out", str(out)]) == 0
    trained = torch.load(out / "last.pt", weights_only=True)["state_dict"]["backbone.conv1_1.weight"]
    assert torch.allclose(trained, state["features.0.weight"], atol=1e-6)


def test_init_names_are_checked_against_the_net_before_downloading(server, capsys):
    with pytest.raises(ValueError, match="widths"):  # narrow nets cannot take ImageNet weights
        hub.resolve("imagenet", arch="fcn8s", widths=(4, 8, 16, 32, 32, 64))
    with pytest.raises(ValueError, match="imagenet-caffe"):  # torchvision's AlexNet is single-tower
        hub.resolve("imagenet", arch="fcn-alexnet")
    with pytest.raises(ValueError, match="imagenet-caffe"):
        hub.resolve("alexnet-torchvision", arch="fcn-alexnet")
    with pytest.raises(ValueError, match="vgg16 backbone; fcn-alexnet"):
        hub.resolve("voc-fcn8s", arch="fcn-alexnet")
    args = ["train", "--arch", "fcn8s", "--widths", "4,8,16,32,32,64", "--init", "imagenet", "--quiet"]
    assert main([*args, "--train-images", "2", "--val-images", "1", "--out", str(hub.home() / "run")]) == 2
    assert "cannot take its weights" in capsys.readouterr().err
    assert sum(server.hits.values()) == 0
    path = hub.home() / "some.pt"
    assert hub.resolve(path, arch="fcn8s") == path  # files are the caller's to read


def test_imagenet_caffe_fills_fcn_googlenet_from_bvlc_googlenet(server, registry, tmp_path):
    path = tmp_path / "bvlc_googlenet.caffemodel"
    layers = googlenet_caffe_layers()
    write_caffemodel(path, layers)
    server.files["/bvlc_googlenet.caffemodel"] = path.read_bytes()
    assert BVLC_GOOGLENET.file.url.endswith("/bvlc_googlenet.caffemodel") and BVLC_GOOGLENET.file.sha1
    sha1 = hashlib.sha1(path.read_bytes()).hexdigest()  # the narrow file's, in place of the published one
    registry["googlenet-caffe"] = Weights(
        RemoteFile(BVLC_GOOGLENET.file.url, sha1=sha1, extract=False),
        "googlenet",
        1000,
        "ImageNet",
        "caffe",
        TINY_GOOGLENET,
    )
    out = hub.resolve("imagenet-caffe", arch="fcn32s-googlenet", widths=TINY_GOOGLENET, progress=False)
    assert out.name == "googlenet-caffe.fcn32s-googlenet.pt"
    model = fcnseg.load(out)
    assert model.config["arch"] == "fcn32s-googlenet" and model.meta["preprocess"] == "caffe"
    assert np.array_equal(model.backbone.inception_5b.pool_proj.weight.detach().numpy(), layers[56].blobs[0])
    with pytest.raises(ValueError, match="googlenet backbone; fcn8s is built on vgg16"):
        hub.resolve("googlenet-caffe", arch="fcn8s")


def test_the_familys_published_weights_are_named():
    """HED's, FSDS's and SSD's released models and the trunks they start from, with their addresses
    and the sizes their READMEs state."""
    published = {
        "hed-bsds": ("https://vcl.ucsd.edu/hed/hed_pretrained_bsds.caffemodel", "hed"),
        "fsds-sk-large": ("http://data.kaiz.xyz/projects/skeleton/fsds-pretrained-skl.zip", "fsds"),
        "ssd300-voc0712": (
            "https://drive.google.com/uc?export=download&id=0BzKzrI_SkD1_WVVTSmQxU0dVRzA",
            "ssd300",
        ),
        "ssd512-voc0712": (
            "https://drive.google.com/uc?export=download&id=0BzKzrI_SkD1_ZDIxVHBEcUNBb2s",
            "ssd512",
        ),
        "vgg16-hed": ("https://vcl.ucsd.edu/hed/5stage-vgg.caffemodel", "vgg16-convs"),
        "vgg16-fsds": ("http://data.kaizhao.net/projects/edge/vgg16convs.caffemodel", "vgg16-convs"),
        "vgg16-fc-reduced": (
            "http://cs.unc.edu/~wliu/projects/ParseNet/VGG_ILSVRC_16_layers_fc_reduced.caffemodel",
            "vgg16-reduced",
        ),
    }
    for name, (url, arch) in published.items():
        assert (hub.WEIGHTS[name].file.url, hub.WEIGHTS[name].arch) == (url, arch), name
    assert hub.WEIGHTS["hed-bsds"].file.stated_size == "56MB"
    assert hub.WEIGHTS["vgg16-hed"].file.stated_size == "248MB"
    assert hub.WEIGHTS["ssd300-voc0712"].file.filename == "models_VGGNet_VOC0712_SSD_300x300.tar.gz"
    assert hub.TRUNKS["vgg16-reduced"] == ("ssd300", "ssd512")
    with pytest.raises(ValueError, match="trunk that ssd300 and ssd512 start from, not hed"):
        hub.resolve("vgg16-fc-reduced", arch="hed")
    with pytest.raises(ValueError, match="is a trunk, not a model that predicts"):
        hub.checkpoint("vgg16-hed")


def _ssd_archive(layout: str, blobs) -> bytes:
    """The released model's archive: the caffemodel under models/VGGNet/VOC0712/, beside a prototxt."""
    from test_caffe_ssd import write_ssd_caffemodel

    with tempfile.TemporaryDirectory() as folder:
        side = layout[3:]
        model = Path(folder) / f"VGG_VOC0712_SSD_{side}x{side}_iter_120000.caffemodel"
        write_ssd_caffemodel(model, blobs, layout)
        buffer = io.BytesIO()
        with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
            tar.add(model, f"models/VGGNet/VOC0712/SSD_{side}x{side}/{model.name}")
            info = tarfile.TarInfo(f"models/VGGNet/VOC0712/SSD_{side}x{side}/deploy.prototxt")
            info.size = 4
            tar.addfile(info, io.BytesIO(b"name"))
        return buffer.getvalue()


@pytest.mark.parametrize("layout", ["ssd300", "ssd512"])
def test_ssd_by_name_from_its_archive(server, monkeypatch, layout):
    from test_caffe_ssd import CLASSES, WIDTHS, caffe_blobs, caffe_forward

    blobs = caffe_blobs(2, layout)
    server.files["/uc"] = _ssd_archive(layout, blobs)
    name = f"{layout}-voc0712"
    narrow = dataclasses.replace(
        hub.WEIGHTS[name], num_classes=CLASSES, class_names=("bg", "a", "b"), widths=WIDTHS
    )
    monkeypatch.setitem(hub.WEIGHTS, name, narrow)
    model = fcnseg.load(name)
    assert model.config["arch"] == layout and model.meta["preprocess"] == "ssd"
    assert model.meta["class_names"] == ["bg", "a", "b"] and model.meta["weights"] == name
    size = int(layout[3:])
    x = torch.randn(1, 3, size, size, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    with torch.no_grad():
        loc, _ = model.double()(x)
        want, _ = caffe_forward(blobs, x, layout)
    torch.testing.assert_close(loc.flatten(1), want, rtol=1e-9, atol=1e-9 * float(want.abs().max()))
    record = f"downloads/models_VGGNet_VOC0712_SSD_{size}x{size}.tar.gz.sha256"
    assert files_in(hub.home()) == [f"checkpoints/{name}.pt", record]  # archive and caffemodel gone


def test_a_page_instead_of_the_file_says_to_fetch_it_by_hand(server):
    """Google Drive answers large files with a confirmation page: the download stops, names the
    address and where to put the file, and keeps nothing."""
    server.files["/uc"] = b"<html>Google Drive can't scan this file for viruses.</html>"
    server.content_types["/uc"] = "text/html; charset=utf-8"
    with pytest.raises(DownloadError) as error:
        fcnseg.load("ssd300-voc0712")
    message = str(error.value)
    assert "web page" in message and "by hand from" in message
    assert "models_VGGNet_VOC0712_SSD_300x300.tar.gz" in message
    assert files_in(hub.home()) == []


def _trunk_caffemodel(path, layers: dict[str, tuple[int, ...]]) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    blobs = {name: rng.normal(0, 0.1, shape).astype(np.float32) for name, shape in layers.items()}
    write_caffemodel(
        path,
        [
            CaffeLayer(name, "Convolution", [w, rng.normal(0, 0.1, w.shape[0]).astype(np.float32)], {})
            for name, w in blobs.items()
        ],
    )
    return blobs


def test_published_trunks_start_their_nets(server, monkeypatch, tmp_path):
    """HED's 5stage-vgg fills HED's trunk (its fc6 unused); SSD's fc_reduced fills SSD's, fc6 and fc7
    included; the side and head layers start as the net does."""
    widths = (4, 8, 8, 16, 16, 32)
    convs = [
        f"conv{s}_{i}" for s, n in zip(range(1, 6), (2, 2, 3, 3, 3), strict=True) for i in range(1, n + 1)
    ]
    shapes, channels = {}, 3
    for name in convs:
        width = widths[int(name[4]) - 1]
        shapes[name], channels = (width, channels, 3, 3), width
    hed_blobs = _trunk_caffemodel(tmp_path / "5stage-vgg.caffemodel", {**shapes, "fc6": (64, 16, 7, 7)})
    server.files["/hed/5stage-vgg.caffemodel"] = (tmp_path / "5stage-vgg.caffemodel").read_bytes()
    monkeypatch.setitem(
        hub.WEIGHTS, "vgg16-hed", dataclasses.replace(hub.WEIGHTS["vgg16-hed"], widths=widths)
    )
    config = TrainConfig(task="edges", widths=widths, init="vgg16-hed", preprocess="caffe", progress=False)
    model = fcnseg.build_model("hed", widths=widths)
    initialise(model, config, initial_weights(config))
    assert torch.equal(model.backbone.conv4_2.weight, torch.from_numpy(hed_blobs["conv4_2"]))
    assert torch.count_nonzero(getattr(model, "score-dsn3").weight) == 0  # the sides start as HED's
    assert hub.is_cached("vgg16-hed") and hub.resolve("vgg16-hed", "fsds", widths).name == "vgg16-hed.fsds.pt"
    ssd_blobs = _trunk_caffemodel(
        tmp_path / "fc_reduced.caffemodel", {**shapes, "fc6": (32, 16, 3, 3), "fc7": (32, 32, 1, 1)}
    )
    server.files["/~wliu/projects/ParseNet/VGG_ILSVRC_16_layers_fc_reduced.caffemodel"] = (
        tmp_path / "fc_reduced.caffemodel"
    ).read_bytes()
    reduced = dataclasses.replace(hub.WEIGHTS["vgg16-fc-reduced"], widths=widths)
    monkeypatch.setitem(hub.WEIGHTS, "vgg16-fc-reduced", reduced)
    path = hub.resolve("vgg16-fc-reduced", "ssd512", widths, progress=False)
    state = torch.load(path, weights_only=True)
    assert torch.equal(state["state_dict"]["backbone.fc6.weight"], torch.from_numpy(ssd_blobs["fc6"]))
    assert state["config"]["arch"] == "ssd512" and state["meta"]["preprocess"] == "ssd"
    with pytest.raises(ValueError, match="cannot take its weights"):
        hub.resolve("vgg16-fc-reduced", "ssd300", (4, 8, 8, 16, 16, 64))


RESNET_NARROW = (8, 16, 16, 32)


def torchvision_entry(name: str, arch: str, data: bytes, classes: int, **fields) -> Weights:
    """A torchvision file as published: its SHA-256's first 8 hex digits in its name, and checked."""
    prefix = hashlib.sha256(data).hexdigest()[:8]
    url = f"https://download.pytorch.org/models/{name}-{prefix}.pth"
    return Weights(
        RemoteFile(url, sha256=prefix, extract=False), arch, classes, "", "imagenet", RESNET_NARROW, **fields
    )


def test_resnet_imagenet_offline_says_where_to_put_the_file(server, capsys):
    args = ["train", "--arch", "fcn8s-resnet50", "--init", "imagenet", "--quiet", "--max-steps", "1"]
    assert main([*args, "--out", str(hub.home() / "run")]) == 2  # the real entry; the server has no file
    err = capsys.readouterr().err
    assert "could not download" in err and "/models/resnet50-0676ba61.pth" in err
    sha256 = hub.WEIGHTS["resnet50-torchvision"].file.sha256
    assert f"(sha256 {sha256}) and place it at {hub.home() / 'downloads' / 'resnet50-0676ba61.pth'}" in err


def test_resnet_imagenet_by_name_initialises_a_training_run(server, registry):
    state = torchvision_resnet(18, RESNET_NARROW)
    buffer = io.BytesIO()
    torch.save(state, buffer)
    entry = torchvision_entry("resnet18", "resnet18", buffer.getvalue(), 1000)
    server.files[re.sub(r"^https://[^/]+", "", entry.file.url)] = buffer.getvalue()
    registry["resnet18-torchvision"] = entry
    out = hub.home() / "run"
    args = ["train", "--arch", "fcn8s-resnet18", "--widths", "8,16,16,32", "--init", "imagenet", "--quiet"]
    args += ["--train-images", "2", "--val-images", "1", "--image-size", "32", "40", "--max-steps", "1"]
    assert main([*args, "--lr", "1e-12", "--batch-size", "2", "--out", str(out)]) == 0
    trained = torch.load(out / "last.pt", weights_only=True)
    assert trained["meta"]["preprocess"] == "imagenet"  # the initial weights' preprocessing, settled
    assert torch.allclose(
        trained["state_dict"]["backbone.layer4.1.conv2.weight"], state["layer4.1.conv2.weight"]
    )
    registry["resnet18-torchvision"] = torchvision_entry("resnet18", "resnet18", b"another file", 1000)
    wrong = registry["resnet18-torchvision"].file.filename
    (hub.home() / "downloads" / wrong).write_bytes(buffer.getvalue())  # a file that is not the published one
    with pytest.raises(ChecksumError, match=f"sha256 is {hashlib.sha256(buffer.getvalue()).hexdigest()}"):
        hub.resolve("imagenet", "fcn16s-resnet18", RESNET_NARROW)


def test_torchvision_fcn_by_name(server, registry):
    state = torchvision_fcn_state(50, 21, RESNET_NARROW)
    buffer = io.BytesIO()
    torch.save(state, buffer)
    entry = torchvision_entry(
        "fcn_resnet50_coco",
        "tv-fcn-resnet50",
        buffer.getvalue(),
        21,
        options=(("aux", True),),
        class_names=VOC_CLASSES,
        source_format="torchvision",
    )
    server.files[re.sub(r"^https://[^/]+", "", entry.file.url)] = buffer.getvalue()
    registry["tv-fcn-resnet50-coco"] = entry
    model = fcnseg.load("tv-fcn-resnet50-coco")
    assert model.meta["class_names"] == list(VOC_CLASSES) and model.meta["preprocess"] == "imagenet"
    assert model.config["aux"] is True and not model.training
    assert all(torch.equal(model.state_dict()[k], v) for k, v in state.items())
    original = registry["tv-fcn-resnet50-coco"].file.filename  # converted and removed, its digest kept
    assert files_in(hub.home()) == ["checkpoints/tv-fcn-resnet50-coco.pt", f"downloads/{original}.sha256"]
    labels = fcnseg.predict(model, np.zeros((37, 45, 3), np.uint8))
    assert labels.shape == (37, 45)


def test_a_wrong_file_placed_by_hand_is_refused_and_not_recorded(server, caffe_fixtures, capsys):
    """The real voc-fcn32s publishes no checksum: a narrow test net copied in its place is read (its
    layer shapes only) and refused, named with what it should hold and what it holds; nothing is
    recorded, and the list does not show it cached."""
    placed = hub.home() / "downloads" / "fcn32s-heavy-pascal.caffemodel"
    placed.parent.mkdir(parents=True)
    placed.write_bytes((caffe_fixtures / "fcn32s.caffemodel").read_bytes())
    assert hub.cache_state("voc-fcn32s") == "unchecked" and not hub.is_cached("voc-fcn32s")
    assert main(["weights", "list"]) == 0
    assert re.search(
        r"^voc-fcn32s .* no published checksum, http +63.6 seg11valid +unchecked$",
        capsys.readouterr().out,
        re.M,
    )
    assert main(["weights", "get", "voc-fcn32s"]) == 2
    err = capsys.readouterr().err
    assert (
        f"{placed} is not voc-fcn32s: voc-fcn32s is fcn32s, 21 classes, widths 64,128,256,512,512,4096; "
        in err
    )
    assert "this file holds fcn32s, 21 classes, widths 4,8,16,32,32,64. Remove it; then " in err
    assert (
        "`fcnseg weights get voc-fcn32s` downloads the published file (http://dl.caffe.berkeleyvision.org/"
        in err
    )
    with pytest.raises(hub.UnexpectedFileError, match="this file holds fcn32s"):
        fcnseg.load("voc-fcn32s")
    assert files_in(hub.home()) == ["downloads/fcn32s-heavy-pascal.caffemodel"]  # no record, no checkpoint
    assert hub.cache_state("voc-fcn32s") == "unchecked" and sum(server.hits.values()) == 0
    placed.write_bytes(b"<html>Service unavailable</html>")  # a page saved in place of the file
    with pytest.raises(hub.UnexpectedFileError, match=r"this file holds no fcn32s \(.*not a binary Caffe"):
        fcnseg.load("voc-fcn32s")
    placed.write_bytes((caffe_fixtures / "fcn16s.caffemodel").read_bytes())  # another net altogether
    with pytest.raises(hub.UnexpectedFileError, match="this file holds fcn16s, 21 classes"):
        fcnseg.load("voc-fcn32s")


def test_a_right_file_placed_by_hand_is_checked_recorded_and_converted_offline(
    server, registry, caffe_fixtures
):
    registry["voc-fcn8s"] = fcn_entry()  # no published checksum: its layout is what vouches for it
    data = (caffe_fixtures / "fcn8s.caffemodel").read_bytes()
    placed = hub.home() / "downloads" / "fcn8s-heavy-pascal.caffemodel"
    placed.parent.mkdir(parents=True)
    placed.write_bytes(data)
    assert hub.cache_state("voc-fcn8s") == "unchecked"
    assert main(["weights", "get", "voc-fcn8s"]) == 0
    record = placed.with_name(placed.name + ".sha256")
    assert record.read_text() == f"{hashlib.sha256(data).hexdigest()}  fcn8s-heavy-pascal.caffemodel\n"
    assert hub.cache_state("voc-fcn8s") == "yes" and sum(server.hits.values()) == 0
    assert fcnseg.load("voc-fcn8s").config["widths"] == list(FIXTURE_WIDTHS)


def write_vgg16_classifier(path: Path, widths=(4, 8, 8, 16, 16), fc: int = 32) -> None:
    """A narrow VGG16 ImageNet classifier as Caffe's VGG_ILSVRC_16_layers holds it (fc6 .. fc8 fully
    connected)."""
    rng = np.random.default_rng(0)
    layers, channels = [], 3
    for name in VGG16_CONVS:
        width = widths[int(name[4]) - 1]
        weight = rng.standard_normal((width, channels, 3, 3)).astype(np.float32)
        layers.append(CaffeLayer(name, "Convolution", [weight, np.zeros(width, np.float32)], {}))
        channels = width
    for name, shape in (("fc6", (fc, channels * 49)), ("fc7", (fc, fc)), ("fc8", (1000, fc))):
        weight = rng.standard_normal(shape).astype(np.float32)
        layers.append(CaffeLayer(name, "InnerProduct", [weight, np.zeros(shape[0], np.float32)], {}))
    path.parent.mkdir(parents=True, exist_ok=True)
    write_caffemodel(path, layers)


def test_a_classifier_placed_by_hand_is_listed_cached_once_checked(server, registry):
    unverified = RemoteFile(BVLC_VGG16.file.url, extract=False, unverified=True)
    registry["vgg16-caffe"] = dataclasses.replace(BVLC_VGG16, file=unverified, widths=(4, 8, 8, 16, 16, 32))
    placed = hub.home() / "downloads" / "VGG_ILSVRC_16_layers.caffemodel"
    write_vgg16_classifier(placed)
    assert hub.cache_state("vgg16-caffe") == "unchecked"
    assert hub.fetch("vgg16-caffe", progress=False) == placed
    assert hub.cache_state("vgg16-caffe") == "yes" and sum(server.hits.values()) == 0
    unverified = RemoteFile(BVLC_ALEXNET.file.url, extract=False, unverified=True)
    registry["alexnet-caffe"] = dataclasses.replace(BVLC_ALEXNET, file=unverified)
    alexnet = hub.home() / "downloads" / "bvlc_alexnet.caffemodel"
    alexnet.write_bytes(placed.read_bytes())  # a VGG16 where AlexNet belongs
    with pytest.raises(
        hub.UnexpectedFileError, match=r"this file holds no alexnet classifier \(.*lacks: conv1, "
    ):
        hub.fetch("alexnet-caffe", progress=False)
    assert hub.cache_state("alexnet-caffe") == "unchecked"


def commands_in(message: str) -> list[list[str]]:
    """The ``fcnseg ...`` commands a message quotes in backticks, as argument lists for ``main``."""
    return [shlex.split(command)[1:] for command in re.findall(r"`(fcnseg [^`]+)`", message)]


def test_offline_error_names_the_mirror_and_a_command_that_works(server, registry, caffe_bytes, capsys):
    registry["voc-fcn8s"] = fcn_entry(sha1=hashlib.sha1(caffe_bytes).hexdigest())
    assert main(["weights", "get", "voc-fcn8s"]) == 2  # the mirror has no copy
    err = capsys.readouterr().err
    assert f"FCNSEG_MIRROR is {server.url}: the mirror must hold the file at {server.url}{CAFFE_PATH}" in err
    place, command = re.search(r"place it at (\S+), then run `(fcnseg [^`]+)`, which checks it", err).groups()
    assert command == "fcnseg weights get voc-fcn8s"
    Path(place).write_bytes(caffe_bytes)  # fetched by hand, as the message says
    assert main(commands_in(err)[0]) == 0
    assert capsys.readouterr().out.strip() == str(hub.home() / "checkpoints" / "voc-fcn8s.pt")
    assert server.hits[CAFFE_PATH] == 1  # the one failed attempt


def test_offline_without_a_mirror_says_how_to_set_one(registry, monkeypatch, tmp_path):
    monkeypatch.delenv("FCNSEG_MIRROR", raising=False)
    monkeypatch.setenv("FCNSEG_HOME", str(tmp_path))
    registry["voc-fcn8s"] = dataclasses.replace(
        fcn_entry(),
        file=RemoteFile("http://127.0.0.1:9/fcn8s-heavy-pascal.caffemodel", extract=False, unverified=True),
    )
    with pytest.raises(DownloadError) as error:
        fcnseg.load("voc-fcn8s")
    message = str(error.value)
    assert isinstance(error.value, fcnseg.FcnsegError) and isinstance(error.value, OSError)
    assert (
        "FCNSEG_MIRROR=http://mirror.lan/fcn fetches this file from http://mirror.lan/fcn/fcn8s-heavy-pascal.caffemodel"
        in message
    )
    assert "then run `fcnseg weights get voc-fcn8s`, which checks it and converts it" in message


def test_training_advice_offline_works_when_followed(server, registry, caplog):
    """Offline, "auto" trains from scratch and names the command that fetches the ImageNet weights
    once; that command, and the one in the error, work once the file can be had."""
    buffer = io.BytesIO()
    torch.save(torchvision_vgg16_state(), buffer)
    data = buffer.getvalue()
    # a narrow file behind an entry of VGG16's widths: the net to start takes it, as it would the real one
    registry["vgg16-torchvision"] = dataclasses.replace(
        tv_entry(sha256=hashlib.sha256(data).hexdigest()), widths=VGG16_WIDTHS
    )
    config = TrainConfig(arch="fcn8s", progress=False)
    with caplog.at_level(logging.INFO, logger="fcnseg.train.initial"):
        assert initial_weights(config) is None  # from scratch: the mirror has no copy
    advice = next(r.getMessage() for r in caplog.records if r.name == "fcnseg.train.initial")
    assert advice.startswith(
        "training from scratch: ImageNet weights (imagenet) cannot be had: could not download"
    )
    by_hand, fetch_once = commands_in(advice)
    assert by_hand == ["weights", "get", "vgg16-torchvision"] and fetch_once == [
        "weights",
        "get",
        "imagenet",
        "--arch",
        "fcn8s",
    ]
    server.files[TV_PATH] = data  # network again (here: the mirror has it)
    assert main(fetch_once) == 0
    server.files.clear()  # and offline again: every later run starts from them
    initial = initial_weights(config)
    assert initial is not None and initial["source"] == "imagenet"
    assert torch.equal(
        initial["state_dict"]["backbone.conv1_1.weight"], torchvision_vgg16_state()["features.0.weight"]
    )
    (hub.home() / "downloads" / registry["vgg16-torchvision"].file.filename).unlink()
    place = re.search(r"place it at (\S+),", advice).group(1)
    Path(place).write_bytes(data)  # by hand, as the error says
    assert main(by_hand) == 0


def test_the_commands_that_refusals_name_work(server, registry, tmp_path, monkeypatch, capsys):
    buffer = io.BytesIO()
    torch.save(torchvision_vgg16_state(), buffer)
    data = buffer.getvalue()
    registry["vgg16-torchvision"] = dataclasses.replace(
        tv_entry(sha256=hashlib.sha256(data).hexdigest()), widths=VGG16_WIDTHS
    )
    server.files[TV_PATH] = data
    monkeypatch.chdir(tmp_path)
    for name in ("imagenet", "vgg16-torchvision"):  # names that start a net, given to what predicts
        assert main(["weights", "get", name]) == (2 if name == "imagenet" else 0)
        capsys.readouterr()
        with pytest.raises(fcnseg.FcnsegError, match="not a model that predicts") as error:
            fcnseg.load(name)
        get, train = commands_in(str(error.value))
        assert get[:3] == ["weights", "get", name] and train[0] == "train"
        assert main(get) == 0
        assert Path(capsys.readouterr().out.strip()).name == f"vgg16-torchvision.{get[-1]}.pt"
    classifier = tmp_path / "vgg16-classifier.pth"  # a classifier's file given where a model belongs
    classifier.write_bytes(data)
    with pytest.raises(CheckpointError) as error:
        fcnseg.load(classifier)
    (convert,) = commands_in(str(error.value))
    assert convert == ["convert", "imagenet", str(classifier), "--arch", "fcn8s", "--out", "fcn8s.pt"]
    assert main(convert) == 0 and fcnseg.load(tmp_path / "fcn8s.pt").config["arch"] == "fcn8s"
    caffe_classifier = tmp_path / "VGG_ILSVRC_16_layers.caffemodel"
    write_vgg16_classifier(caffe_classifier)
    assert main(["convert", "caffe", str(caffe_classifier), "--out", "net.pt"]) == 2
    (convert,) = commands_in(capsys.readouterr().err)
    (tmp_path / "fcn8s.pt").unlink()
    assert main(convert) == 0 and fcnseg.load(tmp_path / "fcn8s.pt").config["arch"] == "fcn8s"
    assert main(["info", str(caffe_classifier)]) == 2  # a Caffe model where a checkpoint belongs
    (convert,) = commands_in(capsys.readouterr().err)
    assert convert == [
        "convert",
        "caffe",
        str(caffe_classifier),
        "--out",
        str(tmp_path / "VGG_ILSVRC_16_layers.pt"),
    ]


def test_load_without_progress_is_silent(server, registry, caffe_bytes, caffe_fixtures, capsys, caplog):
    caplog.set_level(logging.DEBUG, logger="fcnseg")
    server.files[CAFFE_PATH] = caffe_bytes
    registry["voc-fcn8s"] = fcn_entry(sha1=hashlib.sha1(caffe_bytes).hexdigest())
    fcnseg.load("voc-fcn8s", progress=False)  # downloaded, verified, converted
    fcnseg.load("voc-fcn8s", progress=False)  # from the cache
    fcnseg.load(caffe_fixtures / "fcn8s.caffemodel", progress=False)  # a file
    assert capsys.readouterr() == ("", "") and caplog.records == []
    (hub.home() / "checkpoints" / "voc-fcn8s.pt").unlink()
    fcnseg.load("voc-fcn8s")  # with progress: what happens goes to the loggers, not to print
    original = hub.home() / "downloads" / "fcn8s-heavy-pascal.caffemodel"
    assert [(r.name, r.levelname, r.getMessage()) for r in caplog.records] == [
        ("fcnseg.download", "INFO", f"downloading {server.url}{CAFFE_PATH} -> {original}"),
        (
            "fcnseg.weights",
            "INFO",
            f"converting {original.name} -> {hub.home() / 'checkpoints' / 'voc-fcn8s.pt'}",
        ),
    ]
    assert capsys.readouterr() == ("", "")  # and no progress bar off a terminal


def test_a_trunk_refused_as_a_model_names_its_task_in_the_train_command():
    with pytest.raises(fcnseg.FcnsegError, match="not a model that predicts") as error:
        fcnseg.load("vgg16-hed")  # refused before any download
    get, train = commands_in(str(error.value))
    assert get == ["weights", "get", "vgg16-hed", "--arch", "hed"]
    assert train == ["train", "--task", "edges", "--arch", "hed", "--init", "vgg16-hed"]
    config = TrainConfig(task=train[2], arch=train[4], init=train[6])  # the flags as train reads them
    assert (config.task, config.arch, config.init) == ("edges", "hed", "vgg16-hed")
