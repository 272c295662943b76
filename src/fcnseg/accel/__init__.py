"""The speed layer: exact faster ways to run fcnseg's plain nets, beside them.

Every net's ``forward`` is the original net, layer by layer. This package runs the
same nets faster and exactly, as wrappers that read the plain net's parameters:

- :func:`for_training`: the trunk on the images' reach, skipping what the constant
  input padding makes of it, and the FCN head computed for what the crops keep (same
  scores and gradients; :mod:`fcnseg.accel.training`);
- :func:`for_inference`: an inference twin on a trimmed canvas with fused kernels,
  float32 or bfloat16 (:mod:`fcnseg.accel.inference`);
- for both, a detector of narrow layers gets channels-last inputs on the CPU
  (:mod:`fcnseg.accel.layout`);
- CPU runtimes as backends: the trimmed graph of one input size exported to ONNX
  (:mod:`fcnseg.accel.graphs`) and compiled by onnxruntime or OpenVINO, in float32 or in
  int8 calibrated on a few images (:mod:`fcnseg.accel.quantize`, :mod:`fcnseg.accel.runtimes`).

fcnseg's tools (the trainer, ``predict``, ``evaluate``, ``serve``) use them by default;
``model(x)`` never does. A wrapper is used only for a net it knows exactly (one of
fcnseg's own classes, no hooks registered) and after it has checked itself against
``model(x)`` on a small input; otherwise the net runs as written, and one logged line
says why (logger ``fcnseg.accel``). Never a silent divergence.
"""

from __future__ import annotations

import logging
import weakref
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch
from torch import nn

from fcnseg.accel.layout import ChannelsLastInput, narrow
from fcnseg.models.fcn import FCN
from fcnseg.models.fusion import LateFusionFCN
from fcnseg.models.heads import MultiHeadFCN
from fcnseg.models.sides import FSDS, HED
from fcnseg.models.ssd import SSD
from fcnseg.models.tvfcn import TorchvisionFCN

__all__ = ["Shared", "evaluating", "for_inference", "for_training", "plain_reason", "self_check"]

log = logging.getLogger(__name__)

_FCNS = (FCN, MultiHeadFCN)
_SIDES = (HED, FSDS)

SELF_CHECK_SIZE = (13, 17)
"""Height and width of the input a wrapper checks itself on: small, odd, and not square."""

TOLERANCE = {torch.float32: 1e-4, torch.bfloat16: 0.1}
"""Largest difference from ``model(x)`` a wrapper may show in its self-check, relative to the
largest value, by the dtype its trunk computes in: float rounding, not a wrong net."""


def plain_reason(model: nn.Module) -> str | None:
    """Why no wrapper may stand in for ``model``; None when one may.

    A wrapper knows fcnseg's own nets exactly, not a subclass (whose ``forward`` may differ)
    nor a net of the user's, and not a net with hooks registered (they would not see the
    wrapper's computation).
    """
    if type(model) is TorchvisionFCN:
        return "torchvision's FCN has no faster exact path: its residual blocks and its head run as written"
    known = (*_FCNS, *_SIDES, LateFusionFCN, SSD)
    if type(model) not in known:
        return (
            f"a {type(model).__name__} is not one of fcnseg's own nets "
            f"({', '.join(k.__name__ for k in known)}): its forward may differ"
        )
    hooked = [
        name or type(model).__name__
        for name, module in model.named_modules()
        if module._forward_hooks or module._forward_pre_hooks or module._backward_hooks
    ]
    if hooked:
        return f"hooks are registered on {', '.join(hooked[:3])}{' ...' if len(hooked) > 3 else ''}"
    if nn.modules.module._global_forward_hooks or nn.modules.module._global_forward_pre_hooks:
        return "global forward hooks are registered"
    return None


