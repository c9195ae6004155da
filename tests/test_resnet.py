"""The hand-written ResNet against torchvision's: keys, shapes, parameter counts and outputs."""

from __future__ import annotations

import pytest
import torch
import torchvision
from torch import nn

import resnet_cifar.models as models
from resnet_cifar.choices.models import DEPTHS, STEMS
from resnet_cifar.config import ModelConfig
from resnet_cifar.errors import UsageError
from resnet_cifar.models import RESNET_BUILDERS, BasicBlock, Bottleneck, ResNet, resnet18, resnet50


def randomize_(model: nn.Module, seed: int = 0) -> nn.Module:
    """Random weights with non-trivial batch-norm statistics and affine parameters.

    Fresh batch norms (mean 0, var 1, weight 1, bias 0) would hide a swapped or skipped
    batch norm; random ones make every layer count in the output.
    """
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                size = module.num_features
                module.running_mean.copy_(torch.randn(size, generator=generator) * 0.1)
                module.running_var.copy_(torch.rand(size, generator=generator) + 0.5)
                module.weight.copy_(torch.rand(size, generator=generator) + 0.5)
                module.bias.copy_(torch.randn(size, generator=generator) * 0.1)
            elif isinstance(module, (nn.Conv2d, nn.Linear)):
                module.weight.copy_(torch.randn(module.weight.shape, generator=generator) * module.weight.std())
                if module.bias is not None:
                    module.bias.copy_(torch.randn(module.bias.shape, generator=generator) * 0.1)
    return model


def torchvision_cifar_resnet50(num_classes: int = 10) -> nn.Module:
    """torchvision's ResNet-50 patched to the cifar stem: 3x3 stride-1 conv1, no max-pool."""
    model = torchvision.models.resnet50(num_classes=num_classes)
    model.conv1 = nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=1, bias=False)
    model.maxpool = nn.Identity()
    return model


def assert_same_state_layout(ours: nn.Module, theirs: nn.Module) -> None:
    ours_state, their_state = ours.state_dict(), theirs.state_dict()
    assert list(ours_state) == list(their_state)
    for key, value in their_state.items():
        assert ours_state[key].shape == value.shape, key
        assert ours_state[key].dtype == value.dtype, key


def assert_close_outputs(ours: torch.Tensor, theirs: torch.Tensor, tolerance: float = 1e-5) -> None:
    """Equal to ``tolerance`` relative to the output scale (random batch norms make logits large)."""
    assert ours.shape == theirs.shape
    scale = theirs.abs().max().item()
    assert scale > 0
    assert (ours - theirs).abs().max().item() <= tolerance * max(scale, 1.0)


def count_parameters(model: nn.Module) -> int:
    return sum(param.numel() for param in model.parameters())


def test_parameter_counts_match_the_published_figures() -> None:
    assert count_parameters(resnet50(num_classes=1000, stem="imagenet")) == 25_557_032
    assert count_parameters(resnet50()) == 23_520_842
    assert count_parameters(torchvision.models.resnet50()) == 25_557_032


def test_imagenet_stem_state_dict_has_torchvisions_keys_order_and_shapes() -> None:
    assert_same_state_layout(resnet50(num_classes=1000, stem="imagenet"), torchvision.models.resnet50())


def test_cifar_stem_differs_from_torchvision_only_in_conv1() -> None:
    ours = resnet50().state_dict()
    theirs = torchvision.models.resnet50(num_classes=10).state_dict()
    assert list(ours) == list(theirs)
    assert ours["conv1.weight"].shape == (64, 3, 3, 3)
    assert theirs["conv1.weight"].shape == (64, 3, 7, 7)
    assert [key for key in ours if ours[key].shape != theirs[key].shape] == ["conv1.weight"]
    assert_same_state_layout(resnet50(), torchvision_cifar_resnet50())


@pytest.mark.parametrize("depth", [18, 34, 101])
def test_other_depths_have_torchvisions_layout(depth: int) -> None:
    ours = getattr(models, f"resnet{depth}")(num_classes=1000, stem="imagenet")
    theirs = getattr(torchvision.models, f"resnet{depth}")()
    assert_same_state_layout(ours, theirs)
    assert count_parameters(ours) == count_parameters(theirs)


