"""The run folder and its one writer and reader: file names, the checkpoint format (the RunState),
resume rules and compatibility checks, last/best, background writes, restore.

In the spirit of timm's ``CheckpointSaver``: the trainer says *when* (an epoch ended and whether it
was the best, a stop was requested, the run finished) and hands over the run's state; the
checkpointer decides *what* goes into each file and which files are written, and writes them
atomically. No other module writes into a run folder or reads a checkpoint's layout: the trainer
restores through ``RunState``, inference reads through ``read_trained_checkpoint`` and the CLI's
``--resume`` through ``ResumeCheckpoint``. A run folder::

    config.toml     the resolved config (without --resume), so `train --config` repeats the run
    metrics.jsonl   one record per finished epoch; metrics.csv the same as a table
    last.pt         everything a resume needs, every --checkpoint-every epochs, at the end and on a stop request
    best.pt         the same, from the epoch with the best monitored metric so far
    curves.png      loss and accuracy per epoch, at the end
    result.json     the run's FitResult, at the end (also after a stop request)

A checkpoint (format ``CHECKPOINT_FORMAT``) is a dict whose keys, and what each holds, are listed
once, in ``CHECKPOINT_KEYS``; ``RunState.state_dict`` assembles it from the parts' own state dicts,
the monitor's and early stopping's, the RNG states and the loop's position, and
``RunState.load_state_dict`` puts it back. It holds only tensors and plain values, so it loads
with ``torch.load(weights_only=True)``. Every check of whether a checkpoint fits a run (resume
settings, process count, data seed, classes, weights' shapes, the schedule's length and phases,
EMA, monitor) is made here, with one message each. The checkpointer stamps each file with the run's
id and, in the background writer, a sha256 digest of the rest (``payload_digest``), which every
read checks: bytes flipped on disk are refused in one line instead of loading silently. Inference
also refuses weights that hold NaN or infinity. A checkpoint without these (older) still loads.

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
while writing is its WriteError (exit 1) naming the file and the reason, the temp file is
removed and the previous file stays as it was; a run folder that cannot be written into at all
is refused when the lock is taken (UnwritableFolder, exit 2), before anything else. Under torchrun only rank 0
writes.

Across machines the run folder must be one folder on a file system every machine shares: rank 0
alone writes, and every rank reads the checkpoint a resume (or the best weights at the end) loads.
Per-machine folders, with rank 0's checkpoints copied to the others, are not supported: in a job
of several processes ``open_run`` has every rank look for the token rank 0 has just written into
``OUT/.lock`` and refuses the run (exit 2, on every rank) when one cannot see it. Once a job's run
is accepted, rank 0 records torchrun's job id in ``OUT/.torchrun-job``; after an elastic restart
(``torchrun --max-restarts``) ``elastic_resume`` finds that record and the job's last.pt, so the
restarted workers continue where the job stopped instead of being refused as a new run.
"""

from __future__ import annotations

import csv
import fcntl
import io
import math
import os
import socket
import threading
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from resnet_cifar.config import TrainConfig, save_config
from resnet_cifar.distributed import SINGLE_PROCESS, DistEnv
from resnet_cifar.engine.build import RunParts
from resnet_cifar.engine.checkpoint import (
    capture_rng_state,
    load_checkpoint,
    payload_digest,
    restore_rng_state,
    write_checkpoint_bytes,
)
from resnet_cifar.engine.early_stopping import EarlyStopping, Monitor
from resnet_cifar.errors import DataError, UsageError
from resnet_cifar.evaluation.plots import plot_training_curves
from resnet_cifar.files import UnwritableFolder, atomic_write, first_line, json_text

CHECKPOINT_FORMAT = 1
CONFIG_FILE = "config.toml"
METRICS_JSONL = "metrics.jsonl"
METRICS_CSV = "metrics.csv"
LAST = "last.pt"
BEST = "best.pt"
CURVES = "curves.png"
RESULT = "result.json"
LOCK = ".lock"
JOB = ".torchrun-job"  # the torchrun job id whose run the folder holds (see elastic_resume)
RUN_FILES = (CONFIG_FILE, METRICS_JSONL, METRICS_CSV, LAST, BEST, CURVES, RESULT)

# ----------------------------------------------------------------------------- the checkpoint format

