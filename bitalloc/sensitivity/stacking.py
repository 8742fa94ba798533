"""Stacks of same-shape units, so that GPTQ runs one batched column loop per stack (``quantize_gptq_stack``).

Profiling a model runs GPTQ for every plain GPTQ candidate of every unit. One column loop per unit costs
a few kernel launches per column: on a GPU the launches, not the arithmetic, set the time. Units of one
shape (the q projections of all layers, say) share a loop instead, each with its own Hessian.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from bitalloc.quantizers.candidate import Candidate, QuantKind
from bitalloc.quantizers.gptq import quantize_gptq_stack
from bitalloc.quantizers.quantized_weight import QuantizedWeight

CPU_STACK_BYTES = 256 << 20  # on a CPU stacking saves little: keep the working set small
GPU_STACK_BYTES = 4 << 30


def stack_bytes(device: torch.device) -> int:
    """The default upper bound on one stack's float32 working copy on ``device``."""
    return GPU_STACK_BYTES if device.type == "cuda" else CPU_STACK_BYTES


def plain_gptq(palette: Sequence[Candidate], shape: tuple[int, int]) -> list[Candidate]:
    """The foundation-format GPTQ candidates of ``palette`` that fit ``shape`` (the stackable ones)."""
    return [c for c in palette if c.kind is QuantKind.GPTQ and c.foundation_format and c.supports(shape)]


def shape_stacks(
    shapes: Sequence[tuple[int, int]], n_copies: Sequence[int], max_bytes: int
) -> list[list[int]]:
    """Unit indices grouped by shape (in first-seen order), each group cut so that its working copy
    (units × in × out × copies float32) stays under ``max_bytes``; a unit alone may exceed it."""
    groups: dict[tuple[int, int], list[int]] = {}
    for i, shape in enumerate(shapes):
        groups.setdefault(tuple(shape), []).append(i)
    stacks: list[list[int]] = []
    for shape, members in groups.items():
        current: list[int] = []
        for i in members:
            per_unit = 4 * shape[0] * shape[1] * max(1, n_copies[i])
            if current and (len(current) + 1) * per_unit > max_bytes:
                stacks.append(current)
                current = []
            current.append(i)
        stacks.append(current)
    return stacks


def gptq_for_stack(
    weights: Sequence[torch.Tensor],
    hessians: Sequence[torch.Tensor | None],
    palette: Sequence[Candidate],
    units: Sequence[str],
) -> list[dict[Candidate, QuantizedWeight]]:
    """Every plain GPTQ candidate of ``palette`` for each weight of one stack (one shape), batched."""
    shape = tuple(weights[0].shape)
    gptq = plain_gptq(palette, shape)  # type: ignore[arg-type]
    if not gptq or any(h is None for h in hessians):
        return [{} for _ in weights]  # the per-unit path reports a missing Hessian by name
    stacked = quantize_gptq_stack(weights, hessians, gptq, units=units)  # type: ignore[arg-type]
    return [dict(zip(gptq, qs, strict=True)) for qs in stacked]
