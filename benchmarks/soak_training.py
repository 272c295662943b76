"""Training killed without warning: SIGKILL at random moments, ``--resume`` each time, the same bits.

The demo's narrow FCN-8s on the synthetic set (120 training images of 64-128 px, batches of 2:
60 steps an epoch, flips, loss sampling, dropout), 300 steps, ``--threads 1 --seed 0
--checkpoint-every 1step``, each run an ``fcnseg train`` process. The run never killed is run
first; then the same run is killed with SIGKILL at random moments (seeded): the first while it
starts, before any checkpoint, the others at random steps, anywhere within the step or its save,
and restarted with ``--resume`` after each kill. After every kill every ``.pt`` in the run folder must load, and at
the end the weights, the optimiser's state and the log must equal the run never killed, bit for
bit. A third run checkpoints only at validations (``--checkpoint-every 0``): it must end the same
too, and its time shows what a checkpoint at every step costs. The section ``training-kills`` of
``benchmarks/RESULTS.md`` is replaced.

    python benchmarks/soak_training.py             # 300 steps, 4 kills; about 6 minutes
    python benchmarks/soak_training.py --quick     # 60 steps, 2 kills; print only
"""

from __future__ import annotations

import argparse
import datetime
import math
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from _results import machine, write_section

from fcnseg.files import temporary_files
from fcnseg.train.run_folder import RunFolder
from fcnseg.weights.checkpoint import load_checkpoint

RUN = [
    *(
        "--widths",
        "4,8,16,32,32,64",
        "--init",
        "none",
        "--weight-init",
        "kaiming",
        "--preprocess",
        "imagenet",
    ),
    *(
        "--train-images",
        "120",
        "--val-images",
        "20",
        "--batch-size",
        "2",
        "--flip",
        "--loss-keep-prob",
        "0.5",
    ),
    *("--val-every", "50", "--seed", "0", "--threads", "1", "--quiet"),
]


@dataclass
class Kill:
    after: float  # seconds after the process started
    step: int | None  # the step of last.pt after the kill (None: there was none yet)
    unfinished: int  # temporary files that the kill cut short
    loaded: int  # .pt files that loaded after the kill


def train(out: Path, steps: int, every: str, resume: bool = False) -> subprocess.Popen:
    command = [sys.executable, "-m", "fcnseg", "train", *RUN, "--max-steps", str(steps), "--out", str(out)]
    command += ["--checkpoint-every", every] + (["--resume"] if resume else [])
    return subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def step_on_disk(last: Path) -> int:
    """The step of ``last.pt``; -1 while there is none."""
    try:
        return torch.load(last, weights_only=True)["step"]
    except FileNotFoundError:
        return -1


def finish(process: subprocess.Popen, last: Path | None = None) -> tuple[float, float]:
    """Wait for a run to end well: its seconds, and those until ``last`` (its last.pt) first appeared."""
    start, first = time.perf_counter(), math.nan
    while process.poll() is None:
        if last is not None and math.isnan(first) and last.exists():
            first = time.perf_counter() - start
        time.sleep(0.05)
    if process.returncode != 0:
        raise RuntimeError(f"fcnseg train failed ({process.returncode}):\n{process.stderr.read()}")
    process.stderr.close()
    return time.perf_counter() - start, first


def check_folder(out: Path) -> tuple[int | None, int, int]:
    """After a kill: last.pt's step (None: none yet), the unfinished writes, and the .pt files that
    load (each must: an error here ends the script)."""
    folder = RunFolder(out)
    step = folder.read_last()["step"] if folder.last.exists() else None
    loaded = 0
    for path in sorted(out.glob("*.pt")):
        load_checkpoint(path)
        loaded += 1
    unfinished = len(temporary_files(out))
    return step, unfinished, loaded


