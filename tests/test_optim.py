"""Parameter groups (weight decay exclusions x backbone multiplier), optimizers and lr schedules."""

from __future__ import annotations

import io
import math

import pytest
import torch
from torch import nn

from resnet_cifar.choices import bound
from resnet_cifar.choices.optimizers import OPTIMIZERS
from resnet_cifar.choices.schedules import SCHEDULES
from resnet_cifar.config import OptimConfig
from resnet_cifar.engine.optim import build_optimizer, build_scheduler, optimizer_class, param_groups
from resnet_cifar.errors import UsageError
from resnet_cifar.models import freeze_backbone, resnet18


@pytest.fixture(scope="module")
def model() -> nn.Module:
    return resnet18(num_classes=10)


def _names(model: nn.Module, params: list[nn.Parameter]) -> set[str]:
    by_id = {id(param): name for name, param in model.named_parameters()}
    return {by_id[id(param)] for param in params}


def _is_norm_or_bias(name: str, model: nn.Module) -> bool:
    module = model.get_submodule(name.rsplit(".", 1)[0])
    return isinstance(module, nn.BatchNorm2d) or name.endswith(".bias")


def test_norm_and_bias_get_no_weight_decay_by_default(model: nn.Module) -> None:
    groups = param_groups(model, 5e-4, lr=0.1)
    assert [group["name"] for group in groups] == ["all/decay", "all/no_decay"]
    decay, no_decay = (_names(model, group["params"]) for group in groups)
    assert decay and no_decay and not decay & no_decay
    assert decay | no_decay == {name for name, _ in model.named_parameters()}
    assert all(_is_norm_or_bias(name, model) for name in no_decay)
    assert not any(_is_norm_or_bias(name, model) for name in decay)
    assert {"bn1.weight", "bn1.bias", "layer1.0.bn2.weight", "fc.bias"} <= no_decay
    assert {"conv1.weight", "layer4.1.conv2.weight", "fc.weight"} <= decay
    assert (groups[0]["weight_decay"], groups[1]["weight_decay"]) == (5e-4, 0.0)
    assert all(group["lr"] == 0.1 for group in groups)


def test_other_normalization_layers_are_excluded_too() -> None:
    net = nn.Sequential(nn.Conv2d(3, 4, 3, bias=False), nn.GroupNorm(2, 4), nn.Flatten(), nn.LayerNorm(4))
    (decay,) = [group for group in param_groups(net, 0.1, lr=1.0) if group["name"] == "all/decay"]
    assert _names(net, decay["params"]) == {"0.weight"}


def test_flag_puts_weight_decay_on_everything(model: nn.Module) -> None:
    groups = param_groups(model, 5e-4, decay_norm_and_bias=True, lr=0.1)
    assert len(groups) == 1 and groups[0]["weight_decay"] == 5e-4
    assert len(groups[0]["params"]) == len(list(model.parameters()))


def test_backbone_multiplier_composes_with_decay_groups(model: nn.Module) -> None:
    groups = {group["name"]: group for group in param_groups(model, 1e-4, backbone_lr_mult=0.1, lr=0.2)}
    assert set(groups) == {"backbone/decay", "backbone/no_decay", "top/decay", "top/no_decay"}
    assert _names(model, groups["top/decay"]["params"]) == {"fc.weight"}
    assert _names(model, groups["top/no_decay"]["params"]) == {"fc.bias"}
    assert groups["top/decay"]["lr"] == groups["top/no_decay"]["lr"] == 0.2
    assert groups["backbone/decay"]["lr"] == groups["backbone/no_decay"]["lr"] == pytest.approx(0.02)
    assert groups["backbone/no_decay"]["weight_decay"] == groups["top/no_decay"]["weight_decay"] == 0.0
    assert groups["backbone/decay"]["weight_decay"] == 1e-4
    assert "bn1.weight" in _names(model, groups["backbone/no_decay"]["params"])


def test_only_trainable_parameters_are_optimized() -> None:
    frozen = resnet18(num_classes=10)
    freeze_backbone(frozen)
    optimizer = build_optimizer(frozen, name="sgd", lr=0.1, backbone_lr_mult=0.1)
    assert [group["name"] for group in optimizer.param_groups] == ["top/decay", "top/no_decay"]
    assert sum(len(group["params"]) for group in optimizer.param_groups) == 2
    for param in frozen.parameters():
        param.requires_grad_(False)
    with pytest.raises(UsageError, match="no trainable parameters"):
        build_optimizer(frozen, name="sgd", lr=0.1)