def test_blocks_follow_resnet_v1_5() -> None:
    model = resnet50()
    first = model.layer2[0]
    assert isinstance(first, Bottleneck)
    # The stride sits on the 3x3 convolution, and the projection shortcut strides too.
    assert first.conv1.stride == (1, 1) and first.conv2.stride == (2, 2) and first.conv3.stride == (1, 1)
    assert first.downsample[0].stride == (2, 2)
    # Identity shortcuts inside a stage, projection at its start (also layer1: 64 -> 256 channels).
    assert model.layer2[1].downsample is None
    assert model.layer1[0].downsample is not None and model.layer1[0].downsample[0].stride == (1, 1)
    assert isinstance(resnet18().layer1[0], BasicBlock) and resnet18().layer1[0].downsample is None


@torch.no_grad()
def test_imagenet_stem_matches_torchvision_at_224_pixels() -> None:
    theirs = randomize_(torchvision.models.resnet50()).eval()
    ours = resnet50(num_classes=1000, stem="imagenet").eval()
    ours.load_state_dict(theirs.state_dict())
    images = torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(1))
    assert_close_outputs(ours(images), theirs(images))


@torch.no_grad()
def test_imagenet_stem_matches_torchvision_at_32_pixels() -> None:
    theirs = randomize_(torchvision.models.resnet50(), seed=2).eval()
    ours = resnet50(num_classes=1000, stem="imagenet").eval()
    ours.load_state_dict(theirs.state_dict())
    images = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    assert_close_outputs(ours(images), theirs(images))


@torch.no_grad()
def test_cifar_stem_matches_patched_torchvision_at_32_pixels() -> None:
    theirs = randomize_(torchvision_cifar_resnet50(), seed=4).eval()
    ours = resnet50().eval()
    ours.load_state_dict(theirs.state_dict())
    images = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(5))
    logits = ours(images)
    assert logits.shape == (2, 10)
    assert_close_outputs(logits, theirs(images))


@torch.no_grad()
def test_resnet18_matches_torchvision() -> None:
    theirs = randomize_(torchvision.models.resnet18(), seed=6).eval()
    ours = resnet18(num_classes=1000, stem="imagenet").eval()
    ours.load_state_dict(theirs.state_dict())
    images = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(7))
    assert_close_outputs(ours(images), theirs(images))


@torch.no_grad()
def test_channels_last_gives_the_same_outputs() -> None:
    model = randomize_(resnet50(), seed=8).eval()
    images = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(9))
    reference = model(images)
    model = model.to(memory_format=torch.channels_last)
    assert model.conv1.weight.is_contiguous(memory_format=torch.channels_last)
    assert_close_outputs(model(images.contiguous(memory_format=torch.channels_last)), reference)


@torch.no_grad()
def test_bf16_autocast_forward_on_cpu_is_finite_and_close_to_fp32() -> None:
    model = resnet50().eval()
    images = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(10))
    reference = model(images)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = model(images)
    assert logits.dtype == torch.bfloat16
    assert torch.isfinite(logits).all()
    error = (logits.float() - reference).abs().max().item()
    assert error <= 0.05 * reference.abs().max().item()


def test_dropout_adds_no_state_and_only_acts_in_training() -> None:
    # The imagenet stem keeps 32-pixel inputs cheap; dropout sits in the same place for both stems.
    plain = resnet50(stem="imagenet")
    dropping = resnet50(stem="imagenet", dropout=0.5)
    assert_same_state_layout(dropping, plain)
    dropping.load_state_dict(plain.state_dict())
    images = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(11))
    with torch.no_grad():
        assert torch.equal(dropping.eval()(images), plain.eval()(images))
        features = dropping.features(images)
        torch.manual_seed(0)
        trained = dropping.train().fc(dropping.dropout(features))
    assert isinstance(dropping.dropout, nn.Dropout) and dropping.dropout.p == 0.5
    assert not torch.allclose(trained, dropping.fc(features))


