"""Hyperparameter sweeps over the training engine (Optuna): search spaces and the sweep loop."""

from __future__ import annotations

from resnet_cifar.tuning.space import DEFAULT_SPACE, Parameter, SearchSpace, check_space, default_space, load_space, parse_space
from resnet_cifar.tuning.sweep import (
    BEST_FORMATS,
    DEFAULT_STUDY_NAME,
    SweepResult,
    TrialEvent,
    TrialFinished,
    TrialStarted,
    TrialSummary,
    apply_params,
    best_config,
    report_sweep,
    run_sweep,
)
from resnet_cifar.tuning.storage import DEFAULT_HEARTBEAT, JOURNAL_PREFIX, default_storage, mask_url

__all__ = [
    "DEFAULT_HEARTBEAT",
    "JOURNAL_PREFIX",
    "BEST_FORMATS",
    "DEFAULT_SPACE",
    "DEFAULT_STUDY_NAME",
    "Parameter",
    "SearchSpace",
    "SweepResult",
    "TrialEvent",
    "TrialFinished",
    "TrialStarted",
    "TrialSummary",
    "apply_params",
    "best_config",
    "check_space",
    "default_space",
    "default_storage",
    "mask_url",
    "report_sweep",
    "load_space",
    "parse_space",
    "run_sweep",
]
