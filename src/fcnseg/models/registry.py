"""The named architectures (the paper's FCNs, FCNs on ResNet, torchvision's FCN, HED, FSDS, SSD300 and
SSD512), ``build_model``, the one way to make them, and ``register_model``, which adds a net of one's own."""

from __future__ import annotations

from collections.abc import Callable, KeysView
from functools import partial
from typing import Any

from torch import nn

from fcnseg.detection.priors import SSD300_PRIORS, SSD512_PRIORS, PriorSpec
from fcnseg.models.alexnet import ALEXNET_WIDTHS, alexnet_backbone
from fcnseg.models.dense import DILATED_ARCHS, vgg_fcn_dilated
from fcnseg.models.fcn import FCN
from fcnseg.models.fusion import LateFusionFCN
from fcnseg.models.googlenet import GOOGLENET_WIDTHS, googlenet_backbone
from fcnseg.models.heads import MultiHeadFCN
from fcnseg.models.resnet import RESNET_DEPTHS, resnet_trunk
from fcnseg.models.sides import FSDS, HED
from fcnseg.models.ssd import SSD, SSD300_EXTRAS, SSD300_WIDTHS, SSD512_EXTRAS, ExtraLayer
from fcnseg.models.trunk import Trunk, as_trunk
from fcnseg.models.tvfcn import TorchvisionFCN
from fcnseg.models.vgg import VGG16_WIDTHS, vgg16_backbone

AT_ONCE_SCALES = (0.01, 0.0001)
"""pool4 and pool3 scaling of FCN-8s at-once: skips start small beside the coarse scores."""

SKIP_STRIDES = {"fcn32s": (), "fcn16s": (16,), "fcn8s": (16, 8)}
"""The strides of the blobs each FCN fuses, coarse to fine (:func:`skip_taps` names them)."""


def skip_taps(trunk: Trunk, strides: tuple[int, ...]) -> tuple[str, ...]:
    """The trunk's first tap of each stride: the blob right after the trunk reaches it, where the
    paper takes its skips (VGG16's pool4 and pool3; ResNet's layer3 and layer2)."""
    found = []
    for stride in strides:
        tap = next((t.name for t in trunk.taps.values() if t.geometry.scale == stride), None)
        if tap is None:
            strides_of = ", ".join(f"{t.name} {t.geometry.scale}" for t in trunk.taps.values())
            raise ValueError(f"the trunk has no tap of stride {stride} to fuse; its taps: {strides_of}")
        found.append(tap)
    return tuple(found)


def _fcn(
    make_trunk: Callable[..., Trunk],
    strides: tuple[int, ...] = (),
    skip_scales: tuple[float, ...] | None = None,
    trunk_options: tuple[str, ...] = (),
):
    """An FCN builder: the trunk (``make_trunk(widths, in_channels, **trunk_options)``, or a
    ``backbone`` given), its skips by stride, and the head's options."""

    def build(
        num_classes: int, widths, in_channels: int, backbone: nn.Module | None = None, heads=None, **head: Any
    ) -> FCN:
        made = {k: head.pop(k) for k in trunk_options if k in head}
        if backbone is None:
            trunk = make_trunk(widths, in_channels, **made)
        elif widths is not None or made:
            raise ValueError(
                f"a backbone given replaces the trunk: widths and {', '.join(made) or 'options'} do not apply"
            )
        else:
            trunk = as_trunk(backbone)
        skips = skip_taps(trunk, strides)
        if heads is None:
            return FCN(trunk, num_classes, skips=skips, skip_scales=skip_scales, **head)
        if sum(heads) != num_classes:
            raise ValueError(f"heads {list(heads)} must add up to num_classes {num_classes}")
        return MultiHeadFCN(trunk, heads, skips=skips, skip_scales=skip_scales, **head)

    return build


def _vgg16(widths, in_channels: int) -> Trunk:
    return vgg16_backbone(widths or VGG16_WIDTHS, in_channels=in_channels)


def _alexnet(widths, in_channels: int, groups: int = 2, lrn: bool = True) -> Trunk:
    return alexnet_backbone(widths or ALEXNET_WIDTHS, in_channels, groups=groups, lrn=lrn)


def _googlenet(widths, in_channels: int) -> Trunk:
    return googlenet_backbone(widths or GOOGLENET_WIDTHS, in_channels)


RESNET_OPTIONS = ("output_stride", "frozen_batchnorm")
"""What ``build_model`` passes on to a ResNet trunk (:func:`fcnseg.models.resnet.resnet_trunk`)."""


FUSION_STREAMS = ("color", "hha")
"""The streams of ``fcn32s-late-fusion``, in input channel order (nyud-fcn32s-color-hha)."""


def _late_fusion(num_classes: int, widths, in_channels: int, **head: Any) -> LateFusionFCN:
    if in_channels != 3 * len(FUSION_STREAMS):
        raise ValueError(f"fcn32s-late-fusion reads colour and HHA: 6 input channels, not {in_channels}")
    streams = [_fcn(_vgg16)(num_classes, widths, 3, **head) for _ in FUSION_STREAMS]
    return LateFusionFCN(streams, FUSION_STREAMS)


