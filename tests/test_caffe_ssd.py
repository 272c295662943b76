"""A Caffe SSD model (the layouts of VGG_VOC0712_SSD_300x300_iter_120000.caffemodel and of the SSD512
one) loads by layer name, every layer's width read from the file, and the loaded net computes what
the Caffe graph computes, written out here layer by layer."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import fcnseg
from fcnseg.cli import main
from fcnseg.detection import prior_boxes
from fcnseg.weights.caffe_format import CaffeLayer, write_caffemodel
from fcnseg.weights.transfer import WeightsMismatchError

WIDTHS = (4, 8, 8, 16, 16, 16)
CLASSES = 3
# The prototxt of ssd_pascal.py: VGG16's 3x3 convolutions (pad 1), 2x2 max-pooling after each stage
# but the last, then (kernel, stride, pad) of the extra layers; ssd_pascal_512.py's extra layers.
VGG = [f"conv{s}_{i}" for s, n in zip(range(1, 6), (2, 2, 3, 3, 3), strict=True) for i in range(1, n + 1)]
POOLED = ("conv1_2", "conv2_2", "conv3_3", "conv4_3")
EXTRAS = {
    "ssd300": [
        ("conv6_1", (1, 1, 0)), ("conv6_2", (3, 2, 1)), ("conv7_1", (1, 1, 0)), ("conv7_2", (3, 2, 1)),
        ("conv8_1", (1, 1, 0)), ("conv8_2", (3, 1, 0)), ("conv9_1", (1, 1, 0)), ("conv9_2", (3, 1, 0)),
    ],
    "ssd512": [
        ("conv6_1", (1, 1, 0)), ("conv6_2", (3, 2, 1)), ("conv7_1", (1, 1, 0)), ("conv7_2", (3, 2, 1)),
        ("conv8_1", (1, 1, 0)), ("conv8_2", (3, 2, 1)), ("conv9_1", (1, 1, 0)), ("conv9_2", (3, 2, 1)),
        ("conv10_1", (1, 1, 0)), ("conv10_2", (4, 1, 1)),
    ],
}  # fmt: skip
SOURCES = {
    "ssd300": ["conv4_3_norm", "fc7", "conv6_2", "conv7_2", "conv8_2", "conv9_2"],
    "ssd512": ["conv4_3_norm", "fc7", "conv6_2", "conv7_2", "conv8_2", "conv9_2", "conv10_2"],
}
PRIORS_PER_LOCATION = {"ssd300": [4, 6, 6, 6, 4, 4], "ssd512": [4, 6, 6, 6, 6, 4, 4]}
NARROW_EXTRAS = {"ssd300": (4, 8, 2, 4, 2, 4, 2, 4), "ssd512": (4, 8, 2, 4, 2, 4, 2, 4, 2, 4)}
"""The extra layers of a net whose fc7 is 16 wide, as ssd_pascal.py derives them (a share of fc7's)."""


def caffe_blobs(
    seed: int = 0, layout: str = "ssd300", trunk: tuple[int, ...] | None = None, extras=None
) -> dict[str, list[np.ndarray]]:
    """Random weights for every learned layer of a narrow SSD, in Caffe's shapes: ``trunk`` the 15
    widths of conv1_1 .. conv5_3, fc6, fc7 (default: :data:`WIDTHS` stage by stage), ``extras`` the
    extra layers' (default: the shares of fc7's)."""
    rng = np.random.default_rng(seed)
    blobs, channels = {}, 3
    trunk = trunk or (
        *(w for w, n in zip(WIDTHS[:5], (2, 2, 3, 3, 3), strict=True) for _ in range(n)),
        16,
        16,
    )

    def conv(name, out, inp, k):
        blobs[name] = [
            rng.normal(0, 0.3, (out, inp, k, k)).astype(np.float32),
            rng.normal(0, 0.1, out).astype(np.float32),
        ]

    for name, width in zip([*VGG, "fc6", "fc7"], trunk, strict=True):
        conv(name, width, channels, 3 if name != "fc7" else 1)
        channels = width
    tops = {"conv4_3_norm": trunk[VGG.index("conv4_3")], "fc7": trunk[-1]}
    for (name, (k, _, _)), width in zip(EXTRAS[layout], extras or NARROW_EXTRAS[layout], strict=True):
        conv(name, width, channels, k)
        channels = tops[name] = width
    blobs["conv4_3_norm"] = [rng.uniform(10, 30, tops["conv4_3_norm"]).astype(np.float32)]
    for source, count in zip(SOURCES[layout], PRIORS_PER_LOCATION[layout], strict=True):
        conv(f"{source}_mbox_loc", count * 4, tops[source], 3)
        conv(f"{source}_mbox_conf", count * CLASSES, tops[source], 3)
    return blobs


def write_ssd_caffemodel(path, blobs, layout: str = "ssd300"):
    """The blobs as Caffe stores them, among the reference's weightless layers."""
    layers = [
        CaffeLayer(name, "Normalize" if name == "conv4_3_norm" else "Convolution", b, {})
        for name, b in blobs.items()
    ]
    for source in SOURCES[layout]:
        for head in ("loc", "conf"):
            layers += [
                CaffeLayer(f"{source}_mbox_{head}_perm", "Permute", [], {}),
                CaffeLayer(f"{source}_mbox_{head}_flat", "Flatten", [], {}),
            ]
        layers.append(CaffeLayer(f"{source}_mbox_priorbox", "PriorBox", [], {}))
    layers += [
        CaffeLayer(n, t, [], {})
        for n, t in (("mbox_loc", "Concat"), ("mbox_conf", "Concat"), ("pool5", "Pooling"))
    ]
    write_caffemodel(path, layers, name=f"VGG_VOC0712_SSD_{layout[3:]}x{layout[3:]}_train")


def caffe_forward(blobs, x, layout: str = "ssd300"):
    """The Caffe graph in NCHW: convolutions, ceil-mode pooling, Normalize, heads, then
    Permute(0, 2, 3, 1), Flatten and Concat over the sources; and the softmax of mbox_conf."""
    t = {k: [torch.from_numpy(a).to(x.dtype) for a in v] for k, v in blobs.items()}

    def conv(h, name, stride=1, pad=0, dilation=1):
        return F.conv2d(h, t[name][0], t[name][1], stride=stride, padding=pad, dilation=dilation)

    tops, h = {}, x
    for name in VGG:
        h = tops[name] = F.relu(conv(h, name, pad=1))
        if name in POOLED:
            h = F.max_pool2d(h, 2, 2, ceil_mode=True)
    h = F.max_pool2d(h, 3, 1, 1, ceil_mode=True)  # pool5
    h = F.relu(conv(h, "fc6", pad=6, dilation=6))
    h = tops["fc7"] = F.relu(conv(h, "fc7"))
    for name, (_, s, p) in EXTRAS[layout]:
        h = tops[name] = F.relu(conv(h, name, s, p))
    c43 = tops["conv4_3"]
    tops["conv4_3_norm"] = (
        c43 / (c43.pow(2).sum(1, keepdim=True) + 1e-10).sqrt() * t["conv4_3_norm"][0].view(1, -1, 1, 1)
    )
    sources = SOURCES[layout]
    loc = torch.cat(
        [conv(tops[s], f"{s}_mbox_loc", pad=1).permute(0, 2, 3, 1).flatten(1) for s in sources], 1
    )
    conf = torch.cat(
        [conv(tops[s], f"{s}_mbox_conf", pad=1).permute(0, 2, 3, 1).flatten(1) for s in sources], 1
    )
    return loc, conf.view(x.shape[0], -1, CLASSES).softmax(-1).flatten(1)


def caffe_decode(loc, priors_cxcywh):
    """DecodeBBox, CENTER_SIZE with variances 0.1, 0.1, 0.2, 0.2, from PriorBox's corner form."""
    corners = torch.cat(
        [priors_cxcywh[:, :2] - priors_cxcywh[:, 2:] / 2, priors_cxcywh[:, :2] + priors_cxcywh[:, 2:] / 2], 1
    )
    pw, ph = corners[:, 2] - corners[:, 0], corners[:, 3] - corners[:, 1]
    px, py = (corners[:, 0] + corners[:, 2]) / 2, (corners[:, 1] + corners[:, 3]) / 2
    l = loc.view(-1, 4)  # noqa: E741
    cx, cy = 0.1 * l[:, 0] * pw + px, 0.1 * l[:, 1] * ph + py
    w, h = torch.exp(0.2 * l[:, 2]) * pw, torch.exp(0.2 * l[:, 3]) * ph
    return torch.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], 1)


