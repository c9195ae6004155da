"""The finetune recipe end to end on the CPU, offline, from a stand-in for torchvision's weights.

The stand-in is ``torchvision.models.resnet50()`` saved as a state dict (torchvision's exact
format) into a temporary ``$TORCH_HOME/hub/checkpoints``, the folder torchvision downloads into.
It cannot carry the real file's hash prefix (11ad3fa6), so the tests point the named source at
a published-style name computed from the stand-in's own sha256 (``PRETRAINED_FILES`` patched for
the test only); a separate test keeps the real name and shows the real prefix is what is checked.
Every test here runs with socket connections refused, so any network access fails it.

Runs are tiny (48 px, 16 training images in 4 steps, 1 epoch): they check wiring, not accuracy.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
import torchvision
from typer.testing import CliRunner

from resnet_cifar.cli.main import app
from resnet_cifar.config import flag_for, read_config_file, resolve_config
from resnet_cifar.engine.checkpoint import load_checkpoint
from resnet_cifar.engine.trainer import build_trainer
from resnet_cifar.errors import DataError
from resnet_cifar.models import PRETRAINED_FILES, load_pretrained, offline_weights, resnet50, weights_cache_dir

PUBLISHED_V2 = "resnet50-11ad3fa6.pth"
TINY = {
    "precision.device": "cpu",
    "model.image_size": 48,  # upsampled from 32, as 128 would be, at a fraction of the cost
    "data.batch_size": 4,
    "data.eval_batch_size": 32,
    "data.limit_train": 16,  # 4 steps
    "data.limit_val": 8,
    "data.limit_test": 8,
    "optim.epochs": 1,
}


class NetworkRefused(AssertionError):
    """Raised by the guard on any connection attempt (an AssertionError: no library catches it)."""


@pytest.fixture
def no_network(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[Any]]:
    """Refuse every socket connection; yields the attempts, so a test can also assert there were none."""
    attempts: list[Any] = []

    def refuse(*args: Any, **kwargs: Any) -> None:
        attempts.append(args[1:] if args and isinstance(args[0], socket.socket) else args)
        raise NetworkRefused(f"network access attempted: {attempts[-1]}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    yield attempts


@pytest.fixture(scope="module")
def stand_in(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """(torch home, sha256) of torchvision's ResNet-50 saved under a name carrying its own hash prefix."""
    torch_home = tmp_path_factory.mktemp("torch-home")
    folder = torch_home / "hub" / "checkpoints"
    folder.mkdir(parents=True)
    temp = folder / "unnamed.bin"
    torch.manual_seed(0)
    torch.save(torchvision.models.resnet50().state_dict(), temp)
    digest = hashlib.sha256(temp.read_bytes()).hexdigest()
    temp.rename(folder / f"resnet50-{digest[:8]}.pth")
    return torch_home, digest


@pytest.fixture
def offline_v2(stand_in: tuple[Path, str], monkeypatch: pytest.MonkeyPatch, no_network: list[Any]) -> Path:
    """TORCH_HOME holds the stand-in and imagenet1k-v2 names it; returns the cached file."""
    torch_home, digest = stand_in
    monkeypatch.setenv("TORCH_HOME", str(torch_home))
    monkeypatch.setitem(PRETRAINED_FILES, "imagenet1k-v2", f"resnet50-{digest[:8]}.pth")
    return torch_home / "hub" / "checkpoints" / PRETRAINED_FILES["imagenet1k-v2"]


def tiny_config(real_data_root: Path, decoded_cache_dir: Path, out: Path, **overrides: Any):
    values = {**TINY, "data.data_dir": real_data_root, "data.cache_dir": decoded_cache_dir, "run.out_dir": out}
    return resolve_config(preset="finetune", overrides={**values, **overrides})


def test_the_network_guard_refuses_connections(no_network: list[Any]) -> None:
    with pytest.raises(NetworkRefused):
        urllib.request.urlopen("http://127.0.0.1:9/resnet50-11ad3fa6.pth", timeout=1)  # noqa: S310
    assert len(no_network) == 1


