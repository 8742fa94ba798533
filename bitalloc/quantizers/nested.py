"""Bit-nested ("matryoshka") codes: one 8-bit code whose top ``k`` bits are a valid ``k``-bit code.

Every weight gets an 8-bit RTN code on its group's 8-bit grid (float16 scale, and min when asymmetric).
The codes are stored as bit planes, most significant first: plane ``i`` holds bit ``7 - i`` of every code
as a 1-bit bitstream (``packing.py``). ``nest-w<k>`` stores the first ``k`` planes and the 8-bit grid;
its tensors are exactly the first ``k`` planes of ``nest-w8``'s, so one ``nest-w8`` file serves 8, 4 and
2 bits by reading a prefix, and serving a unit at fewer bits costs no extra storage. A ``k``-bit read
reconstructs the middle of its bin:
``q̂ = top * 2**(8-k) + (2**(8-k) - 1) / 2``, ``w = scale * (q̂ - z) + min``.

Bytes: ``k * ceil(out * in / 8)`` planes + the 8-bit grid's scales (and mins).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from bitalloc.quantizers.candidate import Candidate, QuantKind
from bitalloc.quantizers.grid import group_grid
from bitalloc.quantizers.packed import Layout, PackedWeight
from bitalloc.quantizers.packing import pack_codes, packed_nbytes, unpack_codes
from bitalloc.quantizers.registry import QuantizerSpec

FULL_BITS = 8


@dataclass(frozen=True)
class NestedConfig:
    """Bits of the full stored code."""

    full_bits: int = FULL_BITS


CONFIG = NestedConfig()


def layout(candidate: Candidate, shape: tuple[int, int]) -> Layout:
    """``bits`` bit planes plus the 8-bit grid."""
    out_features, in_features = shape
    groups = (out_features, in_features // candidate.group_size)
    lay: Layout = {
        "planes": (torch.uint8, (candidate.bits, packed_nbytes(out_features * in_features, 1))),
        "scales": (torch.float16, groups),
    }
    if not candidate.symmetric:
        lay["mins"] = (torch.float16, groups)
    return lay


def quantize_many(
    weight: torch.Tensor, candidates: Sequence[Candidate], hessian: torch.Tensor | None, unit: str = ""
) -> list[PackedWeight]:
    """One 8-bit code per symmetry; each candidate keeps its top ``bits`` planes."""
    w = weight.detach().float()  # (out, in)
    out_features, in_features = w.shape
    full: dict[tuple[int, bool], dict[str, torch.Tensor]] = {}
    results = []
    for c in candidates:
        key = (c.group_size, c.symmetric)
        if key not in full:
            groups = w.reshape(-1, c.group_size)  # (out * in/g, g)
            grid = group_grid(groups, FULL_BITS, c.symmetric)
            q = grid.quantize(groups).to(torch.uint8).reshape(-1)  # (out * in,)
            planes = torch.stack([pack_codes((q >> (FULL_BITS - 1 - i)) & 1, 1) for i in range(FULL_BITS)])
            n_groups = in_features // c.group_size
            stored = {"planes": planes, "scales": grid.scale.reshape(out_features, n_groups).half()}
            if not c.symmetric:
                stored["mins"] = grid.offset.reshape(out_features, n_groups).half()
            full[key] = stored
        tensors = dict(full[key])
        tensors["planes"] = tensors["planes"][: c.bits].clone()
        results.append(PackedWeight(c, (out_features, in_features), tensors))
    return results


def dequantize(q: PackedWeight) -> torch.Tensor:
    """Mid-bin reconstruction from the top ``bits`` planes: float32 ``(out, in)``."""
    out_features, in_features = q.shape
    k, n = q.candidate.bits, out_features * in_features
    top = torch.zeros(n, dtype=torch.float32, device=q.stored["scales"].device)
    for i in range(k):
        top = top * 2 + unpack_codes(q.stored["planes"][i], 1, n).float()
    shift = 2 ** (FULL_BITS - k)
    q_hat = top * shift + (shift - 1) / 2  # (out * in,)
    g = q.candidate.group_size
    q_hat = q_hat.view(out_features, in_features // g, g)
    scale = q.stored["scales"].float().unsqueeze(-1)  # (out, in/g, 1)
    if q.candidate.symmetric:
        w = scale * (q_hat - 2 ** (FULL_BITS - 1))
    else:
        w = scale * q_hat + q.stored["mins"].float().unsqueeze(-1)
    return w.reshape(out_features, in_features)


SPEC = QuantizerSpec(QuantKind.NEST, CONFIG, False, layout, quantize_many, dequantize)