def for_training(model: nn.Module) -> nn.Module:
    """What the trainer runs for ``model``: a wrapper on the images' reach that shares its parameters
    (:mod:`fcnseg.accel.training`), or ``model`` itself where none is exact (a line says why).

    (N, C, H, W) -> what ``model(x)`` gives, gradients included.
    """
    from fcnseg.accel.training import TrimmedFCN, TrimmedSides

    reason = plain_reason(model)
    if reason is None and isinstance(model, SSD) and not _channels_last_pays(model):
        return model  # nothing to gain, nothing to say
    if reason is None:
        if isinstance(model, SSD):
            wrapper: nn.Module = ChannelsLastInput(model)
        elif isinstance(model, LateFusionFCN):
            wrapper = Streams(model, [TrimmedFCN(s) for s in model.streams.values()])
        else:
            wrapper = TrimmedFCN(model) if isinstance(model, _FCNS) else TrimmedSides(model)  # type: ignore[arg-type]
        reason = self_check(model, wrapper, torch.float32)
        if reason is None:
            return wrapper
    _say(model, f"training runs {type(model).__name__} as written: {reason}")
    return model


_TWINS: weakref.WeakKeyDictionary[nn.Module, dict[torch.dtype, tuple[tuple, nn.Module]]] = (
    weakref.WeakKeyDictionary()
)
"""Per net: its inference twin per dtype, with the fingerprint of the weights it was built from."""


def for_inference(
    model: nn.Module, dtype: torch.dtype = torch.float32
) -> Callable[[torch.Tensor], torch.Tensor]:
    """What inference runs for ``model`` (eval mode): on the CPU its twin on a trimmed canvas
    (:class:`~fcnseg.accel.inference.FastFCN`; HED and FSDS on the images' reach), built once per
    set of weights and ``dtype``, or ``model`` itself where no twin is exact (a line says why);
    elsewhere (CUDA) ``model`` itself. A ``model`` run as it is runs under autocast to ``dtype``.
    (N, C, H, W) -> float32 scores.
    """
    param = next(model.parameters(), None)
    if param is not None and param.device.type != "cpu":
        return _in_dtype(model, dtype)  # the twins' kernels are the CPU's
    reason = plain_reason(model)
    if reason is None and isinstance(model, SSD) and not _channels_last_pays(model):
        return _in_dtype(model, dtype)
    if reason is None:
        fingerprint = _weights_fingerprint(model)
        twins = _TWINS.setdefault(model, {})
        cached = twins.get(dtype)
        if cached is not None and cached[0] == fingerprint:
            return cached[1]
        twin = _inference_twin(model, dtype)
        reason = self_check(model, twin, dtype)
        if reason is None:
            run = _in_dtype(twin, dtype) if isinstance(model, (*_SIDES, SSD)) else twin
            twins[dtype] = (fingerprint, run)
            return run
    _say(model, f"inference runs {type(model).__name__} as written: {reason}")
    return _in_dtype(model, dtype)


def _inference_twin(model: nn.Module, dtype: torch.dtype) -> nn.Module:
    """FCNs: a twin on the trimmed canvas in ``dtype``. HED and FSDS end at full resolution, where
    a canvas saves nothing: the training wrapper on the images' reach (run under autocast)."""
    from fcnseg.accel.inference import FastFCN
    from fcnseg.accel.training import TrimmedSides

    if isinstance(model, LateFusionFCN):
        return Streams(model, [FastFCN(s, dtype) for s in model.streams.values()])
    if isinstance(model, _SIDES):
        return TrimmedSides(model)
    if isinstance(model, SSD):
        return ChannelsLastInput(model)
    return FastFCN(model, dtype)  # type: ignore[arg-type]


def _channels_last_pays(model: nn.Module) -> bool:
    param = next(model.parameters(), None)
    return (param is None or param.device.type == "cpu") and narrow(model)


def _in_dtype(net: nn.Module, dtype: torch.dtype) -> Callable[[torch.Tensor], torch.Tensor]:
    """``net`` itself for float32; for another dtype, ``net`` under autocast to it, float32 out."""
    if dtype == torch.float32:
        return net

    def forward(x: torch.Tensor) -> torch.Tensor:
        with torch.autocast(x.device.type, dtype=dtype):
            return net(x).float()

    return forward


