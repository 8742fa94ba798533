"""Triton helpers shared by the GEMV and GEMM kernels on the interleaved layout of ``layout.py``."""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def word_dot(words, x_base, ONES, XSTEP, NF: tl.constexpr, FS: tl.constexpr, FW: tl.constexpr):
    """``sum_m field_m * x[x_base + m * XSTEP]`` per word of ``words (WK, BLOCK_N)``, field m of width FW
    at bit ``m * FS``. Returns ``(dot (WK, BLOCK_N) float32, xsum (WK,) float32)``.

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
        x = tl.load(x_base + m * XSTEP).to(tl.float32)  # (WK,)
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
    x_base = x_ptr + k0 + (offs_w // WP) * CHUNK + offs_w % WP  # (WK,) input of field 0
    return word_dot(words, x_base, ONES, WP, 32 // B, B, B)


@triton.jit
def plane_dot3(
    a_ptr, b_ptr, x_ptr, offs_n, mask_n, N, k0, ONES, WK: tl.constexpr, WP: tl.constexpr, CHUNK: tl.constexpr
):
    """Like ``plane_dot`` for 3-bit codes from a 2-bit plane ``a`` and a 1-bit plane ``b``, merged per word.

    Field j of a-word w (input ``j * WP + w`` of its chunk) has its high bit at bit ``2j + h`` of b-word
    ``w % (WP/2)``, ``h = w // (WP/2)``. Two words of eight 3-bit codes at a 4-bit stride are built from them
    (even j, odd j) and dotted like 4-bit words: ~3 operations per weight instead of 6 for two planes.
    """
    offs_w = tl.arange(0, WK)  # (WK,)
    HALF: tl.constexpr = WP // 2
    wl = offs_w % WP
    a = load_words(a_ptr, k0 // 16, offs_w, offs_n, mask_n, N)  # (WK, BLOCK_N)
    b = load_words(b_ptr, k0 // 32, (offs_w // WP) * HALF + wl % HALF, offs_n, mask_n, N)  # each word twice
    bh = b >> (wl // HALF)[:, None]  # high bit of field j at bit 2j
    even = (a & 0x33333333) | ((bh << 2) & 0x44444444)  # fields j = 2m at bit 4m
    odd = ((a >> 2) & 0x33333333) | (bh & 0x44444444)  # fields j = 2m + 1 at bit 4m
    x_base = x_ptr + k0 + (offs_w // WP) * CHUNK + wl  # (WK,)
    d_even, xs_even = word_dot(even, x_base, ONES, 2 * WP, 8, 4, 3)
    d_odd, xs_odd = word_dot(odd, x_base + WP, ONES, 2 * WP, 8, 4, 3)
    return d_even + d_odd, xs_even + xs_odd


@triton.jit
def plane_tile(ptr, offs_n, mask_n, N, k0, CHUNK: tl.constexpr, BLOCK_N: tl.constexpr, B: tl.constexpr):
    """Codes of one chunk ``[k0, k0 + CHUNK)`` of one plane in natural input order: (CHUNK, BLOCK_N) int32."""
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
