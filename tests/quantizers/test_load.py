"""A folder written by save_quantized reads back into the same model: same packed tensors, same outputs."""

from __future__ import annotations

import copy
import json

import pytest
import torch

from bitalloc.errors import InvalidInput
from bitalloc.models.units import discover_units
from bitalloc.quantizers.apply import apply_plan, save_quantized
from bitalloc.quantizers.load import load_quantized
from bitalloc.quantizers.packed_linear import PackedLinear
from bitalloc.quantizers.quant_linear import QuantLinear
from tests.plans import manual_plan


def test_saved_folder_loads_back_exactly(smollm2_small, tmp_path):
    loaded = smollm2_small
    units = discover_units(loaded.model)
    # foundation formats (QuantLinear) and a non-foundation kind (bit-nested codes: PackedLinear)
    names = ["rtn-w4g64-asym", "rtn-w3g32-sym", "rtn-w8g64-asym", "nest-w4g64-asym"]
    plan = manual_plan(loaded, units, [names[i % len(names)] for i in range(len(units))])
    quantized = apply_plan(loaded.model, plan, model_hash=loaded.model_hash)
    save_quantized(quantized, plan, tmp_path / "q", tokenizer=loaded.tokenizer)
    model, back = load_quantized(tmp_path / "q")
    assert back.to_json() == plan.to_json()
    for unit in units:
        ours, theirs = model.get_submodule(unit.name), quantized.get_submodule(unit.name)
        assert type(ours) is type(theirs) and isinstance(ours, QuantLinear | PackedLinear)
        a, b = ours.state_dict(), theirs.state_dict()
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()  # re-tied
    ids = loaded.tokenizer("Paris is the capital of", return_tensors="pt").input_ids
    with (
        torch.no_grad()
    ):  # a float16 copy, like the stored unquantized tensors (quantized shares the fixture's)
        ref = copy.deepcopy(quantized).half()(ids).logits.float()
        ours = model(ids).logits.float()
    # same tensors; the rebuilt architecture may pick another attention implementation: float16 rounding only
    err = ((ours - ref).norm() / ref.norm()).item()
    assert err < 2e-3


def test_load_refuses_foreign_folders(smollm2_small, tmp_path):
    with pytest.raises(InvalidInput, match=r"missing model\.safetensors, plan\.json, config\.json"):
        load_quantized(tmp_path)
    loaded = smollm2_small
    units = discover_units(loaded.model)
    plan = manual_plan(loaded, units, ["rtn-w4g64-asym"] * len(units))
    save_quantized(apply_plan(loaded.model, plan, model_hash=loaded.model_hash), plan, tmp_path / "q")
    config = json.loads((tmp_path / "q" / "config.json").read_text())
    (tmp_path / "q" / "config.json").write_text(json.dumps({**config, "num_hidden_layers": 1}))
    with pytest.raises(InvalidInput, match=r"layers\.1"):
        load_quantized(tmp_path / "q")  # the plan's layer-1 units are not in a one-layer architecture
