"""`resnet-cifar train`: flags -> one validated TrainConfig -> the library's Trainer -> render + save.

Only flags the user actually gave become overrides (every option defaults to None), so the
layering defaults < preset < --config file < flags holds. `--resume` layers the checkpoint's own
config under the flags, so a resumed run continues with the settings it was started with.

Under `torchrun --nproc_per_node=N --no-python resnet-cifar train ...` every process runs this
command; the torchrun environment (RANK, WORLD_SIZE, LOCAL_RANK) puts them in one DDP job, and
only rank 0 prints and writes files (docs/distributed.md).
"""

from __future__ import annotations

import json
import os
import signal
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from .render import Output

SIGNAL_EXIT_CODES = {"SIGINT": 130, "SIGTERM": 143}


def _flatten(section_dicts: dict[str, dict[str, Any]]) -> dict[str, Any]:
    return {f"{section}.{key}": value for section, values in section_dicts.items() for key, value in values.items()}


@contextmanager
def stop_on_signals(stop) -> Iterator[None]:
    """SIGINT/SIGTERM ask the trainer to stop after the current step (it then writes a
    resumable last.pt). A second signal of the same kind falls back to the default action."""
    previous = {}

    def handler(signum: int, frame: Any) -> None:
        name = signal.Signals(signum).name
        stop.request(name)
        signal.signal(signum, previous[signum])  # a second Ctrl-C really interrupts

    for signum in (signal.SIGINT, signal.SIGTERM):
        previous[signum] = signal.signal(signum, handler)
    try:
        yield
    finally:
        for signum, old in previous.items():
            signal.signal(signum, old)


class ProgressRenderer:
    """Rich bars (epoch, batch, loss, lr, img/s, ETA) on a terminal; one plain line per epoch otherwise."""

    def __init__(self, out: Output) -> None:
        self.out = out
        self.console = out.console
        self.progress = None
        self.epoch_task = None
        self.batch_task = None

    def __call__(self, event: Any) -> None:
        from resnet_cifar.engine.trainer import EpochFinished, RunStarted, StepFinished

        if isinstance(event, RunStarted):
            self._started(event)
        elif isinstance(event, StepFinished) and self.progress is not None:
            self.progress.update(
                self.batch_task,
                completed=event.step,
                total=event.steps,
                description=f"epoch {event.epoch}",
                info=f"loss {event.loss:.4f}  lr {event.lr:.4g}  {event.images_per_sec:,.0f} img/s",
            )
        elif isinstance(event, EpochFinished):
            record = event.record
            line = (
                f"epoch {record.epoch}  train_loss {record.train_loss:.4f}  train_acc {record.train_acc:.4f}  "
                f"val_loss {record.val_loss:.4f}  val_acc {record.val_acc:.4f}  lr {record.lr:.4g}  "
                f"{record.images_per_sec:,.0f} img/s  {record.epoch_seconds:.1f}s" + ("  *best" if event.is_best else "")
            )
            if self.progress is not None:
                self.progress.update(self.epoch_task, completed=record.epoch)
                self.progress.console.print(line, markup=False, highlight=False)
            else:
                self.out.line(line)

    def _started(self, event: Any) -> None:
        amp = event.amp_dtype or "off"
        self.out.line(
            f"training on {event.device} ({event.loader} loader, amp {amp}, channels_last {event.channels_last}, "
            f"compile {event.compiled}): {event.train_samples} train / {event.val_samples} val images, "
            f"{event.steps_per_epoch} steps per epoch, epochs {event.start_epoch + 1}..{event.total_epochs}"
            + (
                f"; {event.world_size} processes, global batch {event.global_batch_size}, lr {event.lr:.4g}"
                if event.world_size > 1
                else ""
            )
        )
        if not self.console.is_terminal:
            return
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        self.progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeRemainingColumn(),
            TextColumn("{task.fields[info]}"),
            console=self.console,
        )
        self.epoch_task = self.progress.add_task("epochs", total=event.total_epochs, completed=event.start_epoch, info="")
        self.batch_task = self.progress.add_task("epoch", total=event.steps_per_epoch, info="")
        self.progress.start()

    def close(self) -> None:
        if self.progress is not None:
            self.progress.stop()


