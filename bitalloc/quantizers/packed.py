"""``PackedWeight``: the stored tensors of any non-foundation candidate, checked against its layout.

A layout maps tensor names to ``(dtype, shape)``; it is the single source of a candidate's bytes
(``Candidate.nbytes`` sums it). Dequantization is the registered quantizer's (``registry.py``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch

from bitalloc.errors import InvalidInput
from bitalloc.quantizers.candidate import Candidate, QuantKind
from bitalloc.quantizers.packing import packed_nbytes
from bitalloc.quantizers.quantized_weight import QuantizedWeight

Layout = dict[str, tuple[torch.dtype, tuple[int, ...]]]


def layout_bytes(layout: Layout) -> int:
    """Bytes of every tensor of ``layout``."""
    total = 0
    for dtype, shape in layout.values():
        numel = 1
        for d in shape:
            numel *= d
        total += numel * torch.empty((), dtype=dtype).element_size()
    return total


def grid_layout(
    bits: int, group_size: int, symmetric: bool, shape: tuple[int, int], prefix: str = ""
) -> Layout:
    """The foundation format (codes bitstream, float16 scales, float16 mins when asymmetric)."""
    out_features, in_features = shape
    groups = (out_features, in_features // group_size)
    layout: Layout = {
        f"{prefix}codes": (torch.uint8, (packed_nbytes(out_features * in_features, bits),)),
        f"{prefix}scales": (torch.float16, groups),
    }
    if not symmetric:
        layout[f"{prefix}mins"] = (torch.float16, groups)
    return layout


def grid_candidate(candidate: Candidate, kind: QuantKind = QuantKind.RTN) -> Candidate:
    """The foundation candidate with ``candidate``'s bits, group size and symmetry."""
    return Candidate(kind, candidate.bits, candidate.group_size, candidate.symmetric)


def grid_dequantize(
    candidate: Candidate, shape: tuple[int, int], tensors: Mapping[str, torch.Tensor], prefix: str = ""
) -> torch.Tensor:
    """Dequantize foundation-format tensors stored under ``prefix`` (float32 ``(out, in)``)."""
    grid = grid_candidate(candidate)
    picked = {k: tensors[prefix + k] for k in ("codes", "scales", "mins") if prefix + k in tensors}
    return QuantizedWeight.from_tensors(grid, shape, picked).dequantize()


@dataclass(frozen=True, eq=False)
class PackedWeight:
    """Named tensors of one quantized ``(out, in)`` weight; names, dtypes and shapes follow the layout."""

    candidate: Candidate
    shape: tuple[int, int]
    stored: dict[str, torch.Tensor]

    def __post_init__(self) -> None:
        from bitalloc.quantizers.registry import spec_of

        shape = tuple(int(d) for d in self.shape)
        object.__setattr__(self, "shape", shape)
        cand = self.candidate
        cand.check(shape)  # type: ignore[arg-type]
        layout = spec_of(cand).layout(cand, shape)
        if set(layout) != set(self.stored):
            raise InvalidInput(f"{cand.name} stores tensors {sorted(layout)}, got {sorted(self.stored)}")
        for name, (dtype, tshape) in layout.items():
            t = self.stored[name]
            if not isinstance(t, torch.Tensor) or t.dtype != dtype or tuple(t.shape) != tshape:
                got = f"{t.dtype} {tuple(t.shape)}" if isinstance(t, torch.Tensor) else type(t).__name__
                raise InvalidInput(f"{cand.name}: {name} must be {dtype} of shape {tshape}, got {got}")

    @property
    def nbytes(self) -> int:
        """Bytes actually held by the stored tensors (equals ``candidate.nbytes(shape)``)."""
        return sum(t.numel() * t.element_size() for t in self.stored.values())

    def tensors(self) -> dict[str, torch.Tensor]:
        """The stored tensors by name."""
        return dict(self.stored)

    def dequantize(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """The ``(out, in)`` weight, computed in float32 and cast to ``dtype``."""
        from bitalloc.quantizers.registry import spec_of

        return spec_of(self.candidate).dequantize(self).to(dtype)

    @classmethod
    def from_tensors(
        cls, candidate: Candidate, shape: tuple[int, int], tensors: Mapping[str, torch.Tensor]
    ) -> PackedWeight:
        """Rebuild from ``tensors()`` output; raise InvalidInput on missing or unexpected names."""
        return cls(candidate, shape, dict(tensors))
