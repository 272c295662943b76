"""CPU runtimes as backends: an FCN's trimmed graph compiled by onnxruntime or OpenVINO.

A runtime brings its own kernels (and int8 ones); fcnseg brings the work its fast path
skips. So for each input size a runtime gets the trimmed canvas graph of that size
(:class:`~fcnseg.accel.graphs.CanvasGraph`, exported to ONNX), and both savings add
up. Graphs are compiled per set of weights, precision and input size, and cached; the
first :data:`FIXED_SIZES` sizes a net meets get a graph of their own, later ones share
the padded net's graph of dynamic size (a data set of many sizes compiles once, not
per image).

Every compiled graph checks itself when built: it runs one random input of its size
beside ``model(x)`` (float32, bfloat16) or beside its own graph in torch (int8: the
fake quantizers of :mod:`fcnseg.accel.quantize` compute in float32 what the runtime
computes in integers). Where a runtime cannot run a net or precision exactly, or its
check fails, the net runs on torch's fast path and one logged line (logger
``fcnseg.accel``) says why.
"""

from __future__ import annotations

import functools
import logging
import weakref
from collections import OrderedDict
from collections.abc import Callable

import numpy as np
import torch
from torch import nn

from fcnseg.accel import SELF_CHECK_SIZE, _say, _weights_fingerprint, evaluating, for_inference, plain_reason
from fcnseg.accel.graphs import CanvasGraph, graph_reason, onnx_graph, padded_graph
from fcnseg.accel.quantize import Calibration
from fcnseg.errors import ConfigError, MissingExtraError

__all__ = [
    "BACKENDS",
    "FIXED_SIZES",
    "RUNTIMES",
    "TOLERANCE",
    "RuntimeFCN",
    "require",
    "runtime_forward",
    "runtime_precisions",
]

log = logging.getLogger("fcnseg.accel")

RUNTIMES = ("onnxruntime", "openvino")
BACKENDS = ("torch", *RUNTIMES)
"""What runs a net: torch (fcnseg's own fast path), or a runtime that compiles its graph."""

FIXED_SIZES = 4
"""Input sizes per net and precision that get a trimmed graph of their own."""

TOLERANCE = {"fp32": 1e-4, "bf16": 0.1, "int8": 0.05}
"""Largest difference from the reference a compiled graph may show in its check, relative to the
largest value: fp32 and bf16 against ``model(x)``; int8 against the same graph in torch, where a
value on a rounding boundary may land one step away."""


def require(backend: str):
    """The runtime's module, or an error naming the extra to install."""
    try:
        if backend == "onnxruntime":
            import onnx  # noqa: F401  (graphs are built as ONNX)
            import onnxruntime

            return onnxruntime
        if backend == "openvino":
            import onnx  # noqa: F401
            import openvino

            return openvino
    except ImportError as error:
        raise MissingExtraError(
            f"--backend {backend} needs the {backend} extra: pip install 'fcnseg[{backend}]'"
        ) from error
    raise ConfigError(f"backend must be one of {', '.join(BACKENDS)}; got {backend!r}")


@functools.cache
def _openvino_core():
    import openvino

    return openvino.Core()


def runtime_precisions(backend: str) -> tuple[str, ...]:
    """The precisions ``backend`` runs on this CPU: fp32 and int8 everywhere, bf16 with OpenVINO
    where the CPU has it (onnxruntime has no bfloat16 convolutions on the CPU)."""
    if backend == "openvino":
        capabilities = _openvino_core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")
        return ("fp32", "int8", *(("bf16",) if "BF16" in capabilities else ()))
    return ("fp32", "int8")


Engine = Callable[[np.ndarray], np.ndarray]
"""A compiled graph: (N, C, H, W) float32 -> (N, classes, H, W) float32."""


