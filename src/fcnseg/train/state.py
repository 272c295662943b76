"""Where a training run is: its counters and log (:class:`RunState`) and its random generators,
all saved into ``last.pt`` so that a resumed run continues exactly where it stopped."""

from __future__ import annotations

import dataclasses
import math
import random
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

__all__ = ["RunState", "rng_state", "seed_everything", "set_rng_state", "step_generator"]


@dataclass
class RunState:
    """A run's progress and log, the same on every process (losses are summed over processes
    as they are added), so that rank 0 can save it for all."""

    step: int = 0
    epoch: int = 0
    epoch_step: int = 0  # steps done in ``epoch``
    seconds: float = 0.0  # training time, over all sessions of the run
    best_score: float = -math.inf  # the task's score of best.pt
    best_metrics: dict[str, Any] | None = None  # every metric of best.pt, with its step
    loss_sum: float = 0.0  # training losses since the last log row, summed over processes
    loss_count: int = 0
    history: list[dict[str, float]] = field(default_factory=list)  # the rows of log.csv

    def add_step(self, loss_sum: float, count: int, steps_per_epoch: int) -> bool:
        """Count a step whose losses (over ``count`` processes) summed to ``loss_sum``; return
        whether it ended an epoch."""
        self.step += 1
        self.epoch_step += 1
        self.loss_sum += loss_sum
        self.loss_count += count
        if self.epoch_step < steps_per_epoch:
            return False
        self.epoch += 1
        self.epoch_step = 0
        return True

    def take_mean_loss(self) -> float:
        """The mean training loss since the last call (NaN if no step was made)."""
        mean = self.loss_sum / self.loss_count if self.loss_count else math.nan
        self.loss_sum, self.loss_count = 0.0, 0
        return mean

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, saved: dict[str, Any]) -> RunState:
        """The state in a ``last.pt`` (which holds more besides)."""
        return cls(**{f.name: saved[f.name] for f in dataclasses.fields(cls)})


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def rng_state() -> dict[str, Any]:
    """The global generators' states as tensors and lists, loadable with ``weights_only=True``."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    version, words, gauss_next = random.getstate()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(gauss)],
        "python": [version, list(words), gauss_next],
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    kind, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    version, words, gauss_next = state["python"]
    random.setstate((version, tuple(words), gauss_next))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def step_generator(seed: int, rank: int, step: int) -> torch.Generator:
    """The loss's generator at one step: a function of (seed, rank, step) alone."""
    words = np.random.SeedSequence([seed, rank, step]).generate_state(2, dtype=np.uint32)
    return torch.Generator().manual_seed(int(words[0]) << 32 | int(words[1]))
