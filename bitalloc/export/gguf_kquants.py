"""Our own encoders for GGUF types the ``gguf`` package can only read (k-quants and IQ4_NL).

Each encoder turns ``(n_blocks, block)`` float32 values into ``(n_blocks, type_size)`` uint8 blocks in
ggml's byte layout; ``gguf.quants.dequantize`` is the oracle the tests check them against. The grids are
plain round-to-nearest ones (per sub-block min/max, sub-block scales quantized against one float16
super-block scale), simpler than llama.cpp's searched scales: presets and bitalloc's allocations are
both encoded with them, so comparisons between allocations stay fair.
"""

from __future__ import annotations

import numpy as np

QK_K = 256
IQ4_NL_VALUES = np.array(
    [-127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113], np.float32
)


def _f16(x: np.ndarray) -> np.ndarray:
    """float32 -> float16 bytes, (n,) -> (n, 2) uint8."""
    return x.astype(np.float16).reshape(-1, 1).view(np.uint8)


def _f16_round(x: np.ndarray) -> np.ndarray:
    return x.astype(np.float16).astype(np.float32)


def _safe_div(x: np.ndarray, d: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(d == 0, 0.0, x / np.where(d == 0, 1.0, d)).astype(np.float32)


def _signed_extreme(x: np.ndarray) -> np.ndarray:
    """The value of largest magnitude along the last axis, sign kept: (...,)."""
    idx = np.abs(x).argmax(axis=-1)[..., None]
    return np.take_along_axis(x, idx, axis=-1)[..., 0]


def _asym_subblocks(x: np.ndarray, maxq: int, scale_max: int) -> tuple[np.ndarray, ...]:
    """Asymmetric k-quant grid: x (n, sub, len) -> d, dmin (n,), sc, m (n, sub) ints, codes (n, sub, len)."""
    lo = np.minimum(x.min(axis=-1), 0.0)  # (n, sub): stored as -dmin * m with m >= 0
    hi = x.max(axis=-1)
    scale = (hi - lo) / maxq  # (n, sub)
    d = _f16_round(scale.max(axis=-1) / scale_max)  # (n,)
    dmin = _f16_round((-lo).max(axis=-1) / scale_max)
    sc = np.clip(np.rint(_safe_div(scale, d[:, None])), 0, scale_max)
    m = np.clip(np.rint(_safe_div(-lo, dmin[:, None])), 0, scale_max)
    eff_scale = (d[:, None] * sc)[..., None]  # (n, sub, 1)
    eff_min = (dmin[:, None] * m)[..., None]
    q = np.clip(np.rint(_safe_div(x + eff_min, eff_scale)), 0, maxq)
    return d, dmin, sc.astype(np.uint8), m.astype(np.uint8), q.astype(np.uint8)


def _sym_subblocks(x: np.ndarray, half: int, scale_lo: int, scale_hi: int) -> tuple[np.ndarray, ...]:
    """Symmetric k-quant grid: x (n, sub, len) -> d (n,), sc (n, sub) signed, codes q + half (n, sub, len)."""
    sub_scale = -_signed_extreme(x) / half  # (n, sub): the extreme lands on -half
    d = _f16_round(np.abs(sub_scale).max(axis=-1) / scale_hi)  # (n,)
    sc = np.clip(np.rint(_safe_div(sub_scale, d[:, None])), scale_lo, scale_hi)
    eff = (d[:, None] * sc)[..., None]  # (n, sub, 1)
    q = np.clip(np.rint(_safe_div(x, eff)), -half, half - 1) + half
    return d, sc.astype(np.int16), q.astype(np.uint8)


def _pack_k_scales(sc: np.ndarray, m: np.ndarray) -> np.ndarray:
    """Eight 6-bit scales and mins (n, 8) into ggml's 12-byte Q4_K/Q5_K scale block (n, 12)."""
    out = np.zeros((sc.shape[0], 12), np.uint8)
    out[:, 0:4] = (sc[:, :4] & 63) | ((sc[:, 4:] >> 4) << 6)
    out[:, 4:8] = (m[:, :4] & 63) | ((m[:, 4:] >> 4) << 6)
    out[:, 8:12] = (sc[:, 4:] & 15) | ((m[:, 4:] & 15) << 4)
    return out


def _pack_2bit_planes(u: np.ndarray) -> np.ndarray:
    """2-bit values (n, 256) into (n, 64): position h*128 + s*32 + k sits in byte h*32 + k, bits 2s."""
    u = u.reshape(-1, 2, 4, 32)  # (n, h, s, k)
    return (u[:, :, 0] | (u[:, :, 1] << 2) | (u[:, :, 2] << 4) | (u[:, :, 3] << 6)).reshape(-1, 64)


def _pack_nibbles(u: np.ndarray, chunk: int) -> np.ndarray:
    """4-bit values (n, L): in each pair of ``chunk``-long runs, the first run is the low nibble."""
    u = u.reshape(u.shape[0], -1, 2, chunk)  # (n, pairs, 2, chunk)
    return (u[:, :, 0] | (u[:, :, 1] << 4)).reshape(u.shape[0], -1)


def _pack_bit_planes(bits: np.ndarray) -> np.ndarray:
    """1-bit values (n, 8*32) into (n, 32): position b*32 + k sits in byte k, bit b."""
    bits = bits.reshape(-1, 8, 32)
    return sum((bits[:, b] << b) for b in range(8)).astype(np.uint8)


def encode_q2_k(x: np.ndarray) -> np.ndarray:
    """(n, 256) -> (n, 84): scales|mins nibbles, 2-bit codes, d, dmin."""
    d, dmin, sc, m, q = _asym_subblocks(x.reshape(-1, 16, 16), 3, 15)
    return np.concatenate([sc | (m << 4), _pack_2bit_planes(q.reshape(-1, QK_K)), _f16(d), _f16(dmin)], 1)


def encode_q3_k(x: np.ndarray) -> np.ndarray:
    """(n, 256) -> (n, 110): high-bit mask, low 2 bits, 6-bit signed scales, d."""
    d, sc, u = _sym_subblocks(x.reshape(-1, 16, 16), 4, -32, 31)
    u = u.reshape(-1, QK_K)
    sc_u = (sc + 32).astype(np.uint8)  # (n, 16)
    low, high = sc_u & 15, sc_u >> 4
    scales = np.concatenate(
        [low[:, :8] | (low[:, 8:] << 4), sum(high[:, 4 * s : 4 * s + 4] << (2 * s) for s in range(4))], 1
    ).astype(np.uint8)
    return np.concatenate([_pack_bit_planes(u >> 2), _pack_2bit_planes(u & 3), scales, _f16(d)], 1)


def encode_q4_k(x: np.ndarray) -> np.ndarray:
    """(n, 256) -> (n, 144): d, dmin, 12 bytes of 6-bit scales and mins, 4-bit codes."""
    d, dmin, sc, m, q = _asym_subblocks(x.reshape(-1, 8, 32), 15, 63)
    return np.concatenate([_f16(d), _f16(dmin), _pack_k_scales(sc, m), _pack_nibbles(q, 32)], 1)


def encode_q5_k(x: np.ndarray) -> np.ndarray:
    """(n, 256) -> (n, 176): d, dmin, scales, high bits, low nibbles."""
    d, dmin, sc, m, q = _asym_subblocks(x.reshape(-1, 8, 32), 31, 63)
    q = q.reshape(-1, QK_K)
    parts = [_f16(d), _f16(dmin), _pack_k_scales(sc, m), _pack_bit_planes(q >> 4), _pack_nibbles(q & 15, 32)]
    return np.concatenate(parts, 1)


def encode_q6_k(x: np.ndarray) -> np.ndarray:
    """(n, 256) -> (n, 210): low nibbles, high 2 bits, int8 scales, d."""
    d, sc, u = _sym_subblocks(x.reshape(-1, 16, 16), 32, -128, 127)
    u = u.reshape(-1, QK_K)
    ql = _pack_nibbles(u & 15, 64)  # (n, 128): position h*128 + nib*64 + k in byte h*64 + k
    qh = _pack_2bit_planes(u >> 4)  # (n, 64)
    return np.concatenate([ql, qh, sc.astype(np.int8).view(np.uint8), _f16(d)], 1)


def encode_iq4_nl(x: np.ndarray) -> np.ndarray:
    """(n, 32) -> (n, 18): d, then 16 bytes of indices into the non-linear table (j low, j + 16 high)."""
    d = _f16_round(_signed_extreme(x) / IQ4_NL_VALUES[0])  # (n,) the extreme lands on -127
    scaled = _safe_div(x, d[:, None])  # (n, 32)
    idx = np.abs(scaled[..., None] - IQ4_NL_VALUES).argmin(axis=-1).astype(np.uint8)  # (n, 32)
    return np.concatenate([_f16(d), _pack_nibbles(idx, 16)], 1)


ENCODERS = {
    "Q2_K": encode_q2_k,
    "Q3_K": encode_q3_k,
    "Q4_K": encode_q4_k,
    "Q5_K": encode_q5_k,
    "Q6_K": encode_q6_k,
    "IQ4_NL": encode_iq4_nl,
}