def _fcn32s_fixed(num_classes: int, widths, in_channels: int, **head: Any) -> FCN:
    return _fcn(_vgg16)(num_classes, widths, in_channels, **head).freeze_backbone()


def _torchvision_fcn(depth: int):
    """torchvision's fcn_resnet<depth>: the dilated trunk (output stride 8) and FCNHead; ``aux`` adds
    the head on layer3 (the published COCO weights have one)."""

    def build(
        num_classes: int,
        widths,
        in_channels: int,
        aux: bool = False,
        frozen_batchnorm: bool = False,
        frozen_upsampling: str = "all",
    ) -> TorchvisionFCN:
        trunk = resnet_trunk(depth, widths, in_channels, 8, frozen_batchnorm)
        return TorchvisionFCN(trunk, num_classes, aux)  # its bilinear resize learns nothing: the flag is moot

    return build


RESNET_FCNS = {
    f"{net}-resnet{depth}": _fcn(partial(resnet_trunk, depth), strides, trunk_options=RESNET_OPTIONS)
    for depth in RESNET_DEPTHS
    for net, strides in SKIP_STRIDES.items()
}
"""FCN-32s, 16s and 8s on ResNet-18/34/50/101 (skips from layer3 and layer2), aligned exactly."""

TORCHVISION_FCNS = {f"tv-fcn-resnet{depth}": _torchvision_fcn(depth) for depth in (50, 101)}
"""torchvision's FCNs as torchvision builds them (:mod:`fcnseg.models.tvfcn`)."""


def _side_output_net(net: type[HED] | type[FSDS]):
    """HED or FSDS: their outputs are fixed (edges; background and four scales), so ``num_classes``
    must be theirs, and the FCN head's options do not apply."""

    def build(
        num_classes: int | None,
        widths,
        in_channels: int,
        backbone: nn.Module | None = None,
        taps=None,
        **head: Any,
    ) -> HED | FSDS:
        if num_classes is not None and num_classes != net.num_classes:
            raise ValueError(f"{net.__name__} predicts {net.num_classes} class(es), not {num_classes}")
        given = {"trunk": as_trunk(backbone)} if backbone is not None else {}
        return net(widths, in_channels, **given, **({"taps": tuple(taps)} if taps is not None else {}))

    return build


SEGMENTATION_NETS: dict[str, Callable[..., FCN]] = {
    "fcn32s": _fcn(_vgg16),
    "fcn32s-fixed": _fcn32s_fixed,
    "fcn16s": _fcn(_vgg16, SKIP_STRIDES["fcn16s"]),  # pool4
    "fcn8s": _fcn(_vgg16, SKIP_STRIDES["fcn8s"]),  # pool4, pool3
    "fcn8s-atonce": _fcn(_vgg16, SKIP_STRIDES["fcn8s"], AT_ONCE_SCALES),
    # 63/32: the 64/32 upsampling would crop at half a pixel (FCN.upsampling_for)
    "fcn-alexnet": _fcn(_alexnet, trunk_options=("groups", "lrn")),
    "fcn32s-googlenet": _fcn(_googlenet),
    "fcn32s-late-fusion": _late_fusion,
    # section 3: FCN-32s with pool5 (stride 16), then pool4 (stride 8) rarefied away
    **{name: vgg_fcn_dilated(stride) for stride, name in DILATED_ARCHS.items()},
    **RESNET_FCNS,
    **TORCHVISION_FCNS,
}
"""The segmentation nets: FCNs (and torchvision's)."""

SIDE_OUTPUT_NETS: dict[str, Callable[..., HED | FSDS]] = {
    "hed": _side_output_net(HED),
    "fsds": _side_output_net(FSDS),
}
"""Edges and skeletons: side outputs of every VGG16 stage."""

SIDE_OUTPUT_ARCHS = tuple(SIDE_OUTPUT_NETS)


def trunk_family(arch: str) -> str:
    """The trunk an architecture is built on: "vgg16", "alexnet", "googlenet" or "resnet50" (...)."""
    if arch == "fcn-alexnet":
        return "alexnet"
    if arch in RESNET_FCNS or arch in TORCHVISION_FCNS:
        return arch.rsplit("-", 1)[1]
    return "googlenet" if arch.endswith("-googlenet") else "vgg16"


def _ssd(priors: PriorSpec, extras: tuple[ExtraLayer, ...]):
    def build(
        num_classes: int,
        widths,
        in_channels: int,
        frozen_upsampling: str = "final",
        extra_widths=None,
        backbone: nn.Module | None = None,
        conv4_3: str | None = None,
    ) -> SSD:  # nothing to upsample: frozen_upsampling is moot
        given = {k: v for k, v in (("trunk", backbone), ("conv4_3", conv4_3)) if v is not None}
        return SSD(
            num_classes,
            widths or SSD300_WIDTHS,
            in_channels,
            priors,
            extras=extras,
            extra_widths=extra_widths,
            **given,
        )

    return build


