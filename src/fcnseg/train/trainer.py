"""The training loop every task shares, resumable bit for bit, on one process or many.

:class:`Trainer` runs a :class:`~fcnseg.train.config.TrainConfig` with a
:class:`~fcnseg.tasks.Task`, which brings the data, the net, the loss and the metrics.
The loop brings the rest: steps, validation, the run folder (``config.toml``, ``last.pt``,
``best.pt``, ``log.csv``, ``steps.csv``, ``curves.png``, ``test.json``, TensorBoard's events), DDP,
mixed precision, time limits, and a checkpoint on Ctrl-C or SIGTERM. It says what it does through
the logger ``fcnseg.train.trainer`` (from rank 0), and draws progress bars on a terminal only.
best.pt is picked on the validation split, never on the test split, which is scored once, after
the last step (``test_split``); without validation best.pt is the final snapshot. Every source of randomness is either derived from (seed, epoch, index, step) or saved
in ``last.pt``, so a run killed at any moment, even by SIGKILL, and resumed from any checkpoint
ends with the same weights as one that was never interrupted: ``last.pt`` holds the weights, the
optimiser, the position in the epoch's data order, the global generators, the loss sums of the
next log row and the run's clock. The data workers' augmentation is drawn from (seed, epoch,
index) alone, the loss's sampling from (seed, rank, step), and the learning rate is a function of
the step (or of the saved clock).
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import logging
import math
import signal
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Sampler
from tqdm import tqdm

from fcnseg import distributed
from fcnseg.accel import for_training
from fcnseg.data.datasets import DataError
from fcnseg.errors import ConfigError, FcnsegError
from fcnseg.files import WriteError
from fcnseg.infer.predict import has_native_bf16
from fcnseg.logs import show_bars
from fcnseg.tasks import Task, get_task
from fcnseg.train.board import Board, pictures, require_tensorboard
from fcnseg.train.config import TrainConfig
from fcnseg.train.initial import initial_weights, initialise, settle_preprocess
from fcnseg.train.optim import make_optimizer, set_lr
from fcnseg.train.run_folder import RunFolder, StepLog
from fcnseg.train.state import RunState, rng_state, seed_everything, step_generator
from fcnseg.weights.checkpoint import model_from_checkpoint, read_checkpoint

__all__ = ["TrainResult", "Trainer", "TrainingDiverged", "TrainingInterrupted", "log_columns", "train"]

log = logging.getLogger(__name__)

_T = TypeVar("_T")


class TrainingDiverged(FcnsegError):
    """The loss became NaN or infinite; the last checkpoint on disk is the last good one."""


class TrainingInterrupted(KeyboardInterrupt):
    """Ctrl-C or SIGTERM stopped the run after a step; ``last.pt`` holds it, ready for ``resume``."""

    def __init__(self, message: str, signal_number: int):
        super().__init__(message)
        self.signal_number = signal_number


def log_columns(task: Task) -> tuple[str, ...]:
    """The columns of ``log.csv``, which has one row per validation."""
    return ("step", "epoch", "train_loss", *task.metrics, "lr", "seconds")


@dataclass
class TrainResult:
    """What a run produced: the trained model, the log rows and the files written."""

    model: nn.Module
    history: list[dict[str, float]]
    best_metrics: dict[str, Any] | None
    out: Path
    steps: int
    test_metrics: dict[str, Any] | None = None  # the test split's, scored once on best.pt


@dataclass
class _Run:
    """What one :meth:`Trainer.fit` works with: the settled config, the net and its optimiser, and the
    state that ``last.pt`` keeps."""

    config: TrainConfig
    context: distributed.Context
    say: Callable[[str], None]
    bars: bool  # whether this process draws progress bars
    model: nn.Module
    net: nn.Module  # the model, or its DDP wrapper
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    criterion: nn.Module
    state: RunState
    started: float  # the time.perf_counter() at which the run's clock (state.seconds) read 0
    saved_at: float  # the time.perf_counter() of the last save of last.pt
    saved_step: int  # the step of the last save of last.pt
    steps: StepLog | None = None  # steps.csv, on rank 0
    board: Board | None = None  # TensorBoard's event files, on rank 0 with config.tensorboard
    unwritten: WriteError | None = (
        None  # a step's record that rank 0 could not write, raised at the next save
    )

    def seconds(self) -> float:
        return time.perf_counter() - self.started

    def time_used(self) -> float:
        """The fraction of the time limit used (0 without one), by rank 0's clock, so that all
        processes stop together."""
        if self.config.time_limit is None:
            return 0.0
        used = torch.tensor([self.seconds() / self.config.time_limit])
        if self.context.enabled:
            used = used.to(self.context.device)
            torch.distributed.broadcast(used, src=0)
        return float(used)


class Trainer:
    """Runs one :class:`TrainConfig` with the task it names; see :meth:`fit`.

    ``train_set``/``val_set`` (raw samples, as the task's ``datasets`` gives them) replace the
    config's data sets; ``val_set=None`` with a config data set means "the config's validation set".
    ``config.progress`` draws progress bars (on a terminal); the status lines are log records
    (INFO, loggers under "fcnseg"), which :func:`fcnseg.logs.log_to_stderr` shows as the command does.
    """

    def __init__(
        self,
        config: TrainConfig,
        *,
        train_set: Dataset | None = None,
        val_set: Dataset | None = None,
        context: distributed.Context | None = None,
    ):
        config.validate()
        self.config = config
        self.task = get_task(config.task)
        self.folder = RunFolder(config.out)
        self.context = context
        self.train_set, self.val_set = train_set, val_set

    def fit(self, resume: bool = False) -> TrainResult:
        """Train to ``epochs`` (or ``max_steps``, or ``time_limit``), validating and saving along the way.

        ``resume`` continues from ``out/last.pt``; without it an existing run in ``out`` is an
        error rather than being overwritten. The data is checked before the first step, and all
        problems are reported together. Raises :class:`TrainingDiverged` on a NaN or infinite
        loss, and :class:`TrainingInterrupted` after saving ``last.pt`` on Ctrl-C or SIGTERM.
        """
        context = self.context or distributed.init_from_env(self.config.device)
        say = _speaker(context)
        _check_amp(self.config.amp, context)
        if self.config.tensorboard:
            require_tensorboard()  # on every process, before any work
        bars = show_bars(self.config.progress) and context.is_main
        saved = self.folder.saved_run(self.config, resume)
        if resume and saved is None:
            say(f"no {self.folder.last} yet (stopped before its first checkpoint): starting the run afresh")
        if context.is_main:
            self.folder.remove_unfinished()
        train_set, val_set = self._data(context, bars)
        run = self._start(context, say, bars, saved, train_set)
        config, state = run.config, run.state
        self._write(run, lambda: self.folder.write_config(config))
        self._write(run, lambda: self.folder.write_log(state.history, log_columns(self.task)))
        shard = DistributedSampler(
            train_set, num_replicas=context.world_size, rank=context.rank, shuffle=True, seed=config.seed
        )
        steps_per_epoch = math.ceil(math.ceil(len(shard) / config.batch_size) / config.iter_size)
        total_steps = min(config.epochs * steps_per_epoch, config.max_steps or math.inf)
        samples = self.task.train_samples(train_set, config)
        with (
            self._records(run),
            _Progress(run, steps_per_epoch, total_steps) as progress,
            _stop_on_signals(say) as stop,
        ):
            for batches in self._batches(run, samples, shard, total_steps):
                lr = set_lr(run.optimizer, config, max(state.step / total_steps, run.time_used()), state.step)
                epoch = state.epoch
                summed = self._step(run, batches)  # the loss, summed over processes
                end_of_epoch = state.add_step(summed, context.world_size, steps_per_epoch)
                loss = summed / context.world_size
                self._record_step(run, loss, lr, steps_per_epoch)
                images = sum(len(inputs) for inputs, _ in batches) * context.world_size
                progress.step(epoch, loss, images)
                out_of_time = run.time_used() >= 1
                if out_of_time and state.step < total_steps:
                    say(f"time limit of {config.time_limit:g} s reached at step {state.step}")
                finished = state.step >= total_steps or out_of_time
                if finished or (state.step % config.val_every == 0 if config.val_every else end_of_epoch):
                    row = self._validate(run, val_set, lr, steps_per_epoch, final=finished)
                    progress.show(**{self.task.score: row[self.task.score]})
                if finished:
                    break
                self._save_between(run, stop)
        test = self._test(run) if config.test_split is not None else None
        run.model.to(memory_format=torch.contiguous_format)  # the usual layout for whoever uses it next
        return TrainResult(
            run.model.eval(), state.history, state.best_metrics, self.folder.path, state.step, test
        )

    def _data(self, context: distributed.Context, bars: bool) -> tuple[Dataset, Dataset | None]:
        """The training and validation sets, checked before the first step: rank 0 reads them, and
        on a problem every process stops, with rank 0 listing all of them."""
        train_set, val_set = self.train_set, self.val_set
        if train_set is None:
            train_set, config_val_set = self.task.datasets(self.config)
            val_set = val_set if val_set is not None else config_val_set
        if not self.config.validates:  # val_split "none": best.pt is the final snapshot
            val_set = None
        if len(train_set) == 0:
            raise ValueError("the training set is empty")
        error: DataError | None = None
        if context.is_main:
            try:
                self.task.check_data(train_set, val_set, bars)
            except DataError as found:
                error = found
        if distributed.any_true(error is not None, context):
            raise error or DataError("rank 0 found data that cannot be used; its output lists it", [])
        return train_set, val_set

    def _start(
        self,
        context: distributed.Context,
        say: Callable[[str], None],
        bars: bool,
        saved: dict[str, Any] | None,
        train_set: Dataset,
    ) -> _Run:
        """The net, initialised or restored from ``saved``, its optimiser and the run's state."""
        initial = (
            initial_weights(self.config, self.config.progress and context.is_main) if saved is None else None
        )
        config = settle_preprocess(self.config, saved, initial)
        seed_everything(config.seed)
        model = self.task.build_model(config, train_set)
        initialise(model, config, initial)
        device = context.device
        model.to(device, memory_format=_memory_format(config))
        net = for_training(model) if config.accel else model
        if context.enabled:
            net = DistributedDataParallel(net, device_ids=[device.index] if device.type == "cuda" else None)
        optimizer = make_optimizer(model, config)
        scaler = torch.amp.GradScaler("cuda", enabled=config.amp == "fp16" and device.type == "cuda")
        criterion = self.task.criterion(config, train_set).to(device)
        state = RunState()
        if saved is not None:
            # each process's own generators, or rank 0's for all when the number of processes changed
            rank = context.rank if len(saved["rng"]) == context.world_size else 0
            state = self.folder.restore(saved, model, optimizer, scaler, rank)
            say(f"resuming {self.folder.last} at step {state.step} (epoch {state.epoch + 1})")
        else:
            # Dropout streams differ between processes; the weights are rank 0's (DDP broadcasts).
            seed_everything(config.seed * 1_000_003 + context.rank + 1)
        now = time.perf_counter()
        return _Run(
            config=config,
            context=context,
            say=say,
            bars=bars,
            model=model,
            net=net,
            optimizer=optimizer,
            scaler=scaler,
            criterion=criterion,
            state=state,
            started=now - state.seconds,
            saved_at=now,
            saved_step=state.step,
        )

    def _batches(
        self, run: _Run, samples: Dataset, shard: DistributedSampler, total_steps: int
    ) -> Iterator[list[tuple[torch.Tensor, Any]]]:
        """The batches of each step (``iter_size`` of them; fewer at the end of an epoch) from where the
        run is to ``total_steps``, epoch after epoch, in the order of a run that was never interrupted."""
        config, state = run.config, run.state
        while state.step < total_steps:
            skip = state.epoch_step * config.iter_size * config.batch_size
            loader = DataLoader(
                samples,
                batch_size=config.batch_size,
                sampler=_EpochSampler(shard, state.epoch, skip=skip),
                num_workers=config.workers,
                collate_fn=self.task.collate,
                generator=torch.Generator().manual_seed(config.seed + state.epoch),
                pin_memory=run.context.device.type == "cuda",
            )
            yield from itertools.islice(_chunks(iter(loader), config.iter_size), total_steps - state.step)

    def _step(self, run: _Run, batches: list[tuple[torch.Tensor, Any]]) -> float:
        """One update from the mean gradient of ``batches`` (Caffe's ``iter_size``), each forward and
        backward in turn; returns their mean loss summed over processes, or raises on a non-finite
        one (on every process, when any has one)."""
        config, context, state = run.config, run.context, run.state
        generator = step_generator(config.seed, context.rank, state.step)
        run.optimizer.zero_grad(set_to_none=True)
        total = 0.0
        for inputs, targets in batches:
            inputs = inputs.to(context.device, non_blocking=True, memory_format=_memory_format(config))
            with _autocast(context.device, config.amp):
                outputs = run.net(inputs)
            loss = run.criterion(outputs, _to_device(targets, context.device), generator) / len(batches)
            part = float(distributed.all_reduce_sum(loss.detach().double().reshape(1), context))
            if not math.isfinite(part):
                kept = (
                    f"; the last good checkpoint {self.folder.last} is untouched"
                    if self.folder.last.exists()
                    else ""
                )
                raise TrainingDiverged(
                    f"loss is {part * len(batches) / context.world_size} at step {state.step + 1} "
                    f"(epoch {state.epoch + 1}): training diverged (lower the lr, or use loss = 'mean' "
                    f"with a larger one){kept}"
                )
            run.scaler.scale(loss).backward()
            total += part
        run.scaler.step(run.optimizer)
        run.scaler.update()
        return total

    def _save_between(self, run: _Run, stop: _Stop) -> None:
        """Save ``last.pt`` when ``checkpoint_every`` steps or seconds have passed since the last save,
        or when a signal asked to stop, and then stop."""
        config, context = run.config, run.context
        steps, seconds = config.checkpoint_steps, config.checkpoint_seconds
        overdue = (
            run.state.step - run.saved_step >= steps
            if steps
            else bool(seconds) and time.perf_counter() - run.saved_at >= seconds
        )
        if not distributed.any_true(overdue or stop.number is not None or run.unwritten is not None, context):
            return
        self._save(run)  # no validation: a place to resume from (and raises an unwritten step record)
        if distributed.any_true(stop.number is not None, context):
            number = stop.number if stop.number is not None else signal.SIGTERM  # another rank's
            raise TrainingInterrupted(
                f"stopped by {signal.Signals(number).name} after step {run.state.step}; "
                f"{self.folder.last} holds the run: continue it with --resume",
                number,
            )

    def _validate(
        self, run: _Run, val_set: Dataset | None, lr: float, steps_per_epoch: int, final: bool = False
    ) -> dict[str, float]:
        """Log a row (the mean training loss since the last one, the task's metrics on ``val_set``)
        and save ``last.pt``, and ``best.pt`` when the task's score improved (without a validation
        set: at the ``final`` step, the snapshot the original solvers keep)."""
        config, context, state, task = run.config, run.context, run.state, self.task
        metrics = None
        if val_set is not None and len(val_set):
            with _autocast(context.device, _scoring_amp(context.device, config.amp)):
                metrics = task.evaluate(run.model, val_set, config, context, run.bars)
        row = {
            "step": state.step,
            "epoch": round(state.step / steps_per_epoch, 4),
            "train_loss": state.take_mean_loss(),
            **{key: metrics[key] if metrics else math.nan for key in task.metrics},
            "lr": lr,
            "seconds": round(run.seconds(), 2),
        }
        state.history.append(row)
        improved = metrics[task.score] > state.best_score if metrics is not None else final
        if improved and metrics is not None:
            state.best_score = metrics[task.score]
            state.best_metrics = {**metrics, "step": state.step}
        run.model.meta["metrics"] = metrics
        if run.board is not None:
            figures = pictures(task, run.model, val_set)
            run.board.add_validation(state.step, {k: row[k] for k in task.metrics}, figures)
        self._save(run, best=improved)

        def write_log() -> None:
            self.folder.write_log(state.history, log_columns(task))
            self.folder.draw_curves(state.history, task.curves)

        self._write(run, write_log)  # its collective keeps the processes together
        return row

    def _test(self, run: _Run) -> dict[str, Any]:
        """The test split's metrics on best.pt's weights, scored once, after the last step, and
        written to ``test.json``: the numbers a run reports, which pick nothing."""
        config, context = run.config, run.context
        test_config = dataclasses.replace(
            config, val_split=config.test_split, test_split=None, val_data=config.test_data or config.val_data
        )
        _, test_set = self.task.datasets(test_config)
        distributed.barrier(context)  # best.pt is written by rank 0
        saved = read_checkpoint(self.folder.best, context.device)
        step, model = saved.get("step"), model_from_checkpoint(saved, str(self.folder.best)).eval()
        with _autocast(context.device, _scoring_amp(context.device, config.amp)):
            metrics = self.task.evaluate(model, test_set, test_config, context, run.bars)
        record = {"split": config.test_split, "data": test_config.val_data or config.data, "step": step}
        self._write(run, lambda: self.folder.write_test({**record, "weights": "best.pt", "metrics": metrics}))
        score = self.task.score
        run.say(
            f"test split {config.test_split}, {len(test_set)} images, best.pt of step {step}: {score} {metrics[score]:.4f}"
        )
        return metrics

    def _save(self, run: _Run, best: bool = False) -> None:
        """Write ``last.pt`` (and with ``best`` ``best.pt``) from rank 0, with every process's generators."""
        run.state.seconds = run.seconds()
        rng = distributed.all_gather_objects(rng_state(), run.context)

        def save() -> None:
            if run.steps is not None:
                run.steps.sync()  # every step of last.pt in steps.csv, on disk before it
            self.folder.save(run.model, run.optimizer, run.scaler, rng, run.config, run.state, best)

        self._write(run, save)
        run.saved_at, run.saved_step = time.perf_counter(), run.state.step

    def _write(self, run: _Run, write: Callable[[], _T]) -> _T | None:
        """Call ``write`` (files of the run folder) on rank 0 and return what it returns (None on the
        other ranks); if the system refuses a file (a full disk), stop every process with a
        :class:`~fcnseg.files.WriteError` that names it, the room left and how to go on. A failed
        write leaves the file that was there before."""
        error, run.unwritten = run.unwritten, None
        written = None
        if run.context.is_main and error is None:
            try:
                written = write()
            except WriteError as refused:
                error = refused
        if distributed.any_true(error is not None, run.context):
            if error is None:
                raise OSError("rank 0 could not write the run folder; its output says why")
            error.message += (
                f"; training stopped at step {run.state.step}. Every file in {self.folder.path} is whole "
                "(a failed write leaves the one before): make room and continue with --resume"
            )
            raise error
        return written

    @contextlib.contextmanager
    def _records(self, run: _Run) -> Iterator[None]:
        """``steps.csv`` and TensorBoard's event files, open on rank 0 while the run steps, both from
        the step the run starts at."""
        step = run.state.step
        try:
            run.steps = self._write(run, lambda: self.folder.step_log(step))
            if run.config.tensorboard and run.context.is_main:
                run.board = Board(self.folder.path, step)
            yield
        finally:
            for record in (run.steps, run.board):
                if record is not None:
                    record.close()

    def _record_step(self, run: _Run, loss: float, lr: float, steps_per_epoch: int) -> None:
        """The step just made, with its mean ``loss`` and its ``lr``, in ``steps.csv`` and TensorBoard's
        events, by rank 0 and without a collective: a file it cannot write stops every process at the
        next save (:meth:`_save_between`, or the validation's), as :meth:`_write` does."""
        if not run.context.is_main or run.unwritten is not None:
            return
        step = run.state.step
        row = {"step": step, "epoch": round(step / steps_per_epoch, 4), "loss": loss, "lr": lr}
        try:
            run.steps.add({**row, "seconds": round(run.seconds(), 2)})
            if run.board is not None:
                run.board.add_step(step, loss, lr)
        except WriteError as refused:
            run.unwritten = refused


def train(config: TrainConfig, resume: bool = False, **datasets: Dataset) -> TrainResult:
    """Run ``config`` with a :class:`Trainer`; ``datasets`` may give ``train_set``/``val_set``."""
    return Trainer(config, **datasets).fit(resume=resume)


def _chunks(items: Iterator[Any], size: int) -> Iterator[list[Any]]:
    """``items`` in lists of ``size`` (the last one shorter)."""
    while chunk := list(itertools.islice(items, size)):
        yield chunk


def _speaker(context: distributed.Context) -> Callable[[str], None]:
    """Logs a status line from rank 0 only: the processes of a run all say the same."""

    def say(line: str) -> None:
        if context.is_main:
            log.info(line)

    return say


def _check_amp(amp: str, context: distributed.Context) -> None:
    """Refuse float16 off CUDA (where its loss scaling is); warn, from rank 0, where bfloat16 is
    emulated, slower than float32."""
    device = context.device
    if amp == "fp16" and device.type != "cuda":
        raise ConfigError(f"amp fp16 trains on CUDA only, not on {device.type}; on the CPU use bf16 (or off)")
    if amp == "bf16" and not has_native_bf16(device) and context.is_main:
        log.warning(
            f"amp bf16: this {device.type.upper()} has no native bfloat16 arithmetic; it is emulated, "
            "and training will be slower than in float32"
        )


def _memory_format(config: TrainConfig) -> torch.memory_format:
    return torch.channels_last if config.channels_last else torch.contiguous_format


def _autocast(device: torch.device, amp: str) -> torch.autocast:
    """Mixed precision on ``device``: bfloat16 on CUDA or the CPU, float16 on CUDA (checked by
    :func:`_check_amp`); float32 throughout with ``amp`` "off"."""
    if amp == "off":
        return torch.autocast(device_type=device.type, enabled=False)
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16 if amp == "bf16" else torch.float16)


