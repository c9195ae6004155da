"""The learning-rate schedules, as data: what each reads and how it meets the warm-up.

engine/optim.py holds one builder per name (bound to this registry at import); the config
checks the settings a schedule reads (``options``) and refuses ``milestones`` for one that does
not. Adding a schedule is an entry here and its builder there (plus tests and docs/recipes.md).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ScheduleSpec:
    """One schedule.

    help: what it does, in a few words (--help shows it after the name; empty: the name says it).
    options: the settings it reads beyond epochs and the warm-up (``step_size``, ``gamma``,
        ``milestones``, ``min_lr_ratio``).
    rises: its own rising phase is the warm-up (one-cycle): the warm-up must be positive and is
        not a separate linear ramp.
    """

    help: str
    options: tuple[str, ...] = ()
    rises: bool = False


SCHEDULES: dict[str, ScheduleSpec] = {
    "constant": ScheduleSpec(""),
    "step": ScheduleSpec("x gamma every step_size epochs", ("step_size", "gamma")),
    "multistep": ScheduleSpec("x gamma at each of the milestones", ("milestones", "gamma")),
    "cosine": ScheduleSpec("down to min_lr_ratio", ("min_lr_ratio",)),
    "onecycle": ScheduleSpec("rises over the warm-up, then falls", ("min_lr_ratio",), rises=True),
}


def schedules_reading(option: str) -> tuple[str, ...]:
    """The schedules that read a setting such as ``gamma``."""
    return tuple(name for name, spec in SCHEDULES.items() if option in spec.options)
