"""The decoder's batched prompt pass: transformers' logits, a cache the decode steps continue from."""

from __future__ import annotations

import pytest
import torch

from bitalloc.errors import InvalidInput
from bitalloc.kernels.decode_attention import decode_attention
from bitalloc.kernels.linear import KernelFallbackWarning
from bitalloc.runtime.llama_decoder import LlamaDecoder
from bitalloc.runtime.prefill_attention import prefill_attention
from tests.kernels.helpers import device
from tests.runtime.helpers import block_variant, nested_packed, quantize_linears, tiny_llama
from tests.runtime.test_llama_decoder import MIXED, MIXED_MLP, assert_close, decoder_logits


@pytest.mark.parametrize("plan", [{}, MIXED])
def test_prefill_then_steps_match_transformers(plan):
    """Prompt of 5 in one pass (float16, or every linear quantized: the batched kernels), then 2 steps."""
    model = tiny_llama(seed=12)
    quantize_linears(model, plan)
    ids = torch.randint(0, 256, (1, 7), generator=torch.Generator().manual_seed(12)).to(model.device)
    with torch.no_grad():
        ref = model(ids).logits[0].float()  # (7, vocab)
    decoder = LlamaDecoder(model, max_len=8)
    first = decoder.prefill(ids[0, :5].tolist())[0].float().clone()
    assert decoder.position == 5 and int(decoder.pos.item()) == 5
    assert int(decoder.token.item()) == int(first.argmax())
    after = torch.stack([decoder.step(int(t))[0].float() for t in ids[0, 5:]])  # positions 5, 6
    assert_close(torch.cat([first[None], after]), ref[4:], 1e-2)
    stepped = decoder_logits(decoder, ids)  # the same positions one step each
    assert_close(torch.cat([first[None], after]), stepped[4:], 1e-2)


def test_prefill_in_two_chunks_equals_one_pass():
    model = tiny_llama(seed=13)
    ids = torch.randint(0, 256, (6,), generator=torch.Generator().manual_seed(13)).tolist()
    decoder = LlamaDecoder(model, max_len=6)
    whole = decoder.prefill(ids)[0].float().clone()
    cache = decoder.layers[0].k_cache[:, :6].clone()
    decoder.reset()
    decoder.prefill(ids[:4])
    split = decoder.prefill(ids[4:])[0].float()
    assert decoder.position == 6
    assert torch.allclose(decoder.layers[0].k_cache[:, :6].float(), cache.float(), atol=2e-3)
    assert ((split - whole).norm() / whole.norm()).item() < 5e-3


def test_prefill_attention_is_causal_over_the_cache():
    """A query never sees later prompt tokens: changing the last token's key/value leaves earlier outputs."""
    gen = torch.Generator().manual_seed(14)
    heads, kv_heads, d, rows = 4, 2, 16, 8
    qkv = torch.randn(3, (heads + 2 * kv_heads) * d, generator=gen).half()
    cos, sin = torch.randn(rows, d, generator=gen).cos(), torch.randn(rows, d, generator=gen).sin()
    caches = [torch.randn(kv_heads, rows, d, generator=gen).half() for _ in range(2)]
    out = prefill_attention(qkv, heads, kv_heads, cos, sin, *[c.clone() for c in caches], start=2)
    changed = qkv.clone()
    changed[2, heads * d :] += 1.0  # the last token's key and value
    out2 = prefill_attention(changed, heads, kv_heads, cos, sin, *[c.clone() for c in caches], start=2)
    assert torch.equal(out[:2], out2[:2]) and not torch.equal(out[2], out2[2])


def test_prefill_refuses_what_it_cannot_feed():
    decoder = LlamaDecoder(tiny_llama(seed=15, layers=1), max_len=4)
    with pytest.raises(InvalidInput, match="at least one token"):
        decoder.prefill([])
    with pytest.raises(InvalidInput, match="max_len >= 5"):
        decoder.prefill([1, 2, 3, 4, 5])
    with pytest.raises(InvalidInput, match=r"\[256\] are outside the vocabulary"):
        decoder.prefill([1, 256])
    assert decoder.position == 0


@pytest.mark.parametrize(("heads", "kv_heads"), [(8, 2), (4, 4), (6, 3)])
def test_prefill_attention_equals_the_decode_kernel_token_by_token(heads, kv_heads):
    """Same cache rows written, same outputs as ``decode_attention`` run for each position in turn (GQA)."""
    gen = torch.Generator().manual_seed(heads + kv_heads)
    d, rows, tokens, start = 16, 12, 5, 3
    cos = torch.randn(rows, d, generator=gen).cos().to(device())
    sin = torch.randn(rows, d, generator=gen).sin().to(device())
    cached = torch.randn(kv_heads, rows, d, generator=gen).half().to(device())
    qkv = torch.randn(tokens, (heads + 2 * kv_heads) * d, generator=gen).half().to(device())
    k1, v1 = cached.clone(), (cached * 0.5).clone()
    ours = prefill_attention(qkv, heads, kv_heads, cos, sin, k1, v1, start)
    k2, v2 = cached.clone(), (cached * 0.5).clone()
    ref = []
    for t in range(tokens):
        out = torch.full((heads * d,), float("nan"), dtype=torch.float16, device=device())
        pos = torch.tensor([start + t], dtype=torch.int32, device=device())
        decode_attention(qkv[t].contiguous(), cos, sin, k2, v2, pos, out, heads)
        ref.append(out)
    assert torch.equal(k1, k2) and torch.equal(v1, v2)
    assert torch.allclose(ours.float(), torch.stack(ref).float(), atol=2e-3)
    with pytest.raises(InvalidInput, match="outside the cache"):
        prefill_attention(qkv, heads, kv_heads, cos, sin, k1, v1, rows - 2)


@pytest.mark.parametrize("kind", ["qwen2", "llama-biases"])
def test_prefill_with_biases_and_a_packed_linear(kind):
    """q/k/v biases (Qwen2) or every projection biased (Llama), and a PackedLinear v: prompt pass + steps."""
    model = block_variant(kind, seed=16)
    quantize_linears(model, {"q_proj": "rtn-w4g32-asym", "k_proj": "rtn-w4g32-asym", **MIXED_MLP})
    attn = model.model.layers[1].self_attn
    attn.v_proj = nested_packed(attn.v_proj)
    ids = torch.randint(0, 256, (1, 7), generator=torch.Generator().manual_seed(16)).to(device())
    with torch.no_grad():
        ref = model(ids).logits[0].float()
    with pytest.warns(KernelFallbackWarning, match="nest-w4g32-asym"):
        decoder = LlamaDecoder(model, max_len=8)
    first = decoder.prefill(ids[0, :5])[0].float().clone()  # a tensor of ids
    after = torch.stack([decoder.step(int(t))[0].float() for t in ids[0, 5:]])
    assert_close(torch.cat([first[None], after]), ref[4:], 1e-2)