def _scoring_amp(device: torch.device, amp: str) -> str:
    """The precision validation and the test split are scored in: float32 on the CPU, whose fast
    inference path is float32's (checked against the plain net in float32), the run's elsewhere."""
    return "off" if device.type == "cpu" else amp


def _to_device(targets: Any, device: torch.device) -> Any:
    """A batch's targets on ``device``: a tensor, or lists, tuples and dicts of them."""
    if isinstance(targets, torch.Tensor):
        return targets.to(device, non_blocking=True)
    if isinstance(targets, list | tuple):
        return type(targets)(_to_device(t, device) for t in targets)
    if isinstance(targets, dict):
        return {k: _to_device(v, device) for k, v in targets.items()}
    return targets


class _EpochSampler(Sampler):
    """This process's share of one epoch as (epoch, index) keys, from batch position ``skip`` on.

    The order is ``DistributedSampler``'s: shuffled by (seed, epoch) and split over
    ranks, so it is the same whether or not the epoch was interrupted.
    """

    def __init__(self, shard: DistributedSampler, epoch: int, skip: int = 0):
        self.shard, self.epoch, self.skip = shard, epoch, skip

    def __iter__(self) -> Iterator[tuple[int, int]]:
        self.shard.set_epoch(self.epoch)
        indices = list(self.shard)[self.skip :]
        return iter([(self.epoch, i) for i in indices])

    def __len__(self) -> int:
        return len(self.shard) - self.skip


