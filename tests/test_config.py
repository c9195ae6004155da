"""Configuration: validation with flag-named messages, layering, config files, serialization."""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any

import pytest
import torch

from resnet_cifar.config import (
    METRIC_MODES,
    PRESETS,
    PRETRAINED_NAMES,
    SECTIONS,
    DataConfig,
    EarlyStoppingConfig,
    ModelConfig,
    OptimConfig,
    PrecisionConfig,
    RunConfig,
    TrainConfig,
    flag_for,
    read_config_file,
    resolve_config,
    save_config,
)
from resnet_cifar.errors import ResnetCifarError, UsageError
from resnet_cifar.models import PRETRAINED_FILES


@pytest.fixture()
def data_dir(tmp_path: Path) -> Path:
    folder = tmp_path / "cifar"
    folder.mkdir()
    return folder


def resolve(data_dir: Path, **kwargs: Any) -> TrainConfig:
    overrides = {"data.data_dir": data_dir, **kwargs.pop("overrides", {})}
    return resolve_config(overrides=overrides, **kwargs)


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def non_default_config(data_dir: Path, tmp_path: Path) -> TrainConfig:
    """A config that differs from the defaults in every section, with None, tuple and Path values."""
    return TrainConfig(
        data=DataConfig(data_dir=data_dir, batch_size=128, limit_train=1000, cache_dir=tmp_path / "cache", cutout=8),
        model=ModelConfig(
            stem="imagenet", dropout=0.2, pretrained="imagenet1k-v1", image_size=64, freeze_backbone=True
        ),
        optim=OptimConfig(
            optimizer="adamw",
            lr=1e-3,
            weight_decay=0.05,
            schedule="multistep",
            milestones=(10, 20),
            epochs=25,
            warmup_epochs=0.5,
            grad_clip=None,
            ema=True,
            ema_decay=0.99,
        ),
        precision=PrecisionConfig(device="cpu", amp=True, amp_dtype="fp16", channels_last=False, deterministic=True),
        early_stopping=EarlyStoppingConfig(monitor="val_loss", patience=3, min_delta=0.001),
        run=RunConfig(out_dir=tmp_path / "out", seed=7, resume=None, preset="long"),
    )


# --- defaults and validation ---------------------------------------------------------------------


def test_every_section_is_valid_with_its_defaults(data_dir: Path) -> None:
    cfg = TrainConfig(data=DataConfig(data_dir=data_dir))
    # The one cross-section default: a learning rate not given is lr_base at the batch size (512: 0.4).
    assert cfg.model == ModelConfig() and cfg.optim == OptimConfig(lr=0.4) and cfg.run == RunConfig()
    assert OptimConfig().lr is None and cfg.optim.lr == 0.4
    assert cfg.model.depth == 50 and cfg.model.stem == "cifar"
    assert cfg.early_stopping.patience is None and METRIC_MODES[cfg.early_stopping.monitor] == "max"
    assert METRIC_MODES[EarlyStoppingConfig(monitor="val_loss").monitor] == "min"


