"""A plan for the decoder under a latency budget, without calibration data.

Each decoder linear gets the candidate of ``palette`` that minimises the summed relative weight error
``||W - Q(W)||^2 / ||W||^2`` while the summed latency-table time of the linears stays within the budget.
q/k/v and gate/up are tied (one candidate per group), so the decoder fuses them into one launch each, and a
group is priced as that launch: the table's time for the stacked shape, shared among the members by rows (a
2048x2048 launch costs less than two 1024x2048 ones). The allocator solves it (exact MILP for a model of this
size); the tabled time of the plan is its prediction (``tabled_us``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from bitalloc.allocator.problem import AllocationProblem, Budget
from bitalloc.allocator.solve import solve
from bitalloc.errors import InvalidInput
from bitalloc.kernels.latency import LatencyTable
from bitalloc.quantizers.candidate import Candidate
from bitalloc.quantizers.quant_linear import QuantLinear
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


def decoder_linears(model: nn.Module) -> list[tuple[str, nn.Module, str]]:
    """``(name, linear, tie key)`` of every Linear (float or ``QuantLinear``) in the decoder layers (names as
    ``named_modules`` gives them under ``model.model.layers``); the tie key groups what the decoder fuses."""
    out = []
    for layer_name, layer in model.model.layers.named_children():
        for name, module in layer.named_modules():
            if isinstance(module, (nn.Linear, QuantLinear)):
                leaf = name.rpartition(".")[2]
                out.append((f"{layer_name}.{name}", module, f"{layer_name}.{FUSED.get(leaf, leaf)}"))
    return out


def launch_shares(
    linears: Sequence[tuple[str, nn.Module, str]], formats: Sequence[str] | None = None
) -> list[tuple[tuple[int, int], float]]:
    """Per linear: the weight shape of the launch it runs in and its share of that launch's time (its rows
    over the launch's rows). Consecutive members of a tie group with one format (``formats``, one per linear;
    None: a tie group shares its format) run as one launch of their stacked rows, as the decoder fuses."""
    keys = [(tie, None if formats is None else formats[u]) for u, (_, _, tie) in enumerate(linears)]
    shares: list[tuple[tuple[int, int], float]] = []
    start = 0
    while start < len(linears):
        stop = start + 1
        while stop < len(linears) and keys[stop] == keys[start]:
            stop += 1
        members = [linear for _, linear, _ in linears[start:stop]]
        rows = sum(m.out_features for m in members)
        shares += [((rows, m.in_features), m.out_features / rows) for m in members]
        start = stop
    return shares


def tabled_us(
    table: LatencyTable, model: nn.Module, assignment: dict[str, str] | None, batch: int = 1
) -> float:
    """Tabled time of the decoder linears under ``assignment`` (linear name -> candidate; None: float16),
    each launch the decoder runs priced once (``launch_shares``)."""
    linears = decoder_linears(model)
    formats = None if assignment is None else [assignment[name] for name, _, _ in linears]
    total = 0.0
    for (name, _, _), (shape, share) in zip(linears, launch_shares(linears, formats), strict=True):
        if assignment is None:
            total += share * table.predict_fp16(shape, batch)
        else:
            total += share * table.predict(Candidate.parse(assignment[name]), shape, batch)
    return total


def plan_under_latency(
    model: nn.Module, table: LatencyTable, palette: Sequence[str], budget_us: float, *, batch: int = 1
) -> LatencyPlan:
    """The least-weight-error plan of the float decoder linears whose tabled latency fits ``budget_us``."""
    linears = decoder_linears(model)
    if any(isinstance(m, QuantLinear) for _, m, _ in linears):
        raise InvalidInput("plan_under_latency quantizes the float weights itself: pass the float model")
    cands = [Candidate.parse(c) for c in palette]
    n, k = len(linears), len(cands)
    loss = np.zeros((n, k))
    nbytes = np.zeros((n, k), dtype=np.int64)
    latency = np.zeros((n, k))
    feasible = np.zeros((n, k), dtype=bool)
    for u, ((_, linear, _), (launch, share)) in enumerate(zip(linears, launch_shares(linears), strict=True)):
        weight = linear.weight.detach().float()  # (out, in)
        shape = tuple(weight.shape)
        for c, cand in enumerate(cands):
            if cand.unsupported_reason(shape) is not None:
                continue
            restored = quantize(weight, cand).dequantize(torch.float32)
            loss[u, c] = float((weight - restored).square().sum() / weight.square().sum())
            nbytes[u, c] = cand.nbytes(shape)
            latency[u, c] = share * table.predict(cand, launch, batch)
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