@dataclass
class _Stop:
    number: int | None = None  # the signal that asked the run to stop


@contextlib.contextmanager
def _stop_on_signals(say: Callable[[str], None]) -> Iterator[_Stop]:
    """The first Ctrl-C or SIGTERM asks the loop to stop after its step, saving ``last.pt`` first;
    a second Ctrl-C stops at once. Handlers can only be set from the main thread."""
    stop = _Stop()
    if threading.current_thread() is not threading.main_thread():
        yield stop
        return

    def ask_to_stop(signal_number: int, frame: Any) -> None:
        if stop.number is not None and signal_number == signal.SIGINT:
            raise KeyboardInterrupt
        stop.number = signal_number
        say("stopping after this step, saving last.pt (Ctrl-C again to stop at once)")

    previous = {number: signal.signal(number, ask_to_stop) for number in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield stop
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)


class _Progress:
    """What a run shows as it trains: a bar over its steps with the loss, the images per second and
    the last score, and once, after the first steps, how long an epoch and the run will take."""

    def __init__(self, run: _Run, steps_per_epoch: int, total_steps: int):
        self.run, self.shown = run, {}
        limit = run.config.time_limit
        seconds_left = None if limit is None else max(0.0, limit - run.state.seconds)
        self.timer = _StepTimer(steps_per_epoch, total_steps - run.state.step, seconds_left)
        self.images, self.began = 0, time.perf_counter()
        self.bar = tqdm(
            total=total_steps,
            initial=run.state.step,
            unit="step",
            dynamic_ncols=True,
            disable=not run.bars,
        )

    def __enter__(self) -> _Progress:
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.bar.close()

    def step(self, epoch: int, loss: float, images: int) -> None:
        """After a step of ``epoch`` that read ``images`` (on all processes) to ``loss`` (their mean)."""
        self.images += images
        speed = self.images / (time.perf_counter() - self.began)
        self.bar.set_description(f"epoch {epoch + 1}/{self.run.config.epochs}", refresh=False)
        self.bar.update()
        self.show(loss=loss, img_s=speed)
        if estimate := self.timer.tick():
            self.run.say(estimate)

    def show(self, **values: float) -> None:
        self.shown.update(values)
        self.bar.set_postfix({k: f"{v:.4g}" for k, v in self.shown.items()}, refresh=False)


