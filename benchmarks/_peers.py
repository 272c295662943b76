"""Import torchfcn's model files for comparison, without its download and torchvision dependencies.

torchfcn (PyPI) imports the Chainer-based ``fcn`` package only to download
weights, and ``torchvision`` only to build a classifier VGG16; the PyPI
torchvision wheel is a CUDA build that fails with CPU torch. Stub modules in
``sys.modules`` stand in for both, so the benchmark compares against torchfcn's
own FCN classes without making either a dependency of fcnseg.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
import types

from torch import nn


def _unavailable(*_args: object, **_kwargs: object) -> None:
    raise RuntimeError("stubbed for benchmarking: downloads and torchvision models are unavailable")


def _stub(name: str, **attrs: object) -> types.ModuleType:
    module = types.ModuleType(name)
    module.__dict__.update(attrs)
    sys.modules[name] = module
    return module


def torchfcn_models() -> types.ModuleType:
    """``torchfcn.models`` (FCN32s, FCN16s, FCN8s, FCN8sAtOnce), loaded with stubbed peers.

    The package's ``__init__`` also pulls in its trainer and data sets (scikit-image,
    pytz); an empty package shell pointing at the same files skips them.
    """
    if "torchfcn.models" in sys.modules:
        return sys.modules["torchfcn.models"]
    spec = importlib.util.find_spec("torchfcn")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("torchfcn is not installed: pip install --no-deps torchfcn")
    if "fcn" not in sys.modules:
        data = _stub("fcn.data", cached_download=_unavailable)
        _stub("fcn", data=data)
    if "torchvision" not in sys.modules and importlib.util.find_spec("torchvision") is None:
        models = _stub("torchvision.models", vgg16=_unavailable)
        _stub("torchvision", models=models)
    package = _stub("torchfcn")
    package.__path__ = list(spec.submodule_search_locations)
    return importlib.import_module("torchfcn.models")


TORCHFCN_CLASSES = {"fcn32s": "FCN32s", "fcn16s": "FCN16s", "fcn8s": "FCN8s", "fcn8s-atonce": "FCN8sAtOnce"}


def torchfcn_twin(model: nn.Module, arch: str) -> nn.Module:
    """torchfcn's net for ``arch`` holding the weights of fcnseg's ``model`` (same Caffe layer names)."""
    net = getattr(torchfcn_models(), TORCHFCN_CLASSES[arch])(n_class=model.num_classes)
    state = {
        name.removeprefix("backbone."): value
        for name, value in model.state_dict().items()
        if not name.startswith("scale_")  # torchfcn multiplies by the at-once constants inline
    }
    net.load_state_dict(state, strict=True)
    return net.eval()
