"""State dicts laid out as torchvision's ResNet and FCN, made here from torchvision's documented
structure (models/resnet.py, models/segmentation/fcn.py), not from fcnseg's modules: the files that
fcnseg must read as torchvision writes them."""

from __future__ import annotations

import torch

BLOCKS = {18: (2, 2, 2, 2), 34: (3, 4, 6, 3), 50: (3, 4, 6, 3), 101: (3, 4, 23, 3)}
"""Blocks of layer1 .. layer4 by depth (basic blocks below 50, bottlenecks from 50)."""


def torchvision_resnet(
    depth: int, widths=(64, 128, 256, 512), seed: int = 0, meta: bool = False, dilated: bool = False
) -> dict:
    """A ResNet state dict with torchvision's names and shapes, classifier (fc) included: He-scaled
    convolutions, BatchNorm with random statistics (or, ``meta``, shapes only). ``dilated``: layer3
    and layer4 trade their stride for dilation (a block keeps its shortcut as a plain identity where
    neither its stride nor its width changes)."""
    generator = torch.Generator().manual_seed(seed)
    device = "meta" if meta else "cpu"

    def draw(*shape, low=None, scale=1.0):
        if meta:
            return torch.empty(*shape, device=device)
        if low is not None:
            return torch.empty(*shape).uniform_(low, low + 1, generator=generator)
        return torch.randn(*shape, generator=generator) * scale

    state: dict[str, torch.Tensor] = {}

    def conv(name: str, out: int, inp: int, k: int) -> None:
        state[f"{name}.weight"] = draw(out, inp, k, k, scale=(2 / (inp * k * k)) ** 0.5)

    def norm(name: str, c: int) -> None:
        state[f"{name}.weight"] = draw(c, low=0.5)
        state[f"{name}.bias"] = draw(c, scale=0.1)
        state[f"{name}.running_mean"] = draw(c, scale=0.1)
        state[f"{name}.running_var"] = draw(c, low=0.5)
        state[f"{name}.num_batches_tracked"] = torch.tensor(0, device=device)

    bottleneck = depth >= 50
    expansion = 4 if bottleneck else 1
    conv("conv1", widths[0], 3, 7)
    norm("bn1", widths[0])
    inp = widths[0]
    for i, (planes, count) in enumerate(zip(widths, BLOCKS[depth], strict=True), start=1):
        for j in range(count):
            p = f"layer{i}.{j}"
            if bottleneck:
                for name, (out, cin, k) in {
                    "1": (planes, inp, 1),
                    "2": (planes, planes, 3),
                    "3": (planes * 4, planes, 1),
                }.items():
                    conv(f"{p}.conv{name}", out, cin, k)
                    norm(f"{p}.bn{name}", out)
            else:
                for name, cin in (("1", inp), ("2", planes)):
                    conv(f"{p}.conv{name}", planes, cin, 3)
                    norm(f"{p}.bn{name}", planes)
            stride = 1 if i == 1 or (dilated and i >= 3) else 2
            if j == 0 and (stride != 1 or inp != planes * expansion):
                conv(f"{p}.downsample.0", planes * expansion, inp, 1)
                norm(f"{p}.downsample.1", planes * expansion)
            inp = planes * expansion
    state["fc.weight"] = draw(1000, inp, scale=0.01)
    state["fc.bias"] = draw(1000, scale=0.01)
    return state


def torchvision_fcn_state(depth: int, num_classes: int, widths=(64, 128, 256, 512), aux=True) -> dict:
    """torchvision's fcn_resnet<depth> state dict: the trunk under backbone., FCNHead(s)."""
    trunk = torchvision_resnet(depth, widths, seed=1, dilated=True)
    state = {f"backbone.{k}": v for k, v in trunk.items() if not k.startswith("fc.")}
    generator = torch.Generator().manual_seed(2)
    heads = {"classifier": widths[3] * 4, **({"aux_classifier": widths[2] * 4} if aux else {})}
    for head, channels in heads.items():
        inner = channels // 4
        state[f"{head}.0.weight"] = (
            torch.randn(inner, channels, 3, 3, generator=generator) / (9 * channels) ** 0.5
        )
        state[f"{head}.1.weight"] = torch.rand(inner, generator=generator) + 0.5
        state[f"{head}.1.bias"] = torch.randn(inner, generator=generator) * 0.1
        state[f"{head}.1.running_mean"] = torch.randn(inner, generator=generator) * 0.1
        state[f"{head}.1.running_var"] = torch.rand(inner, generator=generator) + 0.5
        state[f"{head}.1.num_batches_tracked"] = torch.tensor(0)
        state[f"{head}.4.weight"] = torch.randn(num_classes, inner, 1, 1, generator=generator) / inner**0.5
        state[f"{head}.4.bias"] = torch.randn(num_classes, generator=generator)
    return state
