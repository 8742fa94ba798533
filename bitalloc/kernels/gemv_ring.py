"""Batch-1 GEMV with the words streamed through a shared-memory ring by asynchronous copies (Gluon).

The f16x2 GEMV (``gemv_h2.py``) loads a step's words into registers and then waits for them: all warps of an
SM wait together and then compute together, so memory and arithmetic take turns (Nsight Compute on the H200,
8192x28672 2-bit: 62 % of issue slots used, long-scoreboard stalls the largest share). Loading the next step
into registers as well (``prefetch``) needs 40 more registers per thread and so costs a quarter of the warps.

Here each program keeps ``SLOTS - 1`` steps of words, scales and offsets in flight as ``cp.async`` copies
into a ring in shared memory, so the loads cost no registers while they fly. Each thread reads back only the
bytes it copied itself (the same layout for the copy and the read), so a ``cp.async.wait_group`` per step
suffices: no barrier in the loop. The program's slice of activation pairs (at most ``SLICE`` steps) is
read once into shared memory, with its per-step sums; the dot of each step is the same inline PTX as the
f16x2 GEMV's (``_half2.word_asm``), field for field.

Gluon kernels need a CUDA GPU to run; on the CPU the tests compile this one for sm_90 (``compile_offline``)
and check its PTX for the copies, the waits and the absence of barriers inside the loop.
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
from triton.experimental.gluon.language.nvidia.ampere import async_copy

from bitalloc.kernels._half2 import _PAIR_SUM, word_asm
from bitalloc.kernels.gemv_h2 import HALF2_R
from bitalloc.kernels.layout import KernelLayout
from bitalloc.kernels.mma import _cta_barrier

_async_load = getattr(async_copy, "async_load", None) or async_copy.async_copy_global_to_shared
RING_BITS = (2, 3, 4, 8)


@dataclass(frozen=True)
class RingConfig:
    """Launch parameters: outputs per program, warps, split-K slices, ring slots (steps in flight, a power of two)."""

    block_n: int = 512
    num_warps: int = 4
    split_k: int = 32
    slots: int = 2


def dot_asm(bits: int) -> str:
    """The inline PTX of one step's dot per row and output (``_half2.word_asm``): two words of 2/4/8-bit
    fields, or four words of 3-bit fields at a 4-bit stride."""
    if bits == 3:
        return word_asm(4, HALF2_R[3], 4, 3)
    return word_asm(bits, HALF2_R[bits], 2)


def step_rows(bits: int, chunk: int) -> tuple[int, int, int]:
    """``(a-words per step, b-words per step, pair stride WP)`` of one interleave chunk."""
    if bits == 3:
        return chunk // 16, chunk // 32, chunk // 16
    return chunk * bits // 32, 0, chunk * bits // 32


@gluon.jit
def _issue(
    a_ptr,
    b_ptr,
    s_ptr,
    m_ptr,
    a_ring,
    b_ring,
    s_ring,
    m_ring,
    slot,
    step,
    offs_n,
    N,
    WPA: gl.constexpr,
    WPB: gl.constexpr,
    HAS_MIN: gl.constexpr,
    STEPS_PER_GROUP: gl.constexpr,
    L: gl.constexpr,
):
    """Start the copies of one step's words, scale and offset into ring slot ``slot``; one commit group."""
    LR: gl.constexpr = gl.SliceLayout(1, L)
    rows_a = step * WPA + gl.arange(0, WPA, layout=LR)  # (WPA,)
    _async_load(a_ring.index(slot), a_ptr + gl.expand_dims(rows_a * N, 1) + gl.expand_dims(offs_n, 0))
    if WPB > 0:
        rows_b = step * WPB + gl.arange(0, WPB, layout=LR)
        _async_load(b_ring.index(slot), b_ptr + gl.expand_dims(rows_b * N, 1) + gl.expand_dims(offs_n, 0))
    g = step // STEPS_PER_GROUP
    _async_load(s_ring.index(slot), s_ptr + g * N + offs_n)
    if HAS_MIN:
        _async_load(m_ring.index(slot), m_ptr + g * N + offs_n)
    async_copy.commit_group()


