"""New kinds through the profiler and apply_plan on real SmolLM2 layers: exact bytes, working forward."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from bitalloc.allocator.plan import uniform_plan
from bitalloc.data.corpora import Split, load_corpus
from bitalloc.data.windows import calibration_windows
from bitalloc.models.units import discover_units, unquantized_bytes
from bitalloc.quantizers.apply import apply_plan, needs_hessians, quantized_bytes
from bitalloc.quantizers.candidate import Candidate
from bitalloc.quantizers.packed_linear import PackedLinear
from bitalloc.quantizers.quantize import quantize
from bitalloc.sensitivity.calibrate import calibrate
from bitalloc.sensitivity.profiler import profile_model, score_unit

PALETTE = tuple(
    Candidate.parse(n)
    for n in (
        "rtn-w4g64-asym",
        "gptqact-w3g64-asym-o8",
        "nest-w4g64-asym",
        "tern-w1g192-sym",
    )
)


def test_profile_and_apply_new_kinds(smollm2_small) -> None:
    model, units = smollm2_small.model, discover_units(smollm2_small.model)[1:3]  # k_proj, v_proj of layer 0
    corpus = load_corpus("wiki", Split.CALIBRATION)
    windows = calibration_windows(smollm2_small.tokenizer, corpus, n_windows=2, seq_len=128, seed=0)
    stats = calibrate(
        model, units, windows, model_hash=smollm2_small.model_hash, corpus_hash=corpus.content_hash
    )
    meta = {"model_name": "t", "unquantized_bytes": unquantized_bytes(model, units)}
    profile = profile_model(model, units, stats, PALETTE, meta=meta)
    assert set(profile.table["candidate"]) == {c.name for c in PALETTE}
    w = model.get_submodule(units[0].name).weight.detach().float()
    scored = dict((c.name, (e, b)) for c, e, b in score_unit(w, stats.hessians[units[0].name], PALETTE))
    assert scored["nest-w4g64-asym"][1] == Candidate.parse("nest-w4g64-asym").nbytes(tuple(w.shape))

    plan = uniform_plan(profile, "gptqact-w3g64-asym-o8")
    assert needs_hessians(plan)
    quantized = apply_plan(model, plan, model_hash=smollm2_small.model_hash, hessians=stats.hessians)
    assert quantized_bytes(quantized) == plan.nbytes
    layer = quantized.get_submodule(units[0].name)
    assert isinstance(layer, PackedLinear)
    x = torch.randn(3, w.shape[1])
    expected = F.linear(x, layer.qweight.dequantize())
    assert torch.equal(layer(x), expected)
    stored = {k: v.clone() for k, v in layer.qweight.tensors().items()}
    layer.to(torch.bfloat16)  # float16 storage is moved, never rounded
    assert all(torch.equal(stored[k], v) for k, v in layer.qweight.tensors().items())
    unit0 = plan.assignment[0]
    again = quantize(w, Candidate.parse(unit0.candidate), hessian=stats.hessians[unit0.unit])
    assert torch.equal(again.dequantize(), layer.qweight.dequantize())