# Every key of a checkpoint (format 1) and what it holds: the one list. Checkpointer.save stamps
# ``format``; RunState.state_dict writes the others and RunState.load_state_dict reads them back.
CHECKPOINT_KEYS: dict[str, str] = {
    "format": "CHECKPOINT_FORMAT, the layout of the file",
    "model": "the plain module's state dict (torchvision's keys, no torch.compile or DDP prefix)",
    "ema": "None, or the EMA's AveragedModel state dict (module.<name> keys and n_averaged)",
    "optimizer": "the optimizer's state dict",
    "scheduler": "the learning-rate schedule's state dict",
    "scaler": "the GradScaler's state dict",
    "best": "the Monitor's state: the monitored metric, its best value so far and that value's epoch",
    "early_stopping": "None (off), or the EarlyStopping's state: wait count, checks, and the monitor's best",
    "rng": "this process's RNG states: Python's, torch's CPU generator and every CUDA generator",
    "rng_by_rank": "None in one process, else every rank's RNG states in rank order",
    "world_size": "the number of processes that trained the run together",
    "epoch": "the 0-based epoch to continue with",
    "batches_done_in_epoch": "the steps of that epoch already trained, per process (0 after a whole epoch)",
    "partial_epoch": "None, or that epoch's running train sums so far (loss_sum, correct, seen; all processes)",
    "global_step": "the optimizer steps taken so far",
    "loader_seed": "the data seed the loaders' split, order and augmentation follow",
    "history": "the finished epochs' records (the trainer's EpochRecord as plain dicts)",
    "classes": "the class names, in label order",
    "config": "the run's settings as plain values (TrainConfig.to_dict)",
    "pretrained": "None, or the name, file and sha256 of the weights the run started from",
    "temperature": "None, or the temperature scaling fitted on the validation split for these weights (store_temperature:"
    " temperature, the val images it was fitted on, NLL and ECE before and after); inference divides the logits by it."
    " The trainer writes None: new weights need a new fit",
    "run_id": "the run's id (hex), kept by a resume; metrics.jsonl and result.json carry the same",
    "data_fingerprint": "sha256 of the data the run loaded (classes, labels, images of train and test)",
    "digest": "sha256 of every other key's content (payload_digest), checked on load",
}
# Keys an older checkpoint of this format may lack: it still loads, without their checks.
OPTIONAL_KEYS = ("run_id", "data_fingerprint", "digest")
# The keys a resume requires; the others may be absent from an older or a foreign checkpoint.
RESUME_KEYS = ("model", "optimizer", "scheduler", "scaler", "epoch", "config", "history", "classes")
# The keys inference requires.
TRAINED_KEYS = ("model", "classes", "config")
# An AveragedModel's state dict names the averaged module's weights with this prefix.
EMA_PREFIX = "module."


@dataclass(frozen=True)
class LoopPosition:
    """Where the loop stands: what a resume continues from."""

    epoch: int = 0  # the 0-based epoch to continue with
    batches_done: int = 0  # steps of that epoch already trained, per process
    partial_epoch: Mapping[str, Any] | None = None  # that epoch's running train sums, all processes together
    history: tuple[Mapping[str, Any], ...] = ()  # the finished epochs' records