@pytest.mark.parametrize(
    ("section", "kwargs", "message"),
    [
        (DataConfig, {"batch_size": 0}, "--batch-size must be positive, got 0"),
        (DataConfig, {"eval_batch_size": -1}, "--eval-batch-size must be positive, got -1"),
        (DataConfig, {"val_fraction": 1.0}, "--val-fraction must be in (0, 1), got 1"),
        (DataConfig, {"loader": "ffcv"}, "--loader must be one of auto, tensor, dali, got 'ffcv'"),
        (DataConfig, {"limit_val": 0}, "--limit-val must be positive, got 0"),
        (DataConfig, {"limit_test": -1}, "--limit-test must be positive, got -1"),
        (DataConfig, {"limit_train": 100}, "--limit-train 100 is smaller than --batch-size 512"),
        (DataConfig, {"cutout": 33}, "--cutout must be a square side in [0, 32] pixels, got 33"),
        (DataConfig, {"cutout": -1}, "--cutout must be a square side in [0, 32] pixels, got -1"),
        (DataConfig, {"seed": -1}, "--seed must be in [0, 2**32), got -1"),
        (ModelConfig, {"depth": 20}, "--depth must be one of 18, 34, 50, 101, 152, got 20"),
        (ModelConfig, {"stem": "tiny"}, "--stem must be one of cifar, imagenet, got 'tiny'"),
        (ModelConfig, {"dropout": 1.0}, "--dropout must be in [0, 1), got 1"),
        (ModelConfig, {"dropout": -0.1}, "--dropout must be in [0, 1), got -0.1"),
        (ModelConfig, {"image_size": 16}, "--image-size must be at least 32, got 16"),
        (ModelConfig, {"backbone_lr_mult": 0}, "--backbone-lr-mult must be positive, got 0"),
        (ModelConfig, {"pretrained": " "}, "--pretrained must be imagenet1k-v1, imagenet1k-v2 or a weights file"),
        (ModelConfig, {"pretrained": "imagenet1k-v2"}, "--pretrained imagenet1k-v2 has ImageNet's 7x7 conv1"),
        (
            ModelConfig,
            {"pretrained": "imagenet1k-v1", "depth": 18, "stem": "imagenet"},
            "--pretrained imagenet1k-v1 holds ResNet-50 weights, so it needs --depth 50, got 18",
        ),
        (OptimConfig, {"lr": 0}, "--lr must be positive, got 0"),
        (OptimConfig, {"lr": -0.1}, "--lr must be positive, got -0.1"),
        (OptimConfig, {"lr": float("nan")}, "--lr must be a finite number, got nan"),
        (OptimConfig, {"optimizer": "rmsprop"}, "--optimizer must be one of sgd, adam, adamw, got 'rmsprop'"),
        (OptimConfig, {"momentum": 1.0}, "--momentum must be in [0, 1), got 1"),
        (OptimConfig, {"momentum": 0.0}, "--nesterov needs a positive --momentum"),
        (OptimConfig, {"weight_decay": -1e-4}, "--weight-decay must be at least 0, got -0.0001"),
        (OptimConfig, {"schedule": "poly"}, "--schedule must be one of constant, step, multistep, cosine, onecycle"),
        (OptimConfig, {"epochs": 0, "warmup_epochs": 0}, "--epochs must be positive, got 0"),
        (OptimConfig, {"warmup_epochs": 30}, "--warmup-epochs must be in [0, --epochs 30), got 30"),
        (OptimConfig, {"warmup_epochs": -1}, "--warmup-epochs must be in [0, --epochs 30), got -1"),
        (OptimConfig, {"warmup_epochs": 0}, "--warmup-epochs must be positive with --schedule onecycle"),
        (OptimConfig, {"schedule": "step", "step_size": 0}, "--step-size must be a positive number of epochs, got 0"),
        (OptimConfig, {"gamma": 0}, "--gamma must be in (0, 1], got 0"),
        (OptimConfig, {"gamma": 1.5}, "--gamma must be in (0, 1], got 1.5"),
        (OptimConfig, {"milestones": (10,)}, "--milestones only applies to --schedule multistep, not onecycle"),
        (OptimConfig, {"schedule": "multistep"}, "--schedule multistep needs --milestones"),
        (OptimConfig, {"schedule": "multistep", "milestones": (20, 10)}, "--milestones must be increasing epochs"),
        (OptimConfig, {"schedule": "multistep", "milestones": (10, 30)}, "in [1, --epochs 30), got 10, 30"),
        (
            OptimConfig,
            {"schedule": "multistep", "milestones": (2, 5), "warmup_epochs": 2},
            "--milestones must come after --warmup-epochs 2, got 2, 5",
        ),
        (
            OptimConfig,
            {"schedule": "step", "step_size": 5, "warmup_epochs": 5},
            "--step-size 5 must be longer than --warmup-epochs 5",
        ),
        (OptimConfig, {"min_lr_ratio": 1.5}, "--min-lr-ratio must be in [0, 1], got 1.5"),
        (OptimConfig, {"label_smoothing": 1.0}, "--label-smoothing must be in [0, 1), got 1"),
        (OptimConfig, {"grad_clip": 0.0}, "--grad-clip must be positive"),
        (OptimConfig, {"ema_decay": 1.0}, "--ema-decay must be in (0, 1), got 1"),
        (PrecisionConfig, {"device": "tpu"}, "--device must be one of auto, cpu, cuda, got 'tpu'"),
        (PrecisionConfig, {"amp_dtype": "fp8"}, "--amp-dtype must be one of bf16, fp16, got 'fp8'"),
        (EarlyStoppingConfig, {"monitor": "acc"}, "--monitor must be one of val_acc, val_loss, got 'acc'"),
        (EarlyStoppingConfig, {"patience": -1}, "--patience must be at least 0"),
        (EarlyStoppingConfig, {"min_delta": -0.01}, "--min-delta must be at least 0, got -0.01"),
        (RunConfig, {"seed": 2**32}, "--seed must be in [0, 2**32), got 4294967296"),
        (RunConfig, {"preset": "turbo"}, "--preset must be one of default, fast, long, smoke, finetune, got 'turbo'"),
        # Wrong types name the flag too.
        (OptimConfig, {"lr": "fast"}, "--lr must be a number, got 'fast'"),
        (OptimConfig, {"lr": True}, "--lr must be a number, got True"),
        (DataConfig, {"batch_size": 512.5}, "--batch-size must be an integer, got 512.5"),
        (DataConfig, {"batch_size": "512"}, "--batch-size must be an integer, got '512'"),
        (DataConfig, {"flip": "yes"}, "--flip must be true or false, got 'yes'"),
        (ModelConfig, {"sync_bn": 1}, "--sync-bn must be true or false, got 1"),
        (ModelConfig, {"sync_bn": True, "freeze_backbone": True}, "--sync-bn has no effect with --freeze-backbone"),
        (OptimConfig, {"nesterov": "yes"}, "--nesterov must be true or false, got 'yes'"),
        (OptimConfig, {"schedule": "multistep", "milestones": "10,20"}, "--milestones must be a list, got '10,20'"),
        (OptimConfig, {"schedule": "multistep", "milestones": [10, "x"]}, "--milestones must be an integer, got 'x'"),
        (OptimConfig, {"optimizer": 1}, "--optimizer must be a string, got 1"),
        (RunConfig, {"out_dir": 3}, "--out must be a path, got 3"),
        (RunConfig, {"out_dir": ""}, "--out must be a path, got ''"),
    ],
)
def test_invalid_values_raise_a_one_line_usage_error_naming_the_flag(
    section: type, kwargs: dict[str, Any], message: str, data_dir: Path
) -> None:
    if section is DataConfig:
        kwargs = {"data_dir": data_dir, **kwargs}
    with pytest.raises(UsageError) as caught:
        section(**kwargs)
    text = str(caught.value)
    assert message in text
    assert "\n" not in text
    assert caught.value.exit_code == 2


