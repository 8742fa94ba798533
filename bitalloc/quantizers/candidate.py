"""Palette entries: a quantizer configuration and its exact storage cost.

Storage of one quantized (out, in) weight, groups running along the input dimension:

- codes:  ``ceil(out * in * bits / 8)`` bytes, unsigned codes of the row-major matrix packed as one
  little-endian bitstream (see ``packing.py``);
- scales: one float16 per group, ``(out, in // group_size)``;
- mins:   asymmetric only, one float16 per group (``w = scale * q + min``, as llama.cpp's Q4_1);
  symmetric codes dequantize as ``w = scale * (q - 2**(bits-1))`` and store no offset.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from enum import StrEnum

from bitalloc.errors import InvalidInput, UnsupportedShape

DEFAULT_BITS = (2, 3, 4, 5, 6, 8)
DEFAULT_GROUP_SIZES = (32, 64, 128)
SCALE_BYTES = 2  # float16
_NAME = re.compile(r"^(?P<kind>[a-z]+)-w(?P<bits>\d+)g(?P<group>\d+)-(?P<sym>sym|asym)$")


class QuantKind(StrEnum):
    """The quantization algorithm that produces the codes."""

    RTN = "rtn"
    GPTQ = "gptq"


@dataclass(frozen=True, order=True)
class Candidate:
    """One palette entry: algorithm, bit width, group size and symmetry."""

    kind: QuantKind
    bits: int
    group_size: int
    symmetric: bool

    def __post_init__(self) -> None:
        if not 1 <= self.bits <= 8:
            raise InvalidInput(f"bits must be in 1..8, got {self.bits}")
        if self.group_size < 1:
            raise InvalidInput(f"group_size must be positive, got {self.group_size}")

    @property
    def name(self) -> str:
        """Stable text name, e.g. ``gptq-w4g32-asym``; ``Candidate.parse`` reads it back."""
        return f"{self.kind.value}-w{self.bits}g{self.group_size}-{'sym' if self.symmetric else 'asym'}"

    @classmethod
    def parse(cls, name: str) -> Candidate:
        """Read a name written by ``Candidate.name``."""
        match = _NAME.match(name)
        if match is None:
            raise InvalidInput(f"not a candidate name: {name!r} (expected e.g. 'gptq-w4g32-asym')")
        try:
            kind = QuantKind(match["kind"])
        except ValueError:
            known = ", ".join(k.value for k in QuantKind)
            raise InvalidInput(f"unknown quantizer {match['kind']!r} in {name!r}; known: {known}") from None
        return cls(kind, int(match["bits"]), int(match["group"]), match["sym"] == "sym")

    def supports(self, shape: tuple[int, int]) -> bool:
        """Whether the group size divides the input dimension of an (out, in) weight."""
        return len(shape) == 2 and shape[1] % self.group_size == 0

    def check(self, shape: tuple[int, int], unit: str = "") -> None:
        """Raise UnsupportedShape naming the unit and the fix when ``shape`` is not supported."""
        if not self.supports(shape):
            where = f" for unit {unit!r}" if unit else ""
            raise UnsupportedShape(
                f"{self.name}{where}: group size {self.group_size} does not divide the input "
                f"dimension of shape {tuple(shape)}; choose a group size that divides {shape[-1]}"
            )

    def nbytes(self, shape: tuple[int, int]) -> int:
        """Exact bytes of packed codes, scales and mins for an (out, in) weight."""
        self.check(shape)
        out_features, in_features = shape
        groups = out_features * (in_features // self.group_size)
        codes = math.ceil(out_features * in_features * self.bits / 8)
        offsets = 0 if self.symmetric else groups * SCALE_BYTES
        return codes + groups * SCALE_BYTES + offsets


def default_palette(
    *,
    kinds: tuple[QuantKind, ...] = (QuantKind.RTN, QuantKind.GPTQ),
    bits: tuple[int, ...] = DEFAULT_BITS,
    group_sizes: tuple[int, ...] = DEFAULT_GROUP_SIZES,
) -> tuple[Candidate, ...]:
    """The foundation palette: RTN and GPTQ, symmetric and asymmetric, every bit width and group size."""
    return tuple(
        Candidate(kind, b, g, sym)
        for kind in kinds
        for b in bits
        for g in group_sizes
        for sym in (True, False)
    )
