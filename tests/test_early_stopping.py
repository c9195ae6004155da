"""Early stopping on scripted metric sequences, with Lightning's semantics.

The scripted cases use binary fractions (0.5, 0.25, ...) so that "exactly min_delta" is exact in
floating point. The random sequences use decimals, decided by an exact (Fraction) reference and,
off the min_delta edge, by Lightning's own ``EarlyStopping``.
"""

from __future__ import annotations

import io
import math
import random
from fractions import Fraction

import pytest
import torch
from lightning.pytorch.callbacks import EarlyStopping as LightningEarlyStopping

from resnet_cifar.config import EarlyStoppingConfig
from resnet_cifar.engine.early_stopping import EarlyStopping, Monitor
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
    ],
)
def test_bad_settings_are_usage_errors(arguments: dict, message: str) -> None:
    arguments = {"patience": 2, **arguments}
    with pytest.raises(UsageError, match=message):
        EarlyStopping(arguments.pop("monitor"), **arguments)


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"patience": -1}, "--patience must be at least 0"),
        ({"patience": 1.5}, "--patience must be an integer"),
        ({"min_delta": -0.1}, "--min-delta must be at least 0"),
    ],
)
def test_bad_patience_and_min_delta_are_refused_once_by_the_config(settings: dict, message: str) -> None:
    # EarlyStopping trusts a validated EarlyStoppingConfig: these are refused there, naming the flag.
    with pytest.raises(UsageError, match=message):
        EarlyStoppingConfig(**settings)


def test_patience_zero_stops_at_the_first_non_improvement() -> None:
    stopper = EarlyStopping("val_acc", patience=0)
    assert _stop_index(stopper, [0.25, 0.5, 0.75, 0.75, 0.875]) == 3
    assert stopper.best == 0.75 and stopper.best_epoch == 3


def test_patience_two_counts_checks_without_improvement() -> None:
    stopper = EarlyStopping("val_acc", patience=2)
    # 0.5 improves, 0.25 waits (1), 0.625 improves (reset), 0.5 (1), 0.625 equal (2) -> stop.
    assert _stop_index(stopper, [0.5, 0.25, 0.625, 0.5, 0.625, 0.9]) == 4
    assert stopper.wait_count == 2 and stopper.best == 0.625 and stopper.best_epoch == 3


def test_never_stops_while_improving() -> None:
    stopper = EarlyStopping("val_acc", patience=0)
    assert _stop_index(stopper, [0.1, 0.2, 0.3, 0.4]) is None
    assert stopper.best_epoch == 4 and stopper.wait_count == 0  # the last check improved


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
    assert stopper.step(values[0], epoch=1) == (False, None) and stopper.best_epoch == 1
    should_stop, _ = stopper.step(values[1], epoch=2)
    assert (stopper.best_epoch == 2) is improves
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
    stopper.step(0.5, epoch=1)
    should_stop, reason = stopper.step(bad, epoch=2)
    assert should_stop and "not finite" in reason and "val_loss" in reason
    assert stopper.best == 0.5 and stopper.best_epoch == 1 and stopper.wait_count == 0


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


def test_an_older_checkpoints_state_still_loads() -> None:
    """Checkpoints written before the monitor was shared hold two more keys; they are ignored."""
    older = {
        "monitor": "val_acc", "mode": "max", "patience": 3, "min_delta": 0.0, "best": 0.625, "wait_count": 1,
        "checks": 3, "is_best": False, "best_step_index": 1, "best_epoch": 2,
    }  # fmt: skip
    stopper = EarlyStopping("val_acc", patience=3)
    stopper.load_state_dict(older)
    assert (stopper.best, stopper.best_epoch, stopper.wait_count, stopper.checks) == (0.625, 2, 1, 3)
    assert stopper.step(0.5, epoch=4) == (False, None) and stopper.wait_count == 2


def test_a_shared_monitor_is_the_one_record_of_the_best() -> None:
    """The trainer's monitor (what best.pt follows) is the one early stopping updates and consults."""
    monitor = Monitor("val_loss", min_delta=0.25)
    stopper = EarlyStopping("val_loss", patience=1, min_delta=0.25, best=monitor)
    assert stopper.step(1.0, epoch=1) == (False, None)
    assert stopper.step(0.5, epoch=2) == (False, None)
    assert (monitor.best, monitor.best_epoch) == (0.5, 2) == (stopper.best, stopper.best_epoch)
    should_stop, reason = stopper.step(0.375, epoch=3)  # better, but by less than min_delta
    assert should_stop and "best 0.5000" in reason and monitor.best_epoch == 2
    assert not monitor.update(math.nan, epoch=4) and monitor.best_epoch == 2


