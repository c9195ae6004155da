"""Early stopping on scripted metric sequences, with Lightning's semantics.

Values are binary fractions (0.5, 0.25, ...) so that "exactly min_delta" is exact in floating point.
"""

from __future__ import annotations

import io
import math

import pytest
import torch

from resnet_cifar.engine.early_stopping import EarlyStopping
from resnet_cifar.errors import UsageError


def _stop_index(stopper: EarlyStopping, values: list[float]) -> int | None:
    """Index of the check at which the stopper says stop, or None if it never does."""
    for index, value in enumerate(values):
        should_stop, reason = stopper.step(value, epoch=index + 1)
        assert (reason is not None) == should_stop
        if should_stop:
            return index
    return None


def test_mode_follows_the_metric() -> None:
    assert EarlyStopping("val_acc", patience=1).mode == "max"
    assert EarlyStopping("val_loss", patience=1).mode == "min"
    assert EarlyStopping("val_loss", patience=1, mode="min").mode == "min"
    assert EarlyStopping("train_loss", patience=1, mode="min").mode == "min"


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ({"monitor": "val_acc", "mode": "min"}, "not 'min'"),
        ({"monitor": "train_loss"}, "needs a mode"),
        ({"monitor": "train_loss", "mode": "up"}, "'min' or 'max'"),
        ({"monitor": "val_acc", "patience": -1}, "patience"),
        ({"monitor": "val_acc", "patience": 1.5}, "patience"),
        ({"monitor": "val_acc", "min_delta": -0.1}, "min_delta"),
    ],
)
def test_bad_settings_are_usage_errors(arguments: dict, message: str) -> None:
    arguments = {"patience": 2, **arguments}
    with pytest.raises(UsageError, match=message):
        EarlyStopping(arguments.pop("monitor"), **arguments)


def test_patience_zero_stops_at_the_first_non_improvement() -> None:
    stopper = EarlyStopping("val_acc", patience=0)
    assert _stop_index(stopper, [0.25, 0.5, 0.75, 0.75, 0.875]) == 3
    assert stopper.best == 0.75 and stopper.best_step_index == 2 and stopper.best_epoch == 3


def test_patience_two_counts_checks_without_improvement() -> None:
    stopper = EarlyStopping("val_acc", patience=2)
    # 0.5 improves, 0.25 waits (1), 0.625 improves (reset), 0.5 (1), 0.625 equal (2) -> stop.
    assert _stop_index(stopper, [0.5, 0.25, 0.625, 0.5, 0.625, 0.9]) == 4
    assert stopper.wait_count == 2 and stopper.best == 0.625 and stopper.best_epoch == 3


def test_never_stops_while_improving() -> None:
    stopper = EarlyStopping("val_acc", patience=0)
    assert _stop_index(stopper, [0.1, 0.2, 0.3, 0.4]) is None
    assert stopper.is_best and stopper.wait_count == 0


@pytest.mark.parametrize(
    ("mode_metric", "values", "improves"),
    [
        ("val_acc", [0.5, 0.75], False),  # better by exactly min_delta: no improvement
        ("val_acc", [0.5, 0.75 + 2**-20], True),  # slightly more: improvement
        ("val_acc", [0.5, 0.625], False),  # less than min_delta
        ("val_loss", [0.75, 0.5], False),
        ("val_loss", [0.75, 0.5 - 2**-20], True),
    ],
)
def test_min_delta_edge(mode_metric: str, values: list[float], improves: bool) -> None:
    stopper = EarlyStopping(mode_metric, patience=1, min_delta=0.25)
    assert stopper.step(values[0]) == (False, None) and stopper.is_best
    should_stop, _ = stopper.step(values[1])
    assert stopper.is_best is improves
    assert should_stop is (not improves)
    assert stopper.best == (values[1] if improves else values[0])


def test_mode_max_vs_min_read_the_same_sequence_oppositely() -> None:
    values = [0.5, 0.25, 0.125]
    assert _stop_index(EarlyStopping("val_acc", patience=1), values) == 1
    assert _stop_index(EarlyStopping("val_loss", patience=1), values) is None
    falling_acc = EarlyStopping("score", patience=1, mode="max")
    assert _stop_index(falling_acc, values) == 1


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_non_finite_value_stops_at_once(bad: float) -> None:
    stopper = EarlyStopping("val_loss", patience=10)
    stopper.step(0.5)
    should_stop, reason = stopper.step(bad)
    assert should_stop and "not finite" in reason and "val_loss" in reason
    assert stopper.best == 0.5 and not stopper.is_best and stopper.wait_count == 0


def test_nan_on_the_first_check_stops() -> None:
    should_stop, reason = EarlyStopping("val_acc", patience=3).step(float("nan"))
    assert should_stop and "nan" in reason


def test_reason_names_the_metric_and_wait() -> None:
    stopper = EarlyStopping("val_acc", patience=1, min_delta=0.01)
    stopper.step(0.5)
    should_stop, reason = stopper.step(0.5)
    assert should_stop and reason.startswith("val_acc did not improve by more than 0.01 in the last 1 checks")
    assert "\n" not in reason


def test_state_round_trip_mid_sequence_gives_the_same_decisions() -> None:
    values = [0.5, 0.625, 0.5, 0.75, 0.625, 0.6875, 0.75, 0.5]
    straight = EarlyStopping("val_acc", patience=3, min_delta=0.0625)
    decisions = [straight.step(value) for value in values]

    first = EarlyStopping("val_acc", patience=3, min_delta=0.0625)
    resumed_decisions = [first.step(value) for value in values[:5]]
    buffer = io.BytesIO()
    torch.save({"early_stopping": first.state_dict()}, buffer)
    buffer.seek(0)
    state = torch.load(buffer, weights_only=True)["early_stopping"]
    assert all(isinstance(value, (str, int, float, bool, type(None))) for value in state.values())
    second = EarlyStopping("val_acc", patience=3, min_delta=0.0625)
    second.load_state_dict(state)
    resumed_decisions += [second.step(value) for value in values[5:]]
    assert resumed_decisions == decisions
    assert decisions[-1][0] is True  # the sequence does reach a stop
    assert second.state_dict() == straight.state_dict()


def test_state_of_another_monitor_is_refused() -> None:
    state = EarlyStopping("val_acc", patience=1).state_dict()
    with pytest.raises(UsageError, match="monitors 'val_acc'"):
        EarlyStopping("val_loss", patience=1).load_state_dict(state)
