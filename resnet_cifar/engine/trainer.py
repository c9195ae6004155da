"""The epoch loop: build everything from one TrainConfig, train, validate, checkpoint, return values.

Nothing here prints. Progress goes out as events to an optional callback (the CLI renders them),
and the outcome comes back as a FitResult. The per-step work (forward, loss, backward, clip,
optimizer and scheduler step) lives in engine/step.py; this module owns the order of things
around it:

    for each epoch: train (TrainStep per batch) -> validate -> metrics files -> early stopping
                    -> last.pt (and best.pt when the monitored metric improved)

Checkpoints hold everything a resume needs (model, optimizer, scheduler, scaler, EMA,
early stopping, RNG states, epoch and batches done, the loader seed, the history and the
config as plain types), so `resume` continues exactly where the checkpoint was taken: the
loaders' order and augmentation depend only on (seed, epoch), and the RNG states cover dropout.

A stop request (the CLI's SIGTERM/SIGINT handler sets it) is honoured after the current step:
a resumable last.pt is written and the result says which signal stopped the run. A non-finite
loss raises NonFiniteLossError before any update, and no checkpoint is written after it, so the
last good last.pt/best.pt stay as they were.

Multi-process (DDP) training: give the Trainer the job's DistEnv, inside a started process group
(resnet_cifar.distributed.process_group). Each rank trains on its own disjoint slice of every
epoch's permutation (``--batch-size`` is per process) with the model wrapped in
DistributedDataParallel after compilation, and evaluates its own shard of the validation and test
sets; the confusion matrices, loss sums and train sums are summed over the ranks, so every rank
sees the global metrics and takes the same early-stopping decision. The stop request and the
non-finite-loss check are agreed on by all ranks (one tiny all-reduce each per step), so no rank is
left waiting in a collective. Only rank 0 writes files; checkpoints hold the unwrapped module's
state, rank 0's RNG state and every rank's (for an exact resume), and resume with the same number
of processes.
"""

from __future__ import annotations

import csv
import io
import json
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from resnet_cifar.config import TrainConfig
from resnet_cifar.data import Loaders, build_loaders
from resnet_cifar.distributed import SINGLE_PROCESS, DistEnv, sync_batchnorm
from resnet_cifar.engine.checkpoint import capture_rng_state, load_checkpoint, restore_rng_state, save_checkpoint
from resnet_cifar.engine.early_stopping import EarlyStopping
from resnet_cifar.engine.optim import build_optimizer, build_scheduler
from resnet_cifar.engine.precision import (
    Precision,
    configure_determinism,
    make_grad_scaler,
    prepare_model,
    resolve_precision,
    select_device,
    unwrap_model,
)
from resnet_cifar.engine.step import LossFn, TrainStep, build_ema, build_loss
from resnet_cifar.errors import DataError, UsageError
from resnet_cifar.evaluation import EvalResult, evaluate
from resnet_cifar.evaluation.plots import atomic_write, plot_training_curves
from resnet_cifar.files import first_line
from resnet_cifar.models import RESNET_BUILDERS, freeze_backbone, load_pretrained, resize_batch, set_train_mode

CHECKPOINT_FORMAT = 1
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
    epoch_seconds: float
    val_count: int = 0  # validation images the val metrics cover (all processes together)

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


# ----------------------------------------------------------------------------- builders


def build_model(cfg: TrainConfig, num_classes: int) -> tuple[nn.Module, str | None]:
    """The configured ResNet with its pretrained weights and frozen parts; returns (model, load note)."""
    model_cfg = cfg.model
    model = RESNET_BUILDERS[model_cfg.depth](
        num_classes=num_classes,
        stem=model_cfg.stem,
        dropout=model_cfg.dropout,
        zero_init_residual=model_cfg.zero_init_residual,
    )
    note = None
    if model_cfg.pretrained is not None:
        report = load_pretrained(model, model_cfg.pretrained, reinit_conv1=model_cfg.reinit_conv1)
        note = f"loaded {report.loaded} tensors from {report.source}"
    if model_cfg.freeze_backbone:
        freeze_backbone(model)
    return model, note


