from __future__ import annotations

import torch

from bitalloc.models.random_llama import random_llama


def test_random_llama_is_seeded_float16_and_shaped():
    kwargs = dict(hidden=32, intermediate=64, layers=2, heads=4, kv_heads=2, vocab=50)
    a, b, c = random_llama(**kwargs, seed=1), random_llama(**kwargs, seed=1), random_llama(**kwargs, seed=2)
    wa = a.model.layers[1].self_attn.k_proj.weight
    assert wa.dtype == torch.float16 and wa.shape == (16, 32)  # kv_heads * head_dim (8) rows
    assert torch.equal(wa, b.model.layers[1].self_attn.k_proj.weight)
    assert not torch.equal(wa, c.model.layers[1].self_attn.k_proj.weight)
    assert not a.training and a.lm_head.weight.data_ptr() != a.model.embed_tokens.weight.data_ptr()
    tied = random_llama(**kwargs, tied=True)
    assert tied.lm_head.weight.data_ptr() == tied.model.embed_tokens.weight.data_ptr()
