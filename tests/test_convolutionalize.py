"""Convolutionalization: the dense net equals the classifier on sliding windows."""

import pytest
import torch
from torch import nn

import fcnseg


def classifier(padding: int, volume: int) -> nn.Sequential:
    """A 224-input classifier with total stride 32: five conv+pool stages, then three FC layers."""
    layers, c = [], 3
    for width in (4, 8, 8, 16, 16):
        layers += [nn.Conv2d(c, width, 3, padding=padding), nn.ReLU(), nn.MaxPool2d(2)]
        c = width
    head = [nn.Linear(16 * volume * volume, 32), nn.ReLU(), nn.Dropout(), nn.Linear(32, 32), nn.ReLU()]
    return nn.Sequential(*layers, nn.Flatten(), *head, nn.Linear(32, 10)).eval()


def sliding_windows(net: nn.Module, x: torch.Tensor, n: int) -> torch.Tensor:
    """The classifier on the n x n crops of 224x224 at stride 32, as a (10, n, n) map."""
    rows = [
        [net(x[:, :, 32 * i : 32 * i + 224, 32 * j : 32 * j + 224])[0] for j in range(n)] for i in range(n)
    ]
    return torch.stack([torch.stack(r, -1) for r in rows], -2)


def test_unpadded_classifier_on_384_gives_6x6_equal_to_36_crops():
    torch.manual_seed(0)
    net = classifier(padding=0, volume=5)
    dense = fcnseg.convolutionalize(net)
    assert isinstance(dense[-1], nn.Conv2d) and dense[-1].kernel_size == (1, 1)
    first_fc = next(m for m in dense if isinstance(m, nn.Conv2d) and m.kernel_size == (5, 5))
    assert first_fc.weight.shape == (32, 16, 5, 5)
    x = torch.randn(1, 3, 384, 384)
    with torch.no_grad():
        out = dense(x)[0]
        crops = sliding_windows(net, x, 6)
    assert out.shape == (10, 6, 6)
    assert (out - crops).abs().max() <= 1e-5 * crops.abs().max()
    with torch.no_grad():  # at the training size it is the classifier itself
        small = torch.randn(2, 3, 224, 224)
        assert torch.allclose(dense(small).flatten(1), net(small), atol=1e-5)


def test_padded_vgg_style_classifier_sees_its_neighbours():
    """With zero padding each crop sees zeros at its border where the dense pass sees neighbours."""
    torch.manual_seed(0)
    net = classifier(padding=1, volume=7)
    dense = fcnseg.convolutionalize(net)
    x = torch.randn(1, 3, 384, 384)
    with torch.no_grad():
        features = dense[:15](x)
        out = dense(x)[0]
        crops = sliding_windows(net, x, 6)
    assert features.shape == (1, 16, 12, 12)  # the 7x7 volume at 224 becomes 12x12 at 384
    assert out.shape == (10, 6, 6)
    relative = float((out - crops).abs().max() / crops.abs().max())
    assert 1e-4 < relative < 1.0  # close, but not equal: the border effect is real


def test_torchvision_style_classifier_drops_its_identity_adaptive_pool():
    features = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(32))
    module = nn.Module()
    module.features, module.avgpool = features, nn.AdaptiveAvgPool2d(7)
    module.classifier = nn.Sequential(nn.Linear(4 * 49, 6), nn.ReLU(), nn.Linear(6, 3))
    dense = fcnseg.convolutionalize(module)
    assert not any(isinstance(m, nn.AdaptiveAvgPool2d) for m in dense)
    assert dense(torch.randn(1, 3, 320, 288)).shape == (1, 3, 4, 3)


def test_refuses_what_it_cannot_convert():
    with pytest.raises(ValueError, match="no nn.Flatten"):
        fcnseg.convolutionalize(nn.Sequential(nn.Conv2d(3, 3, 1)))
    with pytest.raises(ValueError, match="expects 100 inputs"):
        fcnseg.convolutionalize(nn.Sequential(nn.Conv2d(3, 4, 32, 32), nn.Flatten(), nn.Linear(100, 2)))
    resize = nn.Sequential(nn.Conv2d(3, 4, 3), nn.AdaptiveAvgPool2d(7), nn.Flatten(), nn.Linear(196, 2))
    with pytest.raises(ValueError, match="would not be equivalent"):
        fcnseg.convolutionalize(resize)
    with pytest.raises(TypeError, match="layer order"):
        fcnseg.convolutionalize(nn.Linear(3, 3))
