"""Causal attention for a block of prompt tokens, writing their keys and values into the decoder's KV cache.

The prompt's queries attend to every cached position before them and causally among themselves, as the
decode kernel would one token at a time: rotary embedding in Llama's rotate-half form (float32, rounded to
float16 as the kernel does), grouped-query heads, float32 softmax (``scaled_dot_product_attention``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


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
    (kv_heads, rows, D)``; ``cos``/``sin (rows, D)`` are the decoder's rope tables.
    """
    tokens = qkv.shape[0]
    d = k_cache.shape[-1]
    stop = start + tokens
    parts = qkv.view(tokens, heads + 2 * kv_heads, d).transpose(0, 1)  # (heads + 2 kv_heads, T, D)
    q, k, v = parts[:heads], parts[heads : heads + kv_heads], parts[heads + kv_heads :]
    c, s = cos[start:stop], sin[start:stop]  # (T, D)
    q = rotate(q, c, s).to(qkv.dtype)
    k_cache[:, start:stop] = rotate(k, c, s).to(k_cache.dtype)
    v_cache[:, start:stop] = v
    keys = k_cache[:, :stop].float().repeat_interleave(heads // kv_heads, dim=0)  # (heads, stop, D)
    values = v_cache[:, :stop].float().repeat_interleave(heads // kv_heads, dim=0)
    positions = torch.arange(stop, device=qkv.device)
    allowed = positions[None, :] <= (start + torch.arange(tokens, device=qkv.device))[:, None]  # (T, stop)
    out = F.scaled_dot_product_attention(q.float(), keys, values, attn_mask=allowed)  # (heads, T, D)
    return out.transpose(0, 1).reshape(tokens, heads * d).to(qkv.dtype)
