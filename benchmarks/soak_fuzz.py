"""Every reader under many more damaged inputs than the tests give it: ``tests/test_fuzz.py``, scaled.

Runs the fuzz tests (Caffe models, checkpoints, training states, images, masks, data folder
layouts, MAT-files, recipes, VOC annotations, multipart uploads to ``fcnseg serve``) with
``FCNSEG_FUZZ_SCALE`` times their cases: the tests' own seeds, whose first mutants are the tests'
cases, continued. Each case must load, or be refused with fcnseg's own error (serve: a label map
or a JSON 4xx, never a 5xx). The section ``fuzz-soak`` of ``benchmarks/RESULTS.md`` is replaced.

    python benchmarks/soak_fuzz.py               # 10 times the tests' cases, about 20 minutes
    python benchmarks/soak_fuzz.py --scale 2 --no-write
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _results import machine, write_section

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", type=int, default=10, help="times the tests' cases")
    parser.add_argument("--no-write", action="store_true", help="print only; leave RESULTS.md alone")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="soak-fuzz-") as folder:
        log = Path(folder) / "fuzz.jsonl"
        env = {**os.environ, "FCNSEG_FUZZ_SCALE": str(args.scale), "FCNSEG_FUZZ_LOG": str(log)}
        start = time.perf_counter()
        done = subprocess.run(
            [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/test_fuzz.py"],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
        )
        wall = time.perf_counter() - start
        rows = [json.loads(line) for line in log.read_text().splitlines()] if log.is_file() else []
    seen: dict[str, int] = {}
    for row in rows:  # a test that fuzzes several readers: its second, third... in turn
        seen[row["test"]] = seen.get(row["test"], 0) + 1
        row["test"] += f" #{seen[row['test']]}" if seen[row["test"]] > 1 else ""
    total, failed = sum(r["cases"] for r in rows), sum(r["failures"] for r in rows)
    lines = [
        "### Fuzzing: every reader, many damaged inputs",
        "",
        f"`tests/test_fuzz.py` with {args.scale} times its cases (`FCNSEG_FUZZ_SCALE={args.scale}`): seeded "
        "mutants of good files (bytes overwritten, bits flipped, truncations, deletions, insertions, "
        "splices, aimed at each format's structure), random data folder layouts, damaged multipart "
        "uploads to `fcnseg serve`. A failure is any case not loaded and not refused with fcnseg's own "
        "error (serve: anything but a label map or a JSON 4xx).",
        "",
        f"- command: `python benchmarks/soak_fuzz.py --scale {args.scale}`",
        f"- machine: {machine()}",
        f"- date: {datetime.date.today()}; {wall / 60:.0f} min",
        "",
        "| reader (test) | cases | failures | seconds |",
        "|---|---|---|---|",
        *(
            f"| `{r['test'].split('::', 1)[1]}` | {r['cases']:,} | {r['failures']} | {r['seconds']:.0f} |"
            for r in rows
        ),
        f"| all | {total:,} | {failed} | {sum(r['seconds'] for r in rows):.0f} |",
    ]
    text = "\n".join(lines)
    print(text)
    if done.returncode != 0:
        print(done.stdout[-4000:], file=sys.stderr)
    if not args.no_write:
        write_section("fuzz-soak", text, inside="robustness")
    sys.exit(done.returncode)


if __name__ == "__main__":
    main()
