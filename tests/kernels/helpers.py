"""Random packed weights for kernel tests (fresh codes, scales and mins every call)."""

from __future__ import annotations

import torch

from bitalloc.quantizers.candidate import Candidate, QuantKind
from bitalloc.quantizers.packing import pack_codes
from bitalloc.quantizers.quantized_weight import QuantizedWeight


def device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def random_qweight(
    bits: int, group: int, sym: bool, shape: tuple[int, int], gen: torch.Generator
) -> QuantizedWeight:
    out_features, in_features = shape
    groups = (out_features, in_features // group)
    q = torch.randint(0, 1 << bits, shape, generator=gen)
    scales = (torch.rand(groups, generator=gen) * 0.1 + 0.01).half()
    mins = None if sym else (torch.randn(groups, generator=gen) * 0.1).half()
    cand = Candidate(QuantKind.RTN, bits, group, sym)
    qw = QuantizedWeight(cand, shape, pack_codes(q, bits), scales, mins)
    dev = device()
    return QuantizedWeight(
        cand, shape, qw.codes.to(dev), scales.to(dev), None if mins is None else mins.to(dev)
    )


def rel_err(y: torch.Tensor, ref: torch.Tensor) -> float:
    assert torch.isfinite(y).all(), "output holds NaN/inf (unwritten or poisoned elements)"
    return float((y.double() - ref.double()).norm() / ref.double().norm())
