"""A Caffe SSD model (the layout of VGG_VOC0712_SSD_300x300_iter_120000.caffemodel) loads by layer name,
and the loaded net computes what the Caffe graph computes, written out here layer by layer."""

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
# but the last, then (kernel, stride, pad) of the extra layers.
VGG = [f"conv{s}_{i}" for s, n in zip(range(1, 6), (2, 2, 3, 3, 3), strict=True) for i in range(1, n + 1)]
POOLED = ("conv1_2", "conv2_2", "conv3_3", "conv4_3")
EXTRAS = [
    ("conv6_1", (1, 1, 0)), ("conv6_2", (3, 2, 1)), ("conv7_1", (1, 1, 0)), ("conv7_2", (3, 2, 1)),
    ("conv8_1", (1, 1, 0)), ("conv8_2", (3, 1, 0)), ("conv9_1", (1, 1, 0)), ("conv9_2", (3, 1, 0)),
]  # fmt: skip
SOURCES = ["conv4_3_norm", "fc7", "conv6_2", "conv7_2", "conv8_2", "conv9_2"]
PRIORS_PER_LOCATION = [4, 6, 6, 6, 4, 4]


def caffe_blobs(seed: int = 0) -> dict[str, list[np.ndarray]]:
    """Random weights for every learned layer of a narrow SSD300, in Caffe's shapes."""
    rng = np.random.default_rng(seed)
    blobs, channels = {}, 3

    def conv(name, out, inp, k):
        blobs[name] = [
            rng.normal(0, 0.3, (out, inp, k, k)).astype(np.float32),
            rng.normal(0, 0.1, out).astype(np.float32),
        ]

    widths = iter(w for w, n in zip(WIDTHS[:5], (2, 2, 3, 3, 3), strict=True) for _ in range(n))
    for name in VGG:
        width = next(widths)
        conv(name, width, channels, 3)
        channels = width
    conv("fc6", WIDTHS[5], channels, 3)
    conv("fc7", WIDTHS[5], WIDTHS[5], 1)
    channels = WIDTHS[5]
    for (name, (k, _, _)), width in zip(EXTRAS, (4, 8, 2, 4, 2, 4, 2, 4), strict=True):
        conv(name, width, channels, k)
        channels = width
    blobs["conv4_3_norm"] = [rng.uniform(10, 30, WIDTHS[3]).astype(np.float32)]
    source_widths = [WIDTHS[3], WIDTHS[5], 8, 4, 4, 4]
    for source, count, width in zip(SOURCES, PRIORS_PER_LOCATION, source_widths, strict=True):
        conv(f"{source}_mbox_loc", count * 4, width, 3)
        conv(f"{source}_mbox_conf", count * CLASSES, width, 3)
    return blobs


def write_ssd_caffemodel(path, blobs):
    """The blobs as Caffe stores them, among the reference's weightless layers."""
    layers = [
        CaffeLayer(name, "Normalize" if name == "conv4_3_norm" else "Convolution", b, {})
        for name, b in blobs.items()
    ]
    for source in SOURCES:
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
    write_caffemodel(path, layers, name="VGG_VOC0712_SSD_300x300_train")


def caffe_forward(blobs, x):
    """The Caffe graph in NCHW: convolutions, ceil-mode pooling, Normalize, heads, then
    Permute(0, 2, 3, 1), Flatten and Concat over the six sources; and the softmax of mbox_conf."""
    t = {k: [torch.from_numpy(a) for a in v] for k, v in blobs.items()}

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
    for name, (_, s, p) in EXTRAS:
        h = tops[name] = F.relu(conv(h, name, s, p))
    c43 = tops["conv4_3"]
    tops["conv4_3_norm"] = (
        c43 / (c43.pow(2).sum(1, keepdim=True) + 1e-10).sqrt() * t["conv4_3_norm"][0].view(1, -1, 1, 1)
    )
    loc = torch.cat(
        [conv(tops[s], f"{s}_mbox_loc", pad=1).permute(0, 2, 3, 1).flatten(1) for s in SOURCES], 1
    )
    conf = torch.cat(
        [conv(tops[s], f"{s}_mbox_conf", pad=1).permute(0, 2, 3, 1).flatten(1) for s in SOURCES], 1
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
