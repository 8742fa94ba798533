"""Tensor-core GEMM for batch 9-16 with Hopper's asynchronous ``wgmma`` (Gluon): ``y^T = W x^T``.

The same words, unpack and operand layout as ``mma.py`` (the A operand in registers, one K step per scale
group), with two changes that target what bounds ``mma.py`` at batch 16 (two ``mma.sync`` n8 per 16x16
tile, at about half of ``wgmma``'s rate, each waited on before the scale is applied):

- ``x^T`` goes to shared memory ``X_STEPS`` groups at a time: two barriers per chunk, none per step.
- Step ``s``'s ``wgmma`` (m64nBNk16, A from registers) is issued asynchronously; the words of step ``s + 1``
  are unpacked while it runs, and only then is it waited on and scaled into the float32 accumulators.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType

import torch
from triton.experimental import gluon
from triton.experimental.gluon import language as gl

from bitalloc.kernels.fragment_layout import TILE, FragmentLayout
from bitalloc.kernels.mma import (
    MMA_MAX_BATCH,
    _cta_barrier,
    _load_words,
    _store_out,
    _unpack,
    auto_split_k,
    kernel_constants,
)

_hopper = gl.nvidia.hopper


@dataclass(frozen=True)
class AsyncMmaConfig:
    """Launch parameters: 16-row tiles per warp, warps (4 or 8: whole warpgroups), split-K (0: from the shape
    and the SM count), groups of x staged in shared memory at a time (a power of two >= 2)."""

    tiles_per_warp: int = 2
    num_warps: int = 4
    split_k: int = 0
    x_steps: int = 16


def x_slice_layout(num_warps: int, group: int, bn: int, x_steps: int) -> gl.constexpr:
    """Layout of a program's activations ``(s, n, t, c)``: step s, row n, lane quarter t, run c of
    ``4 G / 16`` inputs; 16-byte runs per thread, the warps split the runs and then the steps (no copies)."""
    run = 4 * group // 16
    vec = min(8, run)
    reg = [[0, 0, 0, b] for b in (1, 2, 4) if b < vec]
    warp_c = [[0, 0, 0, b] for b in (8, 16) if b < run]
    warp_s = [[b, 0, 0, 0] for b in (1, 2, 4, 8, 16, 32) if b < x_steps]
    bases = warp_c + warp_s
    warp_bits = int(math.log2(num_warps))
    warp, rest = bases[:warp_bits], bases[warp_bits:]
    while len(warp) < warp_bits:  # more warps than runs and steps: copies
        warp.append([0, 0, 0, 0])
    reg += rest + ([[0, 8, 0, 0]] if bn == 16 else [])
    lane = [[0, 0, 1, 0], [0, 0, 2, 0], [0, 1, 0, 0], [0, 2, 0, 0], [0, 4, 0, 0]]
    shape = [x_steps, bn, 4, run]
    return gl.constexpr(gl.DistributedLinearLayout(reg, lane, warp, [], shape))


@gluon.jit
def _stage_x(
    x_ptr,
    x_stride,
    M,
    s_begin,
    s_end,
    x_smem,
    GROUP: gl.constexpr,
    BN: gl.constexpr,
    X_STEPS: gl.constexpr,
    LXS: gl.constexpr,
):
    """Steps ``s_begin .. s_end`` of x^T into ``x_smem (X_STEPS * G, BN)`` in the operand's k order (zeros
    past ``M`` rows and past the slice)."""
    KT: gl.constexpr = GROUP // 16
    L_s: gl.constexpr = gl.SliceLayout(1, gl.SliceLayout(2, gl.SliceLayout(3, LXS)))
    L_n: gl.constexpr = gl.SliceLayout(0, gl.SliceLayout(2, gl.SliceLayout(3, LXS)))
    L_t: gl.constexpr = gl.SliceLayout(0, gl.SliceLayout(1, gl.SliceLayout(3, LXS)))
    L_c: gl.constexpr = gl.SliceLayout(0, gl.SliceLayout(1, gl.SliceLayout(2, LXS)))
    s = gl.arange(0, X_STEPS, layout=L_s)
    n = gl.arange(0, BN, layout=L_n)
    t = gl.arange(0, 4, layout=L_t)
    c = gl.arange(0, 4 * KT, layout=L_c)
    s4 = gl.expand_dims(gl.expand_dims(gl.expand_dims(s, 1), 2), 3)
    n4 = gl.expand_dims(gl.expand_dims(gl.expand_dims(n, 0), 2), 3)
    t4 = gl.expand_dims(gl.expand_dims(gl.expand_dims(t, 0), 1), 3)
    c4 = gl.expand_dims(gl.expand_dims(gl.expand_dims(c, 0), 1), 2)
    off = n4 * x_stride + (s_begin + s4) * GROUP + t4 * (4 * KT) + c4
    mask = (n4 < M) & (s_begin + s4 < s_end)
    xs = gl.load(x_ptr + off, mask=mask, other=0.0)  # (S, BN, 4, 4 KT): input 4 KT t + c of step s, row n
    xs = xs.reshape([X_STEPS, BN, 4, KT, 2, 2])  # (s, n, t, kt, b2, b0)
    xs = xs.permute([0, 3, 4, 2, 5, 1]).reshape([X_STEPS * GROUP, BN])  # k = 16 kt + 8 b2 + 2 t + b0
    x_smem.store(xs)


@gluon.jit
def _load_step(
    w_ptr,
    h_ptr,
    tile0,
    step,
    n_atoms_k,
    ATOMS: gl.constexpr,
    VEC: gl.constexpr,
    TM: gl.constexpr,
    LW: gl.constexpr,
    LH: gl.constexpr,
    BITS: gl.constexpr,
):
    """A step's words and (3-bit) high words; other widths return the words twice."""
    words = _load_words(w_ptr, tile0, step, n_atoms_k, ATOMS, VEC, TM, LW)
    high = words
    if BITS == 3:
        high = _load_words(h_ptr, tile0, step, n_atoms_k, ATOMS, VEC // 2, TM, LH)
    return words, high


@gluon.jit
def _issue(
    words,
    high,
    x_buf,
    zero,
    ASM: gl.constexpr,
    BITS: gl.constexpr,
    E: gl.constexpr,
    TM: gl.constexpr,
    ATOMS: gl.constexpr,
    VEC: gl.constexpr,
    L6: gl.constexpr,
    A_L: gl.constexpr,
):
    """Unpack a step's words into the A operand and start its wgmma against ``x_buf``: (token, operand)."""
    a = _unpack(words, high, ASM, BITS, E, TM, ATOMS, VEC, L6, A_L)
    return _hopper.warpgroup_mma(a, x_buf, zero, use_acc=False, is_async=True), a


@gluon.jit
def _group_terms(s_ptr, m_ptr, xs_ptr, xs_stride, N, step, rows, cols, M, HAS_MIN: gl.constexpr):
    """A step's scales and mins ``(BM,)`` and activation sums ``(BN,)`` (loaded ahead of their use)."""
    scale = gl.load(s_ptr + step * N + rows).to(gl.float32)
    mins = scale
    xsum = gl.zeros_like(cols).to(gl.float32)
    if HAS_MIN:
        mins = gl.load(m_ptr + step * N + rows).to(gl.float32)
        xsum = gl.load(xs_ptr + cols * xs_stride + step, mask=cols < M, other=0.0)
    return scale, mins, xsum


@gluon.jit
def _accumulate(acc, part, scale, mins, xsum, HAS_MIN: gl.constexpr):
    """``acc + scale * part`` (per output row), ``+ min * (the step's activation sums)`` (asymmetric)."""
    acc += gl.expand_dims(scale, 1) * part
    if HAS_MIN:
        acc += gl.expand_dims(mins, 1) * gl.expand_dims(xsum, 0)
    return acc


@gluon.jit
def _async_mma_kernel(
    x_ptr,
    w_ptr,
    h_ptr,
    s_ptr,
    m_ptr,
    xs_ptr,
    y_ptr,
    M,
    N,
    K,
    x_stride,
    xs_stride,
    y_stride,
    ASM: gl.constexpr,
    BITS: gl.constexpr,
    PER_WORD: gl.constexpr,
    GROUP: gl.constexpr,
    ATOM: gl.constexpr,
    VEC: gl.constexpr,
    HAS_MIN: gl.constexpr,
    TILES_PER_WARP: gl.constexpr,
    BN: gl.constexpr,
    SPLIT_K: gl.constexpr,
    X_STEPS: gl.constexpr,
    L6: gl.constexpr,
    LW: gl.constexpr,
    LX: gl.constexpr,
    LH: gl.constexpr,
    LXS: gl.constexpr,
    NEW_REINTERPRET: gl.constexpr,
):
    W: gl.constexpr = gl.num_warps()
    TM: gl.constexpr = W * TILES_PER_WARP
    BM: gl.constexpr = TM * 16
    ATOMS: gl.constexpr = GROUP // ATOM
    MMA: gl.constexpr = gl.NVMMADistributedLayout(
        version=[3, 0], warps_per_cta=[W, 1], instr_shape=[16, BN, 16]
    )
    A_L: gl.constexpr = gl.DotOperandLayout(operand_index=0, parent=MMA, k_width=2)
    X_SMEM: gl.constexpr = gl.NVMMASharedLayout(swizzle_byte_width=2 * BN, element_bitwidth=16, rank=2)
    pid_m = gl.program_id(0)
    pid_k = gl.program_id(1)
    n_steps = K // GROUP
    s_begin = pid_k * n_steps // SPLIT_K
    s_end = (pid_k + 1) * n_steps // SPLIT_K
    n_atoms_k = K // ATOM
    tile0 = pid_m * TM

    rows = pid_m * BM + gl.arange(0, BM, layout=gl.SliceLayout(1, MMA))  # (BM,) outputs
    cols = gl.arange(0, BN, layout=gl.SliceLayout(0, MMA))
    acc = gl.zeros([BM, BN], gl.float32, MMA)
    zero = gl.zeros([BM, BN], gl.float32, MMA)

    last = s_end - 1  # steps past the slice's end repeat its last step (cache hits, never added)
    w0, h0 = _load_step(w_ptr, h_ptr, tile0, s_begin, n_atoms_k, ATOMS, VEC, TM, LW, LH, BITS)
    w1, h1 = _load_step(
        w_ptr, h_ptr, tile0, gl.minimum(s_begin + 1, last), n_atoms_k, ATOMS, VEC, TM, LW, LH, BITS
    )
    w2, h2 = _load_step(
        w_ptr, h_ptr, tile0, gl.minimum(s_begin + 2, last), n_atoms_k, ATOMS, VEC, TM, LW, LH, BITS
    )
    w3, h3 = _load_step(
        w_ptr, h_ptr, tile0, gl.minimum(s_begin + 3, last), n_atoms_k, ATOMS, VEC, TM, LW, LH, BITS
    )
    x_flat = gl.allocate_shared_memory(gl.float16, [X_STEPS * GROUP, BN], X_SMEM)
    if NEW_REINTERPRET:  # one (G, BN) buffer per step
        x_smem = x_flat.reinterpret(gl.float16, [X_STEPS, GROUP, BN], X_SMEM)
    else:  # triton 3.6
        x_smem = x_flat._reinterpret(gl.float16, [X_STEPS, GROUP, BN], X_SMEM)
    scale_p, mins_p, xsum_p = _group_terms(
        s_ptr, m_ptr, xs_ptr, xs_stride, N, s_begin, rows, cols, M, HAS_MIN
    )
    q0 = gl.minimum(s_begin + 1, last)
    scale_q, mins_q, xsum_q = _group_terms(s_ptr, m_ptr, xs_ptr, xs_stride, N, q0, rows, cols, M, HAS_MIN)
    # chunks of X_STEPS steps of x in shared memory (X_STEPS is even: only the slice's last chunk can end on
    # half a pair); in each, steps in pairs: p's wgmma runs while p + 1 unpacks, p + 1's while p's product
    # is scaled; the words of the next two pairs are in flight
    for c0 in range(s_begin, s_end, X_STEPS):
        c1 = gl.minimum(c0 + X_STEPS, s_end)
        _cta_barrier()  # every warp is done with the previous chunk (each pair waits for its wgmmas)
        _stage_x(x_ptr, x_stride, M, c0, c1, x_flat, GROUP, BN, X_STEPS, LXS)
        _hopper.fence_async_shared()
        _cta_barrier()
        for p in range(c0, c1, 2):  # this pair's scales are loaded; the next pair's are loaded here
            q = gl.minimum(p + 1, last)
            p2 = gl.minimum(p + 2, last)
            q2 = gl.minimum(p + 3, last)
            scale_p2, mins_p2, xsum_p2 = _group_terms(
                s_ptr, m_ptr, xs_ptr, xs_stride, N, p2, rows, cols, M, HAS_MIN
            )
            scale_q2, mins_q2, xsum_q2 = _group_terms(
                s_ptr, m_ptr, xs_ptr, xs_stride, N, q2, rows, cols, M, HAS_MIN
            )
            w4, h4 = _load_step(
                w_ptr, h_ptr, tile0, gl.minimum(p + 4, last), n_atoms_k, ATOMS, VEC, TM, LW, LH, BITS
            )
            w5, h5 = _load_step(
                w_ptr, h_ptr, tile0, gl.minimum(p + 5, last), n_atoms_k, ATOMS, VEC, TM, LW, LH, BITS
            )
            token_a, a_a = _issue(
                w0, h0, x_smem.index(p - c0), zero, ASM, BITS, PER_WORD, TM, ATOMS, VEC, L6, A_L
            )
            token_b, a_b = _issue(
                w1, h1, x_smem.index(q - c0), zero, ASM, BITS, PER_WORD, TM, ATOMS, VEC, L6, A_L
            )
            part, a_a = _hopper.warpgroup_mma_wait(1, deps=[token_a, a_a])
            acc = _accumulate(acc, part, scale_p, mins_p, xsum_p, HAS_MIN)
            part, a_b = _hopper.warpgroup_mma_wait(0, deps=[token_b, a_b])
            if p + 1 < c1:
                acc = _accumulate(acc, part, scale_q, mins_q, xsum_q, HAS_MIN)
            w0, h0, w1, h1, w2, h2, w3, h3 = w2, h2, w3, h3, w4, h4, w5, h5
            scale_p, mins_p, xsum_p, scale_q, mins_q, xsum_q = (
                scale_p2,
                mins_p2,
                xsum_p2,
                scale_q2,
                mins_q2,
                xsum_q2,
            )
    _store_out(acc, y_ptr, y_stride, M, pid_m, BM, BN, W, SPLIT_K)


@functools.cache
def async_constants(
    bits: int,
    group_size: int,
    qoff: float,
    has_min: bool,
    tiles_per_warp: int,
    num_warps: int,
    bn: int,
    x_steps: int,
) -> Mapping[str, object]:
    """``mma.kernel_constants`` plus the x slice's depth and layout (cached)."""
    consts = dict(kernel_constants(bits, group_size, qoff, has_min, tiles_per_warp, num_warps, bn))
    consts.update(X_STEPS=x_steps, LXS=x_slice_layout(num_warps, group_size, bn, x_steps))
    consts.update(NEW_REINTERPRET=hasattr(gl.shared_memory_descriptor, "reinterpret"))
    return MappingProxyType(consts)


def compile_async_offline(
    bits: int, group_size: int, symmetric: bool, bn: int, config: AsyncMmaConfig, capability: int = 90
) -> object:
    """Compile the kernel for sm_``capability`` without a GPU (CPU tests, SASS reading)."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.experimental.gluon._runtime import GluonASTSource

    qoff = -float(1 << (bits - 1)) if symmetric else 0.0
    tpw, warps = config.tiles_per_warp, config.num_warps
    consts = dict(async_constants(bits, group_size, qoff, not symmetric, tpw, warps, bn, config.x_steps))
    consts.update(SPLIT_K=max(1, config.split_k))
    args = ["x_ptr", "w_ptr", "h_ptr", "s_ptr", "m_ptr", "xs_ptr", "y_ptr"]
    args += ["M", "N", "K", "x_stride", "xs_stride", "y_stride"]
    types = ["*fp16", "*i32", "*i32", "*fp16", "*fp16", "*fp32", "*fp16"] + ["i32"] * 6
    signature = dict(zip(args, types, strict=True))
    signature.update({k: "constexpr" for k in consts})
    aligned = {(i,): [["tt.divisibility", 16]] for i, a in enumerate(args) if a not in ("M", "xs_stride")}
    source = GluonASTSource(
        _async_mma_kernel, signature, {k: getattr(v, "value", v) for k, v in consts.items()}, aligned
    )
    return triton.compile(source, target=GPUTarget("cuda", capability, 32), options={"num_warps": warps})


def async_mma_matmul(
    x: torch.Tensor, layout: FragmentLayout, config: AsyncMmaConfig, out: torch.Tensor | None = None
) -> torch.Tensor:
    """``x (M, in) float16 -> (M, out) float16`` with ``M <= 16`` on the asynchronous wgmma kernel."""
    rows = x.shape[0]
    if x.dtype != torch.float16 or rows > MMA_MAX_BATCH:
        raise ValueError(f"async_mma_matmul takes float16 activations of at most {MMA_MAX_BATCH} rows")
    if config.x_steps < 2 or config.x_steps & (config.x_steps - 1):
        raise ValueError(f"x_steps must be a power of two >= 2 (whole pairs of steps), not {config.x_steps}")
    if config.num_warps not in (4, 8):
        raise ValueError(f"async_mma_matmul runs whole warpgroups: num_warps 4 or 8, not {config.num_warps}")
    out_features, in_features = layout.shape
    tiles = out_features // TILE
    tpw = config.tiles_per_warp
    while tpw > 1 and tiles % (config.num_warps * tpw):
        tpw //= 2
    if tiles % (config.num_warps * tpw):
        raise ValueError(f"{out_features} outputs are not a multiple of {16 * config.num_warps}")
    x = x.contiguous()
    row_programs = tiles // (config.num_warps * tpw)
    steps = in_features // layout.group_size
    split_k = max(1, min(config.split_k or auto_split_k(row_programs, steps, x.device), steps))
    y = torch.empty(rows, out_features, dtype=x.dtype, device=x.device) if out is None else out
    if split_k > 1:
        y.zero_()
    bn = 16  # wgmma n16 (batches up to 8 take mma.py's n8 tiles)
    mins = layout.mins if layout.mins is not None else layout.scales
    xs = x.view(rows, -1, layout.group_size).sum(-1, dtype=torch.float32) if layout.mins is not None else x
    has_min = layout.mins is not None
    consts = async_constants(
        layout.bits, layout.group_size, layout.qoff, has_min, tpw, config.num_warps, bn, config.x_steps
    )
    _async_mma_kernel[(row_programs, split_k)](
        x,
        layout.words,
        layout.words if layout.high is None else layout.high,
        layout.scales,
        mins,
        xs,
        y,
        rows,
        out_features,
        in_features,
        x.stride(0),
        xs.stride(0),
        y.stride(0),
        SPLIT_K=split_k,
        **consts,
        num_warps=config.num_warps,
    )
    return y
