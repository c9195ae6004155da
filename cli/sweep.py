"""`resnet-cifar sweep`: flags -> fixed settings + a search space -> the library's sweep -> render.

The sweep takes every setting flag of `train` (derived once, in cli/options.py) as a fixed setting:
a flag the user gives fixes that setting for every trial, and takes it out of the search space.
The fixed settings are layered as train layers them (defaults < preset < --config < flags) and must
make a valid config by themselves; each trial then lays its sampled parameters over them.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from .common import SIGNAL_EXIT_CODES, quiet_known_harmless_logs, reported_errors, stop_on_signals
from .options import (
    parameters_of,
    resolve_data,
    resolve_run_config,
    run_defaults,
    run_options,
    setting_overrides,
    setting_parameters,
    with_signature,
)
from .progress import ProgressRenderer
from .render import Output

DEFAULT_OUT = Path("runs/sweep")
# Settings of `train` that a sweep does not take: it has its own --out (the sweep folder), and a
# sweep never resumes one run.
TRAIN_ONLY = ("run.out_dir", "run.resume")


def _sweep_options(
    trials: Annotated[int, typer.Option("--trials", help="Trials in the study in all: a study that has some already is topped up to this many.")] = 20,
    timeout: Annotated[Optional[float], typer.Option("--timeout", help="Start no trial after this many seconds.", show_default=False)] = None,
    space: Annotated[Optional[Path], typer.Option("--space", help="A TOML or YAML search space (default: {space.DEFAULT_SPACE:flags}; see resnet_cifar/tuning/space.py).", show_default=False)] = None,
    out: Annotated[Optional[Path], typer.Option("--out", help=f"Sweep folder: study.db, trials/<number>/, trials.csv and the best config. \\[default: {DEFAULT_OUT}]", show_default=False)] = None,
    study_name: Annotated[Optional[str], typer.Option("--study-name", help="The study's name in its storage. \\[default: {sweep.DEFAULT_STUDY_NAME}]", show_default=False)] = None,
    storage: Annotated[Optional[str], typer.Option("--storage", help="Where the study lives, shared by every worker: an Optuna RDB URL (postgresql+psycopg://USER:PASSWORD@HOST/DB for several machines; see docs/distributed.md) or journal:PATH, a file on a shared folder (default: sqlite:///<out>/study.db).", show_default=False)] = None,
    heartbeat: Annotated[int, typer.Option("--heartbeat", help="Seconds between a running trial's heartbeats in an RDB storage: a trial silent for twice as long (its worker died) is failed and run again once.")] = 30,
    report: Annotated[bool, typer.Option("--report", help="Run no trial: read the study from --storage (or --out's study.db) as it stands and write trials.csv, the best config and sweep.html into --out.")] = False,
    best_format: Annotated[str, typer.Option("--best-format", help="{sweep.BEST_FORMATS:or}: the best trial's config file, best.toml or best.yaml.")] = "toml",
) -> None:
    """The sweep's own options; the run options and train's setting flags follow them."""


def _format(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def _short_names(keys: list[str]) -> dict[str, str]:
    """Table headers: the setting's name without its section, unless two sections share it."""
    names = [key.split(".", 1)[-1] for key in keys]
    return {key: name if names.count(name) == 1 else key for key, name in zip(keys, names)}


class SweepRenderer:
    """One line per trial start and end; the trainer's own progress (bars or epoch lines) in between."""

    def __init__(self, out: Output) -> None:
        self.out = out
        self.progress: ProgressRenderer | None = None

    def __call__(self, event: Any) -> None:
        from resnet_cifar.tuning import TrialEvent, TrialFinished, TrialStarted

        if isinstance(event, TrialStarted):
            params = "  ".join(f"{name}={_format(event.params[key])}" for key, name in _short_names(list(event.params)).items())
            self.out.line(f"trial {event.number}: {params}")
            self.progress = ProgressRenderer(self.out)
        elif isinstance(event, TrialEvent) and self.progress is not None:
            self.progress(event.event)
        elif isinstance(event, TrialFinished):
            self.close()
            trial = event.trial
            took = "" if trial.duration_seconds is None else f" in {trial.duration_seconds:.1f}s"
            if trial.state == "COMPLETE":
                self.out.line(f"trial {trial.number} complete: best val_acc {trial.value:.4f}{took}")
            elif trial.state == "PRUNED":
                self.out.line(f"trial {trial.number} pruned{took}")
            else:
                self.out.line(f"trial {trial.number} failed: {trial.error}")

    def close(self) -> None:
        if self.progress is not None:
            self.progress.close()
            self.progress = None


