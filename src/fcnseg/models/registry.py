"""The named architectures (the paper's FCNs, HED and FSDS, and SSD300 and SSD512 for detection) and ``build_model``, the one way
to make them."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fcnseg.detection.priors import SSD300_PRIORS, SSD512_PRIORS, PriorSpec
from fcnseg.models.alexnet import ALEXNET_WIDTHS, alexnet_backbone
from fcnseg.models.dense import DILATED_ARCHS, vgg_fcn_dilated
from fcnseg.models.fcn import FCN
from fcnseg.models.fusion import LateFusionFCN
from fcnseg.models.googlenet import GOOGLENET_WIDTHS, googlenet_backbone
from fcnseg.models.heads import MultiHeadFCN
from fcnseg.models.sides import FSDS, HED
from fcnseg.models.ssd import SSD, SSD300_EXTRAS, SSD300_WIDTHS, SSD512_EXTRAS, ExtraLayer
from fcnseg.models.vgg import VGG16_WIDTHS, vgg16_backbone

AT_ONCE_SCALES = (0.01, 0.0001)
"""pool4 and pool3 scaling of FCN-8s at-once: skips start small beside the coarse scores."""


def _vgg_fcn(skips: tuple[str, ...] = (), skip_scales: tuple[float, ...] | None = None):
    def build(num_classes: int, widths, in_channels: int, heads=None, **head: Any) -> FCN:
        backbone = vgg16_backbone(widths or VGG16_WIDTHS, in_channels=in_channels)
        if heads is None:
            return FCN(backbone, num_classes, skips=skips, skip_scales=skip_scales, **head)
        if sum(heads) != num_classes:
            raise ValueError(f"heads {list(heads)} must add up to num_classes {num_classes}")
        return MultiHeadFCN(backbone, heads, skips=skips, skip_scales=skip_scales, **head)

    return build


FUSION_STREAMS = ("color", "hha")
"""The streams of ``fcn32s-late-fusion``, in input channel order (nyud-fcn32s-color-hha)."""


def _late_fusion(num_classes: int, widths, in_channels: int, **head: Any) -> LateFusionFCN:
    if in_channels != 3 * len(FUSION_STREAMS):
        raise ValueError(f"fcn32s-late-fusion reads colour and HHA: 6 input channels, not {in_channels}")
    streams = [_vgg_fcn()(num_classes, widths, 3, **head) for _ in FUSION_STREAMS]
    return LateFusionFCN(streams, FUSION_STREAMS)


def _fcn32s_fixed(num_classes: int, widths, in_channels: int, **head: Any) -> FCN:
    return _vgg_fcn()(num_classes, widths, in_channels, **head).freeze_backbone()


def _fcn_alexnet(
    num_classes: int, widths, in_channels: int, groups: int = 2, lrn: bool = True, **head: Any
) -> FCN:
    backbone = alexnet_backbone(widths or ALEXNET_WIDTHS, in_channels, groups=groups, lrn=lrn)
    return FCN(backbone, num_classes, final_kernel=63, **head)


def _fcn_googlenet(num_classes: int, widths, in_channels: int, **head: Any) -> FCN:
    # an odd final kernel, as FCN-AlexNet's: the 64/32 one would need a crop at half a pixel
    backbone = googlenet_backbone(widths or GOOGLENET_WIDTHS, in_channels)
    return FCN(backbone, num_classes, final_kernel=63, **head)


def _side_output_net(net: type[HED] | type[FSDS]):
    """HED or FSDS: their outputs are fixed (edges; background and four scales), so ``num_classes``
    must be theirs, and the FCN head's options do not apply."""

    def build(num_classes: int | None, widths, in_channels: int, **head: Any) -> HED | FSDS:
        if num_classes is not None and num_classes != net.num_classes:
            raise ValueError(f"{net.__name__} predicts {net.num_classes} class(es), not {num_classes}")
        return net(widths, in_channels)

    return build


