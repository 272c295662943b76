"""Where fcnseg computes: the torch device a user names, checked against what this machine has, and
the number of CPU threads torch runs on when none is given.

The commands, the trainer (through :func:`fcnseg.distributed.init_from_env`) and ``fcnseg.predict``
all resolve a device here, so that a device this machine lacks stops every one of them at once,
with the same message, before any data or weights are read.
"""

from __future__ import annotations

import functools
import math
import os
from pathlib import Path
from types import ModuleType

import torch

from fcnseg.errors import ConfigError

__all__ = ["ACCELERATORS", "AUTO", "available_devices", "cpu_flags", "default_threads", "resolve_device"]

AUTO = "auto"
"""The device that means CUDA when it is available, else the CPU."""

ACCELERATORS = ("cuda", "xpu", "mps")
"""The accelerators :func:`available_devices` looks for; another type torch knows (a plugin's) is
checked by its own ``torch.<type>.is_available()`` when named."""

_EXAMPLES = "auto, cpu, cuda, cuda:1, mps or xpu"

_CGROUP = Path("/sys/fs/cgroup")
"""Where a container sees its own cgroup (its namespace's root): v2's ``cpu.max``, v1's ``cpu/``."""

_CPUS = Path("/sys/devices/system/cpu")
"""Linux's description of the logical CPUs: ``cpuN/topology`` says which core each sits on."""


def _runtime(kind: str) -> ModuleType | None:
    """The module that says whether devices of type ``kind`` are there (``is_available``), and how
    many (``device_count``); None where this torch has no runtime for them."""
    module = torch.backends.mps if kind == "mps" else getattr(torch, kind, None)
    return module if callable(getattr(module, "is_available", None)) else None


def _count(kind: str) -> int:
    """How many devices of type ``kind`` this process can use (0: none, or no runtime for them)."""
    runtime = _runtime(kind)
    if runtime is None or not runtime.is_available():
        return 0
    if kind == "mps":  # one GPU, which torch.backends.mps cannot count
        return 1
    return int(runtime.device_count()) if callable(getattr(runtime, "device_count", None)) else 1


def available_devices() -> list[str]:
    """The devices this process can use, as one names them: ``["cpu", "cuda:0", "cuda:1"]``, ``mps``."""
    found = ["cpu"]
    for kind in ACCELERATORS:
        count = _count(kind)
        found += [kind] if kind == "mps" and count else [f"{kind}:{i}" for i in range(count)]
    return found


def resolve_device(device: str | torch.device | None = AUTO) -> torch.device:
    """The torch device ``device`` names, once it is known to be there.

    ``"auto"`` (or None) is CUDA when available, else the CPU: MPS and XPU are used when named.
    Any other torch device string (``cpu``, ``cuda``, ``cuda:1``, ``mps``, ``xpu``...) is returned
    as named (a bare ``cuda`` keeps no index: the current device, or under ``torchrun`` each
    process's own), or raises :class:`~fcnseg.errors.ConfigError` naming it and the devices
    this machine has.
    """
    if device is None or device == AUTO:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        where = torch.device(device)
    except (RuntimeError, TypeError):  # torch's message lists its thirty-odd device types
        raise ConfigError(f"{device!r} is not a device: name one as torch does ({_EXAMPLES})") from None
    if where.type == "cpu":
        return where
    count = _count(where.type)
    if count > (where.index or 0):  # cuda: one at least; cuda:1: two
        return where
    if _runtime(where.type) is None:
        problem = f"this torch ({torch.__version__}) has no {where.type} runtime"
    else:
        problem = f"torch finds {count or 'no'} {where.type.upper()} device{'s' if count > 1 else ''}"
    available = ", ".join(available_devices())
    raise ConfigError(f"device {str(device)!r} is not available here: {problem}; available: {available}")


def default_threads() -> int:
    """The CPU threads torch runs on unless told otherwise (``--threads``): ``OMP_NUM_THREADS``
    when set, else the physical cores this process may run on (its CPU affinity, as ``taskset``
    and cpusets make it), and no more than a container's CPU quota (``docker --cpus``) allows.

    More threads than the cores a process gets (one per hyper-thread, or one per core of the host in
    a container granted two) make torch's threads wait for one another; torch's own default sees
    the affinity but not the quota. Cores that other processes keep busy are not counted out: there
    ``--threads 1`` can be many times faster.
    """
    told = os.environ.get("OMP_NUM_THREADS", "").split(",")[0].strip()  # "4,2": nested levels' counts
    if told.isdigit() and int(told) > 0:
        return int(told)
    cpus = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else range(os.cpu_count() or 1)
    cores = _physical_cores(cpus) or len(cpus)
    quota = _cgroup_cpus()
    return max(1, min(cores, quota) if quota else cores)


def _physical_cores(cpus) -> int | None:
    """How many physical cores the logical CPUs ``cpus`` sit on (Linux's sysfs topology); None where
    it is not readable."""
    cores = set()
    for cpu in cpus:
        topology = _CPUS / f"cpu{cpu}" / "topology"
        try:
            cores.add(((topology / "physical_package_id").read_text(), (topology / "core_id").read_text()))
        except OSError:
            return None
    return len(cores)


def _cgroup_cpus() -> int | None:
    """The whole CPUs a cgroup's CPU quota grants, as a container sees it (v2 ``cpu.max``, v1
    ``cpu.cfs_quota_us`` over ``cpu.cfs_period_us``), rounded down so as not to oversubscribe;
    None without a quota."""
    try:
        if (_CGROUP / "cpu.max").is_file():
            quota, period = (_CGROUP / "cpu.max").read_text().split()[:2]
        else:
            quota = (_CGROUP / "cpu" / "cpu.cfs_quota_us").read_text().strip()
            period = (_CGROUP / "cpu" / "cpu.cfs_period_us").read_text().strip()
    except (OSError, ValueError):
        return None
    if quota in ("max", "-1"):
        return None
    return max(1, math.floor(int(quota) / int(period)))


@functools.cache
def cpu_flags() -> frozenset[str]:
    """The CPU's instruction-set flags, from /proc/cpuinfo (empty where there is none: macOS,
    Windows), which say whether bfloat16 and int8 run natively."""
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("flags"):
                    return frozenset(line.partition(":")[2].split())
    except OSError:
        pass
    return frozenset()
