"""Swap-AB GEMM for batch 2-16: ``y^T (out, M) = W (out, in) x^T``, the large ``out`` on the tensor cores' M.

With ``M <= 16`` activation rows, the ``x W^T`` GEMM (``gemm.py``) gives the tensor cores a 16-row M tile.
Here the weight is the left operand: a program owns ``BLOCK_OUT`` outputs (64-256) and 16 rows: the dot is
``(BLOCK_OUT, K) x (K, 16)`` (wgmma 64xNx16 on Hopper), and split-K fills the machine when ``out`` is small.

One K step is ``NCH`` interleave chunks. The step's words of each output form a ``(BLOCK_OUT, R)`` tile
(``R = NCH * WP``, coalesced along ``out``); field ``m`` of both 16-bit halves of every word is dequantized
at once in f16x2 (inline PTX: one LOP3 ``(w & mask) | 0x6400`` = ``1024 + q 2**s`` in each half, one FMA to
``q`` exactly, one FMA to ``scale * q + offset`` in float16: the weight, rounded once). The two halves hold
adjacent inputs ``(2p, 2p + 1)`` (``layout.py``), so joining them gives a ``(BLOCK_OUT, 2R)`` float16 tile
per field (column ``2r + h``: input ``c * chunk + 2 * m * WP + 2 * (r % WP) + h``, ``c = r // WP``); the
fields are joined into one ``(BLOCK_OUT, NCH * chunk)`` tile and ``x^T`` is gathered in the same column
order (``_x_tile``): one dot per step, accumulated in float32 (one dot per field cost a barrier and a wgmma
wait each: 3x slower on the H200). 3-bit weights merge each 2-bit a-word with its b-word into two words of
3-bit fields at a 4-bit stride. SPLIT_K > 1 adds the partial results atomically into a zeroed output.

Handles float16 activations on 2, 3, 4 and 8-bit single-plane layouts; ``swapab`` runs ``gemm`` otherwise
(bfloat16, nested, 5/6 bits).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from bitalloc.kernels._half2 import _f16x2
from bitalloc.kernels.gemm import GemmConfig, gemm
from bitalloc.kernels.layout import KernelLayout

SWAPAB_BITS = (2, 3, 4, 8)
SHARED_LIMIT = 200 * 1024  # bytes a launch may plan for (H100/H200: 227 KiB per block)


@dataclass(frozen=True)
class SwapABConfig:
    """Launch parameters: outputs per program, inputs per K step (rounded to fit), split-K, warps, stages."""

    block_out: int = 128
    block_k: int = 256
    split_k: int = 0  # 0: enough K slices for about two programs per SM (``auto_split_k``)
    num_warps: int = 4
    num_stages: int = 3


def field_asm(shift: int, width: int) -> str:
    """PTX: ``($0, $1)`` = float16 ``scale * q + offset`` of the ``width``-bit field at bit ``shift`` of the
    low and high half of word ``$2``; ``$3``/``$4`` hold the scale/offset in both halves (f16x2)."""
    mask = ((1 << width) - 1) << shift
    return "\n".join(
        [
            "{",
            ".reg .b32 v, q, w, c1, c2;",
            f"lop3.b32 v, $2, 0x{mask:04X}{mask:04X}, 0x64006400, 0xEA;",
            f"mov.b32 c1, {_f16x2(2.0**-shift)};",
            f"mov.b32 c2, {_f16x2(-1024.0 * 2.0**-shift)};",
            "fma.rn.f16x2 q, v, c1, c2;",
            "fma.rn.f16x2 w, q, $3, $4;",
            "mov.b32 {$0, $1}, w;",
            "}",
        ]
    )


_F2_0 = tl.constexpr(field_asm(0, 2))
_F2_2 = tl.constexpr(field_asm(2, 2))
_F2_4 = tl.constexpr(field_asm(4, 2))
_F2_6 = tl.constexpr(field_asm(6, 2))
_F2_8 = tl.constexpr(field_asm(8, 2))
_F3_0 = tl.constexpr(field_asm(0, 3))
_F3_4 = tl.constexpr(field_asm(4, 3))
_F4_0 = tl.constexpr(field_asm(0, 4))
_F4_4 = tl.constexpr(field_asm(4, 4))
_F8_0 = tl.constexpr(field_asm(0, 8))


@triton.jit
def _field_asm(src, s2, o2, ASM_TEXT: tl.constexpr):
    """One ``field_asm`` over tensors: (low-half weights, high-half weights) float16."""
    return tl.inline_asm_elementwise(
        ASM_TEXT, "=h,=h,r,r,r", [src, s2, o2], dtype=(tl.float16, tl.float16), is_pure=True, pack=1
    )


@triton.jit
def _dequant(src, s2, o2, S: tl.constexpr, FW: tl.constexpr, ASM: tl.constexpr):
    """Float16 weights of the field at bit S (width FW) of the low and high halves of ``src`` (any shape)."""
    if ASM:  # one constant PTX text per (S, FW) (Triton 3.6 functions cannot return strings)
        if FW == 2:
            if S == 0:
                lo, hi = _field_asm(src, s2, o2, _F2_0)
            elif S == 2:
                lo, hi = _field_asm(src, s2, o2, _F2_2)
            elif S == 4:
                lo, hi = _field_asm(src, s2, o2, _F2_4)
            elif S == 6:
                lo, hi = _field_asm(src, s2, o2, _F2_6)
            else:
                lo, hi = _field_asm(src, s2, o2, _F2_8)
        elif FW == 3:
            if S == 0:
                lo, hi = _field_asm(src, s2, o2, _F3_0)
            else:
                lo, hi = _field_asm(src, s2, o2, _F3_4)
        elif FW == 4:
            if S == 0:
                lo, hi = _field_asm(src, s2, o2, _F4_0)
            else:
                lo, hi = _field_asm(src, s2, o2, _F4_4)
        else:
            lo, hi = _field_asm(src, s2, o2, _F8_0)
    else:  # interpreter: the same fields in float32, rounded once to float16
        mask: tl.constexpr = (1 << FW) - 1
        scale = (s2 & 0xFFFF).to(tl.int16).to(tl.float16, bitcast=True).to(tl.float32)
        offset = (o2 & 0xFFFF).to(tl.int16).to(tl.float16, bitcast=True).to(tl.float32)
        lo = (((src >> S) & mask).to(tl.float32) * scale + offset).to(tl.float16)
        hi = (((src >> (16 + S)) & mask).to(tl.float32) * scale + offset).to(tl.float16)
    return lo, hi


@triton.jit
def _pair(v):
    """float16 values as int32 holding them in both halves (an f16x2 operand)."""
    bits = v.to(tl.int16, bitcast=True).to(tl.int32) & 0xFFFF
    return bits | (bits << 16)


@triton.jit
def _step_scales(
    s_ptr,
    m_ptr,
    offs_n,
    mask_n,
    N,
    k0,
    QOFF,
    r,
    WP: tl.constexpr,
    CHUNK: tl.constexpr,
    GROUP: tl.constexpr,
    KSTEP: tl.constexpr,
    HAS_MIN: tl.constexpr,
):
    """f16x2 scale and offset of each output for the step's words: (BLOCK_OUT, 1) or (BLOCK_OUT, R) int32."""
    if GROUP >= KSTEP:
        idx = (k0 // GROUP) * N + offs_n[:, None]  # (BLOCK_OUT, 1)
        msk = mask_n[:, None]
    else:  # several groups per step: per word row
        idx = ((k0 + (r // WP) * CHUNK) // GROUP)[None, :] * N + offs_n[:, None]  # (BLOCK_OUT, R)
        msk = mask_n[:, None]
    scale = tl.load(s_ptr + idx, mask=msk, other=0.0)
    offset = scale.to(tl.float32) * QOFF
    if HAS_MIN:
        offset += tl.load(m_ptr + idx, mask=msk, other=0.0).to(tl.float32)
    return _pair(scale), _pair(offset.to(tl.float16))


@triton.jit
def _tile(
    src,
    s2,
    o2,
    S: tl.constexpr,
    FW: tl.constexpr,
    BLOCK_OUT: tl.constexpr,
    R: tl.constexpr,
    ASM: tl.constexpr,
):
    """Float16 weights of the field at bit S (width FW) of ``src (BLOCK_OUT, R)``: (BLOCK_OUT, 2R), column
    ``2r + h`` from half h of word r."""
    lo, hi = _dequant(src, s2, o2, S, FW, ASM)
    return tl.reshape(tl.join(lo, hi), (BLOCK_OUT, 2 * R))


@triton.jit
def _join2(a, b):
    """(BO, C) tiles -> (BO, 2C), column ``2c + i`` from tile i."""
    return tl.reshape(tl.join(a, b), (a.shape[0], 2 * a.shape[1]))


@triton.jit
def _join4(f0, f1, f2, f3):
    """Fields m = 0..3 (BO, C) -> (BO, 4C), column ``4c + m``."""
    return _join2(_join2(f0, f2), _join2(f1, f3))


@triton.jit
def _x_tile(
    x_ptr,
    offs_m,
    mask_m,
    stride_xm,
    k0,
    L: tl.constexpr,
    WP: tl.constexpr,
    CHUNK: tl.constexpr,
    KSTEP: tl.constexpr,
):
    """``x^T`` (KSTEP, BLOCK_M) in the column order of the joined weight tile (``2**L`` fields): column j
    holds field m of tile column ``c = j >> L`` (input ``(c // 2WP) chunk + 2 m WP + c % 2WP``), with
    ``m = j % 2**L`` for ``_join2``/``_join4`` and ``m = t // 2 + 4 (t % 2)``, ``t = j % 8`` for 8 fields."""
    j = tl.arange(0, KSTEP)
    t = j % (1 << L)
    m = ((t >> 1) | ((t & 1) << 2)) if L == 3 else t
    c = j >> L
    kidx = k0 + (c // (2 * WP)) * CHUNK + 2 * m * WP + c % (2 * WP)  # (KSTEP,)
    return tl.load(x_ptr + offs_m[None, :] * stride_xm + kidx[:, None], mask=mask_m[None, :], other=0.0)


@triton.jit
def _swapab_kernel(
    x_ptr,
    a_ptr,
    b_ptr,
    s_ptr,
    m_ptr,
    y_ptr,
    M,
    N,
    K,
    stride_xm,
    stride_ym,
    QOFF,
    BITS: tl.constexpr,
    GROUP: tl.constexpr,
    HAS_MIN: tl.constexpr,
    CHUNK: tl.constexpr,
    NCH: tl.constexpr,
    BLOCK_OUT: tl.constexpr,
    BLOCK_M: tl.constexpr,
    SPLIT_K,
    ASM: tl.constexpr,
):
    pid_n = tl.program_id(0)
    pid_k = tl.program_id(1)
    pid_m = tl.program_id(2)
    offs_n = pid_n * BLOCK_OUT + tl.arange(0, BLOCK_OUT)  # (BLOCK_OUT,)
    mask_n = offs_n < N
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)  # (BLOCK_M,)
    mask_m = offs_m < M
    BA: tl.constexpr = 2 if BITS == 3 else BITS  # width of the a-plane fields
    WP: tl.constexpr = CHUNK * BA // 32  # a-words per chunk
    R: tl.constexpr = NCH * WP  # a-words per output and step
    KSTEP: tl.constexpr = NCH * CHUNK
    r = tl.arange(0, R)
    n_steps = K // KSTEP
    kb_start = pid_k * n_steps // SPLIT_K
    kb_end = (pid_k + 1) * n_steps // SPLIT_K
    acc = tl.zeros((BLOCK_OUT, BLOCK_M), dtype=tl.float32)
    for kb in range(kb_start, kb_end):
        k0 = kb * KSTEP
        s2, o2 = _step_scales(s_ptr, m_ptr, offs_n, mask_n, N, k0, QOFF, r, WP, CHUNK, GROUP, KSTEP, HAS_MIN)
        words = tl.load(
            a_ptr + (k0 * BA // 32 + r)[None, :] * N + offs_n[:, None], mask=mask_n[:, None], other=0
        )  # (BLOCK_OUT, R)
        if BITS == 3:  # b-word of a-word (c, w): row c * WP/2 + w % (WP/2), high bits shifted by w // (WP/2)
            HALF: tl.constexpr = WP // 2
            wl = r % WP
            brow = k0 // 32 + (r // WP) * HALF + wl % HALF
            bw = tl.load(b_ptr + brow[None, :] * N + offs_n[:, None], mask=mask_n[:, None], other=0)
            bh = bw >> (wl // HALF)[None, :]  # high bit of a-field m at bit 2m of its half
            even = (words & 0x33333333) | ((bh << 2) & 0x44444444)  # a-fields 2k at bit 4k
            odd = ((words >> 2) & 0x33333333) | (bh & 0x44444444)  # a-fields 2k + 1 at bit 4k
            w = _join2(
                _join4(
                    _tile(even, s2, o2, 0, 3, BLOCK_OUT, R, ASM),
                    _tile(odd, s2, o2, 0, 3, BLOCK_OUT, R, ASM),
                    _tile(even, s2, o2, 4, 3, BLOCK_OUT, R, ASM),
                    _tile(odd, s2, o2, 4, 3, BLOCK_OUT, R, ASM),
                ),
                _join4(
                    _tile(even >> 8, s2, o2, 0, 3, BLOCK_OUT, R, ASM),
                    _tile(odd >> 8, s2, o2, 0, 3, BLOCK_OUT, R, ASM),
                    _tile(even >> 8, s2, o2, 4, 3, BLOCK_OUT, R, ASM),
                    _tile(odd >> 8, s2, o2, 4, 3, BLOCK_OUT, R, ASM),
                ),
            )  # (BLOCK_OUT, KSTEP): fields m = 0..7, column 8c + 2 (m % 4) + m // 4
            L: tl.constexpr = 3
        elif BITS == 2:
            high = words >> 10  # fields 5..7 at bits 0, 2, 4
            w = _join2(
                _join4(
                    _tile(words, s2, o2, 0, 2, BLOCK_OUT, R, ASM),
                    _tile(words, s2, o2, 2, 2, BLOCK_OUT, R, ASM),
                    _tile(words, s2, o2, 4, 2, BLOCK_OUT, R, ASM),
                    _tile(words, s2, o2, 6, 2, BLOCK_OUT, R, ASM),
                ),
                _join4(
                    _tile(words, s2, o2, 8, 2, BLOCK_OUT, R, ASM),
                    _tile(high, s2, o2, 0, 2, BLOCK_OUT, R, ASM),
                    _tile(high, s2, o2, 2, 2, BLOCK_OUT, R, ASM),
                    _tile(high, s2, o2, 4, 2, BLOCK_OUT, R, ASM),
                ),
            )
            L: tl.constexpr = 3
        elif BITS == 4:
            high = words >> 8  # fields 2, 3 at bits 0, 4
            w = _join4(
                _tile(words, s2, o2, 0, 4, BLOCK_OUT, R, ASM),
                _tile(words, s2, o2, 4, 4, BLOCK_OUT, R, ASM),
                _tile(high, s2, o2, 0, 4, BLOCK_OUT, R, ASM),
                _tile(high, s2, o2, 4, 4, BLOCK_OUT, R, ASM),
            )
            L: tl.constexpr = 2
        else:
            w = _join2(
                _tile(words, s2, o2, 0, 8, BLOCK_OUT, R, ASM),
                _tile(words >> 8, s2, o2, 0, 8, BLOCK_OUT, R, ASM),
            )
            L: tl.constexpr = 1
        xt = _x_tile(x_ptr, offs_m, mask_m, stride_xm, k0, L, WP, CHUNK, KSTEP)  # (KSTEP, BLOCK_M)
        acc = tl.dot(w, xt, acc)  # one (BLOCK_OUT, KSTEP) x (KSTEP, BLOCK_M) dot per step
    y_ptrs = y_ptr + offs_m[None, :] * stride_ym + offs_n[:, None]  # (BLOCK_OUT, BLOCK_M)
    mask = mask_n[:, None] & mask_m[None, :]
    if SPLIT_K == 1:
        tl.store(y_ptrs, acc.to(y_ptr.dtype.element_ty), mask=mask)
    else:
        tl.atomic_add(y_ptrs, acc.to(y_ptr.dtype.element_ty), mask=mask, sem="relaxed")


def step_chunks(layout: KernelLayout, block_k: int) -> int:
    """Chunks per K step: the most (a power of two) that fit ``block_k`` and divide the input dimension
    (at least one chunk, >= 32 inputs, so tl.dot's K >= 16 always holds)."""
    chunks = layout.shape[1] // layout.chunk
    nch = 1 << max(0, (block_k // layout.chunk).bit_length() - 1)
    while chunks % nch:
        nch //= 2
    return nch


def shared_bytes(layout: KernelLayout, block_out: int, nch: int, stages: int) -> int:
    """Estimated shared memory of a launch: pipelined word and x tiles plus the float16 weight tile."""
    kstep = nch * layout.chunk
    per_stage = block_out * kstep * layout.bits // 8 + kstep * 16 * 2
    return stages * per_stage + block_out * kstep * 2


def auto_split_k(programs: int, steps: int, device: torch.device) -> int:
    """K slices giving about two programs per SM (at most one slice per K step)."""
    sms = torch.cuda.get_device_properties(device).multi_processor_count if device.type == "cuda" else 8
    return max(1, min(steps, -(-2 * sms // programs)))


def swapab_supports(x: torch.Tensor, layout: KernelLayout) -> bool:
    """Whether the swap-AB kernel runs this call (else ``swapab`` takes ``gemm``)."""
    return x.dtype == torch.float16 and layout.a.shape[0] == 1 and layout.bits in SWAPAB_BITS


def swapab(
    x: torch.Tensor, layout: KernelLayout, config: SwapABConfig, out: torch.Tensor | None = None
) -> torch.Tensor:
    """``x (M, in) -> (M, out)`` in x's dtype; formats it does not handle run ``gemm`` (default tiles).

    ``out`` (contiguous ``(M, out)`` in x's dtype) receives the result when given.
    """
    if not swapab_supports(x, layout):
        return gemm(x, layout, GemmConfig(split_k=max(1, config.split_k)), out=out)
    out_features, in_features = layout.shape
    x = x.contiguous()
    rows = x.shape[0]
    nch = step_chunks(layout, config.block_k)
    stages = config.num_stages
    while stages > 1 and shared_bytes(layout, config.block_out, nch, stages) > SHARED_LIMIT:
        stages -= 1
    while nch > 1 and shared_bytes(layout, config.block_out, nch, stages) > SHARED_LIMIT:
        nch //= 2
    steps = in_features // (nch * layout.chunk)
    tiles = triton.cdiv(out_features, config.block_out)
    split_k = config.split_k or auto_split_k(tiles, steps, x.device)
    split_k = max(1, min(split_k, steps))
    y = torch.empty(rows, out_features, dtype=x.dtype, device=x.device) if out is None else out
    if split_k > 1:  # float16 atomics add into zeros
        y.zero_()
    b = layout.b if layout.b is not None else layout.a
    mins = layout.mins if layout.mins is not None else layout.scales
    block_m = 16
    grid = (tiles, split_k, triton.cdiv(rows, block_m))
    _swapab_kernel[grid](
        x,
        layout.a,
        b,
        layout.scales,
        mins,
        y,
        rows,
        out_features,
        in_features,
        x.stride(0),
        y.stride(0),
        layout.qoff,
        BITS=layout.bits,
        GROUP=layout.group_size,
        HAS_MIN=layout.mins is not None,
        CHUNK=layout.chunk,
        NCH=nch,
        BLOCK_OUT=config.block_out,
        BLOCK_M=block_m,
        SPLIT_K=split_k,
        ASM=os.environ.get("TRITON_INTERPRET") != "1",
        num_warps=config.num_warps,
        num_stages=stages,
    )
    return y
