"""The GGUF palette: ggml tensor types with their exact block sizes, and encoders for each.

A type stores a row of ``n`` weights as ``n / block_size`` blocks of ``type_size`` bytes, so a
``(out, in)`` weight (ggml shape ``[in, out]``) takes ``out * in / block_size * type_size`` bytes and
needs ``in % block_size == 0``. The legacy types are encoded by ``gguf.quants`` itself, the k-quants
and IQ4_NL by ``gguf_kquants`` (``gguf`` can only read those).

bitalloc candidates of group size 32 *are* legacy types, byte for byte: ``w4g32-sym`` is Q4_0
(``d * (q - 8)``), ``w4g32-asym`` is Q4_1 (``d * q + m``), ``w5g32-sym`` Q5_0, ``w5g32-asym`` Q5_1 and
``w8g32-sym`` Q8_0; ``pack_candidate`` writes our own codes into those blocks without re-quantizing.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from bitalloc.errors import UnsupportedShape
from bitalloc.export.common import ExportError
from bitalloc.export.gguf_kquants import ENCODERS
from bitalloc.quantizers.candidate import Candidate
from bitalloc.quantizers.packing import unpack_codes
from bitalloc.quantizers.quantized_weight import QuantizedWeight

K_QUANTS = ("Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K")
LEGACY = ("Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0")
GGUF_PALETTE = (*K_QUANTS, "IQ4_NL", *LEGACY)  # what the allocator may plan in
_FLOAT = ("F16", "F32")
# (bits, symmetric) of a group-32 candidate -> the legacy type with the same bytes and formula
_CANDIDATE_TYPES = {
    (4, True): "Q4_0",
    (4, False): "Q4_1",
    (5, True): "Q5_0",
    (5, False): "Q5_1",
    (8, True): "Q8_0",
}


@dataclass(frozen=True)
class GgufType:
    """One ggml tensor type: name, weights per block and bytes per block."""

    name: str
    block_size: int
    type_size: int

    @classmethod
    def of(cls, name: str) -> GgufType:
        """The type called ``name`` (e.g. ``Q4_K``); ExportError lists the palette when unknown."""
        import gguf

        if name not in (*GGUF_PALETTE, *_FLOAT):
            raise ExportError(
                f"GGUF type {name!r} is not in the palette: {', '.join(GGUF_PALETTE)}, F16, F32"
            )
        block, size = gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType[name]]
        return cls(name, block, size)

    @property
    def ggml_type(self):
        """The ``gguf.GGMLQuantizationType`` member."""
        import gguf

        return gguf.GGMLQuantizationType[self.name]

    @property
    def bpw(self) -> float:
        """Bits per weight."""
        return 8.0 * self.type_size / self.block_size

    def supports(self, shape: tuple[int, ...]) -> bool:
        """Whether rows of ``shape`` (last dimension) split into whole blocks."""
        return shape[-1] % self.block_size == 0

    def nbytes(self, shape: tuple[int, ...]) -> int:
        """Exact bytes of a tensor of ``shape`` (rows along the last dimension)."""
        if not self.supports(shape):
            raise UnsupportedShape(
                f"{self.name} packs rows in blocks of {self.block_size}; rows of {shape[-1]} do not divide"
            )
        return int(np.prod(shape)) // self.block_size * self.type_size

    def encode(self, weight: np.ndarray) -> np.ndarray:
        """``(rows, n)`` float32 -> ``(rows, n / block * type_size)`` uint8 in ggml's layout."""
        import gguf.quants

        weight = np.ascontiguousarray(weight, dtype=np.float32)
        self.nbytes(weight.shape)
        rows = weight.shape[0]
        if self.name in ENCODERS:
            blocks = ENCODERS[self.name](weight.reshape(-1, self.block_size))  # (n_blocks, type_size)
            return blocks.reshape(rows, -1)
        if self.name == "F32":
            return weight.view(np.uint8).reshape(rows, -1)
        return gguf.quants.quantize(weight, self.ggml_type).reshape(rows, -1).view(np.uint8)

    def decode(self, data: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
        """Inverse of ``encode`` by ``gguf.quants.dequantize``: float32 of ``shape``."""
        import gguf.quants

        return gguf.quants.dequantize(data.reshape(shape[0], -1), self.ggml_type).reshape(shape)


def candidate_type(candidate: Candidate) -> GgufType:
    """The legacy GGUF type that stores ``candidate`` exactly; ExportError when there is none."""
    name = _CANDIDATE_TYPES.get((candidate.bits, candidate.symmetric)) if candidate.group_size == 32 else None
    if name is None:
        raise ExportError(
            f"{candidate.name} has no GGUF type with the same grid (GGUF takes group-32 "
            "w4/w5 sym or asym and w8 sym); plan in the GGUF palette (`gguf_profile`) instead"
        )
    return GgufType.of(name)


def pack_candidate(qweight: QuantizedWeight) -> tuple[GgufType, np.ndarray]:
    """Our codes, scales and mins as legacy GGUF blocks, bit for bit: (type, (out, bytes per row))."""
    gtype = candidate_type(qweight.candidate)
    out_features, in_features = qweight.shape
    bits = qweight.candidate.bits
    q = unpack_codes(qweight.codes, bits, out_features * in_features).numpy().reshape(-1, 32)  # (blocks, 32)
    parts = [qweight.scales.reshape(-1, 1).numpy().view(np.uint8)]  # (blocks, 2) float16 d
    if qweight.mins is not None:
        parts.append(qweight.mins.reshape(-1, 1).numpy().view(np.uint8))  # (blocks, 2) float16 m
    if bits == 8:
        parts.append((q.astype(np.int16) - 128).astype(np.int8).view(np.uint8))
    else:
        if bits == 5:
            parts.append(np.packbits(q >> 4, axis=-1, bitorder="little"))  # (blocks, 4) fifth bits
        low = q & 15
        parts.append(low[:, :16] | (low[:, 16:] << 4))  # (blocks, 16) j low, j + 16 high
    blocks = np.concatenate(parts, axis=1).astype(np.uint8)
    return gtype, blocks.reshape(out_features, -1)


def torch_encode(weight: torch.Tensor, gtype: GgufType) -> np.ndarray:
    """``encode`` of a torch ``(out, in)`` weight."""
    return gtype.encode(weight.detach().float().cpu().numpy())