def render_trials(out: Output, result: Any) -> None:
    """The table of every trial in the study, the failures' reasons, and where the best config is."""
    keys = sorted({key for trial in result.trials for key in trial.params})
    names = _short_names(keys)
    rows = []
    for trial in result.trials:
        value = "" if trial.value is None else f"{trial.value:.4f}"
        took = "" if trial.duration_seconds is None else f"{trial.duration_seconds:.1f}s"
        params = [_format(trial.params[key]) if key in trial.params else "" for key in keys]
        rows.append((trial.number, trial.state, value, took, *params))
    title = f"study {result.study_name}: {len(result.trials)} trials ({result.ran} run now)"
    out.table(title, ("trial", "state", "val_acc", "time", *(names[key] for key in keys)), rows)
    for trial in result.trials:
        if trial.state == "FAIL" and trial.error:
            out.line(f"trial {trial.number} failed: {trial.error}")
    if result.best is not None:
        out.line(
            f"best: trial {result.best.number}, val_acc {result.best.value:.4f}; "
            f"train it with: resnet-cifar train --config {result.best_config}"
        )
    out.line(f"trials table in {result.trials_csv}")


def _render(output: Output, result: Any, json_output: bool) -> None:
    if json_output:
        output.json(result.to_dict())
    else:
        render_trials(output, result)


def sweep(**values: Any) -> None:
    """Search hyperparameters with Optuna (TPE, median pruning): trials of the training engine, each
    in its own folder, a resumable study in --out, a table of trials and the best config."""
    from resnet_cifar.engine.trainer import StopRequest
    from resnet_cifar.errors import UsageError
    from resnet_cifar.files import refuse_overwriting
    from resnet_cifar.tuning import DEFAULT_STUDY_NAME, default_space, load_space, report_sweep, run_sweep

    quiet_known_harmless_logs()
    json_output = values["json_output"]
    output = Output(json_mode=json_output)
    study_name = DEFAULT_STUDY_NAME if values["study_name"] is None else values["study_name"]
    if values["report"]:
        with reported_errors(output):
            result = report_sweep(
                out_dir=values["out"] or DEFAULT_OUT, storage=values["storage"], study_name=study_name,
                best_format=values["best_format"],
            )  # fmt: skip
        _render(output, result, json_output)
        return
    with reported_errors(output):
        outputs = ("trials.csv", f"best.{values['best_format']}", "study.db")
        refuse_overwriting([(values["out"] or DEFAULT_OUT) / name for name in outputs], [values["config"], values["space"]])
        space = load_space(values["space"]) if values["space"] is not None else default_space()
        overrides = setting_overrides(values, exclude=TRAIN_ONLY)
        base = resolve_run_config(values, defaults=run_defaults(os.environ), exclude=TRAIN_ONLY)
        base = resolve_data(base, output)

        fixed = [key for key in space.keys if key in overrides]
        space = space.without(fixed)
        if not space.parameters:
            raise UsageError("every setting of the search space is fixed by a flag: nothing left to search")
        if fixed:
            output.line(f"fixed by flags, not searched: {', '.join(fixed)}")

        stop = StopRequest()
        renderer = SweepRenderer(output)
        with stop_on_signals(stop):
            try:
                result = run_sweep(
                    base,
                    space,
                    out_dir=values["out"] or DEFAULT_OUT,
                    trials=values["trials"],
                    timeout=values["timeout"],
                    study_name=study_name,
                    storage=values["storage"],
                    heartbeat=values["heartbeat"],
                    best_format=values["best_format"],
                    on_event=renderer,
                    stop=stop,
                )
            finally:
                renderer.close()
    _render(output, result, json_output)
    if result.interrupted is not None:
        output.line(f"interrupted by {result.interrupted}; run the same command again to go on")
        raise typer.Exit(SIGNAL_EXIT_CODES.get(result.interrupted, 1))
    if result.best is None:
        failed = [trial for trial in result.trials if trial.state == "FAIL"]
        first = f" (trial {failed[0].number}: {failed[0].error})" if failed and failed[0].error else ""
        output.error(f"no trial of study {result.study_name} completed: {len(failed)} of {len(result.trials)} failed{first}")
        raise typer.Exit(1)


# Typer reads a command's options from its signature: the sweep's own, the run options, then
# train's setting flags.
with_signature(sweep, [*parameters_of(_sweep_options), *parameters_of(run_options), *setting_parameters(exclude=TRAIN_ONLY)])
