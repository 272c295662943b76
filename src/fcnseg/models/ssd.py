"""SSD300 and SSD512 (Liu et al. 2016) on the reduced, rarefied VGG16, laid out as weiliu89/caffe's
ssd_pascal.py and the ssd_pascal_512.py released with the SSD512 model.

The trunk is VGG16 with conv1_1 padded by 1, pool5 a 3x3 max-pooling of stride 1 (padding 1),
fc6 a 3x3 convolution of dilation 6 (padding 6) and fc7 a 1x1 one, both 1024 wide, without
dropout: :func:`ssd_trunk` builds it, :func:`reduce_vgg16` makes it from an ImageNet VGG16.
Extra layers follow (SSD300: conv6_1 .. conv9_2; SSD512: also conv10_1 and conv10_2); conv4_3
(after an L2 normalisation with a learned per-channel scale starting at 20), fc7 and the second
layer of each extra pair feed a 3x3 box head and a 3x3 class head, named as in the prototxt
(``conv4_3_norm_mbox_loc``, ...): 6 sources in SSD300, 7 in SSD512.
"""

from __future__ import annotations

import copy
import math
from collections import OrderedDict
from collections.abc import Sequence

import torch
from torch import nn

from fcnseg.detection.priors import SSD300_PRIORS, PriorSpec, prior_boxes
from fcnseg.models.dense import rarefy
from fcnseg.models.geometry import out_length
from fcnseg.models.layers import check_input
from fcnseg.models.trunk import as_trunk
from fcnseg.models.vgg import VGG16_LAYERS, layer_widths, vgg16_backbone


def check_sources(x: torch.Tensor, sizes: list[tuple[int, int]], sources: tuple[str, ...]) -> torch.Tensor:
    """``x`` itself where every source map of the net is non-empty (``sizes``, for its size); otherwise
    an error."""
    empty = [s for s, size in zip(sources, sizes, strict=True) if 0 in size]
    if empty:
        raise ValueError(
            f"input {tuple(x.shape[-2:])} is too small for SSD: {', '.join(empty)} would be empty"
        )
    return x


torch.fx.wrap("check_input")

__all__ = [
    "SSD",
    "SSD300_EXTRAS",
    "SSD300_WIDTHS",
    "SSD512_EXTRAS",
    "L2Normalize",
    "caffe_xavier_",
    "extra_widths",
    "reduce_vgg16",
    "ssd_trunk",
]

SSD300_WIDTHS = (64, 128, 256, 512, 512, 1024)
"""conv1_x .. conv5_x, then fc6/fc7 (1024: a quarter of VGG16's 4096); 15 widths give each layer its own."""

ExtraLayer = tuple[str, int, int, int, int]
"""An extra layer: name, its width as a share of fc7's (width = fc7 // share), kernel, stride, padding."""

SSD300_EXTRAS: tuple[ExtraLayer, ...] = (  # ssd_pascal.py's AddExtraLayers
    ("conv6_1", 4, 1, 1, 0),
    ("conv6_2", 2, 3, 2, 1),
    ("conv7_1", 8, 1, 1, 0),
    ("conv7_2", 4, 3, 2, 1),
    ("conv8_1", 8, 1, 1, 0),
    ("conv8_2", 4, 3, 1, 0),
    ("conv9_1", 8, 1, 1, 0),
    ("conv9_2", 4, 3, 1, 0),
)
SSD512_EXTRAS: tuple[ExtraLayer, ...] = (  # ssd_pascal_512.py: 32 -> 16, 8, 4, 2 by stride 2, then 1
    *SSD300_EXTRAS[:4],
    ("conv8_1", 8, 1, 1, 0),
    ("conv8_2", 4, 3, 2, 1),
    ("conv9_1", 8, 1, 1, 0),
    ("conv9_2", 4, 3, 2, 1),
    ("conv10_1", 8, 1, 1, 0),
    ("conv10_2", 4, 4, 1, 1),
)


