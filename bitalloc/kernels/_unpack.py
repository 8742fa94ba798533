"""Triton helpers shared by the GEMV and GEMM kernels on the interleaved layout of ``layout.py``."""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def word_dot(
    words,
    x_base,
    ONES,
    WP: tl.constexpr,
    NF: tl.constexpr,
    FS: tl.constexpr,
    FW: tl.constexpr,
    LANE: tl.constexpr,
    JMUL: tl.constexpr,
    JADD: tl.constexpr,
):
    """``sum_m field_m * x[input of field m]`` per word of ``words (WK, BLOCK_N)``, field m of width FW at
    bit ``m * FS``. Returns ``(dot (WK, BLOCK_N) float32, xsum (WK,) float32)``.

    Field m is field ``j = JMUL * m + JADD`` of the stored plane (``LANE`` fields per 16-bit half, ``WP``
    words per chunk): input ``x_base + 2 * ((j % LANE) * WP) + j // LANE`` (``layout.py``).
    A field at bit ``s`` (``s + FW <= 23``) costs one AND/OR, one subtraction and one multiply-add: OR-ing
    the exponent of 2**23 makes the float ``2**23 + code * 2**s``, and the activation is pre-scaled by
    ``2**-s`` (exact) once per word row; higher fields are first brought down by one shift of the word.
    ``ONES`` is the run-time value 255: masks derived from it stay in registers (LOP3 keeps its immediate
    for the exponent).
    """
    DIRECT: tl.constexpr = (23 - FW) // FS + 1  # fields usable without a shift (NF <= 2 * DIRECT)
    HI: tl.constexpr = DIRECT * FS
    high = words >> HI  # (WK, BLOCK_N) fields DIRECT.. at bit (m - DIRECT) * FS
    field = ONES >> (8 - FW)  # 2**FW - 1, not a compile-time constant
    dot = tl.zeros(words.shape, dtype=tl.float32)
    xsum = tl.zeros((words.shape[0],), dtype=tl.float32)
    for m in tl.static_range(NF):
        j = JMUL * m + JADD  # constexpr
        x = tl.load(x_base + 2 * ((j % LANE) * WP) + j // LANE).to(tl.float32)  # (WK,)
        s = m * FS - HI * (m // DIRECT)  # constexpr
        src = words if m < DIRECT else high
        value = ((src & (field << s)) | 0x4B000000).to(tl.float32, bitcast=True)  # 2**23 + q 2**s
        dot += (value - 8388608.0) * (x * (1.0 / (1 << s)))[:, None]  # exact power-of-two rescale of x
        xsum += x
    return dot, xsum


@triton.jit
def load_words(ptr, row0, offs_w, offs_n, mask_n, N):
    """Words of rows ``row0 + offs_w`` and columns offs_n: (WK, BLOCK_N) int32 (coalesced along offs_n)."""
    return tl.load(ptr + (row0 + offs_w)[:, None] * N + offs_n[None, :], mask=mask_n[None, :], other=0)


@triton.jit
def plane_dot(
    ptr,
    x_ptr,
    offs_n,
    mask_n,
    N,
    k0,
    ONES,
    WK: tl.constexpr,
    WP: tl.constexpr,
    CHUNK: tl.constexpr,
    B: tl.constexpr,
):
    """``(sum_j code * x per word and row, sum_j x per word)`` of one plane over [k0, k0 + WK * 32 / B)."""
    offs_w = tl.arange(0, WK)  # (WK,)
    words = load_words(ptr, k0 * B // 32, offs_w, offs_n, mask_n, N)  # (WK, BLOCK_N)
    x_base = x_ptr + k0 + (offs_w // WP) * CHUNK + 2 * (offs_w % WP)  # (WK,) input of field 0
    return word_dot(words, x_base, ONES, WP, 32 // B, B, B, 16 // B, 1, 0)


@triton.jit
def load3(a_ptr, b_ptr, offs_w, offs_n, mask_n, N, k0, WP: tl.constexpr):
    """The 2-bit a-words ``offs_w`` of a 3-bit weight and, for each, its 1-bit b-word: (WK, BLOCK_N) each."""
    HALF: tl.constexpr = WP // 2
    wl = offs_w % WP
    a = load_words(a_ptr, k0 // 16, offs_w, offs_n, mask_n, N)  # (WK, BLOCK_N)
    b = load_words(b_ptr, k0 // 32, (offs_w // WP) * HALF + wl % HALF, offs_n, mask_n, N)  # each word twice
    return a, b


@triton.jit
def merge3(a, b, offs_w, WP: tl.constexpr):
    """3-bit codes of a 2-bit a-word and its 1-bit b-word (``load3``) as two words of 4-bit-stride fields.

    Field m of each half of a-word w (``WP`` a-words per chunk) has its high bit at bit ``2m + t`` of the
    same half of b-word ``w % (WP/2)``, ``t = w // (WP/2)``. Returns ``(even, odd)`` (WK, BLOCK_N): fields
    ``m = 2k`` and ``m = 2k + 1`` of both halves at bit ``4k`` of their half.
    """
    bh = b >> ((offs_w % WP) // (WP // 2))[:, None]  # high bit of field m at bit 2m of its half
    even = (a & 0x33333333) | ((bh << 2) & 0x44444444)  # fields m = 2k at bit 4k
    odd = ((a >> 2) & 0x33333333) | (bh & 0x44444444)  # fields m = 2k + 1 at bit 4k
    return even, odd


@triton.jit
def merge3_loose(a, bh):
    """3-bit fields of a 2-bit a-word and the high bits ``bh`` of its fields (at bit 2m of each half) as
    two words of 4-bit-stride fields (even m, odd m at bit 4(m // 2)), bit 3 of each nibble undefined (for
    3-bit field masks): two shifts and two LOP3 per a-word."""
    even = (a & 0x33333333) | ((bh << 2) & ~0x33333333)
    odd = ((a >> 2) & 0x33333333) | (bh & ~0x33333333)
    return even, odd


@triton.jit
def plane_dot3(
    a_ptr, b_ptr, x_ptr, offs_n, mask_n, N, k0, ONES, WK: tl.constexpr, WP: tl.constexpr, CHUNK: tl.constexpr
):
    """Like ``plane_dot`` for 3-bit codes (``merge3``): ~3 operations per weight, not 6 for two planes."""
    offs_w = tl.arange(0, WK)  # (WK,)
    a, b = load3(a_ptr, b_ptr, offs_w, offs_n, mask_n, N, k0, WP)
    even, odd = merge3(a, b, offs_w, WP)
    x_base = x_ptr + k0 + (offs_w // WP) * CHUNK + 2 * (offs_w % WP)  # (WK,)
    d_even, xs_even = word_dot(even, x_base, ONES, WP, 8, 4, 3, 8, 2, 0)
    d_odd, xs_odd = word_dot(odd, x_base, ONES, WP, 8, 4, 3, 8, 2, 1)
    return d_even + d_odd, xs_even + xs_odd


@triton.jit
def plane_tile(ptr, offs_n, mask_n, N, k0, CHUNK: tl.constexpr, BLOCK_N: tl.constexpr, B: tl.constexpr):
    """Codes of one chunk ``[k0, k0 + CHUNK)`` of one plane: (CHUNK, BLOCK_N) int32, row ``r`` holding input
    ``k0 + chunk_input(r)`` (``layout.py``)."""
    PW: tl.constexpr = 32 // B
    WP: tl.constexpr = CHUNK // PW
    offs_w = tl.arange(0, WP)
    words = tl.load(
        ptr + (k0 * B // 32 + offs_w)[:, None] * N + offs_n[None, :], mask=mask_n[None, :], other=0
    )  # (WP, BLOCK_N)
    shifts = tl.arange(0, PW) * B  # (PW,)
    vals = (words[None, :, :] >> shifts[:, None, None]) & ((1 << B) - 1)  # (PW, WP, BLOCK_N)
    return tl.reshape(vals, (CHUNK, BLOCK_N))


@triton.jit
def chunk_input(r, CHUNK: tl.constexpr):
    """Input (within its chunk) of row ``r`` of ``plane_tile``: ``2 * (r % (CHUNK/2)) + r // (CHUNK/2)``."""
    return 2 * (r % (CHUNK // 2)) + r // (CHUNK // 2)


@triton.jit
def load_group(s_ptr, m_ptr, rows, offs_n, mask_n, N, QOFF, HAS_MIN: tl.constexpr):
    """Scale and offset of group rows ``rows`` (any shape R) for outputs offs_n: (R..., BLOCK_N) float32.

    The weight is ``scale * code + offset`` with ``offset = scale * QOFF + min``.
    """
    idx = rows[:, None] * N + offs_n[None, :]
    scale = tl.load(s_ptr + idx, mask=mask_n[None, :], other=0.0).to(tl.float32)
    offset = scale * QOFF
    if HAS_MIN:
        offset += tl.load(m_ptr + idx, mask=mask_n[None, :], other=0.0).to(tl.float32)
    return scale, offset
