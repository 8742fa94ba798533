"""One entry point for every quantizer kind: ``quantize(weight, candidate, hessian=..., unit=...)``.

Foundation candidates (``rtn``/``gptq`` without extras) return a ``QuantizedWeight``; every other kind goes
through the registry (``registry.py``) and returns a ``PackedWeight``. Every kind needs at most the input
Hessian ``H = XᵀX / n``: AWQ reads its activation statistic (the channel RMS) from ``diag(H)``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from types import MappingProxyType

import torch

from bitalloc.errors import InvalidInput
from bitalloc.quantizers.candidate import Candidate, QuantKind
from bitalloc.quantizers.gptq import quantize_gptq
from bitalloc.quantizers.packed import PackedWeight
from bitalloc.quantizers.quantized_weight import QuantizedWeight
from bitalloc.quantizers.rtn import quantize_rtn

_Quantizer = Callable[[torch.Tensor, Candidate, "torch.Tensor | None", str], QuantizedWeight]


def _rtn(
    weight: torch.Tensor, candidate: Candidate, hessian: torch.Tensor | None, unit: str
) -> QuantizedWeight:
    return quantize_rtn(weight, candidate, unit=unit)


def _gptq(
    weight: torch.Tensor, candidate: Candidate, hessian: torch.Tensor | None, unit: str
) -> QuantizedWeight:
    if hessian is None:
        where = f"unit {unit!r}" if unit else "this weight"
        raise InvalidInput(
            f"{candidate.name} for {where} needs the Hessian of its inputs: run calibration "
            "(collect X^T X / n on calibration data) first, or use an RTN candidate"
        )
    return quantize_gptq(weight, hessian, candidate, unit=unit)


# Read-only: the quantizer of each kind.
QUANTIZERS: Mapping[QuantKind, _Quantizer] = MappingProxyType({QuantKind.RTN: _rtn, QuantKind.GPTQ: _gptq})


def quantize(
    weight: torch.Tensor,
    candidate: Candidate,
    *,
    hessian: torch.Tensor | None = None,
    unit: str = "",
    n_tokens: int | None = None,
) -> QuantizedWeight | PackedWeight:
    """Quantize an ``(out, in)`` weight with ``candidate``; GPTQ needs the ``(in, in)`` input Hessian.

    ``n_tokens`` (the calibration tokens behind ``hessian``) lets AWQ and k-means refuse too few.
    """
    if weight.dim() != 2:
        raise InvalidInput(f"weights must be 2-D (out, in), got shape {tuple(weight.shape)}")
    candidate.check(tuple(weight.shape), unit)  # type: ignore[arg-type]
    if not candidate.foundation_format:
        from bitalloc.quantizers.registry import quantize_batch

        return quantize_batch(weight, [candidate], hessian, unit, n_tokens=n_tokens)[0]
    try:
        quantizer = QUANTIZERS[candidate.kind]
    except KeyError:
        raise InvalidInput(f"no quantizer registered for {candidate.kind!r}") from None
    return quantizer(weight, candidate, hessian, unit)