def test_build_optimizer_kinds(model: nn.Module) -> None:
    sgd = build_optimizer(model, name="sgd", lr=0.1, momentum=0.8, weight_decay=1e-3)
    assert isinstance(sgd, torch.optim.SGD)
    assert (sgd.defaults["momentum"], sgd.defaults["nesterov"]) == (0.8, True)
    assert [group["weight_decay"] for group in sgd.param_groups] == [1e-3, 0.0]
    adam = build_optimizer(model, name="adam", lr=1e-3, betas=(0.8, 0.99))
    assert type(adam) is torch.optim.Adam and adam.defaults["betas"] == (0.8, 0.99)
    adamw = build_optimizer(model, name="adamw", lr=1e-3, weight_decay=0.05)
    assert type(adamw) is torch.optim.AdamW
    assert [group["weight_decay"] for group in adamw.param_groups] == [0.05, 0.0]


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"optimizer": "rmsprop"}, "--optimizer must be one of sgd, adam, adamw, got 'rmsprop'"),
        ({"lr": 0.0}, "--lr must be positive"),
        ({"weight_decay": -1.0}, "--weight-decay must be at least 0"),
        ({"momentum": 0.0}, "--nesterov needs a positive --momentum"),
    ],
)
def test_bad_optimizer_settings_are_refused_once_by_the_config(settings: dict, message: str) -> None:
    # build_optimizer trusts a validated OptimConfig: the values it used to check again are refused
    # there, in one message naming the flag.
    with pytest.raises(UsageError, match=message):
        OptimConfig(**settings)


def test_adam_betas_are_checked_by_torch_for_a_library_caller(model: nn.Module) -> None:
    # The betas are not a setting, so no config checks them; torch's Adam refuses them itself.
    with pytest.raises(ValueError, match="beta"):
        build_optimizer(model, name="adam", lr=0.1, betas=(0.9, 1.5))


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_every_registered_optimizer_builds_from_its_spec(model: nn.Module, name: str) -> None:
    spec = OPTIMIZERS[name]
    optimizer = build_optimizer(model, name=name, lr=0.01)
    module, _, class_name = spec.torch_class.rpartition(".")
    assert type(optimizer) is optimizer_class(name) is getattr(__import__(module, fromlist=[class_name]), class_name)
    assert issubclass(optimizer_class(name), torch.optim.Optimizer)
    assert set(spec.options) <= set(optimizer.defaults)  # every option it lists reached the optimizer
    assert spec.scale(4.0) == (2.0 if spec.lr_scaling == "sqrt" else 4.0)


def test_a_registry_and_its_implementations_must_name_the_same_choices() -> None:
    assert bound({"a": 1, "b": 2}, ("a", "b"), "x") == {"a": 1, "b": 2}
    with pytest.raises(TypeError, match=r"x: no implementation of \['c'\]; not registered: \['b'\]"):
        bound({"a": 1, "b": 2}, ("a", "c"), "x")


def _lr_trajectory(name: str, iterations: int, *, lr: float = 1.0, groups: int = 1, **kwargs) -> list[list[float]]:
    """The lr of every group used by each of ``iterations`` optimizer steps."""
    params = [nn.Parameter(torch.zeros(1)) for _ in range(groups)]
    optimizer = torch.optim.SGD([{"params": [p], "lr": lr / (i + 1)} for i, p in enumerate(params)], lr=lr)
    scheduler = build_scheduler(optimizer, name=name, **kwargs)
    used = []
    for _ in range(iterations):
        used.append([group["lr"] for group in optimizer.param_groups])
        optimizer.step()
        scheduler.step()
    return used


def _first_group(trajectory: list[list[float]]) -> list[float]:
    return [lrs[0] for lrs in trajectory]


def test_constant() -> None:
    assert _first_group(_lr_trajectory("constant", 12, lr=0.3, epochs=3, steps_per_epoch=4)) == [0.3] * 12


def test_step_decay_converts_epochs_to_iterations() -> None:
    lrs = _first_group(_lr_trajectory("step", 12, epochs=3, steps_per_epoch=4, step_size=1, gamma=0.5))
    assert lrs == pytest.approx([1.0] * 4 + [0.5] * 4 + [0.25] * 4)


