"""A disk that fills up under ``fcnseg train`` and ``fcnseg predict``: a real one, a small tmpfs.

Training: the demo's narrow FCN-8s on the synthetic set (as ``soak_training.py``, 100 steps,
``--checkpoint-every 1step``) writes its run folder to a 16 MB tmpfs; at random moments (seeded)
the disk is filled to the last byte by another file, so that the next write of the run fails
with the system's own ENOSPC. Each time the run must stop with exit status 2 and a message that
names the file and the room left, every ``.pt`` on the disk must load, and after the filler is
removed ``--resume`` goes on; the run must end bit-identical to one that never met a full disk.
Prediction: ``fcnseg predict --overlay`` of 40 images into the same tmpfs with 100 kB left (room
for the files of about a dozen) must stop saying so, with status 2, and every file it wrote must
be whole.
Needs root (to mount the tmpfs). The section ``full-disk`` of ``benchmarks/RESULTS.md`` is
replaced.

    sudo python benchmarks/soak_disk.py            # 3 full disks; about 3 minutes
    python benchmarks/soak_disk.py --no-write      # print only
"""

from __future__ import annotations

import argparse
import datetime
import errno
import random
import re
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
from _results import machine, write_section
from PIL import Image
from soak_training import same_run, step_on_disk, train

import fcnseg
from fcnseg.data.synthetic import make_sample
from fcnseg.train.run_folder import RunFolder
from fcnseg.weights.checkpoint import load_checkpoint

SIZE = "16m"
"""The tmpfs: room for the run folder (last.pt of 2 MB twice while it is replaced, best.pt...)."""
ROOM = 100_000
"""Bytes left for ``fcnseg predict``: on a tmpfs each file takes whole 4 kB pages, and an image's
label PNG and JPEG overlay (128x96) take two or three."""
STOPPED = re.compile(
    r"cannot write (\S+): No space left on device \((.*) free on the disk of .*training stopped at step (\d+)"
)


@dataclass
class Full:
    at_step: int  # the step on disk when the disk was filled
    file: str  # the file the run could not write
    free: str  # the room the message told
    stopped_at: int  # the step the message told
    saved_step: int  # the step of last.pt after it
    loaded: int  # .pt files that loaded


@contextmanager
def tmpfs(path: Path):
    path.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={SIZE}", "tmpfs", str(path)], capture_output=True
    )
    if mounted.returncode != 0:
        sys.exit(f"cannot mount a tmpfs (run as root): {mounted.stderr.decode().strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", str(path)], check=True)


def fill(disk: Path, leave: int = 0) -> Path:
    """A file that takes all the room on ``disk`` but ``leave`` bytes."""
    ballast = disk / "ballast"
    with ballast.open("wb") as f:
        chunk = bytes(1 << 16)
        try:
            while True:
                f.write(chunk)
                f.flush()
        except OSError as error:
            if error.errno != errno.ENOSPC:
                raise
    if leave:
        ballast.write_bytes(bytes(ballast.stat().st_size - leave))
    return ballast


def training(
    root: Path, disk: Path, steps: int, fills: int, rng: random.Random
) -> tuple[list[Full], list[str]]:
    straight = train(root / "straight", steps, "1step")
    if straight.wait() != 0:
        raise RuntimeError(straight.stderr.read())
    out, found = disk / "run", []
    while len(found) < fills:
        process = train(out, steps, "1step", resume=True)
        target = rng.randint(
            max(step_on_disk(out / "last.pt"), 0) + 2, steps * (len(found) + 1) // (fills + 1)
        )
        while step_on_disk(out / "last.pt") < target and process.poll() is None:
            time.sleep(0.02)
        ballast = fill(disk)
        _, errors = process.communicate()
        message = STOPPED.search(errors)
        if process.returncode != 2 or not message:
            raise RuntimeError(f"the run did not stop on the full disk ({process.returncode}):\n{errors}")
        saved = RunFolder(out).read_last()["step"]
        loaded = sum(1 for p in sorted(out.glob("*.pt")) if load_checkpoint(p))
        found.append(
            Full(target, Path(message.group(1)).name, message.group(2), int(message.group(3)), saved, loaded)
        )
        print(f"full disk {len(found)}: {errors.strip().splitlines()[-1][:300]}", flush=True)
        ballast.unlink()
    process = train(out, steps, "1step", resume=True)
    if process.wait() != 0:
        raise RuntimeError(process.stderr.read())
    return found, same_run(root / "straight", out)