class RunState:
    """A run's checkpointed state, assembled from its owners: the parts' own state dicts, the run's
    Monitor and EarlyStopping, the RNG states and the loop's position (see CHECKPOINT_KEYS)."""

    def __init__(self, parts: RunParts, *, monitor: Monitor, early_stopping: EarlyStopping | None = None) -> None:
        self.parts = parts
        self.monitor = monitor
        self.early_stopping = early_stopping

    def gather_rng(self) -> list[Any] | None:
        """Every rank's RNG states in rank order (a collective: every rank calls it), or None in one process."""
        dist = self.parts.distributed
        return dist.gather_objects(capture_rng_state()) if dist.is_distributed else None

    def state_dict(self, position: LoopPosition, *, rng_by_rank: list[Any] | None = None) -> dict[str, Any]:
        """Every key of CHECKPOINT_KEYS but ``format`` (the checkpointer stamps it)."""
        parts, cfg = self.parts, self.parts.cfg
        return {
            "model": parts.module.state_dict(),
            "ema": parts.ema.state_dict() if parts.ema is not None else None,
            "optimizer": parts.optimizer.state_dict(),
            "scheduler": parts.scheduler.state_dict(),
            "scaler": parts.scaler.state_dict(),
            "best": self.monitor.state_dict(),
            "early_stopping": self.early_stopping.state_dict() if self.early_stopping is not None else None,
            "rng": capture_rng_state(),
            "rng_by_rank": rng_by_rank,
            "world_size": parts.distributed.world_size,
            "epoch": position.epoch,
            "batches_done_in_epoch": position.batches_done,
            "partial_epoch": None if position.partial_epoch is None else dict(position.partial_epoch),
            "global_step": parts.step.global_step,
            "loader_seed": cfg.data.seed,
            "history": [dict(record) for record in position.history],
            "classes": list(parts.classes),
            "config": cfg.to_dict(),
            "pretrained": parts.pretrained,
            "temperature": None,  # fitted after training (store_temperature), for the weights then final
            "data_fingerprint": parts.loaders.fingerprint,
        }

    def load_state_dict(self, checkpoint: Mapping[str, Any], source: Path | str) -> LoopPosition:
        """Put ``checkpoint`` back, after checking that it fits this run (``source`` names it in
        the messages): weights, optimizer, schedule, scaler, EMA, monitor, early stopping, RNG
        states and step count. Returns the loop's position."""
        parts = self.parts
        seed = parts.cfg.data.seed
        if checkpoint.get("loader_seed") != seed:
            raise UsageError(f"{source} was trained with data seed {checkpoint.get('loader_seed')}, not {seed}")
        if list(checkpoint.get("classes", [])) != list(parts.classes):
            raise DataError(f"{source} was trained on classes {checkpoint.get('classes')}, not {list(parts.classes)}")
        self._check_model(checkpoint, source)
        check_schedule(self.parts.scheduler.state_dict(), checkpoint.get("scheduler"), source)
        try:
            parts.module.load_state_dict(checkpoint["model"])
            parts.optimizer.load_state_dict(checkpoint["optimizer"])
            parts.scheduler.load_state_dict(checkpoint["scheduler"])
            parts.scaler.load_state_dict(checkpoint["scaler"])
            if parts.ema is not None:
                if checkpoint.get("ema") is None:
                    raise UsageError(f"{source} has no EMA weights; resume without --ema")
                parts.ema.load_state_dict(checkpoint["ema"])
            self.monitor.load_state_dict(checkpoint["best"])
            if self.early_stopping is not None and checkpoint.get("early_stopping") is not None:
                self.early_stopping.load_state_dict(checkpoint["early_stopping"])
        except (RuntimeError, KeyError, ValueError) as error:
            raise DataError(f"{source} does not match this configuration: {first_line(error)}") from None
        by_rank = checkpoint.get("rng_by_rank")
        restore_rng_state(by_rank[parts.distributed.rank] if by_rank else checkpoint["rng"])
        parts.step.global_step = int(checkpoint.get("global_step", 0))
        return LoopPosition(
            epoch=int(checkpoint["epoch"]),
            batches_done=int(checkpoint.get("batches_done_in_epoch", 0)),
            partial_epoch=checkpoint.get("partial_epoch"),
            history=tuple(checkpoint["history"]),
        )

    def _check_model(self, checkpoint: Mapping[str, Any], source: Path | str) -> None:
        mismatch = describe_mismatch(self.parts.module.state_dict(), checkpoint["model"])
        if mismatch:
            config = checkpoint.get("config")
            saved = config.get("model", {}) if isinstance(config, dict) else {}
            raise DataError(
                f"{source} does not match this model (expected depth {self.parts.cfg.model.depth}, the checkpoint "
                f"has depth {saved.get('depth', 'unknown')}; {mismatch})"
            )

    def load_weights(self, checkpoint: Mapping[str, Any]) -> None:
        """Only ``checkpoint``'s weights (and EMA weights): the best epoch's, at the end of a run."""
        parts = self.parts
        parts.module.load_state_dict(checkpoint["model"])
        if parts.ema is not None and checkpoint.get("ema") is not None:
            parts.ema.load_state_dict(checkpoint["ema"])


# ----------------------------------------------------------------------------- the run folder


