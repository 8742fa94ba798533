from __future__ import annotations

import pytest
import torch
from torch import nn

from bitalloc.errors import InvalidInput
from bitalloc.models.loading import load_model, resolve_source, split_spec, state_hash
from bitalloc.models.units import discover_units, unquantized_bytes


def test_units_cover_every_decoder_linear_and_fused_ties(smollm2_small):
    units = discover_units(smollm2_small.model)
    assert len(units) == 2 * 7
    names = {u.name for u in units}
    assert "lm_head" not in names and not any("embed" in n for n in names)
    by_name = {u.name: u for u in units}
    q, k, v = (by_name[f"model.layers.0.self_attn.{p}_proj"] for p in "qkv")
    assert q.tie == k.tie == v.tie != by_name["model.layers.0.self_attn.o_proj"].tie
    gate, up = by_name["model.layers.1.mlp.gate_proj"], by_name["model.layers.1.mlp.up_proj"]
    assert gate.tie == up.tie != by_name["model.layers.1.mlp.down_proj"].tie
    assert by_name["model.layers.0.mlp.down_proj"].shape == (576, 1536)


def test_unquantized_bytes_counts_tied_embedding_once_at_fp16(smollm2_small):
    model = smollm2_small.model
    units = discover_units(model)
    assert model.lm_head.weight is model.model.embed_tokens.weight
    norms = sum(p.numel() for n, p in model.named_parameters() if "norm" in n)
    assert unquantized_bytes(model, units) == 2 * (model.model.embed_tokens.weight.numel() + norms)


def test_second_load_is_cached_and_hash_is_stable(smollm2_full):
    again = load_model("smollm2-135m")
    assert again.model_hash == smollm2_full.model_hash
    assert len(discover_units(again.model)) == 30 * 7


def test_hash_changes_with_weights():
    model = nn.Sequential(nn.Linear(4, 4))
    before = state_hash(model)
    model[0].weight.data[0, 0] += 1
    assert state_hash(model) != before


def test_local_hf_folder_round_trip(tmp_path, smollm2_small):
    smollm2_small.model.save_pretrained(tmp_path)
    smollm2_small.tokenizer.save_pretrained(tmp_path)
    assert resolve_source(str(tmp_path))[0] == "folder"
    again = load_model(str(tmp_path))
    assert again.model_hash == smollm2_small.model_hash


@pytest.mark.parametrize("spec", ["no-such-model", "./missing.gguf", "/nonexistent/folder"])
def test_bad_model_names_say_what_to_give(spec):
    with pytest.raises(InvalidInput, match=r"model|exist"):
        resolve_source(spec)


def test_hub_ids_resolve_to_hub():
    assert resolve_source("HuggingFaceTB/SmolLM2-135M")[0] == "hub"


def test_fold_norms_suffix_loads_the_same_function_under_another_hash(smollm2_full):
    assert split_spec("org/model+fold-norms") == ("org/model", True)
    assert split_spec("org/model") == ("org/model", False)
    folded = load_model("smollm2-135m+fold-norms")
    assert folded.name == "smollm2-135m+fold-norms" and folded.model_hash != smollm2_full.model_hash
    layer = folded.model.model.layers[3]
    assert torch.equal(layer.input_layernorm.weight, torch.ones_like(layer.input_layernorm.weight))
    plain = smollm2_full.model.model.layers[3].self_attn.q_proj.weight
    assert not torch.allclose(layer.self_attn.q_proj.weight, plain)  # the norm's weight moved into q
    ids = smollm2_full.tokenizer("The capital of France is", return_tensors="pt").input_ids
    with torch.no_grad():
        ours, theirs = folded.model(ids).logits, smollm2_full.model(ids).logits
    assert torch.allclose(ours, theirs, rtol=1e-3, atol=1e-3)
