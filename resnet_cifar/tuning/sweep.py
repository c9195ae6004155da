"""Hyperparameter sweeps: Optuna trials of the training engine over a search space.

``run_sweep`` tops a study up to ``trials`` trials, each one a full run of the Trainer with the
sweep's fixed settings (``base``) and the trial's sampled parameters, trained into its own folder
``out/trials/<number>/`` (trial numbers are never reused, so a folder is never trained into twice).

* Sampling: Optuna's TPE sampler, seeded for each trial with the base config's ``run.seed`` plus
  the number of trials already in the study, so a top-up does not replay the random start-up
  draws of the run before it.
* Pruning: each epoch's validation accuracy is reported to Optuna's MedianPruner (its defaults:
  once 5 trials have completed, a trial whose best accuracy so far is below the completed trials'
  median at the same epoch is pruned). The trainer is then asked to stop through its StopRequest
  (``prune()``) and stops right after that epoch's checkpoints, so a pruned trial's folder holds
  its config, metrics and a resumable last.pt.
* Storage: SQLite in ``out/study.db`` by default, an RDB URL (PostgreSQL, for several machines) or
  ``journal:PATH`` (see storage.py), so running again tops the study up to the new ``trials`` and
  several processes or machines can work on one study. Exactly ``trials`` trials take a place
  (complete, pruned, running or queued, or failed for a reason of their own), whatever the number
  of workers: see _WorkerRegistry. A trial whose worker was killed is failed by the heartbeat of an
  RDB storage and queued again once; one stopped by a signal is failed with ``interrupted`` set;
  neither counts, so another worker (or the next run) replaces it.
* Failures: a ResnetCifarError from a trial (a sampled combination that does not validate, a
  non-finite loss, ...) or a CUDA out-of-memory error fails that trial, with its message in the
  ``error`` user attribute, and the study goes on. Any other exception fails the trial and is raised.
* Outputs: ``trials.csv`` and ``sweep.html`` (every trial of the study; rewritten after every
  trial, so an interrupted sweep leaves them current), a ``trial.json`` in each trial folder, and
  the best trial's full config as ``best.toml`` (or ``best.yaml``) that ``resnet-cifar train
  --config`` accepts, written once, as the worker leaves. ``report_sweep`` rewrites them from the
  storage on any machine.

The value of a trial is its best validation accuracy (maximized); the test split is reported per
trial (``test_acc``) but never used for selection. Nothing here prints, and Optuna's own logging is
lowered to warnings while a sweep runs.
"""

from __future__ import annotations

import contextlib
import csv
import io
import math
import os
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from resnet_cifar.config import TrainConfig, config_text
from resnet_cifar.engine.trainer import EpochFinished, Event, StepFinished, StopRequest, train
from resnet_cifar.errors import ResnetCifarError, UsageError
from resnet_cifar.files import atomic_write, json_text, one_line
from resnet_cifar.tuning.page import Axis, SweepPage, render_sweep_page
from resnet_cifar.tuning.space import SearchSpace, check_space
from resnet_cifar.tuning.storage import (
    DEFAULT_HEARTBEAT,
    GRACE_FACTOR,
    OpenedStorage,
    check_storage_url,
    default_storage,
    open_storage,
)

DEFAULT_STUDY_NAME = "resnet-cifar"
BEST_FORMATS = ("toml", "yaml")
# Where `train --config best.toml` writes when no --out is given: a fresh folder, not a trial's.
BEST_RUN_DIR = Path("runs/best")


# ----------------------------------------------------------------------------- values and events


@dataclass(frozen=True)
class TrialSummary:
    """One trial of the study, as stored (earlier runs and other processes included)."""

    number: int
    state: str  # COMPLETE, PRUNED, FAIL, RUNNING or WAITING
    params: dict[str, Any]
    value: float | None  # best validation accuracy (a pruned trial: its last reported one)
    duration_seconds: float | None
    out_dir: str | None
    test_acc: float | None
    error: str | None

    def to_dict(self) -> dict[str, Any]:
        return {
            "number": self.number,
            "state": self.state,
            "params": dict(self.params),
            "value": self.value,
            "duration_seconds": self.duration_seconds,
            "out_dir": self.out_dir,
            "test_acc": self.test_acc,
            "error": self.error,
        }


