"""The run folder and its one writer: file names, checkpoint contents and format, last/best, restore.

In the spirit of timm's ``CheckpointSaver``: the trainer says *when* (an epoch ended, a stop was
requested, the run finished) and hands over the state; the checkpointer decides *what* goes into
each file and writes it atomically. No other module writes into a run folder. A run folder::

    config.toml     the resolved config (without --resume), so `train --config` repeats the run
    metrics.jsonl   one record per finished epoch; metrics.csv the same as a table
    last.pt         everything a resume needs, after every epoch and on a stop request
    best.pt         the same, from the epoch with the best monitored metric so far
    curves.png      loss and accuracy per epoch, at the end
    result.json     the run's FitResult, at the end (also after a stop request)

A checkpoint holds (format 1): model (the plain module's state dict), ema (None or an
AveragedModel state dict), optimizer, scheduler, scaler, best (the BestTracker's state),
early_stopping (None or the EarlyStopping's state), rng (this process's RNG state), rng_by_rank
(every rank's, in rank order, or None in one process), world_size, epoch (the 0-based epoch to
continue with), batches_done_in_epoch, partial_epoch (the running sums of an interrupted epoch),
global_step, loader_seed, history (the epoch records), classes, config (plain types), and
pretrained (None, or the name, file and sha256 of the weights the run started from). It loads
with ``torch.load(weights_only=True)``.

Checkpoints are written off the loop's path. The loop blocks only to *snapshot* the state: a copy
into host buffers that are reused from one checkpoint to the next (pinned for CUDA tensors, so the
device-to-host copies run asynchronously; on the CPU reuse spares each snapshot the page faults
of ~190 MB of fresh memory for ResNet-50). ``prepare`` allocates and fills them before the
training clock starts, so the first checkpoint blocks no longer than the others. A background
thread then serializes the snapshot once and writes those bytes to each file asked for (last.pt, and best.pt from the same snapshot) with the atomic temp + fsync +
rename of engine/checkpoint.py. At most one write is in flight: the next snapshot first waits for
the previous write (that wait counts as blocked time, ``checkpoint_seconds``), which is also what
lets the buffers be reused. ``wait()`` joins the pending write and raises its error, if
any, as the same one-line error a synchronous write gives; the trainer calls it before it
reports, after a stop request, and on errors, so no run ends with a write still in flight.

A run folder belongs to one process at a time: ``acquire()`` takes an exclusive ``flock`` on
``OUT/.lock`` (holding the owner's pid) before anything is written, and it is held to the end of
the run. A second run on the same folder is refused (exit 2) naming the folder and the holder's
pid; the kernel drops the lock of a process that dies, so a crashed run never blocks the next
one. The lock file itself stays (removing it would race with a process about to lock it). Taking
the lock also removes the project's own stale temp files (``.last.pt.*.tmp`` and the like) that a
killed process left behind.

Every file goes through ``resnet_cifar.files.atomic_write``: a disk that fills up (or fails)
while writing is a one-line error (exit 1) naming the file and the reason, the temp file is
removed and the previous file stays as it was; a run folder that cannot be written into at all
is refused when the lock is taken (exit 2), before anything else.

Under torchrun only rank 0 writes; ``keep_checkpoints=False`` writes everything but the .pt files
(for a caller that wants metrics without checkpoints, e.g. a sweep trial that is never resumed).
"""

from __future__ import annotations

import contextlib
import csv
import fcntl
import io
import json
import math
import os
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from resnet_cifar.config import TrainConfig, save_config
import torch

from resnet_cifar.engine.checkpoint import load_checkpoint, write_checkpoint_bytes
from resnet_cifar.engine.early_stopping import METRIC_MODES, improves
from resnet_cifar.errors import DataError, ResnetCifarError, UsageError
from resnet_cifar.evaluation.plots import plot_training_curves
from resnet_cifar.files import atomic_write