def test_values_are_normalized_to_the_annotated_types(data_dir: Path) -> None:
    data = DataConfig(data_dir=str(data_dir), cache_dir="~/decoded")  # type: ignore[arg-type]
    assert data.data_dir == data_dir and isinstance(data.data_dir, Path)
    assert data.cache_dir == Path.home() / "decoded"
    milestones: Any = [5, 8]
    optim = OptimConfig(lr=1, schedule="multistep", milestones=milestones, epochs=10, warmup_epochs=0)
    assert optim.lr == 1.0 and isinstance(optim.lr, float)
    assert optim.milestones == (5, 8) and isinstance(optim.milestones, tuple)
    assert isinstance(optim.warmup_epochs, float)


def test_configs_are_frozen_and_replace_revalidates(data_dir: Path) -> None:
    cfg = TrainConfig(data=DataConfig(data_dir=data_dir))
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.optim.lr = 1.0  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.data = DataConfig(data_dir=data_dir)  # type: ignore[misc]
    with pytest.raises(UsageError, match="--lr must be positive"):
        dataclasses.replace(cfg.optim, lr=-1.0)


def test_train_config_refuses_a_section_of_the_wrong_type(data_dir: Path) -> None:
    with pytest.raises(UsageError, match="TrainConfig.optim must be a OptimConfig, got dict"):
        TrainConfig(data=DataConfig(data_dir=data_dir), optim={"lr": 0.1})  # type: ignore[arg-type]


