"""The epoch loop over a run's parts: train, validate, checkpoint, return values.

Nothing here prints or builds. ``build_run`` (engine/build.py) turns the config into the run's
parts; the per-step work (forward, loss, backward, clip, optimizer and scheduler step) lives in
engine/step.py; the run folder belongs to the Checkpointer (engine/checkpointer.py). Progress goes
out as events to an optional callback (the CLI renders them), and the outcome comes back as a
FitResult. This module owns the order of things:

    for each epoch: train (TrainStep per batch) -> validate -> metrics files -> best epoch and
                    early stopping -> last.pt (and best.pt when the monitored metric improved)

Checkpoints hold everything a resume needs (see engine/checkpointer.py), so `resume` continues
exactly where the checkpoint was taken: the loaders' order and augmentation depend only on
(seed, epoch), and the RNG states cover dropout.

A stop request (the CLI's SIGTERM/SIGINT handler sets it) is honoured after the current step
(under torchrun within STOP_AGREEMENT_STEPS steps, when the ranks agree on it):
a resumable last.pt is written and the result says which signal stopped the run. A non-finite
loss raises NonFiniteLossError before any update, and no checkpoint is written after it, so the
last good last.pt/best.pt stay as they were.

Multi-process (DDP) training: give the Trainer the job's DistEnv, inside a started process group
(resnet_cifar.distributed.process_group). Each rank trains on its own disjoint slice of every
epoch's permutation (``--batch-size`` is per process) with the model wrapped in
DistributedDataParallel after compilation, and evaluates its own shard of the validation and test
sets; the confusion matrices, loss sums and train sums are summed over the ranks, so every rank
sees the global metrics and takes the same early-stopping decision. The non-finite-loss check
(the loss's all-reduce, every step) and the stop request (every few steps and at each epoch's end,
resnet_cifar.distributed.STOP_AGREEMENT_STEPS) are agreed on by all ranks, so no rank is left
waiting in a collective. Only rank 0 writes files; checkpoints hold the unwrapped module's
state, rank 0's RNG state and every rank's (for an exact resume), and resume with the same number
of processes.
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
from resnet_cifar.data import Loaders
from resnet_cifar.distributed import SINGLE_PROCESS, DistEnv
from resnet_cifar.engine.build import RunParts, build_run
from resnet_cifar.engine.checkpoint import capture_rng_state, restore_rng_state
from resnet_cifar.engine.checkpoint import describe_mismatch
from resnet_cifar.engine.checkpointer import (
    BEST,
    LAST,
    BestTracker,
    Checkpointer,
    check_resume_settings,
    read_resume_checkpoint,
    stored_config,
)
from resnet_cifar.engine.early_stopping import EarlyStopping
from resnet_cifar.errors import DataError, UsageError
from resnet_cifar.evaluation import EvalResult, evaluate
from resnet_cifar.files import first_line
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
)


# The EpochRecord fields that are wall-clock measurements: they differ between any two runs, even
# a run and its bit-exact resume.
TIMING_FIELDS = ("images_per_sec", "epoch_seconds", "eval_seconds", "checkpoint_seconds")


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
    validated: bool = True  # False for an epoch before --eval-from (its val metrics are NaN)
    eval_seconds: float = 0.0  # the validation pass
    checkpoint_seconds: float = 0.0  # the loop was blocked by checkpointing (snapshot + waiting for a write)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class FitResult:
    out_dir: Path
    epochs_run: int
    best_val_acc: float | None
    best_val_loss: float | None
    best_epoch: int | None
    stopped_early: bool
    stop_reason: str | None
    interrupted: str | None  # the signal name that stopped the run, if any
    history: tuple[EpochRecord, ...]
    test: dict[str, Any] | None  # the final model's test report (never used for selection)
    checkpoint: Path
    world_size: int = 1  # processes that trained the run together
    compile_seconds: float = 0.0  # the warm-up step with torch.compile, before the training clock (0 eager)
    train_seconds: float = 0.0  # the loop's wall time: training, validation and checkpointing
    reached_target: bool | None = None  # --target-acc: whether validation reached it (None: no target)
    time_to_target_s: float | None = None  # training seconds (validations included) until it did

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
            "test_acc": self.test_acc,
            "history": [record.to_dict() for record in self.history],
            "checkpoint": str(self.checkpoint),
            "world_size": self.world_size,
            "compile_seconds": self.compile_seconds,
            "train_seconds": self.train_seconds,
            "reached_target": self.reached_target,
            "time_to_target_s": self.time_to_target_s,
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
    """Set by a signal handler (outside the library); checked after every step."""

    signal_name: str | None = None

    def request(self, signal_name: str) -> None:
        self.signal_name = signal_name


# ----------------------------------------------------------------------------- the trainer


class Trainer:
    """One run's loop over its parts (``build_run``), writing through its Checkpointer."""

    def __init__(
        self,
        cfg: TrainConfig,
        *,
        on_event: EventHandler | None = None,
        stop: StopRequest | None = None,
        loaders: Loaders | None = None,
        distributed: DistEnv = SINGLE_PROCESS,
        checkpointer: Checkpointer | None = None,
    ) -> None:
        self.cfg = cfg
        self.on_event = on_event or (lambda event: None)
        self.stop = stop or StopRequest()
        self.dist = distributed
        self.is_main = distributed.is_main
        self.out_dir = cfg.run.out_dir
        self.checkpointer = checkpointer or Checkpointer(self.out_dir, is_main=distributed.is_main)
        # The run folder is this process's from here to the end of fit() (or of a failed start).
        self.checkpointer.acquire()
        try:
            self._set_up(cfg, loaders, distributed)
        except BaseException:
            self.checkpointer.release()
            raise

    def _set_up(self, cfg: TrainConfig, loaders: Loaders | None, distributed: DistEnv) -> None:
        resume = cfg.run.resume
        if resume is None:
            self.checkpointer.check_new_run()
        checkpoint = read_resume_checkpoint(resume) if resume else None
        if checkpoint is not None:
            # Before any data or model is built: a refused resume costs nothing and changes nothing.
            check_resume_settings(cfg, stored_config(checkpoint, resume), resume)
            saved_world = int(checkpoint.get("world_size", 1))
            if saved_world != distributed.world_size:
                # Steps per epoch, the schedule's length and the data shards all depend on it.
                how = f"torchrun --nproc_per_node {saved_world}" if saved_world > 1 else "a single process"
                raise UsageError(
                    f"{resume} was trained by {saved_world} process(es), not {distributed.world_size}; "
                    f"resume it with {how}"
                )
        self.parts: RunParts = build_run(cfg, loaders=loaders, distributed=distributed)
        self.device = self.parts.device
        self.classes = self.parts.classes
        self.steps_per_epoch = self.parts.steps_per_epoch
        stopping = cfg.early_stopping
        self.early_stopping = (
            EarlyStopping(stopping.monitor, patience=stopping.patience, min_delta=stopping.min_delta)
            if stopping.patience is not None
            else None
        )
        # best.pt follows the monitored metric with or without early stopping (by its min_delta when on).
        self.best = BestTracker(stopping.monitor, min_delta=stopping.min_delta if self.early_stopping else 0.0)
        self.history: list[EpochRecord] = []
        self.start_epoch = 0
        self.batches_done = 0  # in the epoch start_epoch, for a resume from an interrupted epoch
        self.partial_epoch: dict[str, Any] | None = None  # that epoch's running sums so far
        self.compile_seconds = 0.0
        self.clock_started = time.perf_counter()  # reset after the compile warm-up in fit()
        self.train_seconds = 0.0
        self.time_to_target_s: float | None = None
        if checkpoint is not None:
            self._restore(checkpoint, resume)

    # -- checkpoints

    def _payload(
        self,
        *,
        epoch: int,
        batches_done: int,
        partial: dict[str, Any] | None = None,
        rng_by_rank: list[Any] | None = None,
    ) -> dict[str, Any]:
        """The loop's state for a checkpoint (engine/checkpointer.py lists the keys); `epoch` is
        the 0-based epoch to continue with, and `partial` the running train loss/accuracy sums (all
        ranks together) of an epoch interrupted after `batches_done` steps (per rank)."""
        parts = self.parts
        return {
            "model": parts.module.state_dict(),
            "ema": parts.ema.state_dict() if parts.ema is not None else None,
            "optimizer": parts.optimizer.state_dict(),
            "scheduler": parts.scheduler.state_dict(),
            "scaler": parts.scaler.state_dict(),
            "best": self.best.state_dict(),
            "early_stopping": self.early_stopping.state_dict() if self.early_stopping is not None else None,
            "rng": capture_rng_state(),
            "rng_by_rank": rng_by_rank,
            "world_size": self.dist.world_size,
            "epoch": epoch,
            "batches_done_in_epoch": batches_done,
            "partial_epoch": partial,
            "global_step": parts.step.global_step,
            "loader_seed": self.cfg.data.seed,
            "history": [record.to_dict() for record in self.history],
            "classes": list(self.classes),
            "config": self.cfg.to_dict(),
            "pretrained": parts.pretrained,  # name, file and sha256 of the starting weights, or None
        }

    def _restore(self, checkpoint: dict[str, Any], path: Path) -> None:
        if checkpoint.get("loader_seed") != self.cfg.data.seed:
            raise UsageError(f"{path} was trained with data seed {checkpoint.get('loader_seed')}, not {self.cfg.data.seed}")
        if list(checkpoint.get("classes", [])) != list(self.classes):
            raise DataError(f"{path} was trained on classes {checkpoint.get('classes')}, not {list(self.classes)}")
        self._load_state(checkpoint, path)
        self.start_epoch = int(checkpoint["epoch"])
        self.batches_done = int(checkpoint["batches_done_in_epoch"])
        self.partial_epoch = checkpoint.get("partial_epoch")
        self.history = [EpochRecord(**record) for record in checkpoint["history"]]

    def _load_state(self, checkpoint: dict[str, Any], path: Path | str) -> None:
        """The weights, optimizer, schedule, scaler, EMA, best/early-stopping progress, RNG states
        and step count of ``checkpoint``."""
        parts = self.parts
        mismatch = describe_mismatch(parts.module.state_dict(), checkpoint["model"])
        if mismatch:
            saved = checkpoint["config"].get("model", {}) if isinstance(checkpoint.get("config"), dict) else {}
            raise DataError(
                f"{path} does not match this model (expected depth {self.cfg.model.depth}, the checkpoint has "
                f"depth {saved.get('depth', 'unknown')}; {mismatch})"
            )
        try:
            parts.module.load_state_dict(checkpoint["model"])
            parts.optimizer.load_state_dict(checkpoint["optimizer"])
            parts.scheduler.load_state_dict(checkpoint["scheduler"])
            parts.scaler.load_state_dict(checkpoint["scaler"])
            if parts.ema is not None:
                if checkpoint.get("ema") is None:
                    raise UsageError(f"{path} has no EMA weights; resume without --ema")
                parts.ema.load_state_dict(checkpoint["ema"])
            self.best.load_state_dict(checkpoint["best"])
            if self.early_stopping is not None and checkpoint.get("early_stopping") is not None:
                self.early_stopping.load_state_dict(checkpoint["early_stopping"])
        except (RuntimeError, KeyError, ValueError) as error:
            raise DataError(f"{path} does not match this configuration: {first_line(error)}") from None
        by_rank = checkpoint.get("rng_by_rank")
        restore_rng_state(by_rank[self.dist.rank] if by_rank else checkpoint["rng"])
        parts.step.global_step = int(checkpoint["global_step"])

    def _save(
        self,
        names: list[str],
        *,
        epoch: int,
        batches_done: int,
        partial: dict[str, Any] | None = None,
        stamp: bool = False,
    ) -> float:
        """Checkpoint to ``names`` from rank 0, in the background; every rank must call it (it
        gathers the RNG states). Returns the seconds the loop was blocked; ``stamp`` records them
        in the checkpoint's copy of the last epoch record too."""
        if not names:
            return 0.0
        rng_by_rank = self.dist.gather_objects(capture_rng_state()) if self.dist.is_distributed else None
        if not self.is_main:
            return 0.0
        payload = self._payload(epoch=epoch, batches_done=batches_done, partial=partial, rng_by_rank=rng_by_rank)
        return self.checkpointer.save(names, payload, stamp_last_record=stamp)

    def _warm_up(self) -> float:
        """Before the training clock starts, one step on the first batch: torch.compile compiles
        in it, and the checkpointer allocates its snapshot buffers from the state after it (the
        optimizer makes its state in its first step), so no epoch's checkpoint pays for either.
        Then every bit of state is put back as it was (weights, optimizer, schedule, scaler, EMA,
        RNG, step count), so the run trains exactly as without it. Returns the compilation's
        seconds (0 without --compile). Every rank takes the step (DDP's collectives)."""
        compiling = self.cfg.precision.compile
        if not (compiling or self.checkpointer.keep_checkpoints):
            return 0.0
        started = time.perf_counter()
        saved = copy.deepcopy(self._payload(epoch=self.start_epoch, batches_done=self.batches_done))
        self.set_train_mode()
        train = self.parts.loaders.train
        train.set_epoch(self.start_epoch)
        images, labels = next(iter(train))
        self.parts.step(images, labels)
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        seconds = time.perf_counter() - started
        if self.is_main:
            self.checkpointer.prepare(self._payload(epoch=self.start_epoch, batches_done=self.batches_done))
        self._load_state(saved, "the warm-up's snapshot")
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
            transform=parts.resize,
            reduce=self.dist.is_distributed,
            tta=tta,
        )

    def _agreed_stop(self, *, step: int | None = None) -> str | None:
        """The job's stop request, the same on every rank (see DistEnv.agree_on_stop; ``step``
        spaces the agreement out inside an epoch)."""
        agreed = self.dist.agree_on_stop(self.stop.signal_name, self.device, step=step)
        if agreed is not None and agreed != self.stop.signal_name:
            self.stop.request(agreed)  # another rank got a signal: this one stops, and reports, with it
        return agreed

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
            if record is None:  # interrupted by a signal: resumable checkpoint written
                return self._finish(stopped_early=False, stop_reason=None, test=None)
            validated = record.validated
            monitored = record.val_acc if self.best.monitor == "val_acc" else record.val_loss
            is_best = validated and self.best.update(monitored, epoch=record.epoch)
            should_stop, reason = False, None
            if validated and self.early_stopping is not None:
                should_stop, reason = self.early_stopping.step(monitored, epoch=record.epoch)
            reached = validated and target is not None and record.val_acc >= target
            if reached:
                self.time_to_target_s = time.perf_counter() - self.clock_started
            last_epoch = epoch + 1 == cfg.optim.epochs or should_stop or reached
            names = [LAST] if (epoch + 1) % cfg.run.checkpoint_every == 0 or last_epoch else []
            self.history.append(record)
            blocked = self._save(names + ([BEST] if is_best else []), epoch=epoch + 1, batches_done=0, stamp=True)
            self.history[-1] = record = replace(record, checkpoint_seconds=blocked)
            self._write_metrics()
            self.on_event(EpochFinished(record=record, is_best=is_best))
            if should_stop:
                stopped_early, stop_reason = True, reason
                break
            if reached:
                stop_reason = f"val_acc {record.val_acc:.4f} reached the target {target:g} at epoch {record.epoch}"
                break
            if self._agreed_stop() is not None:  # a signal during validation: stop cleanly here
                if not names:  # this epoch wrote no last.pt: write it now, resumable from here
                    self._save([LAST], epoch=epoch + 1, batches_done=0)
                return self._finish(stopped_early=False, stop_reason=None, test=None)
        self.train_seconds = time.perf_counter() - self.clock_started
        if self.early_stopping is not None:
            self.dist.barrier()  # rank 0 has finished writing best.pt before any rank looks for it
            if self.checkpointer.has(BEST):
                self._load_best_weights()
        self.checkpointer.write_curves([record.to_dict() for record in self.history])
        test = self._evaluate(self.parts.loaders.test, tta=cfg.run.test_tta).to_dict(list(self.classes))
        # A signal that came after the last step does not stop a finished run, but the result
        # reports it (as in one process), and every rank must report the same.
        self._agreed_stop()
        return self._finish(stopped_early=stopped_early, stop_reason=stop_reason, test=test)

    def _write_metrics(self) -> None:
        self.checkpointer.write_metrics([record.to_dict() for record in self.history], METRIC_FIELDS)

    def _train_epoch(self, epoch: int) -> EpochRecord | None:
        self.set_train_mode()
        loss_sum = 0.0
        correct = torch.zeros((), dtype=torch.int64, device=self.device)
        seen = 0
        if epoch == self.start_epoch and self.partial_epoch is not None and self.is_main:
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
            if self._agreed_stop(step=index + 1) is not None:
                total_loss, total_correct, total_seen = self._summed(loss_sum, correct, seen)
                partial = {"loss_sum": total_loss, "correct": int(total_correct), "seen": int(total_seen)}
                self._save([LAST], epoch=epoch, batches_done=index + 1, partial=partial)
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

    def _load_best_weights(self) -> None:
        best = self.checkpointer.load(BEST)
        parts = self.parts
        parts.module.load_state_dict(best["model"])
        if parts.ema is not None and best.get("ema") is not None:
            parts.ema.load_state_dict(best["ema"])

    def _finish(self, *, stopped_early: bool, stop_reason: str | None, test: dict[str, Any] | None) -> FitResult:
        best = next((record for record in self.history if record.epoch == self.best.best_epoch), None)
        result = FitResult(
            out_dir=self.out_dir,
            epochs_run=len(self.history),
            best_val_acc=None if best is None else best.val_acc,
            best_val_loss=None if best is None else best.val_loss,
            best_epoch=None if best is None else best.epoch,
            stopped_early=stopped_early,
            stop_reason=stop_reason,
            interrupted=self.stop.signal_name,
            history=tuple(self.history),
            test=test,
            checkpoint=self.checkpointer.path(LAST),
            world_size=self.dist.world_size,
            compile_seconds=self.compile_seconds,
            train_seconds=self.train_seconds or time.perf_counter() - self.clock_started,
            reached_target=None if self.cfg.run.target_acc is None else self.time_to_target_s is not None,
            time_to_target_s=self.time_to_target_s,
        )
        self.checkpointer.wait()  # every checkpoint is on disk before the run reports
        self.checkpointer.write_result(result.to_dict())
        return result


def train(
    cfg: TrainConfig,
    *,
    on_event: EventHandler | None = None,
    stop: StopRequest | None = None,
    distributed: DistEnv = SINGLE_PROCESS,
) -> FitResult:
    """Build a run from `cfg` and train it; the library's one-call entry point. Under torchrun,
    pass the job's DistEnv and call it inside resnet_cifar.distributed.process_group."""
    return Trainer(cfg, on_event=on_event, stop=stop, distributed=distributed).fit()


__all__ = [
    "EpochFinished",
    "EpochRecord",
    "Event",
    "FitResult",
    "RunStarted",
    "StepFinished",
    "StopRequest",
    "Trainer",
    "train",
]
