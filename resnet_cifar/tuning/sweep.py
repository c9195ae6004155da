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
* Storage: SQLite in ``out/study.db`` by default (any Optuna RDB URL may be given instead), so
  running again tops the study up to the new ``trials`` and several processes or machines can
  work on one study: each counts the trials already finished (complete, pruned or failed) before
  starting another, and stops once the study holds ``trials`` of them (workers that check at the
  same moment may each start one more). A trial whose process was killed stays RUNNING in the
  storage and does not count; one stopped by a signal is failed with ``interrupted`` set and
  does not count either, so the next run replaces it.
* Failures: a ResnetCifarError from a trial (a sampled combination that does not validate, a
  non-finite loss, ...) or a CUDA out-of-memory error fails that trial, with its message in the
  ``error`` user attribute, and the study goes on. Any other exception fails the trial and is raised.
* Outputs: ``trials.csv`` (every trial of the study), the best trial's full config as
  ``best.toml`` (or ``best.yaml``) that ``resnet-cifar train --config`` accepts, and a
  ``trial.json`` in each trial folder. They are rewritten after every trial, so an interrupted
  sweep leaves them current.

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
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from resnet_cifar.config import TrainConfig, save_config
from resnet_cifar.engine.trainer import EpochFinished, Event, StepFinished, StopRequest, train
from resnet_cifar.errors import ResnetCifarError, UsageError
from resnet_cifar.files import atomic_write, first_line, json_text, one_line
from resnet_cifar.tuning.space import SearchSpace, check_space

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


def default_storage(out_dir: Path) -> str:
    return f"sqlite:///{Path(out_dir).resolve() / 'study.db'}"


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
) -> SweepResult:
    """Top the study up to ``trials`` finished trials (fewer when ``timeout`` seconds pass first or
    ``stop`` is requested) and write trials.csv and the best config into ``out_dir``.

    ``base`` holds the fixed settings (its ``run.out_dir`` is replaced per trial); ``space`` the
    sampled ones, which win over ``base``. ``pruner`` defaults to Optuna's MedianPruner.
    A stop request (the CLI's signal handler) stops the running trial after its current step; that
    trial is recorded as failed with the ``interrupted`` user attribute and does not count towards
    ``trials``, so the next run replaces it.

    Raises:
        UsageError: ``trials`` below 1, an unknown ``best_format``, a space bound the setting
            refuses, a storage holding another study (default storage) or a direction other than
            maximize, a space whose distributions changed for the same study.
    """
    import optuna

    if trials < 1:
        raise UsageError(f"--trials must be at least 1, got {trials}")
    if timeout is not None and timeout <= 0:
        raise UsageError(f"--timeout must be positive seconds, got {timeout}")
    if best_format not in BEST_FORMATS:
        raise UsageError(f"--best-format must be one of {', '.join(BEST_FORMATS)}, got {best_format!r}")
    check_space(space, base)
    out_dir = Path(out_dir)
    stop = stop or StopRequest()
    emit = on_event or (lambda event: None)
    trials_dir = out_dir / "trials"
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise UsageError(f"{out_dir}: cannot create the sweep folder ({error.strerror or error})") from None

    with _quiet_optuna():
        study, storage_url = _open_study(out_dir, storage, study_name, pruner or optuna.pruners.MedianPruner())
        existing = study.get_trials(deepcopy=False)
        _check_compatible(space, existing, storage_url)
        if not existing and trials_dir.is_dir() and any(trials_dir.iterdir()):
            raise UsageError(
                f"{trials_dir} holds trial runs of a study that {storage_url} does not know; use another --out"
            )
        started = time.monotonic()
        ran = 0
        interrupted: str | None = None
        workers = _WorkerRegistry(out_dir, own_storage=storage is None)
        workers.join(study)
        try:
            while stop.signal_name is None:
                if timeout is not None and time.monotonic() - started >= timeout:
                    break
                trial = workers.ask_if_room(study, trials, base.run.seed)
                if trial is None:
                    break
                interrupted = _run_trial(study, trial, base, space, trials_dir, emit, stop)
                ran += 1
                _write_reports(study, out_dir, best_format)
                if interrupted is not None:
                    break
        finally:
            workers.leave()
        if stop.signal_name is not None:
            interrupted = stop.signal_name
        summaries, best_path, trials_csv = _write_reports(study, out_dir, best_format)
    best = _best(summaries)
    return SweepResult(
        study_name=study_name,
        storage=storage_url,
        out_dir=out_dir,
        trials=summaries,
        best=best,
        best_config=best_path if best is not None else None,
        trials_csv=trials_csv,
        ran=ran,
        interrupted=interrupted,
    )


