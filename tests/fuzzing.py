"""Seeded mutations of valid files, for the tests that every reader loads or refuses bad input cleanly.

Each mutant is one of: bytes overwritten, bits flipped, the file truncated, a span deleted,
random bytes inserted, or a span of the file copied over or into another place (a splice).
Positions are drawn from ``hot`` when given (the structure of a file, say, rather than its
pixel or weight values), with one in five drawn from the whole file.
"""

from __future__ import annotations

import random
import warnings
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

from fcnseg.errors import FcnsegError


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
    """Feed ``count`` mutants of ``data`` to ``read`` through ``path``; the ones it did not load or
    refuse with an ``FcnsegError``, as ``seed/index (how): exception``."""
    failures = []
    with warnings.catch_warnings():
        warnings.simplefilter(
            "ignore"
        )  # decoders warn about damage (PIL's TIFF plugin, torch) before failing
        for index, (how, mutant) in enumerate(mutants(data, seed, count, hot)):
            path.write_bytes(mutant)
            try:
                read(path)
            except FcnsegError:
                pass
            except Exception as error:  # what the test is looking for: any other exception
                failures.append(f"seed {seed} mutant {index} ({how}): {type(error).__name__}: {error}")
    return failures