def test_the_weights_cache_is_torchvisions_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "th"))
    # torchvision's load_state_dict_from_url downloads into os.path.join(torch.hub.get_dir(), "checkpoints").
    assert weights_cache_dir() == Path(torch.hub.get_dir()) / "checkpoints" == tmp_path / "th" / "hub" / "checkpoints"


def test_the_preset_is_the_documented_recipe(tmp_path: Path) -> None:
    cfg = resolve_config(preset="finetune", overrides={"data.data_dir": tmp_path})
    model, optim = cfg.model, cfg.optim
    assert (model.depth, model.stem, model.pretrained, model.image_size) == (50, "imagenet", "imagenet1k-v2", 128)
    assert not model.freeze_backbone and model.backbone_lr_mult == 0.1
    assert (optim.optimizer, optim.momentum, optim.nesterov, optim.weight_decay) == ("sgd", 0.9, False, 0.0)
    # The top at 0.03 and the backbone at BiT's 0.003, both for batch 512, scaled linearly with the batch.
    assert (optim.lr, optim.lr_base_batch_size, cfg.data.batch_size) == (0.03, 512, 512)
    assert (optim.schedule, optim.epochs, optim.warmup_epochs, optim.label_smoothing) == ("cosine", 6, 1.2, 0.1)
    half = resolve_config(preset="finetune", overrides={"data.data_dir": tmp_path, "data.batch_size": 256})
    assert half.optim.lr == 0.015


def test_a_bad_value_with_the_preset_is_one_line_naming_the_flag(tmp_path: Path) -> None:
    result = CliRunner().invoke(
        app, ["train", "--preset", "finetune", "--data-dir", str(tmp_path), "--stem", "cifar", "--out", str(tmp_path)]
    )
    assert result.exit_code == 2
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and "--reinit-conv1" in lines[0] and "imagenet1k-v2" in lines[0]


