"""A plan for the decoder under a latency budget, without calibration data.

Each decoder linear gets the candidate of ``palette`` that minimises the summed relative weight error
``||W - Q(W)||^2 / ||W||^2`` while the summed latency-table time of the linears stays within the budget.
q/k/v and gate/up are tied (one candidate per group), so the decoder fuses them into one launch each. The
allocator solves it (exact MILP for a model of this size); the tabled time of the plan is its prediction.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from bitalloc.allocator.problem import AllocationProblem, Budget
from bitalloc.allocator.solve import solve
from bitalloc.kernels.latency import LatencyTable
from bitalloc.quantizers.candidate import Candidate
from bitalloc.quantizers.quantize import quantize

FUSED = {"q_proj": "qkv", "k_proj": "qkv", "v_proj": "qkv", "gate_proj": "gate_up", "up_proj": "gate_up"}


@dataclass(frozen=True)
class LatencyPlan:
    """Linear name -> candidate name, the plan's tabled latency and its weight error (summed over linears)."""

    assignment: dict[str, str]
    latency_us: float
    weight_error: float
    budget_us: float
    solver: str


def decoder_linears(model: nn.Module) -> list[tuple[str, nn.Linear, str]]:
    """``(name, linear, tie key)`` of every Linear in the decoder layers (names as ``named_modules`` gives
    them under ``model.model.layers``); the tie key groups what the decoder fuses."""
    out = []
    for layer_name, layer in model.model.layers.named_children():
        for name, module in layer.named_modules():
            if isinstance(module, nn.Linear):
                leaf = name.rpartition(".")[2]
                out.append((f"{layer_name}.{name}", module, f"{layer_name}.{FUSED.get(leaf, leaf)}"))
    return out


def plan_under_latency(
    model: nn.Module, table: LatencyTable, palette: Sequence[str], budget_us: float, *, batch: int = 1
) -> LatencyPlan:
    """The least-weight-error plan of the decoder linears whose tabled latency fits ``budget_us``."""
    linears = decoder_linears(model)
    cands = [Candidate.parse(c) for c in palette]
    n, k = len(linears), len(cands)
    loss = np.zeros((n, k))
    nbytes = np.zeros((n, k), dtype=np.int64)
    latency = np.zeros((n, k))
    feasible = np.zeros((n, k), dtype=bool)
    for u, (_, linear, _) in enumerate(linears):
        weight = linear.weight.detach().float()  # (out, in)
        shape = tuple(weight.shape)
        for c, cand in enumerate(cands):
            if cand.unsupported_reason(shape) is not None:
                continue
            restored = quantize(weight, cand).dequantize(torch.float32)
            loss[u, c] = float((weight - restored).square().sum() / weight.square().sum())
            nbytes[u, c] = cand.nbytes(shape)
            latency[u, c] = table.predict(cand, shape, batch)
            feasible[u, c] = True
    ties = {key: i for i, key in enumerate(dict.fromkeys(t for _, _, t in linears))}
    problem = AllocationProblem(
        units=tuple(name for name, _, _ in linears),
        candidates=tuple(c.name for c in cands),
        loss=loss,
        nbytes=nbytes,
        feasible=feasible,
        numel=np.array([m.weight.numel() for _, m, _ in linears], dtype=np.int64),
        tie=np.array([ties[t] for _, _, t in linears], dtype=np.int64),
        latency=latency,
    )
    solution = solve(problem, Budget(max_latency=budget_us))
    rows = np.arange(n)
    return LatencyPlan(
        assignment={name: cands[c].name for (name, _, _), c in zip(linears, solution.choice, strict=True)},
        latency_us=float(latency[rows, solution.choice].sum()),
        weight_error=float(loss[rows, solution.choice].sum()),
        budget_us=budget_us,
        solver=solution.solver,
    )
