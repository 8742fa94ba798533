"""Causal attention for a block of prompt tokens, writing their keys and values into the decoder's KV cache.

The prompt's queries attend to every cached position before them and causally among themselves, as the
decode kernel would one token at a time: rotary embedding in Llama's rotate-half form (float32, rounded to
float16 as the kernel does), grouped-query heads (query head ``h`` reads KV head ``h // (heads / kv_heads)``),
softmax by ``scaled_dot_product_attention`` on the float16 cache itself (no per-head copies of it).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.nn.attention.bias import causal_lower_right

from bitalloc.errors import InvalidInput


def rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """``x (heads, T, D)`` rotated by ``cos``/``sin (T, D)``: ``x cos + rotate_half(x) sin`` in float32."""
    half = x.shape[-1] // 2
    xf = x.float()
    rotated = torch.cat((-xf[..., half:], xf[..., :half]), dim=-1)
    return xf * cos + rotated * sin


def prefill_attention(
    qkv: torch.Tensor,
    heads: int,
    kv_heads: int,
    cos: torch.Tensor,
    sin: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    start: int,
) -> torch.Tensor:
    """``qkv (T, (heads + 2 kv_heads) D)`` of positions ``start .. start+T-1`` -> attention ``(T, heads D)``.

    Writes the rotated keys and the values into rows ``start .. start+T-1`` of ``k_cache``/``v_cache
    (kv_heads, rows, D)`` (float16, like ``qkv``); ``cos``/``sin (rows, D)`` are the decoder's rope tables.
    """
    tokens = qkv.shape[0]
    kv, rows, d = k_cache.shape
    stop = start + tokens
    if heads % kv_heads or kv != kv_heads or qkv.shape[1] != (heads + 2 * kv_heads) * d:
        raise InvalidInput(
            f"prefill_attention: qkv {tuple(qkv.shape)} and a cache of {kv} heads do not fit {heads} query / "
            f"{kv_heads} KV heads of {d}"
        )
    if start < 0 or stop > min(rows, cos.shape[0]) or qkv.dtype != k_cache.dtype:
        raise InvalidInput(
            f"prefill_attention: positions {start}..{stop - 1} outside the cache's {rows} rows, or qkv "
            f"{qkv.dtype} vs cache {k_cache.dtype}"
        )
    parts = qkv.view(tokens, heads + 2 * kv_heads, d).transpose(0, 1)  # (heads + 2 kv_heads, T, D)
    q, k, v = parts[:heads], parts[heads : heads + kv_heads], parts[heads + kv_heads :]
    c, s = cos[start:stop], sin[start:stop]  # (T, D)
    q = rotate(q, c, s).to(qkv.dtype)
    k_cache[:, start:stop] = rotate(k, c, s).to(k_cache.dtype)
    v_cache[:, start:stop] = v
    out = F.scaled_dot_product_attention(
        q[None],  # (1, heads, T, D)
        k_cache[None, :, :stop],  # (1, kv_heads, stop, D)
        v_cache[None, :, :stop],
        attn_mask=causal_lower_right(tokens, stop),  # token t sees positions <= start + t
        enable_gqa=True,
    )[0]  # (heads, T, D)
    return out.transpose(0, 1).reshape(tokens, heads * d)