def _onnxruntime_engine(proto, precision: str, threads: int, dynamic: bool) -> Engine:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 3  # its notes on unused initializers are noise here
    session = ort.InferenceSession(proto.SerializeToString(), options, providers=["CPUExecutionProvider"])
    return lambda x: session.run(["scores"], {"image": x})[0]


def _openvino_engine(proto, precision: str, threads: int, dynamic: bool) -> Engine:
    """A graph of one input size is compiled per batch size (static shapes run fastest; the last
    two kept); the padded graph of ``dynamic`` size once, for every shape."""
    core = _openvino_core()
    model = core.read_model(proto.SerializeToString())
    config = {
        "INFERENCE_NUM_THREADS": threads,
        "PERFORMANCE_HINT": "LATENCY",
        "NUM_STREAMS": 1,
        # int8 graphs: the layers left in float (the head) stay float32
        "INFERENCE_PRECISION_HINT": "bf16" if precision == "bf16" else "f32",
    }
    compiled: OrderedDict[tuple[int, ...], object] = OrderedDict()
    if dynamic:
        request = core.compile_model(model, "CPU", config).create_infer_request()
        return lambda x: np.array(request.infer({"image": x})["scores"])

    def run(x: np.ndarray) -> np.ndarray:
        shape = tuple(x.shape)
        if shape not in compiled:
            fixed = model.clone()
            fixed.reshape({"image": list(shape)})
            compiled[shape] = core.compile_model(fixed, "CPU", config).create_infer_request()
            if len(compiled) > 2:
                compiled.popitem(last=False)
        compiled.move_to_end(shape)
        return np.array(compiled[shape].infer({"image": x})["scores"])

    return run


_ENGINES = {"onnxruntime": _onnxruntime_engine, "openvino": _openvino_engine}


class RuntimeFCN:
    """An FCN run by ``backend`` in ``precision`` (fp32, bf16, int8 with ``calibration``).

    (N, C, H, W) -> (N, num_classes, H, W) float32 scores. A graph is compiled for each
    new input size (the first :data:`FIXED_SIZES` trimmed, later ones the padded net of
    dynamic size) and checked (see the module's docstring); a size whose graph cannot
    be built or fails its check runs on torch's fast path (float32 for int8), and a line
    says why.
    """

    def __init__(
        self, model: nn.Module, backend: str, precision: str, calibration: Calibration | None
    ) -> None:
        self.net = weakref.ref(model)  # cached per net: no reference that keeps it alive
        self.backend, self.precision, self.calibration = backend, precision, calibration
        self.threads = torch.get_num_threads()
        self.graphs: dict[tuple[int, int], Engine | None] = {}
        self.padded: Engine | None = None
        self.padded_reason: str | None = None
        """Why the padded graph may not be used, once it was tried and failed: it is not tried again."""
        self.check_errors: dict[tuple[int, int], float] = {}
        """Per size: how far its graph strayed in its check (relative), for reports."""

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        size = (int(x.shape[-2]), int(x.shape[-1]))
        engine = self.graphs.get(size) if size in self.graphs else self._build(size)
        if engine is None:
            return for_inference(self.net(), torch.bfloat16 if self.precision == "bf16" else torch.float32)(x)
        return torch.from_numpy(engine(np.ascontiguousarray(x.detach().cpu().float().numpy())))

    def _build(self, size: tuple[int, int]) -> Engine | None:
        model = self.net()
        if len(self.graphs) < FIXED_SIZES:  # sizes tried, failed ones included: each is built once
            engine, reason = self._compiled(lambda: CanvasGraph(model, *size, self.calibration), size, False)
        else:
            if self.padded is None and self.padded_reason is None:  # tried once, for every later size
                self.padded, self.padded_reason = self._compiled(
                    lambda: padded_graph(model, self.calibration), SELF_CHECK_SIZE, True
                )
            engine, reason = self.padded, self.padded_reason
        if engine is None:
            _say(model, f"{self.backend} {self.precision} at {size[0]}x{size[1]} runs on torch: {reason}")
        self.graphs[size] = engine
        return engine

    def _compiled(
        self, graph: Callable[[], nn.Module], size: tuple[int, int], dynamic: bool
    ) -> tuple[Engine | None, str | None]:
        """The module that ``graph`` builds, compiled, and why it may not be used (None: it may):
        an exporter or a runtime refusing it is said, not raised."""
        model = self.net()
        x = self._probe(model, size)
        try:
            module = graph()
            with evaluating(model), torch.no_grad():
                expected = (module if self.precision == "int8" else model)(x)
                proto = onnx_graph(module, x, dynamic)
            engine = _ENGINES[self.backend](proto, self.precision, self.threads, dynamic)
            got = torch.from_numpy(engine(x.numpy()))
        except Exception as error:  # any refusal: torch stands in, and the reason is said
            return None, f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}"
        if got.shape != expected.shape:
            return None, f"its output has shape {tuple(got.shape)}, the plain net's {tuple(expected.shape)}"
        error = float((got - expected).abs().max() / expected.abs().max().clamp_min(1e-6))
        self.check_errors[size] = error
        if not error <= TOLERANCE[self.precision]:
            reference = "its graph in torch" if self.precision == "int8" else "the plain net"
            return None, f"it differs from {reference} by {error:.1e} (relative) on a {size} input"
        return engine, None

    def _probe(self, model: nn.Module, size: tuple[int, int]) -> torch.Tensor:
        """A seeded random input of ``size``: the images' range for int8 (as calibrated), so that its
        check sees the quantization steps real images see."""
        generator = torch.Generator().manual_seed(0)
        x = torch.rand(1, model.in_channels, *size, generator=generator)
        if self.calibration is not None:
            q = self.calibration.params("input")
            low, high = -q.zero_point * q.scale, (255 - q.zero_point) * q.scale
            return low + (high - low) * x
        return 2 * x - 1


