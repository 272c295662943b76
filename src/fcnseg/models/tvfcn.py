"""torchvision's FCN (``fcn_resnet50``, ``fcn_resnet101``) as torchvision builds it, so that its
published weights run as they are.

A dilated ResNet (layer3 and layer4 trade their stride for dilation: output stride 8), then
``FCNHead`` (3x3 convolution to a quarter of the channels, BatchNorm, ReLU, dropout 0.1, 1x1
convolution to the classes) and a bilinear resize to the input's size (``align_corners=False``);
optionally the same head on layer3 (``aux_classifier``), which torchvision trains with an
auxiliary loss. The state dict is torchvision's: ``backbone.*``, ``classifier.*``,
``aux_classifier.*``.

Where torchvision's model returns ``{"out": scores, "aux": ...}``, this net's ``forward`` returns
the scores alone (torchvision's ``model(x)["out"]``), as every fcnseg segmentation net does;
:meth:`TorchvisionFCN.outputs` gives both. The resize is misaligned by design: tap i of the
stride-8 map sits at input pixel 8 i, but ``align_corners=False`` puts it at 8 i + 3.5 (for
sizes that are multiples of 8). fcnseg's ``fcn8s-resnet50`` is the aligned counterpart.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from fcnseg.models.layers import check_input
from fcnseg.models.resnet import ResNetTrunk

torch.fx.wrap("check_input")

__all__ = ["TorchvisionFCN", "fcn_head", "resize_like"]


def fcn_head(in_channels: int, num_classes: int) -> nn.Sequential:
    """torchvision's ``FCNHead``: (N, in_channels, h, w) -> (N, num_classes, h, w)."""
    inner = in_channels // 4
    return nn.Sequential(
        nn.Conv2d(in_channels, inner, 3, padding=1, bias=False),
        nn.BatchNorm2d(inner),
        nn.ReLU(),
        nn.Dropout(0.1),
        nn.Conv2d(inner, num_classes, 1),
    )


@torch.fx.wrap
def resize_like(x: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """(N, C, h, w) -> (N, C, H, W) for ``like`` (N', C', H, W), bilinear with ``align_corners=False``,
    as torchvision's segmentation models resize their scores."""
    return F.interpolate(x, size=like.shape[-2:], mode="bilinear", align_corners=False)


class TorchvisionFCN(nn.Module):
    """torchvision's FCN on a ResNet trunk (see the module's docstring).

    (N, in_channels, H, W) -> (N, num_classes, H, W): torchvision's ``model(x)["out"]``.
    """

    task = "segmentation"  # the fcnseg.tasks entry that trains and evaluates it

    def __init__(self, backbone: ResNetTrunk, num_classes: int, aux: bool = False) -> None:
        super().__init__()
        if num_classes < 1:
            raise ValueError(f"num_classes must be at least 1, got {num_classes}")
        self.num_classes = num_classes
        self.in_channels = backbone.in_channels
        self.backbone = backbone
        self.classifier = fcn_head(backbone.output.channels, num_classes)
        self.aux_classifier = fcn_head(backbone.tap("layer3").channels, num_classes) if aux else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        taps, h = self.backbone.features(check_input(x, self.in_channels))
        return self.head(taps, h, x)

    def head(self, taps: dict[str, torch.Tensor], h: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        """The trunk's output ``h`` -> scores the size of ``like`` (the input)."""
        return resize_like(self.classifier(h), like)

    def outputs(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """torchvision's result: ``{"out": scores}``, and ``"aux"`` (layer3's head) when there is one."""
        wanted = ("layer3",) if self.aux_classifier is not None else ()
        taps, h = self.backbone.features(check_input(x, self.in_channels), wanted)
        result = {"out": self.head(taps, h, x)}
        if self.aux_classifier is not None:
            result["aux"] = resize_like(self.aux_classifier(taps["layer3"]), x)
        return result