def test_pretrained_imagenet_weights_fit_the_cifar_stem_only_with_a_fresh_conv1() -> None:
    assert ModelConfig(pretrained="imagenet1k-v2", reinit_conv1=True).stem == "cifar"
    assert ModelConfig(pretrained="imagenet1k-v2", stem="imagenet").pretrained == "imagenet1k-v2"
    # A file is only checked when it is loaded (load_pretrained reports a conv1 mismatch itself).
    assert ModelConfig(pretrained="weights/resnet18.pth", depth=18).pretrained == "weights/resnet18.pth"


def test_pretrained_names_match_the_loader() -> None:
    assert PRETRAINED_NAMES == tuple(PRETRAINED_FILES)


@pytest.mark.parametrize(
    ("precision", "device", "bf16", "amp", "channels_last"),
    [
        (PrecisionConfig(), "cuda", True, True, True),
        (PrecisionConfig(), "cuda", False, False, True),  # auto never falls back to fp16 by itself
        (PrecisionConfig(amp_dtype="fp16"), "cuda", False, True, True),
        (PrecisionConfig(), "cpu", True, False, False),
        (PrecisionConfig(amp=True), "cpu", True, True, True),  # bf16 autocast on the CPU is fastest in NHWC
        (PrecisionConfig(amp=True, amp_dtype="fp16"), "cpu", True, True, False),
        (PrecisionConfig(amp=True, channels_last=False), "cpu", True, True, False),
        (PrecisionConfig(amp=True, channels_last=True), "cpu", True, True, True),
        (PrecisionConfig(amp=False, channels_last=False), "cuda", True, False, False),
    ],
)
def test_auto_amp_and_channels_last_follow_the_device(
    precision: PrecisionConfig, device: str, bf16: bool, amp: bool, channels_last: bool
) -> None:
    assert precision.use_amp(device, bf16_supported=bf16) is amp
    assert precision.use_channels_last(device, amp=amp) is channels_last


def test_distributed_settings_default_off_and_round_trip_through_a_file(data_dir: Path, tmp_path: Path) -> None:
    cfg = resolve(data_dir)
    assert cfg.model.sync_bn is False
    config = write(tmp_path / "ddp.toml", "[model]\nsync_bn = true\n[optim]\nlr_base = 0.2\nlr_base_batch_size = 256\n")
    from_file = resolve(data_dir, file=config)
    assert from_file.model.sync_bn is True and from_file.optim.lr == pytest.approx(0.4)  # 0.2 x 512/256
    saved = save_config(from_file, tmp_path / "saved.toml")
    assert resolve_config(file=saved) == from_file


def test_every_setting_has_a_distinct_flag() -> None:
    keys = [f"{name}.{item.name}" for name, cls in SECTIONS.items() for item in dataclasses.fields(cls)]
    # --seed sets the data's seed together with the run's; every other setting has its own flag.
    flags = [flag_for(key) for key in keys if key != "data.seed"]
    assert len(set(flags)) == len(flags) and flag_for("data.seed") == flag_for("run.seed") == "--seed"
    assert flag_for("optim.lr") == "--lr" and flag_for("run.out_dir") == "--out"
    assert flag_for("data.batch_size") == "--batch-size"


# --- presets -------------------------------------------------------------------------------------


def test_presets_only_name_known_settings_and_resolve_to_valid_configs(data_dir: Path) -> None:
    for name, preset in PRESETS.items():
        cfg = resolve(data_dir, preset=name)
        assert cfg.run.preset == name
        for section, entries in preset.items():
            for key, value in entries.items():
                assert getattr(getattr(cfg, section), key) == value, (name, section, key)


