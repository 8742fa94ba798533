"""Packed f16x2 dot products of code words with float16 activation pairs (the GEMV's fast path).

A word of ``b``-bit fields holds, in its two 16-bit halves, the codes of adjacent inputs ``(2p, 2p + 1)``
(``layout.py``), so one int32 pair of float16 activations multiplies field ``m`` of both halves at once.
A field at bit ``s`` of its half (``s + b <= 10``) becomes the float16 ``1024 + q * 2**s`` by one LOP3
(AND the field of both halves, OR the exponent 0x6400); one f16x2 FMA turns it into ``q / R`` exactly
(``R`` = 16 at 3/4 bits, 4 at 2 bits, 256 at 8 bits, so that partial sums stay far from float16 overflow);
one f16x2 FMA accumulates ``q / R * x``. Fields above bit 9 are first brought down by one shift of the word.
Per word the two float16 lane sums are added in float32: ``sum_fields q x / R``, rounded like a float16
dot product of 16/b terms per lane (relative error ~1e-3 of each word's partial sum).

Without a GPU (the Triton interpreter cannot run inline PTX) the same sums are computed in float32 from the
same bit fields and pairs (``ASM=False``), so the CPU tests check the indexing of this path.
"""

from __future__ import annotations

import struct

import triton
import triton.language as tl

MANTISSA_BITS = 10
MAGIC = 0x6400  # float16 1024.0: OR-ing a field at bits < 10 gives 1024 + field


def _f16x2(value: float) -> str:
    """Both halves of a 32-bit register holding the float16 ``value`` (exact powers of two here)."""
    bits = struct.unpack("<H", struct.pack("<e", value))[0]
    return f"0x{bits:04X}{bits:04X}"


def word_asm(b: int, r: int, words: int = 1, width: int = 0) -> str:
    """PTX of ``$0 (f32) = sum_w sum_m (q_wm / r) . pair_wm`` over ``words`` words ``$1..`` of 32/b fields
    (of ``width`` bits, default b), followed by their pairs (16/b per word, in field order). One float16x2
    accumulator for all words."""
    width = width or b
    lane = 16 // b
    direct = (MANTISSA_BITS - b) // b + 1  # fields usable without a shift
    shift = direct * b
    lines = ["{", ".reg .b32 hw, v, q, acc, c1, c2;", ".reg .b16 lo, hi;", ".reg .f32 flo, fhi;"]
    for w in range(words):
        word = f"${1 + w}"
        if lane > direct:
            lines.append(f"shr.u32 hw, {word}, {shift};")
        for m in range(lane):
            src, s = (word, m * b) if m < direct else ("hw", m * b - shift)
            mask = ((1 << width) - 1) << s
            pair = f"${1 + words + w * lane + m}"
            scale = 2.0**-s / r
            lines += [
                f"lop3.b32 v, {src}, 0x{mask:04X}{mask:04X}, 0x{MAGIC:04X}{MAGIC:04X}, 0xEA;",
                f"mov.b32 c1, {_f16x2(scale)};",
                f"mov.b32 c2, {_f16x2(-1024.0 * scale)};",
                "fma.rn.f16x2 q, v, c1, c2;",
                f"mul.rn.f16x2 acc, q, {pair};" if w == m == 0 else f"fma.rn.f16x2 acc, q, {pair}, acc;",
            ]
    lines += [
        "mov.b32 {lo, hi}, acc;",
        "cvt.f32.f16 flo, lo;",
        "cvt.f32.f16 fhi, hi;",
        "add.f32 $0, flo, fhi;",
        "}",
    ]
    return "\n".join(lines)


_ASM2X2 = tl.constexpr(word_asm(2, 4, 2))
_ASM4X2 = tl.constexpr(word_asm(4, 16, 2))
_ASM3X4 = tl.constexpr(word_asm(4, 16, 4, 3))  # 3-bit fields at a 4-bit stride (bit 3 ignored)
_ASM8X2 = tl.constexpr(word_asm(8, 256, 2))


def _pair_asm(combine: str) -> str:
    """PTX: the two float16 halves of ``$1`` as float32 ``flo``, ``fhi``, then ``combine`` into ``$0``."""
    return (
        "{\n.reg .b16 lo, hi;\n.reg .f32 flo, fhi;\nmov.b32 {lo, hi}, $1;\n"
        f"cvt.f32.f16 flo, lo;\ncvt.f32.f16 fhi, hi;\n{combine}\n}}"
    )


_PAIR_SUM = tl.constexpr(_pair_asm("add.f32 $0, flo, fhi;"))
_PAIR_SQUARES = tl.constexpr(_pair_asm("mul.f32 flo, flo, flo;\nfma.rn.f32 $0, fhi, fhi, flo;"))


@triton.jit
def _lanes(p):
    """The two float16 halves of int32 pairs, as float32 (interpreter path)."""
    lo = (p & 0xFFFF).to(tl.int16).to(tl.float16, bitcast=True).to(tl.float32)
    hi = (p >> 16).to(tl.int16).to(tl.float16, bitcast=True).to(tl.float32)
    return lo, hi


@triton.jit
def _field_dot(words, p, m: tl.constexpr, B: tl.constexpr, W: tl.constexpr = 0):
    """Field m (stride B, width W or B bits) of both halves of ``words`` times the halves of pair ``p``
    (float32, interpreter path)."""
    lo, hi = _lanes(p)
    mask: tl.constexpr = (1 << (W if W > 0 else B)) - 1
    q_lo = ((words >> (m * B)) & mask).to(tl.float32)
    q_hi = ((words >> (16 + m * B)) & mask).to(tl.float32)
    return q_lo * lo + q_hi * hi