@dataclass(frozen=True)
class SweepResult:
    study_name: str
    storage: str
    out_dir: Path
    trials: tuple[TrialSummary, ...]  # every trial of the study, by number
    best: TrialSummary | None  # None until a trial completes
    best_config: Path | None
    trials_csv: Path
    ran: int  # trials this call started
    interrupted: str | None  # the signal that stopped the sweep, if any

    @property
    def completed(self) -> int:
        return sum(trial.state == "COMPLETE" for trial in self.trials)

    def to_dict(self) -> dict[str, Any]:
        best = None
        if self.best is not None:
            best = {**self.best.to_dict(), "config_file": None if self.best_config is None else str(self.best_config)}
        return {
            "study_name": self.study_name,
            "storage": self.storage,
            "out_dir": str(self.out_dir),
            "ran": self.ran,
            "interrupted": self.interrupted,
            "trials_csv": str(self.trials_csv),
            "trials": [trial.to_dict() for trial in self.trials],
            "best": best,
        }


@dataclass(frozen=True)
class TrialStarted:
    number: int
    params: dict[str, Any]
    out_dir: Path


@dataclass(frozen=True)
class TrialEvent:
    """A trainer event (RunStarted, StepFinished, EpochFinished) of the running trial."""

    number: int
    event: Event


@dataclass(frozen=True)
class TrialFinished:
    trial: TrialSummary


SweepEvent = TrialStarted | TrialEvent | TrialFinished
SweepEventHandler = Callable[[SweepEvent], None]


class _TrialPruned(Exception):
    """The pruner stopped the trial (kept apart from optuna.TrialPruned so no import is needed here)."""


# ----------------------------------------------------------------------------- the sweep


def report_sweep(
    *, out_dir: Path, storage: str | None = None, study_name: str = DEFAULT_STUDY_NAME, best_format: str = "toml"
) -> SweepResult:
    """Read a study as it stands (from any machine that reaches its storage; workers may still be
    running) and write trials.csv and the best config into ``out_dir``, running no trial.

    Raises:
        UsageError: no such storage or study, or a storage that cannot be reached (one line,
            password masked).
    """
    import optuna
    import sqlalchemy.exc

    _check_sweep_values(1, None, study_name, best_format, DEFAULT_HEARTBEAT)
    out_dir = Path(out_dir)
    if storage is None and not (out_dir / "study.db").is_file():
        raise UsageError(f"{out_dir / 'study.db'} does not exist; give the sweep's --out or its --storage URL")
    with _quiet_optuna():
        opened = open_storage(storage or default_storage(out_dir))
        try:
            study = optuna.load_study(study_name=study_name, storage=opened.storage)
        except KeyError:
            names = ", ".join(repr(name) for name in optuna.get_all_study_names(opened.storage)) or "none"
            raise UsageError(f"{opened.shown}: no study {study_name!r} (studies there: {names})") from None
        except sqlalchemy.exc.SQLAlchemyError as error:
            raise opened.error(f"cannot read study {study_name!r}", error) from None
        _make_folder(out_dir)
        reports = _write_reports(study, out_dir, best_format, opened.shown)
    return _result(study_name, opened, out_dir, reports, ran=0, interrupted=None)


def _check_sweep_values(trials: int, timeout: float | None, study_name: str, best_format: str, heartbeat: int) -> None:
    if trials < 1:
        raise UsageError(f"--trials must be at least 1, got {trials}")
    if timeout is not None and not (math.isfinite(timeout) and timeout > 0):
        raise UsageError(f"--timeout must be a positive number of seconds, got {timeout}")
    if not study_name.strip():
        raise UsageError("--study-name must not be empty")
    if best_format not in BEST_FORMATS:
        raise UsageError(f"--best-format must be one of {', '.join(BEST_FORMATS)}, got {best_format!r}")
    if heartbeat < 1:
        raise UsageError(f"--heartbeat must be at least 1 second, got {heartbeat}")


