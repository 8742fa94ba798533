"""GPTQ with activation order (``gptqact``): columns are quantized by decreasing ``diag(H)``.

The most active inputs are quantized first, while the most columns are left to absorb their error.
Weight and Hessian are permuted by ``perm = argsort(-diag(H))`` (stable) and quantized by the foundation
GPTQ; groups run along the *permuted* columns, so each group holds inputs of similar activity. Storage is
the foundation format of the permuted matrix plus the permutation as int16 ``(in,)``:
``W[:, perm] = dequantize(codes, scales, mins)``.

Damping (``GptqActConfig.damp``): ``damp * mean(diag H)`` is added to the diagonal of H before the
Cholesky factorization of ``H^-1`` (1% as in the GPTQ paper); inputs that never fire (``diag H = 0``) get
``H_ii = 1`` and zero weights, and sort last.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from bitalloc.quantizers.candidate import Candidate, QuantKind
from bitalloc.quantizers.gptq import quantize_gptq_many
from bitalloc.quantizers.packed import Layout, PackedWeight, grid_candidate, grid_dequantize, grid_layout
from bitalloc.quantizers.registry import QuantizerSpec, check_hessian

_MAX_IN = 32767  # the permutation is stored as int16


@dataclass(frozen=True)
class GptqActConfig:
    """GPTQ settings: relative diagonal damping and lazy-update block size."""

    damp: float = 0.01
    block_size: int = 128


CONFIG = GptqActConfig()


def layout(candidate: Candidate, shape: tuple[int, int]) -> Layout:
    """Foundation grid of the permuted weight plus the int16 permutation."""
    return {
        **grid_layout(candidate.bits, candidate.group_size, candidate.symmetric, shape),
        "perm": (torch.int16, (shape[1],)),
    }


def unsupported(candidate: Candidate, shape: tuple[int, int]) -> str | None:
    """Inputs beyond int16 range cannot be permuted in storage."""
    return None if shape[1] <= _MAX_IN else f"at most {_MAX_IN} input features (int16 permutation)"


def activation_order(hessian: torch.Tensor) -> torch.Tensor:
    """Column order by decreasing ``diag(H)``, ties by index: int64 ``(in,)``."""
    return torch.sort(-hessian.diagonal().float(), stable=True).indices


def permuted(weight: torch.Tensor, hessian: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The activation order (in,), the weight with its columns in that order (out, in) float32 and the
    Hessian permuted alike (in, in)."""
    perm = activation_order(hessian)
    return perm, weight.detach().float()[:, perm], hessian[perm][:, perm]


def quantize_many(
    weight: torch.Tensor, candidates: Sequence[Candidate], hessian: torch.Tensor | None, unit: str = ""
) -> list[PackedWeight]:
    """Act-order GPTQ of one ``(out, in)`` weight for every candidate in one batched pass."""
    if not candidates:
        return []
    perm, w_p, h_p = permuted(weight, check_hessian(candidates[0], hessian, weight.shape[1], unit))
    grids = [grid_candidate(c, QuantKind.GPTQ) for c in candidates]
    packed = quantize_gptq_many(w_p, h_p, grids, damp=CONFIG.damp, block_size=CONFIG.block_size, unit=unit)
    perm16 = perm.to(torch.int16)
    shape = (weight.shape[0], weight.shape[1])
    return [
        PackedWeight(c, shape, {**q.tensors(), "perm": perm16.clone()})
        for c, q in zip(candidates, packed, strict=True)
    ]


def dequantize(q: PackedWeight) -> torch.Tensor:
    """Undo the permutation of the dequantized grid: float32 ``(out, in)``."""
    w_p = grid_dequantize(q.candidate, q.shape, q.stored)  # (out, in) permuted
    out = torch.empty_like(w_p)
    out[:, q.stored["perm"].long()] = w_p
    return out


SPEC = QuantizerSpec(QuantKind.GPTQACT, CONFIG, True, layout, quantize_many, dequantize, unsupported)
