"""hubconf.py: every net through the entry points torch.hub calls in a clone."""

import dataclasses
import hashlib
import importlib.util
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


@pytest.fixture(autouse=True)
def downloads_stay_local(monkeypatch):
    """Every download an entry point might start goes to the loopback, where nothing listens,
    unless a test points it at its own local server."""
    monkeypatch.setenv("FCNSEG_MIRROR", "http://127.0.0.1:9")


def clone_hubconf():
    spec = importlib.util.spec_from_file_location("hubconf", CLONE / "hubconf.py")
    hubconf = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(hubconf)
    return hubconf


def hub_load(entry: str, **options):
    """What ``torch.hub.load(clone, entry, source="local", **options)`` does: import the clone's
    hubconf.py, check that its ``dependencies`` import, call the entry point."""
    hubconf = clone_hubconf()
    assert [name for name in hubconf.dependencies if importlib.util.find_spec(name) is None] == []
    return getattr(hubconf, entry)(**options)


def test_a_fresh_net_takes_build_model_options():
    net = hub_load("fcn8s", weights=None, num_classes=5)
    assert isinstance(net, fcnseg.FCN) and net.num_classes == 5 and net.skips == ("pool4", "pool3")
    detector = hub_load("ssd300", widths=(4, 8, 8, 16, 16, 32))
    assert type(detector).__name__ == "SSD" and detector.backbone.conv1_1.out_channels == 4


def test_every_architecture_has_an_entry_point():
    hubconf = clone_hubconf()
    assert {"fcn8s", "hed", "ssd300", "fcn32s_googlenet"} <= set(dir(hubconf))
    assert all(callable(getattr(hubconf, arch.replace("-", "_"))) for arch in BUILDERS)


def test_weights_load_a_file_and_refuse_options(tmp_path):
    trained = fcnseg.build_model("fcn32s", 3, widths=(4, 8, 8, 16, 16, 32))
    fcnseg.save_checkpoint(trained, tmp_path / "mine.pt")
    net = hub_load("fcn32s", weights=str(tmp_path / "mine.pt"))
    expected = trained.state_dict()
    assert net.state_dict().keys() == expected.keys()
    assert all(torch.equal(value, expected[key]) for key, value in net.state_dict().items())
    with pytest.raises(TypeError, match="apply to fresh weights"):
        hub_load("fcn32s", weights=str(tmp_path / "mine.pt"), num_classes=4)


def test_weights_by_published_name_are_fetched_once_and_quietly(
    monkeypatch, tmp_path, caffe_fixtures, capsys, caplog
):
    """``weights="voc-fcn8s"``: downloaded (here from the local server), verified, converted once;
    ``progress=False`` prints and logs nothing. A name of another net is refused before any download."""
    data = (caffe_fixtures / "fcn8s.caffemodel").read_bytes()  # a narrow FCN-8s, as Caffe wrote it
    server = FileServer()
    try:
        server.files["/fcn8s-heavy-pascal.caffemodel"] = data
        file = RemoteFile(
            f"{server.url}/fcn8s-heavy-pascal.caffemodel", sha1=hashlib.sha1(data).hexdigest(), extract=False
        )
        narrow = dataclasses.replace(hub.WEIGHTS["voc-fcn8s"], file=file, widths=(4, 8, 16, 32, 32, 64))
        monkeypatch.setitem(hub.WEIGHTS, "voc-fcn8s", narrow)
        monkeypatch.setenv("FCNSEG_MIRROR", server.url)  # any download, even of a name refused, comes here
        monkeypatch.setenv("FCNSEG_HOME", str(tmp_path / "home"))
        caplog.set_level(logging.DEBUG, logger="fcnseg")
        net = hub_load("fcn8s", weights="voc-fcn8s", progress=False)
        again = hub_load("fcn8s", weights="voc-fcn8s", progress=False)
        assert capsys.readouterr() == ("", "") and caplog.records == []
        assert server.hits["/fcn8s-heavy-pascal.caffemodel"] == 1  # the second from the cache
        assert net.meta["weights"] == "voc-fcn8s" and not net.training
        reference = load_caffe_fcn(caffe_fixtures / "fcn8s.caffemodel").state_dict()
        for model in (net, again):
            assert all(torch.equal(value, reference[key]) for key, value in model.state_dict().items())
        server.files.clear()
        with pytest.raises(fcnseg.FcnsegError, match="voc-fcn16s is an fcn16s model, not fcn8s"):
            hub_load("fcn8s", weights="voc-fcn16s")
        with pytest.raises(fcnseg.FcnsegError, match="not a model that predicts"):
            hub_load("fcn8s", weights="imagenet")
        assert sum(server.hits.values()) == 1  # both refused before any download
    finally:
        server.close()
