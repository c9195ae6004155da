"""The registries of named choices: torch-free, the one list of each choice, and enough on their
own to add a choice (the config, --help and both loaders follow a new policy's entry)."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from resnet_cifar.choices import described, one_of
from resnet_cifar.choices.monitors import METRIC_MODES
from resnet_cifar.choices.optimizers import OPTIMIZERS
from resnet_cifar.choices.policies import POLICIES, PolicySpec
from resnet_cifar.choices.schedules import SCHEDULES
from resnet_cifar.choices.weights import PRETRAINED_FILES
from resnet_cifar.config import SECTIONS, DataConfig
from resnet_cifar.data.augment import Augmentation, draw_policy
from resnet_cifar.data.augment.ops import OP_ID, OP_NAMES
from resnet_cifar.data.dali_loader import DaliLoader
from resnet_cifar.data.loader_spec import LoaderSpec
from resnet_cifar.data.tensor_loader import TensorLoader
from resnet_cifar.data.types import CifarSplit
from resnet_cifar.errors import UsageError

REPO = Path(__file__).resolve().parents[1]


def _run(code: str) -> str:
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO)
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_reading_a_config_imports_neither_torch_nor_a_higher_room(tmp_path: Path) -> None:
    config = tmp_path / "run.toml"
    config.write_text('[optim]\noptimizer = "adamw"\nschedule = "cosine"\n[data]\naugment = "randaugment"\n')
    code = (
        "import sys, types\n"
        # A bare package: resnet_cifar/__init__.py re-exports the models (torch), which the config must not need.
        "package = types.ModuleType('resnet_cifar')\n"
        f"package.__path__ = [{str(REPO / 'resnet_cifar')!r}]\n"
        "sys.modules['resnet_cifar'] = package\n"
        "from resnet_cifar.config import resolve_config\n"
        f"cfg = resolve_config(file={str(config)!r}, overrides={{'data.data_dir': '.'}})\n"
        "print(cfg.optim.optimizer, cfg.optim.schedule, cfg.data.augment)\n"
        "rooms = {name.split('.')[1] for name in sys.modules if name.startswith('resnet_cifar.')}\n"
        "print(sorted(name for name in sys.modules if name.split('.')[0] == 'torch'), sorted(rooms))\n"
    )
    assert _run(code).splitlines() == [
        "adamw cosine randaugment",
        "[] ['choices', 'config', 'errors', 'files']",
    ]


@pytest.mark.parametrize(
    ("key", "names"),
    [
        ("optim.optimizer", OPTIMIZERS),
        ("optim.schedule", SCHEDULES),
        ("data.augment", POLICIES),
        ("early_stopping.monitor", METRIC_MODES),
        ("model.pretrained", PRETRAINED_FILES),
    ],
)
def test_a_choice_flag_lists_its_registry(key: str, names: dict) -> None:
    section, name = key.split(".")
    helptext = next(item for item in SECTIONS[section].__dataclass_fields__.values() if item.name == name).metadata["help"]
    if key == "model.pretrained":
        assert one_of([*names, "a weights file"]) in helptext
    elif key == "early_stopping.monitor":
        assert one_of(names) in helptext
    else:  # each name with its spec's help
        assert described(names) in helptext and all(name in helptext for name in names)


def test_every_policy_space_names_ops_the_loaders_have() -> None:
    for name, spec in POLICIES.items():
        assert (spec.sampler is None) == (name == "none")
        assert {op.op for op in spec.space} <= set(OP_NAMES), name
        steps = {op for sub_policy in spec.sub_policies for op, _, _ in sub_policy}
        assert steps <= {op.op for op in spec.space}, name


# A policy that draws like RandAugment over TrivialAugment Wide's ranges: only a registry entry.
WIDE_RANDAUGMENT = PolicySpec(
    "RandAugment on TrivialAugment Wide's ranges", "n_ops", POLICIES["trivialaugment"].space, POLICIES["trivialaugment"].bins
)


@pytest.fixture()
def tiny_split(real_splits) -> CifarSplit:
    chosen = np.random.default_rng(0).choice(len(real_splits.train), size=64, replace=False)
    return CifarSplit(real_splits.train.images[chosen], real_splits.train.labels[chosen], real_splits.train.classes)


def test_a_new_policy_needs_only_its_registry_entry(
    monkeypatch: pytest.MonkeyPatch, tiny_split: CifarSplit, tmp_path: Path
) -> None:
    with pytest.raises(UsageError, match="--augment must be one of"):
        DataConfig(data_dir=tmp_path, augment="wide-randaugment")
    monkeypatch.setitem(POLICIES, "wide-randaugment", WIDE_RANDAUGMENT)
    assert DataConfig(data_dir=tmp_path, augment="wide-randaugment").augment == "wide-randaugment"
    plan = draw_policy("wide-randaugment", 5000, torch.Generator().manual_seed(0), randaugment_ops=2, randaugment_magnitude=30)
    assert plan is not None and plan.ops.shape == (5000, 2)
    rotations = plan.magnitudes[plan.ops == OP_ID["Rotate"]].abs()
    assert rotations.numel() > 0 and torch.all(rotations == 135.0)  # Wide's range at the last bin
    options = Augmentation(policy="wide-randaugment", randaugment_ops=2, randaugment_magnitude=30)
    for loader_class, extra in ((TensorLoader, {}), (DaliLoader, {"num_threads": 1})):
        spec = LoaderSpec(batch_size=32, train=True, seed=1)
        plain = next(iter(loader_class(tiny_split, spec, **extra)))[0]
        augmented = next(iter(loader_class(tiny_split, replace(spec, augmentation=options), **extra)))[0]
        assert augmented.shape == plain.shape and not torch.equal(augmented, plain), loader_class.__name__


def test_a_new_policy_reaches_the_help_of_augment() -> None:
    code = (
        "from resnet_cifar.choices import policies\n"
        "policies.POLICIES['wide-randaugment'] = policies.POLICIES['randaugment']\n"
        "from resnet_cifar.cli.options import setting_parameters\n"
        "(augment,) = [p for p in setting_parameters() if p.name == 'augment']\n"
        "print(augment.annotation.__metadata__[0].help)\n"
    )
    assert "trivialaugment (Wide) or wide-randaugment (randaugment_ops ops" in _run(code)
