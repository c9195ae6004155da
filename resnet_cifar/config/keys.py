"""The one check of setting names, for every mapping of settings the project reads: a config file,
a checkpoint's config, overrides from the flags, a search space.

``settings`` reads sections of settings (``{"optim": {"lr": 0.1}}``) and, where allowed, dotted
names (``{"optim.lr": 0.1}``) as (section, name, value) in the document's order, refusing an
unknown section or name with the closest match (or the section the name belongs in), a section
that is not a table, and a name given twice; ``sectioned`` groups them by section. It checks
names only; values are checked when the sections are built.
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping
from typing import Any

from resnet_cifar.config.fields import show
from resnet_cifar.config.sections import SECTIONS
from resnet_cifar.errors import UsageError
from resnet_cifar.files import shorten


def settings(
    document: Mapping[Any, Any], *, where: str, dotted: bool = False, noun: str = "key"
) -> list[tuple[str, str, Any]]:
    """(section, name, value) of every setting of ``document``, in its order: sections map to tables
    of settings (None: an empty YAML section) and, with ``dotted``, ``"optim.lr"`` keys to values.
    Every error is one UsageError line starting with ``where``; ``noun`` is what the document
    calls a name ("key" in a config, "setting" in a search space)."""
    found: list[tuple[str, str, Any]] = []
    seen: set[tuple[str, str]] = set()

    def add(section: str, name: str, value: Any) -> None:
        if name not in SECTIONS[section].field_names():
            raise UsageError(f"{where}{_unknown_name(section, name, noun)}")
        if (section, name) in seen:
            raise UsageError(f"{where}{section}.{name} is given twice")
        seen.add((section, name))
        found.append((section, name, value))

    for key, value in document.items():
        key = str(key)
        if key in SECTIONS:
            if value is not None and not isinstance(value, Mapping):
                raise UsageError(f"{where}[{key}] must be a table of settings, got {show(value)}")
            for name, inner in (value or {}).items():
                add(key, str(name), inner)
        elif dotted and "." in key:
            section, name = key.split(".", 1)
            if section not in SECTIONS:
                raise UsageError(f"{where}{_unknown_section(section)}")
            add(section, name, value)
        elif dotted:
            raise UsageError(f"{where}{shorten(key)} must be a dotted name such as 'optim.lr'")
        else:
            holds_a_value = value is not None and not isinstance(value, Mapping)
            raise UsageError(f"{where}{_unknown_section(key, holds_a_value=holds_a_value)}")
    return found


def sectioned(document: Mapping[Any, Any], *, where: str, dotted: bool = False) -> dict[str, dict[str, Any]]:
    """``settings(document)`` as ``{section: {name: value}}``, with every section written (even an
    empty one)."""
    result: dict[str, dict[str, Any]] = {str(key): {} for key in document if str(key) in SECTIONS}
    for section, name, value in settings(document, where=where, dotted=dotted):
        result.setdefault(section, {})[name] = value
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
        return f"{shorten(name)} is not a section: settings go in a section, here [{owners[0]}]"
    return f"unknown section [{name}]{_suggestion(name, list(SECTIONS))}; sections are {', '.join(SECTIONS)}"


def _unknown_name(section: str, name: str, noun: str) -> str:
    owners = _owners(name, besides=section)
    if owners:
        return f"unknown {noun} {section}.{name}: {name} belongs in [{owners[0]}]"
    return f"unknown {noun} {section}.{name}{_suggestion(name, sorted(SECTIONS[section].field_names()))}"
