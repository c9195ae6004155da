"""`resnet-cifar train`: flags -> one validated TrainConfig -> the library's Trainer -> render + save.

Only flags the user actually gave become overrides (every setting flag defaults to None; see
cli/options.py), so the layering defaults < preset < --config file < flags holds. `--resume`
layers the checkpoint's own config under the flags, so a resumed run continues with the settings
it was started with.

Under `torchrun --nproc_per_node=N --no-python resnet-cifar train ...` every process runs this
command; the torchrun environment (RANK, WORLD_SIZE, LOCAL_RANK) puts them in one DDP job, and
only rank 0 prints and writes files (docs/distributed.md).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer

from .common import SIGNAL_EXIT_CODES, quiet_known_harmless_logs, reported_errors, stop_on_signals
from .options import (
    parameters_of,
    resolve_data,
    resolve_run_config,
    run_defaults,
    run_options,
    setting_parameters,
    with_signature,
)
from .progress import EventFanOut, ProgressRenderer
from .render import Output

if TYPE_CHECKING:
    from resnet_cifar.engine.checkpointer import ResumeCheckpoint


def train(**values: Any) -> None:
    """Train a ResNet (ResNet-50 by default) on CIFAR-10: validation every epoch, checkpoints, curves."""
    from resnet_cifar.config import describe_lr
    from resnet_cifar.distributed import process_group, read_env
    from resnet_cifar.engine.precision import select_device
    from resnet_cifar.engine.checkpointer import RUN_FILES
    from resnet_cifar.engine.tensorboard import TENSORBOARD_DIR, TensorBoardLogger, require_tensorboard
    from resnet_cifar.engine.trainer import StopRequest, build_trainer
    from resnet_cifar.files import refuse_overwriting

    quiet_known_harmless_logs()
    json_output = values["json_output"]
    output = Output(json_mode=json_output)
    with reported_errors(output):
        job = read_env(os.environ)  # a single process unless torchrun started this one
        if not job.is_main:
            # One voice per job: rank 0 prints (errors included, which every rank meets alike).
            output.console.quiet = True
            output.errors.quiet = True
        resume, under = _resumed_settings(values["resume"], out_given=values["out"] is not None)
        cfg = resolve_run_config(values, defaults=run_defaults(os.environ), world_size=job.world_size, under=under)
        if job.is_main:  # the writer; under torchrun the others would see rank 0's own lock
            refuse_overwriting([cfg.run.out_dir / name for name in RUN_FILES], [values["config"]])
        if cfg.run.tensorboard:
            require_tensorboard()  # a missing package is bad usage, reported before any work
        with process_group(job, select_device(cfg.precision.device)):
            cfg = resolve_data(cfg, output, first=job.main_first())
            stop = StopRequest()
            lr_text = describe_lr(cfg.optim, cfg.data.batch_size * job.world_size)
            renderer = ProgressRenderer(output, lr_text=lr_text) if job.is_main else None
            handlers = EventFanOut([renderer] if renderer is not None else [])
            with stop_on_signals(stop):
                # The trainer's checkpointer writes the run folder (config.toml, metrics,
                # checkpoints, curves, result.json); this command only prints.
                trainer = build_trainer(cfg, on_event=handlers, stop=stop, distributed=job, resume=resume)
                # Made after the checkpointer accepted the run folder, so a refused run leaves no event file.
                board = (
                    TensorBoardLogger(trainer.checkpointer.path(TENSORBOARD_DIR))
                    if cfg.run.tensorboard and job.is_main
                    else None
                )
                if board is not None:
                    handlers.handlers.append(board)
                try:
                    result = trainer.fit()
                finally:
                    if renderer is not None:
                        renderer.close()
                    if board is not None:
                        board.close()
            if job.is_main:  # the other ranks print nothing
                if json_output:
                    output.json(result.to_dict())
                else:
                    _print_summary(output, result)
            # No rank exits before rank 0 is done: torchrun stops the whole job (SIGTERM) as
            # soon as one worker exits with an error code, 143 after a stop request included.
            job.barrier()
    if result.interrupted is not None:
        raise typer.Exit(SIGNAL_EXIT_CODES.get(result.interrupted, 1))


# Typer reads a command's options from its signature: the run options, then every setting flag.
with_signature(train, [*parameters_of(run_options), *setting_parameters()])


def _resumed_settings(resume: Path | None, *, out_given: bool) -> tuple[ResumeCheckpoint | None, dict[str, Any]]:
    """The checkpoint to resume from (read once, through the checkpointer: the run restores this
    one), and its settings as dotted overrides that the flags given now go on top of; its folder is
    the run folder unless --out says otherwise."""
    if resume is None:
        return None, {}
    from resnet_cifar.engine.checkpointer import ResumeCheckpoint

    checkpoint = ResumeCheckpoint.read(resume)
    saved = checkpoint.payload["config"]
    under = {
        f"{section}.{key}": value for section, entries in saved.items() for key, value in entries.items() if value is not None
    }
    if not out_given:
        under["run.out_dir"] = str(resume.parent)
    return checkpoint, under


def _print_summary(output: Output, result: Any) -> None:
    if result.interrupted is not None:
        under = f" under torchrun --nproc_per_node {result.world_size}" if result.world_size > 1 else ""
        output.line(f"interrupted by {result.interrupted}; resume with --resume {result.checkpoint}{under}")
        return
    if result.stopped_early:
        output.line(f"stopped early: {result.stop_reason}")
    best = "n/a" if result.best_val_acc is None else f"{result.best_val_acc:.4f} (epoch {result.best_epoch})"
    test = "n/a" if result.test_acc is None else f"{result.test_acc:.4f}"
    output.line(f"best val_acc {best}; test_acc {test}; {result.epochs_run} epochs; run folder {result.out_dir}")
