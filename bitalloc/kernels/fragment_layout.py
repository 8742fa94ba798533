"""The fragment layout: codes packed so that each thread's word holds its own tensor-core operand.

The tensor-core kernel (``mma.py``) computes ``y^T = W x^T`` with ``mma.m16n8k16`` (float16 in, float32
accumulators), the weight as the left operand. In a 16x16 tile of W (16 outputs x 16 inputs) lane
``l = 4 g + t`` of a warp holds 8 elements ``r = b0 + 2 b1 + 4 b2``: output ``g + 8 b1``, mma position
``2 t + b0 + 8 b2`` (PTX ISA, "Matrix Fragments for mma.m16n8k16", operand A). One int32 word holds
``E = 32 / bits`` such elements of one lane: element ``j`` (``e = v * E + j`` over the lane's words ``v``
of an atom, k-tile ``e // 8`` of the atom, ``r = e % 8``) sits in field ``j // 2`` of the word's low
(``j`` even) or high (``j`` odd) 16-bit half, at bit ``16 * (j % 2) + bits * (j // 2)``. So one LOP3
``(w & mask) | 0x6400`` turns a field pair into the float16x2 ``1024 + q 2**s`` of the register pair
``(r, r + 1)``, and one f16x2 FMA gives the exact codes the mma reads: no layout conversion, no shared
memory. Inside a scale group the mma positions are a permutation of the inputs (``_element_index``) chosen
so that each lane's activations are one contiguous run.

3-bit codes keep their two stored planes: a word of the low 2 bits is laid out as 2-bit codes, and a
``high`` word of 1-bit fields serves two of them: bit ``16 h + 2 f + w`` is the high bit of field ``f``, half
``h`` of the lane's low word ``w`` of the pair. ``codes_asm`` merges the low word with its high bits into two
words of 3-bit fields at a 4-bit stride (even fields, odd fields: two shifts and two LOP3), which then
decode like 4-bit fields; so element ``j`` of a low word sits in field ``ORDER3[j // 2]``, making the merged
words' pairs come out in operand order. 3-bit needs a group of at least 64 inputs (two low words per
high word).

An atom is 16 outputs x ``ATOM_K`` inputs (``ATOM_K = min(256 / bits, group)``: at most one group, at
most 4 words = 16 bytes per lane); memory order ``(out / 16, in / ATOM_K, 32 lanes, VEC words)``: a warp
reads one contiguous ``32 * VEC``-word atom per 16 outputs, a lane one ``VEC``-word vector. Scales and
mins stay the stored float16 tensors, transposed to ``(in / group, out)``. The words hold exactly the
packed codes' bits: ``nbytes`` equals ``Candidate.nbytes(shape)``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from bitalloc.errors import UnsupportedShape
from bitalloc.kernels.layout import layout_supports
from bitalloc.quantizers.packing import unpack_codes
from bitalloc.quantizers.quantized_weight import QuantizedWeight

FRAGMENT_BITS = (2, 3, 4, 8)
ORDER3 = (0, 2, 4, 6, 1, 3, 5, 7)  # 3-bit: field of register pair p (even fields, then odd ones)
TILE = 16  # rows and inputs of one mma operand tile
LANES = 32


def fragment_supports(bits: int, group_size: int, shape: tuple[int, int]) -> str | None:
    """None when the fragment layout handles the format and shape, else the reason it does not."""
    out_features, in_features = shape
    if bits not in FRAGMENT_BITS:
        return f"{bits}-bit codes (tensor-core kernel handles {list(FRAGMENT_BITS)} bits)"
    reason = layout_supports(bits, group_size, in_features)  # the group-size rules of every kernel
    if reason is not None:
        return reason
    if bits == 3 and group_size < 64:
        return f"3-bit codes in groups of {group_size} (the tensor-core kernel needs groups of >= 64)"
    if out_features % TILE:
        return f"output dimension {out_features} not a multiple of {TILE}"
    return None


def word_bits(bits: int) -> int:
    """Bits per field of the (low) words: 3-bit codes store their low 2 bits there."""
    return 2 if bits == 3 else bits


def atom_k(bits: int, group_size: int) -> int:
    """Inputs per atom: at most 4 words per lane, never more than one group."""
    return min(256 // word_bits(bits), group_size)


def vec_words(bits: int, group_size: int) -> int:
    """Words per lane per atom (4 = one 16-byte load); 3-bit: low words (half as many high words)."""
    return atom_k(bits, group_size) * TILE // LANES // (32 // word_bits(bits))


@dataclass(frozen=True, eq=False)
class FragmentLayout:
    """Words in fragment order plus transposed scales and mins (see the module docstring)."""

    bits: int
    group_size: int
    shape: tuple[int, int]  # (out, in)
    words: torch.Tensor  # (out / 16, in / ATOM_K, 32, VEC) int32; 3-bit: the low 2 bits
    scales: torch.Tensor  # (in / group, out) float16
    mins: torch.Tensor | None  # (in / group, out) float16 when asymmetric
    qoff: float  # w = scale * (code + qoff) + min
    high: torch.Tensor | None = None  # 3-bit: (out / 16, in / ATOM_K, 32, VEC / 2) int32, the high bits

    @property
    def atom(self) -> int:
        """Inputs per atom."""
        return atom_k(self.bits, self.group_size)

    @property
    def vec(self) -> int:
        """Words per lane per atom."""
        return self.words.shape[-1]

    @property
    def nbytes(self) -> int:
        """Bytes held by words, scales and mins (the stored format's bytes)."""
        tensors = [self.words, self.scales] + [t for t in (self.mins, self.high) if t is not None]
        return sum(t.numel() * t.element_size() for t in tensors)

    def codes(self) -> torch.Tensor:
        """The ``(out, in)`` codes decoded from the words by the fragment mapping (for tests)."""
        return _decode(self.words, self.high, self.bits, self.shape, self.group_size)

    def dequantize(self) -> torch.Tensor:
        """The float32 ``(out, in)`` weight the kernel computes with (for tests)."""
        g = self.group_size
        w = self.scales.float().t().repeat_interleave(g, dim=1) * (self.codes().float() + self.qoff)
        if self.mins is not None:
            w = w + self.mins.float().t().repeat_interleave(g, dim=1)
        return w


def _element_index(bits: int, group: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Row and input (inside one group) of every ``(atom, lane, word, element)`` of a group's atoms:
    two ``(G / ATOM_K, 32, VEC, E)`` int64. The mma position ``k = 16 kt + 8 b2 + 2 t + b0`` of k-tile
    ``kt`` takes input ``4 KT t + 4 kt + 2 b2 + b0`` (``KT = G / 16``), so that lane ``t``'s activations
    of the whole group are one contiguous run of ``4 KT`` inputs (``mma.py`` loads them as 16-byte
    vectors)."""
    per_word = 32 // word_bits(bits)
    atom = atom_k(bits, group)
    vec = vec_words(bits, group)
    atoms = group // atom
    a = torch.arange(atoms, device=device).view(atoms, 1, 1, 1)
    lane = torch.arange(LANES, device=device).view(1, LANES, 1, 1)
    e = torch.arange(vec, device=device).view(1, 1, vec, 1) * per_word + torch.arange(
        per_word, device=device
    ).view(1, 1, 1, per_word)
    g, t = lane // 4, lane % 4
    kt, r = a * (atom // TILE) + e // 8, e % 8
    b0, b1, b2 = r % 2, (r // 2) % 2, r // 4
    shape = (atoms, LANES, vec, per_word)
    row = (g + 8 * b1).expand(shape)
    col = (4 * (group // TILE) * t + 4 * kt + 2 * b2 + b0).expand(shape)
    return row, col


def _field_shifts(bits: int, device: torch.device) -> torch.Tensor:
    """Bit position of element ``j`` in its (low) word: ``(E,)`` int64."""
    j = torch.arange(32 // word_bits(bits), device=device)
    if bits == 3:
        return 16 * (j % 2) + 2 * torch.tensor(ORDER3, device=device)[j // 2]
    return 16 * (j % 2) + bits * (j // 2)


def to_fragment_layout(qweight: QuantizedWeight) -> FragmentLayout:
    """Convert a packed weight (RTN/GPTQ storage) into the fragment layout (an exact copy of its bits)."""
    cand = qweight.candidate
    out_features, in_features = qweight.shape
    reason = fragment_supports(cand.bits, cand.group_size, qweight.shape)
    if reason is not None:
        raise UnsupportedShape(f"{cand.name} {qweight.shape}: no fragment layout for {reason}")
    q = unpack_codes(qweight.codes, cand.bits, out_features * in_features).view(out_features, in_features)
    words, high = pack_fragments(q.to(torch.int64), cand.bits, cand.group_size)
    return FragmentLayout(
        cand.bits,
        cand.group_size,
        (out_features, in_features),
        words,
        qweight.scales.t().contiguous(),
        None if qweight.mins is None else qweight.mins.t().contiguous(),
        -float(1 << (cand.bits - 1)) if cand.symmetric else 0.0,
        high,
    )


def _int32(words: torch.Tensor) -> torch.Tensor:
    """Unsigned 32-bit values held in int64 -> int32 with the same bits."""
    return torch.where(words >= 1 << 31, words - (1 << 32), words).to(torch.int32)


def pack_fragments(q: torch.Tensor, bits: int, group: int) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Codes ``q (out, in)`` (< 2**bits) -> words ``(out / 16, in / ATOM_K, 32, VEC)`` int32, and for 3-bit
    codes the high words ``(out / 16, in / ATOM_K, 32, VEC / 2)``."""
    out_features, in_features = q.shape
    row, col = _element_index(bits, group, q.device)  # (G / ATOM_K, 32, VEC, E)
    tiles = q.view(out_features // TILE, TILE, in_features // group, group).permute(0, 2, 1, 3)
    vals = tiles[:, :, row, col]  # (out / 16, in / G, G / ATOM_K, 32, VEC, E)
    shifts = _field_shifts(bits, q.device)
    words = _int32(((vals & 3 if bits == 3 else vals) << shifts).sum(-1))  # fields disjoint, < 2**32
    words = words.reshape(out_features // TILE, -1, LANES, row.shape[2]).contiguous()
    if bits != 3:
        return words, None
    high = (vals >> 2).unflatten(-2, (-1, 2)) << (shifts[None, :] + torch.arange(2, device=q.device)[:, None])
    high = _int32(high.sum((-2, -1)))  # (..., VEC / 2): low word 2 u + w at bit offset w
    return words, high.reshape(out_features // TILE, -1, LANES, row.shape[2] // 2).contiguous()


def _decode(
    words: torch.Tensor, high: torch.Tensor | None, bits: int, shape: tuple[int, int], group: int
) -> torch.Tensor:
    """Invert ``pack_fragments``: words (and 3-bit high words) -> codes ``(out, in)`` int32."""
    out_features, in_features = shape
    row, col = _element_index(bits, group, words.device)
    shifts = _field_shifts(bits, words.device)
    vals = (words.to(torch.int64)[..., None] >> shifts) & ((1 << word_bits(bits)) - 1)
    if high is not None:  # (..., VEC / 2) -> the high bit of every element of the low words 2 u + w
        w = torch.arange(2, device=words.device)[:, None]
        bit = (high.to(torch.int64)[..., None, None] >> (shifts[None, :] + w)) & 1  # (..., VEC / 2, 2, E)
        vals = vals | (bit.flatten(-3, -2) << 2)
    vals = vals.view(out_features // TILE, in_features // group, *row.shape)
    tiles = torch.zeros(
        out_features // TILE, in_features // group, TILE, group, dtype=torch.int64, device=words.device
    )
    tiles[:, :, row, col] = vals
    return tiles.permute(0, 2, 1, 3).reshape(out_features, in_features).to(torch.int32)
