"""Help texts that show the library's values (file names, limits, defaults, choices) without
copying them, and without importing the library to list the commands.

A help text names a value as ``{source.NAME}``, ``source`` a key of HELP_SOURCES: ``"Default:
{export.DEFAULT_OPSET}."``. The field is filled in from that module when the command's own
``--help`` is shown (LibraryHelpCommand), so the text cannot drift from the value, and the value
stays with the module that owns it. Most of those modules import torch: filling in at that
moment keeps ``resnet-cifar --help`` (which lists each command by the first paragraph of its
help, naming no value) and the commands that need no torch free of it.

Four format specs read a collection: ``{sweep.BEST_FORMATS:or}`` shows choices as "toml or
yaml", ``{export.FORMATS:described}`` a registry's names each with its help ("onnx (a model for
...), ..."), ``{space.DEFAULT_SPACE:flags}`` dotted settings as their flags ("--lr,
--batch-size"), ``{corruptions.LEFT_OUT:list}`` the items as they are, comma-separated. A
literal brace is written twice, as in ``str.format``.
"""

from __future__ import annotations

import importlib
import string
from collections.abc import Iterable, Sequence
from typing import Any

from typer.core import TyperCommand

from resnet_cifar.choices import described, one_of
from resnet_cifar.config import flag_for

# The modules a help text may read values from, by the name it uses for them.
HELP_SOURCES = {
    "checkpointer": "resnet_cifar.engine.checkpointer",
    "config": "resnet_cifar.config",
    "corruptions": "resnet_cifar.choices.corruptions",
    "download": "resnet_cifar.data.download",
    "export": "resnet_cifar.export",
    "inference": "resnet_cifar.inference",
    "report": "resnet_cifar.report",
    "space": "resnet_cifar.tuning.space",
    "spread": "resnet_cifar.evaluation.spread",
    "sweep": "resnet_cifar.tuning.sweep",
}


class _LibraryValues(string.Formatter):
    def get_value(self, key: int | str, args: Sequence[Any], kwargs: Any) -> Any:
        return importlib.import_module(HELP_SOURCES[str(key)])

    def format_field(self, value: Any, format_spec: str) -> str:
        if format_spec == "or":
            return one_of(value)
        if format_spec == "described":
            return described(value)
        if format_spec == "flags":
            return ", ".join(flag_for(key) for key in value)
        if format_spec == "list":
            return ", ".join(value)
        return super().format_field(value, format_spec)


def with_library_values(text: str) -> str:
    """``text`` with its ``{source.NAME}`` fields filled in from the library."""
    return _LibraryValues().format(text)


def _fill(texts: Iterable[Any]) -> None:
    for owner in texts:
        if getattr(owner, "help", None):
            owner.help = with_library_values(owner.help)


class LibraryHelpCommand(TyperCommand):
    """A Typer command whose help texts (its own and its parameters') have their library values
    filled in when its --help is shown."""

    filled = False

    def format_help(self, ctx: Any, formatter: Any) -> None:
        if not self.filled:  # once: a filled text is no template any more
            _fill([self, *self.params])
            self.filled = True
        super().format_help(ctx, formatter)
