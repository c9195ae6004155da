"""The shipped recipes build and train on the CPU: full ResNet-50, a few steps each."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from resnet_cifar.config import resolve_config
from resnet_cifar.engine.trainer import build_trainer


@pytest.mark.parametrize("preset", ["default", "long"])
def test_recipe_takes_real_steps_on_the_cpu(
    real_data_root: Path, decoded_cache_dir: Path, tmp_path: Path, preset: str
) -> None:
    cfg = resolve_config(
        preset=preset,
        overrides={
            "data.data_dir": real_data_root,
            "data.cache_dir": decoded_cache_dir,
            "data.batch_size": 8,
            "data.limit_train": 32,
            "data.limit_val": 32,
            "data.limit_test": 32,
            "precision.device": "cpu",
            "run.out_dir": tmp_path,
        },
    )
    assert cfg.model.depth == 50 and cfg.model.stem == "cifar"
    trainer = build_trainer(cfg)
    before = [param.detach().clone() for param in trainer.parts.module.parameters()]
    lrs = []
    trainer.parts.module.train()
    for _, (images, labels) in zip(range(2), trainer.parts.loaders.train):
        output = trainer.parts.step(images, labels)
        assert math.isfinite(float(output.loss))
        lrs.append(trainer.parts.optimizer.param_groups[0]["lr"])
    assert trainer.parts.step.global_step == 2
    assert lrs[0] != lrs[1]  # the schedule moves every step
    after = list(trainer.parts.module.parameters())
    changed = sum(not torch.equal(old, new) for old, new in zip(before, after))
    # zero_init_residual starts each residual branch at zero, so a few branch weights only begin to
    # move after the first steps; the stem, the top layer and most of the network move at once.
    assert changed > 0.8 * len(before)
    assert not torch.equal(before[0], after[0]) and not torch.equal(before[-1], after[-1])
