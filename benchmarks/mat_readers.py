"""Damaged MAT-files read by ``scipy.io.loadmat`` and by fcnseg's reader, side by side.

Why fcnseg keeps its own MAT-v5 reader (``fcnseg.data.matlab``) though scipy is at hand: the same
mutants that ``tests/test_fuzz.py`` feeds to fcnseg's reader (four files, little- and big-endian,
compressed or not; 150 mutants each, seed 8) go to ``scipy.io.loadmat`` too, each file in a worker
process, so that a crash ends the worker, not this script. A reader must load a file or refuse it
with an exception; a crash (the process killed by a signal) would take a training run with it.
Replaces the section ``mat-readers`` of ``benchmarks/RESULTS.md``.

    python benchmarks/mat_readers.py            # about a minute
    python benchmarks/mat_readers.py --no-write
"""

from __future__ import annotations

import argparse
import datetime
import importlib.metadata
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
from _results import machine, write_section

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from fuzzing import mutants  # noqa: E402
from mat_writer import every_kind, write_mat  # noqa: E402

from fcnseg.data.matlab import load_mat  # noqa: E402
from fcnseg.errors import FcnsegError  # noqa: E402

WORKER = """
import sys
import scipy.io
for path in sys.argv[1:]:
    try:
        scipy.io.loadmat(path)
        outcome = "loaded"
    except Exception as error:
        outcome = "refused"
    print(path, outcome, flush=True)
"""


def good_file(path: Path, compress: bool, endian: str) -> bytes:
    """The file ``tests/test_fuzz.py::test_mat_reader`` mutates."""
    ids = np.random.default_rng(1).integers(0, 5, (12, 16), dtype=np.uint8)  # the test's IDS
    write_mat(path, every_kind(ids[:5, :7]), compress=compress, endian=endian)
    return path.read_bytes()


def scipy_outcomes(paths: list[Path]) -> dict[Path, str]:
    """Each path's outcome under ``scipy.io.loadmat``: loaded, refused, or crashed (with the signal);
    after a crash the worker starts again at the next file."""
    outcomes: dict[Path, str] = {}
    while len(outcomes) < len(paths):
        rest = paths[len(outcomes) :]
        done = subprocess.run(
            [sys.executable, "-c", WORKER, *map(str, rest)], capture_output=True, text=True, timeout=600
        )
        for line in done.stdout.splitlines():
            path, outcome = line.rsplit(" ", 1)
            outcomes[Path(path)] = outcome
        if done.returncode != 0:
            crashed = rest[len(done.stdout.splitlines())]
            code = -done.returncode
            name = signal.Signals(code).name if code in signal.Signals._value2member_map_ else f"exit {code}"
            outcomes[crashed] = f"crashed ({name})"
    return outcomes


def fcnseg_outcome(path: Path) -> str:
    try:
        load_mat(path)
    except FcnsegError:
        return "refused"
    except Exception as error:  # what this script counts
        return f"failed ({type(error).__name__})"
    return "loaded"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--no-write", action="store_true", help="print only; leave RESULTS.md alone")
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory(prefix="mat-readers-") as folder:
        for compress in (False, True):
            for endian in ("<", ">"):
                name = f"{'compressed' if compress else 'uncompressed'}, {'little' if endian == '<' else 'big'}-endian"
                data = good_file(Path(folder) / "good.mat", compress, endian)
                paths = []
                for index, (_, mutant) in enumerate(mutants(data, 8, 150, list(range(116, len(data))))):
                    paths.append(Path(folder) / f"{int(compress)}{endian == '<'}_{index:03d}.mat")
                    paths[-1].write_bytes(mutant)
                theirs = scipy_outcomes(paths)
                ours = [fcnseg_outcome(path) for path in paths]
                rows.append((name, len(paths), list(theirs.values()), ours))
    version = importlib.metadata.version("scipy")
    lines = [
        "### Damaged MAT-files: scipy.io.loadmat against fcnseg's reader",
        "",
        "The mutants of `tests/test_fuzz.py::test_mat_reader` (seed 8, 150 per file, bytes overwritten, "
        "bits flipped, truncations, deletions, insertions, splices past the header's text). *refused*: "
        "an exception (fcnseg: its own `MatReadError`); *crashed*: the process killed by a signal.",
        "",
        f"- command: `python benchmarks/mat_readers.py`; scipy {version}",
        f"- machine: {machine()}; {datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC",
        "",
        "| file | mutants | scipy loaded | scipy refused | scipy crashed | fcnseg loaded | fcnseg refused | fcnseg other |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, count, theirs, ours in rows:
        crashed = sum(o.startswith("crashed") for o in theirs)
        lines.append(
            f"| {name} | {count} | {theirs.count('loaded')} | {theirs.count('refused')} | {crashed} | "
            f"{ours.count('loaded')} | {ours.count('refused')} | {sum(o.startswith('failed') for o in ours)} |"
        )
    signals = sorted({o for _, _, theirs, _ in rows for o in theirs if o.startswith("crashed")})
    lines += ["", f"scipy's crashes: {', '.join(signals) or 'none'}"]
    text = "\n".join(lines)
    print(text)
    if not args.no_write:
        write_section("mat-readers", text)


if __name__ == "__main__":
    main()
