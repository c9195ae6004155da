"""The presets: recipes as the settings in which they differ from the default one.

The dataclass defaults of config/sections.py ARE the default recipe; docs/recipes.md gives the
reasons and sources for each value.
"""

from __future__ import annotations

from typing import Any

# Recipes, as partial nested dicts laid over the dataclass defaults, which ARE the default recipe
# (>= 94% test accuracy from scratch with the cifar-stem ResNet-50 in 30 epochs of one-cycle SGD).
# A preset states only what differs; docs/recipes.md gives the reasons and sources for each value.
# TOML has no null, so a saved config leaves None fields out, and reloading it must not pick up a
# preset value there. So a preset states its learning rate as lr_base at lr_base_batch_size and its
# warm-up as warmup_fraction (both follow --batch-size and --epochs), and sets a field that may be
# None only where no ratio can replace it (finetune's weights and image size); resolve_config then
# refuses a null for that field (a YAML file's), so its resolved value is never None and round-trips.
PRESETS: dict[str, dict[str, dict[str, Any]]] = {
    "default": {},
    # 94% in the fewest seconds on one GPU (docs/recipes.md): a third fewer epochs than the default,
    # a shorter rise, validation only in the last epochs, and flip TTA on the final test pass.
    "fast": {
        "optim": {"epochs": 20, "warmup_fraction": 0.2},
        "run": {"eval_from": 15, "test_tta": True},
    },
    # >= 96%: the default recipe's model and SGD, for 200 epochs of cosine annealing (5 of them of
    # linear warm-up) with AutoAugment's CIFAR-10 policy then cutout 16, as Cubuk et al. 2019 train.
    "long": {
        "data": {"cutout": 16, "augment": "autoaugment"},
        "optim": {"schedule": "cosine", "epochs": 200, "warmup_fraction": 0.025},
    },
    # A quick CPU check that the pipeline trains, not a recipe: pair it with --limit-train/--limit-val.
    "smoke": {
        "data": {"batch_size": 64, "eval_batch_size": 256},
        # Zero-initialized residual branches learn slowly in the first steps: off for a 2-epoch check.
        "model": {"depth": 18, "zero_init_residual": False},
        "optim": {"lr_base": 0.05, "lr_base_batch_size": 64, "epochs": 2, "warmup_fraction": 0.25},
    },
    # Fine-tuning torchvision's ImageNet ResNet-50 (docs/recipes.md, "finetune"): BiT's HyperRule
    # rate 0.003 at batch 512 for the pretrained backbone (0.03 x 0.1), ten times that for the new
    # 10-class top, its ~500-step budget (6 epochs of 87 steps), ~100 steps of warm-up, no weight
    # decay, plain momentum, and its 128 px for small images (the cifar-stem model's cost at 32 px).
    "finetune": {
        "model": {"stem": "imagenet", "pretrained": "imagenet1k-v2", "image_size": 128, "backbone_lr_mult": 0.1},
        "optim": {
            "lr_base": 0.03,
            "nesterov": False,
            "weight_decay": 0.0,
            "schedule": "cosine",
            "epochs": 6,
            "warmup_fraction": 0.2,
        },
    },
}

DEFAULT_PRESET = "default"