def test_step_decay_with_warmup_keeps_absolute_decay_epochs() -> None:
    lrs = _first_group(_lr_trajectory("step", 12, epochs=3, steps_per_epoch=4, step_size=2, gamma=0.1, warmup_epochs=1))
    # Warm-up: lr * (i + 1) / (W + 1) with W = 4; then the base rate; decay at epoch 2 = iteration 8.
    assert lrs == pytest.approx([0.2, 0.4, 0.6, 0.8, 1.0, 1.0, 1.0, 1.0, 0.1, 0.1, 0.1, 0.1])


def test_multistep() -> None:
    lrs = _first_group(
        _lr_trajectory("multistep", 20, epochs=5, steps_per_epoch=4, milestones=(2, 4), gamma=0.1, warmup_epochs=0.5)
    )
    assert lrs[:2] == pytest.approx([1 / 3, 2 / 3])  # W = 2 iterations
    assert lrs[2:8] == pytest.approx([1.0] * 6)
    assert lrs[8:16] == pytest.approx([0.1] * 8)
    assert lrs[16:] == pytest.approx([0.01] * 4)


def test_cosine_midpoint_end_and_floor() -> None:
    lrs = _first_group(_lr_trajectory("cosine", 10, epochs=2, steps_per_epoch=5))
    assert lrs[0] == 1.0
    assert lrs[5] == pytest.approx(0.5)  # half way: (1 + cos(pi / 2)) / 2
    assert lrs[2] == pytest.approx(0.5 * (1 + math.cos(math.pi * 2 / 10)))
    assert all(a > b for a, b in zip(lrs, lrs[1:]))
    floored = _first_group(_lr_trajectory("cosine", 10, lr=2.0, epochs=2, steps_per_epoch=5, min_lr_ratio=0.2))
    assert floored[5] == pytest.approx(2.0 * (0.2 + 0.8 * 0.5))
    assert min(floored) > 2.0 * 0.2


def test_cosine_after_warmup_spans_the_rest() -> None:
    lrs = _first_group(_lr_trajectory("cosine", 12, epochs=3, steps_per_epoch=4, warmup_epochs=1))
    assert lrs[:5] == pytest.approx([0.2, 0.4, 0.6, 0.8, 1.0])
    assert lrs[8] == pytest.approx(0.5)  # 4 of the 8 post-warm-up iterations done


def test_fractional_warmup_is_a_linear_ramp() -> None:
    lrs = _first_group(_lr_trajectory("constant", 30, lr=0.4, epochs=3, steps_per_epoch=10, warmup_epochs=0.9))
    ramp = [0.4 * (i + 1) / 10 for i in range(9)]
    assert lrs[:9] == pytest.approx(ramp)
    assert lrs[9:] == pytest.approx([0.4] * 21)


def test_onecycle_peaks_at_pct_start() -> None:
    lrs = _first_group(_lr_trajectory("onecycle", 40, lr=0.8, epochs=4, steps_per_epoch=10, onecycle_pct_start=0.25))
    assert lrs[0] == pytest.approx(0.8 / 25)
    assert max(lrs) == pytest.approx(0.8) and lrs.index(max(lrs)) == 9  # the 10th of 40 iterations
    assert all(a < b for a, b in zip(lrs[:10], lrs[1:10]))
    assert all(a > b for a, b in zip(lrs[9:], lrs[10:]))
    assert lrs[-1] == pytest.approx(0.8 / 25 / 1e4)
    floored = _first_group(_lr_trajectory("onecycle", 40, lr=0.8, epochs=4, steps_per_epoch=10, min_lr_ratio=0.1))
    assert floored[-1] == pytest.approx(0.08)


@pytest.mark.parametrize("name", SCHEDULES)
def test_schedules_scale_each_group_from_its_own_rate(name: str) -> None:
    warmup = 0.0 if name == "onecycle" else 1.0
    trajectory = _lr_trajectory(
        name, 20, lr=1.0, groups=2, epochs=5, steps_per_epoch=4, step_size=2, milestones=(3,), warmup_epochs=warmup
    )
    for top, backbone in trajectory:
        assert backbone == pytest.approx(top / 2)


