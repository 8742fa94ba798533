"""GPTQ onto k-means lookup tables (``lutgptq``): non-uniform levels with error compensation (GPTVQ, 1-D).

SqueezeLLM-style tables (``kmeans.py``) place the levels where the weights are; GPTQ spreads each column's
rounding error over the columns not yet quantized. Here both: columns are taken in activation order (as
``gptqact``), each (row, group of ``group_size`` permuted columns) gets a table of ``2**bits`` float16 levels
fitted by ``diag(H)``-weighted k-means on the original weights, and GPTQ's column loop rounds each
error-updated column to the nearest level of its row's table. Damping and dead inputs as in ``gptq.py``.

Bytes: ``ceil(out * in * bits / 8)`` codes + ``2 * out * (in / group) * 2**bits`` tables + the int16
permutation ``(in,)``: ``W[:, perm] = lut[code]``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from bitalloc.quantizers import kmeans
from bitalloc.quantizers.candidate import Candidate, QuantKind
from bitalloc.quantizers.gptq import inverse_hessian_factor
from bitalloc.quantizers.gptq_actorder import permuted
from bitalloc.quantizers.packed import Layout, PackedWeight
from bitalloc.quantizers.packing import pack_codes
from bitalloc.quantizers.registry import QuantizerSpec, check_hessian

_MAX_IN = 32767  # the permutation is stored as int16


@dataclass(frozen=True)
class LutGptqConfig:
    """Relative diagonal damping, lazy-update block size and k-means iterations."""

    damp: float = 0.01
    block_size: int = 128
    iterations: int = kmeans.CONFIG.iterations


CONFIG = LutGptqConfig()


def layout(candidate: Candidate, shape: tuple[int, int]) -> Layout:
    """The k-means layout (codes and tables) plus the int16 permutation."""
    return {**kmeans.layout(candidate, shape), "perm": (torch.int16, (shape[1],))}


def unsupported(candidate: Candidate, shape: tuple[int, int]) -> str | None:
    """The table-size rule of ``kmeans`` and the int16 permutation's range."""
    if shape[1] > _MAX_IN:
        return f"at most {_MAX_IN} input features (int16 permutation)"
    return kmeans.unsupported(candidate, shape)


def gptq_to_tables(
    weight: torch.Tensor, upper: torch.Tensor, luts: torch.Tensor, group_size: int, block_size: int
) -> torch.Tensor:
    """GPTQ's column loop with nearest-table-level rounding: weight (out, in), ``upper`` (in, in) the upper
    Cholesky factor of H⁻¹, luts (out, in / group, k) float32 -> codes int64 (out, in)."""
    w = weight.clone()
    out_features, in_features = w.shape
    codes = torch.empty(out_features, in_features, dtype=torch.long, device=w.device)
    for i1 in range(0, in_features, block_size):
        i2 = min(i1 + block_size, in_features)
        block = w[:, i1:i2]  # (out, b) view: updated in place
        err = torch.zeros_like(block)
        for j in range(i2 - i1):
            col = block[:, j]  # (out,)
            lut = luts[:, (i1 + j) // group_size]  # (out, k)
            idx = (col.unsqueeze(1) - lut).abs().argmin(dim=1)  # (out,)
            codes[:, i1 + j] = idx
            e = (col - lut.gather(1, idx.unsqueeze(1)).squeeze(1)) / upper[i1 + j, i1 + j]  # (out,)
            block[:, j:] -= e.unsqueeze(1) * upper[i1 + j, i1 + j : i2].unsqueeze(0)
            err[:, j] = e
        w[:, i2:] -= err @ upper[i1:i2, i2:]
    return codes


def quantize_many(
    weight: torch.Tensor, candidates: Sequence[Candidate], hessian: torch.Tensor | None, unit: str = ""
) -> list[PackedWeight]:
    """Tables then GPTQ, in activation order, for every candidate."""
    if not candidates:
        return []
    h = check_hessian(candidates[0], hessian, weight.shape[1], unit)
    perm, w, h_p = permuted(weight, h)  # (in,), (out, in), (in, in) in activation order
    upper, dead = inverse_hessian_factor(h_p, CONFIG.damp, unit)  # (in, in), (in,)
    w[:, dead] = 0
    col_weight = kmeans.column_weights(h_p.diagonal())  # (in,)
    results = []
    for c in candidates:
        luts = kmeans.fit_tables(w, col_weight, c, CONFIG.iterations)  # (out, in/g, k) float16
        codes = gptq_to_tables(w, upper, luts.float(), c.group_size, CONFIG.block_size)  # (out, in)
        stored = {
            "codes": pack_codes(codes.to(torch.uint8), c.bits),
            "lut": luts,
            "perm": perm.to(torch.int16),
        }
        results.append(PackedWeight(c, tuple(w.shape), stored))
    return results


def dequantize(q: PackedWeight) -> torch.Tensor:
    """Table lookup, then the permutation undone: float32 ``(out, in)``."""
    w_p = kmeans.dequantize(q)  # (out, in) permuted
    out = torch.empty_like(w_p)
    out[:, q.stored["perm"].long()] = w_p
    return out


def min_tokens(candidate: Candidate, shape: tuple[int, int]) -> int:
    """Calibration tokens the column weights need (as ``kmeans``)."""
    return kmeans.CONFIG.min_tokens


SPEC = QuantizerSpec(
    QuantKind.LUTGPTQ, CONFIG, True, layout, quantize_many, dequantize, unsupported, min_tokens=min_tokens
)
