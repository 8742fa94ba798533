"""Closed-form Hessian-proxy estimates: every RTN and GPTQ candidate of a unit without running GPTQ.

The proxy of a quantization with error ΔW (out, in) is Σ_rows δᵀ H δ, H = E[x xᵀ]. Rounding errors of
different columns are nearly uncorrelated, so with ``s_j = Σ_rows δ_j²`` the column error of the RTN copy:

- RTN:  ``E ≈ Σ_j s_j · H_jj`` (the cross terms average out; exact when H is diagonal);
- GPTQ: GPTQ's error is exactly ``Σ_j r_j² / U_jj²`` (``U`` the upper Cholesky factor of the damped H⁻¹,
  ``r_j`` the rounding residual of the error-updated column j). Its residuals fall on the same grid as
  RTN's, so ``E ≈ Σ_j s_j / U_jj²``: the column error priced by the part of ``H_jj`` that the columns
  quantized after j cannot compensate (the variance of x_j given them).

Both need one RTN pass per format (elementwise) and one Cholesky per distinct H: no matmul per candidate
and no GPTQ column loop. On SmolLM2 they rank the exact proxies of all 210 x 72 (unit, candidate) pairs
with Spearman ρ 0.9999 (RTN) and 0.9996 (GPTQ) (BENCHMARKS.md, "Closed-form scoring").
Candidates of other kinds (AWQ, k-means, outliers, ...) are quantized and scored exactly.
The GPTQ price needs a well-conditioned H: calibrate on more tokens than the widest input (on 256 tokens
for 1536 inputs the estimates are off by 25-50 %, on 2048 within 10-15 %).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from bitalloc.errors import InvalidInput
from bitalloc.models.units import Unit
from bitalloc.quantizers.candidate import Candidate, QuantKind
from bitalloc.quantizers.gptq import damped_hessian, not_positive_definite
from bitalloc.quantizers.grid import check_float16_range, group_grid
from bitalloc.sensitivity.calibrate import CalibrationStats
from bitalloc.sensitivity.profile import SensitivityProfile
from bitalloc.sensitivity.profiler import calibrated_profile, score_unit
from bitalloc.sensitivity.stacking import shape_stacks, stack_bytes

ESTIMATOR = "hessian_estimate"
GPTQ_DAMP = 0.01  # the damping GPTQ itself uses (quantizers/gptq.py)


@dataclass(frozen=True, eq=False)
class ColumnPrices:
    """What one squared unit of error in input column j costs, (in,) float32 each."""

    rtn: torch.Tensor  # H_jj
    gptq: torch.Tensor  # 1 / U_jj² of the damped H⁻¹ = U^T U; 0 for dead inputs


def column_prices(
    hessians: Sequence[torch.Tensor], *, damp: float = GPTQ_DAMP, units: Sequence[str] = ()
) -> list[ColumnPrices]:
    """The RTN and GPTQ column prices of same-size (in, in) Hessians, one batched factorization.

    With ``H = V Vᵀ``, V upper triangular, ``V = U⁻¹`` and ``1 / U_jj² = V_jj²`` (the variance of x_j given
    the later inputs); V is the lower Cholesky factor of H with its index order reversed. H is prepared as
    GPTQ prepares it (symmetrized, dead inputs set to 1, ``damp * mean(diag)`` added) and factored in float32.
    """
    h, dead = damped_hessian(torch.stack([x.float() for x in hessians]), damp)  # (batch, in, in), (batch, in)
    rtn = torch.stack([x.diagonal().float().clamp_min(0) for x in hessians])  # (batch, in)
    lower, info = torch.linalg.cholesky_ex(h.flip(1, 2))  # J H J = L Lᵀ
    bad = torch.nonzero(info).flatten().tolist()
    if bad:
        raise not_positive_definite(damp, units[bad[0]] if units else "")
    gptq = lower.diagonal(dim1=1, dim2=2).square().flip(1)  # (batch, in)
    gptq[dead] = 0
    return [ColumnPrices(rtn=r, gptq=g) for r, g in zip(rtn, gptq, strict=True)]


def column_errors(
    weights: torch.Tensor, bits: int, symmetric: bool, group_size: int, *, range_checked: bool = False
) -> torch.Tensor:
    """``s[b, j] = Σ_rows δ²`` of the RTN copy of weight b: (batch, out, in) -> (batch, in) float32.

    On a GPU one fused kernel pass (``kernels/rtn_error.py``; CPU tests run it under the interpreter)."""
    if weights.is_cuda:
        from bitalloc.kernels import rtn_error  # imports triton

        if rtn_error.supports(group_size):
            return rtn_error.rtn_column_errors(
                weights.float(), bits, symmetric, group_size, check_range=not range_checked
            )
    groups = weights.reshape(-1, group_size)  # (batch * out * in/g, g)
    err = group_grid(groups, bits, symmetric).fake_quantize(groups).sub_(groups).square_()
    return err.view(weights.shape).sum(dim=1)


def estimate_errors(
    weights: Sequence[torch.Tensor], prices: Sequence[ColumnPrices], candidates: Sequence[Candidate]
) -> list[list[float]]:
    """Estimated proxies ``result[b][i]`` of same-shape ``weights`` (out, in) under RTN/GPTQ
    ``candidates``."""
    bad = [c.name for c in candidates if not c.foundation_format]
    if bad:
        raise InvalidInput(f"closed-form estimates cover plain rtn/gptq candidates only, not {bad[:3]}")
    w = torch.stack([x.detach().float() for x in weights])  # (batch, out, in)
    rtn_price = torch.stack([p.rtn for p in prices]).to(w.device)  # (batch, in)
    gptq_price = torch.stack([p.gptq for p in prices]).to(w.device)  # (batch, in)
    result = torch.zeros(len(weights), len(candidates), dtype=torch.float64, device=w.device)
    prices_by_kind = {QuantKind.RTN: rtn_price.double(), QuantKind.GPTQ: gptq_price.double()}
    column_sums: dict[tuple[int, bool, int], torch.Tensor] = {}  # one RTN pass per format
    if w.is_cuda:  # the kernel's range check once here, not once per format
        check_float16_range(w)
    for i, c in enumerate(candidates):
        key = (c.bits, c.symmetric, c.group_size)
        if key not in column_sums:
            column_sums[key] = column_errors(w, *key, range_checked=True).double()  # (batch, in)
        result[:, i] = (column_sums[key] * prices_by_kind[c.kind]).sum(-1)
    return result.tolist()  # one device sync per stack


def profile_estimate(
    model: nn.Module,
    units: tuple[Unit, ...],
    stats: CalibrationStats,
    palette: Sequence[Candidate],
    *,
    meta: dict,
    on_unit: Callable[[int, int], None] | None = None,
) -> SensitivityProfile:
    """The Hessian-proxy profile of ``model`` with RTN/GPTQ errors estimated in closed form and every
    other candidate scored exactly; same table and metadata as ``profile_model`` (estimator differs)."""
    if not units:
        raise InvalidInput("the model has no quantizable units: nothing to profile")
    if not palette:
        raise InvalidInput("the palette is empty: give at least one candidate")
    weights = [model.get_submodule(u.name).weight for u in units]
    device = weights[0].device
    cache: dict[int, ColumnPrices] = {}  # one Cholesky per distinct Hessian (q/k/v, gate/up share one)
    per_unit: list[list] = [[] for _ in units]
    done = 0
    closed = [c for c in palette if c.foundation_format]
    n_formats = len({(c.bits, c.symmetric, c.group_size) for c in closed})
    order = {c: k for k, c in enumerate(palette)}
    for stack in shape_stacks([u.shape for u in units], [2 * n_formats] * len(units), stack_bytes(device)):
        shape = units[stack[0]].shape
        fitting = [c for c in closed if c.supports(shape)]
        others = [c for c in palette if not c.foundation_format and c.supports(shape)]
        hessians = [stats.hessians[units[i].name] for i in stack]
        new = {id(h): (h, units[i].name) for i, h in zip(stack, hessians, strict=True) if id(h) not in cache}
        if new:
            pairs = list(new.values())
            priced = column_prices([h.to(device) for h, _ in pairs], units=[name for _, name in pairs])
            cache.update(zip(new, priced, strict=True))
        prices = [cache[id(h)] for h in hessians]
        ws = [weights[i].detach().float() for i in stack]  # (out, in) each
        estimates = estimate_errors(ws, prices, fitting) if fitting else [[] for _ in stack]
        for i, w, h, errors in zip(stack, ws, hessians, estimates, strict=True):
            unit = units[i]
            rows = [(c, e, c.nbytes(shape)) for c, e in zip(fitting, errors, strict=True)]
            if others:  # scored exactly, as profile_model scores them
                rows += score_unit(w, h.to(device), others, unit=unit.name, n_tokens=stats.n_tokens)
            if not rows:
                raise InvalidInput(
                    f"no candidate of the palette fits unit {unit.name!r} of shape {unit.shape}"
                )
            rows.sort(key=lambda r: order[r[0]])
            per_unit[i] = [(unit.name, unit.tie, *unit.shape, c.name, float(e), int(n)) for c, e, n in rows]
            done += 1
            if on_unit is not None:
                on_unit(done, len(units))
    return calibrated_profile(
        [row for rows in per_unit for row in rows], stats, palette, meta, estimator=ESTIMATOR
    )