def register(app: typer.Typer) -> None:
    @app.command()
    def train(
        data_dir: Annotated[Optional[Path], typer.Option(help="CIFAR-10 folder (default: the default data folder, downloaded when empty).", show_default=False)] = None,
        out: Annotated[Optional[Path], typer.Option("--out", help="Run folder for config, metrics, checkpoints and curves. [default: runs]", show_default=False)] = None,
        config: Annotated[Optional[Path], typer.Option("--config", help="TOML or YAML file of settings; flags override it.", show_default=False)] = None,
        preset: Annotated[Optional[str], typer.Option(help="Recipe: default (>= 94% in 30 epochs), long (>= 96%), smoke (quick CPU check).", show_default=False)] = None,
        resume: Annotated[Optional[Path], typer.Option(help="Continue from a checkpoint (last.pt) with its own settings.", show_default=False)] = None,
        epochs: Annotated[Optional[int], typer.Option(show_default=False)] = None,
        batch_size: Annotated[Optional[int], typer.Option(show_default=False)] = None,
        eval_batch_size: Annotated[Optional[int], typer.Option(show_default=False)] = None,
        lr: Annotated[Optional[float], typer.Option(help="Peak learning rate.", show_default=False)] = None,
        optimizer: Annotated[Optional[str], typer.Option(help="sgd, adam or adamw.", show_default=False)] = None,
        momentum: Annotated[Optional[float], typer.Option(show_default=False)] = None,
        nesterov: Annotated[Optional[bool], typer.Option("--nesterov/--no-nesterov", show_default=False)] = None,
        weight_decay: Annotated[Optional[float], typer.Option(show_default=False)] = None,
        decay_norm_and_bias: Annotated[Optional[bool], typer.Option("--decay-norm-and-bias", help="Apply weight decay to batch-norm and bias parameters too.", show_default=False)] = None,
        schedule: Annotated[Optional[str], typer.Option(help="constant, step, multistep, cosine or onecycle.", show_default=False)] = None,
        step_size: Annotated[Optional[int], typer.Option(help="Epochs between step decays.", show_default=False)] = None,
        gamma: Annotated[Optional[float], typer.Option(help="Decay factor of step/multistep.", show_default=False)] = None,
        milestones: Annotated[Optional[str], typer.Option(help="Multistep decay epochs, comma-separated (e.g. 60,120,160).", show_default=False)] = None,
        warmup_epochs: Annotated[Optional[float], typer.Option(help="Linear warm-up (one-cycle: its rising phase).", show_default=False)] = None,
        min_lr_ratio: Annotated[Optional[float], typer.Option(show_default=False)] = None,
        label_smoothing: Annotated[Optional[float], typer.Option(show_default=False)] = None,
        grad_clip: Annotated[Optional[float], typer.Option(help="Clip the gradient norm (after unscaling).", show_default=False)] = None,
        ema: Annotated[Optional[bool], typer.Option("--ema/--no-ema", help="Keep and evaluate an EMA of the weights.", show_default=False)] = None,
        ema_decay: Annotated[Optional[float], typer.Option(show_default=False)] = None,
        dropout: Annotated[Optional[float], typer.Option(help="Dropout before the top layer, in [0, 1).", show_default=False)] = None,
        depth: Annotated[Optional[int], typer.Option(help="ResNet depth: 18, 34, 50, 101 or 152.", show_default=False)] = None,
        stem: Annotated[Optional[str], typer.Option(help="cifar (3x3, no max-pool) or imagenet (7x7/2 + max-pool).", show_default=False)] = None,
        zero_init_residual: Annotated[Optional[bool], typer.Option("--zero-init-residual/--no-zero-init-residual", show_default=False)] = None,
        pretrained: Annotated[Optional[str], typer.Option(help="imagenet1k-v1, imagenet1k-v2 or a weights file.", show_default=False)] = None,
        reinit_conv1: Annotated[Optional[bool], typer.Option("--reinit-conv1", help="With --stem cifar and ImageNet weights: start conv1 fresh.", show_default=False)] = None,
        image_size: Annotated[Optional[int], typer.Option(help="Upsample batches on the device to N pixels before the model.", show_default=False)] = None,
        freeze_backbone: Annotated[Optional[bool], typer.Option("--freeze-backbone", help="Train only the top layer.", show_default=False)] = None,
        backbone_lr_mult: Annotated[Optional[float], typer.Option(help="Scale the backbone's learning rate.", show_default=False)] = None,
        sync_bn: Annotated[Optional[bool], typer.Option("--sync-bn/--no-sync-bn", help="Under torchrun on GPUs: batch-norm statistics over the global batch (SyncBatchNorm).", show_default=False)] = None,
        scale_lr: Annotated[Optional[bool], typer.Option("--scale-lr/--no-scale-lr", help="Under torchrun: multiply --lr by the number of processes (linear scaling rule; --batch-size is per process).", show_default=False)] = None,
        patience: Annotated[Optional[int], typer.Option(help="Early stopping: validation checks without improvement (off when not given).", show_default=False)] = None,
        monitor: Annotated[Optional[str], typer.Option(help="val_acc or val_loss.", show_default=False)] = None,
        min_delta: Annotated[Optional[float], typer.Option(help="A change of at most this is no improvement.", show_default=False)] = None,
        amp: Annotated[Optional[bool], typer.Option("--amp/--no-amp", help="Autocast (bf16 by default). [default: on for CUDA]", show_default=False)] = None,
        amp_dtype: Annotated[Optional[str], typer.Option(help="bf16, or fp16 (with a GradScaler; CUDA only).", show_default=False)] = None,
        channels_last: Annotated[Optional[bool], typer.Option("--channels-last/--no-channels-last", help="[default: on for CUDA]", show_default=False)] = None,
        compile: Annotated[Optional[bool], typer.Option("--compile/--no-compile", help="torch.compile the model.", show_default=False)] = None,
        loader: Annotated[Optional[str], typer.Option(help="auto (DALI on a GPU when installed), tensor or dali.", show_default=False)] = None,
        device: Annotated[Optional[str], typer.Option(help="auto, cpu or cuda.", show_default=False)] = None,
        seed: Annotated[Optional[int], typer.Option(help="Seed of the run and of the data (split, order, augmentation).", show_default=False)] = None,
        deterministic: Annotated[Optional[bool], typer.Option("--deterministic", help="Deterministic kernels (exact resume on the CPU).", show_default=False)] = None,
        val_fraction: Annotated[Optional[float], typer.Option(show_default=False)] = None,
        limit_train: Annotated[Optional[int], typer.Option(help="A stratified subset of N training images.", show_default=False)] = None,
        limit_val: Annotated[Optional[int], typer.Option(help="A stratified subset of N validation images.", show_default=False)] = None,
        limit_test: Annotated[Optional[int], typer.Option(help="A stratified subset of N test images for the final report.", show_default=False)] = None,
        crop: Annotated[Optional[bool], typer.Option("--crop/--no-crop", show_default=False)] = None,
        flip: Annotated[Optional[bool], typer.Option("--flip/--no-flip", show_default=False)] = None,
        cutout: Annotated[Optional[int], typer.Option(help="Cutout square side in pixels (0 = off).", show_default=False)] = None,
        augment: Annotated[Optional[str], typer.Option(help="Per-image policy: none, autoaugment (CIFAR-10 policy), randaugment or trivialaugment (Wide).", show_default=False)] = None,
        randaugment_ops: Annotated[Optional[int], typer.Option(help="RandAugment: ops per image (1-10). [default: 2]", show_default=False)] = None,
        randaugment_magnitude: Annotated[Optional[int], typer.Option(help="RandAugment: magnitude bin (0-30). [default: 9]", show_default=False)] = None,
        mixup: Annotated[Optional[float], typer.Option(help="Mixup Beta alpha, soft targets (0 = off).", show_default=False)] = None,
        cutmix: Annotated[Optional[float], typer.Option(help="CutMix Beta alpha, soft targets (0 = off).", show_default=False)] = None,
        mix_prob: Annotated[Optional[float], typer.Option(help="Chance that a batch is mixed (mixup/cutmix). [default: 1]", show_default=False)] = None,
        no_verify: Annotated[bool, typer.Option("--no-verify", help="Skip the md5 check of the official release files.")] = False,
        no_cache: Annotated[bool, typer.Option("--no-cache", help="Decode image folders without the decoded cache.")] = False,
        json_output: Annotated[bool, typer.Option("--json", help="Print one JSON object with the result on stdout.")] = False,
    ) -> None:
        """Train a ResNet (ResNet-50 by default) on CIFAR-10: validation every epoch, checkpoints, curves."""
        flags = dict(locals())  # the parameters above, by name, before any other local exists
        from resnet_cifar.config import resolve_config, save_config
        from resnet_cifar.data.download import default_data_dir, resolve_data_dir
        from resnet_cifar.distributed import process_group, read_env
        from resnet_cifar.engine.checkpoint import load_checkpoint
        from resnet_cifar.engine.precision import select_device
        from resnet_cifar.engine.trainer import StopRequest, Trainer
        from resnet_cifar.errors import UsageError

        from .main import cache_dir_from_env, download_progress, reported_errors

        output = Output(json_mode=json_output)
        with reported_errors(output):
            job = read_env(os.environ)  # a single process unless torchrun started this one
            if not job.is_main:
                # One voice per job: rank 0 prints (errors included, which every rank meets alike).
                output.console.quiet = True
                output.errors.quiet = True
            if data_dir is not None and not data_dir.is_dir():
                raise UsageError(f"{data_dir}: no such folder")
            overrides = setting_overrides(flags)
            default_dir = default_data_dir(os.environ)
            if resume is not None:
                # The checkpoint's settings, then the flags given now on top of them.
                saved = _flatten(load_checkpoint(resume, require=("config",))["config"])
                overrides = {**{k: v for k, v in saved.items() if v is not None}, **overrides}
                if out is None:
                    overrides["run.out_dir"] = str(resume.parent)
            cfg = resolve_config(
                preset=preset,
                file=config,
                overrides=overrides,
                defaults={"data.data_dir": default_dir, "data.cache_dir": cache_dir_from_env(os.environ)},
            )
            if no_cache:
                cfg = replace(cfg, data=replace(cfg.data, cache_dir=None))
            with process_group(job, select_device(cfg.precision.device)):
                # The default folder is downloaded into when empty; any other folder must exist.
                # Rank 0 downloads; the others then find the data there.
                named = None if cfg.data.data_dir == default_dir else cfg.data.data_dir
                with job.main_first(), download_progress(output) as on_progress:
                    resolved_dir = resolve_data_dir(named, os.environ, on_progress=on_progress)
                if resolved_dir != cfg.data.data_dir:
                    cfg = replace(cfg, data=replace(cfg.data, data_dir=resolved_dir))

                stop = StopRequest()
                renderer = ProgressRenderer(output) if job.is_main else None
                with stop_on_signals(stop):
                    trainer = Trainer(cfg, on_event=renderer, stop=stop, distributed=job)
                    if job.is_main:
                        # Saved without --resume, so `train --config out/config.toml` starts the same run afresh.
                        save_config(replace(cfg, run=replace(cfg.run, resume=None)), cfg.run.out_dir / "config.toml")
                    try:
                        result = trainer.fit()
                    finally:
                        if renderer is not None:
                            renderer.close()
                summary = result.to_dict()
                if job.is_main:  # the other ranks print nothing
                    (cfg.run.out_dir / "result.json").write_text(json.dumps(summary, indent=2) + "\n")
                    if json_output:
                        output.json(summary)
                    else:
                        _print_summary(output, result)
                # No rank exits before rank 0 is done: torchrun stops the whole job (SIGTERM) as
                # soon as one worker exits with an error code, 143 after a stop request included.
                job.barrier()
        if result.interrupted is not None:
            raise typer.Exit(SIGNAL_EXIT_CODES.get(result.interrupted, 1))


