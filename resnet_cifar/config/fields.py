"""What every config section is made of: a field with its one-line --help (``setting``), the flag
that sets it (``flag_for``), the one error type (``ConfigValueError``), and ``Section``, which
checks each field against its annotation and converts it where that loses nothing, and turns a
section into plain values."""

from __future__ import annotations

import math
import numbers
import os
import types
import typing
from dataclasses import MISSING, field, fields
from pathlib import Path
from typing import Any, ClassVar, NoReturn, Union

from resnet_cifar.errors import UsageError
from resnet_cifar.files import cut, shorten

# CLI flags whose name is not the field name with dashes (see flag_for).
FLAG_EXCEPTIONS = {
    "run.out_dir": "--out",
    # The split/shuffle/augmentation seed: the CLI's --seed sets it together with run.seed.
    "data.seed": "--seed",
}


def setting(default: Any = MISSING, help: str = "", *, shown: str | None = None) -> Any:
    """A config field with its one-line ``--help`` text. ``shown`` is what ``--help`` says in place
    of the default value where the bare value would not explain it (a device-dependent None)."""
    metadata = {"help": help, "shown": shown}
    if default is MISSING:
        return field(metadata=metadata)
    return field(default=default, metadata=metadata)


def flag_for(key: str) -> str:
    """The CLI flag of a dotted setting name: ``"optim.lr"`` -> ``"--lr"``."""
    return FLAG_EXCEPTIONS.get(key, "--" + key.split(".", 1)[-1].replace("_", "-"))


class ConfigValueError(UsageError):
    """A bad value for one setting. ``key`` is its dotted name (``"optim.lr"``), so the caller that
    knows where the value came from (a config file) can say so."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(message)
        self.key = key


def show(value: Any) -> str:
    """A value as the user would have typed it: 0 rather than 0.0, strings quoted."""
    if isinstance(value, float) and value.is_integer() and math.isfinite(value):
        return str(int(value))
    if isinstance(value, (str, list, tuple, dict, int)):
        # Bounded: the value may come from a file (a YAML alias bomb, a megabyte string).
        return shorten(value)
    return cut(str(value))


def tidy(value: float) -> float:
    """``value`` to 12 significant digits: products like 0.3 x 3 become the decimal a person means."""
    return float(f"{value:.12g}")


def listed(options: Any) -> str:
    """Choices as an error message lists them: ``"auto, tensor, dali"``."""
    return ", ".join(str(option) for option in options)


class Section:
    """Shared behaviour of the section dataclasses: type normalization, errors, plain dicts."""

    section: ClassVar[str]

    def _fail(self, name: str, message: str) -> NoReturn:
        raise ConfigValueError(f"{self.section}.{name}", message)

    def _flag(self, name: str) -> str:
        return flag_for(f"{self.section}.{name}")

    def _normalize(self) -> None:
        """Check every field against its annotation and convert where it is lossless:
        str/PathLike -> Path (with ~ expanded), int -> float, list -> tuple."""
        hints = type_hints(type(self))
        for item in fields(self):  # type: ignore[arg-type]
            value = getattr(self, item.name)
            converted = convert(value, hints[item.name], f"{self.section}.{item.name}")
            if converted is not value:
                object.__setattr__(self, item.name, converted)

    def to_dict(self) -> dict[str, Any]:
        """Plain types only (paths as strings, tuples as lists, None kept), fit for TOML, JSON and checkpoints."""
        return {item.name: plain(getattr(self, item.name)) for item in fields(self)}  # type: ignore[arg-type]

    @classmethod
    def field_names(cls) -> tuple[str, ...]:
        return tuple(item.name for item in fields(cls))  # type: ignore[arg-type]

    @classmethod
    def required(cls) -> tuple[str, ...]:
        """The fields without a default (data_dir)."""
        return tuple(
            item.name
            for item in fields(cls)  # type: ignore[arg-type]
            if item.default is MISSING and item.default_factory is MISSING
        )


_HINTS: dict[type, dict[str, Any]] = {}


def type_hints(cls: type) -> dict[str, Any]:
    """The evaluated annotations of a section (cached)."""
    if cls not in _HINTS:
        _HINTS[cls] = typing.get_type_hints(cls)
    return _HINTS[cls]


def unwrap_optional(hint: Any) -> tuple[Any, bool]:
    """(the type inside, whether None is allowed) for ``X``, ``X | None`` and ``Optional[X]``."""
    if typing.get_origin(hint) in (Union, types.UnionType):
        inner = [arg for arg in typing.get_args(hint) if arg is not type(None)]
        return inner[0], len(inner) < len(typing.get_args(hint))
    return hint, False


def convert(value: Any, hint: Any, key: str) -> Any:
    """``value`` checked against ``hint`` and converted where lossless; ConfigValueError otherwise."""
    flag = flag_for(key)
    base, optional = unwrap_optional(hint)
    if value is None:
        if optional:
            return None
        raise ConfigValueError(key, f"{flag} must be set, got None")

    def wrong(kind: str) -> NoReturn:
        raise ConfigValueError(key, f"{flag} must be {kind}, got {shorten(value)}")

    if base is bool:
        return value if isinstance(value, bool) else wrong("true or false")
    if base is int:
        if isinstance(value, bool) or not isinstance(value, numbers.Integral):
            wrong("an integer")
        return int(value)
    if base is float:
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            wrong("a number")
        number = float(value)
        if not math.isfinite(number):
            wrong("a finite number")
        return number
    if base is str:
        return value if isinstance(value, str) else wrong("a string")
    if base is Path:
        if isinstance(value, (str, os.PathLike)) and os.fspath(value):
            return Path(value).expanduser()
        wrong("a path")
    if typing.get_origin(base) is tuple:
        if not isinstance(value, (list, tuple)):
            wrong("a list")
        item_hint = typing.get_args(base)[0]
        return tuple(convert(item, item_hint, key) for item in value)
    raise TypeError(f"no conversion for {key}: {hint!r}")  # a field type this module does not handle


def plain(value: Any) -> Any:
    """A value as TOML, JSON and a weights-only checkpoint hold it: paths as strings, tuples as lists."""
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, tuple):
        return [plain(item) for item in value]
    return value