CHECKPOINT_FORMAT = 1
CONFIG_FILE = "config.toml"
METRICS_JSONL = "metrics.jsonl"
METRICS_CSV = "metrics.csv"
LAST = "last.pt"
BEST = "best.pt"
CURVES = "curves.png"
RESULT = "result.json"
LOCK = ".lock"
RUN_FILES = (CONFIG_FILE, METRICS_JSONL, METRICS_CSV, LAST, BEST, CURVES, RESULT)
# The keys a resume reads; anything else may be absent from an older or a foreign checkpoint.
RESUME_KEYS = ("model", "optimizer", "scheduler", "scaler", "epoch", "config", "history", "classes")


class BestTracker:
    """Which epoch is the best so far, for best.pt: the monitored metric improved by more than
    ``min_delta`` (early stopping's rule, resnet_cifar.engine.early_stopping.improves). A NaN or
    infinite value is never the best."""

    def __init__(self, monitor: str, *, min_delta: float = 0.0) -> None:
        self.monitor = monitor
        self.mode = METRIC_MODES[monitor]
        self.min_delta = min_delta
        self.best = -math.inf if self.mode == "max" else math.inf
        self.best_epoch: int | None = None

    def update(self, value: float, *, epoch: int) -> bool:
        """Record one epoch's value; True when it is the new best."""
        if not math.isfinite(value) or not improves(value, self.best, mode=self.mode, min_delta=self.min_delta):
            return False
        self.best, self.best_epoch = float(value), epoch
        return True

    def state_dict(self) -> dict[str, Any]:
        return {"monitor": self.monitor, "best": self.best, "best_epoch": self.best_epoch}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if state.get("monitor") != self.monitor:
            raise UsageError(f"the checkpoint's best epoch follows {state.get('monitor')!r}, not {self.monitor!r}")
        self.best = float(state["best"])
        self.best_epoch = state["best_epoch"]