def predicting(root: Path, disk: Path, count: int) -> tuple[int, int, str, int]:
    """``fcnseg predict --overlay`` of ``count`` images into ``disk`` with :data:`ROOM` bytes left:
    (images it said it wrote, files on the disk that load, its message, its status)."""
    images = root / "images"
    images.mkdir()
    for i in range(count):
        Image.fromarray(make_sample(i, (96, 128))[0]).save(images / f"{i:03d}.png")
    torch.manual_seed(0)
    model = fcnseg.build_model("fcn8s", 6, widths=(4, 8, 16, 32, 32, 64))
    weights = fcnseg.save_checkpoint(model, root / "narrow.pt")
    out = disk / "predicted"
    out.mkdir()
    ballast = fill(disk, leave=ROOM)
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "fcnseg",
            "predict",
            str(weights),
            str(images),
            "--out",
            str(out),
            "--overlay",
        ],
        capture_output=True,
        text=True,
    )
    ballast.unlink()
    written = int(re.search(r"segmented (\d+) of", done.stdout).group(1))
    whole = 0
    for path in sorted(out.iterdir()):
        with Image.open(path) as picture:
            picture.load()
        whole += 1
    if whole != 2 * written:
        raise RuntimeError(
            f"{whole} files for {written} images in {out}: {sorted(p.name for p in out.iterdir())}"
        )
    return written, whole, done.stderr.strip().splitlines()[-1], done.returncode


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--fills", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0, help="of the moments the disk fills")
    parser.add_argument("--no-write", action="store_true", help="print only; leave RESULTS.md alone")
    args = parser.parse_args()
    rng = random.Random(args.seed)
    with tempfile.TemporaryDirectory(prefix="soak-disk-") as folder, tmpfs(Path(folder) / "disk") as disk:
        root = Path(folder)
        found, differ = training(root, disk, args.steps, args.fills, rng)
        written, whole, said, status = predicting(root, disk, 40)
    rows = [
        f"| {i} | {f.at_step} | {f.file} | {f.free} | {f.stopped_at} | {f.saved_step} | {f.loaded} |"
        for i, f in enumerate(found, 1)
    ]
    text = "\n".join(
        [
            "### A full disk under training and prediction",
            "",
            f"A {SIZE.upper()}B tmpfs filled to the last byte at random moments (seeded) while `fcnseg train` "
            f"writes a run to it (the demo's narrow FCN-8s on the synthetic set, {args.steps} steps, "
            "`--threads 1 --seed 0 --checkpoint-every 1step`): the run must stop naming the file and the "
            "room left, every `.pt` must load, and `--resume` once there is room must end bit-identical "
            "to a run that never met a full disk. Then `fcnseg predict --overlay` of 40 images into the "
            "same tmpfs with 100 kB left.",
            "",
            f"- command: `python benchmarks/soak_disk.py --steps {args.steps} --fills {args.fills}` (as root)",
            f"- machine: {machine()}; torch {torch.__version__}",
            f"- date: {datetime.date.today()}",
            "",
            "| full disk | at step | file refused | room told | stopped at step | last.pt step after | .pt files that load |",
            "|---|---|---|---|---|---|---|",
            *rows,
            "",
            f"- full disks survived: {len(found)} of {args.fills}; resumed to the end, the run is "
            + (
                "bit-identical to the one that never met a full disk"
                if not differ
                else f"DIFFERENT ({differ[:5]})"
            ),
            f"- `fcnseg predict`: exit status {status}, {written} of 40 images written ({whole} files, every one "
            f"whole), and: `{said}`",
        ]
    )
    print(text)
    if not args.no_write:
        write_section("full-disk", text, inside="robustness")
    if differ or status != 2:
        sys.exit(1)


if __name__ == "__main__":
    main()
