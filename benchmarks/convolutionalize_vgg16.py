"""How far a convolutionalized VGG16 is from sliding windows (zero padding makes them differ).

Builds a full-width VGG16 classifier (He-initialised, seeded; torchvision's layout),
convolutionalizes it, runs it on a 384x384 image and compares the 6x6 class map
with the classifier on the 36 crops of 224x224 at stride 32.

    python benchmarks/convolutionalize_vgg16.py
"""

import torch
from torch import nn

import fcnseg


def vgg16_classifier() -> nn.Sequential:
    layers, c = [], 3
    for width, repeats in zip((64, 128, 256, 512, 512), (2, 2, 3, 3, 3), strict=True):
        for _ in range(repeats):
            conv = nn.Conv2d(c, width, 3, padding=1)
            nn.init.kaiming_normal_(conv.weight, nonlinearity="relu")
            nn.init.uniform_(conv.bias, -0.1, 0.1)
            layers += [conv, nn.ReLU()]
            c = width
        layers.append(nn.MaxPool2d(2))
    fcs = [nn.Linear(512 * 49, 4096), nn.Linear(4096, 4096), nn.Linear(4096, 1000)]
    for fc in fcs:
        nn.init.kaiming_normal_(fc.weight, nonlinearity="relu")
    head = [fcs[0], nn.ReLU(), nn.Dropout(), fcs[1], nn.ReLU(), nn.Dropout(), fcs[2]]
    return nn.Sequential(*layers, nn.Flatten(), *head).eval()


def main() -> None:
    torch.manual_seed(0)
    net = vgg16_classifier()
    dense = fcnseg.convolutionalize(net)
    x = torch.rand(1, 3, 384, 384) * 255 - 128
    with torch.inference_mode():
        out = dense(x)[0]
        crops = torch.stack(
            [
                torch.stack(
                    [net(x[:, :, 32 * i : 32 * i + 224, 32 * j : 32 * j + 224])[0] for j in range(6)], -1
                )
                for i in range(6)
            ],
            -2,
        )
    relative = float((out - crops).abs().max() / crops.abs().max())
    agree = float((out.argmax(0) == crops.argmax(0)).float().mean())
    print(
        f"class map {tuple(out.shape)}; max |dense - windows| / max |windows| = {relative:.3f}; top-1 agreement {agree:.0%}"
    )


if __name__ == "__main__":
    main()
