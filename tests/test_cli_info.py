"""``fcnseg info``: layers, stride, crops, receptive field, parameters and GFLOPs of a name or a checkpoint."""

import pytest

import fcnseg
from fcnseg.cli import main


def info(capsys, *argv: str) -> str:
    assert main(["info", *argv]) == 0
    return capsys.readouterr().out


def test_fcn32s_at_500(capsys):
    out = info(capsys, "fcn32s", "--size", "500x500")
    lines = out.splitlines()
    assert lines[0] == "fcn32s: 21 classes, input 3x500x500"
    assert (
        "conv1_1         conv 3x3 pad 100              64x698x698       1      3        1,792    0.842"
        in lines
    )
    assert "pool5           max 2x2 /2 ceil                512x22x22      32    212" in lines
    assert (
        "fc6             conv 7x7                      4096x16x16      32    404  102,764,544   26.307"
        in lines
    )
    assert "(output)        crop at 19                    21x500x500" in lines
    assert "crop offsets      upscore 19" in lines
    assert "score_fr centres  x = 32 * i + 12.5 in input pixels" in lines
    assert "receptive field   404x404 pixels (score_fr)" in lines
    assert "parameters        136,152,917 (136.2 M)" in lines
    assert lines[-1] == "compute           181.4 GMACs = 362.7 GFLOPs per 500x500 image (1 MAC = 2 FLOPs)"
    assert not any(line.startswith("relu") for line in lines)


def test_dilated_variant_and_skips(capsys):
    out = info(capsys, "fcn8s-dilated", "--size", "500")
    assert (
        "fc6             conv 7x7 dil 4                4096x63x63       8    404  102,764,544  407.856" in out
    )
    assert "output stride     8 (score_fr), upsampled by upscore (16/8)" in out
    out = info(capsys, "fcn8s", "--all-layers")
    assert "crop offsets      upscore8 31, score_pool4 5, score_pool3 9" in out
    assert "relu1_1" in out


def test_checkpoint(capsys, tmp_path):
    model = fcnseg.build_model("fcn16s", 6, widths=(4, 8, 16, 32, 32, 64))
    path = fcnseg.save_checkpoint(model, tmp_path / "tiny.pt")
    out = info(capsys, str(path), "--size", "64x96")
    assert out.splitlines()[0] == f"{path} (fcn16s): 6 classes, input 3x64x96"
    assert "crop offsets      upscore16 27, score_pool4 5" in out


def test_errors(capsys):
    assert main(["info", "fcn99s"]) == 2
    assert "neither an architecture" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["info", "fcn32s", "--size", "big"])