@triton.jit
def pair_sum(p, ASM: tl.constexpr):
    """``x[2p] + x[2p + 1]`` in float32 from int32 pairs of float16."""
    if ASM:
        return tl.inline_asm_elementwise(_PAIR_SUM, "=f,r", [p], dtype=tl.float32, is_pure=True, pack=1)
    lo, hi = _lanes(p)
    return lo + hi


@triton.jit
def pair_squares(p, ASM: tl.constexpr):
    """``x[2p]^2 + x[2p + 1]^2`` in float32 from int32 pairs of float16 (a norm's sum of squares)."""
    if ASM:
        return tl.inline_asm_elementwise(_PAIR_SQUARES, "=f,r", [p], dtype=tl.float32, is_pure=True, pack=1)
    lo, hi = _lanes(p)
    return lo * lo + hi * hi


@triton.jit
def _dot4(words, p0, p1, p2, p3):
    """``sum_m q_m x_m / 16`` over the 4-bit fields of both halves of each word (interpreter path)."""
    d = _field_dot(words, p0, 0, 4) + _field_dot(words, p1, 1, 4)
    return (d + _field_dot(words, p2, 2, 4) + _field_dot(words, p3, 3, 4)) * (1.0 / 16)


@triton.jit
def _dot2(words, p0, p1, p2, p3, p4, p5, p6, p7):
    """``sum_m q_m x_m / 4`` over the 2-bit fields of both halves of each word (interpreter path)."""
    d = _field_dot(words, p0, 0, 2) + _field_dot(words, p1, 1, 2) + _field_dot(words, p2, 2, 2)
    d += _field_dot(words, p3, 3, 2) + _field_dot(words, p4, 4, 2) + _field_dot(words, p5, 5, 2)
    return (d + _field_dot(words, p6, 6, 2) + _field_dot(words, p7, 7, 2)) * (1.0 / 4)


@triton.jit
def _dot8(words, p0, p1):
    """``sum_m q_m x_m / 256`` over the 8-bit fields of both halves of each word (interpreter path)."""
    return (_field_dot(words, p0, 0, 8) + _field_dot(words, p1, 1, 8)) * (1.0 / 256)


@triton.jit
def dot4x2(w0, w1, a0, a1, a2, a3, b0, b1, b2, b3, ASM: tl.constexpr):
    """``sum q x / 16`` over two words of 4-bit fields, pairs ``a..`` for w0 and ``b..`` for w1."""
    if ASM:
        return tl.inline_asm_elementwise(
            _ASM4X2,
            "=f" + ",r" * 10,
            [w0, w1, a0, a1, a2, a3, b0, b1, b2, b3],
            dtype=tl.float32,
            is_pure=True,
            pack=1,
        )
    else:
        return _dot4(w0, a0, a1, a2, a3) + _dot4(w1, b0, b1, b2, b3)


@triton.jit
def dot2x2(w0, w1, a0, a1, a2, a3, a4, a5, a6, a7, b0, b1, b2, b3, b4, b5, b6, b7, ASM: tl.constexpr):
    """``sum q x / 4`` over two words of 2-bit fields, pairs ``a..`` for w0 and ``b..`` for w1."""
    if ASM:
        return tl.inline_asm_elementwise(
            _ASM2X2,
            "=f" + ",r" * 18,
            [w0, w1, a0, a1, a2, a3, a4, a5, a6, a7, b0, b1, b2, b3, b4, b5, b6, b7],
            dtype=tl.float32,
            is_pure=True,
            pack=1,
        )
    else:
        d = _dot2(w0, a0, a1, a2, a3, a4, a5, a6, a7)
        return d + _dot2(w1, b0, b1, b2, b3, b4, b5, b6, b7)


@triton.jit
def dot8x2(w0, w1, a0, a1, b0, b1, ASM: tl.constexpr):
    """``sum q x / 256`` over two words of 8-bit fields, pairs ``a..`` for w0 and ``b..`` for w1."""
    if ASM:
        return tl.inline_asm_elementwise(
            _ASM8X2, "=f" + ",r" * 6, [w0, w1, a0, a1, b0, b1], dtype=tl.float32, is_pure=True, pack=1
        )
    else:
        return _dot8(w0, a0, a1) + _dot8(w1, b0, b1)


@triton.jit
def _dot3(w, p0, p1, p2, p3):
    """Interpreter path of one 3-bit word of ``dot3x4`` (float32, not divided by R)."""
    d = _field_dot(w, p0, 0, 4, 3) + _field_dot(w, p1, 1, 4, 3)
    return d + _field_dot(w, p2, 2, 4, 3) + _field_dot(w, p3, 3, 4, 3)


@triton.jit
def dot3x4(w0, w1, w2, w3, a0, a1, a2, a3, b0, b1, b2, b3, c0, c1, c2, c3, d0, d1, d2, d3, ASM: tl.constexpr):
    """``sum q x / 16`` over four words of 3-bit fields at a 4-bit stride (bit 3 of each nibble ignored),
    pairs ``a..`` for w0, ``b..`` for w1, ``c..`` for w2, ``d..`` for w3; one float16x2 accumulator."""
    if ASM:
        return tl.inline_asm_elementwise(
            _ASM3X4,
            "=f" + ",r" * 20,
            [w0, w1, w2, w3, a0, a1, a2, a3, b0, b1, b2, b3, c0, c1, c2, c3, d0, d1, d2, d3],
            dtype=tl.float32,
            is_pure=True,
            pack=1,
        )
    else:
        d = _dot3(w0, a0, a1, a2, a3) + _dot3(w1, b0, b1, b2, b3)
        return (d + _dot3(w2, c0, c1, c2, c3) + _dot3(w3, d0, d1, d2, d3)) * (1.0 / 16)
