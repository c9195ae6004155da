"""Repeated runs of one recipe with different seeds, and the spread of their results.

``run_repeats(cfg, seeds)`` trains one run per seed, one after another on the config's one device,
each in its own run folder ``OUT/seed-<S>/`` (the seed sets both ``run.seed`` and ``data.seed``:
the split, the order, the augmentation and the initial weights). Each seed's folder is an
ordinary run folder (resumable with ``train --resume``, reportable with ``report``), so running the
same repeats again continues where they stopped:

- a folder whose result.json says the run finished is kept (after checking, through its last.pt,
  that it was trained with these settings), and calibrated if it is not yet;
- a folder with a last.pt but no finished result is resumed from it (same settings, as any resume);
- an empty folder starts a fresh run.

Each finished run's best.pt gets its temperature (``calibrate_checkpoint``, on its own validation
split), as after `train`. When every seed has finished, ``repeats.json`` in ``OUT`` holds the
summary (evaluation/spread.py: per-seed figures, mean, sample standard deviation, Student's t
interval, min and max). A stop request ends the repeats after the interrupted run's resumable
last.pt; no summary is written then.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from resnet_cifar.config import TrainConfig
from resnet_cifar.engine.checkpointer import BEST, LAST, RESULT, ResumeCheckpoint, read_trained_checkpoint
from resnet_cifar.engine.trainer import EventHandler, FitResult, StopRequest, build_trainer
from resnet_cifar.errors import DataError, UsageError
from resnet_cifar.evaluation.spread import REPEATS_FILE, summarize_repeats
from resnet_cifar.files import atomic_write
from resnet_cifar.inference import calibrate_checkpoint

__all__ = ["REPEATS_FILE", "RepeatsOutcome", "SeedStart", "parse_seeds", "run_repeats", "seed_dir"]


def seed_dir(out_dir: Path, seed: int) -> Path:
    """The run folder of one seed."""
    return Path(out_dir) / f"seed-{seed}"


def parse_seeds(seeds: str | None, repeats: int | None) -> tuple[int, ...] | None:
    """``--seeds 0,1,2`` or ``--repeats N`` (seeds 0..N-1); None when neither is given."""
    if seeds is not None and repeats is not None:
        raise UsageError("give --seeds or --repeats, not both")
    if repeats is not None:
        if repeats < 1:
            raise UsageError(f"--repeats must be at least 1, got {repeats}")
        return tuple(range(repeats))
    if seeds is None:
        return None
    try:
        parsed = tuple(int(part) for part in seeds.split(",") if part.strip())
    except ValueError:
        raise UsageError(f"--seeds must be comma-separated integers such as 0,1,2, got {seeds!r}") from None
    if not parsed or len(set(parsed)) != len(parsed) or min(parsed) < 0:
        raise UsageError(f"--seeds must be distinct non-negative integers such as 0,1,2, got {seeds!r}")
    return parsed


@dataclass(frozen=True)
class SeedStart:
    """What happens to one seed: ``how`` is "new", "resume" or "done" (finished before)."""

    seed: int
    index: int  # 0-based position among the seeds
    total: int
    out_dir: Path
    how: str


@dataclass(frozen=True)
class RepeatsOutcome:
    """The summary (repeats.json's content) when every seed finished; else the interrupted run."""

    out_dir: Path
    summary: dict[str, Any] | None
    interrupted: FitResult | None = None
    calibrations: tuple[dict[str, Any], ...] = ()  # the temperatures fitted in this call


def _seed_config(cfg: TrainConfig, seed: int) -> TrainConfig:
    run = replace(cfg.run, seed=seed, out_dir=seed_dir(cfg.run.out_dir, seed), resume=None)
    return replace(cfg, run=run, data=replace(cfg.data, seed=seed))


def _finished_result(folder: Path) -> dict[str, Any] | None:
    """result.json of a finished run (tested, not interrupted), else None."""
    path = folder / RESULT
    if not path.is_file():
        return None
    try:
        result = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as error:
        raise DataError(f"{path}: not a readable result ({type(error).__name__})") from None
    finished = isinstance(result, Mapping) and result.get("interrupted") is None and isinstance(result.get("test"), Mapping)
    return dict(result) if finished else None


def _plan(cfg: TrainConfig) -> tuple[str, TrainConfig, ResumeCheckpoint | None]:
    """How one seed's run goes on from what its folder holds (see the module notes)."""
    folder = cfg.run.out_dir
    if not (folder / LAST).is_file():
        return "new", cfg, None
    checkpoint = ResumeCheckpoint.read(folder / LAST)
    checkpoint.check_run(cfg, world_size=1)  # the same settings, or a one-line refusal naming the flag
    if _finished_result(folder) is not None:
        return "done", cfg, None
    return "resume", replace(cfg, run=replace(cfg.run, resume=checkpoint.path)), checkpoint


def run_repeats(
    cfg: TrainConfig,
    seeds: Sequence[int],
    *,
    stop: StopRequest | None = None,
    on_event: EventHandler | None = None,
    on_seed: Callable[[SeedStart], None] | None = None,
) -> RepeatsOutcome:
    """Train (or resume, or keep) one run per seed under ``cfg.run.out_dir``, then summarize them
    into repeats.json there (see the module notes). ``on_seed`` hears of each seed before it runs."""
    if cfg.run.resume is not None:
        raise UsageError("--resume resumes one run; repeats resume themselves: run the same command again")
    stop = stop or StopRequest()
    runs, calibrations = [], []
    for index, seed in enumerate(seeds):
        how, seed_cfg, resume = _plan(_seed_config(cfg, seed))
        if on_seed is not None:
            on_seed(SeedStart(seed, index, len(seeds), seed_cfg.run.out_dir, how))
        if how != "done":
            result = build_trainer(seed_cfg, on_event=on_event, stop=stop, resume=resume).fit()
            if result.interrupted is not None:
                return RepeatsOutcome(cfg.run.out_dir, None, interrupted=result, calibrations=tuple(calibrations))
        best = seed_cfg.run.out_dir / BEST
        if read_trained_checkpoint(best)[0].temperature is None:
            fitted = calibrate_checkpoint(best, device=cfg.precision.device, cache_dir=cfg.data.cache_dir)
            calibrations.append({"seed": seed, **fitted.to_dict()})
        result_dict = _finished_result(seed_cfg.run.out_dir)
        assert result_dict is not None, "a run that was not interrupted has finished"
        runs.append({"seed": seed, "out_dir": seed_cfg.run.out_dir, "result": result_dict})
    summary = summarize_repeats(runs)
    atomic_write(Path(cfg.run.out_dir) / REPEATS_FILE, json.dumps(summary, indent=2) + "\n")
    return RepeatsOutcome(cfg.run.out_dir, summary, calibrations=tuple(calibrations))
