"""torch.hub entry points: every fcnseg net by its architecture's name, fresh or with published weights.

    net = torch.hub.load("path/to/fcnseg", "fcn8s", source="local", weights=None, num_classes=5)
    net = torch.hub.load("path/to/fcnseg", "fcn8s", source="local", weights="voc-fcn8s")

Names are the architectures of ``fcnseg.build_model`` with ``-`` written ``_`` (``fcn8s_atonce``,
``fcn32s_googlenet``, ``hed``, ``ssd300``). ``weights`` is None (fresh weights; the keyword
arguments reach ``build_model``), a published name (``fcnseg weights list``; downloaded and
converted once; ``progress=False``: silently) or a file fcnseg reads.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

dependencies = ["torch", "numpy", "PIL", "tqdm", "google.protobuf"]

_SOURCE = Path(__file__).resolve().parent / "src"
if _SOURCE.is_dir() and str(_SOURCE) not in sys.path:
    sys.path.insert(0, str(_SOURCE))  # a clone, not installed

import fcnseg  # noqa: E402
from fcnseg.models.registry import BUILDERS  # noqa: E402


def _entry(arch: str):
    def entry(weights: str | None = None, progress: bool = True, **options: Any):
        if weights is None:
            return fcnseg.build_model(arch, **options)
        if options:
            raise TypeError(f"{arch}: options {sorted(options)} apply to fresh weights (weights=None) only")
        return fcnseg.load(weights, arch=arch, progress=progress)

    entry.__name__ = arch.replace("-", "_")
    entry.__doc__ = (
        f"``{arch}``: fresh (``weights=None``, options to ``fcnseg.build_model``) or loaded weights."
    )
    return entry


for _arch in BUILDERS:
    globals()[_arch.replace("-", "_")] = _entry(_arch)
