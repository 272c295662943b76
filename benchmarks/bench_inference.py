"""Inference speed of fcnseg against torchfcn on the same VGG16 FCN weights: latency, throughput, FLOP/s.

Run from the repository root::

    python benchmarks/bench_inference.py              # 224/500 at batch 1 and 8, 1024 at batch 1 (~15 min)
    python benchmarks/bench_inference.py --quick      # 224 and 500, batch 1 only
    python benchmarks/bench_inference.py --extras     # also channels_last, torch.compile, onnxruntime, bf16
    python benchmarks/bench_inference.py --runtimes   # onnxruntime and OpenVINO as peers and as backends

``--runtimes`` times, at 500x500 (batch 1 and 8), the CPU runtimes a user deploys today
(onnxruntime and OpenVINO on the exported padded net, fp32, bf16 where the CPU has it, int8)
beside fcnseg's own fast path and fcnseg's runtime backends (the trimmed graph compiled by
each runtime), on the same weights and images, with the share of pixels that keep the fp32
label. int8 is calibrated on other synthetic images than the ones timed.

Every variant of one (size, batch) cell is timed in turn, round after round, so
that a busy machine slows all of them alike; the table gives the median and the
best round. The results go between the ``inference-speed`` markers of
benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import datetime
import gc
import os
import statistics
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _peers import torchfcn_twin  # noqa: E402
from _results import cpu_flags, machine, write_section  # noqa: E402

import fcnseg  # noqa: E402
from fcnseg.accel import for_inference  # noqa: E402
from fcnseg.data.synthetic import SyntheticSegmentation  # noqa: E402
from fcnseg.models.flops import compute_cost  # noqa: E402


def seeded_model(arch: str, seed: int = 0, widths: tuple[int, ...] | None = None) -> nn.Module:
    """A net (full width unless ``widths``) with random He-scaled weights: activations neither
    vanish nor explode."""
    torch.manual_seed(seed)
    model = fcnseg.build_model(arch, widths=widths).eval()
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.Conv2d):
                fan_in = module.in_channels // module.groups * module.kernel_size[0] * module.kernel_size[1]
                module.weight.normal_(0, (2 / fan_in) ** 0.5)
                if module.bias is not None:  # ResNet's convolutions have none
                    module.bias.normal_(0, 0.1)
            elif isinstance(module, nn.ConvTranspose2d) and module.weight.requires_grad:
                module.weight.add_(0.01 * torch.randn_like(module.weight))
            elif isinstance(module, nn.BatchNorm2d):
                module.running_mean.normal_(0, 0.1)
                module.running_var.uniform_(0.5, 1.5)
    return model


def best_seconds(fn: Callable[[], object], rounds: int = 5) -> float:
    fn()
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def machine_peak() -> dict[str, float]:
    """fp32 GFLOP/s of a large matrix product (MKL) and a large 3x3 convolution (oneDNN, prepacked)."""
    a, b = torch.randn(4096, 4096), torch.randn(4096, 4096)
    mm = 2 * 4096**3 / best_seconds(lambda: torch.mm(a, b)) / 1e9
    x = torch.randn(1, 256, 128, 128).contiguous(memory_format=torch.channels_last)
    w, bias = torch.randn(256, 256, 3, 3), torch.randn(256)
    packed = torch.ops.mkldnn._reorder_convolution_weight(w, [1, 1], [1, 1], [1, 1], 1, list(x.shape))

    def conv() -> torch.Tensor:
        return torch.ops.mkldnn._convolution_pointwise(
            x, packed, bias, [1, 1], [1, 1], [1, 1], 1, "none", [], ""
        )

    with torch.inference_mode():
        conv_rate = 2 * 256 * 256 * 9 * 128 * 128 / best_seconds(conv) / 1e9
    return {"mm": mm, "conv": conv_rate}


def relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    """max |a - b| / max |b|: the agreement measure used throughout."""
    return float((a.float() - b.float()).abs().max() / b.float().abs().max())


def onnx_session(model: nn.Module, x: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor]:
    """An onnxruntime session (2 threads, all graph optimisations) for one fixed input shape."""
    import onnxruntime as ort

    path = Path(tempfile.mkdtemp()) / "model.onnx"
    torch.onnx.export(model, (x,), str(path), dynamo=False, opset_version=17)
    options = ort.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()
    options.inter_op_num_threads = 1
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return lambda t: torch.from_numpy(session.run(None, {session.get_inputs()[0].name: t.numpy()})[0])


def time_cell(variants: dict[str, Callable[[torch.Tensor], torch.Tensor]], x: torch.Tensor, rounds: int):
    """Warm each variant up, then time them in turn for ``rounds`` rounds: {name: [seconds]}."""
    times: dict[str, list[float]] = {name: [] for name in variants}
    with torch.inference_mode():
        for fn in variants.values():
            fn(x)
        for _ in range(rounds):
            for name, fn in variants.items():
                start = time.perf_counter()
                fn(x)
                times[name].append(time.perf_counter() - start)
    return times


def scenes(count: int, size: int, seed: int) -> np.ndarray:
    """(count, size, size, 3) uint8 synthetic scenes (shapes on clutter), resized to ``size``."""
    data = SyntheticSegmentation(count, seed=seed, size_range=(size // 2, size))
    return np.stack(
        [np.asarray(Image.fromarray(data[i][0]).resize((size, size), Image.BILINEAR)) for i in range(count)]
    )


def peer_runtime(backend: str, module: nn.Module, precision: str, threads: int):
    """A runtime on the padded net exported as it is (what a user deploys today): a fixed-shape
    compiled graph, fp32, bf16 (OpenVINO's inference precision) or int8 (the same QDQ graph)."""
    from fcnseg.accel.graphs import onnx_graph
    from fcnseg.accel.runtimes import _ENGINES

    with torch.no_grad():
        proto = onnx_graph(module, torch.zeros(1, 3, 64, 64), dynamic_size=True)
    engine = _ENGINES[backend](proto, precision, threads, False)
    return lambda t: torch.from_numpy(engine(t.numpy()))


def runtime_variants(
    args: argparse.Namespace, calibration, batch: int
) -> dict[str, Callable[[torch.Tensor], torch.Tensor]]:
    """Every variant timed at ``batch``, on a fresh copy of the seeded net (fresh caches: the
    compiled graphs of another batch are let go, or 20 GB of them would not fit)."""
    from fcnseg.accel.graphs import padded_graph
    from fcnseg.accel.runtimes import runtime_forward, runtime_precisions
    from fcnseg.infer.predict import cpu_has_native_bf16, inference_forward

    model = seeded_model(args.arch)
    threads = torch.get_num_threads()
    bf16 = cpu_has_native_bf16()
    variants: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
        "torchfcn (eager)": torchfcn_twin(model, args.arch),
        "fcnseg fast fp32 (torch; = precision auto here)" if not bf16 else "fcnseg fast fp32 (torch)": (
            inference_forward(model, "fp32")
        ),
    }
    if bf16:
        variants["fcnseg fast bf16 (torch; = precision auto)"] = inference_forward(model, "bf16")
    elif args.with_bf16 and batch == 1:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # "no native bfloat16": known, measured here
            variants["fcnseg fast bf16 (torch, emulated)"] = inference_forward(model, "bf16")
    # batch 8: OpenVINO's rows only (onnxruntime's batch-1 rows tell the same story), for time and memory
    for backend in ("onnxruntime", "openvino") if batch == 1 else ("openvino",):
        peer = "OpenVINO" if backend == "openvino" else "onnxruntime"
        variants[f"{peer} fp32 (padded net)"] = peer_runtime(backend, model, "fp32", threads)
        if "bf16" in runtime_precisions(backend):
            variants[f"{peer} bf16 (padded net)"] = peer_runtime(backend, model, "bf16", threads)
        variants[f"{peer} int8 (padded net)"] = peer_runtime(
            backend, padded_graph(model, calibration), "int8", threads
        )
        for precision in runtime_precisions(backend):
            variants[f"fcnseg {backend} {precision} (trimmed)"] = runtime_forward(
                model, backend, precision, calibration if precision == "int8" else None
            )
    variants["reference"] = model  # the plain net: labels = fp32 is counted against it, not timed
    return variants


