from __future__ import annotations

import math

import pytest
import torch

from bitalloc.kernels.decode_attention import AttentionWorkspace, decode_attention
from tests.kernels.helpers import device


def rope_tables(max_len: int, head_dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    inv = 1.0 / 10000 ** (torch.arange(0, head_dim, 2).float() / head_dim)
    freqs = torch.arange(max_len).float()[:, None] * inv[None]  # (max_len, D/2)
    emb = torch.cat([freqs, freqs], -1)
    return emb.cos(), emb.sin()


def rotate(v: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    half = v.shape[-1] // 2
    return v * cos + torch.cat([-v[..., half:], v[..., :half]], -1) * sin


def reference(qkv, cos, sin, keys, values, pos, heads, kv_heads, head_dim):
    """Attention of the token at ``pos`` over the rotated cached keys 0..pos-1 and itself, in float64."""
    q, k, v = qkv.double().split([heads * head_dim, kv_heads * head_dim, kv_heads * head_dim])
    q = rotate(q.view(heads, head_dim), cos[pos].double(), sin[pos].double())
    k = rotate(k.view(kv_heads, head_dim), cos[pos].double(), sin[pos].double())
    all_k = torch.cat([keys[:, :pos].double(), k[:, None]], 1)  # (kv_heads, pos + 1, D)
    all_v = torch.cat([values[:, :pos].double(), v.view(kv_heads, 1, head_dim)], 1)
    group = heads // kv_heads
    scores = torch.einsum("hd,hsd->hs", q, all_k.repeat_interleave(group, 0)) / math.sqrt(head_dim)
    out = torch.einsum("hs,hsd->hd", scores.softmax(-1), all_v.repeat_interleave(group, 0))
    return out.reshape(-1), k


@pytest.mark.parametrize(
    ("heads", "kv_heads", "head_dim", "pos", "chunk", "block_s", "splits"),
    [
        (4, 2, 16, 13, 64, 4, None),
        (3, 3, 64, 0, 64, 64, None),
        (8, 2, 32, 40, 16, 16, 8),
        (4, 1, 16, 37, 8, 4, 8),
        (2, 2, 16, 8, 8, 8, 8),
        (4, 2, 16, 37, 8, 4, 2),  # 5 chunks on 2 splits per head
        (4, 2, 16, 30, 8, 8, 1),  # one split walks all 4 chunks
        (4, 4, 16, 3, 2, 2, 3),  # 2 chunks on 3 splits: the idle one returns at once
        (4, 2, 16, 34, 8, 4, 8),  # split 4's first block (read first) only partly valid, no loop after it
    ],
)
def test_decode_attention_matches_reference(heads, kv_heads, head_dim, pos, chunk, block_s, splits):
    """One split, several splits along the cache combined by the last one (up to 5; 8 = exactly one
    chunk), and splits walking several chunks."""
    gen = torch.Generator().manual_seed(heads * 100 + pos)
    max_len = pos + 5
    cos, sin = rope_tables(max_len, head_dim)
    qkv = torch.randn((heads + 2 * kv_heads) * head_dim, generator=gen).half()
    keys = torch.randn(kv_heads, max_len, head_dim, generator=gen).half()
    values = torch.randn(kv_heads, max_len, head_dim, generator=gen).half()
    ref, k_rot = reference(qkv, cos, sin, keys, values, pos, heads, kv_heads, head_dim)
    dev = device()
    k_cache, v_cache = keys.to(dev), values.to(dev)
    out = torch.full((heads * head_dim,), float("nan"), dtype=torch.float16, device=dev)  # poisoned
    pos_t = torch.tensor([pos], dtype=torch.int32, device=dev)
    workspace = AttentionWorkspace.create(heads, max_len, head_dim, dev, chunk)
    for _ in range(2):  # the workspace's tickets are back at zero after a call
        out.fill_(float("nan"))
        decode_attention(
            qkv.to(dev),
            cos.to(dev),
            sin.to(dev),
            k_cache,
            v_cache,
            pos_t,
            out,
            heads,
            workspace,
            chunk,
            block_s,
            splits=splits,
        )
        assert torch.isfinite(out).all()
        assert (out.double().cpu() - ref).abs().max() < 2e-3 * ref.abs().max() + 1e-3
        assert not workspace.tickets.any()
    # the new key (rotated) and value land in the cache at pos; every other position is untouched
    assert (k_cache[:, pos].double().cpu() - k_rot).abs().max() < 2e-3 * k_rot.abs().max()
    v_new = qkv[(heads + kv_heads) * head_dim :].view(kv_heads, head_dim)
    assert torch.equal(v_cache[:, pos].cpu(), v_new)
    others = [p for p in range(max_len) if p != pos]
    assert torch.equal(k_cache[:, others].cpu(), keys[:, others])
    assert torch.equal(v_cache[:, others].cpu(), values[:, others])


def _args(**changes):
    """Arguments of a 4-query / 2-KV-head call of 16 dims over 8 positions, with some replaced."""
    args = {
        "qkv": torch.zeros(8 * 16, dtype=torch.float16),
        "cos": torch.zeros(8, 16),
        "sin": torch.zeros(8, 16),
        "k_cache": torch.zeros(2, 8, 16, dtype=torch.float16),
        "v_cache": torch.zeros(2, 8, 16, dtype=torch.float16),
        "pos": torch.zeros(1, dtype=torch.int32),
        "out": torch.zeros(64, dtype=torch.float16),
        "heads": 4,
    }
    return {**args, **changes}


@pytest.mark.parametrize(
    ("changes", "match"),
    [
        ({"cos": torch.zeros(4, 16), "sin": torch.zeros(4, 16)}, r"cos/sin \(max_len, D\) float32"),
        ({"pos": torch.zeros(1, dtype=torch.int64)}, r"pos \(1,\) int32"),
        ({"splits": 0}, "splits >= 1"),
        (
            {
                "qkv": torch.zeros(10, dtype=torch.float16),
                "out": torch.zeros(48, dtype=torch.float16),
                "heads": 3,
            },
            "query heads",
        ),
    ],
)
def test_decode_attention_names_what_does_not_fit(changes, match):
    with pytest.raises(ValueError, match=match):
        decode_attention(**_args(**changes))