def setting_overrides(flags: Mapping[str, Any]) -> dict[str, Any]:
    """The dotted settings of the setting flags given, by parameter name (a None or absent flag is
    not given). Shared with `resnet-cifar sweep`, which takes the same flags as fixed settings."""
    get = flags.get
    given = {
        "data.data_dir": get("data_dir"), "run.out_dir": get("out"), "run.resume": get("resume"),
        "optim.epochs": get("epochs"), "data.batch_size": get("batch_size"),
        "data.eval_batch_size": get("eval_batch_size"), "optim.lr": get("lr"), "optim.optimizer": get("optimizer"),
        "optim.momentum": get("momentum"), "optim.nesterov": get("nesterov"),
        "optim.weight_decay": get("weight_decay"), "optim.decay_norm_and_bias": get("decay_norm_and_bias"),
        "optim.schedule": get("schedule"), "optim.step_size": get("step_size"), "optim.gamma": get("gamma"),
        "optim.milestones": _parse_milestones(get("milestones")), "optim.warmup_epochs": get("warmup_epochs"),
        "optim.min_lr_ratio": get("min_lr_ratio"), "optim.label_smoothing": get("label_smoothing"),
        "optim.grad_clip": get("grad_clip"), "optim.ema": get("ema"), "optim.ema_decay": get("ema_decay"),
        "model.dropout": get("dropout"), "model.depth": get("depth"), "model.stem": get("stem"),
        "model.zero_init_residual": get("zero_init_residual"), "model.pretrained": get("pretrained"),
        "model.reinit_conv1": get("reinit_conv1"), "model.image_size": get("image_size"),
        "model.freeze_backbone": get("freeze_backbone"), "model.backbone_lr_mult": get("backbone_lr_mult"),
        "model.sync_bn": get("sync_bn"), "optim.scale_lr": get("scale_lr"),
        "early_stopping.patience": get("patience"), "early_stopping.monitor": get("monitor"),
        "early_stopping.min_delta": get("min_delta"), "precision.amp": get("amp"),
        "precision.amp_dtype": get("amp_dtype"), "precision.channels_last": get("channels_last"),
        "precision.compile": get("compile"), "data.loader": get("loader"), "precision.device": get("device"),
        "run.seed": get("seed"), "data.seed": get("seed"), "precision.deterministic": get("deterministic"),
        "data.val_fraction": get("val_fraction"), "data.limit_train": get("limit_train"),
        "data.limit_val": get("limit_val"), "data.limit_test": get("limit_test"), "data.crop": get("crop"),
        "data.flip": get("flip"), "data.cutout": get("cutout"), "data.augment": get("augment"),
        "data.randaugment_ops": get("randaugment_ops"), "data.randaugment_magnitude": get("randaugment_magnitude"),
        "data.mixup": get("mixup"), "data.cutmix": get("cutmix"), "data.mix_prob": get("mix_prob"),
        "data.verify": False if get("no_verify") else None, "run.preset": get("preset"),
    }  # fmt: skip
    return {key: value for key, value in given.items() if value is not None}


def _parse_milestones(text: str | None) -> tuple[int, ...] | None:
    if text is None:
        return None
    from resnet_cifar.errors import UsageError

    try:
        return tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise UsageError(f"--milestones must be comma-separated epochs such as 60,120,160, got {text!r}") from None


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
