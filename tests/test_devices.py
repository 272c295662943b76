"""Devices by name, checked against the machine, and the default number of CPU threads.

The machine is made what each test needs (no accelerator, or one or two CUDA devices) by
replacing torch's answers, so that the tests say the same on any machine.
"""

import os
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from tiny_nets import tiny_fcn

import fcnseg
from fcnseg import devices, distributed
from fcnseg.cli import build_parser
from fcnseg.cli.options import set_threads
from fcnseg.devices import available_devices, default_threads, resolve_device
from fcnseg.errors import ConfigError


@pytest.fixture
def cpu_only(monkeypatch):
    """A machine with no accelerator."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    monkeypatch.setattr(torch.xpu, "is_available", lambda: False)


@pytest.fixture
def one_gpu(cpu_only, monkeypatch):
    """A machine with one CUDA device."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)


def test_cpu_and_auto_on_a_machine_without_accelerators(cpu_only):
    assert available_devices() == ["cpu"]
    assert resolve_device("cpu") == resolve_device("auto") == resolve_device(None) == torch.device("cpu")
    assert resolve_device(torch.device("cpu")) == torch.device("cpu")


@pytest.mark.parametrize(
    ("name", "problem"),
    [
        ("cuda", "torch finds no CUDA device"),
        ("cuda:1", "torch finds no CUDA device"),
        ("mps", "torch finds no MPS device"),
        ("xpu", "torch finds no XPU device"),
    ],
)
def test_an_accelerator_that_is_not_there_is_refused_naming_it_and_what_is(cpu_only, name, problem):
    with pytest.raises(ConfigError) as refused:
        resolve_device(name)
    assert str(refused.value) == f"device '{name}' is not available here: {problem}; available: cpu"


def test_a_device_index_past_the_last_is_refused(one_gpu):
    assert available_devices() == ["cpu", "cuda:0"]
    assert resolve_device("auto") == torch.device("cuda")  # no index: the current device
    assert resolve_device("cuda") == torch.device("cuda")
    assert resolve_device("cuda:0") == torch.device("cuda", 0)
    with pytest.raises(ConfigError) as refused:
        resolve_device("cuda:1")
    message = "device 'cuda:1' is not available here: torch finds 1 CUDA device; available: cpu, cuda:0"
    assert str(refused.value) == message


def test_a_device_type_without_a_runtime_and_a_string_that_is_no_device(cpu_only, monkeypatch):
    monkeypatch.delattr(torch, "hpu", raising=False)  # a plugin's device, not installed
    with pytest.raises(
        ConfigError, match=r"^device 'hpu' is not available here: this torch \(.*\) has no hpu"
    ):
        resolve_device("hpu")
    with pytest.raises(
        ConfigError, match=r"^'gpu' is not a device: name one as torch does \(auto, cpu, cuda"
    ):
        resolve_device("gpu")


def test_predict_and_training_refuse_a_missing_device(cpu_only):
    model, image = tiny_fcn(), np.zeros((8, 8, 3), np.uint8)
    with pytest.raises(ConfigError, match="device 'mps' is not available here"):
        fcnseg.predict(model, image, device="mps")
    assert fcnseg.predict(model, image, device="cpu").shape == (8, 8)
    with pytest.raises(ConfigError, match="device 'cuda:1' is not available here"):
        distributed.init_from_env("cuda:1")
    assert distributed.init_from_env("auto").device == torch.device("cpu")


def write_cpus(root, cores: list[tuple[int, int]]) -> None:
    """A sysfs ``cpu`` folder: logical CPU i sits on core ``cores[i]`` (package, core id)."""
    for cpu, (package, core) in enumerate(cores):
        topology = root / f"cpu{cpu}" / "topology"
        topology.mkdir(parents=True)
        (topology / "physical_package_id").write_text(f"{package}\n")
        (topology / "core_id").write_text(f"{core}\n")


def test_default_threads_are_omp_num_threads_when_set(monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert default_threads() == 3
    monkeypatch.setenv("OMP_NUM_THREADS", "4,2")  # the outer level's count
    assert default_threads() == 4


def test_default_threads_count_the_physical_cores_this_process_may_use(monkeypatch, tmp_path):
    monkeypatch.delenv("OMP_NUM_THREADS")
    write_cpus(tmp_path / "cpu", [(0, 0), (0, 0), (0, 1), (0, 1), (1, 0), (1, 0), (1, 1), (1, 1)])
    monkeypatch.setattr(devices, "_CPUS", tmp_path / "cpu")
    monkeypatch.setattr(devices, "_CGROUP", tmp_path / "cgroup")  # no quota
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(8)), raising=False)
    assert default_threads() == 4  # two packages of two cores, each core two hyper-threads
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2}, raising=False)
    assert default_threads() == 2  # taskset -c 0-2: cores (0, 0) and (0, 1)


