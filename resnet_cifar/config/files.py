"""Config files: TOML or YAML, read with one-line errors naming the file, written atomically.

``read_document`` reads any settings file the project takes (a config, a search space) the same
way: suffix, UTF-8, TOML via tomllib, YAML via a SafeLoader that also reads ``5e-4`` as a float.
``save_config`` writes a resolved config beside a run so that ``resolve_config(file=that_file)``
gives the same ``TrainConfig`` back (docs/recipes.md describes the format).
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from resnet_cifar.config.keys import sectioned
from resnet_cifar.config.train import TrainConfig
from resnet_cifar.errors import UsageError
from resnet_cifar.files import atomic_write, one_line

CONFIG_SUFFIXES = (".toml", ".yaml", ".yml")


def read_document(path: str | os.PathLike[str], kind: str = "config file") -> Any:
    """The parsed content of a TOML or YAML ``kind`` of file (an empty YAML file is ``{}``); a wrong
    suffix, a missing, unreadable or non-UTF-8 file and a syntax error are one line naming it."""
    path = Path(path)
    suffix = _suffix(path, kind)
    try:
        text = path.read_bytes().decode("utf-8")
    except FileNotFoundError:
        raise UsageError(f"{path}: no such {kind}") from None
    except IsADirectoryError:
        raise UsageError(f"{path}: is a folder, not a {kind}") from None
    except UnicodeDecodeError:
        raise UsageError(f"{path}: a {kind} must be UTF-8 text") from None
    except OSError as error:
        raise UsageError(f"{path}: cannot read the {kind} ({error.strerror or error})") from None
    return parse_toml(text, path) if suffix == ".toml" else parse_yaml(text, path)


def read_config_file(path: str | os.PathLike[str]) -> dict[str, dict[str, Any]]:
    """The sections of a TOML or YAML config file, checked for unknown sections and keys (types and
    values are checked when the config is built). Errors are one line naming the file."""
    document = read_document(path)
    if not isinstance(document, Mapping):
        kind = type(document).__name__
        raise UsageError(f"{path}: a config file must hold sections ([data], [model], ...), got {kind}")
    return sectioned(document, where=f"{path}: ")


def save_config(cfg: TrainConfig, path: str | os.PathLike[str]) -> Path:
    """Write ``cfg`` as TOML or YAML (by suffix) with ``files.atomic_write`` (WriteError, exit 1, when
    the disk fails; UnwritableFolder, exit 2, for a folder it cannot write into). TOML has no null, so None settings are left out; absent means default, and every
    field that may be None defaults to None, so ``resolve_config(file=path)`` returns ``cfg``."""
    path = Path(path)
    atomic_write(path, config_text(cfg, _suffix(path, "config file")))
    return path


def config_text(cfg: TrainConfig, suffix: str = ".toml") -> str:
    """``cfg`` as the text of a .toml or .yaml config file (what save_config writes)."""
    values = cfg.to_dict()
    if suffix == ".toml":
        import tomli_w

        body = tomli_w.dumps({name: _without_none(entries) for name, entries in values.items()})
        return "# resnet-cifar resolved config. A setting left out is None (its default).\n\n" + body
    import yaml

    return "# resnet-cifar resolved config.\n" + yaml.safe_dump(values, sort_keys=False, default_flow_style=False)


def _suffix(path: Path, kind: str) -> str:
    suffix = path.suffix.lower()
    if suffix not in CONFIG_SUFFIXES:
        raise UsageError(f"{path}: a {kind} must end in {', '.join(CONFIG_SUFFIXES)}")
    return suffix


def _without_none(entries: dict[str, Any]) -> dict[str, Any]:
    return {name: value for name, value in entries.items() if value is not None}


def parse_toml(text: str, path: Path) -> Any:
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        import tomli as tomllib
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as error:
        raise UsageError(f"{path}: invalid TOML: {one_line(error)}") from None


# YAML 1.1 (PyYAML) reads 5e-4 as a string: only 5.0e-4 is a float there. YAML 1.2 and TOML take
# both, so the loader also resolves exponent floats without a dot.
_EXPONENT_FLOAT = re.compile(r"^[-+]?[0-9][0-9_]*(?:\.[0-9_]*)?[eE][-+]?[0-9]+$")


def _yaml_loader() -> Any:
    import yaml

    class ConfigLoader(yaml.SafeLoader):
        """SafeLoader (plain data only, never objects) that also reads 5e-4 as a float."""

    ConfigLoader.add_implicit_resolver("tag:yaml.org,2002:float", _EXPONENT_FLOAT, list("-+0123456789"))
    return ConfigLoader


def parse_yaml(text: str, path: Path) -> Any:
    import yaml

    try:
        document = yaml.load(text, Loader=_yaml_loader())  # noqa: S506  (a SafeLoader subclass)
    except yaml.YAMLError as error:
        raise UsageError(f"{path}: invalid YAML: {one_line(error)}") from None
    return {} if document is None else document