def test_state_of_another_monitor_is_refused() -> None:
    state = EarlyStopping("val_acc", patience=1).state_dict()
    with pytest.raises(UsageError, match="monitors 'val_acc'"):
        EarlyStopping("val_loss", patience=1).load_state_dict(state)


@pytest.mark.parametrize(
    ("monitor", "values", "min_delta"),
    [
        # Changes of exactly min_delta as decimals, on both sides of float64 rounding:
        ("val_acc", [0.7, 0.8], 0.1),  # 0.8 - 0.1 > 0.7 in float64
        ("val_acc", [0.07, 0.09], 0.02),  # 0.09 - 0.02 < 0.07 in float64
        ("val_acc", [0.91, 0.92], 0.01),
        ("val_loss", [0.8, 0.7], 0.1),
        ("val_loss", [0.09, 0.07], 0.02),
        ("val_loss", [2.3, 2.29], 0.01),
        ("val_acc", [0.3, 0.1 + 0.2], 0.0),  # the same decimal, computed: no change
        ("val_acc", [0.3, 0.300000000001], 1e-12),  # a tiny min_delta is decided exactly too
    ],
)
def test_a_decimal_change_of_exactly_min_delta_is_no_improvement(
    monitor: str, values: list[float], min_delta: float
) -> None:
    stopper = EarlyStopping(monitor, patience=0, min_delta=min_delta)
    assert stopper.step(values[0], epoch=1) == (False, None)
    should_stop, _ = stopper.step(values[1], epoch=2)
    assert should_stop and stopper.best_epoch == 1 and stopper.best == values[0]


@pytest.mark.parametrize(
    ("monitor", "values", "min_delta"),
    [
        ("val_acc", [0.7, 0.8000001], 0.1),
        ("val_acc", [0.91, 0.92], 0.009999),
        ("val_loss", [0.8, 0.6999999], 0.1),
        ("val_acc", [0.3, 0.300000000002], 1e-12),
    ],
)
def test_a_change_just_over_min_delta_improves(monitor: str, values: list[float], min_delta: float) -> None:
    stopper = EarlyStopping(monitor, patience=0, min_delta=min_delta)
    stopper.step(values[0], epoch=1)
    assert stopper.step(values[1], epoch=2) == (False, None)
    assert stopper.best_epoch == 2 and stopper.best == values[1]


# --- Random decimal sequences -------------------------------------------------------------------

Sequence = tuple[str, int, float, list[float]]  # (mode, patience, min_delta, values)


