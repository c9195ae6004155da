"""The options several commands share, each declared once here; the setting flags of `train` and
`sweep`, derived from the config's fields; and the one function that turns the flags a user gave
into a run's TrainConfig.

Every field of a TrainConfig section is a flag named by ``config.flag_for`` (``optim.lr`` ->
``--lr``), typed by its annotation (a bool field is a ``--x/--no-x`` pair, a tuple of epochs a
comma-separated list), with the field's one-line help and the value the default preset resolves
to. Every flag defaults to None, which means "not given": only the flags a user types override,
so the layering defaults < preset < --config file < flags holds. Adding a setting is adding a
field (with its help) to a section of resnet_cifar/config/sections.py; nothing here changes. A
setting that names a choice (--optimizer, --schedule, --augment, ...) lists the names of its
registry in resnet_cifar.choices, through the field's help.

Two fields are not flags of their own: ``data.seed`` is set by ``--seed`` together with
``run.seed``, and ``data.cache_dir`` comes from $RESNET_CIFAR_CACHE (``--no-cache`` turns it off).

Help texts name the library's values as ``{source.NAME}`` fields, filled in when a command's
--help is shown (cli/helptext.py).
"""

from __future__ import annotations

import functools
import inspect
import os
import typing
from contextlib import AbstractContextManager, nullcontext
from collections.abc import Mapping
from dataclasses import fields, replace
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from resnet_cifar.config import SECTIONS, TrainConfig, flag_for, resolve_config, unwrap_optional

from .common import cache_dir_from_env, download_progress, interrupted_by_sigterm
from .render import Output

# Fields set another way than by a flag of their own (see the module notes).
NOT_FLAGS = ("data.seed", "data.cache_dir")
# One flag that sets several settings.
ALSO_SETS = {"run.seed": ("data.seed",)}
# What --help says for a field whose default is not a value a user would type.
_DATA_DIR_DEFAULT = "${download.DATA_DIR_ENV}, else ~/.cache/resnet-cifar/data, downloaded when empty"


def setting_keys() -> tuple[str, ...]:
    """Every dotted setting that has a flag, in section and field order."""
    keys = [f"{name}.{item.name}" for name, section in SECTIONS.items() for item in fields(section)]
    return tuple(key for key in keys if key not in NOT_FLAGS)


def parameter_name(key: str) -> str:
    """The Python parameter a setting's flag arrives in: ``--lr-base`` -> ``lr_base``."""
    return flag_for(key).removeprefix("--").replace("-", "_")


def _field(key: str) -> Any:
    section, name = key.split(".", 1)
    return next(item for item in fields(SECTIONS[section]) if item.name == name)


def _hint(key: str) -> Any:
    section, name = key.split(".", 1)
    return _section_hints(section)[name]


@functools.cache
def _section_hints(section: str) -> dict[str, Any]:
    # Once per section: evaluating the annotations is most of what building --help costs.
    return typing.get_type_hints(SECTIONS[section])


def _shown(value: Any) -> str:
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, tuple):
        return ",".join(str(item) for item in value) or "none"
    return str(value)


def _default_config() -> TrainConfig:
    """What the default preset resolves to, before any file or flag."""
    return resolve_config(defaults={"data.data_dir": Path(".")})


def default_text(key: str, resolved: TrainConfig | None = None) -> str:
    """The ``[default: ...]`` text of a setting's --help: the field's ``shown`` text when it has
    one, else the default preset's value."""
    item = _field(key)
    if item.metadata.get("shown"):
        return item.metadata["shown"]
    if key == "data.data_dir":
        return _DATA_DIR_DEFAULT
    section, name = key.split(".", 1)
    return _shown(getattr(getattr(resolved or _default_config(), section), name))


def setting_option(key: str, resolved: TrainConfig | None = None) -> Any:
    """The Annotated Typer option of one setting (``resolved``: the default preset's config, when
    the caller has it already)."""
    item = _field(key)
    base, _ = unwrap_optional(_hint(key))
    flag = flag_for(key)
    helptext = item.metadata.get("help", "")
    assert helptext, f"{key} has no help text: give its field one with config.setting(...)"
    # Rich would read "[default: ...]" as markup and drop it: the backslash keeps it literal.
    helptext = f"{helptext} \\[default: {default_text(key, resolved)}]"
    if base is bool:
        declared: tuple[str, ...] = (f"{flag}/--no-{flag.removeprefix('--')}",)
        kind: Any = bool
    elif typing.get_origin(base) is tuple:
        declared, kind = (flag,), str  # comma-separated, parsed by setting_overrides
    else:
        declared, kind = (flag,), base
    return Annotated[Optional[kind], typer.Option(*declared, help=helptext, show_default=False)]


def setting_parameters(*, exclude: tuple[str, ...] = ()) -> list[inspect.Parameter]:
    """One keyword parameter per setting flag (default None), for a command's signature."""
    resolved = _default_config()
    return [
        inspect.Parameter(parameter_name(key), inspect.Parameter.KEYWORD_ONLY, default=None, annotation=setting_option(key, resolved))
        for key in setting_keys()
        if key not in exclude
    ]


def parameters_of(function: Any) -> list[inspect.Parameter]:
    """A function's parameters with their annotations evaluated (Typer needs the real types)."""
    return list(inspect.signature(function, eval_str=True).parameters.values())


