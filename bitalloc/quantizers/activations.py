"""Simulated weight-activation quantization, W8A8 and W4A4, with float16 outlier channels (Atom, QUIK).

Candidates ``a<abits>-w<bits>g<group>-<sym|asym>[-o<n>]``, e.g. ``a8-w8g64-sym``, ``a4-w4g64-sym-o32``:

- outlier channels: the ``n`` input channels with the largest calibration activation energy ``diag(H)_j``
  (the mean of ``x_j²`` over the calibration tokens, ``H = XᵀX / n``) stay in float16, in the activations
  and in the weight's columns, as QUIK does (Atom keeps its reordered outlier channels at 8 bits; float16
  here). The selection is fixed at quantization time from calibration statistics and stored (int16 indices).
- weights: GPTQ (foundation grid: ``bits``, ``group``, symmetric or not) of the other columns against
  the Schur complement of H, the float16 columns absorbing the base error (``outliers.py``).
- activations: quantized on the fly, per token, symmetric, over the non-outlier channels:
  ``s = clip · max|x| / (2^(a-1) - 1)``, ``x̂ = s · clamp(round(x / s), -(2^(a-1) - 1), 2^(a-1) - 1)``;
  the outlier channels are rounded to float16. Nothing about activations is stored.

``PackedLinear`` applies ``prepare_input`` before its dequantize-matmul, so a model quantized with these
candidates computes ``Q_a(x_b) Ŵ_bᵀ + x_o Ŵ_oᵀ`` exactly as an integer kernel with a float16 side GEMM would
(up to float32 accumulation). Bytes: the weight's storage only (base grid + ``2 n`` + ``2 out n``).

Latency (``latency_table``): these candidates save compute, not bytes, so they are chosen under a latency
budget. The model extends ``bitalloc/allocator/latency.py`` (memory term, launch cost, format factors) by a
compute term at ``tokens`` tokens per call (roofline: the larger of memory and compute time) — see there.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from bitalloc.allocator.latency import BANDWIDTH_BYTES_PER_US, LAUNCH_US, format_factor
from bitalloc.quantizers.candidate import ACT_KINDS, Candidate, QuantKind
from bitalloc.quantizers.gptq import quantize_gptq_many
from bitalloc.quantizers.outliers import fill_columns, quantize_with_columns
from bitalloc.quantizers.packed import Layout, PackedWeight, grid_candidate, grid_dequantize, grid_layout
from bitalloc.quantizers.registry import QuantizerSpec, check_hessian

_MAX_IN = 32767  # indices are stored as int16


@dataclass(frozen=True)
class ActConfig:
    """Activation clipping (fraction of the per-token absmax) and the GPTQ damping of the weights."""

    clip: float = 1.0
    damp: float = 0.01


CONFIG = ActConfig()


def act_bits(candidate: Candidate) -> int:
    """The activation bit width of an ``a<bits>`` candidate (16 for every weight-only candidate)."""
    return {QuantKind.A8: 8, QuantKind.A4: 4}.get(candidate.kind, 16)


def layout(candidate: Candidate, shape: tuple[int, int]) -> Layout:
    """Foundation grid under ``base.``; with outliers, int16 indices and float16 columns."""
    base = grid_layout(candidate.bits, candidate.group_size, candidate.symmetric, shape, prefix="base.")
    if not candidate.outliers:
        return base
    return {
        **base,
        "outlier_idx": (torch.int16, (candidate.outliers,)),
        "outlier_val": (torch.float16, (shape[0], candidate.outliers)),
    }


def unsupported(candidate: Candidate, shape: tuple[int, int]) -> str | None:
    """Fewer outlier channels than inputs, int16 indices."""
    if candidate.outliers >= shape[1]:
        return f"{candidate.outliers} outlier channels leave nothing to quantize of {shape[1]} inputs"
    if shape[1] > _MAX_IN:
        return f"at most {_MAX_IN} input features (int16 outlier indices)"
    return None


def select_channels(hessian: torch.Tensor, n: int) -> torch.Tensor:
    """Sorted int64 ``(n,)`` indices of the ``n`` inputs of largest calibration energy ``diag(H)``."""
    order = torch.sort(-hessian.diagonal().float(), stable=True).indices  # (in,)
    return order[:n].sort().values


def quantize_many(
    weight: torch.Tensor, candidates: Sequence[Candidate], hessian: torch.Tensor | None, unit: str = ""
) -> list[PackedWeight]:
    """GPTQ weights with each candidate's float16 outlier channels; one pass per outlier count."""
    if not candidates:
        return []
    w = weight.detach().float()  # (out, in)
    h = check_hessian(candidates[0], hessian, w.shape[1], unit)  # (in, in)
    shape = (w.shape[0], w.shape[1])
    out: list[PackedWeight | None] = [None] * len(candidates)
    by_n: dict[int, list[int]] = {}
    for i, c in enumerate(candidates):
        by_n.setdefault(c.outliers, []).append(i)
    for n, idx in by_n.items():
        grids = [grid_candidate(candidates[i], QuantKind.GPTQ) for i in idx]
        if n:
            stored = quantize_with_columns(w, h, select_channels(h, n), grids, unit)
        else:
            done = quantize_gptq_many(w, h, grids, damp=CONFIG.damp, unit=unit)
            stored = [{f"base.{k}": t for k, t in q.tensors().items()} for q in done]
        for i, t in zip(idx, stored, strict=True):
            out[i] = PackedWeight(candidates[i], shape, t)
    return [q for q in out if q is not None]


