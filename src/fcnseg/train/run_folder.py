"""A run's folder: ``last.pt`` (everything needed to resume), ``best.pt`` (the best weights),
``log.csv``, ``curves.png`` and ``test.json`` (the test split's scores), each written atomically."""

from __future__ import annotations

import csv
import dataclasses
import io
import json
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from fcnseg.files import atomic_write
from fcnseg.train.config import AUTO
from fcnseg.train.plot import plot_curves
from fcnseg.train.state import RunState
from fcnseg.weights.checkpoint import atomic_save, checkpoint_dict, read_checkpoint

if TYPE_CHECKING:
    from fcnseg.train.config import TrainConfig

__all__ = ["RunFolder"]

_RESUME_IGNORES = {
    "epochs", "out", "workers", "progress", "device", "init", "notes", "channels_last", "accel", "checkpoint_every",
    "edge_output", "test_split", "test_data",
}  # fmt: skip
"""Settings that do not change the trajectory: a run may resume with other values."""


class RunFolder:
    """The files of one run, in ``path``."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.last, self.best = self.path / "last.pt", self.path / "best.pt"
        self.log, self.curves = self.path / "log.csv", self.path / "curves.png"
        self.test = self.path / "test.json"

    def saved_run(self, config: TrainConfig, resume: bool) -> dict[str, Any] | None:
        """With ``resume``, ``last.pt``, which must hold a run of ``config``'s settings (but for
        those that do not change the trajectory); without, None, and a folder that holds a run
        is an error rather than being overwritten."""
        if not resume:
            if self.last.exists():
                raise ValueError(
                    f"{self.path} already holds a run ({self.last}); resume it or pick another out"
                )
            return None
        saved = self.read_last()
        mine, theirs = config.to_dict(), saved["train_config"]
        differ = sorted(k for k in mine if k not in _RESUME_IGNORES and mine[k] not in (AUTO, theirs.get(k)))
        if differ:
            changes = ", ".join(f"{k}: {theirs.get(k)!r} -> {mine[k]!r}" for k in differ)
            raise ValueError(f"cannot resume {self.last} with other settings ({changes})")
        return saved

    def read_last(self) -> dict[str, Any]:
        """``last.pt``, checked to hold a training state that this fcnseg can continue."""
        saved = read_checkpoint(self.last)
        if "optimizer" not in saved or "train_config" not in saved:
            raise ValueError(f"{self.last} holds weights only, not a training state to resume")
        missing = [f.name for f in dataclasses.fields(RunState) if f.name not in saved]
        if missing:
            raise ValueError(
                f"{self.last} holds the training state of an older fcnseg (without {', '.join(missing)}), "
                f"which cannot be resumed; start a new run from its weights with --init {self.last}"
            )
        return saved

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


def _plain(value: Any) -> Any:
    """NumPy numbers and arrays in ``test.json`` as plain numbers and lists."""
    return value.tolist() if hasattr(value, "tolist") else str(value)


def _format(value: float) -> str:
    # repr round-trips: the file holds exactly the values of the run's history.
    return str(int(value)) if float(value).is_integer() and abs(value) < 2**53 else repr(float(value))
