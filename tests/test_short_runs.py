"""Every preset trains for any --epochs, the warm-up keeps the preset's shape, a saved config replays
the same schedule, --help shows what a run will use, and curves have integer epoch ticks."""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path

import pytest

from resnet_cifar.config import PRESETS, TrainConfig, read_config_file, resolve_config
from resnet_cifar.engine.trainer import FitResult, StepFinished, build_trainer
from resnet_cifar.evaluation.plots import training_curves_figure

from helpers import run_in_process

# 32 training images in batches of 8: 4 steps an epoch, enough for one-cycle's two phases.
# ResNet-18 with the ImageNet stem (32 px shrinks to 8 px at once): these tests are about schedules.
SMALL_SETTINGS = {
    "model.depth": 18,
    "model.stem": "imagenet",
    "data.batch_size": 8,
    "data.eval_batch_size": 64,
    "data.limit_train": 32,
    "data.limit_val": 32,
    "data.limit_test": 32,
    "precision.device": "cpu",
}
# The same, as `train` flags.
SMALL_FLAGS = ["--depth", "18", "--stem", "imagenet", "--device", "cpu", "--batch-size", "8", "--limit-train", "32",
               "--limit-val", "32", "--limit-test", "32"]  # fmt: skip


def small_overrides(real_data_root: Path, cache: Path, out: Path, **more: object):
    return dict(SMALL_SETTINGS, **{"data.data_dir": real_data_root, "data.cache_dir": cache, "run.out_dir": out}, **more)


# finetune needs ResNet-50 and ImageNet weights: tests/test_finetune_recipe.py trains it end to end
# from a stand-in weights file; here its shape is checked for 1 and 2 epochs without training.
TRAINED_HERE = sorted(name for name in PRESETS if name != "finetune")


@pytest.mark.parametrize("epochs", [1, 2])
def test_the_finetune_preset_keeps_its_shape_for_one_and_two_epochs(tmp_path: Path, epochs: int) -> None:
    cfg = resolve_config(preset="finetune", overrides={"data.data_dir": tmp_path, "optim.epochs": epochs})
    assert cfg.optim.warmup_epochs == pytest.approx(cfg.optim.warmup_fraction * epochs)
    assert 0 < cfg.optim.warmup_epochs < epochs


def step_lrs(cfg: TrainConfig) -> tuple[FitResult, list[float]]:
    """Train ``cfg``: its result and the rate of each step, in order."""
    lrs: list[float] = []
    trainer = build_trainer(cfg, on_event=lambda event: lrs.append(event.lr) if isinstance(event, StepFinished) else None)
    return trainer.fit(), lrs


