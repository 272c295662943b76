"""torchvision's ResNet state dicts: an ImageNet ResNet as an FCN's trunk, and torchvision's FCN
(``fcn_resnet50_coco``, ...) as it was published.

Both are read by their key names alone (``conv1.weight``, ``layer3.5.bn2.running_var``, ...): the
depth is the number of blocks per layer, the widths the planes of each layer's first block, so a
narrow or a full-width file loads alike. A file that does not fit is refused with the keys and
shapes that differ; nothing is copied in part.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn

from fcnseg.models.registry import TORCHVISION_FCNS, build_model
from fcnseg.models.resnet import RESNET_DEPTHS, RESNET_WIDTHS, Bottleneck
from fcnseg.weights.transfer import WeightsMismatchError, state_dict_problems

__all__ = ["load_strictly", "resnet_layout", "torchvision_fcn"]

_BLOCK = re.compile(r"^layer([1-4])\.(\d+)\.")


def resnet_layout(state: Mapping[str, torch.Tensor], source: str, prefix: str = "") -> dict:
    """``{"depth", "widths", "in_channels"}`` of the ResNet whose keys (after ``prefix``) ``state``
    holds; widths are None where they are torchvision's own (:data:`RESNET_WIDTHS`)."""
    keys = [k[len(prefix) :] for k in state if k.startswith(prefix)]
    blocks = [0, 0, 0, 0]
    for key in keys:
        match = _BLOCK.match(key)
        if match:
            layer, index = int(match.group(1)) - 1, int(match.group(2))
            blocks[layer] = max(blocks[layer], index + 1)
    bottleneck = f"{prefix}layer1.0.conv3.weight" in state
    depth = next(
        (
            d
            for d, kind in RESNET_DEPTHS.items()
            if kind.blocks == tuple(blocks) and (kind.block is Bottleneck) == bottleneck
        ),
        None,
    )
    if depth is None or f"{prefix}conv1.weight" not in state:
        raise WeightsMismatchError(
            f"{source}: not a torchvision ResNet-18/34/50/101 under {prefix or 'its top level'!r}: "
            f"{'bottleneck' if bottleneck else 'basic'} blocks {blocks} per layer"
        )
    # a block's first convolution has its planes (a bottleneck's reduces to them)
    widths = tuple(int(state[f"{prefix}layer{i}.0.conv1.weight"].shape[0]) for i in range(1, 5))
    return {
        "depth": depth,
        "widths": None if widths == RESNET_WIDTHS else widths,
        "in_channels": int(state[f"{prefix}conv1.weight"].shape[1]),
    }


def load_strictly(module: nn.Module, state: Mapping[str, torch.Tensor], source: str) -> None:
    """Load ``state`` into ``module``: every tensor filled and every given one used, shapes equal;
    otherwise a WeightsMismatchError listing what differs. A file without BatchNorm's
    ``num_batches_tracked`` (older torchvision files) loads; the count starts at 0."""
    expected = module.state_dict()
    problems = state_dict_problems(expected, state, optional=["num_batches_tracked"])
    if problems:
        shown = problems[:12] + ([f"... and {len(problems) - 12} more"] if len(problems) > 12 else [])
        raise WeightsMismatchError(
            f"{source}: does not fit {type(module).__name__}:\n  " + "\n  ".join(shown)
        )
    module.load_state_dict(dict(state), strict=False)


def torchvision_fcn(state: Mapping[str, torch.Tensor], arch: str | None = None, source: str = "state dict"):
    """A state dict of torchvision's ``fcn_resnet50`` / ``fcn_resnet101`` (``backbone.*``,
    ``classifier.*``, maybe ``aux_classifier.*``) as fcnseg's ``tv-fcn-resnet50`` / ``101``, with
    its classes and auxiliary head read off the file, ``meta["preprocess"]`` "imagenet"."""
    if "classifier.4.weight" not in state:
        raise WeightsMismatchError(f"{source}: no classifier.4.weight: not a state dict of torchvision's FCN")
    layout = resnet_layout(state, source, prefix="backbone.")
    found = f"tv-fcn-resnet{layout['depth']}"
    if found not in TORCHVISION_FCNS or (arch is not None and arch != found):
        raise WeightsMismatchError(
            f"{source}: holds torchvision's FCN on ResNet-{layout['depth']}, not {arch}"
        )
    model = build_model(
        found,
        int(state["classifier.4.weight"].shape[0]),
        widths=layout["widths"],
        in_channels=layout["in_channels"],
        aux=any(k.startswith("aux_classifier.") for k in state),
    )
    load_strictly(model, state, source)
    model.meta = {"preprocess": "imagenet", "source": Path(source).name}
    return model