def runtimes_table(args: argparse.Namespace, publish: Callable[[str, list[str]], None]) -> None:
    """The ``--runtimes`` rows: peers and fcnseg's backends at 500x500, batch 1 and 8; ``publish``
    gets the table and notes after each batch (a long run keeps what it measured)."""
    from fcnseg.accel.quantize import calibrate
    from fcnseg.data.preprocess import preprocess, preprocessing_of
    from fcnseg.infer.predict import cpu_has_native_bf16

    size = 500
    calibration = calibrate(seeded_model(args.arch), list(scenes(args.calibration_images, size, seed=7)))
    images = scenes(8, size, seed=3)
    bf16 = cpu_has_native_bf16()
    notes = [
        f"int8: {calibration.images} synthetic scenes (other seeds than the timed ones) calibrate the "
        f"ranges; weights {calibration.weight_bits}-bit per output channel (7 on CPUs without VNNI, where "
        "x86 int8 kernels saturate 16-bit pair sums), activations uint8 per tensor",
        "bf16: "
        + (
            "native"
            if bf16
            else "not native on this CPU: OpenVINO has no bf16 here; fcnseg's bf16 is emulated"
            + (" (timed at batch 1)" if args.with_bf16 else " (left out)")
        ),
        *(
            ["batch 8: OpenVINO's rows and fcnseg's (onnxruntime's only at batch 1), 2 rounds"]
            if not args.quick
            else []
        ),
    ]
    lines = [
        "| size | batch | variant | median s | best s | img/s | x torchfcn (median) | labels = fp32 |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for batch in (1, 8) if not args.quick else (1,):
        start = time.perf_counter()
        variants = runtime_variants(args, calibration, batch)
        model = variants.pop("reference")
        x = preprocess(images[:batch], preprocessing_of(model))
        with torch.inference_mode():
            reference = model(x).argmax(1)
            agree = {
                name: float((fn(x).argmax(1) == reference).float().mean()) for name, fn in variants.items()
            }
        notes.append(
            f"batch {batch}: building every variant's graph and checking it, and the agreement pass: "
            f"{time.perf_counter() - start:.0f} s"
        )
        times = time_cell(variants, x, args.rounds if batch == 1 else max(2, args.rounds - 3))
        base = statistics.median(times["torchfcn (eager)"])
        for name, ts in times.items():
            med = statistics.median(ts)
            lines.append(
                f"| {size} | {batch} | {name} | {med:.3f} | {min(ts):.3f} | {batch / med:.2f} "
                f"| {base / med:.2f} | {100 * agree[name]:.2f}% |"
            )
            print(f"{size} b{batch} {name:48s} median {med:7.3f} best {min(ts):7.3f} x{base / med:.2f} "
                  f"labels {100 * agree[name]:.2f}%", flush=True)  # fmt: skip
        del variants, model
        gc.collect()
        publish("\n".join(lines), notes)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default="fcn8s", choices=["fcn32s", "fcn16s", "fcn8s", "fcn8s-atonce"])
    parser.add_argument("--sizes", default="224,500,1024", help="square input sizes, comma separated")
    parser.add_argument("--batch8-max", type=int, default=500, help="largest size also timed at batch 8")
    parser.add_argument("--rounds", type=int, default=5, help="timed rounds at batch 1 (batch 8: 3)")
    parser.add_argument("--quick", action="store_true", help="224 and 500 at batch 1, 3 rounds")
    parser.add_argument(
        "--extras", action="store_true", help="also channels_last, compile, onnxruntime, bf16"
    )
    parser.add_argument(
        "--runtimes", action="store_true", help="onnxruntime and OpenVINO, as peers and as fcnseg backends"
    )
    parser.add_argument("--calibration-images", type=int, default=8, help="--runtimes: int8 calibration")
    parser.add_argument(
        "--with-bf16", action="store_true", help="--runtimes: time fcnseg bf16 even where it is emulated"
    )
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--no-write", action="store_true", help="print only; leave RESULTS.md alone")
    parser.add_argument("--block", default="measured", help="name of the block of RESULTS.md to fill")
    args = parser.parse_args(argv)
    sizes = [int(s) for s in args.sizes.split(",")]
    if args.quick:
        sizes, args.batch8_max, args.rounds = [s for s in sizes if s <= 500], 0, 3
    torch.set_num_threads(args.threads)
    load_before = os.getloadavg()[0]
    if args.runtimes:
        command = "python benchmarks/bench_inference.py " + " ".join(sys.argv[1:] if argv is None else argv)

        def publish(table: str, notes: list[str]) -> None:
            section = "\n".join(
                [
                    "### Measured: CPU runtimes as peers and as backends, VGG16 FCN-8s, same random weights",
                    "",
                    f"- command: `{command.strip()}`",
                    f"- machine: {machine()}; CPU flags: {cpu_flags()}; torch {torch.__version__}, "
                    f"{args.threads} threads; {datetime.datetime.now().astimezone():%Y-%m-%d %H:%M %Z}",
                    f"- load average (1 min) at the start / now: {load_before:.1f} / {os.getloadavg()[0]:.1f} "
                    "(a shared machine: variants are timed in turn, round after round)",
                    "- input: synthetic scenes resized to 500x500; labels = fp32: pixels whose label equals "
                    "`model(x)`'s",
                    *(f"- {note}" for note in notes),
                    "",
                    table,
                ]
            )
            print(section, flush=True)
            if not args.no_write:
                write_section(f"inference-speed:{args.block}", section, inside="inference-speed")

        runtimes_table(args, publish)
        return

    model = seeded_model(args.arch)
    twin = torchfcn_twin(model, args.arch)
    fast = for_inference(model)  # what fcnseg.predict runs: the speed layer's twin
    peak = machine_peak()
    print(f"peak fp32: mm {peak['mm']:.0f} GFLOP/s, conv {peak['conv']:.0f} GFLOP/s", flush=True)

    rows = []
    notes = []
    for size in sizes:
        for batch in (1, 8) if size <= args.batch8_max else (1,):
            x = torch.randn(batch, 3, size, size) * 60
            with torch.inference_mode():
                reference = twin(x[:1])
                agreement = {
                    "fcnseg": relative_error(model(x[:1]), reference),
                    "fcnseg fast": relative_error(fast(x[:1]), reference),
                }
            variants: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
                "torchfcn": twin,
                "fcnseg": model,
                "fcnseg fast": fast,
            }
            if args.extras and batch == 1 and size == 500:
                twin_cl = torchfcn_twin(model, args.arch).to(memory_format=torch.channels_last)
                variants["torchfcn channels_last"] = lambda t, m=twin_cl: m(
                    t.contiguous(memory_format=torch.channels_last)
                )
                start = time.perf_counter()
                compiled = torch.compile(model)
                with torch.inference_mode():
                    agreement["fcnseg torch.compile"] = relative_error(compiled(x), reference)
                notes.append(f"torch.compile: first call (compilation) {time.perf_counter() - start:.0f} s")
                variants["fcnseg torch.compile"] = compiled
                ort_run = onnx_session(model, x)
                agreement["fcnseg onnxruntime"] = relative_error(ort_run(x), reference)
                variants["fcnseg onnxruntime"] = ort_run
            if args.extras and batch == 1 and size == min(sizes):
                fast_bf16 = for_inference(model, torch.bfloat16)
                with torch.inference_mode():
                    out_bf16 = fast_bf16(x)
                labels = (out_bf16.argmax(1) == reference.argmax(1)).float().mean().item()
                agreement["fcnseg fast bf16"] = relative_error(out_bf16, reference)
                notes.append(f"bf16 at {size}: {100 * labels:.2f}% of pixels keep the fp32 label")
                variants["fcnseg fast bf16"] = fast_bf16
            flops = {
                "torchfcn": 2 * compute_cost(twin, (size, size)).macs,
                "fcnseg fast": 2 * compute_cost(fast, (size, size)).macs,
            }
            times = time_cell(variants, x, args.rounds if batch == 1 else max(2, args.rounds - 2))
            base = statistics.median(times["torchfcn"])
            base_best = min(times["torchfcn"])
            for name, ts in times.items():
                med = statistics.median(ts)
                work = flops["fcnseg fast" if "fast" in name else "torchfcn"] * batch
                row = {
                    "size": size,
                    "batch": batch,
                    "variant": name,
                    "median": med,
                    "best": min(ts),
                    "img_s": batch / med,
                    "speedup": base / med,
                    "speedup_best": base_best / min(ts),
                    "gflop": work / batch / 1e9,
                    "rate": work / min(ts) / 1e9,
                    "err": agreement.get(name, 0.0 if name.startswith("torchfcn") else float("nan")),
                }
                rows.append(row)
                print(
                    f"{size:5d} b{batch} {name:24s} median {med:7.3f} s best {min(ts):7.3f} s "
                    f"x{row['speedup']:.2f} (best x{row['speedup_best']:.2f}) "
                    f"{row['gflop']:.0f} GFLOP/img {row['rate']:.0f} GFLOP/s err {row['err']:.1e}",
                    flush=True,
                )
    load_after = os.getloadavg()[0]
    again = machine_peak()  # a shared machine: keep the better of two measurements
    peak = {kind: max(peak[kind], again[kind]) for kind in peak}
    command = "python benchmarks/bench_inference.py " + " ".join(sys.argv[1:] if argv is None else argv)
    section = render(rows, peak, notes, command.strip(), (load_before, load_after), args.threads)
    print(section)
    if not args.no_write:
        write_section(f"inference-speed:{args.block}", section, inside="inference-speed")