class Checkpointer:
    """Owns one run folder (see the module notes)."""

    def __init__(self, out_dir: Path, *, is_main: bool = True, every: int = 1) -> None:
        self.out_dir = Path(out_dir)
        self.is_main = is_main
        self.every = every  # last.pt every N epochs (--checkpoint-every), and at the end
        self._last_position: tuple[int, int] | None = None  # (epoch, batches done) last.pt holds; on every rank
        self._resume: ResumeCheckpoint | None = None  # what open_run accepted, until restore() puts it back
        self._buffers: dict[str, torch.Tensor] = {}  # reused host buffers of the snapshots, by key
        self._copying_from_cuda = False  # the last snapshot has device-to-host copies in flight
        self._writer: threading.Thread | None = None
        self._error: BaseException | None = None
        self._lock_fd: int | None = None
        self._token = uuid.uuid4().hex  # written into .lock beside the pid: the mark other machines look for
        # The run's id: new for a fresh run, the checkpoint's for a resume (open_run). Stamped
        # into every checkpoint, metrics.jsonl record and result.json, so a reader can tell
        # whether they belong together.
        self.run_id = new_run_id()

    def acquire(self) -> None:
        """Take the run folder (see the module notes); a no-op on ranks other than 0."""
        if not self.is_main or self._lock_fd is not None:
            return
        try:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path(LOCK), os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as error:  # a folder the user named that cannot be written into: bad input
            raise UnwritableFolder(self.out_dir, error) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = (os.read(fd, 64).decode(errors="replace").split() or ["unknown"])[0]
            os.close(fd)
            raise UsageError(
                f"{self.out_dir} is in use by another run (pid {holder}); wait for it to finish or use another --out"
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()} {self._token}\n".encode())
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
        """Refuse to start a fresh run over a folder that holds any run file: a new run would
        truncate its metrics and leave its best.pt and result.json beside the new run's files."""
        found = [name for name in RUN_FILES if self.path(name).exists()]
        if not found:
            return
        how = f"use --resume {self.path(LAST)}" if LAST in found else "remove them"
        raise UsageError(f"{self.out_dir} already holds a run ({', '.join(found)}); {how} or use another --out")

    def start(self, cfg: TrainConfig) -> None:
        """Create the folder and record the run's resolved config, without --resume, so
        `train --config OUT/config.toml` starts the same run afresh."""
        if not self.is_main:
            return
        # save_config reports a failed write itself, as a one-line error of a failed run.
        save_config(replace(cfg, run=replace(cfg.run, resume=None)), self.path(CONFIG_FILE))

    def save(self, names: Sequence[str], payload: dict[str, Any], *, stamp_last_record: bool = False) -> float:
        """Snapshot ``payload`` and write it to each of ``names`` in the background (rank 0 only).
        Returns the seconds the caller was blocked: waiting for the previous write, then the
        snapshot. ``stamp_last_record`` writes that time into the
        snapshot's last history record too (its ``checkpoint_seconds``), so a resumed run's
        metrics say what the first run measured."""
        if not (self.is_main and names):
            return 0.0
        started = time.perf_counter()
        snapshot = self._take_snapshot({**payload, "run_id": self.run_id})
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

    def prepare(self, state: RunState, position: LoopPosition) -> None:
        """Allocate and fill the snapshot buffers for ``state`` now (no file is written), so that
        no checkpoint of the loop pays for allocating them: the trainer calls it before its
        training clock starts. A no-op off rank 0 (no collective)."""
        if self.is_main:
            self._take_snapshot(state.state_dict(position))

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
            snapshot["digest"] = payload_digest(snapshot)  # here, off the loop's path
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

    # -- what the loop asks for: the checkpointer picks the files

    def open_run(
        self, cfg: TrainConfig, *, world_size: int, resume: ResumeCheckpoint | None = None, job: DistEnv = SINGLE_PROCESS
    ) -> None:
        """Take the folder (``acquire``) and check, before anything is built, that the run may
        start: a fresh run over no earlier one, or a resume of ``cfg.run.resume`` (``resume``: that
        checkpoint already read, e.g. by the CLI for its settings) with its settings and number of
        processes; ``restore`` then puts it back. In a torchrun ``job`` every rank calls it: the
        ranks first confirm they all see the folder rank 0 took (``confirm_shared``), and rank 0
        records the job's id once the run is accepted. The folder is let go on refusal."""
        self.acquire()
        try:
            self.confirm_shared(job)
            if cfg.run.resume is None:
                self.check_new_run()
            else:
                if resume is None:
                    resume = ResumeCheckpoint.read(cfg.run.resume)
                assert resume.path.expanduser() == cfg.run.resume, "the checkpoint read is the one cfg.run.resume names"
                resume.check_run(cfg, world_size=world_size)
                self._resume = resume
                saved_id = resume.payload.get("run_id")
                if isinstance(saved_id, str) and saved_id:
                    self.run_id = saved_id  # a resume continues the same run
            if self.is_main and job.is_distributed:
                atomic_write(self.path(JOB), job.run_id + "\n")
        except BaseException:
            self.release()
            raise

    def confirm_shared(self, job: DistEnv) -> None:
        """Refuse (exit 2, on every rank of ``job``) a run folder that is not the same folder for
        every rank: each one looks for the token rank 0 wrote into its lock file (taken before this
        call), so a machine with a folder of its own, or none, cannot pass. A collective: every
        rank calls it. Nothing to check in a single process."""
        if not job.is_distributed:
            return
        token = job.gather_objects(self._token if self.is_main else None)[0]  # rank 0 has written it by now
        try:
            seen = token in self.path(LOCK).read_text().split()
        except OSError:
            seen = False
        verdicts = job.gather_objects((seen, socket.gethostname()))
        blind = [f"rank {rank} (on {host})" for rank, (ok, host) in enumerate(verdicts) if not ok]
        if blind:
            raise UsageError(
                f"--out {self.out_dir} is not one folder that every process of the job sees: {blind[0]} cannot "
                "see rank 0's files there; across machines put --out on a file system they all share (NFS, "
                "Lustre, ...): per-machine run folders are not supported"
            )

    def restore(self, state: RunState) -> LoopPosition:
        """The resumed checkpoint (the one ``open_run`` accepted) put back into ``state``, and the
        loop's position in it; a fresh run's start without one."""
        resume, self._resume = self._resume, None
        if resume is None:
            return LoopPosition()
        position = state.load_state_dict(resume.payload, resume.path)
        resume.payload.clear()  # put back: its tensors are not kept alive through the run
        return position

    def save_epoch(self, state: RunState, position: LoopPosition, *, is_best: bool, final: bool) -> float:
        """An epoch ended (``position`` starts the next): last.pt every ``every`` epochs and at the
        run's end (``final``), best.pt when the epoch is the best so far. Every rank calls it (it
        gathers the RNG states). Returns the seconds the loop was blocked, which the checkpoint's
        copy of the last epoch record holds too."""
        names = [LAST] if position.epoch % self.every == 0 or final else []
        return self._save_state(names + ([BEST] if is_best else []), state, position, stamp=True)

    def save_stop(self, state: RunState, position: LoopPosition) -> None:
        """A stop request: a resumable last.pt from ``position``, unless last.pt already holds it.
        Every rank calls it."""
        if self._last_position != (position.epoch, position.batches_done):
            self._save_state([LAST], state, position)

    def _save_state(self, names: list[str], state: RunState, position: LoopPosition, *, stamp: bool = False) -> float:
        if LAST in names:
            self._last_position = (position.epoch, position.batches_done)
        if not names:
            return 0.0
        rng_by_rank = state.gather_rng()
        if not self.is_main:
            return 0.0
        return self.save(names, state.state_dict(position, rng_by_rank=rng_by_rank), stamp_last_record=stamp)

    def restore_best_weights(self, state: RunState) -> None:
        """best.pt's weights back into the run's model (at the end of an early-stopping run);
        every rank calls it."""
        state.parts.distributed.barrier()  # rank 0 has finished writing best.pt before any rank looks for it
        if self.has(BEST):
            state.load_weights(self.load(BEST))

    @property
    def last(self) -> Path:
        """The checkpoint a run resumes from."""
        return self.path(LAST)

    def write_metrics(self, history: Sequence[Mapping[str, Any]], fields: Sequence[str]) -> None:
        """metrics.jsonl and metrics.csv, rewritten whole from ``history`` (so an epoch logged
        after the checkpoint a run resumed from never appears twice)."""
        if not self.is_main:
            return
        lines = "".join(json_text({**record, "run_id": self.run_id}) + "\n" for record in history)
        atomic_write(self.path(METRICS_JSONL), lines)
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=list(fields))
        writer.writeheader()
        for record in history:
            writer.writerow(dict(record))
        atomic_write(self.path(METRICS_CSV), buffer.getvalue())

    def write_curves(self, history: Sequence[Mapping[str, Any]]) -> None:
        if history and self.is_main:
            plot_training_curves(list(history), self.path(CURVES))

    def write_result(self, summary: Mapping[str, Any]) -> None:
        if not self.is_main:
            return
        atomic_write(self.path(RESULT), json_text(dict(summary), indent=2) + "\n")


