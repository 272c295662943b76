"""Convolutionalization: a classifier's fully connected layers become convolutions with the same weights."""

from __future__ import annotations

import copy

import torch
from torch import nn

_KEPT = (nn.ReLU, nn.Dropout, nn.Identity)


def _layers_in_order(classifier: nn.Module) -> list[nn.Module]:
    """Leaf layers in the order a forward pass applies them.

    Takes an ``nn.Sequential`` (nested ones are unrolled) or a torchvision-style
    classifier with ``features``, optional ``avgpool`` and ``classifier``, whose
    forward flattens between the last two.
    """
    if isinstance(classifier, nn.Sequential):
        layers: list[nn.Module] = []
        for child in classifier:
            layers += _layers_in_order(child) if isinstance(child, nn.Sequential) else [child]
        return layers
    if hasattr(classifier, "features") and hasattr(classifier, "classifier"):
        parts = [classifier.features, getattr(classifier, "avgpool", nn.Identity()), nn.Flatten()]
        return _layers_in_order(nn.Sequential(*parts, classifier.classifier))
    raise TypeError(
        f"cannot read the layer order of {type(classifier).__name__}: pass an nn.Sequential "
        "or a module with .features and .classifier"
    )


def convolutionalize(classifier: nn.Module, input_size: tuple[int, int] = (224, 224)) -> nn.Sequential:
    """An equivalent fully convolutional net that accepts any input size.

    The first fully connected layer after the flatten sees a C x h x w volume at
    ``input_size``; it becomes an h x w convolution with its weights reshaped to
    (out, C, h, w) (VGG16: 7x7 over 512 channels, 4096 outputs). Later fully
    connected layers become 1x1 convolutions. On a larger input the result is
    a class map: for a 224-input net with total stride 32, a 384x384 image gives
    6x6 scores, the classifier evaluated on 224x224 windows at stride 32 (exactly
    so when the convolutions do not zero-pad). (N, C, H, W) -> (N, K, h', w').
    """
    layers = _layers_in_order(classifier)
    flat = [i for i, layer in enumerate(layers) if isinstance(layer, nn.Flatten)]
    if not flat:
        raise ValueError("no nn.Flatten found: nothing to convolutionalize")
    trunk = [copy.deepcopy(layer) for layer in layers[: flat[0]]]
    first_conv = next((m for m in trunk if isinstance(m, nn.Conv2d)), None)
    if first_conv is None:
        raise ValueError("no convolution before the flatten: cannot tell the input channels")

    shape = torch.Size((1, first_conv.in_channels, *input_size))
    kept_trunk = []
    with torch.no_grad():
        h = torch.zeros(shape)
        for layer in trunk:
            out = layer.eval()(h)
            if isinstance(layer, nn.AdaptiveAvgPool2d | nn.AdaptiveMaxPool2d):
                if out.shape != h.shape:
                    raise ValueError(
                        f"{layer} resizes {tuple(h.shape[-2:])} to {tuple(out.shape[-2:])} at input "
                        f"{input_size}; the dense net would not be equivalent. Pass the input size the "
                        "classifier was trained for."
                    )
                continue  # the identity at input_size; a dense net must not resize
            kept_trunk.append(layer)
            h = out
    channels, height, width = h.shape[1:]

    head: list[nn.Module] = []
    volume: tuple[int, int] | None = (height, width)
    for layer in layers[flat[0] + 1 :]:
        if isinstance(layer, nn.Linear):
            kernel = volume or (1, 1)
            in_channels = layer.in_features // (kernel[0] * kernel[1])
            if in_channels * kernel[0] * kernel[1] != layer.in_features or (
                volume and in_channels != channels
            ):
                raise ValueError(
                    f"{layer} expects {layer.in_features} inputs but the flattened volume at input "
                    f"{input_size} is {channels}x{height}x{width} = {channels * height * width}"
                )
            conv = nn.Conv2d(in_channels, layer.out_features, kernel, bias=layer.bias is not None)
            with torch.no_grad():
                conv.weight.copy_(layer.weight.reshape(conv.weight.shape))
                if layer.bias is not None:
                    conv.bias.copy_(layer.bias)
            head.append(conv)
            volume = None
        elif isinstance(layer, _KEPT):
            head.append(copy.deepcopy(layer))
        else:
            raise ValueError(f"cannot convolutionalize {layer}: only Linear, ReLU and Dropout may follow")
    dense = nn.Sequential(*kept_trunk, *head)
    return dense.train(classifier.training)