def render(rows, peak, notes, command, load, threads) -> str:
    """The markdown section: setup, then one row per (size, batch, variant)."""
    lines = [
        "### Measured: fcnseg vs torchfcn, VGG16 FCN, same random weights",
        "",
        f"- command: `{command}`",
        f"- machine: {machine()}; torch {torch.__version__}, {threads} threads; "
        f"{datetime.datetime.now().astimezone():%Y-%m-%d %H:%M %Z}",
        f"- load average (1 min) before/after: {load[0]:.1f} / {load[1]:.1f} "
        "(the machine is shared: variants are timed in turn so that load hits them alike)",
        f"- measured fp32 peak: torch.mm 4096^2 {peak['mm']:.0f} GFLOP/s, "
        f"3x3 conv 256ch 128^2 (oneDNN) {peak['conv']:.0f} GFLOP/s",
        "- FLOPs: 2 x multiply-adds of every convolution and transposed convolution, counted with hooks; "
        "for `fcnseg fast` the work it really does (trimmed canvas)",
        "- err: max |out - torchfcn| / max |torchfcn|",
        *(f"- {note}" for note in notes),
        "",
        "| size | batch | variant | median s | best s | img/s | x torchfcn (median) | x torchfcn (best) "
        "| GFLOP/img | GFLOP/s (best) | % conv peak | err |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['size']} | {r['batch']} | {r['variant']} | {r['median']:.3f} | {r['best']:.3f} "
            f"| {r['img_s']:.2f} | {r['speedup']:.2f} | {r['speedup_best']:.2f} | {r['gflop']:.0f} "
            f"| {r['rate']:.0f} | {100 * r['rate'] / peak['conv']:.0f}% | {r['err']:.1e} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
