"""The named architectures (the paper's FCNs, and SSD300 for detection) and ``build_model``, the one way
to make them."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fcnseg.models.alexnet import ALEXNET_WIDTHS, alexnet_backbone
from fcnseg.models.dense import DILATED_ARCHS, vgg_fcn_dilated
from fcnseg.models.fcn import FCN
from fcnseg.models.ssd import SSD, SSD300_WIDTHS
from fcnseg.models.vgg import VGG16_WIDTHS, vgg16_backbone

AT_ONCE_SCALES = (0.01, 0.0001)
"""pool4 and pool3 scaling of FCN-8s at-once: skips start small beside the coarse scores."""


def _vgg_fcn(skips: tuple[str, ...] = (), skip_scales: tuple[float, ...] | None = None):
    def build(num_classes: int, widths, in_channels: int, **head: Any) -> FCN:
        backbone = vgg16_backbone(widths or VGG16_WIDTHS, in_channels=in_channels)
        return FCN(backbone, num_classes, skips=skips, skip_scales=skip_scales, **head)

    return build


def _fcn32s_fixed(num_classes: int, widths, in_channels: int, **head: Any) -> FCN:
    return _vgg_fcn()(num_classes, widths, in_channels, **head).freeze_backbone()


def _fcn_alexnet(
    num_classes: int, widths, in_channels: int, groups: int = 2, lrn: bool = True, **head: Any
) -> FCN:
    backbone = alexnet_backbone(widths or ALEXNET_WIDTHS, in_channels, groups=groups, lrn=lrn)
    return FCN(backbone, num_classes, final_kernel=63, **head)


ARCHITECTURES: dict[str, Callable[..., FCN]] = {
    "fcn32s": _vgg_fcn(),
    "fcn32s-fixed": _fcn32s_fixed,
    "fcn16s": _vgg_fcn(("pool4",)),
    "fcn8s": _vgg_fcn(("pool4", "pool3")),
    "fcn8s-atonce": _vgg_fcn(("pool4", "pool3"), AT_ONCE_SCALES),
    "fcn-alexnet": _fcn_alexnet,
    # section 3: FCN-32s with pool5 (stride 16), then pool4 (stride 8) rarefied away
    **{name: vgg_fcn_dilated(stride) for stride, name in DILATED_ARCHS.items()},
}


def _ssd300(num_classes: int, widths, in_channels: int, frozen_upsampling: str = "final") -> SSD:
    return SSD(num_classes, widths or SSD300_WIDTHS, in_channels)  # nothing to upsample: the flag is moot


DETECTORS: dict[str, Callable[..., SSD]] = {"ssd300": _ssd300}
"""Detection nets: widths are conv1..conv5 and fc6/fc7 (1024 in SSD300); the extras follow fc7's."""

BUILDERS: dict[str, Callable[..., FCN | SSD]] = {**ARCHITECTURES, **DETECTORS}
"""Every name ``build_model`` knows: the segmentation nets of :data:`ARCHITECTURES` and the detectors."""


def build_model(
    arch: str,
    num_classes: int = 21,
    *,
    widths: tuple[int, ...] | None = None,
    in_channels: int = 3,
    frozen_upsampling: str = "final",
    **options: Any,
) -> FCN | SSD:
    """Build a net by name (:data:`BUILDERS`), with freshly initialised weights.

    ``widths`` narrows the backbone (conv1..conv5 channels, then fc6/fc7), e.g.
    ``(4, 8, 16, 32, 32, 64)`` for a tiny test net; ``options`` reach the
    backbone (``groups``, ``lrn`` for AlexNet). The arguments are recorded in
    ``model.config`` so that a checkpoint can rebuild the same net.
    """
    if arch not in BUILDERS:
        raise ValueError(f"unknown architecture {arch!r}; choose one of {sorted(BUILDERS)}")
    model = BUILDERS[arch](
        num_classes,
        tuple(widths) if widths is not None else None,
        in_channels,
        frozen_upsampling=frozen_upsampling,
        **options,
    )
    model.config = {
        "arch": arch,
        "num_classes": num_classes,
        "widths": list(widths) if widths is not None else None,
        "in_channels": in_channels,
        "frozen_upsampling": frozen_upsampling,
        **options,
    }
    return model
