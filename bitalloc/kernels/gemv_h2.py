"""GEMV for batch 1 with float16 activations on the f16x2 path (``_half2.py``): 2, 3, 4 and 8-bit codes.

Each program owns BLOCK_N outputs and a 1/SPLIT_K slice of the interleave chunks. One step is one chunk
(inside one group, so one scale and offset per output): the chunk's ``WP`` words per output are taken as
two ``(WP/2, BLOCK_N)`` halves, and row r of both halves is dotted by one inline-PTX call (two words, one
float16x2 accumulator) with the activation pairs of their fields (``x`` read as int32 pairs); at 3 bits one
call takes the even and odd fields of a-words r and r + WP/2 merged with the b-word r
(``merge3_loose``). Per step, in float32, ``acc (WP/2, BLOCK_N) += scale * dot`` (``dot = sum q x / R``)
and ``acc_off (BLOCK_N,) += offset * xs`` with ``xs`` the chunk's activation sum (one per step for all
outputs); the result is ``R * sum(acc) + acc_off``. With PREFETCH the next step's words, scales, offsets
and ``xs`` are loaded before this step's arithmetic. SPLIT_K > 1 adds partial results atomically. With PDL
(``_pdl.py``) the first step's words load while the previous kernel still runs. With an EPILOGUE
(``gemv_epilogue.py``) the last program to finish normalises or activates the finished output. With NORM
the input is the residual stream: every program computes its ``rstd`` and normalises each activation pair
it reads (``w * round16(x * rstd)`` in f16x2, ``_half2.norm_pair``), so no RMSNorm launch precedes it.
"""

from __future__ import annotations

import triton
import triton.language as tl
from triton.language.extra.cuda import gdc_launch_dependents, gdc_wait

from bitalloc.kernels._half2 import dot2x2, dot3x4, dot4x2, dot8x2, half2_of, norm_pair, pair_sum
from bitalloc.kernels._unpack import load_words, merge3_loose
from bitalloc.kernels.gemv_epilogue import epilogue_tail

HALF2_R = {2: 4, 3: 16, 4: 16, 8: 256}  # bits -> R: codes / R are exact float16 far from overflow


