"""Input preprocessing presets: each set of weights expects its own colour order, scale and mean."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from fcnseg.errors import ConfigError


@dataclass(frozen=True)
class Preprocessing:
    """How to turn an RGB uint8 image into the net's input.

    ``bgr`` reverses the channel order; then each value v becomes
    ``(v * scale - mean[c]) / std[c]`` in the channel order the net sees.
    """

    name: str
    bgr: bool
    scale: float
    mean: tuple[float, ...]
    std: tuple[float, ...]


PRESETS: dict[str, Preprocessing] = {
    # The original Caffe FCN demo: BGR, 0-255, ImageNet mean pixel of VGG16 in BGR order.
    "caffe": Preprocessing("caffe", True, 1.0, (104.00698793, 116.66876762, 122.67891434), (1.0,) * 3),
    # torchvision's ImageNet models: RGB in [0, 1], normalised by the ImageNet mean and std.
    "imagenet": Preprocessing("imagenet", False, 1 / 255, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
    # The FCN authors' NYUDv2 models (their nyud_layers.py): colour as BGR minus the NYUD mean pixel;
    # HHA images in file order minus the HHA mean.
    "nyud-color": Preprocessing("nyud-color", True, 1.0, (116.190, 97.203, 92.318), (1.0,) * 3),
    "nyud-hha": Preprocessing("nyud-hha", False, 1.0, (132.431, 94.076, 118.477), (1.0,) * 3),
    # weiliu89/caffe's SSD models (ssd_pascal.py): BGR, 0-255, minus the mean pixel (104, 117, 123).
    "ssd": Preprocessing("ssd", True, 1.0, (104.0, 117.0, 123.0), (1.0,) * 3),
}


DEFAULT_PREPROCESS = "caffe"
"""Used when a model's ``meta`` names no preprocessing: the original Caffe FCN models'."""


def preprocessing_of(model: torch.nn.Module) -> str:
    """The preprocessing ``model``'s weights expect: the one its ``meta`` names, else the default."""
    return getattr(model, "meta", {}).get("preprocess", DEFAULT_PREPROCESS)


def get_preprocessing(name: str) -> Preprocessing:
    if name not in PRESETS:
        raise ConfigError(f"unknown preprocessing {name!r}; choose one of {sorted(PRESETS)}")
    return PRESETS[name]


def preprocess(image: np.ndarray | torch.Tensor, mode: str = DEFAULT_PREPROCESS) -> torch.Tensor:
    """(H, W, 3) or (N, H, W, 3) RGB uint8 -> (3, H, W) or (N, 3, H, W) float32 net input."""
    preset = get_preprocessing(mode)
    # torch.tensor copies while converting, so read-only arrays (np.asarray of a PIL image) are fine
    x = (
        image.to(torch.float32)
        if isinstance(image, torch.Tensor)
        else torch.tensor(image, dtype=torch.float32)
    )
    if x.dim() not in (3, 4) or x.shape[-1] != len(preset.mean):
        raise ValueError(
            f"expected an (H, W, {len(preset.mean)}) or (N, H, W, {len(preset.mean)}) image, "
            f"got shape {tuple(x.shape)}"
        )
    if preset.bgr:
        x = x.flip(-1)
    mean = torch.tensor(preset.mean, dtype=torch.float32)
    std = torch.tensor(preset.std, dtype=torch.float32)
    x = (x * preset.scale - mean) / std
    return x.movedim(-1, -3).contiguous()
