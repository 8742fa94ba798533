"""Attention for one decoded token, with rotary embedding and the KV-cache write in the same launch.

Programs ``(query head, split)``: split ``s`` takes the chunks ``s, s + SPLITS, ...`` of ``CHUNK`` cached
positions below ``pos`` (flash-decoding: a long context spreads over many SMs); splits past the context
return at once. The caller sizes ``SPLITS`` to the context (the decoder: one graph per grid), because every
program of a launch costs the step time even when it has nothing to do (measured in the decoder). Every
program rotates its query (Llama's rotate-half form, cos/sin rows at the current position); split 0 also
rotates the new key, writes the new key and value into the cache (the first query head of each KV group) and
scores the new token. Each split keeps an online softmax in float32; with more than one split they store
partial (max, sum, values), take a ticket, and the last split of the head combines them, so one launch does
it all. The position is read from device memory: one captured CUDA graph serves every step with that grid.
Cached positions only are read (never ``pos`` itself): no program waits on another's write. With
programmatic dependent launch the position, its rope rows and each split's first block of cached keys and
values are read before the wait: the kernels before it in a step never write them (earlier steps did, and a
decoder step starts with ordinary launches, which wait for everything before).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import triton
import triton.language as tl
from triton.language.extra.cuda import gdc_launch_dependents, gdc_wait

from bitalloc.kernels._pdl import pdl_launch

CHUNK = 64  # cached positions per chunk


@triton.jit
def _rotate(base_ptr, cos, sin, d, rot, sign):
    """Rotary embedding of one head vector: ``v * cos + rotate_half(v) * sin``, in float32."""
    v = tl.load(base_ptr + d).to(tl.float32)
    v_rot = tl.load(base_ptr + rot).to(tl.float32) * sign
    return v * cos + v_rot * sin


@triton.jit
def _online_softmax(q, k, v, valid, m, l_sum, acc, scale):
    """One block of cached keys and values ``(BLOCK_S, D)`` into the running max, sum and weighted values."""
    s = tl.sum(k.to(tl.float32) * q[None, :], axis=1) * scale  # (BLOCK_S,)
    s = tl.where(valid, s, float("-inf"))
    m_new = tl.maximum(m, tl.max(s, axis=0))
    alpha = tl.exp(m - m_new)
    p = tl.exp(s - m_new)
    acc = acc * alpha + tl.sum(p[:, None] * v.to(tl.float32), axis=0)
    return m_new, l_sum * alpha + tl.sum(p, axis=0), acc


@triton.jit
def _decode_attention_kernel(
    qkv_ptr,
    cos_ptr,
    sin_ptr,
    k_cache_ptr,
    v_cache_ptr,
    pos_ptr,
    out_ptr,
    m_ws_ptr,
    l_ws_ptr,
    acc_ws_ptr,
    ticket_ptr,
    scale,
    MAX_LEN,
    WS_SPLITS,
    HQ: tl.constexpr,
    HKV: tl.constexpr,
    D: tl.constexpr,
    CHUNK: tl.constexpr,
    BLOCK_S: tl.constexpr,
    SPLITS: tl.constexpr,
    SPLITS_POW2: tl.constexpr,
    PDL: tl.constexpr,
):
    h = tl.program_id(0)
    split = tl.program_id(1)
    GROUP: tl.constexpr = HQ // HKV
    kvh = h // GROUP
    d = tl.arange(0, D)  # (D,)
    cache = kvh * MAX_LEN * D
    if PDL:
        gdc_launch_dependents()
    # before the wait: the position, its rope rows and this split's first block of cached keys and values,
    # none of which the step's kernels write (earlier steps did)
    pos = tl.load(pos_ptr)
    chunks = tl.maximum(tl.cdiv(pos, CHUNK), 1)  # chunks holding cached positions (chunk 0 always runs)
    active = tl.minimum(chunks, SPLITS)  # splits with work
    cos = tl.load(cos_ptr + pos * D + d)
    sin = tl.load(sin_ptr + pos * D + d)
    first = split * CHUNK + tl.arange(0, BLOCK_S)  # (BLOCK_S,) nothing valid for an idle split
    first_valid = first < tl.minimum((split + 1) * CHUNK, pos)
    first_tile = cache + first[:, None] * D + d[None, :]  # (BLOCK_S, D)
    k_first = tl.load(k_cache_ptr + first_tile, mask=first_valid[:, None], other=0.0)
    v_first = tl.load(v_cache_ptr + first_tile, mask=first_valid[:, None], other=0.0)
    if PDL:
        gdc_wait()
    if split < active:
        rot = (d + D // 2) % D
        sign = tl.where(d < D // 2, -1.0, 1.0)
        q = _rotate(qkv_ptr + h * D, cos, sin, d, rot, sign).to(tl.float16).to(tl.float32)  # (D,)
        m = tl.max(tl.full((1,), float("-inf"), tl.float32), axis=0)  # running max
        l_sum = tl.sum(tl.zeros((1,), tl.float32), axis=0)
        acc = tl.zeros((D,), dtype=tl.float32)
        if split == 0:  # the new token: rotate its key, cache it (one program per KV group), score it
            k_new = _rotate(qkv_ptr + (HQ + kvh) * D, cos, sin, d, rot, sign).to(tl.float16)  # (D,)
            v_new = tl.load(qkv_ptr + (HQ + HKV + kvh) * D + d)  # (D,)
            if h % GROUP == 0:
                tl.store(k_cache_ptr + cache + pos * D + d, k_new)
                tl.store(v_cache_ptr + cache + pos * D + d, v_new)
            m = tl.sum(q * k_new.to(tl.float32), axis=0) * scale
            l_sum += 1.0
            acc = v_new.to(tl.float32)
        m, l_sum, acc = _online_softmax(q, k_first, v_first, first_valid, m, l_sum, acc, scale)
        for c in range(split, chunks, SPLITS):  # this split's chunks, past the block read before the wait
            stop = tl.minimum((c + 1) * CHUNK, pos)
            begin = c * CHUNK + (c == split).to(tl.int32) * BLOCK_S
            for start in range(begin, stop, BLOCK_S):
                offs = start + tl.arange(0, BLOCK_S)  # (BLOCK_S,)
                valid = offs < stop
                tile = cache + offs[:, None] * D + d[None, :]  # (BLOCK_S, D)
                k = tl.load(k_cache_ptr + tile, mask=valid[:, None], other=0.0)
                v = tl.load(v_cache_ptr + tile, mask=valid[:, None], other=0.0)
                m, l_sum, acc = _online_softmax(q, k, v, valid, m, l_sum, acc, scale)
        if active == 1:  # one split: no partials to combine
            tl.store(out_ptr + h * D + d, (acc / l_sum).to(out_ptr.dtype.element_ty))
        else:
            ws = h * WS_SPLITS + split
            tl.store(m_ws_ptr + ws, m)
            tl.store(l_ws_ptr + ws, l_sum)
            tl.store(acc_ws_ptr + ws * D + d, acc)
            tl.debug_barrier()  # every thread's partial is written before the ticket is taken
            ticket = tl.atomic_add(ticket_ptr + h, 1, sem="acq_rel", scope="gpu")
            if ticket == active - 1:  # the last split of this head combines the partials
                ss = tl.arange(0, SPLITS_POW2)  # (SPLITS_POW2,)
                live = ss < active
                part = h * WS_SPLITS + ss
                ms = tl.load(m_ws_ptr + part, mask=live, other=float("-inf"), cache_modifier=".cg")
                top = tl.max(ms, axis=0)
                w = tl.where(live, tl.exp(ms - top), 0.0)
                ls = tl.load(l_ws_ptr + part, mask=live, other=0.0, cache_modifier=".cg")
                accs = tl.load(
                    acc_ws_ptr + part[:, None] * D + d[None, :],
                    mask=live[:, None],
                    other=0.0,
                    cache_modifier=".cg",
                )  # (SPLITS_POW2, D)
                y = tl.sum(w[:, None] * accs, axis=0) / tl.sum(w * ls, axis=0)
                tl.store(out_ptr + h * D + d, y.to(out_ptr.dtype.element_ty))
                tl.store(ticket_ptr + h, 0)  # every split of this head has taken its ticket


@dataclass(frozen=True)
class AttentionWorkspace:
    """Partial softmax results of the splits along the cached positions, and one ticket counter per head
    (zero between calls: the last split of a head resets it). Reused by every layer of a decoder."""

    m: torch.Tensor  # (heads, splits) float32 running maxima
    l_sum: torch.Tensor  # (heads, splits) float32 sums of exp
    acc: torch.Tensor  # (heads, splits, D) float32 weighted values
    tickets: torch.Tensor  # (heads,) int32

    @classmethod
    def create(
        cls, heads: int, max_len: int, head_dim: int, device: torch.device | str, chunk: int = CHUNK
    ) -> AttentionWorkspace:
        """Room for ``ceil(max_len / chunk)`` splits per head."""
        splits = triton.cdiv(max_len, chunk)
        f32 = dict(dtype=torch.float32, device=device)
        return cls(
            torch.empty(heads, splits, **f32),
            torch.empty(heads, splits, **f32),
            torch.empty(heads, splits, head_dim, **f32),
            torch.zeros(heads, dtype=torch.int32, device=device),
        )


def decode_attention(
    qkv: torch.Tensor,
    cos: torch.Tensor,
    sin: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    pos: torch.Tensor,
    out: torch.Tensor,
    heads: int,
    workspace: AttentionWorkspace | None = None,
    chunk: int = CHUNK,
    block_s: int = 64,
    pdl: bool = False,
    splits: int | None = None,
) -> torch.Tensor:
    """One token's attention output ``out (heads * D,)``.

    ``qkv ((heads + 2 kv_heads) * D,)`` float16 holds q, k, v of the new token (before rotary embedding);
    ``cos``/``sin (max_len, D)`` float32; ``k_cache``/``v_cache (kv_heads, max_len, D)`` float16 hold the
    rotated keys and the values of positions ``0 .. pos-1``; ``pos (1,)`` int32 on the device is the new
    token's position (the caller keeps it below ``max_len``). ``workspace`` (made with the same ``chunk``)
    is allocated per call when not given. ``splits``: programs per query head (default: one per chunk of
    ``max_len``, the fastest at a long context; a caller that knows the context passes fewer, see
    ``LlamaDecoder``). ``pdl``: launched with programmatic dependent launch (``_pdl.py``); the caller then
    guarantees that no kernel of its PDL chain writes ``pos``, ``cos``/``sin`` or the cached rows below
    ``pos`` (they are read before the wait).
    """
    kv_heads, max_len, head_dim = k_cache.shape
    if heads % kv_heads or head_dim & (head_dim - 1) or qkv.numel() != (heads + 2 * kv_heads) * head_dim:
        raise ValueError(
            f"decode_attention: {heads} query heads, cache {tuple(k_cache.shape)}, "
            f"qkv of {qkv.numel()} elements"
        )
    checks = {
        "cos/sin (max_len, D) float32": cos.shape == sin.shape == (max_len, head_dim)
        and cos.dtype == torch.float32,
        "v_cache shaped like k_cache": v_cache.shape == k_cache.shape,
        "qkv, out and the caches float16": {t.dtype for t in (qkv, out, k_cache, v_cache)} == {torch.float16},
        f"out of {heads * head_dim} elements": out.numel() == heads * head_dim,
        "pos (1,) int32": pos.dtype == torch.int32 and pos.numel() == 1,
        "splits >= 1": splits is None or splits >= 1,
    }
    failed = [name for name, ok in checks.items() if not ok]
    if failed:
        raise ValueError(f"decode_attention needs {', '.join(failed)}")
    if workspace is None:
        workspace = AttentionWorkspace.create(heads, max_len, head_dim, qkv.device, chunk)
    ws_splits = workspace.m.shape[1]
    if (
        workspace.acc.shape != (heads, ws_splits, head_dim)
        or ws_splits * chunk < max_len
        or workspace.tickets.numel() < heads
    ):
        raise ValueError(f"decode_attention: workspace of {tuple(workspace.acc.shape)} does not fit")
    splits = ws_splits if splits is None else min(ws_splits, splits)
    _decode_attention_kernel[(heads, splits)](
        qkv,
        cos,
        sin,
        k_cache,
        v_cache,
        pos,
        out,
        workspace.m,
        workspace.l_sum,
        workspace.acc,
        workspace.tickets,
        1.0 / math.sqrt(head_dim),
        max_len,
        ws_splits,
        HQ=heads,
        HKV=kv_heads,
        D=head_dim,
        CHUNK=chunk,
        BLOCK_S=min(block_s, chunk),
        SPLITS=splits,
        SPLITS_POW2=triton.next_power_of_2(splits),
        PDL=pdl,
        num_warps=4,
        **pdl_launch(pdl),
    )
    return out
