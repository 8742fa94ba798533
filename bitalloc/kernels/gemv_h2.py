"""GEMV for batch 1 with float16 activations on the f16x2 path (``_half2.py``): 2, 3, 4 and 8-bit codes.

Each program owns BLOCK_N outputs and a 1/SPLIT_K slice of the interleave chunks. One step is one chunk
(inside one group, so one scale and offset per output): the chunk's ``WP`` words per output are taken as
two ``(WP/2, BLOCK_N)`` halves, and row r of both halves is dotted by one inline-PTX call (two words, one
float16x2 accumulator) with the activation pairs of their fields (``x`` read as int32 pairs); at 3 bits one
call takes the even and odd fields of a-words r and r + WP/2 merged with the b-word r
(``merge3_loose``). Per step, in float32, ``acc (WP/2, BLOCK_N) += scale * dot`` (``dot = sum q x / R``)
and ``acc_off (BLOCK_N,) += offset * xs`` with ``xs`` the chunk's activation sum (one per step for all
outputs); the result is ``R * sum(acc) + acc_off``. With PREFETCH the next step's words, scales, offsets
and ``xs`` are loaded before this step's arithmetic. SPLIT_K > 1 adds partial results atomically
(relaxed reductions: only later kernels read the sums, so no per-element ordering is paid for). With PDL
(``_pdl.py``) the first step's words load while the previous kernel still runs. With SELF_L2 each program asks
L2 for the rest of its slice (without PREFETCH: all of it) before the PDL wait (``l2_prefetch.py``). With
NORM, ``x`` is the raw row of a weightless RMSNorm (``row_norm.py``): the result is scaled by ``1 / rms(x)``.
"""

from __future__ import annotations

import triton
import triton.language as tl
from triton.language.extra.cuda import gdc_launch_dependents, gdc_wait

from bitalloc.kernels._half2 import dot2x2, dot3x4, dot4x2, dot8x2, pair_sum
from bitalloc.kernels._unpack import load_words, merge3_loose
from bitalloc.kernels.l2_prefetch import prefetch_tile
from bitalloc.kernels.row_norm import load_row, row_rstd

HALF2_R = {2: 4, 3: 16, 4: 16, 8: 256}  # bits -> R: codes / R are exact float16 far from overflow