# ----------------------------------------------------------------------------- reading a checkpoint: the rules


def stored_config(payload: Mapping[str, Any], path: Path) -> TrainConfig:
    """The TrainConfig a checkpoint was trained with; a bad one is bad data in the file (exit 1),
    not a flag the user typed."""
    try:
        return TrainConfig.from_dict(payload["config"])
    except UsageError as error:
        raise DataError(f"{path}: its stored config is invalid: {error}") from None


def new_run_id() -> str:
    """A fresh run's id: 16 random hex digits."""
    return uuid.uuid4().hex[:16]


# A schedule's state entries that say where it stands, not what it is: they may differ from a
# freshly built schedule's; everything else (its length, phases, milestones) must not.
_SCHEDULE_POSITION = frozenset(
    {"last_epoch", "_step_count", "_last_lr", "_get_lr_called_within_step", "_is_initial", "verbose", "base_lrs"}
)


def check_schedule(built: Any, saved: Any, source: Path | str, where: str = "scheduler") -> None:
    """Refuse (one DataError line) a checkpoint whose learning-rate schedule is not the one this
    run builds from the same settings: its length, phases or milestones were altered, so resuming
    would follow another schedule (or fail when it runs past its stored end)."""
    if isinstance(built, Mapping) and isinstance(saved, Mapping):
        for key in set(saved) - set(built) - _SCHEDULE_POSITION:  # e.g. a milestone added
            check_schedule(None, saved[key], source, f"{where}.{key}")
        for key, value in built.items():
            if key not in _SCHEDULE_POSITION:
                check_schedule(value, saved.get(key), source, f"{where}.{key}")
        return
    if isinstance(built, (list, tuple)) and isinstance(saved, (list, tuple)) and len(built) == len(saved):
        for index, (value, stored) in enumerate(zip(built, saved)):
            check_schedule(value, stored, source, f"{where}[{index}]")
        return
    if built != saved:
        raise DataError(
            f"{source}: its stored learning-rate schedule differs from the one its settings build "
            f"({where} is {_short(saved)}, expected {_short(built)}); the file was altered, resume from another"
        )


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def describe_mismatch(expected: Mapping[str, Tensor], weights: Mapping[str, Tensor]) -> str:
    """How ``weights`` differ from a model's ``expected`` state dict, in one line ("" if they fit)."""
    missing = [key for key in expected if key not in weights]
    unexpected = [key for key in weights if key not in expected]
    reshaped = [key for key in expected if key in weights and weights[key].shape != expected[key].shape]
    parts = []
    if missing:
        parts.append(f"{len(missing)} missing (first {missing[0]})")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected (first {unexpected[0]})")
    if reshaped:
        key = reshaped[0]
        shapes = f"{tuple(weights[key].shape)} instead of {tuple(expected[key].shape)}"
        parts.append(f"{len(reshaped)} of another shape (first {key}: {shapes})")
    return ", ".join(parts)


