"""Input preprocessing presets: each set of weights expects its own colour order, scale and mean."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from fcnseg.errors import ConfigError


@dataclass(frozen=True)
class Preprocessing:
    """How to turn an image (RGB, HHA or depth) into the net's input.

    ``bgr`` reverses the channel order; then each value v becomes
    ``(f(v) * scale - mean[c]) / std[c]`` in the channel order the net sees, where ``f`` is the
    natural log with ``log`` (depth; a missing reading, 0, counts as 1), else the identity.
    """

    name: str
    bgr: bool
    scale: float
    mean: tuple[float, ...]
    std: tuple[float, ...]
    log: bool = False
    parts: tuple[Preprocessing, ...] = ()
    """Presets applied side by side to consecutive channels (colour then depth); the fields above
    are then unused."""

    @property
    def channels(self) -> int:
        """The image channels it takes, which is the net's input channels."""
        return sum(part.channels for part in self.parts) if self.parts else len(self.mean)


def _stacked(name: str, *parts: Preprocessing) -> Preprocessing:
    return Preprocessing(name, False, 1.0, (), (), parts=parts)


_NYUD_COLOR = Preprocessing("nyud-color", True, 1.0, (116.190, 97.203, 92.318), (1.0,) * 3)
_NYUD_HHA = Preprocessing("nyud-hha", False, 1.0, (132.431, 94.076, 118.477), (1.0,) * 3)
_NYUD_DEPTH = Preprocessing("nyud-depth", False, 1.0, (7.844,), (1.0,), log=True)


PRESETS: dict[str, Preprocessing] = {
    # The original Caffe FCN demo: BGR, 0-255, ImageNet mean pixel of VGG16 in BGR order.
    "caffe": Preprocessing("caffe", True, 1.0, (104.00698793, 116.66876762, 122.67891434), (1.0,) * 3),
    # torchvision's ImageNet models: RGB in [0, 1], normalised by the ImageNet mean and std.
    "imagenet": Preprocessing("imagenet", False, 1 / 255, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
    # The FCN authors' NYUDv2 models (their nyud_layers.py): colour as BGR minus the NYUD mean pixel;
    # HHA images in file order minus the HHA mean; depth as its log minus the mean log depth; and
    # colour beside depth (nyud-fcn32s-color-d, 4 channels) or beside HHA (color-hha, 6 channels).
    "nyud-color": _NYUD_COLOR,
    "nyud-hha": _NYUD_HHA,
    "nyud-depth": _NYUD_DEPTH,
    "nyud-color-depth": _stacked("nyud-color-depth", _NYUD_COLOR, _NYUD_DEPTH),
    "nyud-color-hha": _stacked("nyud-color-hha", _NYUD_COLOR, _NYUD_HHA),
    # The FCN authors' SIFT Flow and PASCAL-Context data layers: BGR minus each set's mean pixel.
    "siftflow": Preprocessing("siftflow", True, 1.0, (114.578, 115.294, 108.353), (1.0,) * 3),
    "pascal-context": Preprocessing("pascal-context", True, 1.0, (104.007, 116.669, 122.679), (1.0,) * 3),
    # weiliu89/caffe's SSD models (ssd_pascal.py): BGR, 0-255, minus the mean pixel (104, 117, 123).
    "ssd": Preprocessing("ssd", True, 1.0, (104.0, 117.0, 123.0), (1.0,) * 3),
}


DEFAULT_PREPROCESS = "caffe"
"""Used when a model's ``meta`` names no preprocessing: the original Caffe FCN models'."""


def preprocessing_of(model: torch.nn.Module) -> str:
    """The preprocessing ``model``'s weights expect: the one its ``meta`` names, else the default."""
    return getattr(model, "meta", {}).get("preprocess", DEFAULT_PREPROCESS)


def same_colour_coding(a: str, b: str) -> bool:
    """Whether weights made for preset ``a`` read colour as ``b`` gives it: the same channel order,
    scale and spread. Only the mean pixel may differ, as between the Caffe presets, each of which
    subtracts its own data set's mean from the same BGR 0-255 values."""

    def colour(preset: Preprocessing) -> tuple:
        first = preset.parts[0] if preset.parts else preset
        return first.bgr, first.scale, first.std, first.log

    return colour(get_preprocessing(a)) == colour(get_preprocessing(b))


def get_preprocessing(name: str) -> Preprocessing:
    if name not in PRESETS:
        raise ConfigError(f"unknown preprocessing {name!r}; choose one of {sorted(PRESETS)}")
    return PRESETS[name]


def preprocess(image: np.ndarray | torch.Tensor, mode: str = DEFAULT_PREPROCESS) -> torch.Tensor:
    """(H, W, C) or (N, H, W, C) image -> (C, H, W) or (N, C, H, W) float32 net input; C is the
    preset's channels: 3 (RGB or HHA, uint8), 1 (depth, uint16), 4 (RGB-D) or 6 (RGB-HHA)."""
    preset = get_preprocessing(mode)
    # torch.tensor copies while converting, so read-only arrays (np.asarray of a PIL image) are fine
    x = (
        image.to(torch.float32)
        if isinstance(image, torch.Tensor)
        else torch.tensor(image, dtype=torch.float32)
    )
    if x.dim() not in (3, 4) or x.shape[-1] != preset.channels:
        raise ValueError(
            f"{mode} preprocessing expects an (H, W, {preset.channels}) or (N, H, W, {preset.channels}) "
            f"image, got shape {tuple(x.shape)}"
        )
    parts = preset.parts or (preset,)
    chunks = x.split([part.channels for part in parts], dim=-1)
    x = torch.cat([_normalise(chunk, part) for chunk, part in zip(chunks, parts, strict=True)], dim=-1)
    return x.movedim(-1, -3).contiguous()


def _normalise(x: torch.Tensor, preset: Preprocessing) -> torch.Tensor:
    if preset.log:
        x = x.clamp_min(1).log()
    if preset.bgr:
        x = x.flip(-1)
    mean = torch.tensor(preset.mean, dtype=torch.float32)
    std = torch.tensor(preset.std, dtype=torch.float32)
    return (x * preset.scale - mean) / std