def test_the_published_name_is_checked_against_the_real_prefix_offline(
    stand_in: tuple[Path, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, no_network: list[Any]
) -> None:
    """No patching: users get torchvision's name and prefix; a file under that name that is not
    torchvision's is refused from the cache, before and without any download."""
    assert PRETRAINED_FILES["imagenet1k-v2"] == PUBLISHED_V2
    torch_home, _ = stand_in
    cache = tmp_path / "hub" / "checkpoints"
    cache.mkdir(parents=True)
    os.link(torch_home / "hub" / "checkpoints" / f"resnet50-{stand_in[1][:8]}.pth", cache / PUBLISHED_V2)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    with pytest.raises(DataError, match=r"cached weights .*resnet50-11ad3fa6\.pth have sha256 .* expected 11ad3fa6"):
        load_pretrained(resnet50(stem="imagenet"), "imagenet1k-v2")
    status = {cached.name: cached.status for cached in offline_weights()}
    assert status == {"imagenet1k-v1": "not cached", "imagenet1k-v2": "hash mismatch"}
    assert no_network == []


def test_finetune_recipe_end_to_end_offline(
    real_data_root: Path,
    decoded_cache_dir: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    offline_v2: Path,
    no_network: list[Any],
    stand_in: tuple[Path, str],
) -> None:
    monkeypatch.setenv("RESNET_CIFAR_CACHE", str(decoded_cache_dir))
    out = tmp_path / "run"
    flags = [f"{flag_for(key)}={value}" for key, value in TINY.items()]
    runner = CliRunner()
    trained = runner.invoke(
        app, ["train", "--preset", "finetune", *flags, "--data-dir", str(real_data_root), "--out", str(out), "--json"]
    )
    assert trained.exit_code == 0, trained.output
    summary = json.loads(trained.stdout)
    assert summary["epochs_run"] == 1 and 0.0 <= summary["test_acc"] <= 1.0

    expected = {"name": "imagenet1k-v2", "file": str(offline_v2), "sha256": stand_in[1]}
    saved = read_config_file(out / "config.toml")
    assert saved["run"]["preset"] == "finetune" and saved["model"]["pretrained"] == "imagenet1k-v2"
    assert saved["model"]["image_size"] == 48 and saved["model"]["backbone_lr_mult"] == 0.1
    for name in ("last.pt", "best.pt"):
        checkpoint = load_checkpoint(out / name)
        assert checkpoint["pretrained"] == expected, name
        # The saved optimizer groups: backbone at a tenth of the top's rate.
        rates = {group["name"]: group["lr"] for group in checkpoint["optimizer"]["param_groups"]}
        assert rates["backbone/decay"] == pytest.approx(0.1 * rates["top/decay"], rel=1e-12)

    evaluated = runner.invoke(app, ["eval", str(out / "best.pt"), "--device", "cpu", "--limit", "16", "--json"])
    assert evaluated.exit_code == 0, evaluated.output
    report = json.loads(evaluated.stdout)
    assert report["pretrained"] == expected and report["count"] == 16
    assert json.loads((out / "eval-test" / "metrics.json").read_text())["pretrained"] == expected

    info = runner.invoke(app, ["info", "--json"])
    assert info.exit_code == 0, info.output
    offline = json.loads(info.stdout)["pretrained_offline"]
    assert offline["imagenet1k-v2"] == {"available": True, "status": "ok", "file": str(offline_v2)}
    assert offline["imagenet1k-v1"]["available"] is False
    plain = runner.invoke(app, ["info"])
    assert f"weights imagenet1k-v2: available offline ({offline_v2})" in plain.stdout
    assert no_network == []


def test_backbone_lr_mult_scales_the_backbone_group_at_every_step(
    real_data_root: Path, decoded_cache_dir: Path, tmp_path: Path, offline_v2: Path
) -> None:
    cfg = tiny_config(real_data_root, decoded_cache_dir, tmp_path / "run", **{"model.backbone_lr_mult": 0.25})
    trainer = build_trainer(cfg)
    parts = trainer.parts
    optimizer = parts.optimizer
    top_layer = {id(param) for param in parts.module.fc.parameters()}
    is_top = [all(id(param) in top_layer for param in group["params"]) for group in optimizer.param_groups]
    assert sorted(is_top) == [False, False, True, True]  # backbone and top, each with and without decay
    used: list[list[float]] = []
    # The rates each optimizer step actually uses, read just before it runs.
    optimizer.register_step_pre_hook(lambda opt, args, kwargs: used.append([g["lr"] for g in opt.param_groups]))
    # The trainer's own per-step code (TrainStep steps the schedule too); validation and
    # checkpoints are left out, as they set no rate.
    trainer.set_train_mode()
    for images, labels in parts.loaders.train:
        parts.step(images, labels)
    assert len(used) == trainer.steps_per_epoch == 4
    for rates in used:
        top = {rate for rate, top_group in zip(rates, is_top) if top_group}
        backbone = [rate for rate, top_group in zip(rates, is_top) if not top_group]
        assert len(top) == 1
        assert backbone == [pytest.approx(0.25 * top.pop(), rel=1e-12)] * 2
    assert len({rates[0] for rates in used}) == 4  # warm-up then cosine: a new rate every step
    assert max(max(rates) for rates in used) <= cfg.optim.lr


def test_freeze_backbone_leaves_every_backbone_weight_and_statistic_unchanged(
    real_data_root: Path, decoded_cache_dir: Path, tmp_path: Path, offline_v2: Path
) -> None:
    cfg = tiny_config(real_data_root, decoded_cache_dir, tmp_path / "run", **{"model.freeze_backbone": True})
    build_trainer(cfg).fit()
    start = torch.load(offline_v2, weights_only=True)
    checkpoint = load_checkpoint(tmp_path / "run" / "last.pt")
    trained = checkpoint["model"]
    assert trained.keys() == start.keys()
    backbone = [key for key in start if not key.startswith("fc.")]
    assert any(key.endswith("running_mean") for key in backbone)
    assert any(key.endswith("num_batches_tracked") for key in backbone)
    changed = [key for key in backbone if not torch.equal(trained[key], start[key])]
    assert changed == []
    # The new 10-class top did train: it moved away from where the first step found it, and only
    # its parameters have optimizer state (momentum buffers).
    assert trained["fc.weight"].shape == (10, 2048)
    momentum = [state["momentum_buffer"] for state in checkpoint["optimizer"]["state"].values()]
    assert sorted(tuple(buffer.shape) for buffer in momentum) == [(10,), (10, 2048)]
    assert all(buffer.abs().sum() > 0 for buffer in momentum)