class Streams(nn.Module):
    """A late fusion's streams, each by its own wrapper, fused as the net fuses them."""

    def __init__(self, model: LateFusionFCN, wrappers: list[nn.Module]) -> None:
        super().__init__()
        self.fusion = Shared(model)
        self.wrappers = nn.ModuleList(wrappers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        model = self.fusion.module
        return model.fuse([w(part) for w, part in zip(self.wrappers, model.parts(x), strict=True)])


class Shared:
    """A net that a wrapper reads without owning it: not a submodule, so that moving the wrapper or
    switching its mode leaves the net alone."""

    def __init__(self, module: nn.Module) -> None:
        self.module = module


def self_check(model: nn.Module, wrapper: nn.Module, dtype: torch.dtype) -> str | None:
    """Why ``wrapper`` may not stand in for ``model``; None when it agrees with the plain net.

    Both run (eval mode, no gradients) on one random input of :data:`SELF_CHECK_SIZE` (a
    detector's: its design size). A wrapper with a trunk of its own is compared on what each
    trunk taps and outputs, and on the heads' outputs from them (the score layers of a fresh net
    are zeros: the trunks are what shows); one that runs the net's own forward, on the outputs.
    All must agree within :data:`TOLERANCE`.
    """
    param = next(model.parameters())
    tolerance = TOLERANCE.get(dtype, TOLERANCE[torch.bfloat16])
    size = (model.prior_spec.image_size,) * 2 if isinstance(model, SSD) else SELF_CHECK_SIZE
    x = torch.randn(1, model.in_channels, *size, generator=torch.Generator().manual_seed(0)).to(param)
    with evaluating(model, wrapper), torch.no_grad():
        pairs = _compared(model, wrapper, x)
    for what, got, expected in pairs:
        if got.shape != expected.shape:
            return f"{what} has shape {tuple(got.shape)}, the plain net's {tuple(expected.shape)}"
        error = float((got.float() - expected.float()).abs().max() / expected.abs().max().clamp_min(1e-6))
        if not error <= tolerance:
            return f"{what} differs from the plain net's by {error:.1e} (relative) on a {size} input"
    return None


def _compared(
    model: nn.Module, wrapper: nn.Module, x: torch.Tensor
) -> list[tuple[str, torch.Tensor, torch.Tensor]]:
    """(what, the wrapper's, the plain net's) for :func:`self_check`."""
    if isinstance(wrapper, ChannelsLastInput):
        return [("an output", got, expected) for got, expected in zip(wrapper(x), model(x), strict=True)]
    if isinstance(wrapper, Streams):
        return [
            pair
            for part, stream, inputs in zip(
                wrapper.wrappers, model.streams.values(), model.parts(x), strict=True
            )
            for pair in _compared(stream, part, inputs)
        ]
    taps, top = wrapper.trunk(x)
    expected_taps, expected_top = model.backbone.features(x, wrapper.tap_names)
    return [
        ("the output", wrapper.head(taps, top, x), model.head(expected_taps, expected_top, x)),
        ("the trunk's output", top.whole(), expected_top),
        *((f"tap {name}", taps[name].whole(), expected_taps[name]) for name in wrapper.tap_names),
    ]


@contextmanager
def evaluating(*modules: nn.Module) -> Iterator[None]:
    """Eval mode for the duration, then each module's own mode back."""
    modes = [[(m, m.training) for m in module.modules()] for module in modules]
    for module in modules:
        module.eval()
    try:
        yield
    finally:
        for saved in modes:
            for m, training in saved:
                m.training = training


def _weights_fingerprint(model: nn.Module) -> tuple:
    """Changes whenever a weight is replaced or updated in place, so that a stale twin is never used."""
    return tuple((t.data_ptr(), t._version) for t in [*model.parameters(), *model.buffers()])


_SAID: weakref.WeakKeyDictionary[nn.Module, set[str]] = weakref.WeakKeyDictionary()


def _say(model: nn.Module, message: str) -> None:
    """Log ``message`` once per net."""
    said = _SAID.setdefault(model, set())
    if message not in said:
        said.add(message)
        log.warning("fcnseg.accel: %s", message)
