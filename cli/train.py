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
from typing import TYPE_CHECKING, Annotated, Any, Optional

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
    from resnet_cifar.config import TrainConfig
    from resnet_cifar.distributed import DistEnv
    from resnet_cifar.engine.tensorboard import TensorBoardLogger
    from resnet_cifar.engine.trainer import FitResult, Trainer
    from resnet_cifar.engine.checkpointer import ResumeCheckpoint


def train(**values: Any) -> None:
    """Train a ResNet (ResNet-50 by default) on CIFAR-10: validation every epoch, checkpoints, curves."""
    from resnet_cifar.config import describe_lr
    from resnet_cifar.distributed import process_group, read_env
    from resnet_cifar.engine.precision import select_device
    from resnet_cifar.engine.checkpointer import RUN_FILES
    from resnet_cifar.engine.tensorboard import require_tensorboard
    from resnet_cifar.engine.trainer import StopRequest, build_trainer
    from resnet_cifar.files import refuse_overwriting

    if values["seeds"] is not None or values["repeats"] is not None:
        from .repeats import train_repeats

        return train_repeats(values)
    quiet_known_harmless_logs()
    json_output = values["json_output"]
    output = Output(json_mode=json_output)
    with reported_errors(output):
        job = read_env(os.environ)  # a single process unless torchrun started this one
        if not job.is_main:
            output.console.quiet = True  # one voice per job: rank 0 prints
        # Errors, which every rank meets alike, once per machine: its first process says why it stopped.
        output.errors.quiet = job.local_rank != 0
        restarted = _elastic_resume(values, job)
        if restarted is not None:
            output.line(f"torchrun job {job.run_id} (restart {job.restart} here): resuming from {restarted}")
            values = {**values, "resume": restarted}
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
                board = _tensorboard(cfg, trainer, job, handlers)
                try:
                    result = _fit(trainer, job)
                finally:
                    if renderer is not None:
                        renderer.close()
                    if board is not None:
                        board.close()
            if job.is_main:  # the other ranks print nothing
                _calibrate_and_print(output, cfg, result, json_output=json_output)
            # No rank exits before rank 0 is done: torchrun stops the whole job (SIGTERM) as
            # soon as one worker exits with an error code, 143 after a stop request included.
            job.barrier()
    if result.interrupted is not None:
        raise typer.Exit(SIGNAL_EXIT_CODES.get(result.interrupted, 1))


def _tensorboard(cfg: TrainConfig, trainer: Trainer, job: DistEnv, handlers: EventFanOut) -> TensorBoardLogger | None:
    """The TensorBoard logger (rank 0, when asked), added to the event handlers; None otherwise."""
    from resnet_cifar.engine.tensorboard import TENSORBOARD_DIR, TensorBoardLogger

    if not (cfg.run.tensorboard and job.is_main):
        return None
    board = TensorBoardLogger(trainer.checkpointer.path(TENSORBOARD_DIR))
    handlers.handlers.append(board)
    return board


def _calibrate_and_print(output: Output, cfg: TrainConfig, result: FitResult, *, json_output: bool) -> None:
    """best.pt calibrated (temperature scaling on the val split), then the run's summary printed."""
    calibration = _calibrate_best(cfg, result)
    if json_output:
        output.json({**result.to_dict(), "temperature_scaling": calibration})
    else:
        _print_summary(output, result, calibration)


def repeat_options(
    seeds: Annotated[
        Optional[str],
        typer.Option(
            "--seeds",
            help="Repeat the run once per seed (comma-separated, e.g. 0,1,2), one after another on the one device, "
            "each in OUT/seed-<S>/; then the spread of their results (mean, std, 95% CI) in OUT/{spread.REPEATS_FILE}. "
            "The same command again continues them.",
            show_default=False,
        ),
    ] = None,
    repeats: Annotated[
        Optional[int],
        typer.Option("--repeats", help="Like --seeds 0,1,...,N-1.", show_default=False),
    ] = None,
) -> None:
    """train's repeat options (for ``parameters_of``)."""


# Typer reads a command's options from its signature: the run options, then every setting flag.
with_signature(train, [*parameters_of(run_options), *parameters_of(repeat_options), *setting_parameters()])


def _calibrate_best(cfg: Any, result: Any) -> dict[str, Any] | None:
    """A finished run's best.pt gets its temperature, fitted on the run's validation split."""
    if result.interrupted is not None:
        return None
    from resnet_cifar.engine.checkpointer import BEST
    from resnet_cifar.inference import calibrate_checkpoint

    best = result.out_dir / BEST
    if not best.is_file():  # a resume into a new folder with nothing left to train writes no best.pt there
        return None
    return calibrate_checkpoint(best, device=cfg.precision.device, cache_dir=cfg.data.cache_dir).to_dict()


def _fit(trainer: Any, job: DistEnv) -> Any:
    """``trainer.fit()``; a collective that fails because another process of the job is gone
    (killed outright, its machine lost) is one line (exit 1), not gloo's or NCCL's traceback."""
    from resnet_cifar.distributed import peer_lost

    try:
        return trainer.fit()
    except RuntimeError as error:
        lost = peer_lost(job, error)
        if lost is None:
            raise
        raise lost from None


def _elastic_resume(values: dict[str, Any], job: DistEnv) -> Path | None:
    """When torchrun starts this job's workers again (``--max-restarts``, or a relaunch with the
    same ``--rdzv-id``), the checkpoint the job continues from: its run folder's last.pt, when the
    folder holds this job's run (the checkpointer's elastic_resume); None otherwise, which is a
    fresh run or --resume's."""
    if not job.is_distributed:
        return None
    from resnet_cifar.engine.checkpointer import elastic_resume

    out = values["out"]
    if out is None and values["resume"] is not None:
        out = Path(values["resume"]).parent
    if out is None:  # the folder a --config file or the default names
        out = resolve_run_config(values, defaults=run_defaults(os.environ), world_size=job.world_size).run.out_dir
    return elastic_resume(Path(out).expanduser(), job)


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


def _print_summary(output: Output, result: Any, calibration: dict[str, Any] | None) -> None:
    if result.interrupted is not None:
        under = f" under torchrun --nproc_per_node {result.world_size}" if result.world_size > 1 else ""
        output.line(f"interrupted by {result.interrupted}; resume with --resume {result.checkpoint}{under}")
        return
    if result.stopped_early:
        output.line(f"stopped early: {result.stop_reason}")
    best = "n/a" if result.best_val_acc is None else f"{result.best_val_acc:.4f} (epoch {result.best_epoch})"
    test = "n/a" if result.test_acc is None else f"{result.test_acc:.4f}"
    if calibration is not None:
        from .calibrate import calibration_line

        output.line(calibration_line(calibration))
    output.line(f"best val_acc {best}; test_acc {test}; {result.epochs_run} epochs; run folder {result.out_dir}")
