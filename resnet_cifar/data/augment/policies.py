"""The per-image policies of resnet_cifar.choices.policies as batched tensor draws and ops.

A policy's randomness is drawn up front for a whole epoch (`draw_policy`, from the epoch plan's
generator) as one op id and one signed magnitude per image and op slot; applying it is then
deterministic (`apply_policy`), so a seed fixes every augmented image and a resumed run sees the
same ones. The draws follow torchvision.transforms.v2 (the order of its random calls included
where it matters for the distribution: signs are negated when torch.rand(()) <= 0.5).

One draw function per sampler of the registry, bound to it at import.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor

from resnet_cifar.choices import bound
from resnet_cifar.choices.policies import POLICIES, SAMPLERS, OpRange, PolicySpec
from resnet_cifar.data.augment.ops import IDENTITY, OP_ID, apply_ops, group_sizes, op_groups


@dataclass(frozen=True)
class SpaceTables:
    """A space as tensors: global op ids [K], magnitudes [K, bins] (0 where unused), signed [K]."""

    op_ids: Tensor
    magnitudes: Tensor
    signed: Tensor


def _magnitudes(op: OpRange, bins: int) -> Tensor | None:
    """torchvision's magnitudes of one op over ``bins`` (None for an op that takes none)."""
    if op.low is None or op.high is None:
        return None
    if op.op == "Posterize":  # whole bits kept, as torchvision rounds them
        return (op.low - (torch.arange(bins) / ((bins - 1) / (op.low - op.high)))).round().int()
    return torch.linspace(op.low, op.high, bins)


def space_tables(space: tuple[OpRange, ...], bins: int) -> SpaceTables:
    magnitudes = torch.zeros(len(space), bins, dtype=torch.float32)
    for row, op in enumerate(space):
        values = _magnitudes(op, bins)
        if values is not None:
            magnitudes[row] = values.to(torch.float32)
    return SpaceTables(
        op_ids=torch.tensor([OP_ID[op.op] for op in space]),
        magnitudes=magnitudes,
        signed=torch.tensor([op.signed for op in space]),
    )


@dataclass(frozen=True)
class PolicyPlan:
    """Per image and op slot (applied in slot order): the op id and its signed magnitude.

    ``host_groups`` is the ops' group ids as a host array, made where the plan is drawn (on the
    CPU) and kept by ``to``: each batch's group sizes are counted from it, so applying a plan on
    CUDA never reads a tensor back from the device.
    """

    ops: Tensor  # int64 [n, slots]
    magnitudes: Tensor  # float32 [n, slots]
    host_groups: np.ndarray = field(default=None, repr=False, compare=False)  # type: ignore[assignment]

    def __post_init__(self) -> None:
        if self.host_groups is None:
            if self.ops.device.type != "cpu":
                raise ValueError("a PolicyPlan is drawn on the CPU; move it with .to(device)")
            object.__setattr__(self, "host_groups", op_groups(self.ops.numpy()))

    def to(self, device: torch.device) -> PolicyPlan:
        return PolicyPlan(self.ops.to(device), self.magnitudes.to(device), self.host_groups)


def _signed(magnitude: Tensor, signed: Tensor, generator: torch.Generator) -> Tensor:
    # torchvision negates a signed op's magnitude when torch.rand(()) <= 0.5.
    negate = signed & (torch.rand(magnitude.shape, generator=generator) <= 0.5)
    return torch.where(negate, -magnitude, magnitude)


def _draw_sub_policy(spec: PolicySpec, count: int, generator: torch.Generator, ops: int, magnitude: int) -> PolicyPlan:
    """One sub-policy per image; each of its steps applied with its probability at its bin."""
    tables = space_tables(spec.space, spec.bins)
    row_of = {op.op: row for row, op in enumerate(spec.space)}
    slots = len(spec.sub_policies[0])
    steps = [step for sub_policy in spec.sub_policies for step in sub_policy]
    rows = torch.tensor([row_of[name] for name, _, _ in steps]).view(-1, slots)
    probability = torch.tensor([p for _, p, _ in steps]).view(-1, slots)
    bins = torch.tensor([b if b is not None else 0 for _, _, b in steps]).view(-1, slots)
    chosen = torch.randint(len(spec.sub_policies), (count,), generator=generator)
    row = rows[chosen]  # [count, slots]
    applied = torch.rand((count, slots), generator=generator) <= probability[chosen]
    signed = _signed(tables.magnitudes[row, bins[chosen]], tables.signed[row], generator)
    op_ids = torch.where(applied, tables.op_ids[row], torch.full_like(row, IDENTITY))
    return PolicyPlan(op_ids, torch.where(applied, signed, torch.zeros_like(signed)))


def _draw_n_ops(spec: PolicySpec, count: int, generator: torch.Generator, ops: int, magnitude: int) -> PolicyPlan:
    """``ops`` ops per image, uniformly from the space, at magnitude bin ``magnitude``."""
    tables = space_tables(spec.space, spec.bins)
    rows = torch.randint(len(tables.op_ids), (count, ops), generator=generator)
    signed = _signed(tables.magnitudes[rows, magnitude], tables.signed[rows], generator)
    return PolicyPlan(tables.op_ids[rows], signed)


def _draw_one_op(spec: PolicySpec, count: int, generator: torch.Generator, ops: int, magnitude: int) -> PolicyPlan:
    """One op per image, uniformly from the space, at a uniform bin."""
    tables = space_tables(spec.space, spec.bins)
    rows = torch.randint(len(tables.op_ids), (count, 1), generator=generator)
    bins = torch.randint(spec.bins, (count, 1), generator=generator)
    signed = _signed(tables.magnitudes[rows, bins], tables.signed[rows], generator)
    return PolicyPlan(tables.op_ids[rows], signed)


_Draw = Callable[[PolicySpec, int, torch.Generator, int, int], PolicyPlan]
_DRAWS: dict[str, _Draw] = dict(
    bound({"sub_policy": _draw_sub_policy, "n_ops": _draw_n_ops, "one_op": _draw_one_op}, SAMPLERS, "tensor policy samplers")
)


def draw_policy(
    policy: str, count: int, generator: torch.Generator, *, randaugment_ops: int = 2, randaugment_magnitude: int = 9
) -> PolicyPlan | None:
    """The policy's random choices for `count` images, or None for a policy without a sampler ("none")."""
    spec = POLICIES[policy]
    if spec.sampler is None:
        return None
    return _DRAWS[spec.sampler](spec, count, generator, randaugment_ops, randaugment_magnitude)


def apply_policy(images: Tensor, plan: PolicyPlan, start: int, stop: int) -> Tensor:
    """Images start..stop-1 of the plan (uint8 [B, 3, H, W], on the plan's device), augmented."""
    ops, magnitudes = plan.ops[start:stop], plan.magnitudes[start:stop]
    for slot in range(ops.shape[1]):
        sizes = group_sizes(plan.host_groups[start:stop, slot])
        images = apply_ops(images, ops[:, slot], magnitudes[:, slot], sizes)
    return images