@gluon.jit
def _pairs(x_step, j: gl.constexpr, start: gl.constexpr, H: gl.constexpr, L: gl.constexpr):
    """Pairs of field ``j`` for rows ``start .. start + H`` of one step (``x_step``: (NJ, WP)): (H, 1) int32
    in L, every thread holding all H."""
    LT: gl.constexpr = gl.BlockedLayout([1, H], [1, 32], [1, gl.num_warps()], [1, 0])
    row = x_step.slice(j, 1, dim=0).slice(start, H, dim=1).load(LT)  # (1, H)
    return gl.convert_layout(row.permute([1, 0]), L)


@gluon.jit
def _step_dot(
    a_slot, b_slot, x_step, ASM: gl.constexpr, BITS: gl.constexpr, H: gl.constexpr, L: gl.constexpr
):
    """``sum q x / R`` of one step per row and output: (H, BLOCK_N) float32. Field ``j`` of a-word rows
    ``r`` (``u0``) and ``r + H`` (``u1``) takes the pairs ``j * WP + r`` and ``j * WP + H + r``."""
    u0 = a_slot.slice(0, H).load(L)  # (H, BLOCK_N)
    u1 = a_slot.slice(H, H).load(L)
    if BITS == 3:  # 3-bit fields at a 4-bit stride: even / odd fields of both a-words, high bits from b
        u2 = b_slot.load(L)
        e0 = (u0 & 0x33333333) | ((u2 << 2) & ~0x33333333)
        o0 = ((u0 >> 2) & 0x33333333) | (u2 & ~0x33333333)
        u3 = u2 >> 1
        e1 = (u1 & 0x33333333) | ((u3 << 2) & ~0x33333333)
        o1 = ((u1 >> 2) & 0x33333333) | (u3 & ~0x33333333)
        a0, a1, a2, a3 = (
            _pairs(x_step, 0, 0, H, L),
            _pairs(x_step, 2, 0, H, L),
            _pairs(x_step, 4, 0, H, L),
            _pairs(x_step, 6, 0, H, L),
        )
        b0, b1, b2, b3 = (
            _pairs(x_step, 1, 0, H, L),
            _pairs(x_step, 3, 0, H, L),
            _pairs(x_step, 5, 0, H, L),
            _pairs(x_step, 7, 0, H, L),
        )
        c0, c1, c2, c3 = (
            _pairs(x_step, 0, H, H, L),
            _pairs(x_step, 2, H, H, L),
            _pairs(x_step, 4, H, H, L),
            _pairs(x_step, 6, H, H, L),
        )
        d0, d1, d2, d3 = (
            _pairs(x_step, 1, H, H, L),
            _pairs(x_step, 3, H, H, L),
            _pairs(x_step, 5, H, H, L),
            _pairs(x_step, 7, H, H, L),
        )
        args = [e0, o0, e1, o1, a0, a1, a2, a3, b0, b1, b2, b3, c0, c1, c2, c3, d0, d1, d2, d3]
    elif BITS == 2:
        a0, a1, a2, a3 = (
            _pairs(x_step, 0, 0, H, L),
            _pairs(x_step, 1, 0, H, L),
            _pairs(x_step, 2, 0, H, L),
            _pairs(x_step, 3, 0, H, L),
        )
        a4, a5, a6, a7 = (
            _pairs(x_step, 4, 0, H, L),
            _pairs(x_step, 5, 0, H, L),
            _pairs(x_step, 6, 0, H, L),
            _pairs(x_step, 7, 0, H, L),
        )
        b0, b1, b2, b3 = (
            _pairs(x_step, 0, H, H, L),
            _pairs(x_step, 1, H, H, L),
            _pairs(x_step, 2, H, H, L),
            _pairs(x_step, 3, H, H, L),
        )
        b4, b5, b6, b7 = (
            _pairs(x_step, 4, H, H, L),
            _pairs(x_step, 5, H, H, L),
            _pairs(x_step, 6, H, H, L),
            _pairs(x_step, 7, H, H, L),
        )
        args = [u0, u1, a0, a1, a2, a3, a4, a5, a6, a7, b0, b1, b2, b3, b4, b5, b6, b7]
    elif BITS == 4:
        a0, a1, a2, a3 = (
            _pairs(x_step, 0, 0, H, L),
            _pairs(x_step, 1, 0, H, L),
            _pairs(x_step, 2, 0, H, L),
            _pairs(x_step, 3, 0, H, L),
        )
        b0, b1, b2, b3 = (
            _pairs(x_step, 0, H, H, L),
            _pairs(x_step, 1, H, H, L),
            _pairs(x_step, 2, H, H, L),
            _pairs(x_step, 3, H, H, L),
        )
        args = [u0, u1, a0, a1, a2, a3, b0, b1, b2, b3]
    else:
        a0, a1 = _pairs(x_step, 0, 0, H, L), _pairs(x_step, 1, 0, H, L)
        b0, b1 = _pairs(x_step, 0, H, H, L), _pairs(x_step, 1, H, H, L)
        args = [u0, u1, a0, a1, b0, b1]
    cons: gl.constexpr = "=f" + ",r" * (20 if BITS == 3 else 2 + 32 // BITS)
    return gl.inline_asm_elementwise(ASM, cons, args, dtype=gl.float32, is_pure=True, pack=1)


@gluon.jit
def gemv_ring_kernel(
    x2_ptr,
    a_ptr,
    b_ptr,
    s_ptr,
    m_ptr,
    y_ptr,
    N,
    K,
    QOFF,
    SPLIT_K,
    ASM: gl.constexpr,
    PAIR_SUM: gl.constexpr,
    BITS: gl.constexpr,
    HAS_MIN: gl.constexpr,
    CHUNK: gl.constexpr,
    GROUP: gl.constexpr,
    WPA: gl.constexpr,
    WPB: gl.constexpr,
    WP: gl.constexpr,
    R: gl.constexpr,
    BLOCK_N: gl.constexpr,
    SLOTS: gl.constexpr,
    SLICE: gl.constexpr,
    ATOMIC: gl.constexpr,
):
    W: gl.constexpr = gl.num_warps()
    H: gl.constexpr = WP // 2  # rows per half step
    NJ: gl.constexpr = CHUNK // 2 // WP  # fields per 16-bit half
    L: gl.constexpr = gl.BlockedLayout([1, 4], [1, 32], [1, W], [1, 0])  # (rows, BLOCK_N)
    LN: gl.constexpr = gl.SliceLayout(0, L)
    RING: gl.constexpr = gl.SwizzledSharedLayout(1, 1, 1, [1, 0])  # per slot (the leading dim indexes)
    FLAT: gl.constexpr = gl.SwizzledSharedLayout(1, 1, 1, [0])

    pid_n = gl.program_id(0)
    pid_k = gl.program_id(1)
    n_steps = K // CHUNK
    kb_start = pid_k * n_steps // SPLIT_K
    kb_end = (pid_k + 1) * n_steps // SPLIT_K
    offs_n = pid_n * BLOCK_N + gl.arange(0, BLOCK_N, layout=LN)  # (BLOCK_N,)

    a_ring = gl.allocate_shared_memory(gl.int32, [SLOTS, WPA, BLOCK_N], RING)
    b_ring = gl.allocate_shared_memory(gl.int32, [SLOTS, max(WPB, 1), BLOCK_N], RING)
    s_ring = gl.allocate_shared_memory(gl.float16, [SLOTS, BLOCK_N], FLAT)
    m_ring = gl.allocate_shared_memory(gl.float16, [SLOTS, BLOCK_N], FLAT)
    x_smem = gl.allocate_shared_memory(gl.int32, [SLICE, NJ, WP], RING)
    for first in gl.static_range(SLOTS):  # the first steps in flight (a short slice re-reads its last)
        _issue(
            a_ptr,
            b_ptr,
            s_ptr,
            m_ptr,
            a_ring,
            b_ring,
            s_ring,
            m_ring,
            first,
            gl.minimum(kb_start + first, kb_end - 1),
            offs_n,
            N,
            WPA,
            WPB,
            HAS_MIN,
            GROUP // CHUNK,
            L,
        )

    # the slice's activation pairs into shared memory, and each step's activation sum (every thread: all)
    LX: gl.constexpr = gl.BlockedLayout([1, 1], [NJ, 32 // NJ], [1, W], [1, 0])  # (NJ, WP)
    j2 = gl.expand_dims(gl.arange(0, NJ, layout=gl.SliceLayout(1, LX)), 1)
    w2 = gl.expand_dims(gl.arange(0, WP, layout=gl.SliceLayout(0, LX)), 0)
    LS: gl.constexpr = gl.BlockedLayout([SLICE], [32], [W], [0])  # every thread holds all sums
    step_ids = gl.arange(0, SLICE, layout=LS)
    step_sums = gl.zeros([SLICE], gl.float32, LS)
    for si in gl.static_range(SLICE):
        live = j2 * 0 + si < kb_end - kb_start
        pairs = gl.load(
            x2_ptr + (kb_start + si) * (CHUNK // 2) + j2 * WP + w2, mask=live, other=0
        )  # (NJ, WP)
        x_smem.index(si).store(pairs)
        sums = gl.inline_asm_elementwise(PAIR_SUM, "=f,r", [pairs], dtype=gl.float32, is_pure=True, pack=1)
        step_sums = gl.where(step_ids == si, gl.sum(gl.sum(sums, axis=1), axis=0), step_sums)
    _cta_barrier()

    acc = gl.zeros([H, BLOCK_N], gl.float32, L)
    acc_off = gl.zeros([BLOCK_N], gl.float32, LN)
    for kb in range(kb_start, kb_end):
        i = kb - kb_start
        slot = i % SLOTS
        async_copy.wait_group(SLOTS - 1)  # this thread's copies of step kb have landed
        scale = s_ring.index(slot).load(LN).to(gl.float32)  # (BLOCK_N,)
        offset = scale * QOFF
        if HAS_MIN:
            offset += m_ring.index(slot).load(LN).to(gl.float32)
        dot = _step_dot(a_ring.index(slot), b_ring.index(slot), x_smem.index(i), ASM, BITS, H, L)
        # the slot just read (this thread's own bytes, consumed by the dot) takes step kb + SLOTS
        _issue(
            a_ptr,
            b_ptr,
            s_ptr,
            m_ptr,
            a_ring,
            b_ring,
            s_ring,
            m_ring,
            slot,
            gl.minimum(kb + SLOTS, kb_end - 1),
            offs_n,
            N,
            WPA,
            WPB,
            HAS_MIN,
            GROUP // CHUNK,
            L,
        )
        acc += gl.expand_dims(scale, 0) * dot
        xs = gl.sum(gl.where(step_ids == i, step_sums, 0.0), axis=0)
        acc_off += offset * xs
    async_copy.wait_group(0)
    y = gl.sum(acc, axis=0) * R + acc_off  # (BLOCK_N,)
    if ATOMIC:
        gl.atomic_add(y_ptr + offs_n, y.to(gl.float16), sem="relaxed")
    else:
        gl.store(y_ptr + offs_n, y.to(gl.float16))


def slice_steps(in_features: int, chunk: int, split_k: int) -> int:
    """Steps of the longest K slice, rounded up to a power of two (the pairs buffer's length)."""
    steps = -(-(in_features // chunk) // split_k)
    return 1 << max(0, math.ceil(math.log2(steps)))


def supports(layout: KernelLayout, config: RingConfig) -> bool:
    """Whether the ring kernel runs this layout with this launch (else the f16x2 GEMV does)."""
    out_features = layout.shape[0]
    return (
        layout.bits in RING_BITS
        and layout.a.shape[0] == 1
        and out_features % config.block_n == 0
        and config.block_n % (128 * config.num_warps) == 0
        and layout.chunk >= (64 if layout.bits == 3 else 32)
    )


@functools.cache
def kernel_constants(bits: int, chunk: int, group: int, has_min: bool) -> Mapping[str, object]:
    """Compile-time arguments of one format (cached: no PTX is rebuilt per call)."""
    wpa, wpb, wp = step_rows(bits, chunk)
    return MappingProxyType(
        {
            "ASM": dot_asm(bits),
            "PAIR_SUM": _PAIR_SUM.value,
            "BITS": bits,
            "HAS_MIN": has_min,
            "CHUNK": chunk,
            "GROUP": group,
            "WPA": wpa,
            "WPB": wpb,
            "WP": wp,
            "R": HALF2_R[bits],
        }
    )


def gemv_ring(
    x: torch.Tensor, layout: KernelLayout, config: RingConfig, out: torch.Tensor | None = None
) -> torch.Tensor:
    """``x (1, in) float16 -> (1, out) float16``; with ``out``, the result is added into it."""
    out_features, in_features = layout.shape
    if x.dtype != torch.float16 or x.numel() != in_features or not supports(layout, config):
        raise ValueError("gemv_ring takes one float16 row and a layout that `supports` accepts")
    x = x.reshape(-1).contiguous()
    if x.data_ptr() % 4:
        x = x.clone()
    split_k = max(1, min(config.split_k, in_features // layout.chunk))
    atomic = out is not None or split_k > 1
    y = out.view(-1) if out is not None else torch.zeros(out_features, dtype=x.dtype, device=x.device)
    consts = kernel_constants(layout.bits, layout.chunk, layout.group_size, layout.mins is not None)
    mins = layout.mins if layout.mins is not None else layout.scales
    b = layout.b if layout.b is not None else layout.a
    gemv_ring_kernel[(out_features // config.block_n, split_k)](
        x.view(torch.int32),
        layout.a,
        b,
        layout.scales,
        mins,
        y,
        out_features,
        in_features,
        layout.qoff,
        split_k,
        BLOCK_N=config.block_n,
        SLOTS=config.slots,
        SLICE=slice_steps(in_features, layout.chunk, split_k),
        ATOMIC=atomic,
        **consts,
        num_warps=config.num_warps,
    )
    return y.view(1, out_features)


def compile_offline(
    bits: int, chunk: int, group: int, has_min: bool, config: RingConfig, slice_len: int, capability: int = 90
) -> object:
    """Compile the kernel for an NVIDIA GPU of ``capability`` without one (CPU tests, SASS reading)."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.experimental.gluon._runtime import GluonASTSource

    consts = dict(kernel_constants(bits, chunk, group, has_min))
    consts.update(BLOCK_N=config.block_n, SLOTS=config.slots, SLICE=slice_len, ATOMIC=True)
    args = ["x2_ptr", "a_ptr", "b_ptr", "s_ptr", "m_ptr", "y_ptr", "N", "K", "QOFF", "SPLIT_K"]
    types = ["*i32", "*i32", "*i32", "*fp16", "*fp16", "*fp16", "i32", "i32", "fp32", "i32"]
    signature = dict(zip(args, types, strict=True))
    signature.update({k: "constexpr" for k in consts})
    aligned = {(i,): [["tt.divisibility", 16]] for i, a in enumerate(args) if a not in ("QOFF", "SPLIT_K")}
    source = GluonASTSource(gemv_ring_kernel, signature, consts, aligned)
    return triton.compile(
        source, target=GPUTarget("cuda", capability, 32), options={"num_warps": config.num_warps}
    )