def _random_sequences(count: int, seed: int = 19) -> list[Sequence]:
    """Random walks on a decimal grid (0.1 or 0.01), so that changes of exactly min_delta are common.

    Values are ``units / per_unit``: the float nearest that decimal, whose repr is the decimal.
    """
    rng = random.Random(seed)
    sequences = []
    for _ in range(count):
        mode = rng.choice(["max", "min"])
        patience = rng.randint(0, 4)
        per_unit = rng.choice([10, 100])
        # min_delta in [0, 0.1]: half the time a multiple of the grid (edges are common), else a
        # multiple of 0.01 or 0.001 (edges on the 0.01 grid, or none).
        delta_units = rng.randint(0, per_unit // 10)
        on_grid = delta_units / per_unit
        min_delta = rng.choice([on_grid, on_grid, rng.randint(0, 10) / 100, rng.randint(0, 100) / 1000])
        # Walk steps in grid units; steps of exactly min_delta (when on the grid) make edges often.
        steps = [-3, -2, -1, 0, 1, 2, 3]
        if min_delta == on_grid:
            steps += [delta_units, -delta_units] * 2
        units = rng.randint(0, 2 * per_unit)
        values: list[float] = []
        for _ in range(rng.randint(1, 12)):
            roll = rng.random()
            if roll < 0.02:
                values.append(math.nan)
            elif roll < 0.03:
                values.append(rng.choice([math.inf, -math.inf]))
            else:
                units = max(0, units + rng.choice(steps))
                values.append(units / per_unit)
        sequences.append((mode, patience, min_delta, values))
    return sequences


SEQUENCES = _random_sequences(3000)


def _decimal(value: float) -> Fraction:
    """The decimal a user means by a float (its shortest repr): 0.1 is 1/10, not 0.1000000000000000055."""
    return Fraction(str(value))


Trace = list[tuple[bool, bool, int]]  # (stop, improved, wait_count) after each check, up to the first stop


def _reference_trace(mode: str, patience: int, min_delta: float, values: list[float]) -> Trace:
    """The trace in exact decimal arithmetic: improved means better than the best by more than min_delta."""
    delta = _decimal(min_delta)
    best: Fraction | None = None
    wait = 0
    trace = []
    for value in values:
        if not math.isfinite(value):
            trace.append((True, False, wait))
            break
        current = _decimal(value)
        change = None if best is None else (current - best if mode == "max" else best - current)
        if change is None or change > delta:
            best, wait = current, 0
            trace.append((False, True, wait))
            continue
        wait += 1
        trace.append((wait >= patience, False, wait))
        if wait >= patience:
            break
    return trace


def _trace(mode: str, patience: int, min_delta: float, values: list[float]) -> Trace:
    stopper = EarlyStopping("val_acc" if mode == "max" else "val_loss", patience=patience, min_delta=min_delta)
    trace = []
    for epoch, value in enumerate(values, start=1):
        should_stop, reason = stopper.step(value, epoch=epoch)
        assert (reason is not None) == should_stop
        trace.append((should_stop, stopper.best_epoch == epoch, stopper.wait_count))
        if should_stop:
            break
    return trace


def _lightning_trace(
    mode: str, patience: int, min_delta: float, values: list[float], dtype: torch.dtype = torch.float32
) -> Trace:
    """Lightning's callback on the same values, as float32 tensors by default (as logged metrics are)."""
    stopper = LightningEarlyStopping(
        monitor="m", mode=mode, patience=patience, min_delta=min_delta, check_finite=True,
        stopping_threshold=None, divergence_threshold=None,
    )
    trace = []
    for value in values:
        should_stop, reason = stopper._evaluate_stopping_criteria(torch.tensor(value, dtype=dtype))
        # Lightning gives a reason without stopping only for an improvement.
        improved = not should_stop and reason is not None
        trace.append((should_stop, improved, stopper.wait_count))
        if should_stop:
            break
    return trace


def _near_the_edge(min_delta: float, values: list[float], rel_tol: float = 1e-6) -> bool:
    """Whether any two finite values differ by min_delta within rel_tol, where float32 rounding may decide."""
    delta = _decimal(min_delta)
    finite = [_decimal(value) for value in values if math.isfinite(value)]
    return any(
        abs(abs(later - earlier) - delta) <= rel_tol * max(delta, abs(later), abs(earlier))
        for index, earlier in enumerate(finite)
        for later in finite[index + 1 :]
    )


def test_random_sequences_cover_every_case() -> None:
    """The sequences reach the cases the comparisons below are for, so those could fail."""
    traces = [_reference_trace(*sequence) for sequence in SEQUENCES]
    assert {mode for mode, *_ in SEQUENCES} == {"max", "min"}
    assert {patience for _, patience, _, _ in SEQUENCES} == {0, 1, 2, 3, 4}
    assert sum(any(math.isnan(v) for v in values) for *_, values in SEQUENCES) > 100
    assert sum(any(math.isinf(v) for v in values) for *_, values in SEQUENCES) > 50
    assert sum(trace[-1][0] for trace in traces) > 1500  # most stop, some run to the end
    assert sum(not trace[-1][0] for trace in traces) > 100
    # Many sequences hold a change of exactly min_delta as decimals, and there plain float
    # comparisons (Lightning's, in float32 or float64) decide some of them wrongly.
    assert sum(_near_the_edge(min_delta, values) for _, _, min_delta, values in SEQUENCES) > 1000
    for dtype in (torch.float32, torch.float64):
        wrong = sum(_lightning_trace(*seq, dtype=dtype) != trace for seq, trace in zip(SEQUENCES, traces))
        assert wrong >= 15, dtype


def test_random_sequences_agree_with_exact_decimal_arithmetic() -> None:
    mismatches = [seq for seq in SEQUENCES if _trace(*seq) != _reference_trace(*seq)]
    assert mismatches == []


def test_random_sequences_off_the_edge_agree_with_lightning() -> None:
    off_edge = [seq for seq in SEQUENCES if not _near_the_edge(seq[2], seq[3])]
    assert len(off_edge) > 1000
    mismatches = [seq for seq in off_edge if _trace(*seq) != _lightning_trace(*seq)]
    assert mismatches == []
    # Off the edge float32 does not matter: Lightning agrees with the exact reference there too.
    assert all(_lightning_trace(*seq) == _reference_trace(*seq) for seq in off_edge)
