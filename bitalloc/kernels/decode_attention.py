"""Attention for one decoded token, with rotary embedding and the KV-cache write in the same launch.

One program per query head. It rotates its query and its KV head's new key (Llama's rotate-half form, with
cos/sin rows read at the current position), the first program of each KV group writes the new key and value
into the cache, and the softmax over the cached positions ``0 .. pos-1`` plus the new one runs online in
float32 blocks of BLOCK_S positions. The position is read from device memory, so one captured CUDA graph
serves every step. Cached positions only are read (never ``pos`` itself): no program waits on another's write.
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl


@triton.jit
def _rotate(base_ptr, cos, sin, d, rot, sign):
    """Rotary embedding of one head vector: ``v * cos + rotate_half(v) * sin``, in float32."""
    v = tl.load(base_ptr + d).to(tl.float32)
    v_rot = tl.load(base_ptr + rot).to(tl.float32) * sign
    return v * cos + v_rot * sin


@triton.jit
def _decode_attention_kernel(
    qkv_ptr,
    cos_ptr,
    sin_ptr,
    k_cache_ptr,
    v_cache_ptr,
    pos_ptr,
    out_ptr,
    scale,
    MAX_LEN,
    HQ: tl.constexpr,
    HKV: tl.constexpr,
    D: tl.constexpr,
    BLOCK_S: tl.constexpr,
):
    h = tl.program_id(0)
    GROUP: tl.constexpr = HQ // HKV
    kvh = h // GROUP
    d = tl.arange(0, D)  # (D,)
    rot = (d + D // 2) % D
    sign = tl.where(d < D // 2, -1.0, 1.0)
    pos = tl.load(pos_ptr)
    cos = tl.load(cos_ptr + pos * D + d)
    sin = tl.load(sin_ptr + pos * D + d)
    q = _rotate(qkv_ptr + h * D, cos, sin, d, rot, sign).to(tl.float16).to(tl.float32)  # (D,)
    k_new = _rotate(qkv_ptr + (HQ + kvh) * D, cos, sin, d, rot, sign).to(tl.float16)  # (D,)
    v_new = tl.load(qkv_ptr + (HQ + HKV + kvh) * D + d)  # (D,)
    cache = kvh * MAX_LEN * D
    if h % GROUP == 0:
        tl.store(k_cache_ptr + cache + pos * D + d, k_new)
        tl.store(v_cache_ptr + cache + pos * D + d, v_new)
    m = tl.sum(q * k_new.to(tl.float32), axis=0) * scale  # running max, starts at the new token's score
    l_sum = m * 0.0 + 1.0
    acc = v_new.to(tl.float32)  # (D,)
    for start in range(0, pos, BLOCK_S):
        offs = start + tl.arange(0, BLOCK_S)  # (BLOCK_S,)
        valid = offs < pos
        tile = cache + offs[:, None] * D + d[None, :]  # (BLOCK_S, D)
        k = tl.load(k_cache_ptr + tile, mask=valid[:, None], other=0.0).to(tl.float32)
        s = tl.where(valid, tl.sum(k * q[None, :], axis=1) * scale, float("-inf"))  # (BLOCK_S,)
        m_new = tl.maximum(m, tl.max(s, axis=0))
        alpha = tl.exp(m - m_new)
        p = tl.exp(s - m_new)
        v = tl.load(v_cache_ptr + tile, mask=valid[:, None], other=0.0).to(tl.float32)
        l_sum = l_sum * alpha + tl.sum(p, axis=0)
        acc = acc * alpha + tl.sum(p[:, None] * v, axis=0)
        m = m_new
    tl.store(out_ptr + h * D + d, (acc / l_sum).to(out_ptr.dtype.element_ty))


def decode_attention(
    qkv: torch.Tensor,
    cos: torch.Tensor,
    sin: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    pos: torch.Tensor,
    out: torch.Tensor,
    heads: int,
    block_s: int = 64,
) -> torch.Tensor:
    """One token's attention output ``out (heads * D,)``.

    ``qkv ((heads + 2 kv_heads) * D,)`` float16 holds q, k, v of the new token (before rotary embedding);
    ``cos``/``sin (max_len, D)`` float32; ``k_cache``/``v_cache (kv_heads, max_len, D)`` float16 hold the
    rotated keys and the values of positions ``0 .. pos-1``; ``pos (1,)`` int32 on the device is the new
    token's position (the caller keeps it below ``max_len``).
    """
    kv_heads, max_len, head_dim = k_cache.shape
    if heads % kv_heads or head_dim & (head_dim - 1) or qkv.numel() != (heads + 2 * kv_heads) * head_dim:
        raise ValueError(
            f"decode_attention: {heads} query heads, cache {tuple(k_cache.shape)}, "
            f"qkv of {qkv.numel()} elements"
        )
    _decode_attention_kernel[(heads,)](
        qkv,
        cos,
        sin,
        k_cache,
        v_cache,
        pos,
        out,
        1.0 / math.sqrt(head_dim),
        max_len,
        HQ=heads,
        HKV=kv_heads,
        D=head_dim,
        BLOCK_S=block_s,
        num_warps=4,
    )
    return out
