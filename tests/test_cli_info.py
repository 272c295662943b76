"""``fcnseg info``: layers, stride, crops, receptive field, parameters and GFLOPs of a name or a checkpoint."""

import pytest
import torch

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


def source_rows(out: str) -> dict[str, list[str]]:
    """The summary's lines per source map: map, stride, field, step, min, max, ratios, per location, priors."""
    lines = out.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("source ")) + 2
    rows = {}
    for line in lines[start:]:
        if line.startswith("priors "):
            return rows
        name, *values = line.split()
        rows[name] = values
    raise AssertionError("no priors line after the source maps")


def stride_and_field(row: str) -> tuple[str, str, str]:
    """A layer row's output shape, then the stride and receptive field that follow it."""
    words = row.split()
    at = next(i for i, word in enumerate(words) if word.count("x") == 2)
    return words[at], words[at + 1], words[at + 2]


def test_ssd300_at_its_design_size(capsys):
    out = info(capsys, "ssd300")
    lines = out.splitlines()
    assert lines[0] == "ssd300: detection, 21 classes, input 3x300x300"
    layers = {line.split()[0]: line for line in lines if line}
    # VGG16's conv4_3: stride 8, field 92; pool5 3x3/1 adds 2 * 16 and fc6's 3x3 taps at dilation 6
    # span 13 positions of stride 16: 196 + 32 + 12 * 16 = 420; the heads' 3x3 add two strides
    assert stride_and_field(layers["conv4_3"]) == ("512x38x38", "8", "92")
    assert "max 3x3 pad 1 ceil" in layers["pool5"]
    assert stride_and_field(layers["pool5"]) == ("512x19x19", "16", "228")
    assert "conv 3x3 pad 6 dil 6" in layers["fc6"]
    assert stride_and_field(layers["fc6"]) == ("1024x19x19", "16", "420")
    assert stride_and_field(layers["conv4_3_norm_mbox_loc"]) == ("16x38x38", "8", "108")
    assert stride_and_field(layers["conv9_2_mbox_conf"]) == ("84x1x1", "64", "900")
    for name in ("conv4_3_norm", "conv6_1", "conv9_2", "fc7_mbox_conf"):
        assert name in layers
    assert "(loc)" in layers and layers["(loc)"].split()[-1] == "8732x4"
    with torch.device("meta"):
        model = fcnseg.build_model("ssd300")
    rows = source_rows(out)
    assert list(rows) == list(model.head_inputs)
    assert [tuple(map(int, r[0].split("x"))) for r in rows.values()] == model.map_sizes((300, 300))
    assert [(int(r[1]), int(r[2])) for r in rows.values()] == [
        (8, 92),
        (16, 420),
        (32, 452),
        (64, 516),
        (64, 644),
        (64, 772),
    ]
    assert rows["fc7"][3:7] == ["16", "60", "111", "1,2,1/2,3,1/3"]
    counts = [int(r[-1].replace(",", "")) for r in rows.values()]
    assert counts == [5776, 2166, 600, 150, 36, 4] and sum(counts) == 8732
    assert any(line.startswith("priors            8,732 ") for line in lines)
    assert "parameters        26,285,486 (26.3 M)" in lines


def test_ssd300_at_another_size(capsys):
    out = info(capsys, "ssd300", "--size", "512x384", "--num-classes", "5")
    with torch.device("meta"):
        model = fcnseg.build_model("ssd300", 5)
    rows = source_rows(out)
    sizes = [tuple(map(int, r[0].split("x"))) for r in rows.values()]
    assert sizes == model.map_sizes((512, 384)) and sizes[0] == (64, 48)
    total = sum(int(r[-1].replace(",", "")) for r in rows.values())
    assert total == len(model.priors((512, 384))) != 8732
    assert f"priors            {total:,} " in out
    assert out.splitlines()[-1].endswith("per 512x384 image (1 MAC = 2 FLOPs)")