@pytest.mark.parametrize("name", SCHEDULES)
def test_scheduler_state_round_trips_through_a_weights_only_file(name: str) -> None:
    kwargs = {
        "name": name, "epochs": 4, "steps_per_epoch": 5, "step_size": 2, "milestones": (2, 3),
        "warmup_epochs": 0.0 if name == "onecycle" else 1.0, "min_lr_ratio": 0.1,
    }  # fmt: skip

    def fresh() -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler]:
        param = nn.Parameter(torch.ones(2))
        optimizer = torch.optim.SGD([param], lr=0.5, momentum=0.9)
        return optimizer, build_scheduler(optimizer, **kwargs)

    def run(optimizer, scheduler, steps: int) -> list[float]:
        used = []
        for _ in range(steps):
            used.append(optimizer.param_groups[0]["lr"])
            optimizer.step()
            scheduler.step()
        return used

    straight = run(*fresh(), 20)
    optimizer, scheduler = fresh()
    first_half = run(optimizer, scheduler, 7)
    buffer = io.BytesIO()
    torch.save({"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict()}, buffer)
    buffer.seek(0)
    state = torch.load(buffer, weights_only=True)
    optimizer, scheduler = fresh()
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    assert first_half + run(optimizer, scheduler, 13) == pytest.approx(straight, rel=1e-12)
    assert len(set(straight)) > 1


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        # What only the run's length in steps decides, which the config cannot know.
        ({"name": "step", "step_size": 0}, "step size"),
        ({"name": "step", "step_size": 1, "warmup_epochs": 1.0}, "longer than the warm-up"),
        ({"name": "multistep", "milestones": (1, 3), "warmup_epochs": 1.0}, "after the warm-up"),
    ],
)
def test_build_scheduler_rejects_bad_values(kwargs: dict, message: str) -> None:
    optimizer = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=0.1)
    arguments = {"epochs": 5, "steps_per_epoch": 4, **kwargs}
    with pytest.raises(UsageError, match=message):
        build_scheduler(optimizer, **arguments)


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"schedule": "linear"}, "--schedule must be one of constant, step, multistep, cosine, onecycle, got 'linear'"),
        ({"warmup_fraction": 1.0}, "--warmup-fraction must be in [0, 1)"),
        ({"schedule": "cosine", "epochs": 5, "warmup_epochs": 5.0}, "--warmup-epochs must be in [0, --epochs 5)"),
        ({"schedule": "cosine", "min_lr_ratio": 1.5}, "--min-lr-ratio must be in [0, 1]"),
        ({"schedule": "step", "gamma": 0.0}, "--gamma must be in (0, 1]"),
        ({"schedule": "multistep", "milestones": (3, 2)}, "--milestones must be increasing epochs"),
        ({"schedule": "cosine", "epochs": 0}, "--epochs must be positive"),
    ],
)
def test_bad_schedule_settings_are_refused_once_by_the_config(settings: dict, message: str) -> None:
    # build_scheduler trusts a validated OptimConfig (one-cycle's pct_start is its warm-up
    # fraction); the values it used to check again are refused there, naming the flag.
    with pytest.raises(UsageError) as caught:
        OptimConfig(**settings)
    assert message in str(caught.value)


def test_a_rising_schedule_takes_its_rise_as_pct_start_not_as_a_warm_up() -> None:
    optimizer = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=0.1)
    with pytest.raises(AssertionError, match="the rise is pct_start"):
        build_scheduler(optimizer, name="onecycle", epochs=5, steps_per_epoch=4, warmup_epochs=1.0)


def test_one_cycle_with_an_empty_phase_is_a_usage_error() -> None:
    optimizer = torch.optim.SGD(nn.Linear(2, 2).parameters(), lr=0.1)
    with pytest.raises(UsageError, match="empty warm-up or annealing phase"):
        build_scheduler(optimizer, name="onecycle", epochs=1, steps_per_epoch=2, onecycle_pct_start=0.5)


def test_one_cycle_lengthens_a_rise_shorter_than_one_and_a_half_steps() -> None:
    # 6 steps with a rise of 1/6 would leave OneCycleLR an empty first phase: it gets 1.5 steps.
    optimizer = torch.optim.SGD(nn.Linear(2, 2).parameters(), lr=0.1)
    scheduler = build_scheduler(optimizer, name="onecycle", epochs=3, steps_per_epoch=2, onecycle_pct_start=0.5 / 3)
    lrs = [optimizer.param_groups[0]["lr"]]
    for _ in range(5):
        optimizer.step()
        scheduler.step()
        lrs.append(optimizer.param_groups[0]["lr"])
    assert lrs[0] == pytest.approx(0.1 / 25)  # the ramp starts at lr / 25
    assert lrs[1] > lrs[0] and max(lrs) <= 0.1 + 1e-12 and lrs[-1] < lrs[1]
