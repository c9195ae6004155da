"""The epoch loop over a run's parts: train, validate, checkpoint, return values.

Nothing here prints, and the Trainer builds nothing: the caller builds the run's parts
(``build_run``, engine/build.py) and hands them over with the Checkpointer that holds the run
folder (engine/checkpointer.py); ``build_trainer`` does both for ``train()`` and the CLI. The
per-step work (forward, loss, backward, clip, optimizer and scheduler step) lives in
engine/step.py, the checkpoint's contents and every resume rule in engine/checkpointer.py
(RunState). Progress goes out as events to an optional callback (the CLI renders them), and the
outcome comes back as a FitResult. This module owns the order of things:

    for each epoch: train (TrainStep per batch) -> validate -> the monitor (best epoch) and early
                    stopping -> checkpoints (the checkpointer picks last.pt/best.pt) -> metrics files

``resume`` continues exactly where the checkpoint was taken: the loaders' order and augmentation
depend only on (seed, epoch), and the RNG states cover dropout.

A stop request is honoured after the current step (under torchrun within
STOP_AGREEMENT_STEPS steps, when the ranks agree on it): from a signal (the CLI's SIGTERM/SIGINT handler
sets it) a resumable last.pt is written and the result names the signal (``interrupted``); from a
sweep's pruner the run stops after its epoch and the result says ``pruned``. A non-finite loss
raises NonFiniteLossError before any update, and no checkpoint is written after it, so the last
good last.pt/best.pt stay as they were. A validation whose loss is NaN or infinite (a model that
diverged while its training loss stayed finite) is the same kind of end: the epoch is recorded in
metrics.jsonl (``diverged``, its val_loss null), no checkpoint is written for it, and the run
raises NonFiniteValidationError (exit 1); a sweep fails that trial with the message and goes on.

Multi-process (DDP) training: build the parts for the job's DistEnv (``build_run(cfg,
distributed=...)``), inside a started process group (resnet_cifar.distributed.process_group).
Each rank trains on its own disjoint slice of every epoch's permutation (``--batch-size`` is per
process) with the model wrapped in DistributedDataParallel after compilation, and evaluates its own
shard of the validation and test sets; the confusion matrices, loss sums and train sums are summed
over the ranks, so every rank sees the global metrics and takes the same early-stopping decision.
The non-finite-loss check (the loss's all-reduce, every step) and the stop request (every few
steps and at each epoch's end, resnet_cifar.distributed.STOP_AGREEMENT_STEPS) are agreed on by all
ranks, so no rank is left waiting in a collective. Only rank 0 writes files; checkpoints
hold the unwrapped module's state, rank 0's RNG state and every rank's (for an exact resume), and
resume with the same number of processes.
"""

from __future__ import annotations

import contextlib
import copy
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import torch

from resnet_cifar.config import TrainConfig
from resnet_cifar.distributed import SINGLE_PROCESS, DistEnv
from resnet_cifar.engine.build import RunParts, build_run
from resnet_cifar.engine.checkpointer import Checkpointer, LoopPosition, ResumeCheckpoint, RunState
from resnet_cifar.engine.early_stopping import EarlyStopping, Monitor
from resnet_cifar.errors import ResnetCifarError
from resnet_cifar.evaluation import EvalResult, evaluate
from resnet_cifar.models import set_train_mode

METRIC_FIELDS = (
    "epoch",
    "train_loss",
    "train_acc",
    "val_loss",
    "val_acc",
    "lr",
    "images_per_sec",
    "epoch_seconds",
    "val_count",
    "validated",
    "eval_seconds",
    "checkpoint_seconds",
    "diverged",
)


# ----------------------------------------------------------------------------- values and events