class _GlobalMeanLoss:
    """The loss whose *value* is the mean over all ranks and whose *gradient* is the local loss's.

    Every rank then sees the same number, so the step's non-finite check raises on all ranks
    together (never one rank leaving while the others wait in the gradient all-reduce), and the
    logged loss is the global batch's. DDP averages the gradients itself.
    """

    def __init__(self, loss_fn: LossFn, dist: DistEnv) -> None:
        self.loss_fn = loss_fn
        self.dist = dist

    def __call__(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        loss = self.loss_fn(logits, labels)
        mean = self.dist.all_reduce_sum_(loss.detach().float().clone()) / self.dist.world_size
        return loss + (mean - loss.detach())


def _scheduler_for(cfg: TrainConfig, optimizer: torch.optim.Optimizer, steps_per_epoch: int):
    optim = cfg.optim
    onecycle = optim.schedule == "onecycle"
    return build_scheduler(
        optimizer,
        name=optim.schedule,
        epochs=optim.epochs,
        steps_per_epoch=steps_per_epoch,
        step_size=optim.step_size,
        gamma=optim.gamma,
        milestones=optim.milestones,
        # One-cycle ramps up by itself: its rising phase is the configured warm-up.
        warmup_epochs=0.0 if onecycle else optim.warmup_epochs,
        onecycle_pct_start=(optim.warmup_epochs / optim.epochs) if onecycle and optim.warmup_epochs > 0 else 0.25,
        min_lr_ratio=optim.min_lr_ratio,
    )


# ----------------------------------------------------------------------------- the trainer


class Trainer:
    """Owns one run: its components, its output folder and its epoch loop."""

    def __init__(
        self,
        cfg: TrainConfig,
        *,
        on_event: EventHandler | None = None,
        stop: StopRequest | None = None,
        loaders: Loaders | None = None,
        distributed: DistEnv = SINGLE_PROCESS,
    ) -> None:
        self.cfg = cfg
        self.on_event = on_event or (lambda event: None)
        self.stop = stop or StopRequest()
        self.dist = distributed
        self.is_main = distributed.is_main
        self.out_dir = cfg.run.out_dir
        resume = cfg.run.resume
        if resume is None and (self.out_dir / "last.pt").exists():
            raise UsageError(
                f"{self.out_dir} already holds a run (last.pt); use --resume {self.out_dir / 'last.pt'} or another --out"
            )
        checkpoint = load_checkpoint(resume, require=("model", "optimizer", "epoch", "config")) if resume else None
        if checkpoint is not None:
            saved_world = int(checkpoint.get("world_size", 1))
            if saved_world != distributed.world_size:
                # Steps per epoch, the schedule's length and the data shards all depend on it.
                how = f"torchrun --nproc_per_node {saved_world}" if saved_world > 1 else "a single process"
                raise UsageError(
                    f"{resume} was trained by {saved_world} process(es), not {distributed.world_size}; "
                    f"resume it with {how}"
                )

        self.device = distributed.place(select_device(cfg.precision.device))
        # Rank 0 draws what a single process would; the others get their own dropout masks.
        # (The initial weights are rank 0's everywhere: DDP broadcasts them.)
        configure_determinism(cfg.precision.deterministic, cfg.run.seed + distributed.rank)
        bf16_ok = self.device.type != "cuda" or torch.cuda.is_bf16_supported()
        amp = cfg.precision.use_amp(self.device.type, bf16_supported=bf16_ok)
        self.precision: Precision = resolve_precision(
            self.device,
            amp=amp,
            amp_dtype=cfg.precision.amp_dtype,
            channels_last=cfg.precision.use_channels_last(self.device.type, amp=amp),
        )
        # Batches arrive in the autocast dtype: half the bytes to move, and the first conv would
        # cast them anyway.
        batch_dtype = self.precision.amp_dtype or torch.float32
        if loaders is None:
            # Rank 0 first: it fills the decoded-image cache that the other ranks then read.
            with distributed.main_first():
                loaders = build_loaders(
                    cfg.data,
                    self.device,
                    dtype=batch_dtype,
                    channels_last=self.precision.channels_last,
                    shard_id=distributed.rank,
                    num_shards=distributed.world_size,
                )
        self.loaders = loaders
        self.classes = self.loaders.classes
        model, self.pretrained_note = build_model(cfg, len(self.classes))
        if cfg.model.sync_bn:
            model = sync_batchnorm(model, distributed, self.device)
        # `self.model` may be a torch.compile wrapper, and under DDP the DistributedDataParallel
        # wrapper around it (compiled first, as PyTorch recommends); `self.module` is the plain
        # module under both, used for state dicts, EMA and evaluation (so evaluation never
        # recompiles the train graph and runs no collective per batch).
        self.model = prepare_model(model, self.precision, compile=cfg.precision.compile)
        if distributed.is_distributed:
            # Broadcasts rank 0's weights and buffers, so every rank starts from the same model.
            self.model = nn.parallel.DistributedDataParallel(
                self.model,
                device_ids=[self.device.index] if self.device.type == "cuda" else None,
                gradient_as_bucket_view=True,
            )
        self.module = unwrap_model(self.model)
        optim = cfg.optim
        self.lr = cfg.optim.lr
        self.optimizer = build_optimizer(
            self.module,
            name=optim.optimizer,
            lr=self.lr,
            momentum=optim.momentum,
            nesterov=optim.nesterov,
            weight_decay=optim.weight_decay,
            decay_norm_and_bias=optim.decay_norm_and_bias,
            backbone_lr_mult=cfg.model.backbone_lr_mult,
        )
        self.steps_per_epoch = len(self.loaders.train)
        self.scheduler = _scheduler_for(cfg, self.optimizer, self.steps_per_epoch)
        self.scaler = make_grad_scaler(self.precision)
        self.ema = build_ema(self.module, optim.ema_decay) if optim.ema else None
        self.loss_fn = build_loss(optim.label_smoothing)
        self.step = TrainStep(
            self.model,
            self.optimizer,
            _GlobalMeanLoss(self.loss_fn, distributed) if distributed.is_distributed else self.loss_fn,
            precision=self.precision,
            scaler=self.scaler,
            scheduler=self.scheduler,
            grad_clip=optim.grad_clip,
            ema=self.ema,
            transform=self._resize if cfg.model.image_size is not None else None,
        )
        stopping = cfg.early_stopping
        self.early_stopping = (
            EarlyStopping(stopping.monitor, patience=stopping.patience, min_delta=stopping.min_delta)
            if stopping.patience is not None
            else None
        )
        # Without early stopping, "best" still follows the monitored metric, for best.pt.
        self.best_tracker = self.early_stopping or EarlyStopping(stopping.monitor, patience=2**31 - 1)
        self.history: list[EpochRecord] = []
        self.start_epoch = 0
        self.batches_done = 0  # in the epoch start_epoch, for a resume from an interrupted epoch
        self.partial_epoch: dict[str, Any] | None = None  # that epoch's running sums so far
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
        """Everything a resume needs; `epoch` is the 0-based epoch to continue with, and `partial`
        the running train loss/accuracy sums (all ranks together) of an epoch interrupted after
        `batches_done` steps (per rank)."""
        return {
            "format": CHECKPOINT_FORMAT,
            "model": self.module.state_dict(),
            "ema": self.ema.state_dict() if self.ema is not None else None,
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "early_stopping": self.best_tracker.state_dict(),
            "rng": capture_rng_state(),
            # Every rank's RNG state in rank order (dropout differs per rank); None in one process.
            "rng_by_rank": rng_by_rank,
            "world_size": self.dist.world_size,
            "epoch": epoch,
            "batches_done_in_epoch": batches_done,
            "partial_epoch": partial,
            "global_step": self.step.global_step,
            "loader_seed": self.cfg.data.seed,
            "history": [record.to_dict() for record in self.history],
            "classes": list(self.classes),
            "config": self.cfg.to_dict(),
        }

    def _restore(self, checkpoint: dict[str, Any], path: Path) -> None:
        if checkpoint.get("loader_seed") != self.cfg.data.seed:
            raise UsageError(f"{path} was trained with data seed {checkpoint.get('loader_seed')}, not {self.cfg.data.seed}")
        if list(checkpoint.get("classes", [])) != list(self.classes):
            raise DataError(f"{path} was trained on classes {checkpoint.get('classes')}, not {list(self.classes)}")
        try:
            self.module.load_state_dict(checkpoint["model"])
            self.optimizer.load_state_dict(checkpoint["optimizer"])
            self.scheduler.load_state_dict(checkpoint["scheduler"])
            self.scaler.load_state_dict(checkpoint["scaler"])
            if self.ema is not None:
                if checkpoint.get("ema") is None:
                    raise UsageError(f"{path} has no EMA weights; resume without --ema")
                self.ema.load_state_dict(checkpoint["ema"])
            self.best_tracker.load_state_dict(checkpoint["early_stopping"])
        except (RuntimeError, KeyError, ValueError) as error:
            raise DataError(f"{path} does not match this configuration: {first_line(error)}") from None
        by_rank = checkpoint.get("rng_by_rank")
        restore_rng_state(by_rank[self.dist.rank] if by_rank else checkpoint["rng"])
        self.step.global_step = int(checkpoint["global_step"])
        self.start_epoch = int(checkpoint["epoch"])
        self.batches_done = int(checkpoint["batches_done_in_epoch"])
        self.partial_epoch = checkpoint.get("partial_epoch")
        self.history = [EpochRecord(**record) for record in checkpoint["history"]]
        # The metric files are rewritten from the checkpoint's history: an epoch logged after the
        # checkpoint was taken (a crash between the two) must not appear twice.
        self._rewrite_metric_files()

    def _save(self, name: str, *, epoch: int, batches_done: int, partial: dict[str, Any] | None = None) -> Path:
        """Write a checkpoint from rank 0; every rank must call it (it gathers the RNG states)."""
        path = self.out_dir / name
        rng_by_rank = self.dist.gather_objects(capture_rng_state()) if self.dist.is_distributed else None
        if self.is_main:
            payload = self._payload(epoch=epoch, batches_done=batches_done, partial=partial, rng_by_rank=rng_by_rank)
            save_checkpoint(path, payload)
        return path

    # -- metric files

    def _rewrite_metric_files(self) -> None:
        if not self.is_main:
            return
        self.out_dir.mkdir(parents=True, exist_ok=True)
        lines = "".join(json.dumps(record.to_dict()) + "\n" for record in self.history)
        atomic_write(self.out_dir / "metrics.jsonl", lambda handle: handle.write(lines.encode()))
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=METRIC_FIELDS)
        writer.writeheader()
        for record in self.history:
            writer.writerow(record.to_dict())
        atomic_write(self.out_dir / "metrics.csv", lambda handle: handle.write(buffer.getvalue().encode()))

    # -- the loop

    def _evaluate(self, loader) -> EvalResult:
        eval_model = self.ema.module if self.ema is not None else self.module
        # Every rank evaluates rank 0's model (the one in the checkpoints) on its own shard.
        self.dist.broadcast_buffers_(eval_model)
        return evaluate(
            eval_model,
            loader,
            num_classes=len(self.classes),
            autocast=self.precision.autocast,
            loss_fn=self.loss_fn,
            transform=self._resize,
            reduce=self.dist.is_distributed,
        )

    def _agreed_stop(self) -> str | None:
        """The job's stop request, the same on every rank (see DistEnv.agree_on_stop)."""
        agreed = self.dist.agree_on_stop(self.stop.signal_name, self.device)
        if agreed is not None and agreed != self.stop.signal_name:
            self.stop.request(agreed)  # another rank got a signal: this one stops, and reports, with it
        return agreed

    def _resize(self, images: torch.Tensor) -> torch.Tensor:
        return resize_batch(images, self.cfg.model.image_size)

    def _set_train_mode(self) -> None:
        if self.cfg.model.freeze_backbone:
            set_train_mode(self.module, frozen_backbone=True)
        else:
            self.module.train()

    def _train_batches(self, epoch: int) -> Iterator[tuple[int, torch.Tensor, torch.Tensor]]:
        self.loaders.train.set_epoch(epoch)
        skip = self.batches_done if epoch == self.start_epoch else 0
        for index, (images, labels) in enumerate(self.loaders.train):
            if index < skip:
                continue  # already trained on before the interruption; the order is the same
            yield index, images, labels

    def fit(self) -> FitResult:
        cfg = self.cfg
        if self.is_main:
            self.out_dir.mkdir(parents=True, exist_ok=True)
        train_samples, val_samples = self.dist.sum_numbers(
            [self.loaders.train.num_samples, self.loaders.val.num_samples], self.device
        )
        self.on_event(
            RunStarted(
                total_epochs=cfg.optim.epochs,
                start_epoch=self.start_epoch,
                steps_per_epoch=self.steps_per_epoch,
                train_samples=int(train_samples),
                val_samples=int(val_samples),
                device=str(self.device),
                loader=self.loaders.kind,
                amp_dtype=None if self.precision.amp_dtype is None else str(self.precision.amp_dtype).removeprefix("torch."),
                channels_last=self.precision.channels_last,
                compiled=cfg.precision.compile,
                world_size=self.dist.world_size,
                global_batch_size=cfg.data.batch_size * self.dist.world_size,
                lr=self.lr,
            )
        )
        stopped_early, stop_reason = False, None
        last_path = self.out_dir / "last.pt"
        for epoch in range(self.start_epoch, cfg.optim.epochs):
            record_or_none = self._train_epoch(epoch)
            if record_or_none is None:  # interrupted by a signal: resumable checkpoint written
                return self._result(stopped_early=False, stop_reason=None, checkpoint=last_path, test=None)
            record = record_or_none
            self.history.append(record)
            self._rewrite_metric_files()
            monitored = record.val_acc if self.best_tracker.monitor == "val_acc" else record.val_loss
            should_stop, reason = self.best_tracker.step(monitored, epoch=record.epoch)
            if self.early_stopping is None and not math.isfinite(monitored):
                should_stop, reason = False, None  # without early stopping a NaN metric only logs
            self.on_event(EpochFinished(record=record, is_best=self.best_tracker.is_best))
            self._save("last.pt", epoch=epoch + 1, batches_done=0)
            if self.best_tracker.is_best:
                self._save("best.pt", epoch=epoch + 1, batches_done=0)
            if should_stop and self.early_stopping is not None:
                stopped_early, stop_reason = True, reason
                break
            if self._agreed_stop() is not None:  # a signal during validation: stop cleanly here
                return self._result(stopped_early=False, stop_reason=None, checkpoint=last_path, test=None)
        if self.early_stopping is not None:
            self.dist.barrier()  # rank 0 has finished writing best.pt before any rank looks for it
            if (self.out_dir / "best.pt").exists():
                self._load_best_weights()
        self._write_curves()
        test = self._evaluate(self.loaders.test).to_dict(list(self.classes))
        # A signal that came after the last step does not stop a finished run, but the result
        # reports it (as in one process), and every rank must report the same.
        self._agreed_stop()
        return self._result(stopped_early=stopped_early, stop_reason=stop_reason, checkpoint=last_path, test=test)

    def _train_epoch(self, epoch: int) -> EpochRecord | None:
        self._set_train_mode()
        loss_sum = torch.zeros((), dtype=torch.float64, device=self.device)
        correct = torch.zeros((), dtype=torch.int64, device=self.device)
        seen = 0
        if epoch == self.start_epoch and self.partial_epoch is not None and self.is_main:
            # Resuming inside this epoch: its metrics cover the steps before the interruption too.
            # The saved sums are all ranks' together, so only rank 0 adds them before the reduction.
            loss_sum += self.partial_epoch["loss_sum"]
            correct += self.partial_epoch["correct"]
            seen = int(self.partial_epoch["seen"])
        seen_before = seen  # throughput counts only the images trained on since this process started
        world = self.dist.world_size
        started = time.perf_counter()
        for index, images, labels in self._train_batches(epoch):
            output = self.step(images, labels)
            batch = labels.shape[0]
            loss_sum += output.loss.double() * batch
            correct += output.correct
            seen += batch
            elapsed = max(time.perf_counter() - started, 1e-9)
            self.on_event(
                StepFinished(
                    epoch=epoch + 1,
                    step=index + 1,
                    steps=self.steps_per_epoch,
                    loss=float(output.loss),
                    lr=self.optimizer.param_groups[0]["lr"],
                    # Every rank trains the same number of equal batches in the same time.
                    images_per_sec=(seen - seen_before) * world / elapsed,
                )
            )
            if self._agreed_stop() is not None:
                total_loss, total_correct, total_seen = self._summed(loss_sum, correct, seen)
                partial = {"loss_sum": total_loss, "correct": int(total_correct), "seen": int(total_seen)}
                self._save("last.pt", epoch=epoch, batches_done=index + 1, partial=partial)
                return None
        train_seconds = time.perf_counter() - started
        total_loss, total_correct, total_seen = self._summed(loss_sum, correct, seen)
        val = self._evaluate(self.loaders.val)
        self.batches_done, self.partial_epoch = 0, None
        return EpochRecord(
            epoch=epoch + 1,
            train_loss=total_loss / max(total_seen, 1),
            train_acc=total_correct / max(total_seen, 1),
            val_loss=float(val.loss) if val.loss is not None else math.nan,
            val_acc=val.accuracy,
            lr=self.optimizer.param_groups[0]["lr"],
            images_per_sec=(seen - seen_before) * world / max(train_seconds, 1e-9),
            epoch_seconds=time.perf_counter() - started,
            val_count=val.count,
        )

    def _summed(self, loss_sum: torch.Tensor, correct: torch.Tensor, seen: int) -> tuple[float, float, float]:
        """The epoch's train loss sum, hit count and sample count, summed over the ranks."""
        total_loss, total_correct, total_seen = self.dist.sum_numbers(
            [float(loss_sum), float(correct), float(seen)], self.device
        )
        return total_loss, total_correct, total_seen

    def _load_best_weights(self) -> None:
        best = load_checkpoint(self.out_dir / "best.pt")
        self.module.load_state_dict(best["model"])
        if self.ema is not None and best.get("ema") is not None:
            self.ema.load_state_dict(best["ema"])

    def _write_curves(self) -> None:
        if self.history and self.is_main:
            plot_training_curves([record.to_dict() for record in self.history], self.out_dir / "curves.png")

    def _result(self, *, stopped_early: bool, stop_reason: str | None, checkpoint: Path, test) -> FitResult:
        best_epoch = self.best_tracker.best_epoch
        best = next((record for record in self.history if record.epoch == best_epoch), None)
        return FitResult(
            out_dir=self.out_dir,
            epochs_run=len(self.history),
            best_val_acc=None if best is None else best.val_acc,
            best_val_loss=None if best is None else best.val_loss,
            best_epoch=best_epoch,
            stopped_early=stopped_early,
            stop_reason=stop_reason,
            interrupted=self.stop.signal_name,
            history=tuple(self.history),
            test=test,
            checkpoint=checkpoint,
            world_size=self.dist.world_size,
        )


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
    "build_model",
    "train",
]