# torchrun's job id when none is given (--rdzv-id): it names no job in particular.
UNNAMED_JOB = "none"


def elastic_resume(out_dir: Path, job: DistEnv) -> Path | None:
    """The checkpoint a torchrun job continues from when its workers start again (an elastic
    restart, ``--max-restarts``, or the same command relaunched with the same ``--rdzv-id``):
    ``out_dir``'s last.pt, when the folder's job record names this job (``open_run`` writes it
    once the job's run is accepted, so an attempt refused over another job's run never resumes
    that run). Not the restart count: torchrun counts restarts per machine, and a machine whose
    workers were only stopped for a new rendezvous round keeps counting 0, while every rank must
    decide alike. None otherwise (a job without an id of its own, a first start, or a job
    stopped before its first checkpoint, which starts afresh)."""
    if not job.is_distributed or job.run_id in ("", UNNAMED_JOB):
        return None
    try:
        recorded = (out_dir / JOB).read_text().strip()
    except OSError:
        return None
    last = out_dir / LAST
    return last if recorded == job.run_id and last.is_file() else None


def _read_payload(path: Path, *, require: Sequence[str]) -> dict[str, Any]:
    """A checkpoint file's dict, read safely (engine/checkpoint.py), with the ``require``d keys and
    of this format: another format is refused in one line naming it."""
    payload = load_checkpoint(path, require=require)
    if payload.get("format") != CHECKPOINT_FORMAT:
        found = payload.get("format")
        raise DataError(f"{path}: unsupported checkpoint format {found!r} (expected {CHECKPOINT_FORMAT})")
    recorded = payload.get("digest")
    if recorded is not None and recorded != payload_digest(payload):
        raise DataError(
            f"{path} is damaged: its content does not match the digest recorded when it was saved "
            "(flipped or overwritten bytes); use another checkpoint"
        )
    return payload


# A resume reads these as the loop's position: they must be what the trainer wrote.
_RESUME_FIELDS: dict[str, type | tuple[type, ...]] = {
    "epoch": int,
    "batches_done_in_epoch": int,
    "global_step": int,
    "history": list,
    "classes": list,
}

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


