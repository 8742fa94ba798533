"""Non-uniform codebooks (SqueezeLLM style): sensitivity-weighted k-means lookup tables.

Each row's input columns are cut into groups of ``group_size``; each (row, group) gets its own table of
``2**bits`` float16 values, fitted by weighted k-means (Lloyd) on that group's weights with weight
``diag(H)_j`` per column (SqueezeLLM weights by the Fisher diagonal; ``diag(H)`` is its Hessian analog
here). Codes are indices into the table, packed as the foundation bitstream. Initial centers are the
evenly spaced RTN levels between the group's min and max, so the result is deterministic.

Bytes: ``ceil(out * in * bits / 8)`` codes + ``2 * out * (in / group) * 2**bits`` tables.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from bitalloc.quantizers.candidate import Candidate, QuantKind
from bitalloc.quantizers.packed import Layout, PackedWeight
from bitalloc.quantizers.packing import pack_codes, packed_nbytes, unpack_codes
from bitalloc.quantizers.registry import QuantizerSpec, check_hessian


@dataclass(frozen=True)
class KmeansConfig:
    """Lloyd iterations, the minimum number of weights per table entry, and the calibration tokens behind
    the column weights ``diag(H)_j`` (a mean of ``n`` squares: relative noise about ``sqrt(2 / n)``, 9% at
    256 tokens; with fewer the sensitivity weighting is mostly noise)."""

    iterations: int = 12
    min_points_per_center: int = 2
    min_tokens: int = 256


CONFIG = KmeansConfig()


def layout(candidate: Candidate, shape: tuple[int, int]) -> Layout:
    """Codes bitstream and one float16 table per (row, group)."""
    out_features, in_features = shape
    return {
        "codes": (torch.uint8, (packed_nbytes(out_features * in_features, candidate.bits),)),
        "lut": (torch.float16, (out_features, in_features // candidate.group_size, 2**candidate.bits)),
    }


def unsupported(candidate: Candidate, shape: tuple[int, int]) -> str | None:
    """A table needs at least ``min_points_per_center * 2**bits`` weights per group."""
    need = CONFIG.min_points_per_center * 2**candidate.bits
    if candidate.group_size < need:
        return f"group size {candidate.group_size} is too small for {2**candidate.bits} centers (need {need})"
    return None


def weighted_kmeans(x: torch.Tensor, weight: torch.Tensor, k: int, iterations: int) -> torch.Tensor:
    """Centers ``(rows, k)`` of weighted 1-D k-means on every row of ``x`` (rows, g), ``weight`` (rows, g)."""
    lo = x.amin(dim=1, keepdim=True)  # (rows, 1)
    hi = x.amax(dim=1, keepdim=True)
    centers = lo + (hi - lo) * torch.linspace(0, 1, k, device=x.device).unsqueeze(0)  # (rows, k) RTN levels
    wx = x * weight  # (rows, g)
    for _ in range(iterations):
        assign = _nearest(x, centers)  # (rows, g)
        num = torch.zeros_like(centers).scatter_add_(1, assign, wx)  # (rows, k)
        den = torch.zeros_like(centers).scatter_add_(1, assign, weight)
        centers = torch.where(den > 0, num / den.clamp_min(1e-30), centers)
    return centers


def _nearest(x: torch.Tensor, centers: torch.Tensor) -> torch.Tensor:
    """Index of the nearest center (first on ties) for every entry of ``x`` (rows, g): int64 (rows, g)."""
    return (x.unsqueeze(-1) - centers.unsqueeze(1)).abs().argmin(dim=-1)


def quantize_many(
    weight: torch.Tensor, candidates: Sequence[Candidate], hessian: torch.Tensor | None, unit: str = ""
) -> list[PackedWeight]:
    """Fit the tables of every candidate, weighting columns by ``diag(H)``."""
    if not candidates:
        return []
    w = weight.detach().float()  # (out, in)
    h = check_hessian(candidates[0], hessian, w.shape[1], unit)
    col_weight = column_weights(h.diagonal())  # (in,)
    results = []
    for c in candidates:
        luts = fit_tables(w, col_weight, c, CONFIG.iterations)  # (out, in/g, k)
        x = w.reshape(-1, c.group_size)  # (rows, g)
        codes = _nearest(x, luts.reshape(x.shape[0], -1).float()).to(torch.uint8)  # (rows, g)
        results.append(PackedWeight(c, tuple(w.shape), {"codes": pack_codes(codes, c.bits), "lut": luts}))
    return results


def column_weights(hessian_diagonal: torch.Tensor) -> torch.Tensor:
    """k-means weight of each input column, ``diag(H)_j`` plus a tiny floor so that dead inputs still place
    their weights: (in,) float32."""
    col_weight = hessian_diagonal.float().clamp_min(0)
    return col_weight + 1e-6 * float(col_weight.mean())


def fit_tables(
    w: torch.Tensor, col_weight: torch.Tensor, candidate: Candidate, iterations: int
) -> torch.Tensor:
    """The float16 table of every (row, group of ``candidate.group_size`` columns) of ``w`` (out, in), fitted
    by ``col_weight``-weighted k-means: (out, in / group, 2**bits)."""
    out_features, in_features = w.shape
    g, k = candidate.group_size, 2**candidate.bits
    n_groups = in_features // g
    x = w.reshape(out_features * n_groups, g)  # (rows, g)
    cw = col_weight.reshape(n_groups, g).repeat(out_features, 1)  # (rows, g)
    return weighted_kmeans(x, cw, k, iterations).to(torch.float16).reshape(out_features, n_groups, k)


def dequantize(q: PackedWeight) -> torch.Tensor:
    """Table lookup: float32 ``(out, in)``."""
    out_features, in_features = q.shape
    lut = q.stored["lut"].float()  # (out, in/g, k)
    n_groups = lut.shape[1]
    codes = unpack_codes(q.stored["codes"], q.candidate.bits, out_features * in_features).long()
    codes = codes.view(out_features, n_groups, -1)  # (out, in/g, g)
    return lut.gather(2, codes).reshape(out_features, in_features)


def min_tokens(candidate: Candidate, shape: tuple[int, int]) -> int:
    """Calibration tokens the column weights need (``KmeansConfig.min_tokens``)."""
    return CONFIG.min_tokens


SPEC = QuantizerSpec(
    QuantKind.KMEANS, CONFIG, True, layout, quantize_many, dequantize, unsupported, min_tokens=min_tokens
)