@dataclass(frozen=True)
class EpochRecord:
    epoch: int  # 1-based, as printed
    train_loss: float
    train_acc: float
    val_loss: float
    val_acc: float
    lr: float
    images_per_sec: float  # training images per second, all processes together
    epoch_seconds: float  # training and validation, checkpointing apart
    val_count: int = 0  # validation images the val metrics cover (all processes together)
    validated: bool = True  # False for an epoch before --eval-from (its val metrics are NaN: null in JSON)
    eval_seconds: float = 0.0  # the validation pass
    checkpoint_seconds: float = 0.0  # the loop was blocked by checkpointing (snapshot + waiting for a write)
    diverged: bool = False  # validation gave a NaN or infinite loss: the run stopped after this epoch

    @property
    def val_finite(self) -> bool:
        """Whether the validation, if there was one, gave a finite loss."""
        return not self.validated or math.isfinite(self.val_loss)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class NonFiniteValidationError(ResnetCifarError):
    """Validation gave a NaN or infinite loss: the model diverged. The epoch is in metrics.jsonl
    (``diverged``); no checkpoint holds it, so last.pt and best.pt are the epochs before it."""

    exit_code = 1

    def __init__(self, record: EpochRecord, out_dir: Path) -> None:
        kept = "no checkpoint was written" if record.epoch == 1 else f"{out_dir}'s checkpoints hold the epochs before it"
        super().__init__(
            f"epoch {record.epoch}: the validation loss is {record.val_loss} (the model diverged; try a lower --lr "
            f"or --grad-clip); the run stopped, {kept}"
        )
        self.record = record


@dataclass(frozen=True)
class FitResult:
    out_dir: Path
    epochs_run: int
    best_val_acc: float | None
    best_val_loss: float | None
    best_epoch: int | None
    stopped_early: bool
    stop_reason: str | None
    interrupted: str | None  # the signal that stopped the run, if one did
    history: tuple[EpochRecord, ...]
    test: dict[str, Any] | None  # the final model's test report (never used for selection)
    checkpoint: Path
    world_size: int = 1  # processes that trained the run together
    compile_seconds: float = 0.0  # the warm-up step with torch.compile, before the training clock (0 eager)
    train_seconds: float = 0.0  # the loop's wall time: training, validation and checkpointing
    reached_target: bool | None = None  # --target-acc: whether validation reached it (None: no target)
    time_to_target_s: float | None = None  # training seconds (validations included) until it did
    pruned: bool = False  # a sweep's pruner stopped the run after an epoch (not an interruption)
    run_id: str | None = None  # the run's id, as in its checkpoints and metrics.jsonl

    @property
    def test_acc(self) -> float | None:
        return None if self.test is None else float(self.test["accuracy"])

    def to_dict(self) -> dict[str, Any]:
        return {
            "out_dir": str(self.out_dir),
            "epochs_run": self.epochs_run,
            "best_val_acc": self.best_val_acc,
            "best_val_loss": self.best_val_loss,
            "best_epoch": self.best_epoch,
            "stopped_early": self.stopped_early,
            "stop_reason": self.stop_reason,
            "interrupted": self.interrupted,
            "pruned": self.pruned,
            "test_acc": self.test_acc,
            "test": self.test,  # the whole test report (per class, confusion matrix): repeats summarize it
            "history": [record.to_dict() for record in self.history],
            "checkpoint": str(self.checkpoint),
            "world_size": self.world_size,
            "compile_seconds": self.compile_seconds,
            "train_seconds": self.train_seconds,
            "reached_target": self.reached_target,
            "time_to_target_s": self.time_to_target_s,
            "run_id": self.run_id,
        }


@dataclass(frozen=True)
class RunStarted:
    total_epochs: int
    start_epoch: int  # 0-based epoch the loop starts at (> 0 when resuming)
    steps_per_epoch: int
    train_samples: int
    val_samples: int
    device: str
    loader: str
    amp_dtype: str | None
    channels_last: bool
    compiled: bool
    world_size: int = 1
    global_batch_size: int = 0  # per-process batch size x world size
    lr: float = 0.0  # the resolved peak rate (config.describe_lr says how it was derived)


@dataclass(frozen=True)
class StepFinished:
    epoch: int  # 1-based
    step: int  # 1-based within the epoch
    steps: int
    loss: float  # the step's mean loss over the global batch
    lr: float
    images_per_sec: float  # all processes together


@dataclass(frozen=True)
class EpochFinished:
    record: EpochRecord
    is_best: bool


Event = RunStarted | StepFinished | EpochFinished
EventHandler = Callable[[Event], None]


@dataclass
class StopRequest:
    """Asks the loop to stop after the current step; set outside the library, checked after every step."""

    signal_name: str | None = None  # the signal that asked (the CLI's handler): the run is interrupted
    pruned: bool = False  # a sweep's pruner asked: the trial is not worth finishing

    def request(self, signal_name: str) -> None:
        self.signal_name = signal_name

    def prune(self) -> None:
        self.pruned = True


# ----------------------------------------------------------------------------- the trainer


