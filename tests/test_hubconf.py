"""hubconf.py: every net through torch.hub from a clone (source="local": nothing is downloaded)."""

from pathlib import Path

import pytest
import torch

import fcnseg
from fcnseg.models.registry import BUILDERS

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