def apply_params(base: TrainConfig, params: dict[str, Any], *, out_dir: Path) -> TrainConfig:
    """``base`` with the sampled ``params`` (dotted keys) laid over it, trained into ``out_dir``;
    validated as a whole, so a combination the config refuses raises its UsageError."""
    values = base.to_dict()
    for key, value in params.items():
        section, name = key.split(".", 1)
        values[section][name] = value
    values["run"]["out_dir"] = str(out_dir)
    values["run"]["resume"] = None
    return TrainConfig.from_dict(values)


def run_sweep(
    base: TrainConfig,
    space: SearchSpace,
    *,
    out_dir: Path,
    trials: int,
    timeout: float | None = None,
    study_name: str = DEFAULT_STUDY_NAME,
    storage: str | None = None,
    best_format: str = "toml",
    pruner: Any = None,
    on_event: SweepEventHandler | None = None,
    stop: StopRequest | None = None,
    heartbeat: int = DEFAULT_HEARTBEAT,
) -> SweepResult:
    """Top the study up to ``trials`` finished trials (fewer when ``timeout`` seconds pass first or
    ``stop`` is requested) and write trials.csv and the best config into ``out_dir``.

    ``base`` holds the fixed settings (its ``run.out_dir`` is replaced per trial); ``space`` the
    sampled ones, which win over ``base``. ``pruner`` defaults to Optuna's MedianPruner.
    A stop request (the CLI's signal handler) stops the running trial after its current step; that
    trial is recorded as failed with the ``interrupted`` user attribute and does not count towards
    ``trials``, so the next run replaces it.

    Raises:
        UsageError: ``trials`` below 1, a ``timeout`` that is not a positive number, an empty
            ``study_name``, an unknown ``best_format``, a space bound the setting refuses, a storage
            that cannot be opened (one line, password masked), a storage holding another study
            (default storage) or a direction other than maximize, a space whose distributions
            changed for the same study.
    """
    import optuna

    _check_sweep_values(trials, timeout, study_name, best_format, heartbeat)
    check_space(space, base)
    out_dir = Path(out_dir)
    stop = stop or StopRequest()
    emit = on_event or (lambda event: None)
    trials_dir = out_dir / "trials"
    if storage is not None:
        check_storage_url(storage)  # before the sweep folder is made
    _make_folder(out_dir)

    with _quiet_optuna():
        study, opened = _open_study(out_dir, storage, study_name, pruner or optuna.pruners.MedianPruner(), heartbeat)
        existing = study.get_trials(deepcopy=False)
        _check_compatible(space, existing, opened.shown)
        if not existing and trials_dir.is_dir() and any(trials_dir.iterdir()):
            raise UsageError(
                f"{trials_dir} holds trial runs of a study that {opened.shown} does not know; use another --out"
            )
        started = time.monotonic()
        ran = 0
        interrupted: str | None = None
        workers = _WorkerRegistry(out_dir, own_storage=storage is None, heartbeat=opened.heartbeat)
        workers.join(study)
        try:
            while stop.signal_name is None:
                if timeout is not None and time.monotonic() - started >= timeout:
                    break
                trial = workers.next_trial(study, trials, base.run.seed, stop)
                if trial is None:
                    break
                interrupted = _run_beating(
                    study, trial, opened, emit, lambda: _run_trial(study, trial, base, space, trials_dir, emit, stop)
                )
                ran += 1
                _write_reports(study, out_dir, None, opened.shown)
                if interrupted is not None:
                    break
        finally:
            workers.leave()
        if stop.signal_name is not None:
            interrupted = stop.signal_name
        # The best config once, as this worker leaves: the study's best of every worker's trials.
        reports = _write_reports(study, out_dir, best_format, opened.shown)
    return _result(study_name, opened, out_dir, reports, ran=ran, interrupted=interrupted)