def _open_study(out_dir: Path, storage: str | None, study_name: str, pruner: Any) -> tuple[Any, str]:
    import optuna
    import sqlalchemy.exc

    url = storage or default_storage(out_dir)
    engine_kwargs = {"connect_args": {"timeout": 60}} if url.startswith("sqlite") else None  # wait out other writers
    attempts = 5
    for attempt in range(attempts):
        try:
            rdb = optuna.storages.RDBStorage(url, engine_kwargs=engine_kwargs)
            break
        except (sqlalchemy.exc.IntegrityError, sqlalchemy.exc.OperationalError) as error:
            # Workers started together race to create a new storage's tables; the loser finds
            # them there on its next try.
            if attempt == attempts - 1:
                raise UsageError(f"{url}: cannot open the study storage ({first_line(error)})") from None
            time.sleep(0.5 * (attempt + 1))
        except (sqlalchemy.exc.SQLAlchemyError, ImportError, ValueError) as error:
            raise UsageError(f"{url}: cannot open the study storage ({first_line(error)})") from None
    if storage is None:
        # One sweep folder holds one study: trial folders are named by trial number only.
        others = [name for name in optuna.get_all_study_names(rdb) if name != study_name]
        if others:
            raise UsageError(
                f"{out_dir / 'study.db'} holds study {others[0]!r}; use --study-name {others[0]} or another --out"
            )
    try:
        study = optuna.create_study(
            storage=rdb, study_name=study_name, direction="maximize", pruner=pruner, load_if_exists=True
        )
    except (sqlalchemy.exc.SQLAlchemyError, ValueError) as error:
        raise UsageError(f"{url}: cannot open study {study_name!r} ({first_line(error)})") from None
    if study.direction != optuna.study.StudyDirection.MAXIMIZE:
        raise UsageError(f"{url}: study {study_name!r} minimizes; a sweep maximizes validation accuracy")
    return study, url


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


def _finished_count(study: Any) -> int:
    """Trials that count towards --trials: complete, pruned or failed, but not the ones a signal
    interrupted (a top-up replaces those)."""
    from optuna.trial import TrialState

    finished = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL))
    orphaned = set(study.user_attrs.get(ORPHANED_ATTR, []))
    return sum(not trial.user_attrs.get("interrupted", False) and trial.number not in orphaned for trial in finished)


class _WorkerRegistry:
    """Keeps several workers on one sweep folder at exactly --trials trials.

    Each worker holds a shared flock on ``.workers.lock`` while it runs, and counting the trials
    and asking for a new one happen together under an exclusive flock on ``.ask.lock``, so two
    workers never both take the last free place. Running trials count towards --trials. A trial
    left RUNNING by a killed worker would count forever: a worker that finds no other worker alive
    (its exclusive try on ``.workers.lock`` succeeds) marks such trials failed and interrupted,
    so the top-up replaces them. That check sees only workers on this machine's folder, so it is
    skipped for a shared ``--storage`` (other machines' workers may be running those trials).
    """

    def __init__(self, out_dir: Path, *, own_storage: bool) -> None:
        self.out_dir = out_dir
        self.own_storage = own_storage
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

    def ask_if_room(self, study: Any, trials: int, seed: int) -> Any:
        """A new trial, or None once finished and running trials reach ``trials``."""
        import optuna

        with self._asking():
            if _counted(study) >= trials:
                return None
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


def _counted(study: Any) -> int:
    """Trials that count towards --trials: finished ones (see _finished_count) and running ones."""
    from optuna.trial import TrialState

    return _finished_count(study) + len(study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)))


# The study's user attribute listing the trials a killed worker left running (see _WorkerRegistry).
ORPHANED_ATTR = "orphaned_trials"


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


def _write_reports(study: Any, out_dir: Path, best_format: str) -> tuple[tuple[TrialSummary, ...], Path, Path]:
    """trials.csv of every trial, and the best trial's config; returns (summaries, best file, csv)."""
    frozen = sorted(study.get_trials(deepcopy=False), key=lambda trial: trial.number)
    summaries = tuple(_summary(trial) for trial in frozen)
    trials_csv = out_dir / "trials.csv"
    text = _csv_text(summaries)
    atomic_write(trials_csv, text)
    best_path = out_dir / f"best.{best_format}"
    best = _best(summaries)
    if best is not None:
        config = next(trial for trial in frozen if trial.number == best.number).user_attrs["config"]
        save_config(best_config(config), best_path)
    return summaries, best_path, trials_csv


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
    """Optuna logs every trial at INFO on stderr; a library must not print, so warnings only."""
    import optuna

    previous = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
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
    "run_sweep",
]
