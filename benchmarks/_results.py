"""What every benchmark script shares: the machine's description and its own section of RESULTS.md."""

from __future__ import annotations

import os
import platform
import subprocess
from pathlib import Path

RESULTS = Path(__file__).resolve().with_name("RESULTS.md")
HEADER = (
    "# Benchmarks\n\nMeasured results of the scripts in `benchmarks/`; each script owns one marked section.\n"
)


def machine() -> str:
    """CPU model, instruction set and core count, e.g. 'AMD EPYC (x86_64, avx512, avx512_bf16), 2 cores'."""
    try:
        lscpu = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        lscpu = ""
    model = next(
        (ln.split(":", 1)[1].strip() for ln in lscpu.splitlines() if ln.startswith("Model name")),
        platform.processor() or "?",
    )
    flags = next((ln for ln in lscpu.splitlines() if ln.startswith("Flags")), "")
    isa = "avx512" if "avx512f" in flags else "avx2" if "avx2" in flags else "?"
    if "avx512_bf16" in flags.split():
        isa += ", avx512_bf16"
    return f"{model} ({platform.machine()}, {isa}), {os.cpu_count()} cores"


def cpu_flags() -> str:
    """The CPU flags that matter for bfloat16 and int8, as lscpu lists them."""
    try:
        lscpu = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return "?"
    flags = next((ln.split(":", 1)[1].split() for ln in lscpu.splitlines() if ln.startswith("Flags")), [])
    wanted = [
        f
        for f in flags
        if f
        in ("avx2", "avx512f", "avx512_bf16", "avx512_vnni", "avx_vnni", "amx_bf16", "amx_int8", "amx_tile")
    ]
    return " ".join(wanted) or "none of avx2, avx512f, avx512_bf16, VNNI, AMX"


def write_section(marker: str, text: str, *, inside: str | None = None, path: Path = RESULTS) -> None:
    """Replace the block between ``<!-- marker -->`` and ``<!-- /marker -->`` of RESULTS.md with ``text``.

    Everything outside the block is left alone, so hand-written notes and the other
    scripts' sections survive a re-run. A missing block is appended at the end of the
    file, or at the end of the ``inside`` section when that one exists.
    """
    begin, end = f"<!-- {marker} -->", f"<!-- /{marker} -->"
    block = f"{begin}\n{text.strip()}\n{end}"
    current = path.read_text() if path.is_file() else HEADER
    if begin in current and end in current:
        head, rest = current.split(begin, 1)
        current = head + block + rest.split(end, 1)[1]
    elif inside and f"<!-- /{inside} -->" in current:
        head, rest = current.split(f"<!-- /{inside} -->", 1)
        current = head.rstrip("\n") + f"\n\n{block}\n<!-- /{inside} -->" + rest
    elif inside:
        current = current.rstrip("\n") + f"\n\n<!-- {inside} -->\n{block}\n<!-- /{inside} -->\n"
    else:
        current = current.rstrip("\n") + f"\n\n{block}\n"
    path.write_text(current.rstrip("\n") + "\n")