def test_converted_caffe_ssd_computes_the_caffe_graph(tmp_path, capsys):
    blobs = caffe_blobs()
    write_ssd_caffemodel(tmp_path / "VGG_VOC0712_SSD_300x300_iter_120000.caffemodel", blobs)
    assert (
        main(
            [
                "convert",
                "caffe",
                str(tmp_path / "VGG_VOC0712_SSD_300x300_iter_120000.caffemodel"),
                "--arch",
                "ssd300",
                "--out",
                str(tmp_path / "ssd.pt"),
            ]
        )
        == 0
    )
    assert "ssd300, 3 classes" in capsys.readouterr().out
    model = fcnseg.load(tmp_path / "ssd.pt")
    assert model.meta["preprocess"] == "ssd" and model.config["widths"] == list(WIDTHS)
    x = torch.randn(1, 3, 300, 300, generator=torch.Generator().manual_seed(0)) * 50
    with torch.no_grad():
        loc, conf = model(x)
        want_loc, want_conf = caffe_forward(blobs, x)
    # Values reach 2e7 at this input scale: float32 sums taken in another order (channels-last kernels)
    # differ by about 1e-6 of the largest, as Caffe's graph in float32 differs from it in float64.
    atol = 1e-5 * float(want_loc.abs().max())
    torch.testing.assert_close(loc.flatten(1), want_loc, rtol=1e-4, atol=atol)
    torch.testing.assert_close(conf.softmax(-1).flatten(1), want_conf, rtol=1e-4, atol=1e-5)
    boxes = fcnseg.detection.decode(loc[0], prior_boxes("ssd300"), (0.1, 0.1, 0.2, 0.2))
    want_boxes = caffe_decode(want_loc[0], prior_boxes("ssd300"))
    scale = float(want_boxes[want_boxes.isfinite()].abs().max())
    torch.testing.assert_close(boxes, want_boxes, rtol=1e-4, atol=1e-5 * scale)
    direct = fcnseg.load(tmp_path / "VGG_VOC0712_SSD_300x300_iter_120000.caffemodel")  # the Caffe file itself
    torch.testing.assert_close(direct(x)[0], loc)