DETECTORS: dict[str, Callable[..., SSD]] = {
    "ssd300": _ssd(SSD300_PRIORS, SSD300_EXTRAS),
    "ssd512": _ssd(SSD512_PRIORS, SSD512_EXTRAS),
}
"""Detection nets: widths are conv1..conv5 and fc6/fc7 (1024), or each of their 15 layers'; the extra
layers follow fc7's width unless ``extra_widths`` gives each its own."""

BUILDERS: dict[str, Callable[..., nn.Module]] = {
    **SEGMENTATION_NETS,
    **SIDE_OUTPUT_NETS,
    **DETECTORS,
}
"""Every name ``build_model`` knows: the FCNs, HED and FSDS, the detectors, and the nets registered
with :func:`register_model`."""

ARCHITECTURES: KeysView[str] = BUILDERS.keys()
"""The name of every net :func:`build_model` knows: fcnseg's FCNs, HED, FSDS and detectors, then any
registered since (a live, read-only view of :data:`BUILDERS`)."""

BUILT_IN = frozenset(BUILDERS)
"""fcnseg's own names, which :func:`register_model` leaves alone."""


def register_model(name: str, builder: Callable[..., nn.Module] | None = None):
    """Make ``builder(num_classes, **options) -> net`` known as ``name``, for :func:`build_model`,
    checkpoints and ``fcnseg.load``: a net of one's own (a trunk of one's own under fcnseg's heads,
    say) then saves and loads like fcnseg's. As a decorator: ``@register_model("my-fcn")``.

    ``build_model(name, num_classes, **options)`` calls ``builder(num_classes, **options)``, passing
    ``widths``, ``in_channels`` and ``frozen_upsampling`` only where they were given; the call is
    recorded in ``model.config``, so its options must be plain values (numbers, strings, lists).
    A checkpoint of the net loads in a process where ``name`` is registered again. The net names
    its task (``task = "segmentation"``; :class:`~fcnseg.models.fcn.FCN` does).
    """
    if builder is None:
        return lambda function: register_model(name, function)
    if name in BUILT_IN:
        raise ValueError(
            f"{name!r} is one of fcnseg's own architectures; register your net under another name"
        )

    def build(num_classes, widths, in_channels, frozen_upsampling="all", **options: Any) -> nn.Module:
        given = {"widths": widths, "in_channels": in_channels, "frozen_upsampling": frozen_upsampling}
        defaults = {"widths": None, "in_channels": 3, "frozen_upsampling": "all"}
        options |= {k: v for k, v in given.items() if v != defaults[k]}
        return builder(num_classes, **options)

    BUILDERS[name] = build
    return builder


def build_model(
    arch: str,
    num_classes: int | None = None,
    *,
    widths: tuple[int, ...] | None = None,
    in_channels: int | None = None,
    frozen_upsampling: str = "all",
    **options: Any,
) -> nn.Module:
    """Build a net by name (:data:`BUILDERS`), with freshly initialised weights.

    ``widths`` narrows the backbone (VGG16: conv1..conv5 channels, then fc6/fc7, e.g.
    ``(4, 8, 16, 32, 32, 64)`` for a tiny test net, or 15, a layer each; GoogLeNet: one per convolution, see
    ``GOOGLENET_WIDTHS``; ResNet: the planes of layer1..layer4, ``RESNET_WIDTHS``); ``options``
    reach the backbone (``groups``, ``lrn`` for AlexNet; ``output_stride``, ``frozen_batchnorm``
    for ResNet) or the head (``heads=(33, 3)``: a :class:`~fcnseg.models.heads.MultiHeadFCN`,
    SIFT Flow's; ``aux`` for torchvision's FCN). ``backbone=`` puts an FCN's head on a trunk of
    one's own (a :class:`~fcnseg.models.trunk.Trunk`), its skips the trunk's first taps of strides
    16 and 8; such a net saves once its builder is registered (:func:`register_model`).
    ``fcn32s-late-fusion`` is two FCN-32s streams on 6 channels, colour and HHA, scores averaged
    (NYUDv2). ``in_channels`` defaults to 3 (6 for the fusion; a given backbone's own).
    ``num_classes`` is 21 (PASCAL VOC) unless given; HED and FSDS have their own (1 and 5). The
    arguments are recorded in ``model.config`` so that a checkpoint can rebuild the same net.
    """
    if arch not in BUILDERS:
        raise ValueError(f"unknown architecture {arch!r}; choose one of {sorted(BUILDERS)}")
    if in_channels is None and isinstance(options.get("backbone"), nn.Module):
        in_channels = as_trunk(options["backbone"]).in_channels
    if in_channels is None:
        in_channels = 3 * len(FUSION_STREAMS) if arch == "fcn32s-late-fusion" else 3
    if num_classes is None and arch not in SIDE_OUTPUT_ARCHS:
        num_classes = 21  # PASCAL VOC's
    model = BUILDERS[arch](
        num_classes,
        tuple(widths) if widths is not None else None,
        in_channels,
        frozen_upsampling=frozen_upsampling,
        **options,
    )
    model.config = {
        "arch": arch,
        "num_classes": getattr(model, "num_classes", num_classes),
        "widths": list(widths) if widths is not None else None,
        "in_channels": in_channels,
        "frozen_upsampling": frozen_upsampling,
        **options,
    }
    return model