class Checkpointer:
    """Owns one run folder (see the module notes)."""

    def __init__(self, out_dir: Path, *, is_main: bool = True, keep_checkpoints: bool = True) -> None:
        self.out_dir = Path(out_dir)
        self.is_main = is_main
        self.keep_checkpoints = keep_checkpoints
        self._buffers: dict[str, torch.Tensor] = {}  # reused host buffers of the snapshots, by key
        self._copying_from_cuda = False  # the last snapshot has device-to-host copies in flight
        self._writer: threading.Thread | None = None
        self._error: BaseException | None = None
        self._lock_fd: int | None = None

    def acquire(self) -> None:
        """Take the run folder (see the module notes); a no-op on ranks other than 0."""
        if not self.is_main or self._lock_fd is not None:
            return
        try:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path(LOCK), os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as error:  # a folder the user named that cannot be written into: bad input
            raise UsageError(f"{self.out_dir}: cannot write into the run folder ({error.strerror or error})") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 32).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise UsageError(
                f"{self.out_dir} is in use by another run (pid {holder}); wait for it to finish or use another --out"
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._lock_fd = fd
        for name in RUN_FILES:  # what a process killed in the middle of a write left behind
            for stale in self.out_dir.glob(f".{name}.*.tmp"):
                stale.unlink(missing_ok=True)

    def release(self) -> None:
        """Let the folder go (after any pending write)."""
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # closing the descriptor drops the flock
            self._lock_fd = None

    def path(self, name: str) -> Path:
        return self.out_dir / name

    def check_new_run(self) -> None:
        """Refuse to start a fresh run over a folder that already holds one."""
        if self.path(LAST).exists():
            raise UsageError(
                f"{self.out_dir} already holds a run ({LAST}); use --resume {self.path(LAST)} or another --out"
            )

    def start(self, cfg: TrainConfig) -> None:
        """Create the folder and record the run's resolved config, without --resume, so
        `train --config OUT/config.toml` starts the same run afresh."""
        if not self.is_main:
            return
        # save_config reports a failed write itself, as a one-line error of a failed run.
        save_config(replace(cfg, run=replace(cfg.run, resume=None)), self.path(CONFIG_FILE))

    def save(self, names: Sequence[str], payload: dict[str, Any], *, stamp_last_record: bool = False) -> float:
        """Snapshot ``payload`` and write it to each of ``names`` in the background (rank 0 only; a
        no-op without ``keep_checkpoints``). Returns the seconds the caller was blocked: waiting
        for the previous write, then the snapshot. ``stamp_last_record`` writes that time into the
        snapshot's last history record too (its ``checkpoint_seconds``), so a resumed run's
        metrics say what the first run measured."""
        if not (self.is_main and self.keep_checkpoints and names):
            return 0.0
        started = time.perf_counter()
        snapshot = self._take_snapshot(payload)
        if stamp_last_record and snapshot.get("history"):
            snapshot["history"][-1] = {**snapshot["history"][-1], "checkpoint_seconds": time.perf_counter() - started}
        paths = [self.path(name) for name in names]
        self._writer = threading.Thread(target=self._write, args=(paths, snapshot), name="checkpoint-writer")
        self._writer.start()
        return time.perf_counter() - started

    def wait(self) -> None:
        """Join the pending write; its failure is raised here, once, as a one-line error."""
        if self._writer is not None:
            self._writer.join()
            self._writer = None
        if self._error is not None:
            error, self._error = self._error, None
            raise error

    def prepare(self, payload: dict[str, Any]) -> None:
        """Allocate and fill the snapshot buffers for ``payload`` now (no file is written), so
        that no checkpoint of the loop pays for allocating them: the trainer calls it before its
        training clock starts."""
        if self.is_main and self.keep_checkpoints:
            self._take_snapshot(payload)

    def _take_snapshot(self, payload: dict[str, Any]) -> dict[str, Any]:
        self.wait()  # at most one write in flight; its buffers are free again after it
        self._copying_from_cuda = False
        # The host copies are memory-bound: one thread moves them about as fast as two, and on a
        # loaded machine a two-thread copy waits for its slower thread to be scheduled (ResNet-50's
        # 180 MiB: 0.06 s with one thread, 0.30 s with two, at load 4 on 2 cores).
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            snapshot = self._snapshot({"format": CHECKPOINT_FORMAT, **payload}, "")
        finally:
            torch.set_num_threads(threads)
        if self._copying_from_cuda:
            torch.cuda.synchronize()  # the non-blocking device-to-host copies have landed
        return snapshot

    def _snapshot(self, value: Any, key: str) -> Any:
        """``value`` with every tensor copied off the live state into its reused host buffer
        (``key`` names its place in the payload). Containers are rebuilt, plain values shared."""
        if isinstance(value, torch.Tensor):
            value = value.detach()
            on_cuda = value.device.type == "cuda"
            buffer = self._buffers.get(key)
            if buffer is None or buffer.shape != value.shape or buffer.dtype != value.dtype:
                # The live tensor's strides (a channels_last weight stays channels_last), pinned
                # for a CUDA tensor so that the copy below is asynchronous.
                buffer = torch.empty_like(value, device="cpu", pin_memory=on_cuda)
                self._buffers[key] = buffer
            self._copying_from_cuda |= on_cuda
            return buffer.copy_(value, non_blocking=on_cuda)
        if isinstance(value, dict):
            return {name: self._snapshot(item, f"{key}/{name}") for name, item in value.items()}
        if isinstance(value, (list, tuple)):
            items = [self._snapshot(item, f"{key}/{index}") for index, item in enumerate(value)]
            return items if isinstance(value, list) else tuple(items)
        return value

    def _write(self, paths: list[Path], snapshot: dict[str, Any]) -> None:
        try:
            buffer = io.BytesIO()
            torch.save(snapshot, buffer)  # serialized once, whatever the number of files
            data = buffer.getbuffer()
            for path in paths:
                write_checkpoint_bytes(path, data)
        except BaseException as error:  # reported by wait() on the loop's thread
            self._error = error

    def has(self, name: str) -> bool:
        self.wait()
        return self.path(name).exists()

    def load(self, name: str) -> dict[str, Any]:
        self.wait()
        return load_checkpoint(self.path(name))

    def write_metrics(self, history: Sequence[Mapping[str, Any]], fields: Sequence[str]) -> None:
        """metrics.jsonl and metrics.csv, rewritten whole from ``history`` (so an epoch logged
        after the checkpoint a run resumed from never appears twice)."""
        if not self.is_main:
            return
        lines = "".join(json.dumps(dict(record)) + "\n" for record in history)
        with _reported_write(self.path(METRICS_JSONL)):
            atomic_write(self.path(METRICS_JSONL), lines)
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=list(fields))
        writer.writeheader()
        for record in history:
            writer.writerow(dict(record))
        with _reported_write(self.path(METRICS_CSV)):
            atomic_write(self.path(METRICS_CSV), buffer.getvalue())

    def write_curves(self, history: Sequence[Mapping[str, Any]]) -> None:
        if history and self.is_main:
            with _reported_write(self.path(CURVES)):
                plot_training_curves(list(history), self.path(CURVES))

    def write_result(self, summary: Mapping[str, Any]) -> None:
        if not self.is_main:
            return
        with _reported_write(self.path(RESULT)):
            atomic_write(self.path(RESULT), json.dumps(dict(summary), indent=2) + "\n")