def test_a_preset_value_for_a_field_that_may_be_none_can_never_be_nulled(data_dir: Path, tmp_path: Path) -> None:
    # TOML has no null: a saved config leaves None fields out, so a preset value there would win on
    # reload. Presets state rates and warm-ups as lr_base and warmup_fraction; where one must set a
    # field that may be None (finetune's weights and image size), a null for it is refused, so the
    # resolved value is never None and the saved config round-trips.
    defaults_none = {
        f"{name}.{item.name}"
        for name, cls in SECTIONS.items()
        for item in dataclasses.fields(cls)
        if "None" in str(item.type)
    }
    assert {"optim.lr", "optim.warmup_epochs"} <= defaults_none
    set_by_presets = [
        (name, section, key)
        for name, preset in PRESETS.items()
        for section, entries in preset.items()
        for key in entries
        if f"{section}.{key}" in defaults_none
    ]
    assert ("finetune", "model", "pretrained") in set_by_presets  # the check below looks at something
    for name, section, key in set_by_presets:
        assert key not in ("lr", "warmup_epochs"), (name, key)  # those follow the batch and the epochs
        config = write(tmp_path / f"{name}-{key}.yaml", f"{section}:\n  {key}: null\n")
        with pytest.raises(UsageError) as caught:
            resolve(data_dir, preset=name, file=config)
        message = str(caught.value)
        assert f"{flag_for(f'{section}.{key}')} cannot be null with --preset {name}" in message
        assert str(config) in message and "\n" not in message


def test_default_recipe_meets_the_issue_constraints(data_dir: Path) -> None:
    cfg = resolve(data_dir)
    assert cfg.run.preset == "default"
    assert (cfg.model.depth, cfg.model.stem, cfg.model.pretrained) == (50, "cifar", None)
    assert cfg.optim.epochs <= 30 and cfg.data.batch_size == 512
    assert cfg.optim.optimizer == "sgd" and cfg.optim.nesterov and cfg.optim.label_smoothing > 0
    long = resolve(data_dir, preset="long")
    assert long.data.cutout > 0 and long.optim.epochs > cfg.optim.epochs
    assert long.model.pretrained is None


def test_unknown_preset_lists_the_known_ones(data_dir: Path) -> None:
    with pytest.raises(UsageError, match="--preset must be one of default, fast, long, smoke, finetune, got 'turbo'"):
        resolve(data_dir, preset="turbo")


# --- layering ------------------------------------------------------------------------------------


def test_each_layer_overrides_the_one_below(data_dir: Path, tmp_path: Path) -> None:
    assert OptimConfig().epochs == 30  # dataclass default
    assert resolve(data_dir, preset="long").optim.epochs == 200  # preset beats default
    config = write(tmp_path / "run.toml", "[optim]\nepochs = 50\n[data]\ncutout = 4\n")
    from_file = resolve(data_dir, preset="long", file=config)
    assert from_file.optim.epochs == 50  # file beats preset
    assert from_file.optim.schedule == "cosine"  # untouched preset values stay
    assert from_file.data.cutout == 4
    flags = resolve(data_dir, preset="long", file=config, overrides={"optim.epochs": 7})
    assert flags.optim.epochs == 7  # flags beat the file
    assert flags.data.cutout == 4


def test_defaults_argument_sits_below_the_preset(tmp_path: Path, data_dir: Path) -> None:
    env_default = tmp_path / "env-data"
    cfg = resolve_config(defaults={"data.data_dir": env_default, "data.batch_size": 32})
    assert cfg.data.data_dir == env_default and cfg.data.batch_size == 32  # the default preset sets nothing
    cfg = resolve_config(preset="smoke", defaults={"data.data_dir": env_default, "data.batch_size": 32})
    assert cfg.data.batch_size == 64  # the smoke preset sets it, above `defaults`
    cfg = resolve_config(defaults={"data.data_dir": env_default}, overrides={"data.data_dir": data_dir})
    assert cfg.data.data_dir == data_dir


def test_missing_data_dir_names_the_flag() -> None:
    with pytest.raises(UsageError, match=r"--data-dir is required \(or data_dir in the \[data\] section\)"):
        resolve_config()