@pytest.fixture(scope="module")
def preset_run(
    real_data_root: Path, decoded_cache_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Callable[[str, int], tuple[TrainConfig, FitResult, list[float]]]:
    """``preset_run(preset, epochs)``: SMALL_SETTINGS with ``preset`` for ``epochs`` epochs, trained
    once for the module (a test that needs the same run reads it): its config, result and per-step rates."""
    runs: dict[tuple[str, int], tuple[TrainConfig, FitResult, list[float]]] = {}

    def trained(preset: str, epochs: int) -> tuple[TrainConfig, FitResult, list[float]]:
        if (preset, epochs) not in runs:
            out = tmp_path_factory.mktemp(f"{preset}-{epochs}") / "run"
            overrides = small_overrides(real_data_root, decoded_cache_dir, out, **{"optim.epochs": epochs})
            cfg = resolve_config(preset=preset, overrides=overrides)
            runs[preset, epochs] = (cfg, *step_lrs(cfg))
        return runs[preset, epochs]

    return trained


@pytest.mark.parametrize("epochs", [1, 2])
@pytest.mark.parametrize("preset", TRAINED_HERE)
def test_every_preset_trains_one_and_two_epochs(
    preset_run: Callable[[str, int], tuple[TrainConfig, FitResult, list[float]]], preset: str, epochs: int
) -> None:
    cfg, result, lrs = preset_run(preset, epochs)
    # The preset's warm-up is a share of the run, so it fits any number of epochs.
    assert cfg.optim.warmup_epochs == pytest.approx(cfg.optim.warmup_fraction * epochs)
    assert 0 < cfg.optim.warmup_epochs < epochs
    assert result.epochs_run == epochs and result.interrupted is None
    # Cosine ends at 0 on the last step; every other rate is positive.
    assert len(lrs) == 4 * epochs and all(math.isfinite(lr) and lr >= 0 for lr in lrs) and lrs[0] > 0
    assert len(set(lrs)) > 1  # the schedule moves at every preset's shape, however short the run
    assert result.test_acc is not None and (cfg.run.out_dir / "curves.png").is_file()


def test_warmup_resolves_from_the_fraction_and_records_what_it_used(tmp_path: Path) -> None:
    data = {"data.data_dir": tmp_path}
    cfg = resolve_config(overrides={**data, "optim.epochs": 3})
    assert cfg.optim.warmup_epochs == 0.9 and cfg.optim.warmup_fraction == 0.3  # 30% of 3 epochs
    long = resolve_config(preset="long", overrides={**data, "optim.epochs": 4})
    assert long.optim.warmup_epochs == pytest.approx(0.1)
    given = resolve_config(overrides={**data, "optim.epochs": 10, "optim.warmup_epochs": 2})
    assert given.optim.warmup_epochs == 2 and given.optim.warmup_fraction == 0.2  # the record agrees


def test_explicit_too_long_warmup_is_a_usage_error_naming_both_settings(
    real_data_root: Path, decoded_cache_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("RESNET_CIFAR_CACHE", str(decoded_cache_dir))
    flags = ["train", "--data-dir", str(real_data_root), "--out", str(tmp_path / "run"), "--epochs", "3"]
    code, _, err = run_in_process(capsys, *flags, "--warmup-epochs", "3")
    assert code == 2
    assert err.strip() == "error: --warmup-epochs must be in [0, --epochs 3), got 3"
    config = tmp_path / "warm.toml"
    config.write_text("[optim]\nwarmup_epochs = 9\n")
    code, _, err = run_in_process(capsys, *flags, "--config", str(config))
    assert code == 2
    assert "--warmup-epochs must be in [0, --epochs 3), got 9" in err
    assert f"optim.warmup_epochs in {config}" in err
    assert not (tmp_path / "run").exists()  # nothing was written


def test_a_saved_config_replays_the_same_per_step_learning_rates(
    real_data_root: Path, decoded_cache_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch, preset_run: Callable[[str, int], tuple[TrainConfig, FitResult, list[float]]],
) -> None:
    monkeypatch.setenv("RESNET_CIFAR_CACHE", str(decoded_cache_dir))
    out = tmp_path / "first"
    flags = [*SMALL_FLAGS, "--data-dir", str(real_data_root), "--epochs", "2", "--out", str(out), "--json"]
    code, _, err = run_in_process(capsys, "train", *flags)
    assert code == 0, err
    saved = read_config_file(out / "config.toml")
    assert saved["optim"]["warmup_epochs"] == 0.6 and saved["optim"]["lr"] == 0.00625  # 0.4 x 8/512

    original = resolve_config(file=out / "config.toml", overrides={"run.out_dir": tmp_path / "again"})
    _, replayed = step_lrs(original)
    history = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert len(replayed) == 8
    # The run's own per-epoch lr records are the rate at each epoch's last step.
    assert [entry["lr"] for entry in history] == pytest.approx([replayed[3], replayed[7]], rel=1e-12)
    # And a run resolved from the same flags (not the file) steps through the same rates: the
    # default preset's 2-epoch run, which test_every_preset_trains_one_and_two_epochs trains too.
    default_cfg, _, direct_lrs = preset_run("default", 2)
    direct = resolve_config(
        overrides=small_overrides(real_data_root, decoded_cache_dir, default_cfg.run.out_dir, **{"optim.epochs": 2})
    )
    assert direct == default_cfg
    assert direct_lrs == replayed


def _help(command: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> str:
    # Rich reads the width and the terminal kind when the help is rendered, so this process's
    # environment, set for the call only, shapes it as a fresh interpreter's would.
    monkeypatch.setenv("COLUMNS", "400")
    monkeypatch.setenv("TERM", "dumb")
    code, out, err = run_in_process(capsys, command, "--help")
    assert code == 0, err
    return out


def _flag_line(text: str, flag: str) -> str:
    # The flag's own row: its first word after the table's border (help texts mention other flags).
    return next(line for line in text.splitlines() if line.strip("│ ").split(" ", 1)[0] == flag)


@pytest.mark.parametrize("command", ["train", "sweep"])
def test_help_shows_each_flags_help_and_resolved_default(
    command: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    text = _help(command, capsys, monkeypatch)
    expected = {
        "--lr-base": "[default: 0.4]",
        "--epochs": "Training epochs. [default: 30]",
        "--batch-size": "[default: 512]",
        "--label-smoothing": "[default: 0.1]",
        "--weight-decay": "[default: 0.0005]",
        "--warmup-fraction": "[default: 0.3]",
        "--zero-init-residual": "[default: on]",
        "--amp": "[default: on for CUDA, off for the CPU]",
        "--channels-last": "[default: on for CUDA and for the CPU with --amp, else off]",
        "--loader": "[default: dali on CUDA when installed, else tensor]",
    }
    for flag, shown in expected.items():
        assert shown in _flag_line(text, flag), flag
    assert "[default: 0.4 at batch 512, scaled with the batch]" in _flag_line(text, "--lr")


def test_every_setting_flag_has_a_one_line_help() -> None:
    from resnet_cifar.cli.options import setting_parameters

    for parameter in setting_parameters():
        option = parameter.annotation.__metadata__[0]
        assert option.help and "\n" not in option.help and "[default: " in option.help, parameter.name


def test_sweep_trains_one_epoch_with_the_default_preset(
    real_data_root: Path, decoded_cache_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("RESNET_CIFAR_CACHE", str(decoded_cache_dir))
    space = tmp_path / "space.toml"
    space.write_text('["optim.weight_decay"]\ntype = "float"\nlow = 1e-4\nhigh = 1e-3\nlog = true\n')
    code, out, err = run_in_process(
        capsys, "sweep", "--trials", "1", "--epochs", "1", *SMALL_FLAGS,
        "--data-dir", str(real_data_root), "--space", str(space), "--out", str(tmp_path / "sweep"), "--json",
    )  # fmt: skip
    assert code == 0, err
    report = json.loads(out)
    assert [trial["state"] for trial in report["trials"]] == ["COMPLETE"]
    trial_config = read_config_file(tmp_path / "sweep" / "trials" / "0" / "config.toml")
    assert trial_config["run"]["preset"] == "default" and trial_config["optim"]["epochs"] == 1
    assert trial_config["optim"]["warmup_epochs"] == pytest.approx(0.3)


def test_training_curves_have_integer_epoch_ticks() -> None:
    history = [{"epoch": epoch, "train_loss": 2.0 / epoch, "val_acc": 0.1 * epoch} for epoch in (1, 2, 3)]
    figure = training_curves_figure(history)
    for axes in figure.axes:
        ticks = [tick for tick in axes.get_xticks() if 1 <= tick <= 3]
        assert ticks and all(float(tick).is_integer() for tick in ticks)