@dataclass(frozen=True)
class ResumeCheckpoint:
    """A checkpoint to resume from, read once: the CLI takes its settings, the run restores it
    (``Checkpointer.restore``, which then empties ``payload``)."""

    path: Path
    payload: dict[str, Any]
    config: TrainConfig  # the settings it was trained with

    @classmethod
    def read(cls, path: Path) -> ResumeCheckpoint:
        """The keys a resume needs, its position fields of the right types and a valid stored
        config (one-line DataErrors otherwise)."""
        path = Path(path)
        payload = _read_payload(path, require=RESUME_KEYS)
        for name, kind in _RESUME_FIELDS.items():
            value = payload.get(name, 0 if kind is int else [])
            if isinstance(value, bool) or not isinstance(value, kind) or (kind is int and value < 0):
                raise DataError(f"{path}: its {name!r} field is malformed ({value!r})")
        if not all(isinstance(record, Mapping) for record in payload["history"]):
            raise DataError(f"{path}: its 'history' field is malformed (records must be tables)")
        return cls(path=path, payload=payload, config=stored_config(payload, path))

    def check_run(self, cfg: TrainConfig, *, world_size: int) -> None:
        """Refuse (exit 2), before anything is built, a resumed run whose settings differ from the
        checkpoint's in anything but RESUME_MAY_CHANGE (naming the flag: the optimizer state, the
        schedule's length and the data's order were built for the saved ones, so a new value would
        be ignored or break the run), or whose number of processes differs (steps per epoch, the
        schedule's length and the data shards all depend on it)."""
        from resnet_cifar.config import flag_for

        now, then = cfg.to_dict(), self.config.to_dict()
        for section, entries in now.items():
            for name, value in entries.items():
                key = f"{section}.{name}"
                if key not in RESUME_MAY_CHANGE and value != then[section].get(name):
                    raise UsageError(
                        f"{flag_for(key)} {_plain(value)} differs from the checkpoint's "
                        f"{_plain(then[section].get(name))}: a resumed run keeps the settings {self.path} was "
                        "trained with (start a new run to change it)"
                    )
        saved_world = int(self.payload.get("world_size", 1))
        if saved_world != world_size:
            how = f"torchrun --nproc_per_node {saved_world}" if saved_world > 1 else "a single process"
            raise UsageError(
                f"{self.path} was trained by {saved_world} process(es), not {world_size}; resume it with {how}"
            )


def _plain(value: Any) -> str:
    return "none" if value is None else str(value).lower() if isinstance(value, bool) else str(value)


@dataclass(frozen=True)
class TrainedCheckpoint:
    """What a checkpoint says about the model it holds, for eval, predict, report and export."""

    path: Path
    classes: tuple[str, ...]
    config: TrainConfig  # the settings the model was trained with (its architecture among them)
    weights: str  # which weights inference uses: "ema" when the checkpoint has them, else "model"
    epoch: int | None
    pretrained: dict[str, str] | None  # name, file and sha256 of the starting weights; None: random or older
    temperature: float | None  # the fitted temperature the logits are divided by; None: not calibrated
    run_id: str | None  # the run's id (None: an older checkpoint)
    data_fingerprint: str | None  # the training data's fingerprint (None: an older checkpoint)

    def load_into(self, model: nn.Module, state: Mapping[str, Tensor]) -> None:
        """The checkpoint's weights (``state``, from read_trained_checkpoint) into ``model``, built
        from ``config`` for ``classes``, or a one-line DataError saying how they do not fit it."""
        mismatch = describe_mismatch(model.state_dict(), state)
        if mismatch:
            model_cfg = self.config.model
            raise DataError(
                f"{self.path}: the {self.weights} weights do not fit a ResNet-{model_cfg.depth} "
                f"({model_cfg.stem} stem, {len(self.classes)} classes): {mismatch}"
            )
        model.load_state_dict(state, strict=True)