def test_overrides_take_dotted_or_sectioned_names_and_ignore_none(data_dir: Path) -> None:
    cfg = resolve(
        data_dir,
        overrides={"optim.lr": 0.1, "model": {"depth": 18}, "early_stopping.patience": None, "data.batch_size": None},
    )
    assert cfg.optim.lr == 0.1 and cfg.model.depth == 18
    assert cfg.early_stopping.patience is None and cfg.data.batch_size == 512


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"optim.lrate": 0.1}, "unknown key optim.lrate (did you mean lr_base?)"),
        ({"optimizer.lr": 0.1}, "unknown section [optimizer] (did you mean optim?)"),
        ({"lr": 0.1}, "must be a dotted name such as 'optim.lr'"),
        ({"data.lr": 0.1}, "unknown key data.lr: lr belongs in [optim]"),
    ],
)
def test_unknown_override_names_are_refused(data_dir: Path, overrides: dict[str, Any], message: str) -> None:
    with pytest.raises(UsageError) as caught:
        resolve(data_dir, overrides=overrides)
    assert message in str(caught.value)


def test_preset_named_in_the_file_applies_unless_one_is_given(data_dir: Path, tmp_path: Path) -> None:
    config = write(tmp_path / "run.toml", '[run]\npreset = "long"\n[optim]\nlr = 0.2\n')
    from_file = resolve(data_dir, file=config)
    assert from_file.run.preset == "long" and from_file.optim.epochs == 200 and from_file.optim.lr == 0.2
    given = resolve(data_dir, file=config, preset="smoke")
    assert given.run.preset == "smoke" and given.model.depth == 18 and given.optim.lr == 0.2
    as_override = resolve(data_dir, file=config, overrides={"run.preset": "smoke"})
    assert as_override.run.preset == "smoke"
    bad = write(tmp_path / "bad.toml", '[run]\npreset = "turbo"\n')
    with pytest.raises(UsageError, match=r"got 'turbo' \(run.preset in .*bad.toml\)"):
        resolve(data_dir, file=bad)


# --- config files --------------------------------------------------------------------------------

TOML_TEXT = """
[data]
batch_size = 256
cutout = 16
[model]
depth = 18
dropout = 0.1
[optim]
optimizer = "sgd"
lr = 0.2
weight_decay = 5e-4
schedule = "multistep"
milestones = [10, 20]
epochs = 25
warmup_epochs = 1
[precision]
device = "cpu"
amp = false
[early_stopping]
monitor = "val_loss"
patience = 4
[run]
out_dir = "runs/a"
seed = 3
"""

YAML_TEXT = """
data:
  batch_size: 256
  cutout: 16
model:
  depth: 18
  dropout: 0.1
optim:
  optimizer: sgd
  lr: 0.2
  weight_decay: 5e-4   # YAML 1.1 would read this as a string; the loader reads a float
  schedule: multistep
  milestones: [10, 20]
  epochs: 25
  warmup_epochs: 1
precision:
  device: cpu
  amp: false
early_stopping:
  monitor: val_loss
  patience: 4
run:
  out_dir: runs/a
  seed: 3
"""


@pytest.mark.parametrize("suffix", [".yaml", ".yml"])
def test_toml_and_yaml_files_give_the_same_config(data_dir: Path, tmp_path: Path, suffix: str) -> None:
    from_toml = resolve(data_dir, file=write(tmp_path / "run.toml", TOML_TEXT))
    from_yaml = resolve(data_dir, file=write(tmp_path / f"run{suffix}", YAML_TEXT))
    assert from_toml == from_yaml
    assert from_toml.optim.milestones == (10, 20) and from_toml.optim.weight_decay == 5e-4
    assert from_toml.run.out_dir == Path("runs/a") and from_toml.precision.amp is False
    assert from_toml.early_stopping.patience == 4 and from_toml.model.depth == 18


def test_empty_yaml_file_and_sections_mean_no_settings(data_dir: Path, tmp_path: Path) -> None:
    assert resolve(data_dir, file=write(tmp_path / "empty.yaml", "")) == resolve(data_dir)
    assert resolve(data_dir, file=write(tmp_path / "sections.yaml", "optim:\nmodel:\n")) == resolve(data_dir)