class Trainer:
    """One run's loop over the parts it is given, writing through the Checkpointer that holds the
    run folder (``checkpointer.open_run`` took it, and the checkpoint to resume from, if any;
    ``fit`` lets it go)."""

    def __init__(
        self,
        parts: RunParts,
        checkpointer: Checkpointer,
        *,
        on_event: EventHandler | None = None,
        stop: StopRequest | None = None,
    ) -> None:
        self.parts = parts
        self.cfg = cfg = parts.cfg
        self.checkpointer = checkpointer
        self.on_event = on_event or (lambda event: None)
        self.stop = stop or StopRequest()
        self.dist: DistEnv = parts.distributed
        self.device = parts.device
        self.classes = parts.classes
        self.steps_per_epoch = parts.steps_per_epoch
        stopping = cfg.early_stopping
        # The one record of the best epoch: best.pt follows it with or without early stopping (by
        # early stopping's min_delta when on), and early stopping consults it.
        self.monitor = Monitor(stopping.monitor, min_delta=stopping.min_delta if stopping.patience is not None else 0.0)
        self.early_stopping = (
            EarlyStopping(stopping.monitor, patience=stopping.patience, min_delta=stopping.min_delta, best=self.monitor)
            if stopping.patience is not None
            else None
        )
        self.state = RunState(parts, monitor=self.monitor, early_stopping=self.early_stopping)
        start = checkpointer.restore(self.state)  # epoch 0 of a fresh run, else where the checkpoint was taken
        self.history = [EpochRecord(**record) for record in start.history]
        self.start_epoch = start.epoch
        self.batches_done = start.batches_done  # in the epoch start_epoch, for a resume from an interrupted epoch
        # That epoch's running sums so far.
        self.partial_epoch = None if start.partial_epoch is None else dict(start.partial_epoch)
        self.compile_seconds = 0.0
        self.clock_started = time.perf_counter()  # reset after the compile warm-up in fit()
        self.train_seconds = 0.0
        self.time_to_target_s: float | None = None

    def _position(self, epoch: int, batches_done: int = 0, partial: dict[str, Any] | None = None) -> LoopPosition:
        """The loop's position for a checkpoint: ``epoch`` the 0-based epoch to continue with, and
        ``partial`` the running train loss/accuracy sums (all ranks together) of an epoch
        interrupted after ``batches_done`` steps (per rank)."""
        history = tuple(record.to_dict() for record in self.history)
        return LoopPosition(epoch=epoch, batches_done=batches_done, partial_epoch=partial, history=history)

    def _warm_up(self) -> float:
        """Before the training clock starts, the checkpoints' host buffers are allocated, and on
        CUDA or with --compile one step is taken on the first batch first: torch.compile compiles
        in it, and the buffers are then allocated from the state after it (the optimizer makes
        its state, the momentum, in its first step), so no epoch's checkpoint pays for either.
        After the step every bit of state is put back as it was (weights, optimizer, schedule,
        scaler, EMA, RNG, step count), so the run trains exactly as without it. Every rank takes
        the step (DDP's collectives). Returns the compilation's seconds (0 without --compile)."""
        compiling = self.cfg.precision.compile
        if not (compiling or self.device.type == "cuda"):
            # An eager CPU run is spared the extra step: its first checkpoint allocates only the
            # optimizer's state (the buffers' first use costs page faults, not pinning).
            self.checkpointer.prepare(self.state, self._position(self.start_epoch, self.batches_done))
            return 0.0
        started = time.perf_counter()
        saved = copy.deepcopy(self.state.state_dict(self._position(self.start_epoch, self.batches_done)))
        self.set_train_mode()
        train = self.parts.loaders.train
        train.set_epoch(self.start_epoch)
        images, labels = next(iter(train))
        self.parts.step(images, labels)
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        seconds = time.perf_counter() - started
        self.checkpointer.prepare(self.state, self._position(self.start_epoch, self.batches_done))
        self.state.load_state_dict(saved, "the warm-up's snapshot")
        return seconds if compiling else 0.0

    # -- the loop

    def _evaluate(self, loader, *, tta: bool = False) -> EvalResult:
        parts = self.parts
        eval_model = parts.eval_model
        # Every rank evaluates rank 0's model (the one in the checkpoints) on its own shard.
        self.dist.broadcast_buffers_(eval_model)
        return evaluate(
            eval_model,
            loader,
            num_classes=len(self.classes),
            autocast=parts.precision.autocast,
            loss_fn=parts.loss_fn,
            resize=parts.resize,
            reduce=self.dist.is_distributed,
            tta=tta,
        )

    def _agreed_stop(self, *, step: int | None = None) -> bool:
        """Whether to stop now: a signal any rank got, the same on every rank (see
        DistEnv.agree_on_stop; ``step`` spaces the agreement out inside an epoch), or the pruner
        of a (single-process) sweep."""
        agreed = self.dist.agree_on_stop(self.stop.signal_name, self.device, step=step)
        if agreed is not None and agreed != self.stop.signal_name:
            self.stop.request(agreed)  # another rank got a signal: this one stops, and reports, with it
        return agreed is not None or self.stop.pruned

    def _judge(self, record: EpochRecord) -> tuple[bool, bool, str | None]:
        """(is the epoch the best so far, should the run stop early, why). The monitor decides
        the first; early stopping, which updates and consults the same monitor, the others. An
        epoch without validation is neither."""
        if not record.validated:
            return False, False, None
        value = record.val_acc if self.monitor.metric == "val_acc" else record.val_loss
        if self.early_stopping is None:
            return self.monitor.update(value, epoch=record.epoch), False, None
        should_stop, reason = self.early_stopping.step(value, epoch=record.epoch)
        return self.monitor.best_epoch == record.epoch, should_stop, reason

    def set_train_mode(self) -> None:
        """Train mode for the module, except a frozen backbone's batch norms (engine/step.py)."""
        if self.cfg.model.freeze_backbone:
            set_train_mode(self.parts.module, frozen_backbone=True)
        else:
            self.parts.module.train()

    def _train_batches(self, epoch: int) -> Iterator[tuple[int, torch.Tensor, torch.Tensor]]:
        train = self.parts.loaders.train
        train.set_epoch(epoch)
        skip = self.batches_done if epoch == self.start_epoch else 0
        for index, (images, labels) in enumerate(train):
            if index < skip:
                continue  # already trained on before the interruption; the order is the same
            yield index, images, labels

    def _started(self) -> RunStarted:
        cfg, parts = self.cfg, self.parts
        train_samples, val_samples = self.dist.sum_numbers(
            [parts.loaders.train.num_samples, parts.loaders.val.num_samples], self.device
        )
        amp_dtype = parts.precision.amp_dtype
        return RunStarted(
            total_epochs=cfg.optim.epochs,
            start_epoch=self.start_epoch,
            steps_per_epoch=self.steps_per_epoch,
            train_samples=int(train_samples),
            val_samples=int(val_samples),
            device=str(self.device),
            loader=parts.loaders.kind,
            amp_dtype=None if amp_dtype is None else str(amp_dtype).removeprefix("torch."),
            channels_last=parts.precision.channels_last,
            compiled=cfg.precision.compile,
            world_size=self.dist.world_size,
            global_batch_size=cfg.data.batch_size * self.dist.world_size,
            lr=float(cfg.optim.lr or 0.0),  # always resolved: TrainConfig fills it
        )

    def fit(self) -> FitResult:
        """Train from the start (or the resumed epoch) to the end, an early stop, the target
        accuracy or a stop request. Pending checkpoint writes are finished before it returns or
        raises, so no run ends with a write in flight."""
        try:
            return self._fit()
        except BaseException:
            with contextlib.suppress(Exception):  # the first error is the one to report
                self.checkpointer.wait()
            raise
        finally:
            self.checkpointer.release()

    def _fit(self) -> FitResult:
        cfg = self.cfg
        # The run's files are written from here on, never before: a refused run changes nothing.
        self.checkpointer.start(cfg)
        # Rewritten from the history a resume restored: an epoch logged after that checkpoint was
        # taken (a crash between the two) must not appear twice.
        self._write_metrics()
        self.on_event(self._started())
        self.compile_seconds = self._warm_up()
        self.clock_started = time.perf_counter()
        stopped_early, stop_reason = False, None
        target = cfg.run.target_acc
        for epoch in range(self.start_epoch, cfg.optim.epochs):
            record = self._train_epoch(epoch)
            if record is None:  # stopped mid-epoch: resumable checkpoint written
                return self._finish(stopped_early=False, stop_reason=None, test=None)
            if not record.val_finite:
                self._diverged(record)
            is_best, should_stop, reason = self._judge(record)
            reached = record.validated and target is not None and record.val_acc >= target
            if reached:
                self.time_to_target_s = time.perf_counter() - self.clock_started
            self.history.append(record)
            final = epoch + 1 == cfg.optim.epochs or should_stop or reached
            blocked = self.checkpointer.save_epoch(self.state, self._position(epoch + 1), is_best=is_best, final=final)
            self.history[-1] = record = replace(record, checkpoint_seconds=blocked)
            self._write_metrics()
            self.on_event(EpochFinished(record=record, is_best=is_best))
            if should_stop:
                stopped_early, stop_reason = True, reason
                break
            if reached:
                stop_reason = f"val_acc {record.val_acc:.4f} reached the target {target:g} at epoch {record.epoch}"
                break
            if self._agreed_stop():  # a signal during validation, or the pruner: stop cleanly here
                self.checkpointer.save_stop(self.state, self._position(epoch + 1))
                return self._finish(stopped_early=False, stop_reason=None, test=None)
        self.train_seconds = time.perf_counter() - self.clock_started
        if self.early_stopping is not None:
            self.checkpointer.restore_best_weights(self.state)
        self.checkpointer.write_curves([record.to_dict() for record in self.history])
        test = self._evaluate(self.parts.loaders.test, tta=cfg.run.test_tta).to_dict(list(self.classes))
        # A signal that came after the last step does not stop a finished run, but the result
        # reports it (as in one process), and every rank must report the same.
        self._agreed_stop()
        return self._finish(stopped_early=stopped_early, stop_reason=stop_reason, test=test)

    def _diverged(self, record: EpochRecord) -> None:
        """A validation that gave a NaN or infinite loss: the epoch recorded as such, no checkpoint
        for it (the weights are the diverged ones), and the run ends with one line (every rank
        sees the same reduced loss, so all end together)."""
        record = replace(record, diverged=True)
        self.history.append(record)
        self._write_metrics()
        self.on_event(EpochFinished(record=record, is_best=False))
        raise NonFiniteValidationError(record, self.checkpointer.out_dir)

    def _write_metrics(self) -> None:
        self.checkpointer.write_metrics([record.to_dict() for record in self.history], METRIC_FIELDS)

    def _train_epoch(self, epoch: int) -> EpochRecord | None:
        self.set_train_mode()
        loss_sum = 0.0
        correct = torch.zeros((), dtype=torch.int64, device=self.device)
        seen = 0
        if epoch == self.start_epoch and self.partial_epoch is not None and self.dist.is_main:
            # Resuming inside this epoch: its metrics cover the steps before the interruption too.
            # The saved sums are all ranks' together, so only rank 0 adds them before the reduction.
            loss_sum += self.partial_epoch["loss_sum"]
            correct += self.partial_epoch["correct"]
            seen = int(self.partial_epoch["seen"])
        step, optimizer = self.parts.step, self.parts.optimizer
        seen_before = seen  # throughput counts only the images trained on since this process started
        world = self.dist.world_size
        started = time.perf_counter()
        for index, images, labels in self._train_batches(epoch):
            output = step(images, labels)
            batch = labels.shape[0]
            # The float the step already read: the one host sync of a step (engine/step.py).
            loss_sum += output.loss_value * batch
            correct += output.correct  # summed on the device, read once at the epoch's end
            seen += batch
            elapsed = max(time.perf_counter() - started, 1e-9)
            self.on_event(
                StepFinished(
                    epoch=epoch + 1,
                    step=index + 1,
                    steps=self.steps_per_epoch,
                    loss=output.loss_value,
                    lr=optimizer.param_groups[0]["lr"],
                    # Every rank trains the same number of equal batches in the same time.
                    images_per_sec=(seen - seen_before) * world / elapsed,
                )
            )
            if self._agreed_stop(step=index + 1):
                total_loss, total_correct, total_seen = self._summed(loss_sum, correct, seen)
                partial = {"loss_sum": total_loss, "correct": int(total_correct), "seen": int(total_seen)}
                self.checkpointer.save_stop(self.state, self._position(epoch, index + 1, partial))
                return None
        train_seconds = time.perf_counter() - started
        total_loss, total_correct, total_seen = self._summed(loss_sum, correct, seen)
        self.batches_done, self.partial_epoch = 0, None
        eval_started = time.perf_counter()
        # --eval-from K: the epochs before K train only (no validation: NaN metrics, val_count 0).
        # The last epoch always validates, so every run (any --epochs) has a best epoch.
        validate = epoch + 1 >= self.cfg.run.eval_from or epoch + 1 == self.cfg.optim.epochs
        val = self._evaluate(self.parts.loaders.val) if validate else None
        eval_seconds = time.perf_counter() - eval_started if val is not None else 0.0
        return EpochRecord(
            epoch=epoch + 1,
            train_loss=total_loss / max(total_seen, 1),
            train_acc=total_correct / max(total_seen, 1),
            val_loss=float(val.loss) if val is not None and val.loss is not None else math.nan,
            val_acc=val.accuracy if val is not None else math.nan,
            lr=optimizer.param_groups[0]["lr"],
            images_per_sec=(seen - seen_before) * world / max(train_seconds, 1e-9),
            epoch_seconds=time.perf_counter() - started,
            val_count=val.count if val is not None else 0,
            validated=val is not None,
            eval_seconds=eval_seconds,
        )

    def _summed(self, loss_sum: float, correct: torch.Tensor, seen: int) -> tuple[float, float, float]:
        """The epoch's train loss sum, hit count and sample count, summed over the ranks."""
        total_loss, total_correct, total_seen = self.dist.sum_numbers(
            [float(loss_sum), float(correct), float(seen)], self.device
        )
        return total_loss, total_correct, total_seen

    def _finish(self, *, stopped_early: bool, stop_reason: str | None, test: dict[str, Any] | None) -> FitResult:
        best = next((record for record in self.history if record.epoch == self.monitor.best_epoch), None)
        result = FitResult(
            out_dir=self.checkpointer.out_dir,
            epochs_run=len(self.history),
            best_val_acc=None if best is None else best.val_acc,
            best_val_loss=None if best is None else best.val_loss,
            best_epoch=None if best is None else best.epoch,
            stopped_early=stopped_early,
            stop_reason=stop_reason,
            interrupted=self.stop.signal_name,
            history=tuple(self.history),
            test=test,
            checkpoint=self.checkpointer.last,
            world_size=self.dist.world_size,
            compile_seconds=self.compile_seconds,
            train_seconds=self.train_seconds or time.perf_counter() - self.clock_started,
            reached_target=None if self.cfg.run.target_acc is None else self.time_to_target_s is not None,
            time_to_target_s=self.time_to_target_s,
            pruned=self.stop.pruned,
            run_id=self.checkpointer.run_id,
        )
        self.checkpointer.wait()  # every checkpoint is on disk before the run reports
        self.checkpointer.write_result(result.to_dict())
        return result