@contextlib.contextmanager
def _reported_write(path: Path) -> Iterator[None]:
    """An OSError while writing a run file (a full or read-only disk, a folder that cannot be
    made) as the one-line error of a failed run (exit 1)."""
    try:
        yield
    except OSError as error:
        raise ResnetCifarError(f"could not write {path}: {error.strerror or error}") from None


def stored_config(payload: Mapping[str, Any], path: Path) -> TrainConfig:
    """The TrainConfig a checkpoint was trained with; a bad one is bad data in the file (exit 1),
    not a flag the user typed."""
    try:
        return TrainConfig.from_dict(payload["config"])
    except UsageError as error:
        raise DataError(f"{path}: its stored config is invalid: {error}") from None


# A resume reads these as the loop's position: they must be what the trainer wrote.
_RESUME_FIELDS: dict[str, type | tuple[type, ...]] = {
    "epoch": int,
    "batches_done_in_epoch": int,
    "global_step": int,
    "history": list,
    "classes": list,
}


def read_resume_checkpoint(path: Path) -> dict[str, Any]:
    """A checkpoint to resume from: the keys a resume needs, its position fields of the right
    types and a valid stored config (one-line DataErrors otherwise)."""
    payload = load_checkpoint(path, require=RESUME_KEYS)
    for name, kind in _RESUME_FIELDS.items():
        value = payload.get(name, 0 if kind is int else [])
        if isinstance(value, bool) or not isinstance(value, kind) or (kind is int and value < 0):
            raise DataError(f"{path}: its {name!r} field is malformed ({value!r})")
    if not all(isinstance(record, Mapping) for record in payload["history"]):
        raise DataError(f"{path}: its 'history' field is malformed (records must be tables)")
    stored_config(payload, path)
    return payload


# Settings a resumed run may change: where things are and how fast they run, never what is
# computed (README, "Resuming a run"). Every other setting must equal the checkpoint's.
RESUME_MAY_CHANGE = (
    "data.data_dir",
    "data.cache_dir",
    "data.verify",
    "data.loader",
    "data.eval_batch_size",
    "precision.device",
    "precision.compile",
    "run.out_dir",
    "run.resume",
    "run.checkpoint_every",
    "run.target_acc",
    "run.tensorboard",
)


def check_resume_settings(cfg: TrainConfig, saved: TrainConfig, path: Path) -> None:
    """Refuse (exit 2, naming the flag) a resumed run whose settings differ from the checkpoint's
    in anything but RESUME_MAY_CHANGE: the optimizer state, the schedule's length and the data's
    order were built for the saved ones, so a new value would be ignored or break the run."""
    from resnet_cifar.config import flag_for

    now, then = cfg.to_dict(), saved.to_dict()
    for section, entries in now.items():
        for name, value in entries.items():
            key = f"{section}.{name}"
            if key not in RESUME_MAY_CHANGE and value != then[section].get(name):
                raise UsageError(
                    f"{flag_for(key)} {_plain(value)} differs from the checkpoint's {_plain(then[section].get(name))}: "
                    f"a resumed run keeps the settings {path} was trained with (start a new run to change it)"
                )


def _plain(value: Any) -> str:
    return "none" if value is None else str(value).lower() if isinstance(value, bool) else str(value)
