"""Tensor-core GEMM for batch 1-16 on the fragment layout (Gluon): ``y^T (out, M) = W (out, in) x^T``.

Each lane loads its own words (``fragment_layout.py``): one 16-byte vector per 16 outputs and atom. A word's
field pairs become the float16x2 registers of the mma's left operand by one LOP3 and one f16x2 FMA each
(inline PTX, ``codes_asm``; 3-bit codes first merge each low word with its high bits, ``codes3_asm``),
already in the operand layout: the unpacked ``(BLOCK_OUT, GROUP)`` tile reaches
``mma_v2`` (``mma.sync.m16n8k16``, float32 accumulators) through reshapes and a permute that move no data
(``convert_layout(..., assert_trivial=True)`` proves it at compile time). One K step is one scale group:
``acc += scale * (q W-tile @ x^T)`` per output row, plus ``min * sum(x of the group)`` for asymmetric codes
(the sums: one small torch reduction before the launch; an mma with a tile of ones doubled the tensor-core
work, which bounds batch 9-16). Symmetric codes fold ``qoff`` into the FMA.
The next step's words are loaded before this step's arithmetic; SPLIT_K > 1 adds partial results atomically
into a zeroed output.

Gluon kernels need a CUDA GPU to run (no interpreter). On the CPU the tests run ``codes_asm``'s PTX on a
float16 emulator against the PTX ISA's fragment maps, and compile the kernel for sm_90 (``compile_offline``);
the GPU tests check it against the torch reference.
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

from bitalloc.kernels._half2 import _f16x2
from bitalloc.kernels.fragment_layout import TILE, FragmentLayout, atom_k, vec_words, word_bits

MMA_MAX_BATCH = 16
_cta_barrier = getattr(gl, "thread_barrier", None) or gl.barrier  # triton 3.6 / later


@dataclass(frozen=True)
class MmaConfig:
    """Launch parameters: 16-row tiles per warp, warps, split-K (0: from the shape and the SM count)."""

    tiles_per_warp: int = 4
    num_warps: int = 4
    split_k: int = 0
    wgmma: bool = False  # Hopper warpgroup mma for 9-16 rows (needs 4 or 8 warps)


def _field_lines(src: str, s: int, width: int, qoff: float, out: str) -> list[str]:
    """PTX: the ``width``-bit field at bit ``s`` of both halves of ``src`` as float16x2 ``code + qoff``."""
    mask = ((1 << width) - 1) << s
    return [
        f"lop3.b32 v, {src}, 0x{mask:04X}{mask:04X}, 0x64006400, 0xEA;",
        f"mov.b32 c1, {_f16x2(2.0**-s)};",
        f"mov.b32 c2, {_f16x2(-1024.0 * 2.0**-s + qoff)};",
        f"fma.rn.f16x2 {out}, v, c1, c2;",
    ]


def codes3_asm(qoff: float) -> str:
    """PTX: the 16 float16 ``code + qoff`` of a 3-bit low word (input ``$8``, it arrives 16 times) and its
    high bits at bit ``2 f`` of each half (``$24``, 16 times), as 8 float16x2 outputs in operand order
    (``fragment_layout.ORDER3``): merged into even and odd fields at a 4-bit stride, then decoded as 4-bit."""
    lines = ["{", ".reg .b32 t, ev, od, evh, odh, v, c1, c2;"]
    lines += [
        "shl.b32 t, $24, 2;",
        "lop3.b32 ev, $8, t, 0x33333333, 0xE4;",  # low bits of even fields, their high bit above
        "shr.u32 t, $8, 2;",
        "lop3.b32 od, t, $24, 0x33333333, 0xE4;",  # odd fields moved down, their high bit in place
        "shr.u32 evh, ev, 8;",
        "shr.u32 odh, od, 8;",
    ]
    for p in range(8):
        word = "ev" if p < 4 else "od"
        nibble = p % 4
        lines += _field_lines(word if nibble < 2 else f"{word}h", 4 * (nibble % 2), 3, qoff, f"${p}")
    lines.append("}")
    return "\n".join(lines)


def codes_asm(bits: int, qoff: float) -> str:
    """PTX: the ``E = 32 / bits`` float16 ``code + qoff`` of one word (input ``$E/2``; it arrives E times),
    as E/2 float16x2 outputs ``$0..``: pair ``p`` = field ``p`` of the low and the high half (3-bit:
    ``codes3_asm``)."""
    if bits == 3:
        return codes3_asm(qoff)
    per_word = 32 // bits
    pairs = per_word // 2
    lines = ["{", ".reg .b32 hw, v, c1, c2;"]
    word = f"${pairs}"
    if bits * (pairs - 1) >= 8:
        lines.append(f"shr.u32 hw, {word}, 8;")
    for p in range(pairs):
        pos = bits * p
        src, s = (word, pos) if pos < 8 else ("hw", pos - 8)
        lines += _field_lines(src, s, bits, qoff, f"${p}")
    lines.append("}")
    return "\n".join(lines)


def _bits_of(n: int) -> list[int]:
    return [1 << i for i in range(int(math.log2(n)))]


def _basis(rank: int, dim: int, value: int) -> list[int]:
    b = [0] * rank
    b[dim] = value
    return b


def _lane_bases(rank: int, t_dim: int, g_dim: int) -> list[list[int]]:
    """Lane ``4 g + t`` of the mma fragments: lane bits 0-1 walk ``t``, bits 2-4 walk ``g``."""
    return [_basis(rank, t_dim, 1), _basis(rank, t_dim, 2)] + [_basis(rank, g_dim, b) for b in (1, 2, 4)]


def unpack_layout(num_warps: int, tiles_per_warp: int, atoms: int, vec: int, per_word: int) -> gl.constexpr:
    """Layout of the unpacked words ``(tm, g, ka, t, v, j)``: j, v, ka, then the warp's tile repeats in
    registers; t and g in lanes; tiles in warps (the mma operand's order, see ``fragment_layout.py``)."""
    rank = 6
    tm = num_warps * tiles_per_warp
    reg = [_basis(rank, 5, b) for b in _bits_of(per_word)]
    reg += [_basis(rank, 4, b) for b in _bits_of(vec)]
    reg += [_basis(rank, 2, b) for b in _bits_of(atoms)]
    reg += [_basis(rank, 0, num_warps * b) for b in _bits_of(tiles_per_warp)]
    warp = [_basis(rank, 0, b) for b in _bits_of(num_warps)]
    shape = [tm, 8, atoms, 4, vec, per_word]
    return gl.constexpr(gl.DistributedLinearLayout(reg, _lane_bases(rank, 3, 1), warp, [], shape))


def words_layout(num_warps: int, tiles_per_warp: int, atoms: int, vec: int) -> gl.constexpr:
    """Layout of the loaded words ``(tm, g, ka, t, v)``: ``unpack_layout`` without the element dimension."""
    full = unpack_layout(num_warps, tiles_per_warp, atoms, vec, 2).value
    reg = [b[:5] for b in full.reg_bases[1:]]
    lane = [b[:5] for b in full.lane_bases]
    warp = [b[:5] for b in full.warp_bases]
    return gl.constexpr(gl.DistributedLinearLayout(reg, lane, warp, [], full.shape[:5]))


def x_layout(num_warps: int, group: int, bn: int) -> gl.constexpr:
    """Layout of the activations ``(n, t, c)`` of one group: lane ``(g, t)`` holds the run ``c`` of
    ``4 * G / 16`` inputs of row ``n = g`` (and ``g + 8``); every warp holds all of them."""
    rank = 3
    reg = [_basis(rank, 2, b) for b in _bits_of(4 * group // 16)]
    reg += [_basis(rank, 0, 8)] if bn == 16 else []
    warp = [[0] * rank for _ in _bits_of(num_warps)]
    shape = [bn, 4, 4 * group // 16]
    return gl.constexpr(gl.DistributedLinearLayout(reg, _lane_bases(rank, 1, 0), warp, [], shape))


@gluon.jit
def _load_x(
    x_ptr,
    x_stride,
    M,
    k0,
    GROUP: gl.constexpr,
    BN: gl.constexpr,
    LX: gl.constexpr,
    B_LAYOUT: gl.constexpr,
    WGMMA: gl.constexpr,
):
    """The group's activations as the mma's right operand ``(G, BN)`` float16 (rows >= M are zeros); for
    wgmma in the layout it was loaded in (it goes to shared memory)."""
    KT: gl.constexpr = GROUP // 16
    n = gl.arange(0, BN, layout=gl.SliceLayout(1, gl.SliceLayout(2, LX)))
    t = gl.arange(0, 4, layout=gl.SliceLayout(0, gl.SliceLayout(2, LX)))
    c = gl.arange(0, 4 * KT, layout=gl.SliceLayout(0, gl.SliceLayout(1, LX)))
    n3 = gl.expand_dims(gl.expand_dims(n, 1), 2)
    off = (
        n3 * x_stride
        + gl.expand_dims(gl.expand_dims(t * (4 * KT), 0), 2)
        + gl.expand_dims(gl.expand_dims(c, 0), 1)
    )
    xt = gl.load(x_ptr + k0 + off, mask=n3 < M, other=0.0)  # (BN, 4, 4 KT): input 4 KT t + c of row n
    xt = xt.reshape([BN, 4, KT, 2, 2])  # (n, t, kt, b2, b0)
    xt = xt.permute([2, 3, 1, 4, 0]).reshape([GROUP, BN])  # k = 16 kt + 8 b2 + 2 t + b0
    if not WGMMA:
        xt = gl.convert_layout(xt, B_LAYOUT, assert_trivial=True)
    return xt


@gluon.jit
def _load_words(
    w_ptr, tile0, kstep, n_atoms_k, ATOMS: gl.constexpr, VEC: gl.constexpr, TM: gl.constexpr, LW: gl.constexpr
):
    """The step's words ``(TM, 8, ATOMS, 4, VEC)`` int32 (16-byte vectors along v)."""
    L_tm: gl.constexpr = gl.SliceLayout(1, gl.SliceLayout(2, gl.SliceLayout(3, gl.SliceLayout(4, LW))))
    L_g: gl.constexpr = gl.SliceLayout(0, gl.SliceLayout(2, gl.SliceLayout(3, gl.SliceLayout(4, LW))))
    L_ka: gl.constexpr = gl.SliceLayout(0, gl.SliceLayout(1, gl.SliceLayout(3, gl.SliceLayout(4, LW))))
    L_t: gl.constexpr = gl.SliceLayout(0, gl.SliceLayout(1, gl.SliceLayout(2, gl.SliceLayout(4, LW))))
    L_v: gl.constexpr = gl.SliceLayout(0, gl.SliceLayout(1, gl.SliceLayout(2, gl.SliceLayout(3, LW))))
    tm = gl.arange(0, TM, layout=L_tm)
    g = gl.arange(0, 8, layout=L_g)
    ka = gl.arange(0, ATOMS, layout=L_ka)
    t = gl.arange(0, 4, layout=L_t)
    v = gl.arange(0, VEC, layout=L_v)
    atom = ((tile0 + tm) * n_atoms_k + kstep * ATOMS).to(gl.int64)  # (TM,) first atom of the step
    off_tm = gl.expand_dims(gl.expand_dims(gl.expand_dims(gl.expand_dims(atom * (32 * VEC), 1), 2), 3), 4)
    off_g = gl.expand_dims(gl.expand_dims(gl.expand_dims(gl.expand_dims(g * (4 * VEC), 0), 2), 3), 4)
    off_ka = gl.expand_dims(gl.expand_dims(gl.expand_dims(gl.expand_dims(ka * (32 * VEC), 0), 1), 3), 4)
    off_t = gl.expand_dims(gl.expand_dims(gl.expand_dims(gl.expand_dims(t * VEC, 0), 1), 2), 4)
    off_v = gl.expand_dims(gl.expand_dims(gl.expand_dims(gl.expand_dims(v, 0), 1), 2), 3)
    return gl.load(w_ptr + (off_tm + off_g + off_ka + off_t + off_v))


@gluon.jit
def _unpack(
    words,
    high,
    ASM: gl.constexpr,
    BITS: gl.constexpr,
    E: gl.constexpr,
    TM: gl.constexpr,
    ATOMS: gl.constexpr,
    VEC: gl.constexpr,
    L6: gl.constexpr,
    A_LAYOUT: gl.constexpr,
):
    """Words ``(TM, 8, ATOMS, 4, VEC)`` (3-bit: and their high words ``(TM, 8, ATOMS, 4, VEC / 2)``) -> the
    float16 operand ``(TM * 16, ATOMS * ATOM_K)`` in A_LAYOUT; ``E`` elements per word (``word_bits``)."""
    TA: gl.constexpr = VEC * E // 8  # k-tiles per atom
    words = gl.convert_layout(words, gl.SliceLayout(5, L6))
    zeros = gl.full([TM, 8, ATOMS, 4, VEC, E], 0, gl.int32, L6)
    wb = gl.broadcast(gl.expand_dims(words, 5), zeros)[0]
    if E == 4:
        cons: gl.constexpr = "=r,=r,r,r,r,r"
    elif E == 8:
        cons: gl.constexpr = "=r,=r,=r,=r,r,r,r,r,r,r,r,r"
    else:
        cons: gl.constexpr = "=r,=r,=r,=r,=r,=r,=r,=r" + ",r" * 16 * (2 if BITS == 3 else 1)
    if BITS == 3:  # low word 2 u + w takes high word u shifted down by w
        bh = gl.join(high, high >> 1).reshape([TM, 8, ATOMS, 4, VEC])
        bh = gl.convert_layout(bh, gl.SliceLayout(5, L6))
        hb = gl.broadcast(gl.expand_dims(bh, 5), zeros)[0]
        vals = gl.inline_asm_elementwise(ASM, cons, [wb, hb], dtype=gl.float16, is_pure=True, pack=E)
    else:
        vals = gl.inline_asm_elementwise(ASM, cons, [wb], dtype=gl.float16, is_pure=True, pack=E)
    vals = vals.reshape([TM, 8, ATOMS, 4, TA, 2, 2, 2])  # (tm, g, ka, t, ta, b2, b1, b0)
    vals = vals.permute([0, 6, 1, 2, 4, 5, 3, 7])  # (tm, b1, g, ka, ta, b2, t, b0)
    vals = vals.reshape([TM * 16, ATOMS * TA * 16])
    return gl.convert_layout(vals, A_LAYOUT, assert_trivial=True)


@gluon.jit
def _mma_kernel(
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
    WGMMA: gl.constexpr,
    L6: gl.constexpr,
    LW: gl.constexpr,
    LX: gl.constexpr,
    LH: gl.constexpr,
):
    W: gl.constexpr = gl.num_warps()
    TM: gl.constexpr = W * TILES_PER_WARP
    BM: gl.constexpr = TM * 16
    ATOMS: gl.constexpr = GROUP // ATOM
    if WGMMA:  # Hopper: A from registers (the same fragments), x^T from shared memory
        MMA: gl.constexpr = gl.NVMMADistributedLayout(
            version=[3, 0], warps_per_cta=[W, 1], instr_shape=[16, BN, 16]
        )
    else:
        MMA: gl.constexpr = gl.NVMMADistributedLayout(
            version=[2, 0], warps_per_cta=[W, 1], instr_shape=[16, 8]
        )
    A_L: gl.constexpr = gl.DotOperandLayout(operand_index=0, parent=MMA, k_width=2)
    if WGMMA:
        B_L: gl.constexpr = A_L  # unused: x^T goes through shared memory
    else:
        B_L: gl.constexpr = gl.DotOperandLayout(operand_index=1, parent=MMA, k_width=2)
    pid_m = gl.program_id(0)
    pid_k = gl.program_id(1)
    n_steps = K // GROUP
    s_begin = pid_k * n_steps // SPLIT_K
    s_end = (pid_k + 1) * n_steps // SPLIT_K
    n_atoms_k = K // ATOM
    tile0 = pid_m * TM

    rows = pid_m * BM + gl.arange(0, BM, layout=gl.SliceLayout(1, MMA))  # (BM,) outputs
    acc = gl.zeros([BM, BN], gl.float32, MMA)
    zero = gl.zeros([BM, BN], gl.float32, MMA)
    cols = gl.arange(0, BN, layout=gl.SliceLayout(0, MMA))

    if WGMMA:
        X_SMEM: gl.constexpr = gl.NVMMASharedLayout(swizzle_byte_width=2 * BN, element_bitwidth=16, rank=2)
        x_smem = gl.allocate_shared_memory(gl.float16, [2, GROUP, BN], X_SMEM)
    words = _load_words(w_ptr, tile0, s_begin, n_atoms_k, ATOMS, VEC, TM, LW)
    high = words  # 3-bit: the high words, half as many
    if BITS == 3:
        high = _load_words(h_ptr, tile0, s_begin, n_atoms_k, ATOMS, VEC // 2, TM, LH)
    xb = _load_x(x_ptr, x_stride, M, s_begin * GROUP, GROUP, BN, LX, B_L, WGMMA)
    scale = gl.load(s_ptr + s_begin * N + rows)
    mins = gl.load(m_ptr + s_begin * N + rows)
    for step in range(s_begin, s_end):  # loads of step + 1 are in flight during step's arithmetic
        nxt = gl.minimum(step + 1, s_end - 1)  # the last step re-reads itself (cache hit)
        next_words = _load_words(w_ptr, tile0, nxt, n_atoms_k, ATOMS, VEC, TM, LW)
        next_high = next_words
        if BITS == 3:
            next_high = _load_words(h_ptr, tile0, nxt, n_atoms_k, ATOMS, VEC // 2, TM, LH)
        next_xb = _load_x(x_ptr, x_stride, M, nxt * GROUP, GROUP, BN, LX, B_L, WGMMA)
        next_scale = gl.load(s_ptr + nxt * N + rows)
        a = _unpack(words, high, ASM, BITS, PER_WORD, TM, ATOMS, VEC, L6, A_L)
        if WGMMA:  # two x buffers: a warp may store step + 1 while another still multiplies step
            xbuf = x_smem.index(step % 2)
            xbuf.store(xb)
            gl.nvidia.hopper.fence_async_shared()
            _cta_barrier()
            part = gl.nvidia.hopper.warpgroup_mma(a, xbuf, zero, use_acc=False)
        else:
            part = gl.nvidia.ampere.mma_v2(a, xb, zero)
        acc += gl.expand_dims(scale.to(gl.float32), 1) * part
        if HAS_MIN:  # + min * (the group's activation sum, from the host)
            next_mins = gl.load(m_ptr + nxt * N + rows)
            xs = gl.load(xs_ptr + cols * xs_stride + step, mask=cols < M, other=0.0)
            acc += gl.expand_dims(mins.to(gl.float32), 1) * gl.expand_dims(xs, 0)
            mins = next_mins
        words = next_words
        high = next_high
        xb = next_xb
        scale = next_scale

    # outputs contiguous per thread: 16-byte stores, or vector float16 atomics (no CAS loops) under split-K
    OUT_L: gl.constexpr = gl.BlockedLayout(
        [8, 1], [BM // 8 if BM < 256 else 32, 32 // (BM // 8) if BM < 256 else 1], [1, W], [0, 1]
    )
    out = gl.convert_layout(acc.to(gl.float16), OUT_L)
    rows_o = pid_m * BM + gl.arange(0, BM, layout=gl.SliceLayout(1, OUT_L))
    cols_o = gl.arange(0, BN, layout=gl.SliceLayout(0, OUT_L))
    y_off = gl.expand_dims(cols_o, 0) * y_stride + gl.expand_dims(rows_o, 1)
    y_mask = gl.expand_dims(cols_o < M, 0)
    if SPLIT_K == 1:
        gl.store(y_ptr + y_off, out, mask=y_mask)
    else:
        gl.atomic_add(y_ptr + y_off, out, mask=y_mask, sem="relaxed")


def auto_split_k(row_programs: int, steps: int, device: torch.device) -> int:
    """Enough K slices for about three programs per SM, at least two steps each."""
    sms = torch.cuda.get_device_properties(device).multi_processor_count
    return max(1, min(steps // 2, (3 * sms + row_programs - 1) // row_programs))


@functools.cache
def kernel_constants(
    bits: int, group_size: int, qoff: float, has_min: bool, tiles_per_warp: int, num_warps: int, bn: int
) -> Mapping[str, object]:
    """The kernel's compile-time arguments for one format and launch shape (all but SPLIT_K and WGMMA);
    cached, so that a call does not rebuild the layouts and the PTX on the host."""
    atom = atom_k(bits, group_size)
    per_word = 32 // word_bits(bits)  # elements per word
    vec = vec_words(bits, group_size)
    atoms = group_size // atom
    return MappingProxyType(
        {
            "ASM": codes_asm(bits, qoff),
            "BITS": bits,
            "PER_WORD": per_word,
            "GROUP": group_size,
            "ATOM": atom,
            "VEC": vec,
            "HAS_MIN": has_min,
            "TILES_PER_WARP": tiles_per_warp,
            "BN": bn,
            "L6": unpack_layout(num_warps, tiles_per_warp, atoms, vec, per_word),
            "LW": words_layout(num_warps, tiles_per_warp, atoms, vec),
            "LX": x_layout(num_warps, group_size, bn),
            "LH": words_layout(num_warps, tiles_per_warp, atoms, max(1, vec // 2)),
        }
    )


def compile_offline(
    bits: int, group_size: int, symmetric: bool, bn: int, config: MmaConfig, capability: int = 90
) -> object:
    """Compile the kernel for an NVIDIA GPU of ``capability`` without one (CPU tests, SASS reading): Triton's
    compiled kernel (``.asm["ttgir" | "ptx" | "cubin"]``, ``.metadata.shared``). Fails when a reshape chain
    from the words to the mma operand would move data (``assert_trivial``)."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.experimental.gluon._runtime import GluonASTSource

    qoff = -float(1 << (bits - 1)) if symmetric else 0.0
    tpw, warps = config.tiles_per_warp, config.num_warps
    consts = dict(kernel_constants(bits, group_size, qoff, not symmetric, tpw, warps, bn))
    consts.update(SPLIT_K=max(1, config.split_k), WGMMA=config.wgmma and bn == 16)
    args = [
        "x_ptr",
        "w_ptr",
        "h_ptr",
        "s_ptr",
        "m_ptr",
        "xs_ptr",
        "y_ptr",
        "M",
        "N",
        "K",
        "x_stride",
        "xs_stride",
        "y_stride",
    ]
    types = ["*fp16", "*i32", "*i32", "*fp16", "*fp16", "*fp32", "*fp16"] + ["i32"] * 6
    signature = dict(zip(args, types, strict=True))
    signature.update({k: "constexpr" for k in consts})
    aligned = {(i,): [["tt.divisibility", 16]] for i, a in enumerate(args) if a not in ("M", "xs_stride")}
    source = GluonASTSource(
        _mma_kernel, signature, {k: getattr(v, "value", v) for k, v in consts.items()}, aligned
    )
    target = GPUTarget("cuda", capability, 32)
    return triton.compile(source, target=target, options={"num_warps": config.num_warps})


def mma_matmul(
    x: torch.Tensor, layout: FragmentLayout, config: MmaConfig, out: torch.Tensor | None = None
) -> torch.Tensor:
    """``x (M, in) float16 -> (M, out) float16`` with ``M <= 16`` on the tensor-core kernel."""
    rows = x.shape[0]
    if x.dtype != torch.float16 or rows > MMA_MAX_BATCH:
        raise ValueError(f"mma_matmul takes float16 activations of at most {MMA_MAX_BATCH} rows")
    out_features, in_features = layout.shape
    x = x.contiguous()
    tiles = out_features // TILE
    tpw = config.tiles_per_warp
    while tpw > 1 and tiles % (config.num_warps * tpw):
        tpw //= 2
    warps = config.num_warps
    while warps > 1 and tiles % (warps * tpw):
        warps //= 2
    row_programs = tiles // (warps * tpw)
    steps = in_features // layout.group_size
    split_k = config.split_k or auto_split_k(row_programs, steps, x.device)
    split_k = max(1, min(split_k, steps))
    y = torch.empty(rows, out_features, dtype=x.dtype, device=x.device) if out is None else out
    if split_k > 1:
        y.zero_()
    bn = 8 if rows <= 8 else 16
    mins = layout.mins if layout.mins is not None else layout.scales
    # asymmetric codes: each group's activation sum, (M, in / group) float32
    xs = x.view(rows, -1, layout.group_size).sum(-1, dtype=torch.float32) if layout.mins is not None else x
    has_min = layout.mins is not None
    consts = kernel_constants(layout.bits, layout.group_size, layout.qoff, has_min, tpw, warps, bn)
    _mma_kernel[(row_programs, split_k)](
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
        WGMMA=config.wgmma and bn == 16 and warps % 4 == 0,
        **consts,
        num_warps=warps,
    )
    return y
