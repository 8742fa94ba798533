"""The kernel layout: a packed weight repacked at load time into int32 bit planes.

A format of ``bits`` bits is split into at most two planes whose widths divide 32 (2 -> [2], 3 -> [2, 1],
4 -> [4], 5 -> [4, 1], 6 -> [4, 2], 8 -> [8], 1 -> [1]). Plane ``p`` of width ``b`` holds, for every row
``n``, ``in * b / 32`` int32 words; word ``i`` holds codes ``k = i * (32 / b) + j`` at bit ``j * b``, and the
plane's value is ``(code >> offset) & (2**b - 1)`` with ``offset`` the sum of the earlier planes' widths.

For one-plane formats (1, 2, 4, 8 bits) the plane IS the stored little-endian bitstream viewed as int32:
no copy, no extra byte. Two-plane formats take exactly ``out * in * bits / 8`` bytes too (no padding), so
the layout always holds the same number of bytes as ``Candidate.nbytes`` counts.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from bitalloc.errors import UnsupportedShape
from bitalloc.quantizers.packing import pack_codes, unpack_codes
from bitalloc.quantizers.quantized_weight import QuantizedWeight

PLANES: dict[int, tuple[int, ...]] = {1: (1,), 2: (2,), 3: (2, 1), 4: (4,), 5: (4, 1), 6: (4, 2), 8: (8,)}
WORD_BITS = 32


def layout_supports(bits: int, group_size: int, in_features: int) -> str | None:
    """None when the layout and kernels handle the format, else the reason they do not."""
    if bits not in PLANES:
        return f"{bits}-bit codes (kernels handle {sorted(PLANES)} bits)"
    if group_size < 32 or group_size & (group_size - 1):
        return f"group size {group_size} (kernels need a power of two >= 32)"
    if in_features % group_size:
        return f"input dimension {in_features} not divisible by group size {group_size}"
    return None


@dataclass(frozen=True, eq=False)
class KernelLayout:
    """Int32 bit planes plus the stored float16 scales and mins of one ``(out, in)`` weight."""

    bits: int
    group_size: int
    symmetric: bool
    shape: tuple[int, int]
    planes: tuple[torch.Tensor, ...]  # each (out, in * b / 32) int32, contiguous
    scales: torch.Tensor  # (out, in / group) float16
    mins: torch.Tensor | None  # (out, in / group) float16 when asymmetric

    @property
    def plane_bits(self) -> tuple[int, ...]:
        """Widths of the planes, lowest bits first."""
        return PLANES[self.bits]

    @property
    def nbytes(self) -> int:
        """Bytes held by planes, scales and mins (equals ``Candidate.nbytes(shape)``)."""
        tensors = [*self.planes, self.scales] + ([] if self.mins is None else [self.mins])
        return sum(t.numel() * t.element_size() for t in tensors)

    def codes(self) -> torch.Tensor:
        """The ``(out, in)`` unsigned codes, rebuilt from the planes in torch (for tests)."""
        out_features, in_features = self.shape
        q = torch.zeros(out_features, in_features, dtype=torch.int32, device=self.scales.device)
        offset = 0
        for plane, b in zip(self.planes, self.plane_bits, strict=True):
            per_word = WORD_BITS // b
            shifts = torch.arange(per_word, device=plane.device, dtype=torch.int32) * b
            vals = (plane.unsqueeze(-1) >> shifts) & ((1 << b) - 1)  # (out, in/per_word, per_word)
            q |= vals.reshape(out_features, in_features) << offset
            offset += b
        return q


def to_layout(qweight: QuantizedWeight) -> KernelLayout:
    """Repack ``qweight`` into bit planes (a view, without copy, for 1/2/4/8 bits)."""
    cand = qweight.candidate
    out_features, in_features = qweight.shape
    reason = layout_supports(cand.bits, cand.group_size, in_features)
    if reason is not None:
        raise UnsupportedShape(
            f"{cand.name} {qweight.shape}: no kernel layout for {reason}; use the reference"
        )
    widths = PLANES[cand.bits]
    if len(widths) == 1:
        planes: tuple[torch.Tensor, ...] = (
            _as_words(qweight.codes.contiguous(), out_features, in_features * cand.bits // WORD_BITS),
        )
    else:
        q = unpack_codes(qweight.codes, cand.bits, out_features * in_features)  # (out*in,) uint8
        built = []
        offset = 0
        for b in widths:
            stream = pack_codes((q >> offset) & ((1 << b) - 1), b)  # (out*in*b/8,) uint8
            built.append(_as_words(stream, out_features, in_features * b // WORD_BITS))
            offset += b
        planes = tuple(built)
    return KernelLayout(
        cand.bits,
        cand.group_size,
        cand.symmetric,
        (out_features, in_features),
        planes,
        qweight.scales,
        qweight.mins,
    )


def _as_words(stream: torch.Tensor, rows: int, words: int) -> torch.Tensor:
    if stream.storage_offset() % 4:
        stream = stream.clone()
    return stream.view(torch.int32).view(rows, words)  # (rows, words) little-endian int32
