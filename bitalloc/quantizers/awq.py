"""AWQ (Lin et al., 2023): activation-aware per-input-channel scaling before round-to-nearest.

Each input channel ``j`` is scaled by ``s_j = a_j^α`` (normalized so that ``max(s) * min(s) = 1``), where
``a_j = sqrt(diag(H)_j)`` is the RMS of the calibration activations reaching that channel (H = XᵀX / n);
``W·diag(s)`` is quantized with the RTN grid and served as ``Q / s``. ``α`` is searched on a grid
(``AwqConfig.alphas``) to minimize the calibration output error tr(ΔW H ΔWᵀ) — the same objective as
AWQ's search on activations, computed through H.

Folding: SmolLM2's q/k/v and gate/up follow an RMSNorm, so ``1/s`` could fold into the norm weight, but
q/k/v (and gate/up) would then have to share one ``s`` and the units would no longer be independent
choices of the allocator. We therefore store ``s`` per unit as a float16 ``(in,)`` vector, counted in the
candidate's bytes (``2 * in``); a deployment may fold it where the architecture allows.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from bitalloc.quantizers.candidate import Candidate, QuantKind
from bitalloc.quantizers.packed import Layout, PackedWeight, grid_candidate, grid_dequantize, grid_layout
from bitalloc.quantizers.registry import QuantizerSpec, check_hessian
from bitalloc.quantizers.rtn import quantize_rtn
from bitalloc.sensitivity.proxy import proxy_errors


@dataclass(frozen=True)
class AwqConfig:
    """Exponents tried for ``s = a^α``, the floor on activation RMS (relative to its mean), and the
    calibration tokens needed per input channel: below one, H = XᵀX / n is singular and the α search
    fits the few calibration tokens rather than the distribution."""

    alphas: tuple[float, ...] = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)
    floor: float = 1e-4
    tokens_per_input: float = 1.0


CONFIG = AwqConfig()


def layout(candidate: Candidate, shape: tuple[int, int]) -> Layout:
    """Foundation grid of ``W·diag(s)`` plus the float16 scale vector."""
    return {
        **grid_layout(candidate.bits, candidate.group_size, candidate.symmetric, shape),
        "awq_scale": (torch.float16, (shape[1],)),
    }


def channel_scales(hessian: torch.Tensor, alpha: float) -> torch.Tensor:
    """Float16-representable float32 ``(in,)`` scales ``a^α / sqrt(max·min)`` with ``a = sqrt(diag H)``."""
    d = hessian.diagonal().float().clamp_min(0).sqrt()  # (in,)
    a = d.clamp_min(CONFIG.floor * float(d.mean()) + 1e-12)
    s = a.pow(alpha)
    s = s / (s.max() * s.min()).sqrt()
    return s.to(torch.float16).float()


def quantize_many(
    weight: torch.Tensor, candidates: Sequence[Candidate], hessian: torch.Tensor | None, unit: str = ""
) -> list[PackedWeight]:
    """Search ``α`` per candidate on tr(ΔW H ΔWᵀ) and keep the best scaled RTN quantization."""
    if not candidates:
        return []
    w = weight.detach().float()  # (out, in)
    h = check_hessian(candidates[0], hessian, w.shape[1], unit)  # (in, in)
    scales = [channel_scales(h, a) for a in CONFIG.alphas]  # each (in,)
    shape = (w.shape[0], w.shape[1])
    out = []
    for c in candidates:
        grid = grid_candidate(c)
        tried = [quantize_rtn(w * s, grid, unit=unit) for s in scales]
        errors = proxy_errors(w, [q.dequantize() / s for q, s in zip(tried, scales, strict=True)], h)
        best = min(range(len(errors)), key=lambda i: (errors[i], i))
        tensors = {**tried[best].tensors(), "awq_scale": scales[best].to(torch.float16)}
        out.append(PackedWeight(c, shape, tensors))
    return out


def dequantize(q: PackedWeight) -> torch.Tensor:
    """``Q / s``: float32 ``(out, in)``."""
    return grid_dequantize(q.candidate, q.shape, q.stored) / q.stored["awq_scale"].float()


def min_tokens(candidate: Candidate, shape: tuple[int, int]) -> int:
    """Calibration tokens the α search needs: ``tokens_per_input`` per input channel."""
    return math.ceil(CONFIG.tokens_per_input * shape[1])


SPEC = QuantizerSpec(QuantKind.AWQ, CONFIG, True, layout, quantize_many, dequantize, min_tokens=min_tokens)
