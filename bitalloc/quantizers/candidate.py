"""Palette entries: a quantizer configuration and its exact storage cost.

Storage of one quantized (out, in) weight, groups running along the input dimension:

- codes:  ``ceil(out * in * bits / 8)`` bytes, unsigned codes of the row-major matrix packed as one
  little-endian bitstream (see ``packing.py``);
- scales: one float16 per group, ``(out, in // group_size)``;
- mins:   asymmetric only, one float16 per group (``w = scale * q + min``, as llama.cpp's Q4_1);
  symmetric codes dequantize as ``w = scale * (q - 2**(bits-1))`` and store no offset.

That is the *foundation format* of ``rtn`` and ``gptq`` candidates without extras (``QuantizedWeight``);
kernels and exporters may rely on it (``Candidate.foundation_format``). Every other candidate is stored as
a ``PackedWeight`` whose named tensors are listed by its quantizer's ``layout`` (see ``registry.py``), and
``nbytes`` is the sum of that layout, so bytes are exact by construction and checked by the contract tests.

Names: ``<kind>-w<bits>g<group>-<sym|asym>[-o<outliers>][-h<percent>]``. Foundation names (``rtn-w4g32-asym``,
``gptq-w3g64-sym``) are unchanged. New kinds use new prefixes (``gptqact``, ``awq``, ``kmeans``,
``lutgptq``, ``nest``, ``mix``, ``tern``); the optional ``-o<n>`` suffix keeps ``n`` input columns in float16
(QUIK/SpQR) on top of an ``rtn``, ``gptq`` or ``gptqact`` base. ``a8``/``a4`` names (``a4-w4g64-sym-o32``)
are weight-activation candidates: the name's bits, group and symmetry are the weights', ``-o<n>`` their
float16 channels (``activations.py``). For ``kmeans`` and ``lutgptq`` the group is the number of columns of a
row that share one lookup table and the name always says ``asym``; for ``mix`` and ``tern`` see their modules.
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
_NAME = re.compile(
    r"^(?P<kind>[a-z][a-z0-9]*)-w(?P<bits>\d+)g(?P<group>\d+)-(?P<sym>sym|asym)(?:-o(?P<outliers>[1-9]\d*))?(?:-h(?P<high>[1-9]\d?))?$"
)


class QuantKind(StrEnum):
    """The quantization algorithm that produces the codes."""

    RTN = "rtn"
    GPTQ = "gptq"
    GPTQACT = "gptqact"  # GPTQ with activation order (gptq_actorder.py)
    AWQ = "awq"  # activation-aware scaling + RTN (awq.py)
    KMEANS = "kmeans"  # sensitivity-weighted k-means lookup tables (kmeans.py)
    LUTGPTQ = "lutgptq"  # GPTQ onto k-means lookup tables, activation order (lutgptq.py)
    NEST = "nest"  # bit-nested matryoshka codes (nested.py)
    MIX = "mix"  # two bit widths by column groups (mixbits.py)
    TERN = "tern"  # sparse ternary with an enumerative code (ternary.py)
    A8 = "a8"  # W<bits>A8: activations 8-bit per token, float16 outlier channels (activations.py)
    A4 = "a4"  # W<bits>A4: activations 4-bit per token, float16 outlier channels (activations.py)


FOUNDATION_KINDS = (QuantKind.RTN, QuantKind.GPTQ)
ACT_KINDS = (QuantKind.A8, QuantKind.A4)  # their -o<n> channels are float16 in activations and weights
OUTLIER_KINDS = (QuantKind.RTN, QuantKind.GPTQ, QuantKind.GPTQACT, *ACT_KINDS)
ASYM_ONLY_KINDS = (QuantKind.KMEANS, QuantKind.LUTGPTQ)


@dataclass(frozen=True, order=True)
class Candidate:
    """One palette entry: algorithm, bit width, group size, symmetry and float16 outlier columns."""

    kind: QuantKind
    bits: int
    group_size: int
    symmetric: bool
    outliers: int = 0
    high_percent: int = 0  # mix only: percent of column groups stored at bits + 1

    def __post_init__(self) -> None:
        if not 1 <= self.bits <= 8:
            raise InvalidInput(f"bits must be in 1..8, got {self.bits}")
        if self.group_size < 1:
            raise InvalidInput(f"group_size must be positive, got {self.group_size}")
        if self.outliers < 0:
            raise InvalidInput(f"outliers must be non-negative, got {self.outliers}")
        if self.outliers and self.kind not in OUTLIER_KINDS:
            allowed = ", ".join(k.value for k in OUTLIER_KINDS)
            raise InvalidInput(f"{self.kind.value} candidates keep no outliers; outliers go with {allowed}")
        if (self.kind is QuantKind.MIX) != (1 <= self.high_percent <= 99):
            raise InvalidInput(
                f"high_percent (the '-h<pct>' suffix) is 1..99 for mix candidates and 0 otherwise, "
                f"got {self.high_percent} for {self.kind.value}"
            )
        if self.kind is QuantKind.MIX and self.bits > 7:
            raise InvalidInput("mix candidates store some groups at bits + 1, so bits must be at most 7")
        if self.symmetric and self.kind in ASYM_ONLY_KINDS:
            raise InvalidInput(f"{self.kind.value} candidates are named '-asym' (lookup tables have no zero)")

    @property
    def name(self) -> str:
        """Stable text name, e.g. ``gptq-w4g32-asym``; ``Candidate.parse`` reads it back."""
        base = f"{self.kind.value}-w{self.bits}g{self.group_size}-{'sym' if self.symmetric else 'asym'}"
        base = f"{base}-o{self.outliers}" if self.outliers else base
        return f"{base}-h{self.high_percent}" if self.high_percent else base

    @property
    def foundation_format(self) -> bool:
        """Whether this candidate is stored as a foundation ``QuantizedWeight`` (codes, scales, mins)."""
        return self.kind in FOUNDATION_KINDS and not self.outliers

    @property
    def base(self) -> Candidate:
        """The same candidate without outlier columns."""
        return Candidate(self.kind, self.bits, self.group_size, self.symmetric, 0, self.high_percent)

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
        outliers = int(match["outliers"]) if match["outliers"] else 0
        high = int(match["high"]) if match["high"] else 0
        return cls(kind, int(match["bits"]), int(match["group"]), match["sym"] == "sym", outliers, high)

    def supports(self, shape: tuple[int, int]) -> bool:
        """Whether the group size divides the input dimension of an (out, in) weight (and extras fit)."""
        return self.unsupported_reason(shape) is None

    def unsupported_reason(self, shape: tuple[int, int]) -> str | None:
        """Why ``shape`` cannot be stored by this candidate, naming the fix; None when it can."""
        if len(shape) != 2:
            return f"weights must be 2-D (out, in), got shape {tuple(shape)}"
        if shape[1] % self.group_size:
            return (
                f"group size {self.group_size} does not divide the input dimension of shape "
                f"{tuple(shape)}; choose a group size that divides {shape[-1]}"
            )
        if self.foundation_format:
            return None
        from bitalloc.quantizers.registry import spec_of  # lazy: the registry imports this module

        return spec_of(self).unsupported(self, tuple(shape))

    def check(self, shape: tuple[int, int], unit: str = "") -> None:
        """Raise UnsupportedShape naming the unit, the scheme and the fix when ``shape`` is not supported."""
        reason = self.unsupported_reason(shape)
        if reason is not None:
            where = f" for unit {unit!r}" if unit else ""
            raise UnsupportedShape(f"{self.name}{where}: {reason}")

    def nbytes(self, shape: tuple[int, int]) -> int:
        """Exact bytes of every stored tensor for an (out, in) weight."""
        self.check(shape)
        if not self.foundation_format:
            from bitalloc.quantizers.registry import layout_nbytes

            return layout_nbytes(self, tuple(shape))
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


def parse_palette(spec: str) -> tuple[Candidate, ...]:
    """Candidates from a comma-separated list of names, where ``default`` stands for ``default_palette()``;
    duplicates are dropped, order kept. InvalidInput names an unknown entry."""
    names = [n.strip() for n in spec.split(",") if n.strip()]
    if not names:
        raise InvalidInput("the palette is empty: give 'default' and/or candidate names, comma separated")
    out: list[Candidate] = []
    for name in names:
        try:
            out.extend(default_palette() if name == "default" else (Candidate.parse(name),))
        except InvalidInput as err:
            raise InvalidInput(f"palette entry {name!r}: {err}") from None
    return tuple(dict.fromkeys(out))