ARCHITECTURES: dict[str, Callable[..., FCN]] = {
    "fcn32s": _vgg_fcn(),
    "fcn32s-fixed": _fcn32s_fixed,
    "fcn16s": _vgg_fcn(("pool4",)),
    "fcn8s": _vgg_fcn(("pool4", "pool3")),
    "fcn8s-atonce": _vgg_fcn(("pool4", "pool3"), AT_ONCE_SCALES),
    "fcn-alexnet": _fcn_alexnet,
    "fcn32s-googlenet": _fcn_googlenet,
    "fcn32s-late-fusion": _late_fusion,
    # section 3: FCN-32s with pool5 (stride 16), then pool4 (stride 8) rarefied away
    **{name: vgg_fcn_dilated(stride) for stride, name in DILATED_ARCHS.items()},
}
"""The segmentation nets (FCNs)."""

SIDE_OUTPUT_NETS: dict[str, Callable[..., HED | FSDS]] = {
    "hed": _side_output_net(HED),
    "fsds": _side_output_net(FSDS),
}
"""Edges and skeletons: side outputs of every VGG16 stage."""

SIDE_OUTPUT_ARCHS = tuple(SIDE_OUTPUT_NETS)


def trunk_family(arch: str) -> str:
    """The trunk an architecture is built on: "vgg16", "alexnet" or "googlenet"."""
    if arch == "fcn-alexnet":
        return "alexnet"
    return "googlenet" if arch.endswith("-googlenet") else "vgg16"


def _ssd(priors: PriorSpec, extras: tuple[ExtraLayer, ...]):
    def build(
        num_classes: int, widths, in_channels: int, frozen_upsampling: str = "final", extra_widths=None
    ) -> SSD:  # nothing to upsample: frozen_upsampling is moot
        return SSD(
            num_classes,
            widths or SSD300_WIDTHS,
            in_channels,
            priors,
            extras=extras,
            extra_widths=extra_widths,
        )

    return build


DETECTORS: dict[str, Callable[..., SSD]] = {
    "ssd300": _ssd(SSD300_PRIORS, SSD300_EXTRAS),
    "ssd512": _ssd(SSD512_PRIORS, SSD512_EXTRAS),
}
"""Detection nets: widths are conv1..conv5 and fc6/fc7 (1024), or each of their 15 layers'; the extra
layers follow fc7's width unless ``extra_widths`` gives each its own."""

BUILDERS: dict[str, Callable[..., FCN | HED | FSDS | SSD]] = {
    **ARCHITECTURES,
    **SIDE_OUTPUT_NETS,
    **DETECTORS,
}
"""Every name ``build_model`` knows: the FCNs, HED and FSDS, and the detectors."""


def build_model(
    arch: str,
    num_classes: int | None = None,
    *,
    widths: tuple[int, ...] | None = None,
    in_channels: int | None = None,
    frozen_upsampling: str = "all",
    **options: Any,
) -> FCN | HED | FSDS | SSD:
    """Build a net by name (:data:`BUILDERS`: an FCN, HED, FSDS, SSD300 or SSD512), with freshly initialised weights.

    ``widths`` narrows the backbone (conv1..conv5 channels, then fc6/fc7), e.g.
    ``(4, 8, 16, 32, 32, 64)`` for a tiny test net (GoogLeNet: one per convolution,
    see ``GOOGLENET_WIDTHS``); ``options`` reach the
    backbone (``groups``, ``lrn`` for AlexNet) or the head (``heads=(33, 3)``: a
    :class:`~fcnseg.models.heads.MultiHeadFCN` of the VGG16 nets, SIFT Flow's).
    ``fcn32s-late-fusion`` is two FCN-32s streams on 6 channels, colour and HHA,
    scores averaged (NYUDv2). ``in_channels`` defaults to 3 (6 for the fusion).
    ``num_classes`` is 21 (PASCAL VOC) unless given; HED and FSDS have their own (1 and 5).
    The arguments are recorded in
    ``model.config`` so that a checkpoint can rebuild the same net.
    """
    if arch not in BUILDERS:
        raise ValueError(f"unknown architecture {arch!r}; choose one of {sorted(BUILDERS)}")
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
        "num_classes": model.num_classes,
        "widths": list(widths) if widths is not None else None,
        "in_channels": in_channels,
        "frozen_upsampling": frozen_upsampling,
        **options,
    }
    return model