def read_trained_checkpoint(path: Path) -> tuple[TrainedCheckpoint, dict[str, Tensor]]:
    """A checkpoint for eval, predict, report and export, checked (format, classes, stored config,
    weights: one-line DataErrors naming the file; UsageError when it is missing), and the weights
    to load into its model, under the plain module's keys."""
    path = Path(path)
    payload = _read_payload(path, require=TRAINED_KEYS)
    classes = _checked_classes(payload["classes"], path)
    config = stored_config(payload, path)  # a bad one is bad data in the file, as on resume
    state, weights = select_weights(payload, path)
    epoch = int(payload["epoch"]) if isinstance(payload.get("epoch"), int) else None
    pretrained = _checked_pretrained(payload.get("pretrained"), path)
    temperature = read_temperature(payload, path)
    _check_finite(state, path, weights)
    run_id, fingerprint = payload.get("run_id"), payload.get("data_fingerprint")
    saved = TrainedCheckpoint(
        path, classes, config, weights, epoch, pretrained, temperature,
        run_id if isinstance(run_id, str) else None, fingerprint if isinstance(fingerprint, str) else None,
    )  # fmt: skip
    return saved, state


def read_temperature(payload: Mapping[str, Any], path: Path) -> float | None:
    """The checkpoint's fitted temperature (None: not calibrated); a malformed one is bad data."""
    record = payload.get("temperature")
    if record is None:
        return None
    value = record.get("temperature") if isinstance(record, Mapping) else None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise DataError(f"{path}: its 'temperature' field is malformed (a positive, finite temperature expected)")
    return float(value)


def store_temperature(path: Path, record: Mapping[str, Any]) -> None:
    """Write ``record`` (TemperatureFit.to_dict plus what it was fitted on) into the checkpoint at
    ``path`` as its ``temperature``, atomically; the rest of the file is kept as it was. The run
    folder is taken first (``acquire``), so a training run writing it at the same time is refused."""
    path = Path(path)
    holder = Checkpointer(path.parent)
    holder.acquire()
    try:
        payload = _read_payload(path, require=TRAINED_KEYS)
        payload["temperature"] = dict(record)
        read_temperature(payload, path)  # what is stored reads back
        if payload.get("digest") is not None:  # checked on read above; stamped again for the new content
            payload["digest"] = payload_digest(payload)
        buffer = io.BytesIO()
        torch.save(payload, buffer)
        write_checkpoint_bytes(path, buffer.getbuffer())
    finally:
        holder.release()


def _check_finite(state: Mapping[str, Tensor], path: Path, weights: str) -> None:
    """Refuse weights that hold NaN or infinity: every output of such a model is meaningless."""
    for key, tensor in state.items():
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            raise DataError(
                f"{path}: its {weights} weights hold NaN or infinite values (first {key}): the model diverged, "
                "and nothing it outputs means anything; use a checkpoint from before"
            )


def select_weights(payload: Mapping[str, Any], path: Path) -> tuple[dict[str, Tensor], str]:
    """The state dict to evaluate and its name: the EMA weights when present (they are what the
    trainer validated and tested), else ``model``.

    The EMA entry is an ``AveragedModel`` state dict; its ``module.`` prefix is stripped and its
    ``n_averaged`` counter dropped, which leaves the plain module's keys.
    """
    ema = payload.get("ema")
    if ema is None:
        return _state_dict(payload["model"], path, "model"), "model"
    ema = _state_dict(ema, path, "ema")
    weights: dict[str, Tensor] = {}
    for key, value in ema.items():
        if key == "n_averaged":
            continue
        if not key.startswith(EMA_PREFIX):
            raise DataError(f"{path}: EMA weight {key!r} lacks the {EMA_PREFIX!r} prefix of an AveragedModel")
        weights[key[len(EMA_PREFIX) :]] = value
    return weights, "ema"


def _state_dict(value: Any, path: Path, name: str) -> dict[str, Tensor]:
    if not isinstance(value, Mapping) or not all(
        isinstance(key, str) and isinstance(tensor, Tensor) for key, tensor in value.items()
    ):
        raise DataError(f"{path}: {name!r} is not a state dict (names to tensors)")
    return dict(value)


def _checked_classes(value: Any, path: Path) -> tuple[str, ...]:
    if (
        not isinstance(value, (list, tuple))
        or len(value) < 2
        or not all(isinstance(name, str) and name for name in value)
        or len(set(value)) != len(value)
    ):
        raise DataError(f"{path}: 'classes' must be a list of at least two distinct class names")
    return tuple(value)


def _checked_pretrained(value: Any, path: Path) -> dict[str, str] | None:
    """The checkpoint's record of its starting weights: None (random, or an older checkpoint) or strings."""
    if value is None:
        return None
    if not isinstance(value, Mapping) or not all(isinstance(v, str) for v in value.values()):
        raise DataError(f"{path}: 'pretrained' must be a table of strings (name, file, sha256)")
    return {str(key): text for key, text in value.items()}
