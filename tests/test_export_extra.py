"""ONNX export without the ``export`` extra installed: a clear message and exit code 2, no traceback."""

import sys

import pytest
from tiny_nets import tiny_fcn

import fcnseg
from fcnseg.cli import main
from fcnseg.errors import MissingExtraError
from fcnseg.infer.export import export_onnx

MESSAGE = "ONNX export needs the export extra: pip install 'fcnseg[export]'"


@pytest.fixture
def without_onnx(monkeypatch):
    monkeypatch.setitem(sys.modules, "onnx", None)  # what a plain install looks like: import fails


def test_export_onnx_names_the_extra(without_onnx, tmp_path):
    with pytest.raises(MissingExtraError, match=MESSAGE.replace("[", r"\[").replace("]", r"\]")):
        export_onnx(tiny_fcn(num_classes=3), tmp_path / "m.onnx")
    assert list(tmp_path.iterdir()) == []


def test_export_command_without_onnx_exits_2(without_onnx, tmp_path, capsys):
    weights = fcnseg.save_checkpoint(tiny_fcn(num_classes=3), tmp_path / "tiny.pt")
    assert main(["export", "onnx", str(weights), "--out", str(tmp_path / "m.onnx")]) == 2
    captured = capsys.readouterr()
    assert captured.err.strip() == f"fcnseg export: error: {MESSAGE}"
    assert not (tmp_path / "m.onnx").exists()
    assert (
        main(["export", "torchscript", str(weights), "--out", str(tmp_path / "m.ts")]) == 0
    )  # needs no extra