@triton.jit
def _load_step(
    x_ptr,
    nw_ptr,
    rstd,
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
    NORM,
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
        xs = _chunk_sum(x_ptr, nw_ptr, rstd, k0, CHUNK, NORM)
    return u0, u1, u2, scale, offset, xs


@triton.jit
def _chunk_sum(x_ptr, nw_ptr, rstd, k0, CHUNK: tl.constexpr, NORM: tl.constexpr):
    """The step's activation sum (float32), of the normalised activations with NORM."""
    x = tl.load(x_ptr + k0 + tl.arange(0, CHUNK)).to(tl.float32)
    if NORM:
        x = tl.load(nw_ptr + k0 + tl.arange(0, CHUNK)).to(tl.float32) * x * rstd
    return tl.sum(x, axis=0)


@triton.jit
def _pairs(x2_ptr, nw2_ptr, offs, r2, NORM: tl.constexpr, ASM: tl.constexpr):
    """Activation pairs (int32) at ``offs``; with NORM normalised by ``rstd`` (``r2``) and the norm weight."""
    p = tl.load(x2_ptr + offs)
    if NORM:
        p = norm_pair(p, r2, tl.load(nw2_ptr + offs), ASM)
    return p


@triton.jit
def _rstd(x_ptr, K, eps, BLOCK: tl.constexpr):
    """``1 / rms(x)`` over the K activations (float32) and its float16 in both halves of an int32."""
    offs = tl.arange(0, BLOCK)
    x = tl.load(x_ptr + offs, mask=offs < K, other=0.0).to(tl.float32)
    rstd = 1.0 / tl.sqrt(tl.sum(x * x, axis=0) / K + eps)
    return rstd, half2_of(rstd)


@triton.jit
def _rows_xs(
    x2_ptr, nw2_ptr, r2, k0, ROWS: tl.constexpr, CHUNK: tl.constexpr, NORM: tl.constexpr, ASM: tl.constexpr
):
    """The chunk's activation sum from the pairs of each word row (ROWS rows of CHUNK / 2 / ROWS pairs);
    no cross-warp reduction when a thread holds all rows of its tile."""
    NP: tl.constexpr = CHUNK // 2 // ROWS
    ob = k0 // 2 + tl.arange(0, ROWS)  # (ROWS,) pairs of row r: r + i * ROWS
    xs = pair_sum(_pairs(x2_ptr, nw2_ptr, ob, r2, NORM, ASM), ASM)
    for i in tl.static_range(1, NP):
        xs += pair_sum(_pairs(x2_ptr, nw2_ptr, ob + i * ROWS, r2, NORM, ASM), ASM)
    return tl.sum(xs, axis=0)


@triton.jit
def _step_dot(
    u0,
    u1,
    u2,
    x2_ptr,
    nw2_ptr,
    r2,
    k0,
    BITS: tl.constexpr,
    CHUNK: tl.constexpr,
    NORM: tl.constexpr,
    ASM: tl.constexpr,
):
    """``sum q x / R`` per row and output of one step from its raw words: (ROWS, BLOCK_N) float32."""
    if BITS == 3:
        WP: tl.constexpr = CHUNK // 16
        H3: tl.constexpr = WP // 2
        e0, o0 = merge3_loose(u0, u2)
        e1, o1 = merge3_loose(u1, u2 >> 1)
        pa = k0 // 2 + tl.arange(0, H3)  # (WP/2,) pair of field 0 of rows r
        pb = pa + H3  # rows r + WP/2
        dot = dot3x4(
            e0,
            o0,
            e1,
            o1,
            _pairs(x2_ptr, nw2_ptr, pa, r2, NORM, ASM)[:, None],
            _pairs(x2_ptr, nw2_ptr, pa + 2 * WP, r2, NORM, ASM)[:, None],
            _pairs(x2_ptr, nw2_ptr, pa + 4 * WP, r2, NORM, ASM)[:, None],
            _pairs(x2_ptr, nw2_ptr, pa + 6 * WP, r2, NORM, ASM)[:, None],
            _pairs(x2_ptr, nw2_ptr, pa + WP, r2, NORM, ASM)[:, None],
            _pairs(x2_ptr, nw2_ptr, pa + 3 * WP, r2, NORM, ASM)[:, None],
            _pairs(x2_ptr, nw2_ptr, pa + 5 * WP, r2, NORM, ASM)[:, None],
            _pairs(x2_ptr, nw2_ptr, pa + 7 * WP, r2, NORM, ASM)[:, None],
            _pairs(x2_ptr, nw2_ptr, pb, r2, NORM, ASM)[:, None],
            _pairs(x2_ptr, nw2_ptr, pb + 2 * WP, r2, NORM, ASM)[:, None],
            _pairs(x2_ptr, nw2_ptr, pb + 4 * WP, r2, NORM, ASM)[:, None],
            _pairs(x2_ptr, nw2_ptr, pb + 6 * WP, r2, NORM, ASM)[:, None],
            _pairs(x2_ptr, nw2_ptr, pb + WP, r2, NORM, ASM)[:, None],
            _pairs(x2_ptr, nw2_ptr, pb + 3 * WP, r2, NORM, ASM)[:, None],
            _pairs(x2_ptr, nw2_ptr, pb + 5 * WP, r2, NORM, ASM)[:, None],
            _pairs(x2_ptr, nw2_ptr, pb + 7 * WP, r2, NORM, ASM)[:, None],
            ASM,
        )
    else:
        WP: tl.constexpr = CHUNK * BITS // 32
        H: tl.constexpr = WP // 2
        pa = k0 // 2 + tl.arange(0, H)  # (H,) pair of field 0 of rows of u0
        pb = pa + H  # rows of u1
        if BITS == 4:
            dot = dot4x2(
                u0,
                u1,
                _pairs(x2_ptr, nw2_ptr, pa, r2, NORM, ASM)[:, None],
                _pairs(x2_ptr, nw2_ptr, pa + WP, r2, NORM, ASM)[:, None],
                _pairs(x2_ptr, nw2_ptr, pa + 2 * WP, r2, NORM, ASM)[:, None],
                _pairs(x2_ptr, nw2_ptr, pa + 3 * WP, r2, NORM, ASM)[:, None],
                _pairs(x2_ptr, nw2_ptr, pb, r2, NORM, ASM)[:, None],
                _pairs(x2_ptr, nw2_ptr, pb + WP, r2, NORM, ASM)[:, None],
                _pairs(x2_ptr, nw2_ptr, pb + 2 * WP, r2, NORM, ASM)[:, None],
                _pairs(x2_ptr, nw2_ptr, pb + 3 * WP, r2, NORM, ASM)[:, None],
                ASM,
            )
        elif BITS == 8:
            dot = dot8x2(
                u0,
                u1,
                _pairs(x2_ptr, nw2_ptr, pa, r2, NORM, ASM)[:, None],
                _pairs(x2_ptr, nw2_ptr, pa + WP, r2, NORM, ASM)[:, None],
                _pairs(x2_ptr, nw2_ptr, pb, r2, NORM, ASM)[:, None],
                _pairs(x2_ptr, nw2_ptr, pb + WP, r2, NORM, ASM)[:, None],
                ASM,
            )
        else:
            dot = dot2x2(
                u0,
                u1,
                _pairs(x2_ptr, nw2_ptr, pa, r2, NORM, ASM)[:, None],
                _pairs(x2_ptr, nw2_ptr, pa + WP, r2, NORM, ASM)[:, None],
                _pairs(x2_ptr, nw2_ptr, pa + 2 * WP, r2, NORM, ASM)[:, None],
                _pairs(x2_ptr, nw2_ptr, pa + 3 * WP, r2, NORM, ASM)[:, None],
                _pairs(x2_ptr, nw2_ptr, pa + 4 * WP, r2, NORM, ASM)[:, None],
                _pairs(x2_ptr, nw2_ptr, pa + 5 * WP, r2, NORM, ASM)[:, None],
                _pairs(x2_ptr, nw2_ptr, pa + 6 * WP, r2, NORM, ASM)[:, None],
                _pairs(x2_ptr, nw2_ptr, pa + 7 * WP, r2, NORM, ASM)[:, None],
                _pairs(x2_ptr, nw2_ptr, pb, r2, NORM, ASM)[:, None],
                _pairs(x2_ptr, nw2_ptr, pb + WP, r2, NORM, ASM)[:, None],
                _pairs(x2_ptr, nw2_ptr, pb + 2 * WP, r2, NORM, ASM)[:, None],
                _pairs(x2_ptr, nw2_ptr, pb + 3 * WP, r2, NORM, ASM)[:, None],
                _pairs(x2_ptr, nw2_ptr, pb + 4 * WP, r2, NORM, ASM)[:, None],
                _pairs(x2_ptr, nw2_ptr, pb + 5 * WP, r2, NORM, ASM)[:, None],
                _pairs(x2_ptr, nw2_ptr, pb + 6 * WP, r2, NORM, ASM)[:, None],
                _pairs(x2_ptr, nw2_ptr, pb + 7 * WP, r2, NORM, ASM)[:, None],
                ASM,
            )
    return dot


@triton.jit
def gemv_h2_kernel(
    x_ptr,
    x2_ptr,
    nw_ptr,
    nw2_ptr,
    a_ptr,
    b_ptr,
    s_ptr,
    m_ptr,
    y_ptr,
    e_out_ptr,
    e_w_ptr,
    ticket_ptr,
    N,
    K,
    QOFF,
    eps,
    norm_eps,
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
    NORM: tl.constexpr,
    NORM_BLOCK: tl.constexpr,
    EPILOGUE: tl.constexpr,
    E_BLOCK: tl.constexpr,
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
    rstd = 1.0  # NORM: every program normalises the whole input row itself (x is the residual stream)
    r2 = 0
    if PDL:
        gdc_launch_dependents()
    elif NORM:
        rstd, r2 = _rstd(x_ptr, K, norm_eps, NORM_BLOCK)
    if PREFETCH:
        u0, u1, u2, scale, offset, xs = _load_step(
            x_ptr,
            nw_ptr,
            rstd,
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
            NORM,
        )
        if PDL:  # the first step's words are on their way: wait for the previous kernel's activations
            gdc_wait()
            if NORM:
                rstd, r2 = _rstd(x_ptr, K, norm_eps, NORM_BLOCK)
            if not XS_ROWS:
                xs = _chunk_sum(x_ptr, nw_ptr, rstd, kb_start * CHUNK, CHUNK, NORM)
        for kb in range(kb_start, kb_end):
            nxt = tl.minimum(kb + 1, kb_end - 1)  # the last step re-reads itself (cache hit)
            n0, n1, n2, n_scale, n_offset, n_xs = _load_step(
                x_ptr,
                nw_ptr,
                rstd,
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
                NORM,
            )
            dot = _step_dot(u0, u1, u2, x2_ptr, nw2_ptr, r2, kb * CHUNK, BITS, CHUNK, NORM, ASM)
            acc += scale[None, :] * dot
            if XS_ROWS:
                acc_off += offset * _rows_xs(x2_ptr, nw2_ptr, r2, kb * CHUNK, ROWS, CHUNK, NORM, ASM)
            else:
                acc_off += offset * xs
            u0, u1, u2, scale, offset, xs = n0, n1, n2, n_scale, n_offset, n_xs
    else:
        if PDL:
            gdc_wait()
            if NORM:
                rstd, r2 = _rstd(x_ptr, K, norm_eps, NORM_BLOCK)
        for kb in range(kb_start, kb_end):
            u0, u1, u2, scale, offset, xs = _load_step(
                x_ptr,
                nw_ptr,
                rstd,
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
                NORM,
            )
            dot = _step_dot(u0, u1, u2, x2_ptr, nw2_ptr, r2, kb * CHUNK, BITS, CHUNK, NORM, ASM)
            acc += scale[None, :] * dot
            if XS_ROWS:
                acc_off += offset * _rows_xs(x2_ptr, nw2_ptr, r2, kb * CHUNK, ROWS, CHUNK, NORM, ASM)
            else:
                acc_off += offset * xs
    y = tl.sum(acc, axis=0) * R + acc_off  # (BLOCK_N,)
    if ATOMIC:  # split-K partial sums, or a result added to what the output holds
        tl.atomic_add(y_ptr + offs_n, y.to(y_ptr.dtype.element_ty), mask=mask_n, sem="relaxed")
    else:
        tl.store(y_ptr + offs_n, y.to(y_ptr.dtype.element_ty), mask=mask_n)
    if EPILOGUE != 0:  # the last program normalises / activates the finished output (gemv_epilogue.py)
        epilogue_tail(y_ptr, e_out_ptr, e_w_ptr, ticket_ptr, N, eps, pid_n, EPILOGUE, E_BLOCK, BLOCK_N)
