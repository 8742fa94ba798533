"""Score every (unit, candidate) pair: quantize, dequantize, measure tr(ΔW·H·ΔWᵀ)."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import pandas as pd
import torch
from torch import nn

from bitalloc.errors import InvalidInput
from bitalloc.models.units import Unit
from bitalloc.quantizers.candidate import Candidate, QuantKind
from bitalloc.quantizers.gptq import quantize_gptq_many
from bitalloc.quantizers.quantized_weight import QuantizedWeight
from bitalloc.quantizers.registry import quantize_batch
from bitalloc.quantizers.rtn import quantize_rtn
from bitalloc.sensitivity.calibrate import CalibrationStats
from bitalloc.sensitivity.profile import SensitivityProfile
from bitalloc.sensitivity.proxy import proxy_errors
from bitalloc.sensitivity.stacking import gptq_for_stack, plain_gptq, shape_stacks, stack_bytes

ESTIMATOR = "hessian_proxy"


def score_unit(
    weight: torch.Tensor,
    hessian: torch.Tensor,
    palette: Sequence[Candidate],
    *,
    unit: str = "",
    n_tokens: int | None = None,
    gptq_done: Mapping[Candidate, QuantizedWeight] | None = None,
) -> list[tuple[Candidate, float, int]]:
    """(candidate, proxy error, exact bytes) for every candidate whose group size fits ``weight``;
    ``n_tokens`` (behind ``hessian``) lets AWQ and k-means refuse too few calibration tokens;
    ``gptq_done`` holds plain GPTQ results already computed (by a stack)."""
    shape = tuple(weight.shape)
    fitting = [c for c in palette if c.supports(shape)]
    rtn = [c for c in fitting if c.kind is QuantKind.RTN and c.foundation_format]
    gptq = [c for c in fitting if c.kind is QuantKind.GPTQ and c.foundation_format]
    others = [c for c in fitting if not c.foundation_format]  # every other registered kind
    quantized: list = [quantize_rtn(weight, c) for c in rtn]
    if gptq and gptq_done is not None and all(c in gptq_done for c in gptq):
        quantized += [gptq_done[c] for c in gptq]
    elif gptq:
        quantized += quantize_gptq_many(weight, hessian, gptq)
    if others:
        quantized += quantize_batch(weight, others, hessian, unit, n_tokens=n_tokens)
    errors = proxy_errors(weight, [q.dequantize() for q in quantized], hessian)
    return [(q.candidate, e, q.nbytes) for q, e in zip(quantized, errors, strict=True)]


def profile_model(
    model: nn.Module,
    units: tuple[Unit, ...],
    stats: CalibrationStats,
    palette: Sequence[Candidate],
    *,
    meta: dict,
    on_unit: Callable[[int, int], None] | None = None,
) -> SensitivityProfile:
    """The SensitivityProfile of ``model`` over ``palette``, with ``meta`` merged into its metadata.

    Units of one shape are scored together (their GPTQ candidates in one stacked loop); the table keeps
    the order of ``units``."""
    if not palette:
        raise InvalidInput("the palette is empty: give at least one candidate")
    weights = [model.get_submodule(u.name).weight for u in units]
    limit = stack_bytes(weights[0].device) if weights else 0
    copies = [len(plain_gptq(palette, u.shape)) for u in units]
    per_unit: list[list] = [[] for _ in units]
    done = 0
    for stack in shape_stacks([u.shape for u in units], copies, limit):
        ws = [weights[i].detach().float() for i in stack]  # (out, in) each
        hs = [stats.hessians[units[i].name].to(ws[0].device) for i in stack]
        gptq = gptq_for_stack(ws, hs, palette, [units[i].name for i in stack])
        for i, weight, hessian, done_gptq in zip(stack, ws, hs, gptq, strict=True):
            unit = units[i]
            scored = score_unit(
                weight, hessian, palette, unit=unit.name, n_tokens=stats.n_tokens, gptq_done=done_gptq
            )
            if not scored:
                raise InvalidInput(
                    f"no candidate of the palette fits unit {unit.name!r} of shape {unit.shape}"
                )
            per_unit[i] = [(unit.name, unit.tie, *unit.shape, c.name, e, n) for c, e, n in scored]
            done += 1
            if on_unit is not None:
                on_unit(done, len(units))
    rows = [row for unit_rows in per_unit for row in unit_rows]
    return calibrated_profile(rows, stats, palette, meta, estimator=ESTIMATOR)


def calibrated_profile(
    rows: Sequence[tuple],
    stats: CalibrationStats,
    palette: Sequence[Candidate],
    meta: dict,
    **extra: object,
) -> SensitivityProfile:
    """A SensitivityProfile of ``rows`` (unit, tie, rows, cols, candidate, error, nbytes) whose metadata is
    ``meta`` plus the calibration's provenance, the palette's names and ``extra`` (the estimator, ...)."""
    table = pd.DataFrame(list(rows), columns=["unit", "tie", "rows", "cols", "candidate", "error", "nbytes"])
    full_meta = dict(
        meta,
        model_hash=stats.model_hash,
        corpus_hash=stats.corpus_hash,
        n_tokens=stats.n_tokens,
        calibration=stats.settings,
        palette=[c.name for c in palette],
        **extra,
    )
    return SensitivityProfile(table=table, meta=full_meta)
