"""`resnet-cifar train --seeds 0,1,2` (or `--repeats N`): one run per seed, one after another on
the one device, then the spread of their results (resnet_cifar.tuning.repeats; repeats.json).

Running the same command again continues: finished seeds are kept, an interrupted one resumes.
"""

from __future__ import annotations

import os
from typing import Any

import typer

from .common import SIGNAL_EXIT_CODES, quiet_known_harmless_logs, reported_errors, stop_on_signals
from .options import parameter_name, resolve_data, resolve_run_config, run_defaults
from .progress import ProgressRenderer
from .render import Output

_HOW = {"new": "training", "resume": "resuming", "done": "finished before, kept"}


def train_repeats(values: dict[str, Any]) -> None:
    """The repeats: flags -> one TrainConfig -> run_repeats -> the summary printed or as JSON."""
    from resnet_cifar.config import describe_lr
    from resnet_cifar.distributed import read_env
    from resnet_cifar.engine.trainer import StopRequest
    from resnet_cifar.errors import UsageError
    from resnet_cifar.tuning.repeats import SeedStart, parse_seeds, run_repeats

    quiet_known_harmless_logs()
    output = Output(json_mode=values["json_output"])
    with reported_errors(output):
        seeds = parse_seeds(values["seeds"], values["repeats"])
        assert seeds is not None
        for name, flag, why in _CLASHES:
            if values[name] not in (None, False):
                raise UsageError(f"{flag} does not go with --seeds/--repeats: {why}")
        if read_env(os.environ).world_size > 1:
            raise UsageError("--seeds/--repeats run one process, one seed after another; not under torchrun")
        cfg = resolve_data(resolve_run_config(values, defaults=run_defaults(os.environ)), output)
        stop = StopRequest()
        renderer = ProgressRenderer(output, lr_text=describe_lr(cfg.optim, cfg.data.batch_size))

        def on_seed(start: SeedStart) -> None:
            renderer.close()  # the previous seed's bars
            output.line(f"seed {start.seed} ({start.index + 1} of {start.total}): {_HOW[start.how]} in {start.out_dir}")

        with stop_on_signals(stop):
            try:
                outcome = run_repeats(cfg, seeds, stop=stop, on_event=renderer, on_seed=on_seed)
            finally:
                renderer.close()
    if outcome.summary is None:
        assert outcome.interrupted is not None
        signal_name = outcome.interrupted.interrupted
        output.line(f"interrupted by {signal_name} in {outcome.interrupted.out_dir}; run the same command again to continue")
        raise typer.Exit(SIGNAL_EXIT_CODES.get(signal_name or "", 1))
    if values["json_output"]:
        output.json({**outcome.summary, "out_dir": str(outcome.out_dir)})
        return
    print_summary(output, outcome.summary)
    output.line(f"summary in {outcome.out_dir / 'repeats.json'}")


# Flags that make no sense with repeats, and why.
_CLASHES = (
    (parameter_name("run.seed"), "--seed", "each run's seed comes from the list"),
    ("resume", "--resume", "run the same command again to continue the repeats"),
    (parameter_name("run.tensorboard"), "--tensorboard", "write event files one run at a time"),
)


def _spread_cells(entry: dict[str, Any]) -> tuple[str, ...]:
    def number(value: float | None) -> str:
        return "n/a" if value is None else f"{value:.4f}"

    ci = entry["ci95"] or (None, None)
    return (number(entry["mean"]), number(entry["std"]), number(ci[0]), number(ci[1]), number(entry["min"]), number(entry["max"]))


def print_summary(output: Output, summary: dict[str, Any]) -> None:
    """The per-seed table, the per-class spread, then the two headline lines (the last printed)."""
    rows = [(run["seed"], f"{run['val_acc']:.4f}", f"{run['test_acc']:.4f}", run["best_epoch"]) for run in summary["runs"]]
    output.table("runs", ("seed", "best val_acc", "test_acc", "best epoch"), rows)
    columns = ("class", "mean", "std", "95% CI low", "95% CI high", "min", "max")
    per_class = [(name, *_spread_cells(entry)) for name, entry in summary["per_class"].items()]
    output.table("test accuracy per class over the seeds", columns, per_class)
    for name in ("val_acc", "test_acc"):
        mean, std, low, high, least, most = _spread_cells(summary[name])
        output.line(
            f"{name} over {summary[name]['n']} seeds: mean {mean}, std {std}, 95% CI [{low}, {high}] "
            f"(Student's t), min {least}, max {most}"
        )