@pytest.mark.parametrize(
    ("name", "text", "message"),
    [
        ("a.toml", "[optimizer]\nlr = 0.1\n", "unknown section [optimizer] (did you mean optim?)"),
        ("a.toml", "[optim]\nlearning_rate = 0.1\n", "unknown key optim.learning_rate"),
        ("a.toml", "[data]\nlr = 0.1\n", "unknown key data.lr: lr belongs in [optim]"),
        ("a.toml", "lr = 0.1\n", "'lr' is not a section: settings go in a section, here [optim]"),
        ("a.yaml", "optim:\n  momentm: 0.9\n", "unknown key optim.momentm (did you mean momentum?)"),
        ("a.yaml", "- 1\n- 2\n", "a config file must hold sections ([data], [model], ...), got list"),
        ("a.yaml", "optim: 3\n", "[optim] must be a table of settings, got 3"),
        ("a.toml", "[optim\nlr = 0.1\n", "invalid TOML:"),
        ("a.yaml", "optim:\n  lr: [0.1\n", "invalid YAML:"),
        ("a.json", "{}", "a config file must end in .toml, .yaml, .yml"),
    ],
)
def test_bad_config_files_give_one_line_naming_the_file(
    data_dir: Path, tmp_path: Path, name: str, text: str, message: str
) -> None:
    path = write(tmp_path / name, text)
    with pytest.raises(UsageError) as caught:
        resolve(data_dir, file=path)
    error = str(caught.value)
    assert error.startswith(f"{path}: ") and message in error
    assert "\n" not in error


def test_missing_unreadable_and_non_utf8_files(data_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(UsageError, match=r"nope.toml: no such config file$"):
        resolve(data_dir, file=tmp_path / "nope.toml")
    folder = tmp_path / "folder.toml"
    folder.mkdir()
    with pytest.raises(UsageError, match="folder.toml: is a folder, not a config file"):
        resolve(data_dir, file=folder)
    latin1 = tmp_path / "latin1.toml"
    latin1.write_bytes('[run]\nout_dir = "caf\xe9"\n'.encode("latin-1"))
    with pytest.raises(UsageError, match="latin1.toml: a config file must be UTF-8 text"):
        resolve(data_dir, file=latin1)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('[optim]\nlr = "fast"\n', "--lr must be a number, got 'fast' (optim.lr in {path})"),
        ("[data]\nbatch_size = 512.0\n", "--batch-size must be an integer, got 512.0 (data.batch_size in {path})"),
        ('[precision]\namp = "yes"\n', "--amp must be true or false, got 'yes' (precision.amp in {path})"),
        ("[optim]\nlr = -0.1\n", "--lr must be positive, got -0.1 (optim.lr in {path})"),
        (
            "[run]\nout_dir = 1979-05-27\n",
            "--out must be a path, got datetime.date(1979, 5, 27) (run.out_dir in {path})",
        ),
    ],
)
def test_wrong_types_and_values_in_a_file_name_flag_key_and_file(
    data_dir: Path, tmp_path: Path, text: str, message: str
) -> None:
    path = write(tmp_path / "run.toml", text)
    with pytest.raises(UsageError) as caught:
        resolve(data_dir, file=path)
    assert str(caught.value) == message.format(path=path)


def test_a_value_from_the_command_line_does_not_blame_the_file(data_dir: Path, tmp_path: Path) -> None:
    path = write(tmp_path / "run.toml", "[optim]\nlr = -0.1\n")
    with pytest.raises(UsageError) as caught:
        resolve(data_dir, file=path, overrides={"optim.lr": 0.0})
    assert str(caught.value) == "--lr must be positive, got 0"


def test_read_config_file_returns_the_sections(tmp_path: Path) -> None:
    sections = read_config_file(write(tmp_path / "a.toml", "[optim]\nlr = 0.1\n[run]\nseed = 2\n"))
    assert sections == {"optim": {"lr": 0.1}, "run": {"seed": 2}}


# --- serialization -------------------------------------------------------------------------------


