"""Sub-1-bit ternary weights (QMoE's regime) with a fixed-rate enumerative dictionary code.

Each row is cut into blocks of ``M = 16`` weights; each block keeps exactly ``K = 3`` non-zeros of value
``±s`` (``s`` one float16 scale per (row, group)) and zeros elsewhere. A block is one of ``C(16, 3) * 2**3 =
4480`` words of a dictionary, numbered by the combinatorial number system (``rank(c1<c2<c3) = C(c1,1) +
C(c2,2) + C(c3,3)``) times 8 plus the three sign bits, and stored as a 13-bit code: 0.8125 code bits per
weight, so ``tern-w1g128-sym`` measures ``0.8125 + 16/128 = 0.9375`` bits per parameter, below one bit.
Positions are the ``K`` largest of ``|w_j| * sqrt(diag(H)_j)`` (``|w_j|`` without a Hessian); ``s`` is the
least-squares scale ``mean |w|`` over the kept positions of the group. The name's ``w1`` means "one bit or
less"; only ``bits = 1`` and symmetric grids are defined. Unlike QMoE's variable-length code, the rate is
fixed, so bytes are known before quantizing. The 13-bit codes are stored as an 8-bit stream (low bits)
and a 5-bit stream (high bits).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from bitalloc.quantizers.candidate import Candidate, QuantKind
from bitalloc.quantizers.packed import Layout, PackedWeight
from bitalloc.quantizers.packing import pack_codes, packed_nbytes, unpack_codes
from bitalloc.quantizers.registry import QuantizerSpec

BLOCK = 16
NONZEROS = 3
CODE_BITS = math.ceil(math.log2(math.comb(BLOCK, NONZEROS) * 2**NONZEROS))  # 13


@dataclass(frozen=True)
class TernaryConfig:
    """Block length and non-zeros per block (fixed: the dictionary is built from them)."""

    block: int = BLOCK
    nonzeros: int = NONZEROS


CONFIG = TernaryConfig()


def layout(candidate: Candidate, shape: tuple[int, int]) -> Layout:
    """Low and high code streams and one float16 scale per (row, group)."""
    out_features, in_features = shape
    n_words = out_features * in_features // BLOCK
    return {
        "codes_lo": (torch.uint8, (packed_nbytes(n_words, 8),)),
        "codes_hi": (torch.uint8, (packed_nbytes(n_words, CODE_BITS - 8),)),
        "scales": (torch.float16, (out_features, in_features // candidate.group_size)),
    }


def unsupported(candidate: Candidate, shape: tuple[int, int]) -> str | None:
    """Only ``tern-w1g<g>-sym`` with ``g`` a multiple of 16."""
    if candidate.bits != 1 or not candidate.symmetric:
        return "ternary candidates are named tern-w1g<group>-sym"
    if candidate.group_size % BLOCK:
        return f"group size must be a multiple of the {BLOCK}-weight block"
    return None


def _combos() -> torch.Tensor:
    """Positions ``(C(16,3), 3)`` of every word, indexed by combinatorial rank."""
    table = torch.empty(math.comb(BLOCK, NONZEROS), NONZEROS, dtype=torch.long)
    for combo in itertools.combinations(range(BLOCK), NONZEROS):
        table[sum(math.comb(c, i + 1) for i, c in enumerate(combo))] = torch.tensor(combo)
    return table


def quantize_many(
    weight: torch.Tensor, candidates: Sequence[Candidate], hessian: torch.Tensor | None, unit: str = ""
) -> list[PackedWeight]:
    """Keep the 3 most salient weights of every 16 at ``±s``; encode each block as one 13-bit word."""
    w = weight.detach().float()  # (out, in)
    out_features, in_features = w.shape
    sal = w.abs()
    if hessian is not None and tuple(hessian.shape) == (in_features, in_features):
        sal = sal * hessian.diagonal().float().clamp_min(0).sqrt()
    blocks = w.reshape(-1, BLOCK)  # (words, 16)
    pos = sal.reshape(-1, BLOCK).topk(NONZEROS, dim=1, sorted=False).indices.sort(dim=1).values  # (words, 3)
    kept = blocks.gather(1, pos)  # (words, 3)
    binom = [  # C(c, i+1) for every position c
        torch.tensor([math.comb(c, i + 1) for c in range(BLOCK)], device=w.device) for i in range(NONZEROS)
    ]
    rank = sum(binom[i][pos[:, i]] for i in range(NONZEROS))
    signs = (kept < 0).long()  # (words, 3)
    word = rank * 2**NONZEROS + signs[:, 0] * 4 + signs[:, 1] * 2 + signs[:, 2]  # (words,)
    stored_codes = {
        "codes_lo": pack_codes((word & 0xFF).to(torch.uint8), 8),
        "codes_hi": pack_codes((word >> 8).to(torch.uint8), CODE_BITS - 8),
    }
    results = []
    for c in candidates:
        mask = torch.zeros_like(blocks).scatter_(1, pos, 1.0).reshape(out_features, -1, c.group_size)
        absw = w.abs().reshape(out_features, -1, c.group_size)  # (out, in/g, g)
        scale = (absw * mask).sum(-1) / mask.sum(-1).clamp_min(1)  # (out, in/g)
        tensors = {**{k: v.clone() for k, v in stored_codes.items()}, "scales": scale.half()}
        results.append(PackedWeight(c, (out_features, in_features), tensors))
    return results


def dequantize(q: PackedWeight) -> torch.Tensor:
    """Decode every word into its block: float32 ``(out, in)``."""
    out_features, in_features = q.shape
    n_words = out_features * in_features // BLOCK
    word = unpack_codes(q.stored["codes_lo"], 8, n_words).long()
    word |= unpack_codes(q.stored["codes_hi"], CODE_BITS - 8, n_words).long() << 8
    rank, sign_bits = word >> NONZEROS, word & (2**NONZEROS - 1)
    if bool((rank >= math.comb(BLOCK, NONZEROS)).any()):
        raise ValueError("corrupt ternary stream: word outside the dictionary")
    pos = _combos().to(word.device)[rank]  # (words, 3)
    shifts = torch.arange(NONZEROS - 1, -1, -1, device=word.device)
    vals = 1.0 - 2.0 * ((sign_bits.unsqueeze(1) >> shifts) & 1).float()  # (words, 3) ±1
    blocks = torch.zeros(n_words, BLOCK, device=word.device).scatter_(1, pos, vals)
    g = q.candidate.group_size
    w = blocks.reshape(out_features, in_features // g, g) * q.stored["scales"].float().unsqueeze(-1)
    return w.reshape(out_features, in_features)


SPEC = QuantizerSpec(QuantKind.TERN, CONFIG, False, layout, quantize_many, dequantize, unsupported)
