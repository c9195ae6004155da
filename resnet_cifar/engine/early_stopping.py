"""Early stopping with PyTorch Lightning's semantics (``EarlyStopping`` callback, check_finite on).

- ``mode`` follows the metric (resnet_cifar.choices.monitors): ``max`` for ``val_acc``, ``min`` for
  ``val_loss``; another metric needs it given.
- An improvement is a change on the best of MORE than ``min_delta`` (max: ``value - best``,
  min: ``best - value``). A change of at most ``min_delta`` is no improvement.
- The edge is decided as the user means it, not by rounding: metrics and ``min_delta`` are
  decimals (0.91, 0.01) that floats only approximate, so a change within ``EDGE_REL_TOL`` (1e-9)
  relative of ``min_delta`` counts as equal to it, hence no improvement (0.91 -> 0.92 with
  ``min_delta=0.01`` never improves). A few float64 ulps of the values are added to that
  tolerance so that a ``min_delta`` of 0 or a tiny one is decided exactly too. Off that edge the
  decision is Lightning's.
- Each check without improvement adds one to ``wait_count``; an improvement resets it. The run
  stops when ``wait_count >= patience``, so ``patience=0`` stops at the first non-improvement.
- A NaN or infinite value stops at once (Lightning's ``check_finite``), leaving the best alone.

The best value and its epoch are kept once, in a ``Monitor``: the trainer's (best.pt follows it)
when early stopping is given it, which ``step`` updates and consults; ``EarlyStopping`` itself
keeps only what the stopping rule needs (the wait count and the checks seen).
"""

from __future__ import annotations

import math
import sys
from collections.abc import Mapping
from typing import Any

from resnet_cifar.choices.monitors import METRIC_MODES
from resnet_cifar.errors import UsageError

# A change within this (relative) of min_delta is taken as exactly min_delta. Far above float64
# rounding (~1e-16), far below any min_delta difference a user could mean.
EDGE_REL_TOL = 1e-9
# Rounding of two decimal values and their difference stays below ~2 ulps of the larger value;
# this margin covers it where EDGE_REL_TOL * min_delta cannot (min_delta 0 or tiny).
_VALUE_ULPS = 4 * sys.float_info.epsilon


def improves(value: float, best: float, *, mode: str, min_delta: float = 0.0) -> bool:
    """Whether a finite ``value`` improves on ``best`` by more than ``min_delta`` (see the module
    notes: the edge is decided as the user means it). An infinite ``best`` (none yet) is always
    improved on, as in Lightning."""
    if math.isinf(best):
        return True
    change = value - best if mode == "max" else best - value
    tolerance = EDGE_REL_TOL * min_delta + _VALUE_ULPS * max(abs(value), abs(best))
    return change > min_delta + tolerance


class Monitor:
    """The run's one record of the best monitored value so far and its epoch: best.pt follows it,
    and early stopping consults it. A value is the new best when it improves on the best by more
    than ``min_delta`` (``improves``); a NaN or infinite value never is."""

    def __init__(self, metric: str, *, mode: str | None = None, min_delta: float = 0.0) -> None:
        self.metric = metric
        self.mode = mode or METRIC_MODES[metric]
        self.min_delta = float(min_delta)
        self.best = -math.inf if self.mode == "max" else math.inf
        self.best_epoch: int | None = None

    def update(self, value: float, *, epoch: int | None = None) -> bool:
        """Record one check's value (of ``epoch``, if given); True when it is the new best."""
        value = float(value)
        if not math.isfinite(value) or not improves(value, self.best, mode=self.mode, min_delta=self.min_delta):
            return False
        self.best, self.best_epoch = value, epoch
        return True

    def state_dict(self) -> dict[str, Any]:
        """The checkpoint's ``best`` entry: plain values, safe for a ``weights_only`` load."""
        return {"monitor": self.metric, "best": self.best, "best_epoch": self.best_epoch}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if state.get("monitor") != self.metric:
            raise UsageError(f"the checkpoint's best epoch follows {state.get('monitor')!r}, not {self.metric!r}")
        self.best = float(state["best"])
        self.best_epoch = state["best_epoch"]