def _run_beating(
    study: Any, trial: Any, opened: OpenedStorage, emit: SweepEventHandler, run: Callable[[], str | None]
) -> str | None:
    """``run`` the trial with its heartbeat. If another worker failed it meanwhile (its heartbeats
    came too late: a machine too busy to run this process for twice --heartbeat seconds), the
    storage refuses every later update of it: this worker lets the trial go (its retry runs once,
    anywhere) and goes on with the next one."""
    from optuna.exceptions import UpdateFinishedTrialError

    try:
        with _heartbeat(study, trial, opened):
            return run()
    except UpdateFinishedTrialError:
        lost = _summary(_frozen(study, trial.number))
        note = f"failed by another worker: no heartbeat for {GRACE_FACTOR}x --heartbeat seconds; it is run again once"
        emit(TrialFinished(trial=replace(lost, error=lost.error or note)))
        return None


def _make_folder(out_dir: Path) -> None:
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise UsageError(f"{out_dir}: cannot create the sweep folder ({error.strerror or error})") from None


def _result(
    study_name: str, opened: OpenedStorage, out_dir: Path, reports: tuple[Any, Path | None, Path], *, ran: int,
    interrupted: str | None,
) -> SweepResult:  # fmt: skip
    summaries, best_path, trials_csv = reports
    return SweepResult(
        study_name=study_name,
        storage=opened.shown,
        out_dir=out_dir,
        trials=summaries,
        best=_best(summaries),
        best_config=best_path,
        trials_csv=trials_csv,
        ran=ran,
        interrupted=interrupted,
    )


def _open_study(
    out_dir: Path, storage: str | None, study_name: str, pruner: Any, heartbeat: int
) -> tuple[Any, OpenedStorage]:
    import optuna
    import sqlalchemy.exc

    opened = open_storage(storage or default_storage(out_dir), heartbeat=heartbeat)
    try:
        if storage is None:
            # One sweep folder holds one study: trial folders are named by trial number only.
            others = [name for name in optuna.get_all_study_names(opened.storage) if name != study_name]
            if others:
                raise UsageError(
                    f"{out_dir / 'study.db'} holds study {others[0]!r}; use --study-name {others[0]} or another --out"
                )
        study = optuna.create_study(
            storage=opened.storage, study_name=study_name, direction="maximize", pruner=pruner, load_if_exists=True
        )
    except (sqlalchemy.exc.SQLAlchemyError, ValueError) as error:
        raise opened.error(f"cannot open study {study_name!r}", error) from None
    if study.direction != optuna.study.StudyDirection.MAXIMIZE:
        raise UsageError(f"{opened.shown}: study {study_name!r} minimizes; a sweep maximizes validation accuracy")
    return study, opened


def _check_compatible(space: SearchSpace, existing: list[Any], storage_url: str) -> None:
    """The same parameter must keep its kind of distribution across the runs of one study."""
    from optuna.distributions import check_distribution_compatibility

    for parameter in space.parameters:
        new = parameter.distribution()
        for trial in existing:
            old = trial.distributions.get(parameter.key)
            if old is None:
                continue
            try:
                check_distribution_compatibility(old, new)
            except ValueError:
                raise UsageError(
                    f"{space.source}: {parameter.key} was searched as {old} in this study ({storage_url}); "
                    "keep its type and choices, or start another study (--study-name or --out)"
                ) from None
            break


# The study's user attribute listing the trials a killed worker left running (see _WorkerRegistry).
ORPHANED_ATTR = "orphaned_trials"
# Seconds between two looks at the study by a worker waiting for other workers' running trials.
WAIT_POLL_SECONDS = 1.0


def _counts(trial: Any, orphaned: set[int]) -> bool:
    """Whether ``trial`` takes one of the study's --trials places: complete, pruned, running or
    queued ones do, and failed ones that failed for a reason of their own (an ``error``). A trial
    a signal interrupted, one whose worker died (failed by the heartbeat, or orphaned: its retry or
    a new trial replaces it) and a surplus one do not."""
    state = trial.state.name
    if state in ("COMPLETE", "PRUNED", "RUNNING", "WAITING"):
        return True
    attrs = trial.user_attrs
    return (
        state == "FAIL"
        and attrs.get("error") is not None
        and not attrs.get("interrupted", False)
        and not attrs.get(SURPLUS_ATTR, False)
        and trial.number not in orphaned
    )