_RUNTIMES: weakref.WeakKeyDictionary[nn.Module, dict[tuple, tuple[tuple, RuntimeFCN]]] = (
    weakref.WeakKeyDictionary()
)


def runtime_forward(
    model: nn.Module, backend: str, precision: str, calibration: Calibration | None = None
) -> Callable[[torch.Tensor], torch.Tensor]:
    """What runs ``model`` (eval mode, CPU) on ``backend`` in ``precision`` (``fp32``, ``bf16``,
    ``int8``): a :class:`RuntimeFCN`, cached per set of weights, precision and calibration, or
    torch's fast path where the runtime cannot stand in (a line says why).

    (N, C, H, W) -> (N, num_classes, H, W) float32 scores. An error names the extra to install
    when the runtime is missing, and asks for ``calibration`` with int8.
    """
    require(backend)
    if precision == "int8" and calibration is None:
        raise ConfigError("int8 needs calibration: a few images like the ones to segment (--calibration DIR)")
    param = next(model.parameters(), None)
    reason = plain_reason(model) or graph_reason(model)
    if reason is None and param is not None and param.device.type != "cpu":
        reason = f"the net is on {param.device}; runtimes run on the CPU"
    if reason is None and precision not in runtime_precisions(backend):
        reason = f"{backend} runs {' and '.join(runtime_precisions(backend))} on this CPU, not {precision}"
    if reason is not None:
        said = "fp32 " if precision == "int8" else ""
        _say(model, f"{backend} {precision}: the net runs {said}on torch: {reason}")
        return for_inference(model, torch.bfloat16 if precision == "bf16" else torch.float32)
    key = (backend, precision, calibration)
    fingerprint = _weights_fingerprint(model)
    cached = _RUNTIMES.setdefault(model, {}).get(key)
    if cached is not None and cached[0] == fingerprint:
        return cached[1]
    runtime = RuntimeFCN(model, backend, precision, calibration)
    _RUNTIMES[model][key] = (fingerprint, runtime)
    return runtime
