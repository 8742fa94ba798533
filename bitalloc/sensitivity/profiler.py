"""Score every (unit, candidate) pair: quantize, dequantize, measure tr(ΔW·H·ΔWᵀ)."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import pandas as pd
import torch
from torch import nn

from bitalloc.errors import InvalidInput
from bitalloc.models.units import Unit
from bitalloc.quantizers.candidate import Candidate, QuantKind
from bitalloc.quantizers.gptq import quantize_gptq_many
from bitalloc.quantizers.registry import quantize_batch
from bitalloc.quantizers.rtn import quantize_rtn
from bitalloc.sensitivity.calibrate import CalibrationStats
from bitalloc.sensitivity.profile import SensitivityProfile
from bitalloc.sensitivity.proxy import proxy_errors

ESTIMATOR = "hessian_proxy"


def score_unit(
    weight: torch.Tensor,
    hessian: torch.Tensor,
    palette: Sequence[Candidate],
    *,
    unit: str = "",
    n_tokens: int | None = None,
) -> list[tuple[Candidate, float, int]]:
    """(candidate, proxy error, exact bytes) for every candidate whose group size fits ``weight``;
    ``n_tokens`` (behind ``hessian``) lets AWQ and k-means refuse too few calibration tokens."""
    shape = tuple(weight.shape)
    fitting = [c for c in palette if c.supports(shape)]
    rtn = [c for c in fitting if c.kind is QuantKind.RTN and c.foundation_format]
    gptq = [c for c in fitting if c.kind is QuantKind.GPTQ and c.foundation_format]
    others = [c for c in fitting if not c.foundation_format]  # every other registered kind
    quantized: list = [quantize_rtn(weight, c) for c in rtn]
    if gptq:
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
    """The SensitivityProfile of ``model`` over ``palette``, with ``meta`` merged into its metadata."""
    if not palette:
        raise InvalidInput("the palette is empty: give at least one candidate")
    rows = []
    for i, unit in enumerate(units):
        weight = model.get_submodule(unit.name).weight.detach().float()  # (out, in)
        hessian = stats.hessians[unit.name].to(weight.device)
        scored = score_unit(weight, hessian, palette, unit=unit.name, n_tokens=stats.n_tokens)
        if not scored:
            raise InvalidInput(f"no candidate of the palette fits unit {unit.name!r} of shape {unit.shape}")
        for candidate, error, nbytes in scored:
            rows.append((unit.name, unit.tie, *unit.shape, candidate.name, error, nbytes))
        if on_unit is not None:
            on_unit(i + 1, len(units))
    table = pd.DataFrame(rows, columns=["unit", "tie", "rows", "cols", "candidate", "error", "nbytes"])
    full_meta = dict(
        meta,
        model_hash=stats.model_hash,
        corpus_hash=stats.corpus_hash,
        n_tokens=stats.n_tokens,
        calibration=stats.settings,
        estimator=ESTIMATOR,
        palette=[c.name for c in palette],
    )
    return SensitivityProfile(table=table, meta=full_meta)