def _counting(study: Any) -> list[Any]:
    orphaned = set(study.user_attrs.get(ORPHANED_ATTR, []))
    return [trial for trial in study.get_trials(deepcopy=False) if _counts(trial, orphaned)]


# A trial a worker asked for after the study was full (another machine took the last place at the
# same moment): told failed at once with this user attribute, never trained, never counted.
SURPLUS_ATTR = "surplus"


class _WorkerRegistry:
    """Keeps every worker of one study, on any machine, at exactly --trials trials.

    A worker asks for a trial only while fewer than --trials trials take a place (see _counts), and
    then checks its trial's rank: trials are numbered in the order the storage created them, so if
    the trials before it already take every place (another worker asked at the same moment), it is
    told failed as surplus, untrained. Where the storage has heartbeats, a worker with nothing left
    to start waits while other workers' trials run: one of them may die, and its retry (or the
    place it frees) needs a worker. It leaves when nothing runs any more.

    On one sweep folder, workers also take turns asking under an exclusive flock on ``.ask.lock``
    and each holds a shared flock on ``.workers.lock`` while it runs. With the folder's own storage,
    a worker that finds no other worker alive there (its exclusive try on ``.workers.lock``
    succeeds) marks trials left RUNNING failed at once (orphaned), instead of waiting out the
    heartbeat; on a shared storage other machines' workers may be running those trials.
    """

    def __init__(self, out_dir: Path, *, own_storage: bool, heartbeat: bool) -> None:
        self.out_dir = out_dir
        self.own_storage = own_storage
        self.heartbeat = heartbeat
        self._presence: int | None = None

    def join(self, study: Any) -> None:
        import fcntl

        self._presence = os.open(self.out_dir / ".workers.lock", os.O_RDWR | os.O_CREAT, 0o644)
        with self._asking():
            try:
                fcntl.flock(self._presence, fcntl.LOCK_EX | fcntl.LOCK_NB)
                alone = True
            except BlockingIOError:
                alone = False
            if alone and self.own_storage:
                _fail_orphaned_trials(study)
            fcntl.flock(self._presence, fcntl.LOCK_SH)  # present, with the others

    def leave(self) -> None:
        if self._presence is not None:
            os.close(self._presence)
            self._presence = None

    def next_trial(self, study: Any, trials: int, seed: int, stop: StopRequest) -> Any:
        """A trial to run (a new one or a queued retry), or None once the study is full and, where
        dead workers are found, nothing runs any more (or ``stop`` was requested)."""
        from optuna.storages import fail_stale_trials

        while stop.signal_name is None:
            if self.heartbeat:
                fail_stale_trials(study)  # dead workers' trials: failed, and queued again once
            with self._asking():
                counting = _counting(study)
                if len(counting) < trials or any(trial.state.name == "WAITING" for trial in counting):
                    trial = self._ask(study, seed)
                    if _rank(study, trial.number) < trials:
                        return trial
                    _tell_surplus(study, trial)
                    continue
            if not self.heartbeat or not any(trial.state.name == "RUNNING" for trial in counting):
                return None
            _wait(WAIT_POLL_SECONDS, stop)
        return None

    @staticmethod
    def _ask(study: Any, seed: int) -> Any:
        import optuna

        # TPE keeps no state but its random stream (the history is in the storage), so each
        # trial gets a sampler seeded by the trials before it: reproducible, and a top-up or a
        # second worker does not replay the random start-up draws of the first.
        study.sampler = optuna.samplers.TPESampler(seed=(seed + len(study.get_trials(deepcopy=False))) % 2**32)
        return study.ask()

    @contextlib.contextmanager
    def _asking(self) -> Iterator[None]:
        import fcntl

        fd = os.open(self.out_dir / ".ask.lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)


def _rank(study: Any, number: int) -> int:
    """How many place-taking trials came before trial ``number``."""
    return sum(trial.number < number for trial in _counting(study))


def _tell_surplus(study: Any, trial: Any) -> None:
    from optuna.trial import TrialState

    trial.set_user_attr(SURPLUS_ATTR, True)
    trial.set_user_attr("error", "not run: the study already had --trials trials when this worker asked")
    study.tell(trial, state=TrialState.FAIL)


def _wait(seconds: float, stop: StopRequest) -> None:
    """Sleep ``seconds``, in short naps so that a stop request is seen at once."""
    deadline = time.monotonic() + seconds
    while stop.signal_name is None and (left := deadline - time.monotonic()) > 0:
        time.sleep(min(left, 0.2))


@contextlib.contextmanager
def _heartbeat(study: Any, trial: Any, opened: OpenedStorage) -> Iterator[None]:
    """Record ``trial``'s heartbeat every interval while it runs (Optuna's optimize() does this
    for its own trials; a sweep asks and tells, so it beats itself)."""
    if not opened.heartbeat:
        yield
        return
    storage = opened.storage
    trial_id = storage.get_trial_id_from_study_id_trial_number(
        storage.get_study_id_from_name(study.study_name), trial.number
    )
    done = threading.Event()

    def beat() -> None:
        while True:
            with contextlib.suppress(Exception):  # a lost connection: the next beat tries again
                storage.record_heartbeat(trial_id)
            if done.wait(storage.get_heartbeat_interval()):
                return

    thread = threading.Thread(target=beat, name=f"heartbeat-trial-{trial.number}", daemon=True)
    thread.start()
    try:
        yield
    finally:
        done.set()
        thread.join()


def _fail_orphaned_trials(study: Any) -> None:
    from optuna.trial import TrialState

    orphans = [trial.number for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))]
    if not orphans:
        return
    # Recorded before they are told failed, so they never count towards --trials, even if this
    # worker is killed between the two.
    study.set_user_attr(ORPHANED_ATTR, sorted({*study.user_attrs.get(ORPHANED_ATTR, []), *orphans}))
    for number in orphans:
        study.tell(number, state=TrialState.FAIL)


