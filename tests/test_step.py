"""The training step: learning, bf16 autocast, fp16 scaling with unscale-before-clip, NaN guard, EMA."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import Tensor, nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from resnet_cifar.engine.optim import build_optimizer, build_scheduler
from resnet_cifar.engine.precision import Precision, make_grad_scaler, resolve_precision
from resnet_cifar.engine.step import NonFiniteLossError, StepOutput, TrainStep, build_ema, build_loss
from resnet_cifar.errors import ResnetCifarError, UsageError
from resnet_cifar.models import resnet18

CPU = torch.device("cpu")
FP32 = Precision(device=CPU, amp=False, amp_dtype=None, channels_last=False)


class TinyNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.fc = nn.Linear(8 * 4 * 4, 10)

    def forward(self, x: Tensor) -> Tensor:
        features = nn.functional.avg_pool2d(torch.relu(self.bn(self.conv(x))), 2)
        return self.fc(features.flatten(1))


def _batch(size: int = 8, seed: int = 0) -> tuple[Tensor, Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(size, 3, 8, 8, generator=generator), torch.arange(size) % 10


def _model(seed: int = 0) -> TinyNet:
    torch.manual_seed(seed)
    return TinyNet()


def _sgd_step(model: nn.Module, precision: Precision = FP32, **kwargs) -> TrainStep:
    optimizer = torch.optim.SGD(model.parameters(), lr=kwargs.pop("lr", 0.1))
    scaler = make_grad_scaler(precision)
    return TrainStep(model, optimizer, nn.CrossEntropyLoss(), precision=precision, scaler=scaler, **kwargs)


def _state(model: nn.Module) -> dict[str, Tensor]:
    return {key: value.clone() for key, value in model.state_dict().items()}


def test_steps_reduce_the_loss_on_a_fixed_batch() -> None:
    model = _model()
    step = _sgd_step(model, lr=0.2)
    images, labels = _batch()
    outputs = [step(images, labels) for _ in range(20)]
    assert step.global_step == 20
    first, last = outputs[0], outputs[-1]
    assert isinstance(first, StepOutput)
    assert first.loss.dtype == torch.float32 and not first.loss.requires_grad
    assert last.loss.item() < 0.5 * first.loss.item()
    assert last.correct.item() > first.correct.item()
    assert 0 <= first.correct.item() <= len(labels) and last.correct.dtype == torch.int64


def test_resnet18_bf16_autocast_step_is_finite_and_learns() -> None:
    torch.manual_seed(0)
    # The ImageNet stem (32 px shrinks to 8 px at once): the same blocks under autocast, far cheaper.
    model = resnet18(num_classes=10, stem="imagenet")
    precision = resolve_precision(CPU, amp=True, amp_dtype="bf16")
    scaler = make_grad_scaler(precision)
    optimizer = build_optimizer(model, name="sgd", lr=0.05)
    seen_dtypes = []
    model.fc.register_forward_hook(lambda module, args, output: seen_dtypes.append(output.dtype))
    step = TrainStep(model, optimizer, build_loss(0.1), precision=precision, scaler=scaler, grad_clip=5.0)
    images, labels = torch.randn(4, 3, 32, 32), torch.tensor([0, 1, 2, 3])
    losses = [step(images, labels).loss for _ in range(3)]
    assert seen_dtypes[0] == torch.bfloat16  # the forward really ran under autocast
    assert all(loss.dtype == torch.float32 and torch.isfinite(loss) for loss in losses)
    assert losses[-1] < losses[0]
    assert all(param.dtype == torch.float32 for param in model.parameters())  # master weights stay fp32


def test_scaler_gradients_are_unscaled_before_clipping(monkeypatch: pytest.MonkeyPatch) -> None:
    grad_clip = 0.05
    model = _model()
    reference = copy.deepcopy(model)
    images, labels = _batch()
    # The true (unscaled) gradient norm, computed without a scaler.
    nn.CrossEntropyLoss()(reference(images), labels).backward()
    true_norm = torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in reference.parameters()]))
    assert true_norm > grad_clip  # so clipping really changes the gradients

    norms_seen_by_clip = []
    real_clip = torch.nn.utils.clip_grad_norm_

    def spy_clip(parameters, max_norm, *args, **kwargs):
        parameters = list(parameters)
        norms_seen_by_clip.append(torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in parameters])))
        return real_clip(parameters, max_norm, *args, **kwargs)

    monkeypatch.setattr(torch.nn.utils, "clip_grad_norm_", spy_clip)
    # fp16 scaling is CUDA-only in the product; torch's CPU GradScaler exercises the same code path.
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**12, enabled=True)
    lr = 0.1
    optimizer = torch.optim.SGD(model.parameters(), lr=lr)
    step = TrainStep(model, optimizer, nn.CrossEntropyLoss(), precision=FP32, scaler=scaler, grad_clip=grad_clip)
    before = [param.detach().clone() for param in model.parameters()]
    step(images, labels)

    assert norms_seen_by_clip[0] == pytest.approx(true_norm.item(), rel=1e-4)  # not 4096 times larger
    grads = [param.grad for param in model.parameters()]
    assert torch.linalg.vector_norm(torch.stack([g.norm() for g in grads])) <= grad_clip * (1 + 1e-5)
    for old, param in zip(before, model.parameters()):  # plain SGD applied the clipped, unscaled gradient
        torch.testing.assert_close(old - param.detach(), lr * param.grad)


def test_scheduler_is_stepped_once_per_step_and_ema_updates() -> None:
    model = _model()
    optimizer = build_optimizer(model, name="sgd", lr=0.1, momentum=0.9)
    scheduler = build_scheduler(optimizer, name="step", epochs=2, steps_per_epoch=3, step_size=1, gamma=0.5)
    decay = 0.75
    ema = build_ema(model, decay)
    step = TrainStep(
        model, optimizer, build_loss(), precision=FP32, scaler=make_grad_scaler(FP32), scheduler=scheduler, ema=ema
    )
    images, labels = _batch()
    step(images, labels)
    # The first update copies the weights and buffers (batch-norm statistics included).
    for key, value in model.state_dict().items():
        torch.testing.assert_close(ema.module.state_dict()[key], value)
    ema_before = _state(ema.module)
    for _ in range(2):
        step(images, labels)
    assert scheduler.last_epoch == 3 and optimizer.param_groups[0]["lr"] == pytest.approx(0.05)
    assert int(ema.n_averaged) == 3
    ema_two_steps_later = _state(ema.module)
    step(images, labels)
    model_now = model.state_dict()
    for key in ("conv.weight", "bn.running_mean", "fc.bias"):
        expected = decay * ema_two_steps_later[key] + (1 - decay) * model_now[key]
        torch.testing.assert_close(ema.module.state_dict()[key], expected)
        assert not torch.equal(ema.module.state_dict()[key], ema_before[key])
    assert ema.module is not model and ema.module.conv.weight is not model.conv.weight


def test_ema_loads_averaged_model_state_and_continues_as_averaged_model_would() -> None:
    # Checkpoints before the sync-free EMA hold torch's AveragedModel state dict: it loads, and the
    # next updates are those AveragedModel would make, bit for bit.
    model = _model()
    reference = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(0.9), use_buffers=True)
    for seed in range(2):
        model(_batch(seed=seed)[0])  # batch-norm statistics move; so do the weights, below
        with torch.no_grad():
            for param in model.parameters():
                param.mul_(0.99)
        reference.update_parameters(model)
    ema = build_ema(_model(seed=1), 0.9)
    ema.load_state_dict(copy.deepcopy(reference.state_dict()))
    assert list(ema.state_dict()) == list(reference.state_dict())
    for seed in range(2, 4):
        model(_batch(seed=seed)[0])
        reference.update_parameters(model)
        ema.update_parameters(model)
    for (name, expected), actual in zip(reference.state_dict().items(), ema.state_dict().values()):
        assert torch.equal(expected, actual), name
    assert int(ema.n_averaged) == 4
    # A fresh EMA (n_averaged 0) loaded into one that has averaged copies again on its next update.
    ema.load_state_dict(build_ema(model, 0.9).state_dict())
    ema.update_parameters(model)
    for key, value in model.state_dict().items():
        assert torch.equal(ema.module.state_dict()[key], value), key


@pytest.mark.parametrize("poison", ["loss", "input"])
def test_non_finite_loss_stops_before_the_update(poison: str) -> None:
    model = _model()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    scheduler = build_scheduler(optimizer, name="cosine", epochs=1, steps_per_epoch=10)
    ema = build_ema(model, 0.9)
    real_loss = nn.CrossEntropyLoss()
    poisoned = {"on": False}

    def loss_fn(logits: Tensor, labels: Tensor) -> Tensor:
        loss = real_loss(logits, labels)
        return loss * float("nan") if poison == "loss" and poisoned["on"] else loss

    step = TrainStep(
        model, optimizer, loss_fn, precision=FP32, scaler=make_grad_scaler(FP32), scheduler=scheduler, ema=ema
    )
    images, labels = _batch()
    for _ in range(3):
        step(images, labels)
    weights, ema_weights = _state(model), _state(ema)
    momentum = [optimizer.state[p]["momentum_buffer"].clone() for p in model.parameters()]
    lr = optimizer.param_groups[0]["lr"]

    poisoned["on"] = True
    bad_images = images.clone()
    if poison == "input":
        bad_images[0, 0, 0, 0] = float("nan")
    with pytest.raises(NonFiniteLossError, match="non-finite loss \\(nan\\) at global step 3;") as caught:
        step(bad_images, labels)
    error = caught.value
    assert isinstance(error, ResnetCifarError) and error.exit_code == 1 and error.step_index == 3
    assert "\n" not in str(error)
    assert step.global_step == 3
    assert scheduler.last_epoch == 3 and optimizer.param_groups[0]["lr"] == lr
    for key, value in model.state_dict().items():
        # batch-norm running statistics can take the NaN forward; the trainable weights must not
        if "running" not in key and "num_batches" not in key:
            assert torch.equal(value, weights[key]), key
    for key, value in ema.state_dict().items():
        assert torch.equal(value, ema_weights[key]), key
    for param, buffer in zip(model.parameters(), momentum):
        assert torch.equal(optimizer.state[param]["momentum_buffer"], buffer)


def test_global_step_is_restorable_and_names_the_failing_step() -> None:
    step = _sgd_step(_model(), lr=0.1)
    step.global_step = 1234  # as the trainer does on resume
    images, labels = _batch()
    step(images, labels)
    assert step.global_step == 1235
    step.loss_fn = lambda logits, labels: logits.sum() * float("inf")
    with pytest.raises(NonFiniteLossError, match="at global step 1235"):
        step(images, labels)


def test_build_loss_label_smoothing() -> None:
    logits = torch.tensor([[10.0, -10.0], [-10.0, 10.0]])
    labels = torch.tensor([0, 1])
    assert build_loss(0.0)(logits, labels) < 1e-6
    assert build_loss(0.2).label_smoothing == 0.2
    assert build_loss(0.2)(logits, labels) > 1.0  # smoothing penalises confident logits
    for bad in (-0.1, 1.0, float("nan")):
        with pytest.raises(UsageError, match="label smoothing"):
            build_loss(bad)


def test_bad_ema_decay_and_grad_clip_are_usage_errors() -> None:
    model = _model()
    for bad in (0.0, 1.0, 1.5):
        with pytest.raises(UsageError, match="EMA decay"):
            build_ema(model, bad)
    with pytest.raises(UsageError, match="gradient clipping"):
        _sgd_step(model, grad_clip=0.0)


def test_transform_is_applied_before_the_forward() -> None:
    seen: list[tuple[int, ...]] = []

    class Probe(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = torch.nn.Linear(3, 2)

        def forward(self, images: torch.Tensor) -> torch.Tensor:
            seen.append(tuple(images.shape))
            return self.fc(images.mean(dim=(2, 3)))

    model = Probe()
    precision = resolve_precision(torch.device("cpu"), amp=False)
    step = TrainStep(
        model,
        torch.optim.SGD(model.parameters(), lr=0.1),
        build_loss(),
        precision=precision,
        scaler=make_grad_scaler(precision),
        transform=lambda images: torch.nn.functional.interpolate(images, size=(48, 48)),
    )
    step(torch.randn(2, 3, 32, 32), torch.tensor([0, 1]))
    assert seen == [(2, 3, 48, 48)]
