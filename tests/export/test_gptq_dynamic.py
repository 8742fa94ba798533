"""GPTQModel dynamic config: base scheme, exact anchored rules, fused groups whole, palette limits."""

from __future__ import annotations

import json
import re

import pytest

from bitalloc.errors import ProfileMismatch
from bitalloc.export.common import ExportError
from bitalloc.export.gptq_dynamic import dynamic_config, export_gptq_dynamic
from tests.export.conftest import make_plan


def _rule_for(config: dict, module: str) -> dict | None:
    hits = [v for k, v in config["dynamic"].items() if re.match(k.removeprefix("+:"), module)]
    assert len(hits) <= 1, f"{module} matches several rules"
    return hits[0] if hits else None


def test_rules_cover_exactly_the_units_off_the_base_scheme(smollm2_small, mixed_sym_plan):
    config = dynamic_config(mixed_sym_plan, model_hash=smollm2_small.model_hash)
    assert (config["bits"], config["group_size"], config["sym"]) == (4, 32, True)
    for choice in mixed_sym_plan.assignment:
        bits, group = (
            int(choice.candidate.split("-w")[1].split("g")[0]),
            int(choice.candidate.split("g")[-1][:2]),
        )
        rule = _rule_for(config, choice.unit)
        if (bits, group) == (4, 32):
            assert rule is None
        else:
            assert rule == {"bits": bits, "group_size": group}
    # vLLM's fused module names match the same rule as their members; neighbours never do
    assert _rule_for(config, "model.layers.1.self_attn.qkv_proj") == {"bits": 2, "group_size": 64}
    assert _rule_for(config, "model.layers.0.mlp.gate_up_proj") == {"bits": 3, "group_size": 64}
    assert _rule_for(config, "model.layers.11.self_attn.q_proj") is None
    assert _rule_for(config, "model.layers.1.self_attn.q_proj_extra") is None


def test_export_writes_config_and_refuses_what_gptq_cannot_load(smollm2_small, mixed_sym_plan, tmp_path):
    h = smollm2_small.model_hash
    out = export_gptq_dynamic(mixed_sym_plan, tmp_path / "q", model_hash=h)
    assert json.loads((out / "quantize_config.json").read_text())["quant_method"] == "gptq"
    with pytest.raises(ExportError, match="not empty"):
        export_gptq_dynamic(mixed_sym_plan, out, model_hash=h)
    with pytest.raises(ProfileMismatch):
        dynamic_config(mixed_sym_plan, model_hash="0" * 64)
    with pytest.raises(ExportError, match=r"takes \[2, 3, 4, 8\]"):
        dynamic_config(make_plan(smollm2_small, lambda u: "rtn-w5g32-sym"), model_hash=h)
    with pytest.raises(ExportError, match="asymmetric"):
        dynamic_config(make_plan(smollm2_small, lambda u: "gptq-w4g32-asym"), model_hash=h)
    split = make_plan(
        smollm2_small, lambda u: "rtn-w8g32-sym" if u.name.endswith("up_proj") else "rtn-w4g32-sym"
    )
    with pytest.raises(ExportError, match="fuses"):
        dynamic_config(split, model_hash=h)