def assert_plain(value: Any) -> None:
    if isinstance(value, dict):
        for key, item in value.items():
            assert isinstance(key, str)
            assert_plain(item)
    elif isinstance(value, list):
        for item in value:
            assert_plain(item)
    else:
        assert value is None or type(value) in (str, int, float, bool), repr(value)


def test_to_dict_is_plain_and_from_dict_inverts_it(data_dir: Path, tmp_path: Path) -> None:
    cfg = non_default_config(data_dir, tmp_path)
    values = cfg.to_dict()
    assert_plain(values)
    assert values["optim"]["milestones"] == [10, 20] and values["run"]["resume"] is None
    assert values["data"]["cache_dir"] == str(tmp_path / "cache")
    assert TrainConfig.from_dict(values) == cfg
    assert TrainConfig.from_dict(json.loads(json.dumps(values))) == cfg


def test_from_dict_fills_missing_keys_and_refuses_unknown_ones(data_dir: Path) -> None:
    cfg = TrainConfig.from_dict({"data": {"data_dir": str(data_dir)}})
    assert cfg == TrainConfig(data=DataConfig(data_dir=data_dir))
    with pytest.raises(UsageError, match="unknown key optim.warmup"):
        TrainConfig.from_dict({"data": {"data_dir": str(data_dir)}, "optim": {"warmup": 1}})
    with pytest.raises(UsageError, match=r"unknown section \[trainer\]"):
        TrainConfig.from_dict({"data": {"data_dir": str(data_dir)}, "trainer": {}})


def test_config_dict_survives_a_weights_only_checkpoint(data_dir: Path, tmp_path: Path) -> None:
    cfg = non_default_config(data_dir, tmp_path)
    checkpoint = tmp_path / "ckpt.pt"
    torch.save({"config": cfg.to_dict(), "epoch": 3}, checkpoint)
    loaded = torch.load(checkpoint, weights_only=True)
    assert loaded["config"] == cfg.to_dict()
    assert TrainConfig.from_dict(loaded["config"]) == cfg


@pytest.mark.parametrize("suffix", [".toml", ".yaml", ".yml"])
def test_saved_config_resolves_back_to_the_same_config(data_dir: Path, tmp_path: Path, suffix: str) -> None:
    cfg = non_default_config(data_dir, tmp_path)
    path = save_config(cfg, tmp_path / "run" / f"config{suffix}")
    assert path.is_file() and oct(path.stat().st_mode & 0o777) == oct(0o644)
    assert resolve_config(file=path) == cfg
    # The CLI adds its flags on top: the saved run is the base.
    assert resolve_config(file=path, overrides={"optim.epochs": 40}) == dataclasses.replace(
        cfg, optim=dataclasses.replace(cfg.optim, epochs=40)
    )
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temp file left


def test_saved_toml_leaves_none_out_and_every_preset_round_trips(data_dir: Path, tmp_path: Path) -> None:
    for name in PRESETS:
        cfg = resolve(data_dir, preset=name)
        path = save_config(cfg, tmp_path / f"{name}.toml")
        text = path.read_text(encoding="utf-8")
        assert "resume" not in text and "limit_train" not in text and "null" not in text
        assert resolve_config(file=path) == cfg


def test_saved_yaml_keeps_none_as_null(data_dir: Path, tmp_path: Path) -> None:
    path = save_config(resolve(data_dir), tmp_path / "config.yaml")
    assert "resume: null" in path.read_text(encoding="utf-8")


def test_a_failed_save_keeps_the_previous_file(data_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = save_config(resolve(data_dir), tmp_path / "config.toml")
    before = path.read_bytes()

    def broken_replace(source: Any, target: Any) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", broken_replace)
    with pytest.raises(ResnetCifarError, match=r"config.toml: cannot write \(No space left on device\)") as caught:
        save_config(resolve(data_dir, preset="long"), path)
    assert not isinstance(caught.value, UsageError)  # a full disk is a failed run (exit 1), not bad usage
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cifar", "config.toml"]  # no temp file left


def test_save_refuses_an_unknown_suffix(data_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="config.json: a config file must end in .toml, .yaml, .yml"):
        save_config(resolve(data_dir), tmp_path / "config.json")
    assert not (tmp_path / "config.json").exists()