def _run_trial(
    study: Any,
    trial: Any,
    base: TrainConfig,
    space: SearchSpace,
    trials_dir: Path,
    emit: SweepEventHandler,
    stop: StopRequest,
) -> str | None:
    """Train one asked trial and tell its outcome; returns the signal name if one interrupted it."""
    import torch
    from optuna.trial import TrialState

    folder = trials_dir / str(trial.number)
    trial.set_user_attr("out_dir", str(folder))
    params: dict[str, Any] = {}
    state, value, error, interrupted = TrialState.FAIL, None, None, None
    extra: dict[str, Any] = {}
    try:
        params = space.suggest(trial)
        emit(TrialStarted(number=trial.number, params=dict(params), out_dir=folder))
        cfg = apply_params(base, params, out_dir=folder)
        trial.set_user_attr("config", cfg.to_dict())
        if folder.exists() and any(folder.iterdir()):
            raise UsageError(f"{folder} already holds files; a sweep folder holds one study, use another --out")
        result = _fit(cfg, trial, emit, stop)
        extra = {"best_epoch": result.best_epoch, "epochs_run": result.epochs_run, "test_acc": result.test_acc}
        if result.interrupted is not None:  # a signal wins over the pruner: the trial is replaced
            interrupted = result.interrupted
            error = f"interrupted by {interrupted} after {result.epochs_run} epochs"
            trial.set_user_attr("interrupted", True)
        elif result.pruned:
            raise _TrialPruned
        elif result.best_val_acc is None or not math.isfinite(result.best_val_acc):
            error = "no validation accuracy was measured"
        else:
            state, value = TrialState.COMPLETE, float(result.best_val_acc)
    except _TrialPruned:
        state = TrialState.PRUNED
    except (ResnetCifarError, torch.cuda.OutOfMemoryError) as exc:
        error = one_line(exc)
        if isinstance(exc, torch.cuda.OutOfMemoryError):
            torch.cuda.empty_cache()  # the next trial (a smaller batch, maybe) needs the memory back
    except BaseException as exc:  # a bug or Ctrl-C: record the trial as failed, then let it surface
        if isinstance(exc, KeyboardInterrupt):
            trial.set_user_attr("interrupted", True)
        _finish(study, trial, TrialState.FAIL, None, one_line(exc) or type(exc).__name__, extra, folder, params, emit)
        raise
    _finish(study, trial, state, value, error, extra, folder, params, emit)
    return interrupted


