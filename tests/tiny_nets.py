"""Small seeded FCNs with non-trivial scores, for tests that need a model but not a trained one.

One place for the narrow widths of every trunk: :func:`tiny_widths` (the smallest,
for shape and plumbing tests) and :func:`narrow_widths` (wider, so every path
carries signal), by the architecture's family.
"""

import numpy as np
import torch
from torch import nn

import fcnseg
from fcnseg.models.googlenet import GOOGLENET_CONVS, GOOGLENET_WIDTHS, googlenet_backbone
from fcnseg.models.registry import SEGMENTATION_NETS

TINY = (4, 8, 8, 16, 16, 32)
TINY_ALEXNET = (8, 8, 8, 8, 8, 16)
TINY_GOOGLENET = tuple(max(2, width // 32) for width in GOOGLENET_WIDTHS)
TINY_RESNET = (4, 8, 8, 16)
NARROW = {
    "vgg": (4, 8, 16, 32, 32, 64),
    "alexnet": (8, 8, 16, 16, 8, 32),
    "googlenet": tuple(max(2, width // 16) for width in GOOGLENET_WIDTHS),
    "resnet": (8, 16, 16, 32),
}
RESNET_SHARED = ("fcn32s-resnet18", "fcn16s-resnet18", "fcn8s-resnet18", "fcn8s-resnet50", "tv-fcn-resnet50")
"""The ResNet nets the shared model tests run over: every head on ResNet-18's basic blocks, and
ResNet-50's bottlenecks; the other depths differ only in how many blocks they repeat (every
registered net runs in tests/test_plain_nets.py, and tests/test_resnet.py covers every depth)."""
ARCHS = sorted(a for a in SEGMENTATION_NETS if "resnet" not in a or a in RESNET_SHARED)
"""Every registered FCN, ResNet's as :data:`RESNET_SHARED` says: the shared model tests run over all of
them (HED and FSDS, whose outputs are edges and skeletons, have their own: tests/test_edges.py)."""


def family(arch: str) -> str:
    """The trunk an architecture is built on: "vgg", "alexnet", "googlenet" or "resnet"."""
    for name in ("alexnet", "googlenet", "resnet"):
        if name in arch:
            return name
    return "vgg"


def tiny_widths(arch: str) -> tuple[int, ...]:
    return {"vgg": TINY, "alexnet": TINY_ALEXNET, "googlenet": TINY_GOOGLENET, "resnet": TINY_RESNET}[
        family(arch)
    ]


def narrow_widths(arch: str) -> tuple[int, ...]:
    return NARROW[family(arch)]


def tiny_fcn(arch: str = "fcn8s", num_classes: int = 5) -> fcnseg.FCN:
    """The score layers start at zero; they are drawn at random so that outputs differ by class."""
    torch.manual_seed(0)
    model = fcnseg.build_model(arch, num_classes, widths=tiny_widths(arch)).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if any(part.startswith("score") for part in name.split(".")):  # also a fusion's streams
                p.normal_(0, 0.5)
    return model


def random_net(arch: str, seed: int = 0, **options) -> fcnseg.FCN:
    """A narrow net with He-scaled random weights everywhere, so every path carries signal."""
    torch.manual_seed(seed)
    model = fcnseg.build_model(arch, widths=narrow_widths(arch), **options).eval()
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.Conv2d):
                fan_in = module.weight[0].numel()
                module.weight.normal_(0, (2 / fan_in) ** 0.5)
                module.bias.normal_(0, 0.2)
    return model


def googlenet_caffe_layers(widths: tuple[int, ...] = TINY_GOOGLENET, num_classes: int | None = None) -> list:
    """A narrow bvlc_googlenet as Caffe stores it: seeded convolutions under the BVLC names, then the
    ImageNet classifiers an FCN drops (the two auxiliary heads and loss3/classifier), or with
    ``num_classes`` an FCN-GoogLeNet's score_fr and 63/32 upscore instead."""
    from fcnseg.weights.caffe_format import CaffeLayer

    rng = np.random.default_rng(0)
    reference = googlenet_backbone(widths)

    def conv(name: str, shape: tuple[int, ...]) -> CaffeLayer:
        weight = (rng.standard_normal(shape) / np.sqrt(np.prod(shape[1:]))).astype(np.float32)
        return CaffeLayer(name, "Convolution", [weight, rng.uniform(0, 0.2, shape[0]).astype(np.float32)], {})

    layers = [
        conv(name, reference.get_submodule(name.replace("/", ".")).weight.shape) for name in GOOGLENET_CONVS
    ]
    out = reference.output.channels
    if num_classes is not None:
        upscore = rng.standard_normal((num_classes, num_classes, 63, 63)).astype(np.float32)
        return [
            *layers,
            conv("score_fr", (num_classes, out, 1, 1)),
            CaffeLayer("upscore", "Deconvolution", [upscore], {}),
        ]
    for head, tap in (("loss1", "inception_4a"), ("loss2", "inception_4d")):  # the auxiliary heads
        channels = reference.taps[tap].channels
        fc = rng.standard_normal((8, 4 * 16)).astype(np.float32)
        layers += [
            conv(f"{head}/conv", (4, channels, 1, 1)),
            CaffeLayer(f"{head}/fc", "InnerProduct", [fc, np.zeros(8, np.float32)], {}),
            CaffeLayer(
                f"{head}/classifier",
                "InnerProduct",
                [np.ones((1000, 8), np.float32), np.zeros(1000, np.float32)],
                {},
            ),
        ]
    classifier = rng.standard_normal((1000, out)).astype(np.float32)
    return [
        *layers,
        CaffeLayer("loss3/classifier", "InnerProduct", [classifier, np.zeros(1000, np.float32)], {}),
    ]


def caffe_layer(name: str, module: nn.Module):
    """One of our layers as Caffe stores it: a Convolution or Deconvolution, weight then bias."""
    from fcnseg.weights.caffe_format import CaffeLayer

    kind = "Deconvolution" if isinstance(module, nn.ConvTranspose2d) else "Convolution"
    tensors = [module.weight] + ([module.bias] if module.bias is not None else [])
    return CaffeLayer(name, kind, [t.detach().numpy().copy() for t in tensors], {})


def siftflow_nets(arch: str, heads: tuple[int, int] = (5, 3)) -> tuple[fcnseg.FCN, fcnseg.FCN]:
    """Two narrow single-head FCNs on one trunk: the semantic and the geometric net of SIFT Flow."""
    sem = random_net(arch, seed=1, num_classes=heads[0])
    geo = random_net(arch, seed=2, num_classes=heads[1])
    geo.backbone.load_state_dict(sem.backbone.state_dict())
    return sem, geo


def siftflow_caffe_layers(sem: fcnseg.FCN, geo: fcnseg.FCN) -> list:
    """The layers of siftflow-fcn*'s net.py: one trunk (conv1_1 .. fc7), then each head's score and
    upsampling layers suffixed _sem and _geo (score_fr_sem, upscore2_geo, ...)."""
    from fcnseg.weights.transfer import named_layers

    trunk = named_layers(sem.backbone)
    layers = [caffe_layer(name, module) for name, module in trunk.items()]
    for suffix, net in (("sem", sem), ("geo", geo)):
        layers += [
            caffe_layer(f"{name}_{suffix}", module)
            for name, module in named_layers(net).items()
            if name not in trunk
        ]
    return layers


def fusion_nets(num_classes: int = 4) -> tuple[fcnseg.FCN, fcnseg.FCN]:
    """Two narrow FCN-32s, the colour and the HHA stream of nyud-fcn32s-color-hha."""
    return random_net("fcn32s", seed=3, num_classes=num_classes), random_net(
        "fcn32s", seed=4, num_classes=num_classes
    )


def fusion_caffe_layers(color: fcnseg.FCN, hha: fcnseg.FCN) -> list:
    """The layers of nyud-fcn32s-color-hha's net.py: each stream's conv1_1 .. score_fr suffixed with its
    name (conv1_1color, score_frhha), then the one upscore of their averaged scores (colour's)."""
    from fcnseg.weights.transfer import named_layers

    layers = [
        caffe_layer(f"{name}{stream}", module)
        for stream, net in (("color", color), ("hha", hha))
        for name, module in named_layers(net).items()
        if name != "upscore"
    ]
    return [*layers, caffe_layer("upscore", color.upscore)]


def side_net(arch: str, widths: tuple[int, ...], seed: int = 0) -> nn.Module:
    """HED or FSDS whose side layers are drawn as PyTorch draws a fresh 1x1 convolution: they start
    at 0 (as the reference prototxts leave them), which maps every image to one grey; tests of what
    is shown or served need maps that vary."""
    torch.manual_seed(seed)
    net = fcnseg.build_model(arch, widths=widths)
    for name, module in net.named_modules():
        if name.startswith("score-dsn"):
            module.reset_parameters()
    return net.eval()
