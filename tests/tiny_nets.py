"""A small seeded FCN with non-trivial scores, for tests that need a model but not a trained one."""

import torch

import fcnseg

TINY = (4, 8, 8, 16, 16, 32)
TINY_ALEXNET = (8, 8, 8, 8, 8, 16)


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