class EarlyStopping:
    """Decides after each validation check whether training should stop: ``step(value) ->
    (should_stop, reason)``. The best value is the ``Monitor``'s: the run's own when given
    (the one best.pt follows; it must use this ``min_delta``), else one of its own; ``step``
    updates it."""

    def __init__(
        self,
        monitor: str,
        *,
        patience: int,
        min_delta: float = 0.0,
        mode: str | None = None,
        best: Monitor | None = None,
    ) -> None:
        implied = METRIC_MODES.get(monitor)
        if mode is None:
            if implied is None:
                raise UsageError(f"early stopping on {monitor!r} needs a mode (min or max)")
            mode = implied
        if mode not in ("min", "max"):
            raise UsageError(f"early stopping mode must be 'min' or 'max', got {mode!r}")
        if implied is not None and mode != implied:
            raise UsageError(f"{monitor} is maximised or minimised as {implied!r}, not {mode!r}")
        # EarlyStoppingConfig checked --patience and --min-delta once, naming the flags.
        assert isinstance(patience, int) and patience >= 0 and math.isfinite(min_delta) and min_delta >= 0
        self.monitor = monitor
        self.mode = mode
        self.patience = patience
        self.min_delta = float(min_delta)
        self.tracker = best if best is not None else Monitor(monitor, mode=mode, min_delta=min_delta)
        assert (self.tracker.metric, self.tracker.mode, self.tracker.min_delta) == (monitor, mode, self.min_delta)
        self.wait_count = 0
        self.checks = 0  # validation checks seen so far

    @property
    def best(self) -> float:
        return self.tracker.best

    @property
    def best_epoch(self) -> int | None:
        return self.tracker.best_epoch

    def step(self, value: float, *, epoch: int | None = None) -> tuple[bool, str | None]:
        """Record one check of the monitored metric (of ``epoch``, if given) in the monitor;
        return ``(should_stop, reason)``, ``reason`` a one-line explanation when stopping."""
        value = float(value)
        self.checks += 1
        if not math.isfinite(value):
            return True, f"{self.monitor} = {value} is not finite (best {self.best:.4f}); stopping"
        if self.tracker.update(value, epoch=epoch):
            self.wait_count = 0
            return False, None
        self.wait_count += 1
        if self.wait_count >= self.patience:
            return True, (
                f"{self.monitor} did not improve by more than {self.min_delta} in the last {self.wait_count} "
                f"checks (best {self.best:.4f}); stopping"
            )
        return False, None

    def state_dict(self) -> dict[str, Any]:
        """Plain floats, ints, strings and None: safe for a ``weights_only`` checkpoint. ``best``
        and ``best_epoch`` are the monitor's, so the state stands on its own."""
        return {
            "monitor": self.monitor,
            "mode": self.mode,
            "patience": self.patience,
            "min_delta": self.min_delta,
            "best": self.best,
            "wait_count": self.wait_count,
            "checks": self.checks,
            "best_epoch": self.best_epoch,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore the progress; ``patience`` and ``min_delta`` stay this instance's (the resumed
        config's). Keys an older checkpoint holds beyond these (``is_best``, ``best_step_index``)
        are ignored."""
        if state.get("monitor") != self.monitor or state.get("mode") != self.mode:
            raise UsageError(
                f"the checkpoint's early stopping monitors {state.get('monitor')!r} ({state.get('mode')}), "
                f"not {self.monitor!r} ({self.mode})"
            )
        self.tracker.best = float(state["best"])
        self.tracker.best_epoch = state["best_epoch"]
        self.wait_count = int(state["wait_count"])
        self.checks = int(state["checks"])