class _StepTimer:
    """Times the first steps of a run, to say up front how long an epoch and the run will take."""

    WARMUP = 1  # the first step pays once for allocations and kernel choices
    STEPS, SECONDS = 5, 10.0  # measure this many steps, or for this long, whichever comes first

    def __init__(self, steps_per_epoch: int, steps_left: int, seconds_left: float | None = None):
        self.steps_per_epoch, self.steps_left, self.seconds_left = steps_per_epoch, steps_left, seconds_left
        self.count = 0
        self.start: float | None = 0.0

    def tick(self) -> str | None:
        """Call after every step; returns the estimate once, as soon as it is known."""
        self.count += 1
        if self.count == self.WARMUP:
            self.start = time.perf_counter()
        if self.count <= self.WARMUP or self.start is None:
            return None
        measured, elapsed = self.count - self.WARMUP, time.perf_counter() - self.start
        if measured < self.STEPS and elapsed < self.SECONDS:
            return None
        self.start = None  # said once
        per_step = elapsed / measured
        run = f"{_duration(per_step * self.steps_left)} for the {self.steps_left} steps to go"
        if self.seconds_left is not None and per_step * self.steps_left > self.seconds_left:
            steps = int(self.seconds_left / per_step)
            run = f"the time limit stops it after {_duration(self.seconds_left)}, about {steps:,} steps"
        return (
            f"about {_duration(per_step)} per step: {_duration(per_step * self.steps_per_epoch)} per epoch of "
            f"{self.steps_per_epoch} steps, {run}, plus validation (Ctrl-C saves last.pt; --resume continues)"
        )


def _duration(seconds: float) -> str:
    if seconds < 1:
        return f"{seconds * 1000:.0f} ms"
    if seconds < 120:
        return f"{seconds:.1f} s"
    minutes = seconds / 60
    return f"{minutes:.0f} min" if minutes < 120 else f"{minutes / 60:.1f} h"
