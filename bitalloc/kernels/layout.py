"""The kernel layout: a packed weight converted exactly, at load time, into transposed interleaved bit planes.

A format of ``bits`` bits is split into at most two plane groups whose widths divide 32
(2 -> [2], 3 -> [2, 1], 4 -> [4], 5 -> [4, 1], 6 -> [4, 2], 8 -> [8], 1 -> [1]); the bit-nested format
(``nested.py``) reading its top ``k`` bits gives ``k`` planes of width 1. The code of a weight is
``sum_p plane_p << shift_p`` (plus a constant ``qoff`` folded into the group offset).

Each plane of width ``b`` is stored as int32 words of shape ``(in * b / 32, out)``: the output dimension is
contiguous, so a program streams a ``(words, BLOCK_N)`` tile with coalesced 16-byte loads and reuses each
activation across the rows it holds. Along the input dimension the codes are interleaved in chunks of
``chunk`` inputs (a power of two, ``32 <= chunk <= group``, dividing ``in``): chunk ``c`` takes
``wp = chunk * b / 32`` words; field ``j`` of word ``c * wp + w`` (bits ``j * b``, ``j = h * L + m`` with
``L = 16 / b`` fields per 16-bit half ``h``) holds the code of input ``c * chunk + 2 * (m * wp + w) + h``.
The two halves of a word thus hold adjacent inputs: one int32 pair of float16 activations
``(x[2p], x[2p + 1])`` multiplies field ``m`` of both halves in one f16x2 instruction (the GEMV's fast path).
Unpacking a chunk's words by shifts and stacking the ``j`` slices gives the chunk's codes in the order
``r = j * wp + w`` (input ``2 * (r % (chunk / 2)) + r // (chunk / 2)``), which the GEMM feeds to ``tl.dot``
against the activations loaded in the same order; every word lies inside one group.

Scales and mins are the stored float16 tensors transposed to ``(in / group, out)``. The conversion is a
permutation of the stored bits: planes, scales and mins hold exactly ``Candidate.nbytes(shape)`` bytes
(the kernel layout is a copy; the packed stream is not needed by the kernels afterwards).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from bitalloc.errors import UnsupportedShape
from bitalloc.quantizers.packing import unpack_codes
from bitalloc.quantizers.quantized_weight import QuantizedWeight

PLANES: dict[int, tuple[int, ...]] = {1: (1,), 2: (2,), 3: (2, 1), 4: (4,), 5: (4, 1), 6: (4, 2), 8: (8,)}
WORD_BITS = 32
MAX_CHUNK = 128
NESTED_FULL_BITS = 8


def layout_supports(bits: int, group_size: int, in_features: int) -> str | None:
    """None when the layout and kernels handle the format, else the reason they do not."""
    if bits not in PLANES:
        return f"{bits}-bit codes (kernels handle {sorted(PLANES)} bits)"
    if group_size < 32 or group_size & (group_size - 1):
        return f"group size {group_size} (kernels need a power of two >= 32)"
    if in_features % group_size:
        return f"input dimension {in_features} not divisible by group size {group_size}"
    return None


def chunk_size(group_size: int, in_features: int) -> int:
    """Inputs per interleave chunk: the largest power of two <= min(group, 128) dividing ``in``."""
    chunk = min(group_size, MAX_CHUNK)
    while in_features % chunk:
        chunk //= 2
    return chunk


@dataclass(frozen=True, eq=False)
class KernelLayout:
    """Plane groups ``a`` (stacked, equal widths) and optional ``b``, plus transposed scales and mins."""

    bits: int
    group_size: int
    symmetric: bool
    shape: tuple[int, int]  # (out, in)
    chunk: int
    a: torch.Tensor  # (planes_a, in * bits_a / 32, out) int32
    bits_a: int
    shift_a: int  # shift of a's first plane; plane i is shifted by shift_a - i * bits_a
    b: torch.Tensor | None  # (in * bits_b / 32, out) int32
    bits_b: int
    shift_b: int
    scales: torch.Tensor  # (in / group, out) float16
    mins: torch.Tensor | None  # (in / group, out) float16 when asymmetric
    qoff: float  # w = scale * (code + qoff) + min  (min = 0 when symmetric)

    @property
    def nbytes(self) -> int:
        """Bytes held by planes, scales and mins (equals the stored format's bytes)."""
        tensors = [self.a, self.scales] + [t for t in (self.b, self.mins) if t is not None]
        return sum(t.numel() * t.element_size() for t in tensors)

    def codes(self) -> torch.Tensor:
        """The ``(out, in)`` codes (without ``qoff``) rebuilt from the planes in torch (for tests)."""
        q = torch.zeros(self.shape, dtype=torch.int32, device=self.a.device)
        for i in range(self.a.shape[0]):
            q |= _plane_codes(self.a[i], self.bits_a, self.shape, self.chunk) << (
                self.shift_a - i * self.bits_a
            )
        if self.b is not None:
            q |= _plane_codes(self.b, self.bits_b, self.shape, self.chunk) << self.shift_b
        return q

    def dequantize(self) -> torch.Tensor:
        """The float32 ``(out, in)`` weight the kernels compute with (for tests)."""
        g = self.group_size
        scale = self.scales.float().t().repeat_interleave(g, dim=1)  # (out, in)
        w = scale * (self.codes().float() + self.qoff)
        if self.mins is not None:
            w = w + self.mins.float().t().repeat_interleave(g, dim=1)
        return w


def to_layout(qweight: QuantizedWeight) -> KernelLayout:
    """Convert a packed weight (RTN/GPTQ storage) into the kernel layout (an exact copy)."""
    cand = qweight.candidate
    out_features, in_features = qweight.shape
    reason = layout_supports(cand.bits, cand.group_size, in_features)
    if reason is not None:
        raise UnsupportedShape(
            f"{cand.name} {qweight.shape}: no kernel layout for {reason}; use the reference"
        )
    chunk = chunk_size(cand.group_size, in_features)
    q = unpack_codes(qweight.codes, cand.bits, out_features * in_features).view(out_features, in_features)
    widths = PLANES[cand.bits]
    a = _interleave((q & ((1 << widths[0]) - 1)).to(torch.int32), widths[0], chunk).unsqueeze(0)
    b = None
    if len(widths) > 1:
        b = _interleave(((q >> widths[0]) & ((1 << widths[1]) - 1)).to(torch.int32), widths[1], chunk)
    return KernelLayout(
        cand.bits,
        cand.group_size,
        cand.symmetric,
        (out_features, in_features),
        chunk,
        a,
        widths[0],
        0,
        b,
        widths[1] if b is not None else 0,
        widths[0] if b is not None else 0,
        qweight.scales.t().contiguous(),
        None if qweight.mins is None else qweight.mins.t().contiguous(),
        -float(1 << (cand.bits - 1)) if cand.symmetric else 0.0,
    )


def nested_layout(
    planes: torch.Tensor,
    scales: torch.Tensor,
    mins: torch.Tensor | None,
    group_size: int,
    shape: tuple[int, int],
) -> KernelLayout:
    """Kernel layout reading the top ``k`` bit planes of a nested code (``planes (k, out * in / 8)`` uint8).

    The ``k``-bit read is the mid-bin value ``top * 2**(8-k) + (2**(8-k) - 1) / 2`` of ``nested.py``.
    """
    out_features, in_features = shape
    k = planes.shape[0]
    reason = layout_supports(1, group_size, in_features)
    if reason is not None or not 1 <= k <= NESTED_FULL_BITS:
        why = reason or f"{k} planes (1 to {NESTED_FULL_BITS})"
        raise UnsupportedShape(f"nested weight {shape}: no kernel layout for {why}; use the reference")
    chunk = chunk_size(group_size, in_features)
    a = torch.stack(
        [
            _interleave(unpack_codes(p, 1, out_features * in_features).view(shape).to(torch.int32), 1, chunk)
            for p in planes
        ]
    )  # (k, in / 32, out)
    step = 1 << (NESTED_FULL_BITS - k)
    qoff = (step - 1) / 2 - (float(1 << (NESTED_FULL_BITS - 1)) if mins is None else 0.0)
    return KernelLayout(
        k,
        group_size,
        mins is None,
        shape,
        chunk,
        a,
        1,
        NESTED_FULL_BITS - 1,
        None,
        0,
        0,
        scales.t().contiguous(),
        None if mins is None else mins.t().contiguous(),
        qoff,
    )


def _interleave(q: torch.Tensor, b: int, chunk: int) -> torch.Tensor:
    """Codes ``q (out, in)`` int32 < 2**b -> words ``(in * b / 32, out)`` int32 in the interleaved order."""
    out_features, in_features = q.shape
    per_word = WORD_BITS // b
    lane = per_word // 2  # fields per 16-bit half
    wp = chunk // per_word  # words per chunk
    q = q.view(out_features, in_features // chunk, lane, wp, 2)  # input c*chunk + 2*(m*wp + w) + h: (m, w, h)
    q = q.permute(0, 1, 3, 4, 2).reshape(out_features, in_features // chunk, wp, per_word)  # j = h*lane + m
    shifts = torch.arange(per_word, device=q.device, dtype=torch.int64) * b
    words = (q.to(torch.int64) << shifts).sum(-1)  # (out, chunks, wp) < 2**32, fields disjoint
    words = torch.where(words >= 1 << 31, words - (1 << 32), words).to(torch.int32)
    return words.reshape(out_features, in_features * b // WORD_BITS).t().contiguous()


def _plane_codes(words: torch.Tensor, b: int, shape: tuple[int, int], chunk: int) -> torch.Tensor:
    """Invert ``_interleave``: words ``(in * b / 32, out)`` -> codes ``(out, in)`` int32."""
    out_features, in_features = shape
    per_word = WORD_BITS // b
    wp = chunk // per_word
    w = words.t().reshape(out_features, in_features // chunk, wp, 1)
    shifts = torch.arange(per_word, device=words.device, dtype=torch.int32) * b
    vals = (w >> shifts) & ((1 << b) - 1)  # (out, chunks, wp, j)
    vals = vals.view(out_features, in_features // chunk, wp, 2, per_word // 2).permute(0, 1, 4, 2, 3)
    return vals.reshape(out_features, in_features)  # (m, w, h) -> input 2*(m*wp + w) + h