def _fit(cfg: TrainConfig, trial: Any, emit: SweepEventHandler, stop: StopRequest) -> Any:
    """Train one trial's config, reporting each epoch's val_acc to the pruner.

    The trainer gets a StopRequest of its own: the pruner sets it after an epoch, and a signal
    that reaches the sweep's ``stop`` is passed on at the trainer's next step or epoch event
    (the trainer checks its request right after sending each)."""
    trial_stop = StopRequest()

    def handle(event: Event) -> None:
        emit(TrialEvent(number=trial.number, event=event))
        if isinstance(event, EpochFinished):
            trial.report(event.record.val_acc, event.record.epoch)
            if trial.should_prune() and trial_stop.signal_name is None:
                trial_stop.prune()
        if isinstance(event, (StepFinished, EpochFinished)) and stop.signal_name is not None:
            trial_stop.request(stop.signal_name)

    return train(cfg, on_event=handle, stop=trial_stop)


def _finish(
    study: Any,
    trial: Any,
    state: Any,
    value: float | None,
    error: str | None,
    extra: dict[str, Any],
    folder: Path,
    params: dict[str, Any],
    emit: SweepEventHandler,
) -> None:
    """Record the outcome in the storage and in the trial's folder, then tell the caller."""
    for key, item in extra.items():
        trial.set_user_attr(key, item)
    if error is not None:
        trial.set_user_attr("error", error)
    study.tell(trial, value if state.name == "COMPLETE" else None, state=state)
    summary = _summary(_frozen(study, trial.number))
    if folder.is_dir():
        atomic_write(folder / "trial.json", json_text(summary.to_dict(), indent=2) + "\n")
    emit(TrialFinished(trial=summary))


def _frozen(study: Any, number: int) -> Any:
    return next(trial for trial in study.get_trials(deepcopy=False) if trial.number == number)


# ----------------------------------------------------------------------------- reports


def _summary(trial: Any) -> TrialSummary:
    duration = trial.duration.total_seconds() if trial.duration is not None else None
    test_acc = trial.user_attrs.get("test_acc")
    return TrialSummary(
        number=trial.number,
        state=trial.state.name,
        params=dict(trial.params),
        value=trial.value,
        duration_seconds=duration,
        out_dir=trial.user_attrs.get("out_dir"),
        test_acc=None if test_acc is None else float(test_acc),
        error=trial.user_attrs.get("error"),
    )


def _best(summaries: tuple[TrialSummary, ...]) -> TrialSummary | None:
    complete = [trial for trial in summaries if trial.state == "COMPLETE" and trial.value is not None]
    # Ties go to the earlier trial, as Optuna's best_trial does.
    return max(complete, key=lambda trial: (trial.value, -trial.number), default=None)


def best_config(study_trial_config: dict[str, Any]) -> TrainConfig:
    """A trial's stored config as a fresh training run: into runs/best, not resuming anything."""
    cfg = TrainConfig.from_dict(study_trial_config)
    return replace(cfg, run=replace(cfg.run, out_dir=BEST_RUN_DIR, resume=None))


def _write_reports(
    study: Any, out_dir: Path, best_format: str | None, shown: str
) -> tuple[tuple[TrialSummary, ...], Path | None, Path]:
    """trials.csv and sweep.html of every trial and, given a ``best_format``, the best trial's
    config; returns (summaries, best file or None, csv)."""
    frozen = sorted(study.get_trials(deepcopy=False), key=lambda trial: trial.number)
    summaries = tuple(_summary(trial) for trial in frozen)
    trials_csv = out_dir / "trials.csv"
    atomic_write(trials_csv, _csv_text(summaries))
    best = _best(summaries)
    best_path, best_text = None, None
    if best is not None:
        cfg = best_config(next(trial for trial in frozen if trial.number == best.number).user_attrs["config"])
        best_text = config_text(cfg, f".{best_format or 'toml'}")
        if best_format is not None:
            best_path = out_dir / f"best.{best_format}"
            atomic_write(best_path, best_text)
    atomic_write(out_dir / SWEEP_PAGE, render_sweep_page(_page(study, shown, frozen, summaries, best_text, best_path)))
    return summaries, best_path, trials_csv