def test_zero_init_residual_zeroes_the_last_batch_norm_of_each_block() -> None:
    model = resnet50(zero_init_residual=True)
    blocks = [block for block in model.modules() if isinstance(block, Bottleneck)]
    assert len(blocks) == 16
    assert all(torch.count_nonzero(block.bn3.weight) == 0 for block in blocks)
    assert all(torch.all(block.bn2.weight == 1) for block in blocks)
    assert torch.all(model.bn1.weight == 1)
    basic = [block for block in resnet18(zero_init_residual=True).modules() if isinstance(block, BasicBlock)]
    assert basic and all(torch.count_nonzero(block.bn2.weight) == 0 for block in basic)
    default = [block for block in resnet50().modules() if isinstance(block, Bottleneck)]
    assert all(torch.count_nonzero(block.bn3.weight) > 0 for block in default)


def test_training_step_reaches_every_parameter() -> None:
    model = resnet50().train()
    images = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(12))
    loss = nn.functional.cross_entropy(model(images), torch.tensor([1, 7]))
    loss.backward()
    assert torch.isfinite(loss)
    assert all(param.grad is not None and torch.isfinite(param.grad).all() for param in model.parameters())
    assert model.bn1.num_batches_tracked.item() == 1


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"num_classes": 0}, "num_classes must be a positive integer"),
        ({"dropout": 1.0}, "dropout must be in [0, 1)"),
        ({"dropout": -0.1}, "dropout must be in [0, 1)"),
    ],
)
def test_bad_options_are_usage_errors(options: dict[str, object], message: str) -> None:
    with pytest.raises(UsageError, match=message.replace("[", r"\[").replace("(", r"\(").replace(")", r"\)")):
        resnet50(**options)  # type: ignore[arg-type]


def test_depths_and_stems_are_the_registrys_and_the_config_checks_them() -> None:
    # One list each (resnet_cifar.choices.models): the config refuses other values naming the flag,
    # the models assert (a library caller bypassing the config gets no second message).
    with pytest.raises(UsageError, match="^--stem must be one of cifar, imagenet, got 'tiny'$"):
        ModelConfig(stem="tiny")
    with pytest.raises(UsageError, match="^--depth must be one of 18, 34, 50, 101, 152, got 20$"):
        ModelConfig(depth=20)
    with pytest.raises(AssertionError, match="unknown stem 'tiny'"):
        resnet50(stem="tiny")
    assert list(RESNET_BUILDERS) == list(DEPTHS) and list(STEMS) == ["cifar", "imagenet"]
    for depth in (18, 50):
        model = RESNET_BUILDERS[depth]()
        stages = (model.layer1, model.layer2, model.layer3, model.layer4)
        assert tuple(len(stage) for stage in stages) == DEPTHS[depth].stage_blocks
        assert isinstance(model.layer1[0], BasicBlock if DEPTHS[depth].block == "basic" else Bottleneck)


def test_builders_are_keyword_only_and_exported() -> None:
    with pytest.raises(TypeError):
        resnet50(10)  # type: ignore[misc]
    model = models.resnet152(num_classes=3)
    assert isinstance(model, ResNet) and model.fc.out_features == 3 and model.stem == "cifar"
    assert len(model.layer3) == 36


def test_deterministic_mode_pools_with_a_mean_and_gives_the_same_outputs() -> None:
    # --deterministic on CUDA: AdaptiveAvgPool2d's backward has no deterministic kernel there, so
    # the model averages with a mean instead; same state dict, same outputs and gradients.
    model = randomize_(resnet50(), seed=10).eval()
    keys_before = {key: value.clone() for key, value in model.state_dict().items()}
    images = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(11))
    pool_calls: list[int] = []
    model.avgpool.register_forward_hook(lambda *_: pool_calls.append(1))

    def outputs_and_grads() -> tuple[torch.Tensor, list[torch.Tensor]]:
        model.zero_grad()
        out = model(images)
        out.square().sum().backward()
        return out.detach(), [parameter.grad.clone() for parameter in model.parameters()]

    pooled, pooled_grads = outputs_and_grads()
    assert len(pool_calls) == 1
    was_enabled = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        averaged, averaged_grads = outputs_and_grads()
    finally:
        torch.use_deterministic_algorithms(was_enabled)
    assert len(pool_calls) == 1, "the deterministic path must not call AdaptiveAvgPool2d"
    assert model.state_dict().keys() == keys_before.keys()
    assert all(value.equal(keys_before[key]) for key, value in model.state_dict().items())
    torch.testing.assert_close(averaged, pooled, rtol=0, atol=1e-6)
    for ours, theirs in zip(averaged_grads, pooled_grads, strict=True):
        torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-6)