def same_run(a: Path, b: Path) -> list[str]:
    """What differs between two runs: last.pt's weights, optimiser state and log, and steps.csv (times
    aside)."""
    x, y = (torch.load(p / "last.pt", weights_only=True) for p in (a, b))
    differ = [
        f"weight {k}" for k in x["state_dict"] if not torch.equal(x["state_dict"][k], y["state_dict"][k])
    ]
    for i, (s, t) in enumerate(
        zip(x["optimizer"]["state"].values(), y["optimizer"]["state"].values(), strict=True)
    ):
        differ += [f"optimizer {i} {k}" for k in s if not torch.equal(s[k], t[k])]
    rows = [[{k: v for k, v in r.items() if k != "seconds"} for r in run["history"]] for run in (x, y)]
    steps = [[line.rpartition(",")[0] for line in (p / "steps.csv").read_text().splitlines()] for p in (a, b)]
    differ += ["steps.csv"] if steps[0] != steps[1] else []
    return differ + (["log"] if rows[0] != rows[1] else []) + (["step"] if x["step"] != y["step"] else [])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--kills", type=int, default=4)
    parser.add_argument("--seed", type=int, default=0, help="of the kill moments")
    parser.add_argument("--no-write", action="store_true", help="print only; leave RESULTS.md alone")
    parser.add_argument("--quick", action="store_true", help="60 steps, 2 kills; print only")
    args = parser.parse_args()
    if args.quick:
        args.steps, args.kills, args.no_write = 60, 2, True
    rng = random.Random(args.seed)
    with tempfile.TemporaryDirectory(prefix="soak-training-") as folder:
        root = Path(folder)
        straight_seconds, startup = finish(
            train(root / "straight", args.steps, "1step"), root / "straight" / "last.pt"
        )
        step_seconds = (straight_seconds - startup) / args.steps
        sparse_seconds, _ = finish(train(root / "sparse", args.steps, "0"))
        targets = sorted(rng.sample(range(5, args.steps - 5), args.kills - 1))
        kills: list[Kill] = []
        out = root / "killed"
        for target in [None, *targets]:  # the step after which to kill; None: before the first checkpoint
            process = train(out, args.steps, "1step", resume=True)  # afresh while there is no last.pt
            start = time.perf_counter()
            if target is None:
                time.sleep(rng.uniform(0.5, 0.9 * startup))
            else:
                while step_on_disk(out / "last.pt") < target:
                    if process.poll() is not None:
                        raise RuntimeError(f"the run ended before its kill: {process.stderr.read()}")
                    time.sleep(0.05)
                time.sleep(rng.uniform(0, 2 * step_seconds))  # within the next steps or their saves
            if process.poll() is not None:
                raise RuntimeError(f"the run ended before its kill: {process.stderr.read()}")
            process.send_signal(signal.SIGKILL)
            process.wait()
            process.stderr.close()
            kills.append(Kill(time.perf_counter() - start, *check_folder(out)))
            print(
                f"kill {len(kills)} after {kills[-1].after:.1f} s: last.pt at step {kills[-1].step}",
                flush=True,
            )
        resume_seconds, _ = finish(train(out, args.steps, "1step", resume=True))
        differ = same_run(root / "straight", out)
        sparse_differ = same_run(root / "straight", root / "sparse")
        left = sorted(p.name for p in out.iterdir())
    report(args, kills, differ, sparse_differ, left, straight_seconds, sparse_seconds, resume_seconds)


def report(
    args: argparse.Namespace,
    kills: list[Kill],
    differ: list[str],
    sparse_differ: list[str],
    left: list[str],
    straight: float,
    sparse: float,
    resumed: float,
) -> None:
    rows = [
        f"| {i} | {k.after:.1f} | {'none yet' if k.step is None else k.step} | {k.unfinished} | {k.loaded} |"
        for i, k in enumerate(kills, 1)
    ]
    identical = not differ and left == [
        "best.pt",
        "config.toml",
        "curves.png",
        "last.pt",
        "log.csv",
        "steps.csv",
    ]
    text = "\n".join(
        [
            "### Training killed with SIGKILL, resumed: the same bits",
            "",
            f"The demo's narrow FCN-8s on 120 synthetic images (batches of 2, flips, loss sampling, "
            f"dropout), {args.steps} steps, `--threads 1 --seed 0 --checkpoint-every 1step`, each run an "
            f"`fcnseg train` process. The same run killed {args.kills} times with SIGKILL at random "
            "moments (seeded) and restarted with `--resume` each time (afresh while it had no "
            "checkpoint yet), against the run never killed.",
            "",
            f"- command: `python benchmarks/soak_training.py --steps {args.steps} --kills {args.kills}`",
            f"- machine: {machine()}; torch {torch.__version__}",
            f"- date: {datetime.date.today()}; load {os.getloadavg()[0]:.1f} at the end",
            "",
            "| kill | seconds after start | last.pt step after it | unfinished writes left | .pt files that load |",
            "|---|---|---|---|---|",
            *rows,
            "",
            f"- kills survived: {len(kills)} of {args.kills}; after the last resume the weights, optimiser "
            f"state, log and steps.csv are {'bit-identical to' if identical else 'DIFFERENT from'} the run never killed"
            + (f" ({', '.join(differ[:5])})" if differ else "")
            + f"; the folder holds {', '.join(left)}",
            f"- the run never killed: {straight:.1f} s with a checkpoint at every step, {sparse:.1f} s with "
            f"checkpoints at validations only ({'the same bits' if not sparse_differ else 'DIFFERENT bits'}); "
            f"the last resume ran {resumed:.1f} s",
        ]
    )
    print(text)
    if not args.no_write:
        write_section("training-kills", text, inside="robustness")
    if not identical or sparse_differ:
        sys.exit(1)


if __name__ == "__main__":
    main()