def extra_widths(fc_width: int, extras: Sequence[ExtraLayer] = SSD300_EXTRAS) -> tuple[int, ...]:
    """Widths of the extra layers from fc7's: 256, 512, 128, 256, 128, 256, 128, 256 (SSD512: and
    128, 256) for 1024."""
    return tuple(max(1, fc_width // share) for _, share, *_ in extras)


def caffe_xavier_(weight: torch.Tensor) -> torch.Tensor:
    """Caffe's ``xavier`` filler, as ssd_pascal.py fills the extra layers and heads: uniform in
    +-sqrt(3 / fan_in) (its default variance_norm FAN_IN), not PyTorch's +-sqrt(6 / (fan_in + fan_out))."""
    fan_in = weight[0].numel()
    bound = math.sqrt(3.0 / fan_in)
    with torch.no_grad():
        return weight.uniform_(-bound, bound)


def _reduced_head(layers: OrderedDict[str, nn.Module], fc6: nn.Conv2d, fc7: nn.Conv2d) -> nn.Sequential:
    """The VGG layers up to conv5_3's ReLU, then SSD's pool5, fc6 and fc7 (no dropout)."""
    kept = OrderedDict(
        (k, v) for k, v in layers.items() if not k.startswith(("pool5", "fc", "relu6", "relu7", "drop"))
    )
    kept["conv1_1"].padding = (1, 1)
    kept["pool5"] = nn.MaxPool2d(3, stride=1, padding=1, ceil_mode=True)
    kept["fc6"], kept["relu6"] = fc6, nn.ReLU(inplace=True)
    kept["fc7"], kept["relu7"] = fc7, nn.ReLU(inplace=True)
    return nn.Sequential(kept)


def ssd_trunk(widths: Sequence[int] = SSD300_WIDTHS, in_channels: int = 3) -> nn.Sequential:
    """SSD's VGG16, conv1_1 .. relu7, freshly initialised; ``widths``: 6 (a stage each, then fc6/fc7)
    or 15 (a layer each: conv1_1 .. conv5_3, fc6, fc7)."""
    per_layer = dict(zip(VGG16_LAYERS, layer_widths(widths), strict=True))
    vgg = vgg16_backbone((*layer_widths(widths)[:13], 1, 1), in_channels=in_channels, input_padding=1)
    fc6 = nn.Conv2d(per_layer["conv5_3"], per_layer["fc6"], 3, padding=6, dilation=6)
    fc7 = nn.Conv2d(per_layer["fc6"], per_layer["fc7"], 1)
    return _reduced_head(OrderedDict(vgg.named_children()), fc6, fc7)


def reduce_vgg16(vgg: nn.Sequential, keep_every: int = 4) -> nn.Sequential:
    """SSD's trunk from a convolutionalized VGG16 (fc6 a 7x7 convolution, fc7 a 1x1 one, as
    :func:`fcnseg.models.vgg.vgg16_backbone` and ImageNet weights make it).

    The recipe of VGG_ILSVRC_16_layers_fc_reduced, with the exact weights:

    1. :func:`~fcnseg.models.dense.rarefy` at pool5: its stride 2 goes, so fc6's 7x7 taps
       spread to dilation 2 and span 13 pixels of conv5_3 at stride 16;
    2. pool5 becomes the reference's 3x3 max-pooling of stride 1, padding 1;
    3. fc6 keeps every 3rd tap (0, 3, 6) of every 4th filter (0, 4, ...): a 3x3 kernel at
       dilation 6 spanning the same 13 pixels about the same centre tap, padded by 6 so the map
       keeps its size; fc7 keeps every 4th filter over every 4th input channel; biases likewise.

    4096 -> 1024 channels with ``keep_every=4``. Which 1024 of the 4096 the published file kept
    is not stated in the reference's sources; this takes 0, 4, 8, .... conv1_1's padding becomes 1.
    """
    dense = rarefy(vgg, "pool5")
    old6, old7 = dense.fc6, dense.fc7
    if old6.kernel_size != (7, 7) or old7.kernel_size != (1, 1):
        raise ValueError(
            f"expected VGG16's fc6 7x7 and fc7 1x1, got {old6.kernel_size} and {old7.kernel_size}"
        )
    dilation = 3 * old6.dilation[0]
    fc6 = nn.Conv2d(
        old6.in_channels, len(range(0, old6.out_channels, keep_every)), 3, padding=dilation, dilation=dilation
    )
    fc7 = nn.Conv2d(fc6.out_channels, len(range(0, old7.out_channels, keep_every)), 1)
    with torch.no_grad():
        fc6.weight.copy_(old6.weight[::keep_every, :, ::3, ::3])
        fc6.bias.copy_(old6.bias[::keep_every])
        fc7.weight.copy_(old7.weight[::keep_every, ::keep_every])
        fc7.bias.copy_(old7.bias[::keep_every])
    return _reduced_head(OrderedDict(copy.deepcopy(dense).named_children()), fc6, fc7)


def _default_extras(fc_width: int, extras: Sequence[ExtraLayer]) -> tuple[int, ...]:
    """:func:`extra_widths`, under a name that SSD's ``extra_widths`` argument does not hide."""
    return extra_widths(fc_width, extras)


class L2Normalize(nn.Module):
    """Caffe's Normalize (across_spatial false, channel_shared false): each position's channel
    vector divided by its L2 norm, times a learned per-channel ``scale``."""

    def __init__(self, channels: int, scale: float = 20.0, eps: float = 1e-10):
        super().__init__()
        self.eps = eps
        self.scale = nn.Parameter(torch.full((channels,), float(scale)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        norm = (x.pow(2).sum(1, keepdim=True) + self.eps).sqrt()
        return x / norm * self.scale.view(1, -1, 1, 1)


class SSD(nn.Module):
    """SSD300: (N, in_channels, 300, 300) -> loc (N, 8732, 4) box codes and conf (N, 8732, C) logits;
    SSD512 (``priors`` SSD512_PRIORS, ``extras`` :data:`SSD512_EXTRAS`): (N, in_channels, 512, 512)
    -> (N, 24564, 4) and (N, 24564, C). In the order of :func:`fcnseg.detection.prior_boxes`
    (``priors``): each head's NCHW output permuted to NHWC, flattened and concatenated, as Caffe's
    Permute/Flatten/Concat do. ``widths`` size the trunk (:func:`ssd_trunk`), ``extra_widths`` each
    extra layer (default: :func:`extra_widths` of fc7's).

    The heads read the trunk's taps: ``conv4_3`` names the one read as conv4_3 (L2-normalised;
    VGG16's ``relu4_3``), and the trunk's output is fc7, which the extra layers follow. ``trunk``
    puts them on another trunk (a ResNet with ``output_stride=16`` and ``conv4_3="layer2"`` has
    SSD300's strides 8 and 16 there).
    """

    task = "detection"  # what it predicts: the fcnseg.tasks entry that trains and evaluates it

    def __init__(
        self,
        num_classes: int = 21,
        widths: Sequence[int] = SSD300_WIDTHS,
        in_channels: int = 3,
        priors: PriorSpec = SSD300_PRIORS,
        trunk: nn.Module | None = None,
        extras: Sequence[ExtraLayer] = SSD300_EXTRAS,
        extra_widths: Sequence[int] | None = None,
        conv4_3: str = "relu4_3",
    ):
        super().__init__()
        if num_classes < 2:
            raise ValueError(f"num_classes must be at least 2 (background and one class), got {num_classes}")
        if len(widths) not in (6, len(VGG16_LAYERS)):
            raise ValueError(
                f"SSD needs 6 widths (conv1..conv5, fc) or 15 (conv1_1 .. conv5_3, fc6, fc7), got {tuple(widths)}"
            )
        self.num_classes, self.in_channels, self.prior_spec = num_classes, in_channels, priors
        # heads read taps: conv4_3's is named, fc7 is the trunk's output (another trunk's, given)
        self.backbone = as_trunk(trunk if trunk is not None else ssd_trunk(tuple(widths), in_channels))
        self.conv4_3_tap = conv4_3
        self.conv4_3_norm = L2Normalize(self.backbone.tap(conv4_3).channels)
        channels = self.backbone.output.channels
        widths_of_extras = (
            tuple(extra_widths) if extra_widths is not None else _default_extras(channels, extras)
        )
        if len(widths_of_extras) != len(extras):
            raise ValueError(
                f"{len(extras)} extra layers ({extras[0][0]} .. {extras[-1][0]}) need as many widths, "
                f"got {widths_of_extras}"
            )
        layers: OrderedDict[str, nn.Module] = OrderedDict()
        for (name, _, kernel, stride, pad), width in zip(extras, widths_of_extras, strict=True):
            layers[name] = nn.Conv2d(channels, width, kernel, stride=stride, padding=pad)
            layers[f"{name}_relu"] = nn.ReLU(inplace=True)
            channels = width
        self.extras = nn.Sequential(layers)
        self.heads = nn.ModuleDict()
        for name, count, width in zip(
            self.head_inputs, priors.per_location, self._source_widths(), strict=True
        ):
            self.heads[f"{name}_mbox_loc"] = nn.Conv2d(width, count * 4, 3, padding=1)
            self.heads[f"{name}_mbox_conf"] = nn.Conv2d(width, count * num_classes, 3, padding=1)
        for module in [*self.extras.modules(), *self.heads.values()]:  # ssd_pascal.py: xavier, bias 0
            if isinstance(module, nn.Conv2d):
                caffe_xavier_(module.weight)
                nn.init.zeros_(module.bias)

    @property
    def sources(self) -> tuple[str, ...]:
        """The blobs the heads read, as the prior spec names them (conv4_3, fc7, conv6_2, ...)."""
        return tuple(layer.source for layer in self.prior_spec.layers)

    @property
    def head_inputs(self) -> tuple[str, ...]:
        """The names the heads are called after: conv4_3 is read through conv4_3_norm."""
        return tuple("conv4_3_norm" if s == "conv4_3" else s for s in self.sources)

    def _source_widths(self) -> list[int]:
        convs = {name: m.out_channels for name, m in self.extras.named_children() if isinstance(m, nn.Conv2d)}
        convs |= {
            "conv4_3": self.backbone.tap(self.conv4_3_tap).channels,
            "fc7": self.backbone.output.channels,
        }
        return [convs[s] for s in self.sources]

    def _layers(self) -> list[tuple[str, nn.Module]]:
        """The extra layers as (blob name, layer): each ReLU is named after the convolution whose blob it
        rectifies, in place as in Caffe."""
        named, last = [], None
        for name, layer in self.extras.named_children():
            last = name if isinstance(layer, nn.Conv2d) else last
            named.append((last if isinstance(layer, nn.ReLU) else name, layer))
        return named

    def features(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The source maps the heads read, in :attr:`sources` order (conv4_3 already normalised)."""
        x = check_sources(check_input(x, self.in_channels), self.map_sizes(tuple(x.shape[-2:])), self.sources)
        taps, x = self.backbone.features(x, (self.conv4_3_tap,))
        found = {"conv4_3": self.conv4_3_norm(taps[self.conv4_3_tap]), "fc7": x}
        wanted = set(self.sources)
        for blob, layer in self._layers():
            x = layer(x)
            if blob in wanted and isinstance(layer, nn.ReLU):
                found[blob] = x
        return [found[s] for s in self.sources]

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        locs, confs = [], []
        for name, source in zip(self.head_inputs, self.features(x), strict=True):
            for kind, out in (("loc", locs), ("conf", confs)):
                out.append(self.heads[f"{name}_mbox_{kind}"](source).permute(0, 2, 3, 1).flatten(1))
        n = x.shape[0]
        return torch.cat(locs, 1).view(n, -1, 4), torch.cat(confs, 1).view(n, -1, self.num_classes)

    def map_sizes(self, image_size: tuple[int, int]) -> list[tuple[int, int]]:
        """(H, W) of each source map for an input of ``image_size``: 38, 19, 10, 5, 3, 1 at 300. The
        trunk's from its taps, the extra layers' from their windows."""
        blobs = self.backbone.blob_sizes(*image_size)
        height, width = fc7 = blobs[self.backbone.output.name]
        sizes = {"conv4_3": blobs[self.conv4_3_tap], "fc7": fc7}
        for blob, layer in self._layers():
            height = out_length(layer, height, 0) if height else 0
            width = out_length(layer, width, 1) if width else 0
            sizes[blob] = (height, width)
        return [sizes[s] for s in self.sources]

    def priors(self, image_size: tuple[int, int] | None = None) -> torch.Tensor:
        """(P, 4) priors (cx, cy, w, h) for inputs of ``image_size`` (default: the spec's 300x300)."""
        if image_size is None:
            return prior_boxes(self.prior_spec)
        return prior_boxes(self.prior_spec, image_size, self.map_sizes(image_size))
