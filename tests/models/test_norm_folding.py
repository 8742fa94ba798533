from __future__ import annotations

import pytest
import torch

from bitalloc.errors import InvalidInput
from bitalloc.models.norm_folding import fold_norm_weights
from bitalloc.models.random_llama import random_llama
from bitalloc.quantizers.candidate import Candidate
from bitalloc.quantizers.quant_linear import QuantLinear
from bitalloc.quantizers.quantize import quantize

KWARGS = dict(hidden=32, intermediate=64, layers=2, heads=4, kv_heads=2, vocab=50, initializer_range=0.1)


def _weighted(tied: bool = False, family: str = "Llama", seed: int = 0) -> torch.nn.Module:
    """A float32 random model whose norms have weights far from ones."""
    model = random_llama(**KWARGS, tied=tied, family=family, seed=seed).float()
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if type(module).__name__.endswith("RMSNorm"):
                module.weight.copy_(torch.rand(module.weight.shape, generator=gen) * 1.5 + 0.25)
    return model


def _norms(model: torch.nn.Module) -> list[torch.Tensor]:
    return [m.weight for m in model.modules() if type(m).__name__.endswith("RMSNorm")]


@pytest.mark.parametrize("family", ["Llama", "Qwen2"])
def test_folded_model_computes_the_same_logits_with_unit_norms(family):
    model = _weighted(family=family, seed=1)
    ids = torch.randint(0, 50, (2, 7), generator=torch.Generator().manual_seed(1))
    before = model(ids).logits
    q_before = model.model.layers[0].self_attn.q_proj.weight.clone()
    assert fold_norm_weights(model) == 2 * 2 + 1
    assert all(torch.equal(w, torch.ones_like(w)) for w in _norms(model))
    gain = 1 / q_before.abs().mean()  # the fold moved the weight into q's columns
    assert (model.model.layers[0].self_attn.q_proj.weight - q_before).abs().mean() * gain > 0.1
    after = model(ids).logits
    assert torch.allclose(after, before, rtol=1e-4, atol=1e-4)


def test_a_tied_head_keeps_its_final_norm():
    model = _weighted(tied=True, seed=2)
    embed = model.model.embed_tokens.weight.clone()
    final = model.model.norm.weight.clone()
    ids = torch.randint(0, 50, (1, 5), generator=torch.Generator().manual_seed(2))
    before = model(ids).logits
    assert fold_norm_weights(model) == 2 * 2
    assert torch.equal(model.model.embed_tokens.weight, embed) and torch.equal(model.model.norm.weight, final)
    assert torch.allclose(model(ids).logits, before, rtol=1e-4, atol=1e-4)


def test_fold_refuses_quantized_readers_and_other_architectures():
    model = _weighted(seed=3)
    attn = model.model.layers[1].self_attn
    qweight = quantize(attn.k_proj.weight, Candidate.parse("rtn-w4g32-asym"))
    attn.k_proj = QuantLinear.from_linear(attn.k_proj, qweight)
    saved = [w.clone() for w in _norms(model)]
    q0 = model.model.layers[0].self_attn.q_proj.weight.clone()
    with pytest.raises(InvalidInput, match=r"layer 1.s input norm .* fold the norms before quantizing"):
        fold_norm_weights(model)
    assert all(torch.equal(a, b) for a, b in zip(_norms(model), saved, strict=True))  # nothing changed
    assert torch.equal(model.model.layers[0].self_attn.q_proj.weight, q0)
    model.config.model_type = "gemma"
    with pytest.raises(InvalidInput, match="model types"):
        fold_norm_weights(model)
