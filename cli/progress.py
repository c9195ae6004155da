"""Training progress for a person or a log: Rich bars on a terminal, one plain line per epoch otherwise."""

from __future__ import annotations

from typing import Any

from .render import Output


class ProgressRenderer:
    """Rich bars (epoch, batch, loss, lr, img/s, ETA) on a terminal; one plain line per epoch otherwise."""

    def __init__(self, out: Output, *, lr_text: str | None = None) -> None:
        self.out = out
        # How the run's learning rate was resolved ("0.05 = 0.4 x 64/512"); the event's own rate otherwise.
        self.lr_text = lr_text
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
        lr = self.lr_text or f"{event.lr:.4g}"
        processes = f"{event.world_size} processes, " if event.world_size > 1 else ""
        self.out.line(
            f"training on {event.device} ({event.loader} loader, amp {amp}, channels_last {event.channels_last}, "
            f"compile {event.compiled}): {event.train_samples} train / {event.val_samples} val images, "
            f"{event.steps_per_epoch} steps per epoch, epochs {event.start_epoch + 1}..{event.total_epochs}; "
            f"{processes}global batch {event.global_batch_size}, lr {lr}"
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


class EventFanOut:
    """Hands each trainer event to every consumer in turn (the progress renderer, TensorBoard)."""

    def __init__(self, handlers: list[Any]) -> None:
        self.handlers = handlers

    def __call__(self, event: Any) -> None:
        for handler in self.handlers:
            handler(event)