def test_ssd_checkpoint(capsys, tmp_path):
    model = fcnseg.build_model("ssd300", 4, widths=(4, 8, 8, 16, 16, 16))
    path = fcnseg.save_checkpoint(model, tmp_path / "ssd.pt")
    out = info(capsys, str(path))
    assert out.splitlines()[0] == f"{path} (ssd300): detection, 4 classes, input 3x300x300"
    assert sum(int(r[-1].replace(",", "")) for r in source_rows(out).values()) == 8732
    params = sum(p.numel() for p in model.parameters())
    assert f"parameters        {params:,} " in out


def test_resnet_nets_show_their_taps_and_chosen_upsamplers(capsys):
    out = info(capsys, "fcn8s-resnet50", "--size", "500x375")
    assert "crop offsets      upscore8 7, score_layer3 0, score_layer2 0" in out
    assert (
        "trunk taps        layer1 256ch /4 field 35; layer2 512ch /8 field 91; layer3 1024ch /16 field 267; "
        "layer4 2048ch /32 field 427"
    ) in out
    assert "score_fr centres  x = 32 * i + 0 in input pixels" in out
    assert "upscore_layer3         deconv 3/2 pad 1                21x64x48" in out
    out = info(capsys, "tv-fcn-resnet101", "--size", "64")
    assert "output stride     8 (layer4, dilated), then the classifier (FCNHead)" in out
    assert "which shows them at 8 * i + 3.5 where a side is a multiple of 8" in out
    assert "(output)               bilinear resize                 21x64x64" in out


@pytest.fixture
def offline(monkeypatch, tmp_path):
    """An empty cache and a mirror that answers nothing: any download would fail."""
    monkeypatch.setenv("FCNSEG_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("FCNSEG_MIRROR", "http://127.0.0.1:9")
    return tmp_path / "home"


def test_published_names_describe_their_net_without_downloading(capsys, offline):
    out = info(capsys, "voc-fcn8s")
    lines = out.splitlines()
    assert lines[0] == "voc-fcn8s (fcn8s, published weights; not downloaded): 21 classes, input 3x500x500"
    assert lines[2:] == info(capsys, "fcn8s").splitlines()[2:]  # the net the name loads as
    out = info(capsys, "siftflow-fcn16s", "--size", "256")
    with torch.device("meta"):  # two heads side by side: SIFT Flow's 33 semantic and 3 geometric classes
        params = sum(p.numel() for p in fcnseg.build_model("fcn16s", 36, heads=(33, 3)).parameters())
    assert f"parameters        {params:,} ({params / 1e6:.1f} M)" in out.splitlines()
    out = info(capsys, "pascalcontext-fcn32s")
    assert out.splitlines()[-2] == info(capsys, "fcn32s", "--num-classes", "60").splitlines()[-2]
    assert (
        info(capsys, "hed-bsds")
        .splitlines()[0]
        .startswith("hed-bsds (hed, published weights; not downloaded)")
    )
    assert "input 3x300x300" in info(capsys, "ssd300-voc0712").splitlines()[0]
    assert not offline.exists()  # nothing was fetched, nothing written


def test_names_that_build_no_net_say_what_to_describe(capsys, offline):
    assert main(["info", "vgg16-caffe"]) == 2
    err = capsys.readouterr().err
    assert "vgg16-caffe is an ImageNet classifier that starts a net, and builds none itself" in err
    assert "`fcnseg info fcn32s` describes a net it starts" in err
    assert main(["info", "fcn32s"]) == 0  # the command it names
    assert main(["info", "googlenet-caffe"]) == 2  # each classifier names a net of its own family
    assert "`fcnseg info fcn32s-googlenet` describes a net it starts" in capsys.readouterr().err
    assert main(["info", "vgg16-hed"]) == 2
    assert "`fcnseg info hed` describes a net it starts" in capsys.readouterr().err
    assert main(["info", "imagenet"]) == 2
    assert main(["info", "voc-fcn9s"]) == 2
    assert "nor a published model ('fcnseg weights list' names them)" in capsys.readouterr().err