# The sweep's page, beside trials.csv.
SWEEP_PAGE = "sweep.html"


def _page(
    study: Any, shown: str, frozen: list[Any], summaries: tuple[TrialSummary, ...], best_text: str | None,
    best_path: Path | None,
) -> SweepPage:  # fmt: skip
    from resnet_cifar import __version__

    importances, note = _importances(study)
    return SweepPage(
        study_name=study.study_name,
        storage=shown,
        trials=summaries,
        best=_best(summaries),
        axes=_axes(frozen),
        importances=importances,
        importance_note=note,
        best_config_text=best_text,
        best_config_file=None if best_path is None else str(best_path),
        written_at=datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC"),
        version=__version__,
    )


def _axes(frozen: list[Any]) -> tuple[Axis, ...]:
    """One axis per searched parameter, from the distributions the study stored."""
    from optuna.distributions import CategoricalDistribution

    axes: dict[str, Axis] = {}
    for trial in frozen:
        for key, distribution in trial.distributions.items():
            if key not in axes:
                if isinstance(distribution, CategoricalDistribution):
                    axes[key] = Axis(key=key, choices=tuple(distribution.choices))
                else:
                    axes[key] = Axis(key=key, log=bool(getattr(distribution, "log", False)))
    return tuple(axes[key] for key in sorted(axes))


def _importances(study: Any) -> tuple[dict[str, float] | None, str]:
    """Optuna's PED-ANOVA importances over the complete trials (its evaluator that needs no
    scikit-learn, and is deterministic: the same study gives the same page), or None and the
    reason there are none."""
    import optuna
    from optuna.trial import TrialState

    if len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))) < 2:
        return None, "they need at least 2 complete trials"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # experimental; few trials for its quantile
            values = optuna.importance.get_param_importances(study, evaluator=importance_evaluator())
    except (RuntimeError, ValueError, ImportError, ZeroDivisionError) as error:
        return None, one_line(error)
    shares = {key: float(value) for key, value in values.items()}
    if not all(math.isfinite(share) for share in shares.values()):
        return None, "the complete trials do not tell the parameters apart yet"
    return shares, "Optuna's PedAnovaImportanceEvaluator over the complete trials, normalised to sum to 1."


def importance_evaluator() -> Any:
    """The evaluator of sweep.html's importances (tests compare with it)."""
    import optuna

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return optuna.importance.PedAnovaImportanceEvaluator()


def _csv_text(summaries: tuple[TrialSummary, ...]) -> str:
    param_keys = sorted({key for trial in summaries for key in trial.params})
    columns = ["number", "state", "value", "duration_seconds", "test_acc", *param_keys, "out_dir", "error"]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    for trial in summaries:
        row = {key: value for key, value in trial.to_dict().items() if key in columns}
        row.update(trial.params)
        writer.writerow(row)
    return buffer.getvalue()


# ----------------------------------------------------------------------------- helpers


@contextmanager
def _quiet_optuna() -> Iterator[None]:
    """Optuna logs every trial at INFO on stderr; a library must not print, so warnings only, and
    not the two that a sweep's own heartbeat loop (ask and tell, not optimize) always triggers."""
    import optuna

    previous = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
            warnings.filterwarnings("ignore", message="Heartbeat of storage is supposed to be used with Study.optimize")
            yield
    finally:
        optuna.logging.set_verbosity(previous)


__all__ = [
    "BEST_FORMATS",
    "DEFAULT_STUDY_NAME",
    "SweepEvent",
    "SweepResult",
    "TrialEvent",
    "TrialFinished",
    "TrialStarted",
    "TrialSummary",
    "apply_params",
    "best_config",
    "default_storage",
    "importance_evaluator",
    "report_sweep",
    "run_sweep",
]
