"""GGUF export: the file loads in transformers with exactly the planned weights; type file; bad input."""

from __future__ import annotations

import re

import gguf
import numpy as np
import pytest
import torch

from bitalloc.allocator.problem import Budget
from bitalloc.data.corpora import Split, load_corpus
from bitalloc.data.windows import calibration_windows, token_stream
from bitalloc.errors import ProfileMismatch
from bitalloc.evaluate.perplexity import evaluate_models
from bitalloc.export.common import ExportError
from bitalloc.export.gguf_names import gguf_name, to_gguf_rows
from bitalloc.export.gguf_plan import dequantize_units, gguf_fixed_bytes, gguf_profile
from bitalloc.export.gguf_types import GgufType
from bitalloc.export.gguf_writer import export_gguf, unit_types
from bitalloc.models.units import discover_units
from bitalloc.pipeline import make_plan
from bitalloc.quantizers.apply import apply_plan
from bitalloc.sensitivity.calibrate import calibrate
from tests.export.conftest import make_plan as plan_of


@pytest.fixture(scope="module")
def template():
    """No template: metadata from the config (reading the bundled GGUF's tokenizer alone takes ~20 s).

    The template path (tokenizer copied from the bundled file) is exercised by benchmarks/export_gguf.py.
    """
    return None


@pytest.fixture(scope="module")
def small_stats(smollm2_small):
    corpus = load_corpus("wiki", Split.CALIBRATION)
    windows = calibration_windows(smollm2_small.tokenizer, corpus, n_windows=4, seq_len=128, seed=0)
    units = discover_units(smollm2_small.model)
    return calibrate(
        smollm2_small.model,
        units,
        windows,
        model_hash=smollm2_small.model_hash,
        corpus_hash=corpus.content_hash,
    )


@pytest.fixture(scope="module")
def gguf_plan(smollm2_small, small_stats):
    units = discover_units(smollm2_small.model)
    profile = gguf_profile(
        smollm2_small.model,
        units,
        small_stats,
        types=("Q4_K", "Q6_K", "IQ4_NL", "Q5_0", "Q8_0"),
        meta={},
    )
    table = profile.table
    assert set(table[table["cols"] == 576]["candidate"]).isdisjoint({"Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K"})
    sizes = {(r.unit, r.candidate): r.nbytes for r in table.itertuples()}
    assert sizes[("model.layers.0.mlp.down_proj", "Q4_K")] == 576 * 1536 // 256 * 144
    return make_plan(profile, Budget(target_bpw=4.6), solver="milp")


def test_gguf_plan_exports_and_loads_with_its_exact_weights(smollm2_small, gguf_plan, template, tmp_path):
    from transformers import AutoModelForCausalLM

    model = smollm2_small.model
    assert len({c.candidate for c in gguf_plan.assignment}) > 1  # a real mix
    sizes = export_gguf(
        model, gguf_plan, tmp_path / "g", model_hash=smollm2_small.model_hash, template=template
    )
    units = discover_units(model)
    assert sizes["tensor_bytes"] == gguf_plan.nbytes + gguf_fixed_bytes(model, units, "Q8_0")
    back = AutoModelForCausalLM.from_pretrained(
        tmp_path / "g", gguf_file="model.gguf", dtype=torch.float32
    ).eval()
    expected = dequantize_units(model, unit_types(gguf_plan))
    for unit, weight in expected.items():
        torch.testing.assert_close(back.get_submodule(unit).weight, weight, rtol=0, atol=0)
    torch.testing.assert_close(back.model.norm.weight, model.model.norm.weight, rtol=0, atol=0)
    tokens = token_stream(smollm2_small.tokenizer, load_corpus("wiki", Split.EVALUATION), max_tokens=512)
    ours = model.__class__(model.config).eval()
    ours.load_state_dict(model.state_dict())
    for unit, weight in expected.items():
        ours.get_submodule(unit).weight.data.copy_(weight)
    results = evaluate_models({"memory": ours, "gguf": back}, model, tokens, context=256, stride=128)
    assert results["gguf"].perplexity == pytest.approx(results["memory"].perplexity, rel=1e-4)
    assert results["gguf"].kl > 0


def test_tensor_type_file_matches_each_tensor_once(smollm2_small, gguf_plan, template, tmp_path):
    export_gguf(
        smollm2_small.model, gguf_plan, tmp_path / "g", model_hash=smollm2_small.model_hash, template=template
    )
    lines = (tmp_path / "g" / "tensor-types.txt").read_text().split()
    reader = gguf.GGUFReader(str(tmp_path / "g" / "model.gguf"))
    stored = {t.name: t.tensor_type.name for t in reader.tensors}
    assert len(lines) == len(gguf_plan.assignment) + 1  # every unit plus the embedding
    for line in lines:
        pattern, qtype = line.split("=")
        hits = [name for name in stored if re.search(pattern.lower(), name)]
        assert len(hits) == 1 and stored[hits[0]] == qtype
    assert stored["token_embd.weight"] == "Q8_0" and stored["output_norm.weight"] == "F32"


def test_candidate_plan_is_written_from_our_codes(smollm2_small, template, tmp_path):
    model = smollm2_small.model
    plan = plan_of(smollm2_small, lambda u: "rtn-w8g32-sym" if "down" in u.name else "rtn-w4g32-asym")
    quantized = apply_plan(model, plan, model_hash=smollm2_small.model_hash)
    export_gguf(
        model,
        plan,
        tmp_path / "c",
        model_hash=smollm2_small.model_hash,
        template=template,
        quantized=quantized,
    )
    reader = gguf.GGUFReader(str(tmp_path / "c" / "model.gguf"))
    tensors = {t.name: t for t in reader.tensors}
    cfg = model.config
    for choice in plan.assignment:
        t = tensors[gguf_name(f"{choice.unit}.weight")]
        assert t.tensor_type.name == ("Q8_0" if "down" in choice.unit else "Q4_1")
        ours = quantized.get_submodule(choice.unit).qweight.dequantize().numpy()
        ours = to_gguf_rows(f"{choice.unit}.weight", ours, cfg.num_attention_heads, cfg.num_key_value_heads)
        got = gguf.quants.dequantize(np.asarray(t.data), t.tensor_type).reshape(ours.shape)
        np.testing.assert_array_equal(got, ours)


def test_bad_input_writes_nothing(smollm2_small, gguf_plan, template, tmp_path):
    model, h = smollm2_small.model, smollm2_small.model_hash
    with pytest.raises(ProfileMismatch):
        export_gguf(model, gguf_plan, tmp_path / "a", model_hash="f" * 64, template=template)
    plan = plan_of(smollm2_small, lambda u: "rtn-w3g64-sym")
    with pytest.raises(ExportError, match="no GGUF type"):
        export_gguf(model, plan, tmp_path / "b", model_hash=h, template=template)
    full = tmp_path / "full"
    full.mkdir()
    (full / "model.gguf").write_bytes(b"old")
    with pytest.raises(ExportError, match="not empty"):
        export_gguf(model, gguf_plan, full, model_hash=h, template=template)
    with pytest.raises(ExportError, match="does not exist"):
        export_gguf(model, gguf_plan, tmp_path / "c", model_hash=h, template=tmp_path / "missing.gguf")
    assert (full / "model.gguf").read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["full"]
    assert GgufType.of("Q8_0").bpw == 8.5