@triton.jit
def _load_step(
    x_ptr, a_ptr, b_ptr, s_ptr, m_ptr, offs_n, mask_n, N, kb, QOFF, BITS, GROUP, HAS_MIN, CHUNK, XS_ROWS
):
    """Raw words (u0, u1, u2 at 3 bits) of step kb, the group's scale and offset per output (float32), and
    the step's activation sum (a float32 scalar)."""
    k0 = kb * CHUNK
    if BITS == 3:  # a-words of rows r and r + WP/2, and the b-word r holding the high bits of both
        h3: tl.constexpr = CHUNK // 32
        rows = tl.arange(0, h3)
        u0 = load_words(a_ptr, k0 // 16, rows, offs_n, mask_n, N)  # (WP/2, BLOCK_N)
        u1 = load_words(a_ptr, k0 // 16 + h3, rows, offs_n, mask_n, N)
        u2 = load_words(b_ptr, k0 // 32, rows, offs_n, mask_n, N)
    else:
        half: tl.constexpr = CHUNK * BITS // 64
        rows = tl.arange(0, half)
        u0 = load_words(a_ptr, k0 * BITS // 32, rows, offs_n, mask_n, N)  # (WP/2, BLOCK_N)
        u1 = load_words(a_ptr, k0 * BITS // 32 + half, rows, offs_n, mask_n, N)
        u2 = 0
    g = k0 // GROUP
    scale = tl.load(s_ptr + g * N + offs_n, mask=mask_n, other=0.0).to(tl.float32)  # (BLOCK_N,)
    offset = scale * QOFF
    if HAS_MIN:
        offset += tl.load(m_ptr + g * N + offs_n, mask=mask_n, other=0.0).to(tl.float32)
    xs = tl.zeros((), dtype=tl.float32)  # XS_ROWS: summed by _rows_xs from the pairs of each thread's rows
    if not XS_ROWS:  # one sum over all threads of the program
        xs = tl.sum(tl.load(x_ptr + k0 + tl.arange(0, CHUNK)).to(tl.float32), axis=0)
    return u0, u1, u2, scale, offset, xs


@triton.jit
def _prefetch_slice(a_ptr, b_ptr, s_ptr, m_ptr, n0, N, kb0, kb1, BITS, GROUP, HAS_MIN, CHUNK, BLOCK_N):
    """Ask L2 for the words, scales and offsets of steps ``kb0 .. kb1 - 1`` of this program's outputs."""
    for kb in range(kb0, kb1):
        k0 = kb * CHUNK
        if BITS == 3:
            prefetch_tile(a_ptr, k0 // 16, CHUNK // 16, n0, BLOCK_N, N)
            prefetch_tile(b_ptr, k0 // 32, CHUNK // 32, n0, BLOCK_N, N)
        else:
            prefetch_tile(a_ptr, k0 * BITS // 32, CHUNK * BITS // 32, n0, BLOCK_N, N)
        prefetch_tile(s_ptr, k0 // GROUP, 1, n0, BLOCK_N, N)
        if HAS_MIN:
            prefetch_tile(m_ptr, k0 // GROUP, 1, n0, BLOCK_N, N)


@triton.jit
def _rows_xs(x2_ptr, k0, ROWS: tl.constexpr, CHUNK: tl.constexpr, ASM: tl.constexpr):
    """The chunk's activation sum from the pairs of each word row (ROWS rows of CHUNK / 2 / ROWS pairs);
    no cross-warp reduction when a thread holds all rows of its tile."""
    NP: tl.constexpr = CHUNK // 2 // ROWS
    pb = x2_ptr + k0 // 2 + tl.arange(0, ROWS)  # (ROWS,) pairs of row r: r + i * ROWS
    xs = pair_sum(tl.load(pb), ASM)
    for i in tl.static_range(1, NP):
        xs += pair_sum(tl.load(pb + i * ROWS), ASM)
    return tl.sum(xs, axis=0)


@triton.jit
def _step_dot(u0, u1, u2, x2_ptr, k0, BITS: tl.constexpr, CHUNK: tl.constexpr, ASM: tl.constexpr):
    """``sum q x / R`` per row and output of one step from its raw words: (ROWS, BLOCK_N) float32."""
    if BITS == 3:
        WP: tl.constexpr = CHUNK // 16
        H3: tl.constexpr = WP // 2
        e0, o0 = merge3_loose(u0, u2)
        e1, o1 = merge3_loose(u1, u2 >> 1)
        pa = x2_ptr + k0 // 2 + tl.arange(0, H3)  # (WP/2,) pair of field 0 of rows r
        pb = pa + H3  # rows r + WP/2
        dot = dot3x4(
            e0,
            o0,
            e1,
            o1,
            tl.load(pa)[:, None],
            tl.load(pa + 2 * WP)[:, None],
            tl.load(pa + 4 * WP)[:, None],
            tl.load(pa + 6 * WP)[:, None],
            tl.load(pa + WP)[:, None],
            tl.load(pa + 3 * WP)[:, None],
            tl.load(pa + 5 * WP)[:, None],
            tl.load(pa + 7 * WP)[:, None],
            tl.load(pb)[:, None],
            tl.load(pb + 2 * WP)[:, None],
            tl.load(pb + 4 * WP)[:, None],
            tl.load(pb + 6 * WP)[:, None],
            tl.load(pb + WP)[:, None],
            tl.load(pb + 3 * WP)[:, None],
            tl.load(pb + 5 * WP)[:, None],
            tl.load(pb + 7 * WP)[:, None],
            ASM,
        )
    else:
        WP: tl.constexpr = CHUNK * BITS // 32
        H: tl.constexpr = WP // 2
        pa = x2_ptr + k0 // 2 + tl.arange(0, H)  # (H,) pair of field 0 of rows of u0
        pb = pa + H  # rows of u1
        if BITS == 4:
            dot = dot4x2(
                u0,
                u1,
                tl.load(pa)[:, None],
                tl.load(pa + WP)[:, None],
                tl.load(pa + 2 * WP)[:, None],
                tl.load(pa + 3 * WP)[:, None],
                tl.load(pb)[:, None],
                tl.load(pb + WP)[:, None],
                tl.load(pb + 2 * WP)[:, None],
                tl.load(pb + 3 * WP)[:, None],
                ASM,
            )
        elif BITS == 8:
            dot = dot8x2(
                u0,
                u1,
                tl.load(pa)[:, None],
                tl.load(pa + WP)[:, None],
                tl.load(pb)[:, None],
                tl.load(pb + WP)[:, None],
                ASM,
            )
        else:
            dot = dot2x2(
                u0,
                u1,
                tl.load(pa)[:, None],
                tl.load(pa + WP)[:, None],
                tl.load(pa + 2 * WP)[:, None],
                tl.load(pa + 3 * WP)[:, None],
                tl.load(pa + 4 * WP)[:, None],
                tl.load(pa + 5 * WP)[:, None],
                tl.load(pa + 6 * WP)[:, None],
                tl.load(pa + 7 * WP)[:, None],
                tl.load(pb)[:, None],
                tl.load(pb + WP)[:, None],
                tl.load(pb + 2 * WP)[:, None],
                tl.load(pb + 3 * WP)[:, None],
                tl.load(pb + 4 * WP)[:, None],
                tl.load(pb + 5 * WP)[:, None],
                tl.load(pb + 6 * WP)[:, None],
                tl.load(pb + 7 * WP)[:, None],
                ASM,
            )
    return dot


@triton.jit
def gemv_h2_kernel(
    x_ptr,
    x2_ptr,
    a_ptr,
    b_ptr,
    s_ptr,
    m_ptr,
    y_ptr,
    eps,
    N,
    K,
    QOFF,
    BITS: tl.constexpr,
    GROUP: tl.constexpr,
    HAS_MIN: tl.constexpr,
    CHUNK: tl.constexpr,
    BLOCK_N: tl.constexpr,
    SPLIT_K,
    R: tl.constexpr,
    PREFETCH: tl.constexpr,
    XS_ROWS: tl.constexpr,
    ASM: tl.constexpr,
    ATOMIC: tl.constexpr,
    PDL: tl.constexpr,
    SELF_L2: tl.constexpr,
    NORM: tl.constexpr,
    ROW_BLOCK: tl.constexpr,
):
    pid_n = tl.program_id(0)
    pid_k = tl.program_id(1)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)  # (BLOCK_N,)
    mask_n = offs_n < N
    ROWS: tl.constexpr = CHUNK // 32 if BITS == 3 else CHUNK * BITS // 64
    n_steps = K // CHUNK
    kb_start = pid_k * n_steps // SPLIT_K
    kb_end = (pid_k + 1) * n_steps // SPLIT_K
    acc = tl.zeros((ROWS, BLOCK_N), dtype=tl.float32)
    acc_off = tl.zeros((BLOCK_N,), dtype=tl.float32)
    if PDL:
        gdc_launch_dependents()
    if PREFETCH:  # the first step's words, scales and offsets (with PDL: while the previous kernel runs)
        u0, u1, u2, scale, offset, xs = _load_step(
            x_ptr,
            a_ptr,
            b_ptr,
            s_ptr,
            m_ptr,
            offs_n,
            mask_n,
            N,
            kb_start,
            QOFF,
            BITS,
            GROUP,
            HAS_MIN,
            CHUNK,
            XS_ROWS or PDL,  # with PDL the activations are read only after the wait
        )
    if SELF_L2:  # the rest of the slice on its way to L2 while the previous kernel finishes
        _prefetch_slice(
            a_ptr,
            b_ptr,
            s_ptr,
            m_ptr,
            pid_n * BLOCK_N,
            N,
            kb_start + PREFETCH,
            kb_end,
            BITS,
            GROUP,
            HAS_MIN,
            CHUNK,
            BLOCK_N,
        )
    if PDL:  # wait for the previous kernel's activations
        gdc_wait()
    if NORM:  # the row for its norm, loaded now, summed after the main loop
        row = load_row(x2_ptr, K, ROW_BLOCK)
    if PREFETCH:
        if PDL and not XS_ROWS:
            xs = tl.sum(tl.load(x_ptr + kb_start * CHUNK + tl.arange(0, CHUNK)).to(tl.float32), axis=0)
        for kb in range(kb_start, kb_end):
            nxt = tl.minimum(kb + 1, kb_end - 1)  # the last step re-reads itself (cache hit)
            n0, n1, n2, n_scale, n_offset, n_xs = _load_step(
                x_ptr,
                a_ptr,
                b_ptr,
                s_ptr,
                m_ptr,
                offs_n,
                mask_n,
                N,
                nxt,
                QOFF,
                BITS,
                GROUP,
                HAS_MIN,
                CHUNK,
                XS_ROWS,
            )
            acc += scale[None, :] * _step_dot(u0, u1, u2, x2_ptr, kb * CHUNK, BITS, CHUNK, ASM)
            if XS_ROWS:
                acc_off += offset * _rows_xs(x2_ptr, kb * CHUNK, ROWS, CHUNK, ASM)
            else:
                acc_off += offset * xs
            u0, u1, u2, scale, offset, xs = n0, n1, n2, n_scale, n_offset, n_xs
    else:
        for kb in range(kb_start, kb_end):
            u0, u1, u2, scale, offset, xs = _load_step(
                x_ptr,
                a_ptr,
                b_ptr,
                s_ptr,
                m_ptr,
                offs_n,
                mask_n,
                N,
                kb,
                QOFF,
                BITS,
                GROUP,
                HAS_MIN,
                CHUNK,
                XS_ROWS,
            )
            acc += scale[None, :] * _step_dot(u0, u1, u2, x2_ptr, kb * CHUNK, BITS, CHUNK, ASM)
            if XS_ROWS:
                acc_off += offset * _rows_xs(x2_ptr, kb * CHUNK, ROWS, CHUNK, ASM)
            else:
                acc_off += offset * xs
    y = tl.sum(acc, axis=0) * R + acc_off  # (BLOCK_N,)
    if NORM:
        y *= row_rstd(x2_ptr, row, K, eps, ROW_BLOCK, ASM)
    if ATOMIC:  # split-K partial sums, or a result added to what the output holds
        tl.atomic_add(y_ptr + offs_n, y.to(y_ptr.dtype.element_ty), mask=mask_n, sem="relaxed")
    else:
        tl.store(y_ptr + offs_n, y.to(y_ptr.dtype.element_ty), mask=mask_n)
