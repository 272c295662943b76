"""Small seeded FCNs with non-trivial scores, for tests that need a model but not a trained one."""

import torch
from torch import nn

import fcnseg

TINY = (4, 8, 8, 16, 16, 32)
TINY_ALEXNET = (8, 8, 8, 8, 8, 16)
NARROW = {"vgg": (4, 8, 16, 32, 32, 64), "alexnet": (8, 8, 16, 16, 8, 32)}


def tiny_fcn(arch: str = "fcn8s", num_classes: int = 5) -> fcnseg.FCN:
    """The score layers start at zero; they are drawn at random so that outputs differ by class."""
    torch.manual_seed(0)
    widths = TINY_ALEXNET if arch == "fcn-alexnet" else TINY
    model = fcnseg.build_model(arch, num_classes, widths=widths).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.startswith("score"):
                p.normal_(0, 0.5)
    return model


def random_net(arch: str, seed: int = 0, **options) -> fcnseg.FCN:
    """A narrow net with He-scaled random weights everywhere, so every path carries signal."""
    torch.manual_seed(seed)
    widths = NARROW["alexnet" if arch == "fcn-alexnet" else "vgg"]
    model = fcnseg.build_model(arch, widths=widths, **options).eval()
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.Conv2d):
                fan_in = module.weight[0].numel()
                module.weight.normal_(0, (2 / fan_in) ** 0.5)
                module.bias.normal_(0, 0.2)
    return model
