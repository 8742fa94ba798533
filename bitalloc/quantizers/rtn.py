"""Round-to-nearest quantization: every group on its own grid (see ``grid.py``)."""

from __future__ import annotations

import torch

from bitalloc.errors import InvalidInput
from bitalloc.quantizers.candidate import Candidate, QuantKind
from bitalloc.quantizers.grid import group_grid
from bitalloc.quantizers.packing import pack_codes
from bitalloc.quantizers.quantized_weight import QuantizedWeight


def quantize_rtn(weight: torch.Tensor, candidate: Candidate, *, unit: str = "") -> QuantizedWeight:
    """Quantize an ``(out, in)`` weight to the nearest point of each group's grid."""
    shape = tuple(weight.shape)
    if weight.dim() != 2:
        raise InvalidInput(f"weights must be 2-D (out, in), got shape {shape}")
    candidate.check(shape, unit)  # type: ignore[arg-type]
    if candidate.kind != QuantKind.RTN:
        raise InvalidInput(f"quantize_rtn got a {candidate.kind.value} candidate ({candidate.name})")
    w = weight.detach().float()
    if not bool(torch.isfinite(w).all()):
        where = f" of unit {unit!r}" if unit else ""
        raise InvalidInput(f"weight{where} holds NaN or inf; cannot quantize it")
    out_features, in_features = shape
    n_groups = in_features // candidate.group_size
    groups = w.reshape(out_features * n_groups, candidate.group_size)  # (out * in/group, group)
    grid = group_grid(groups, candidate.bits, candidate.symmetric)
    q = grid.quantize(groups).to(torch.uint8)  # (out * in/group, group)
    scales = grid.scale.reshape(out_features, n_groups).to(torch.float16)  # (out, in/group)
    mins = None if candidate.symmetric else grid.offset.reshape(out_features, n_groups).to(torch.float16)
    return QuantizedWeight(
        candidate, (out_features, in_features), pack_codes(q, candidate.bits), scales, mins
    )