def with_signature(function: Any, parameters: list[inspect.Parameter]) -> Any:
    """``function(**values)`` with ``parameters`` as the signature Typer reads its options from."""
    names = [parameter.name for parameter in parameters]
    clash = {name for name in names if names.count(name) > 1}
    assert not clash, f"{function.__name__}: options declared twice: {sorted(clash)}"
    function.__signature__ = inspect.Signature(parameters)
    function.__annotations__ = {parameter.name: parameter.annotation for parameter in parameters}
    return function


def setting_overrides(values: Mapping[str, Any], *, exclude: tuple[str, ...] = ()) -> dict[str, Any]:
    """The dotted settings of the setting flags given (a None or absent value is not given);
    ``exclude`` names settings the command has no flag for (its own option may share the name)."""
    overrides: dict[str, Any] = {}
    for key in setting_keys():
        if key in exclude:
            continue
        value = values.get(parameter_name(key))
        if value is None:
            continue
        if typing.get_origin(unwrap_optional(_hint(key))[0]) is tuple:
            value = parse_epochs(flag_for(key), value)
        overrides[key] = value
        for other in ALSO_SETS.get(key, ()):
            overrides[other] = value
    return overrides


def parse_epochs(flag: str, text: str) -> tuple[int, ...]:
    """A comma-separated list of epochs such as ``60,120,160``."""
    from resnet_cifar.errors import UsageError

    try:
        return tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise UsageError(f"{flag} must be comma-separated epochs such as 60,120,160, got {text!r}") from None


# --- options shared by several commands -----------------------------------------------------------

JsonOption = Annotated[bool, typer.Option("--json", help="Print one JSON object with the result on stdout.")]
NoCacheOption = Annotated[bool, typer.Option("--no-cache", help="Decode image folders without the decoded cache.")]
# eval, predict and report: the trained model's side.
CheckpointArgument = Annotated[
    Path,
    typer.Argument(
        help="A checkpoint written by `resnet-cifar train` ({checkpointer.BEST} or {checkpointer.LAST}).",
        show_default=False,
    ),
]
# train's --device has the same help, the config field's.
DeviceOption = Annotated[str, typer.Option("--device", help=_field("precision.device").metadata["help"])]
TtaOption = Annotated[bool, typer.Option("--tta", help="Average the logits with those of the mirrored image.")]
CheckpointDataDirOption = Annotated[
    Optional[Path],
    typer.Option("--data-dir", help="CIFAR-10 folder. Default: the folder the checkpoint was trained on.", show_default=False),
]
EvalBatchSizeOption = Annotated[
    Optional[int],
    typer.Option("--batch-size", help="Images per batch. Default: the checkpoint's eval batch size.", show_default=False),
]
# Options of train and sweep that are not settings.
ConfigOption = Annotated[
    Optional[Path],
    typer.Option("--config", help="TOML or YAML file of settings; flags override it.", show_default=False),
]
ScaleLrOption = Annotated[
    bool,
    typer.Option(
        "--scale-lr",
        help="Take --lr as the rate for one process's batch and scale it to the global batch under torchrun "
        "(without --lr the preset's rate is scaled anyway).",
    ),
]


def run_options(
    config: ConfigOption = None,
    scale_lr: ScaleLrOption = False,
    no_cache: NoCacheOption = False,
    json_output: JsonOption = False,
) -> None:
    """The options of `train` and `sweep` that are not settings (for ``parameters_of``)."""


def resolve_run_config(
    values: Mapping[str, Any],
    *,
    defaults: Mapping[str, Any],
    world_size: int = 1,
    under: Mapping[str, Any] | None = None,
    exclude: tuple[str, ...] = (),
) -> TrainConfig:
    """The run's config from a command's option values: defaults < preset < --config < ``under``
    (a resumed checkpoint's settings) < the flags given. ``--scale-lr`` takes a given --lr as the
    rate for one process's batch, so the scaling rule takes it to the global batch."""
    from resnet_cifar.errors import UsageError

    data_dir = values.get(parameter_name("data.data_dir"))
    if data_dir is not None and not Path(data_dir).is_dir():
        raise UsageError(f"{data_dir}: no such folder")
    overrides = {**(under or {}), **setting_overrides(values, exclude=exclude)}
    lr_per_process = bool(values.get("scale_lr")) and values.get(parameter_name("optim.lr")) is not None
    cfg = resolve_config(
        file=values.get("config"), overrides=overrides, defaults=defaults, world_size=world_size, lr_per_process=lr_per_process
    )
    if values.get("no_cache"):
        cfg = replace(cfg, data=replace(cfg.data, cache_dir=None))
    return cfg


def run_defaults(environ: Mapping[str, str]) -> dict[str, Any]:
    """The settings the environment provides: the default data folder and the decoded cache."""
    from resnet_cifar.data.download import default_data_dir

    return {"data.data_dir": default_data_dir(environ), "data.cache_dir": cache_dir_from_env(environ)}


def resolve_data(cfg: TrainConfig, output: Output, *, first: AbstractContextManager[Any] | None = None) -> TrainConfig:
    """``cfg`` with its data folder resolved: the default folder is downloaded into when empty (by
    the main process first under torchrun), any other folder must exist."""
    from resnet_cifar.data.download import default_data_dir, resolve_data_dir

    named = None if cfg.data.data_dir == default_data_dir(os.environ) else cfg.data.data_dir
    with first if first is not None else nullcontext(), interrupted_by_sigterm(), download_progress(output) as on_progress:
        resolved_dir = resolve_data_dir(named, os.environ, on_progress=on_progress)
    return cfg if resolved_dir == cfg.data.data_dir else replace(cfg, data=replace(cfg.data, data_dir=resolved_dir))