def test_a_caffe_ssd_missing_a_head_or_misshapen_is_refused(tmp_path):
    blobs = caffe_blobs()
    del blobs["conv8_2_mbox_conf"]
    write_ssd_caffemodel(tmp_path / "a.caffemodel", blobs)
    with pytest.raises(WeightsMismatchError, match="lacks: conv8_2_mbox_conf"):
        fcnseg.load(tmp_path / "a.caffemodel")
    blobs = caffe_blobs()
    blobs["fc7_mbox_loc"][0] = blobs["fc7_mbox_loc"][0][:20]
    write_ssd_caffemodel(tmp_path / "b.caffemodel", blobs)
    with pytest.raises(WeightsMismatchError, match=r"fc7_mbox_loc weight: expected shape \(24, 16, 3, 3\)"):
        fcnseg.load(tmp_path / "b.caffemodel")
    with pytest.raises(WeightsMismatchError, match="holds an ssd300 model"):
        fcnseg.load(tmp_path / "b.caffemodel", arch="fcn8s")


@pytest.mark.parametrize("layout", ["ssd300", "ssd512"])
def test_a_caffe_ssd_whose_every_layer_has_its_own_width_converts(layout, tmp_path, capsys):
    """No width is derived from another: each conv of a stage, fc6 and fc7, and each extra layer differ."""
    trunk = (3, 5, 6, 4, 7, 5, 6, 9, 8, 7, 6, 5, 9, 11, 7)
    extras = (5, 3, 6, 4, 3, 7, 2, 5, 4, 6)[: len(EXTRAS[layout])]
    blobs = caffe_blobs(1, layout, trunk, extras)
    path = tmp_path / f"{layout}.caffemodel"
    write_ssd_caffemodel(path, blobs, layout)
    assert main(["convert", "caffe", str(path), "--arch", layout, "--out", str(tmp_path / "ssd.pt")]) == 0
    assert f"{layout}, 3 classes" in capsys.readouterr().out
    model = fcnseg.load(tmp_path / "ssd.pt")
    assert model.config["widths"] == list(trunk) and model.config["extra_widths"] == list(extras)
    size = int(layout[3:])
    x = torch.randn(1, 3, size, size, generator=torch.Generator().manual_seed(1), dtype=torch.float64) * 50
    with torch.no_grad():  # in float64: the logits reach 1e6, where float32 rounding moves the softmax
        loc, conf = model.double()(x)
        want_loc, want_conf = caffe_forward(blobs, x, layout)
    assert loc.shape == (1, len(prior_boxes(layout)), 4)
    torch.testing.assert_close(loc.flatten(1), want_loc, rtol=1e-9, atol=1e-9 * float(want_loc.abs().max()))
    torch.testing.assert_close(conf.softmax(-1).flatten(1), want_conf, rtol=1e-9, atol=1e-9)
    other = "ssd512" if layout == "ssd300" else "ssd300"
    with pytest.raises(WeightsMismatchError, match=f"--arch {other} given, but the file holds an {layout}"):
        fcnseg.load(path, arch=other)
