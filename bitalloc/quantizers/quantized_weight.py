"""A quantized (out, in) weight in the storage format of ``candidate.py``: packed codes, scales, mins."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch

from bitalloc.errors import InvalidInput
from bitalloc.quantizers.candidate import Candidate
from bitalloc.quantizers.packing import packed_nbytes, unpack_codes


@dataclass(frozen=True, eq=False)
class QuantizedWeight:
    """Packed codes plus float16 group scales (and mins when asymmetric) of one ``(out, in)`` weight."""

    candidate: Candidate
    shape: tuple[int, int]
    codes: torch.Tensor  # (ceil(out * in * bits / 8),) uint8 little-endian bitstream
    scales: torch.Tensor  # (out, in / group) float16
    mins: torch.Tensor | None  # (out, in / group) float16 when asymmetric, else None

    def __post_init__(self) -> None:
        shape = tuple(int(d) for d in self.shape)
        if len(shape) != 2:
            raise InvalidInput(f"quantized weights are 2-D (out, in), got shape {shape}")
        object.__setattr__(self, "shape", shape)
        cand = self.candidate
        cand.check(shape)
        out_features, in_features = shape
        groups = (out_features, in_features // cand.group_size)
        n_code_bytes = packed_nbytes(out_features * in_features, cand.bits)
        _expect(self.codes, "codes", torch.uint8, (n_code_bytes,), cand)
        _expect(self.scales, "scales", torch.float16, groups, cand)
        if cand.symmetric:
            if self.mins is not None:
                raise InvalidInput(f"{cand.name} is symmetric and stores no mins")
        elif self.mins is None:
            raise InvalidInput(f"{cand.name} is asymmetric and needs mins of shape {groups}")
        else:
            _expect(self.mins, "mins", torch.float16, groups, cand)

    @property
    def nbytes(self) -> int:
        """Bytes actually held by codes, scales and mins (equals ``candidate.nbytes(shape)``)."""
        return sum(t.numel() * t.element_size() for t in self.tensors().values())

    def dequantize(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """The ``(out, in)`` weight, computed in float32 and cast to ``dtype``."""
        out_features, in_features = self.shape
        cand = self.candidate
        n_groups = in_features // cand.group_size
        q = unpack_codes(self.codes, cand.bits, out_features * in_features)
        q = q.view(out_features, n_groups, cand.group_size).float()  # (out, in/group, group)
        scale = self.scales.float().unsqueeze(-1)  # (out, in/group, 1)
        if cand.symmetric:
            w = scale * (q - float(2 ** (cand.bits - 1)))
        else:
            assert self.mins is not None
            w = scale * q + self.mins.float().unsqueeze(-1)
        return w.reshape(out_features, in_features).to(dtype)

    def tensors(self) -> dict[str, torch.Tensor]:
        """The stored tensors by name (``codes``, ``scales`` and, when asymmetric, ``mins``)."""
        out = {"codes": self.codes, "scales": self.scales}
        if self.mins is not None:
            out["mins"] = self.mins
        return out

    @classmethod
    def from_tensors(
        cls, candidate: Candidate, shape: tuple[int, int], tensors: Mapping[str, torch.Tensor]
    ) -> QuantizedWeight:
        """Rebuild from ``tensors()`` output; raise InvalidInput on missing or unexpected names."""
        expected = {"codes", "scales"} | (set() if candidate.symmetric else {"mins"})
        if set(tensors) != expected:
            raise InvalidInput(f"{candidate.name} stores tensors {sorted(expected)}, got {sorted(tensors)}")
        return cls(candidate, shape, tensors["codes"], tensors["scales"], tensors.get("mins"))


def _expect(t: torch.Tensor, name: str, dtype: torch.dtype, shape: tuple[int, ...], cand: Candidate) -> None:
    if not isinstance(t, torch.Tensor) or t.dtype != dtype or tuple(t.shape) != shape:
        got = f"{t.dtype} {tuple(t.shape)}" if isinstance(t, torch.Tensor) else type(t).__name__
        raise InvalidInput(f"{cand.name}: {name} must be {dtype} of shape {shape}, got {got}")