@pytest.mark.parametrize(
    ("files", "cpus"),
    [
        ({"cpu.max": "150000 100000\n"}, 1),  # docker --cpus 1.5: one whole CPU
        ({"cpu.max": "300000 100000\n"}, 3),
        ({"cpu.max": "max 100000\n"}, 8),  # no quota
        ({"cpu/cpu.cfs_quota_us": "200000\n", "cpu/cpu.cfs_period_us": "100000\n"}, 2),  # cgroup v1
        ({"cpu/cpu.cfs_quota_us": "-1\n", "cpu/cpu.cfs_period_us": "100000\n"}, 8),
        ({}, 8),
    ],
)
def test_default_threads_keep_within_a_containers_cpu_quota(monkeypatch, tmp_path, files, cpus):
    monkeypatch.delenv("OMP_NUM_THREADS")
    write_cpus(tmp_path / "cpu", [(0, core) for core in range(8)])
    monkeypatch.setattr(devices, "_CPUS", tmp_path / "cpu")
    monkeypatch.setattr(devices, "_CGROUP", tmp_path / "cgroup")
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(8)), raising=False)
    for name, text in files.items():
        (tmp_path / "cgroup" / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "cgroup" / name).write_text(text)
    assert default_threads() == cpus


def test_set_threads_without_a_count_takes_the_default(monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    set_threads(None)
    assert torch.get_num_threads() == 3
    set_threads(2)
    assert torch.get_num_threads() == 2


COMPUTING = {"train", "predict", "evaluate", "serve", "demo", "export"}
"""The commands that run a net on numbers. info builds its net on the meta device, convert and weights
copy weights, data reads and writes files: none of them computes with torch."""


def options_by_command() -> dict[str, set[str]]:
    """Each sub-command (``convert caffe`` for nested ones) and its options."""
    found = {}

    def walk(parser, name):
        for action in parser._actions:
            if action.choices and hasattr(action, "_name_parser_map"):
                for child, sub in action.choices.items():
                    walk(sub, f"{name} {child}".strip())
        if name:
            found[name] = {flag for action in parser._actions for flag in action.option_strings}

    walk(build_parser(), "")
    return found


def test_every_command_that_computes_takes_threads_and_device():
    options = options_by_command()
    threads = {name for name, flags in options.items() if "--threads" in flags}
    assert threads == COMPUTING
    device = {name for name, flags in options.items() if "--device" in flags}
    assert device == COMPUTING - {"export"}  # an exported file runs wherever its runtime puts it
    parser = build_parser()
    assert parser.parse_args(["predict", "w.pt", "x.png", "--out", "o"]).threads is None  # default_threads
    assert parser.parse_args(["demo"]).threads == 1  # the demo trains against the clock


def run_fcnseg(*args: str, cwd) -> tuple[subprocess.CompletedProcess, float]:
    start = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "fcnseg", *args], cwd=cwd, capture_output=True, text=True, timeout=120
    )
    return done, time.perf_counter() - start


@pytest.mark.skipif(torch.backends.mps.is_available(), reason="needs a machine without MPS")
def test_train_on_a_missing_device_stops_at_once(tmp_path):
    done, seconds = run_fcnseg("train", "--device", "mps", "--max-steps", "1", "--out", "run", cwd=tmp_path)
    assert done.returncode == 2
    assert "argument --device: device 'mps' is not available here: torch finds no MPS device" in done.stderr
    assert seconds < 10 and not (tmp_path / "run").exists()


def test_predict_on_a_missing_device_stops_before_reading_the_weights(tmp_path):
    missing = f"cuda:{torch.cuda.device_count()}"  # one past the last, on any machine
    done, seconds = run_fcnseg(
        "predict", "missing.pt", "x.png", "--out", "o", "--device", missing, cwd=tmp_path
    )
    assert done.returncode == 2
    assert f"argument --device: device '{missing}' is not available here" in done.stderr
    assert "missing.pt" not in done.stderr  # the device is checked first
    assert seconds < 10 and not (tmp_path / "o").exists()
