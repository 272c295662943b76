"""Seeded mutations of valid files, for the tests that every reader loads or refuses bad input cleanly.

Each mutant is one of: bytes overwritten, bits flipped, the file truncated, a span deleted,
random bytes inserted, or a span of the file copied over or into another place (a splice).
Positions are drawn from ``hot`` when given (the structure of a file, say, rather than its
pixel or weight values), with one in five drawn from the whole file.

``FCNSEG_FUZZ_SCALE`` (an integer, 1 unless set) multiplies every count: the first mutants of a
seed are the same whatever the scale, so a long run extends the tests' run. With
``FCNSEG_FUZZ_LOG`` naming a file, each fuzzing appends a JSON line: the test, the cases, the
failures and the seconds (``benchmarks/soak_fuzz.py`` reads them).
"""

from __future__ import annotations

import json
import os
import random
import time
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path

from fcnseg.errors import FcnsegError

SCALE = int(os.environ.get("FCNSEG_FUZZ_SCALE", "1"))
"""How many times the tests' counts each fuzzing runs."""


def scaled(count: int) -> int:
    return count * SCALE


def record(cases: int, failures: Sequence[str], seconds: float) -> None:
    """Append one fuzzing's figures to ``FCNSEG_FUZZ_LOG``, when it names a file."""
    log = os.environ.get("FCNSEG_FUZZ_LOG")
    if log:
        test = os.environ.get("PYTEST_CURRENT_TEST", "?").rsplit(" ", 1)[0]
        line = {"test": test, "cases": cases, "failures": len(failures), "seconds": round(seconds, 2)}
        with open(log, "a") as out:
            out.write(json.dumps(line) + "\n")


def check_all(check: Callable[[object], str | None], cases: Iterable[tuple[str, object]]) -> list[str]:
    """``check`` each case, as ``(description, case)``; the failures, as ``description: what check said``
    (or the exception it raised), recorded (:func:`record`)."""
    failures, count, start = [], 0, time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for how, case in cases:
            count += 1
            try:
                problem = check(case)
            except Exception as error:  # what the tests look for: any exception that escapes
                problem = f"{type(error).__name__}: {error}"
            if problem:
                failures.append(f"{how}: {problem}")
    record(count, failures, time.perf_counter() - start)
    return failures


def mutants(
    data: bytes, seed: int, count: int, hot: Sequence[int] | None = None
) -> Iterator[tuple[str, bytes]]:
    """``count`` mutants of ``data``, each with a description that tells how it was made."""
    rng = random.Random(seed)

    def position(limit: int) -> int:
        if hot and rng.random() < 0.8:
            return min(rng.choice(hot), limit - 1)
        return rng.randrange(limit)

    for _ in range(count):
        out = bytearray(data)
        kind = rng.choice(("overwrite", "bitflip", "truncate", "delete", "insert", "splice"))
        if kind == "overwrite":
            at = [position(len(out)) for _ in range(rng.randint(1, 4))]
            for i in at:
                out[i] = rng.randrange(256)
        elif kind == "bitflip":
            at = [position(len(out)) for _ in range(rng.randint(1, 4))]
            for i in at:
                out[i] ^= 1 << rng.randrange(8)
        elif kind == "truncate":
            at = [position(len(out))]
            del out[at[0] :]
        elif kind == "delete":
            at = [position(len(out))]
            del out[at[0] : at[0] + rng.randint(1, 64)]
        elif kind == "insert":
            at = [position(len(out))]
            out[at[0] : at[0]] = rng.randbytes(rng.randint(1, 16))
        else:
            start, length, at = position(len(out)), rng.randint(1, 256), [position(len(out))]
            piece = bytes(out[start : start + length])
            if rng.random() < 0.5:
                out[at[0] : at[0] + len(piece)] = piece
            else:
                out[at[0] : at[0]] = piece
        yield f"{kind} at {at}", bytes(out)


def fuzz(
    read: Callable[[Path], object],
    path: Path,
    data: bytes,
    seed: int,
    count: int,
    hot: Sequence[int] | None = None,
) -> list[str]:
    """Feed ``count`` (scaled) mutants of ``data`` to ``read`` through ``path``; the ones it did not
    load or refuse with an ``FcnsegError``, as ``seed/index (how): exception``. Decoders warn about
    damage (PIL's TIFF plugin, torch) before failing: warnings are ignored."""

    def load(mutant: bytes) -> None:
        path.write_bytes(mutant)
        try:
            read(path)
        except FcnsegError:
            pass

    cases = (
        (f"seed {seed} mutant {index} ({how})", mutant)
        for index, (how, mutant) in enumerate(mutants(data, seed, scaled(count), hot))
    )
    return check_all(load, cases)
