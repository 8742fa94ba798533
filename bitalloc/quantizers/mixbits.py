"""Fractional bits, EXL2 style: two bit widths inside one matrix, chosen per column group.

``mix-w<b>g<g>-<sym>-h<p>`` stores ``round(p% of in/g)`` column groups at ``b + 1`` bits and the rest at
``b`` bits, e.g. ``mix-w3g64-asym-h50`` averages 3.5 code bits. The high groups are those of largest
salience ``Σ_j∈group diag(H)_j ||W[:, j]||²``. Why column groups: grids already live on groups of input
columns, so one bit width per column group keeps every grid uniform, every row the same layout (a kernel
dequantizes whole tiles of one width), and lets the rate be any fraction, unlike vector/trellis codes that
need their own decoders. Codes are found by GPTQ (same damping as the foundation, ``1%`` of mean diag H),
with each group's grid fitted at its own width on the error-updated weights.

Bytes: ``ceil(out * lo_cols * b / 8)`` + ``ceil(out * hi_cols * (b+1) / 8)`` codes, int16 indices of the high
groups, and float16 scales (and mins) per (row, group).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from bitalloc.quantizers.candidate import Candidate, QuantKind
from bitalloc.quantizers.gptq import inverse_hessian_factor
from bitalloc.quantizers.grid import group_grid
from bitalloc.quantizers.packed import Layout, PackedWeight
from bitalloc.quantizers.packing import pack_codes, packed_nbytes, unpack_codes
from bitalloc.quantizers.registry import QuantizerSpec, check_hessian


@dataclass(frozen=True)
class MixConfig:
    """GPTQ damping (relative to mean diag H) and lazy-update block in columns."""

    damp: float = 0.01
    block_size: int = 128


CONFIG = MixConfig()


def n_high(candidate: Candidate, in_features: int) -> int:
    """Number of column groups stored at ``bits + 1``."""
    return round(in_features // candidate.group_size * candidate.high_percent / 100)


def layout(candidate: Candidate, shape: tuple[int, int]) -> Layout:
    """Low and high code streams, high-group indices, grids."""
    out_features, in_features = shape
    g, n_groups = candidate.group_size, in_features // candidate.group_size
    hi = n_high(candidate, in_features)
    lay: Layout = {
        "codes_lo": (torch.uint8, (packed_nbytes(out_features * (n_groups - hi) * g, candidate.bits),)),
        "codes_hi": (torch.uint8, (packed_nbytes(out_features * hi * g, candidate.bits + 1),)),
        "high_groups": (torch.int16, (hi,)),
        "scales": (torch.float16, (out_features, n_groups)),
    }
    if not candidate.symmetric:
        lay["mins"] = (torch.float16, (out_features, n_groups))
    return lay


def unsupported(candidate: Candidate, shape: tuple[int, int]) -> str | None:
    """Both widths must be present: at least one low and one high group."""
    n_groups = shape[1] // candidate.group_size
    hi = n_high(candidate, shape[1])
    if not 0 < hi < n_groups:
        return f"{n_groups} column groups cannot be split {candidate.high_percent}% high; use a smaller group"
    return None


def quantize_many(
    weight: torch.Tensor, candidates: Sequence[Candidate], hessian: torch.Tensor | None, unit: str = ""
) -> list[PackedWeight]:
    """GPTQ with per-column-group bit widths, one pass per candidate."""
    if not candidates:
        return []
    w0 = weight.detach().float()  # (out, in)
    h = check_hessian(candidates[0], hessian, w0.shape[1], unit)
    u, dead = inverse_hessian_factor(h, CONFIG.damp, unit)  # (in, in) upper factor of H^-1
    salience = w0.pow(2).sum(0) * h.diagonal()  # (in,)
    return [_one(w0, u, dead, salience, c) for c in candidates]


def _one(
    w0: torch.Tensor, u: torch.Tensor, dead: torch.Tensor, salience: torch.Tensor, c: Candidate
) -> PackedWeight:
    out_features, in_features = w0.shape
    g, n_groups = c.group_size, in_features // c.group_size
    hi = n_high(c, in_features)
    high = torch.sort(-salience.reshape(n_groups, g).sum(1), stable=True).indices[:hi].sort().values
    dev = w0.device
    is_high = torch.zeros(n_groups, dtype=torch.bool, device=dev)
    is_high[high] = True
    w = w0.clone()
    w[:, dead] = 0
    codes = torch.empty(out_features, in_features, dtype=torch.uint8, device=dev)
    scales = torch.empty(out_features, n_groups, device=dev)
    mins = torch.empty(out_features, n_groups, device=dev)
    block = max(g, CONFIG.block_size // g * g)
    grid = None
    for b1 in range(0, in_features, block):
        b2 = min(b1 + block, in_features)
        err = torch.empty(out_features, b2 - b1, device=dev)  # (out, block) scaled errors
        for j in range(b1, b2):
            if j % g == 0:
                bits = c.bits + 1 if bool(is_high[j // g]) else c.bits
                grid = group_grid(w[:, j : j + g], bits, c.symmetric)
                scales[:, j // g], mins[:, j // g] = grid.scale, grid.offset
            assert grid is not None
            q = grid.quantize(w[:, j])  # (out,)
            codes[:, j] = q.to(torch.uint8)
            e = (w[:, j] - grid.dequantize(q)) / u[j, j]  # (out,)
            err[:, j - b1] = e
            w[:, j + 1 : b2] -= e.unsqueeze(1) * u[j, j + 1 : b2].unsqueeze(0)
        if b2 < in_features:
            w[:, b2:] -= err @ u[b1:b2, b2:]
    cols = codes.view(out_features, n_groups, g)  # (out, groups, g)
    tensors = {
        "codes_lo": pack_codes(cols[:, ~is_high], c.bits),
        "codes_hi": pack_codes(cols[:, is_high], c.bits + 1),
        "high_groups": high.to(torch.int16),
        "scales": scales.half(),
    }
    if not c.symmetric:
        tensors["mins"] = mins.half()
    return PackedWeight(c, (out_features, in_features), tensors)


def dequantize(q: PackedWeight) -> torch.Tensor:
    """Both streams back into their column groups: float32 ``(out, in)``."""
    c = q.candidate
    out_features, in_features = q.shape
    g, n_groups = c.group_size, in_features // c.group_size
    dev = q.stored["scales"].device
    is_high = torch.zeros(n_groups, dtype=torch.bool, device=dev)
    is_high[q.stored["high_groups"].long()] = True
    hi = int(is_high.sum())
    codes = torch.empty(out_features, n_groups, g, device=dev)
    lo_codes = unpack_codes(q.stored["codes_lo"], c.bits, out_features * (n_groups - hi) * g).float()
    hi_codes = unpack_codes(q.stored["codes_hi"], c.bits + 1, out_features * hi * g).float()
    codes[:, ~is_high] = lo_codes.view(out_features, n_groups - hi, g)
    codes[:, is_high] = hi_codes.view(out_features, hi, g)
    bits = torch.where(is_high, c.bits + 1, c.bits).float()  # (groups,)
    zero = 2 ** (bits - 1) if c.symmetric else torch.zeros(n_groups, device=dev)
    w = (codes - zero.view(1, -1, 1)) * q.stored["scales"].float().unsqueeze(-1)
    if not c.symmetric:
        w = w + q.stored["mins"].float().unsqueeze(-1)
    return w.reshape(out_features, in_features)


SPEC = QuantizerSpec(QuantKind.MIX, CONFIG, True, layout, quantize_many, dequantize, unsupported)