def dequantize(q: PackedWeight) -> torch.Tensor:
    """The stored weight, outlier columns in float16 precision: float32 ``(out, in)``."""
    w = grid_dequantize(q.candidate, q.shape, q.stored, prefix="base.")  # (out, in)
    return fill_columns(w, q.stored) if q.candidate.outliers else w


def quantize_activations(
    x: torch.Tensor, bits: int, outlier_idx: torch.Tensor | None = None, clip: float = CONFIG.clip
) -> torch.Tensor:
    """Fake-quantized ``x`` (..., in): per token, symmetric ``bits`` off the outliers, float16 on them."""
    xf = x.float()
    keep = torch.ones(x.shape[-1], dtype=torch.bool, device=x.device)  # (in,)
    if outlier_idx is not None and outlier_idx.numel():
        keep[outlier_idx.long()] = False
    qmax = 2 ** (bits - 1) - 1
    body = torch.where(keep, xf, torch.zeros((), device=x.device))  # (..., in)
    scale = (clip * body.abs().amax(dim=-1, keepdim=True) / qmax).clamp_min(1e-12)  # (..., 1)
    q = torch.clamp(torch.round(body / scale), -qmax, qmax) * scale
    out = torch.where(keep, q, xf.to(torch.float16).float())
    return out.to(x.dtype)


def prepare_input(x: torch.Tensor, q: PackedWeight) -> torch.Tensor:
    """What the integer kernel sees: ``x`` (..., in) fake-quantized as ``q``'s candidate prescribes."""
    idx = q.stored.get("outlier_idx")
    return quantize_activations(x, act_bits(q.candidate), idx)


def output_error(weight: torch.Tensor, q: PackedWeight, x: torch.Tensor) -> float:
    """Mean over tokens of ``||W x - Ŵ x̂||²`` on real inputs ``x`` (tokens, in): weight + activation error."""
    w = weight.detach().float()  # (out, in)
    xq = prepare_input(x.float(), q) if q.candidate.kind in ACT_KINDS else x.float()  # (tokens, in)
    diff = x.float() @ w.T - xq @ q.dequantize().T  # (tokens, out)
    return float(diff.pow(2).sum() / x.shape[0])


# -- latency ---------------------------------------------------------------------------------------------
BF16_FLOPS_PER_US = 798e6  # 798 TFLOP/s: the H100 bf16 matmul measured in DESIGN.md
INT8_SPEEDUP = 2.0  # H100 dense int8 tensor-core rate / bf16 rate (1979 / 989 TOPS, datasheet)
INT4_SPEEDUP = 2.0  # Hopper has no int4 MMA: 4-bit activations run on the int8 path (Ampere/Ada: 4.0)


def latency_us(candidate: Candidate, shape: tuple[int, int], nbytes: int, tokens: int) -> float:
    """Analytic microseconds of one ``(out, in)`` matmul over ``tokens`` tokens with ``candidate``.

    ``LAUNCH_US + max(nbytes / bandwidth * format_factor, flops / rate)``: weight-only candidates dequantize
    to bf16 and run at ``BF16_FLOPS_PER_US``; ``a8``/``a4`` run their body at ``INT8_SPEEDUP`` /
    ``INT4_SPEEDUP`` times that, pay one more launch plus reading and writing ``x`` for the per-token
    quantize kernel, and one more launch plus a bf16 GEMM over their ``n`` outlier channels.
    Assumptions, not measurements (as ``allocator/latency.py``).
    """
    out_features, in_features = shape
    memory = nbytes / BANDWIDTH_BYTES_PER_US * format_factor(candidate.name)
    flops = 2.0 * tokens * out_features * in_features
    bits = act_bits(candidate)
    if bits == 16:
        return LAUNCH_US + max(memory, flops / BF16_FLOPS_PER_US)
    speedup = INT8_SPEEDUP if bits == 8 else INT4_SPEEDUP
    body = LAUNCH_US + max(memory, flops / (BF16_FLOPS_PER_US * speedup))
    act_io = LAUNCH_US + tokens * in_features * (2 + bits / 8) / BANDWIDTH_BYTES_PER_US
    side = LAUNCH_US + 2.0 * tokens * out_features * candidate.outliers / BF16_FLOPS_PER_US
    return body + act_io + (side if candidate.outliers else 0.0)


def latency_table(
    candidates: Sequence[str], shapes: Sequence[tuple[int, int]], nbytes: np.ndarray, tokens: int
) -> np.ndarray:
    """(units, candidates) float64 microseconds for (units, candidates) exact byte counts."""
    parsed = [Candidate.parse(c) for c in candidates]
    table = np.zeros(nbytes.shape, dtype=np.float64)
    for u, shape in enumerate(shapes):
        for j, c in enumerate(parsed):
            table[u, j] = latency_us(c, tuple(shape), int(nbytes[u, j]), tokens)
    return table


SPEC_A8 = QuantizerSpec(
    QuantKind.A8, CONFIG, True, layout, quantize_many, dequantize, unsupported, prepare_input
)
SPEC_A4 = QuantizerSpec(
    QuantKind.A4, CONFIG, True, layout, quantize_many, dequantize, unsupported, prepare_input
)
