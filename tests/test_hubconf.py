"""hubconf.py: every net through torch.hub from a clone (source="local": nothing is downloaded)."""

import dataclasses
import hashlib
import logging
from pathlib import Path

import pytest
import torch
from http_server import FileServer

import fcnseg
from fcnseg.download import RemoteFile
from fcnseg.models.registry import BUILDERS
from fcnseg.weights import hub
from fcnseg.weights.caffe import load_caffe_fcn

CLONE = Path(__file__).resolve().parents[1]


def test_a_fresh_net_takes_build_model_options():
    net = torch.hub.load(str(CLONE), "fcn8s", source="local", weights=None, num_classes=5)
    assert isinstance(net, fcnseg.FCN) and net.num_classes == 5 and net.skips == ("pool4", "pool3")
    detector = torch.hub.load(str(CLONE), "ssd300", source="local", widths=(4, 8, 8, 16, 16, 32))
    assert type(detector).__name__ == "SSD" and detector.backbone.conv1_1.out_channels == 4


def test_every_architecture_has_an_entry_point():
    hub = torch.hub._import_module("hubconf", str(CLONE / "hubconf.py"))
    assert {"fcn8s", "hed", "ssd300", "fcn32s_googlenet"} <= set(dir(hub))
    assert all(callable(getattr(hub, arch.replace("-", "_"))) for arch in BUILDERS)


def test_weights_load_a_file_and_refuse_options(tmp_path):
    trained = fcnseg.build_model("fcn32s", 3, widths=(4, 8, 8, 16, 16, 32))
    fcnseg.save_checkpoint(trained, tmp_path / "mine.pt")
    net = torch.hub.load(str(CLONE), "fcn32s", source="local", weights=str(tmp_path / "mine.pt"))
    expected = trained.state_dict()
    assert net.state_dict().keys() == expected.keys()
    assert all(torch.equal(value, expected[key]) for key, value in net.state_dict().items())
    with pytest.raises(TypeError, match="apply to fresh weights"):
        torch.hub.load(str(CLONE), "fcn32s", source="local", weights=str(tmp_path / "mine.pt"), num_classes=4)


def test_weights_by_published_name_are_fetched_once_and_quietly(
    monkeypatch, tmp_path, caffe_fixtures, capsys, caplog
):
    """``weights="voc-fcn8s"``: downloaded (here from a local mirror), verified, converted once;
    ``progress=False`` prints and logs nothing. A name of another net is refused before any download."""
    data = (caffe_fixtures / "fcn8s.caffemodel").read_bytes()  # a narrow FCN-8s, as Caffe wrote it
    url = hub.WEIGHTS["voc-fcn8s"].file.url
    file = RemoteFile(url, sha1=hashlib.sha1(data).hexdigest(), extract=False)
    narrow = dataclasses.replace(hub.WEIGHTS["voc-fcn8s"], file=file, widths=(4, 8, 16, 32, 32, 64))
    monkeypatch.setitem(hub.WEIGHTS, "voc-fcn8s", narrow)
    server = FileServer()
    try:
        server.files["/fcn8s-heavy-pascal.caffemodel"] = data
        monkeypatch.setenv("FCNSEG_MIRROR", server.url)
        monkeypatch.setenv("FCNSEG_HOME", str(tmp_path / "home"))
        caplog.set_level(logging.DEBUG, logger="fcnseg")
        net = torch.hub.load(str(CLONE), "fcn8s", source="local", weights="voc-fcn8s", progress=False)
        again = torch.hub.load(str(CLONE), "fcn8s", source="local", weights="voc-fcn8s", progress=False)
        assert capsys.readouterr() == ("", "") and caplog.records == []
        assert server.hits["/fcn8s-heavy-pascal.caffemodel"] == 1  # the second from the cache
        assert net.meta["weights"] == "voc-fcn8s" and not net.training
        reference = load_caffe_fcn(caffe_fixtures / "fcn8s.caffemodel").state_dict()
        for model in (net, again):
            assert all(torch.equal(value, reference[key]) for key, value in model.state_dict().items())
        server.files.clear()
        with pytest.raises(fcnseg.FcnsegError, match="voc-fcn16s is an fcn16s model, not fcn8s"):
            torch.hub.load(str(CLONE), "fcn8s", source="local", weights="voc-fcn16s")
        with pytest.raises(fcnseg.FcnsegError, match="not a model that predicts"):
            torch.hub.load(str(CLONE), "fcn8s", source="local", weights="imagenet")
        assert sum(server.hits.values()) == 1  # both refused before any download
    finally:
        server.close()
