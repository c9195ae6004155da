"""The one check of setting names, for every mapping of settings the project reads: a config file,
a checkpoint's config, overrides from the flags, a search space.

``sectioned`` turns sections of settings (``{"optim": {"lr": 0.1}}``) and, where allowed, dotted
names (``{"optim.lr": 0.1}``) into ``{section: {name: value}}``, refusing an unknown section or
name with the closest match (or the section the name belongs in), a section that is not a table,
and a name given twice. It checks names only; values are checked when the sections are built.
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping
from typing import Any

from resnet_cifar.config.fields import show
from resnet_cifar.config.sections import SECTIONS
from resnet_cifar.errors import UsageError


def sectioned(document: Mapping[Any, Any], *, where: str, dotted: bool = False, noun: str = "key") -> dict[str, dict[str, Any]]:
    """``document`` as ``{section: {name: value}}`` (None for a section: an empty YAML one); every
    error is one UsageError line starting with ``where``. ``dotted`` also takes ``"optim.lr"``
    keys; ``noun`` is what the document calls a name ("key" in a config, "setting" in a space)."""
    result: dict[str, dict[str, Any]] = {}

    def put(section: str, name: str, value: Any) -> None:
        if name not in SECTIONS[section].field_names():
            raise UsageError(f"{where}{_unknown_name(section, name, noun)}")
        entries = result.setdefault(section, {})
        if name in entries:
            raise UsageError(f"{where}{section}.{name} is given twice")
        entries[name] = value

    for key, value in document.items():
        key = str(key)
        if key in SECTIONS:
            if value is not None and not isinstance(value, Mapping):
                raise UsageError(f"{where}[{key}] must be a table of settings, got {show(value)}")
            result.setdefault(key, {})
            for name, inner in (value or {}).items():
                put(key, str(name), inner)
        elif dotted and "." in key:
            section, name = key.split(".", 1)
            if section not in SECTIONS:
                raise UsageError(f"{where}{_unknown_section(section)}")
            put(section, name, value)
        elif dotted:
            raise UsageError(f"{where}{key!r} must be a dotted name such as 'optim.lr'")
        else:
            holds_a_value = value is not None and not isinstance(value, Mapping)
            raise UsageError(f"{where}{_unknown_section(key, holds_a_value=holds_a_value)}")
    return result


def _owners(name: str, *, besides: str = "") -> list[str]:
    return [section for section, cls in SECTIONS.items() if section != besides and name in cls.field_names()]


def _suggestion(name: str, options: list[str]) -> str:
    close = difflib.get_close_matches(name, options, n=1, cutoff=0.5)
    return f" (did you mean {close[0]}?)" if close else ""


def _unknown_section(name: str, *, holds_a_value: bool = False) -> str:
    """Why ``name`` is not a section; ``holds_a_value`` when it carries a value rather than a table,
    as a setting written outside any section does."""
    owners = _owners(name)
    if owners and holds_a_value:
        return f"{name!r} is not a section: settings go in a section, here [{owners[0]}]"
    return f"unknown section [{name}]{_suggestion(name, list(SECTIONS))}; sections are {', '.join(SECTIONS)}"


def _unknown_name(section: str, name: str, noun: str) -> str:
    owners = _owners(name, besides=section)
    if owners:
        return f"unknown {noun} {section}.{name}: {name} belongs in [{owners[0]}]"
    return f"unknown {noun} {section}.{name}{_suggestion(name, sorted(SECTIONS[section].field_names()))}"
