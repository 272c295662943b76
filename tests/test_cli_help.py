"""``--help`` of every sub-command shows defaults, and each shown default is the real one.

A default shown as ``(default: X)`` must, given back as the flag's value, change nothing:
for ``fcnseg train`` the resulting TrainConfig equals the one without the flag (its flags
default to None so that a recipe can set them; the help shows TrainConfig's defaults).
"""

import dataclasses
import re

import pytest

import fcnseg
from fcnseg.cli import build_parser, main
from fcnseg.cli.train import config_from_args
from fcnseg.train.config import TrainConfig

REQUIRED = {
    ("predict",): ["w.pt", "x.png", "--out", "o"],
    ("serve",): ["w.pt"],
    ("evaluate",): ["w.pt", "data"],
    ("demo",): [],
    ("info",): ["fcn8s"],
    ("export",): ["onnx", "w.pt", "--out", "o"],
    ("convert", "caffe"): ["w.caffemodel", "--out", "o"],
    ("convert", "imagenet"): ["w.pth", "--arch", "fcn8s", "--out", "o"],
    ("train",): [],
}
"""Each sub-command with the arguments it cannot run without."""


def shown_defaults(command: tuple[str, ...], capsys, monkeypatch) -> dict[str, str]:
    """``{flag: default as shown}`` from the real ``--help`` output."""
    monkeypatch.setenv("COLUMNS", "200")
    with pytest.raises(SystemExit):
        main([*command, "--help"])
    text = capsys.readouterr().out
    options = re.split(r"\n(?=  -)", text.split("options:", 1)[1])
    shown = {}
    for option in options:
        flat = " ".join(option.split())
        found = re.search(r"\(default: ([^()]*)\)$", flat)
        if found:
            shown[flat.split()[0].rstrip(",")] = found.group(1)
    return shown


def dest(flag: str) -> str:
    return flag[2:].replace("-", "_")


def test_train_help_shows_the_trainconfig_defaults(capsys, monkeypatch):
    shown = shown_defaults(("train",), capsys, monkeypatch)
    defaults = TrainConfig()
    parser = build_parser()
    declared = {f.name: f.default for f in dataclasses.fields(TrainConfig)}
    for flag, value in shown.items():
        if declared[dest(flag)] is None:  # the help says in words what no value means
            continue
        real = getattr(defaults, dest(flag))
        if isinstance(real, bool):
            assert value == ("on" if real else "off"), flag
            continue
        given = config_from_args(parser.parse_args(["train", flag, *value.split()]))
        assert getattr(given, dest(flag)) == real, flag
    flags_with_defaults = {"--lr", "--momentum", "--arch", "--epochs", "--image-size", "--flip", "--out"}
    assert flags_with_defaults <= set(shown) and {dest(f) for f in shown} <= set(declared)


@pytest.mark.parametrize("command", [c for c in REQUIRED if c != ("train",)], ids=" ".join)
def test_help_shows_the_real_defaults(command, capsys, monkeypatch):
    shown = shown_defaults(command, capsys, monkeypatch)
    parser, base = build_parser(), [*command, *REQUIRED[command]]
    defaults = vars(parser.parse_args(base))
    for flag, value in shown.items():
        if defaults[dest(flag)] is None:  # the help says in words what no value means
            continue
        assert vars(parser.parse_args([*base, flag, *value.split()])) == defaults, flag
    if command == ("predict",):
        expected = {"--overlay-format", "--overlay-alpha", "--probs-dtype", "--device", "--precision"}
        assert expected | {"--batch-size", "--max-megapixels"} <= set(shown)
        assert shown["--precision"] == "fp32"


def test_version_prints_the_package_version(capsys):
    with pytest.raises(SystemExit) as done:
        main(["--version"])
    assert done.value.code == 0
    assert capsys.readouterr().out == f"fcnseg {fcnseg.__version__}\n"
