"""Compute cost by forward hooks: MACs of convolutions and transposed convolutions, parameters per layer."""

import torch
from torch import nn

import fcnseg
from fcnseg.models.flops import compute_cost
from fcnseg.models.vgg import vgg16_backbone


def test_conv_and_transposed_conv_macs_by_hand():
    net = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),  # 8*10*12 outputs x 3*9 taps
        nn.ReLU(),
        nn.Conv2d(8, 4, 3, stride=2, groups=2, dilation=2),  # 4*3*4 outputs x (8/2)*9 taps
        nn.ConvTranspose2d(4, 2, 4, stride=2, bias=False),  # 4*3*4 inputs x 2*16 taps
    )
    cost = compute_cost(net, (10, 12))
    assert [layer.macs for layer in cost.layers] == [8 * 10 * 12 * 27, 0, 4 * 3 * 4 * 36, 4 * 3 * 4 * 32]
    assert [layer.output_shape for layer in cost.layers] == [(8, 10, 12), (8, 10, 12), (4, 3, 4), (2, 8, 10)]
    assert [layer.params for layer in cost.layers] == [224, 0, 148, 128]
    assert cost.params == 224 + 148 + 128 and cost.gflops == 2 * cost.macs / 1e9


def test_vgg16_classifier_at_224_is_15_47_gmacs():
    with torch.device("meta"):
        cost = compute_cost(vgg16_backbone(input_padding=1), (224, 224))
    assert cost.macs == 15_466_168_320  # torchvision's 15.47 "GFLOPS" for VGG16 counts MACs
    assert cost.params == 134_260_544


def test_fcn_costs_at_500_on_the_meta_device():
    costs = {}
    with torch.device("meta"):
        for arch in ("fcn32s", "fcn8s", "fcn16s-dilated", "fcn8s-dilated"):
            costs[arch] = compute_cost(fcnseg.build_model(arch), (500, 500))
    assert round(costs["fcn32s"].gflops, 1) == 362.7
    assert costs["fcn32s"].params == 136_152_917
    assert round(costs["fcn8s"].gflops, 1) == 363.1
    # rarefied fc6 runs on 4x (16s) and 16x (8s) as many positions: dilation costs compute
    assert round(costs["fcn16s-dilated"].gflops, 1) == 554.5
    assert round(costs["fcn8s-dilated"].gflops, 1) == 1348.9


def test_real_forward_leaves_the_mode_alone():
    model = fcnseg.build_model("fcn8s", 3, widths=(4, 8, 8, 8, 8, 8)).train()
    cost = compute_cost(model, (32, 40))
    assert model.training
    assert cost.layers[0].name == "backbone.conv1_1" and cost.layers[0].output_shape == (4, 230, 238)
    assert cost.layers[-1].name == "upscore8" and cost.params == sum(p.numel() for p in model.parameters())
