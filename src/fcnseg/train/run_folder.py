"""A run's folder: ``config.toml`` (the settings), ``last.pt`` (everything needed to resume),
``best.pt`` (the best weights), ``log.csv``, ``curves.png`` and ``test.json`` (the test split's
scores), each written atomically, so that every file in it is whole at every instant, whenever the
process is killed; and ``steps.csv``, one row per step, appended as the run goes."""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from fcnseg import __version__
from fcnseg.files import WriteError, atomic_write, temporary_files
from fcnseg.train.config import AUTO
from fcnseg.train.plot import plot_curves
from fcnseg.train.state import RunState, set_rng_state
from fcnseg.weights.checkpoint import CheckpointError, atomic_save, checkpoint_dict, read_checkpoint

if TYPE_CHECKING:
    from fcnseg.train.config import TrainConfig

__all__ = ["STEP_COLUMNS", "RunFolder", "StepLog"]

_RESUME_IGNORES = {
    "epochs", "out", "workers", "progress", "device", "init", "notes", "channels_last", "accel", "checkpoint_every",
    "edge_output", "test_split", "test_data", "tensorboard",
}  # fmt: skip
"""Settings that do not change the trajectory: a run may resume with other values."""


class RunFolder:
    """The files of one run, in ``path``."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.config = self.path / "config.toml"
        self.last, self.best = self.path / "last.pt", self.path / "best.pt"
        self.log, self.curves = self.path / "log.csv", self.path / "curves.png"
        self.steps, self.test = self.path / "steps.csv", self.path / "test.json"

    def saved_run(self, config: TrainConfig, resume: bool) -> dict[str, Any] | None:
        """With ``resume``, ``last.pt``, which must hold a run of ``config``'s settings (but for
        those that do not change the trajectory), or None when there is none yet (a run killed
        before its first checkpoint starts afresh); without ``resume``, None, and a folder that
        holds a run is an error rather than being overwritten."""
        if not resume:
            if self.last.exists():
                raise ValueError(
                    f"{self.path} already holds a run ({self.last}); resume it or pick another out"
                )
            return None
        if not self.last.exists():
            return None
        saved = self.read_last()
        mine, theirs = config.to_dict(), saved["train_config"]
        differ = sorted(k for k in mine if k not in _RESUME_IGNORES and mine[k] not in (AUTO, theirs.get(k)))
        if differ:
            changes = ", ".join(f"{k}: {theirs.get(k)!r} -> {mine[k]!r}" for k in differ)
            raise ValueError(f"cannot resume {self.last} with other settings ({changes})")
        return saved

    def read_last(self) -> dict[str, Any]:
        """``last.pt``, checked to hold a training state that this fcnseg can continue; a
        :class:`CheckpointError` that says what is wrong if not."""
        saved = read_checkpoint(self.last)
        if "optimizer" not in saved or "train_config" not in saved:
            raise CheckpointError(f"{self.last} holds weights only, not a training state to resume")
        missing = [f.name for f in dataclasses.fields(RunState) if f.name not in saved]
        if missing:
            raise CheckpointError(
                f"{self.last} holds the training state of an older fcnseg (without {', '.join(missing)}), "
                f"which cannot be resumed; start a new run from its weights with --init {self.last}"
            )
        problems = _state_problems(saved)
        if problems:
            raise CheckpointError(f"{self.last} holds a damaged training state:\n  " + "\n  ".join(problems))
        return saved

    def restore(
        self,
        saved: dict[str, Any],
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        scaler: torch.amp.GradScaler,
        rank: int = 0,
    ) -> RunState:
        """Put ``saved`` (from :meth:`read_last`) back: the weights, the optimiser, the scaler, process
        ``rank``'s random generators (rank 0's for a rank the run did not have); its run state."""
        try:
            model.load_state_dict(saved["state_dict"])
            optimizer.load_state_dict(saved["optimizer"])
            if saved.get("scaler"):
                scaler.load_state_dict(saved["scaler"])
            rng = saved["rng"]
            set_rng_state(rng[rank] if rank < len(rng) else rng[0])
            return RunState.from_dict(saved)
        except (RuntimeError, ValueError, TypeError, LookupError, AttributeError, ArithmeticError) as error:
            # torch's, numpy's and random's loaders fail in all these ways on a state that does not fit
            raise CheckpointError(
                f"{self.last} holds a training state that does not fit its own settings "
                f"({type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}); "
                f"start a new run from its weights with --init {self.last}"
            ) from error

    def remove_unfinished(self) -> None:
        """Delete the temporary files of writes that a kill cut short (never a file that is whole)."""
        for unfinished in temporary_files(self.path):
            unfinished.unlink(missing_ok=True)

    def save(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        scaler: torch.amp.GradScaler,
        rng: list[dict[str, Any]],
        config: TrainConfig,
        state: RunState,
        best: bool = False,
    ) -> None:
        """Write ``last.pt``: the weights, the optimiser, every process's generators (``rng``, by
        rank), the settings and the state; with ``best`` also ``best.pt``, the weights alone (a
        third of the size with Adam's state left out)."""
        weights = checkpoint_dict(model)
        data = {
            **weights,
            "optimizer": optimizer.state_dict(),
            "scaler": scaler.state_dict() if scaler.is_enabled() else None,
            "rng": rng,
            "train_config": config.to_dict(),
            **state.to_dict(),
        }
        atomic_save(data, self.last)
        if best:
            atomic_save({**weights, "train_config": config.to_dict(), "step": state.step}, self.best)

    def write_config(self, config: TrainConfig) -> None:
        """``config.toml``: the run's settings as they were resolved, which ``fcnseg train --config``
        reads back to the same ones."""
        text = (
            f"# The settings of the run in this folder, as fcnseg {__version__} resolved them.\n"
            "# fcnseg train --config <this file> --out <another folder>: the same run again;\n"
            "# with --resume (and no --out): this run, continued. Flags override the settings.\n\n"
        ) + config.to_toml()
        atomic_write(self.config, lambda f: f.write(text.encode()))

    def step_log(self, step: int) -> StepLog:
        """``steps.csv``, open to append the steps after ``step`` (see :class:`StepLog`)."""
        return StepLog(self.steps, step)

    def write_log(self, rows: Sequence[dict[str, float]], columns: Sequence[str]) -> None:
        """``log.csv``: ``columns`` of ``rows``."""
        text = io.StringIO()
        writer = csv.DictWriter(text, fieldnames=columns, lineterminator="\n")
        writer.writeheader()
        writer.writerows({k: _format(row[k]) for k in columns} for row in rows)
        atomic_write(self.log, lambda f: f.write(text.getvalue().encode()))

    def write_test(self, record: dict[str, Any]) -> None:
        """``test.json``: the test split's scores, with what was scored (split, data, step)."""
        text = json.dumps(record, indent=2, default=_plain) + "\n"
        atomic_write(self.test, lambda f: f.write(text.encode()))

    def draw_curves(self, rows: Sequence[dict[str, float]], metrics: dict[str, str]) -> None:
        """``curves.png``: the training loss and ``metrics`` (column -> label) of ``rows``."""
        plot_curves(rows, self.curves, metrics)


STEP_COLUMNS = ("step", "epoch", "loss", "lr", "seconds")
"""The columns of ``steps.csv``: the step, the epochs done after it, its loss (the mean over the
processes), the learning rate it took and the run's clock after it."""


class StepLog:
    """``steps.csv``: one row per step, appended and flushed after each, so that a killed run keeps
    every step it made, and synced to disk before each checkpoint (:meth:`sync`), so that it holds
    every step of ``last.pt`` even after a power cut.

    A run that starts at ``step`` (0, or where ``last.pt`` resumes it) keeps the rows up to it and
    drops the later ones, which a run killed between checkpoints had written and the resumed run
    makes again, and a line a kill cut short.
    """

    def __init__(self, path: Path, step: int):
        self.path = path
        kept = [",".join(STEP_COLUMNS).encode() + b"\n"]
        if path.exists():
            for line in path.read_bytes().splitlines(keepends=True)[1:]:
                number = line.partition(b",")[0]
                if not line.endswith(b"\n") or not number.isdigit() or int(number) > step:
                    break
                kept.append(line)
        atomic_write(path, lambda f: f.write(b"".join(kept)))
        self.file = self._do(lambda: path.open("ab"))

    def add(self, row: dict[str, float]) -> None:
        """Append ``row`` (:data:`STEP_COLUMNS`) and flush it to the system."""
        line = ",".join(_format(row[k]) for k in STEP_COLUMNS).encode() + b"\n"
        self._do(lambda: (self.file.write(line), self.file.flush()))

    def sync(self) -> None:
        """Flush the rows to disk."""
        self._do(lambda: os.fsync(self.file.fileno()))

    def close(self) -> None:
        self.file.close()

    def _do(self, call: Callable[[], Any]) -> Any:
        """``call()``, a refusal of the system (a full disk) raised as the :class:`WriteError` that
        names the file and the room left."""
        try:
            return call()
        except OSError as error:
            raise WriteError(self.path, error) from error


def _plain(value: Any) -> Any:
    """NumPy numbers and arrays in ``test.json`` as plain numbers and lists."""
    return value.tolist() if hasattr(value, "tolist") else str(value)


_STATE_TYPES: dict[str, type | tuple[type, ...]] = {
    "step": int, "epoch": int, "epoch_step": int, "seconds": float, "best_score": float,
    "best_metrics": (dict, type(None)), "loss_sum": float, "loss_count": int, "history": list,
    "train_config": dict, "optimizer": dict, "scaler": (dict, type(None)), "rng": list,
}  # fmt: skip
"""What each entry of a training state is (ints are floats too, as JSON and Python take them)."""


def _state_problems(saved: dict[str, Any]) -> list[str]:
    """The entries of a training state that are missing or of the wrong kind."""
    problems = []
    for key, kind in _STATE_TYPES.items():
        kinds = kind if isinstance(kind, tuple) else (kind, int) if kind is float else (kind,)
        value = saved.get(key)
        if isinstance(value, bool) or not isinstance(value, kinds):
            names = " or ".join(k.__name__.replace("NoneType", "None") for k in kinds)
            problems.append(f"'{key}' is {type(value).__name__.replace('NoneType', 'None')}, not {names}")
    if not problems:
        if min(saved["step"], saved["epoch"], saved["epoch_step"], saved["loss_count"]) < 0:
            problems.append("a step, epoch or count is negative")
        if not saved["rng"] or not all(isinstance(r, dict) for r in saved["rng"]):
            problems.append("'rng' is not a list of generator states")
        if not all(isinstance(row, dict) for row in saved["history"]):
            problems.append("'history' is not a list of log rows")
    return problems


def _format(value: float) -> str:
    # repr round-trips: the file holds exactly the values of the run's history.
    return str(int(value)) if float(value).is_integer() and abs(value) < 2**53 else repr(float(value))