def build_trainer(
    cfg: TrainConfig,
    *,
    on_event: EventHandler | None = None,
    stop: StopRequest | None = None,
    distributed: DistEnv = SINGLE_PROCESS,
    resume: ResumeCheckpoint | None = None,
) -> Trainer:
    """A Trainer over the parts built from ``cfg``, holding its run folder: the folder is taken and
    the run's start checked (a fresh run, or a resume's settings and process count) before
    anything is built, so a refused run costs nothing and changes nothing. ``resume``: the
    checkpoint ``cfg.run.resume`` names, when the caller has read it already (the CLI does, for
    its settings). Under torchrun, pass the job's DistEnv and call it inside
    resnet_cifar.distributed.process_group.

    The data folder is recorded as an absolute path (config.toml, checkpoints), so ``eval`` from
    another folder scores the data the run trained on, not whatever the relative path names there."""
    data_dir = Path(cfg.data.data_dir).expanduser().absolute()
    if data_dir != cfg.data.data_dir:
        cfg = replace(cfg, data=replace(cfg.data, data_dir=data_dir))
    checkpointer = Checkpointer(cfg.run.out_dir, is_main=distributed.is_main, every=cfg.run.checkpoint_every)
    checkpointer.open_run(cfg, world_size=distributed.world_size, resume=resume, job=distributed)
    try:
        parts = build_run(cfg, distributed=distributed)
        return Trainer(parts, checkpointer, on_event=on_event, stop=stop)
    except BaseException:
        checkpointer.release()
        raise


def train(
    cfg: TrainConfig,
    *,
    on_event: EventHandler | None = None,
    stop: StopRequest | None = None,
    distributed: DistEnv = SINGLE_PROCESS,
) -> FitResult:
    """Build a run from ``cfg`` and train it; the library's one-call entry point (see build_trainer)."""
    return build_trainer(cfg, on_event=on_event, stop=stop, distributed=distributed).fit()


__all__ = [
    "EpochFinished",
    "EpochRecord",
    "Event",
    "FitResult",
    "NonFiniteValidationError",
    "RunStarted",
    "StepFinished",
    "StopRequest",
    "Trainer",
    "build_trainer",
    "train",
]
