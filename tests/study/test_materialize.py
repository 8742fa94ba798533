"""A trial's model and measurement equal the main job's (apply_plan + run_eval) for the same plan."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pandas as pd
import pytest
import torch

from bitalloc.allocator.problem import Budget
from bitalloc.errors import BitallocError
from bitalloc.models.loading import LoadedModel
from bitalloc.models.units import discover_units, unquantized_bytes
from bitalloc.pipeline import CalibrationSettings, EvalSettings, make_plan, quantize_model, run_eval
from bitalloc.quantizers.candidate import Candidate
from bitalloc.sensitivity.profile import SensitivityProfile
from bitalloc.study.definition import load_definition
from bitalloc.study.materialize import UnitCache
from bitalloc.study.objective import Objective

CANDIDATES = ("gptq-w3g64-sym", "rtn-w4g64-asym")
CALIBRATION = CalibrationSettings(n_windows=2, seq_len=64)


@pytest.fixture(scope="module")
def mixed_plan(smollm2_small: LoadedModel):
    """A plan of the 2-layer model with GPTQ on attention and RTN on the MLP: a small profile built by hand
    (exact bytes; errors 0 for the wanted candidate, 1 for the other), solved by the MILP."""
    units = discover_units(smollm2_small.model)
    rows = []
    for u in units:
        for name in CANDIDATES:
            wanted = ("self_attn" in u.name) == name.startswith("gptq")
            nbytes = Candidate.parse(name).nbytes(u.shape)
            rows.append((u.name, u.tie, *u.shape, name, 0.0 if wanted else 1.0, nbytes))
    table = pd.DataFrame(rows, columns=["unit", "tie", "rows", "cols", "candidate", "error", "nbytes"])
    meta = {
        "model_hash": smollm2_small.model_hash,
        "model_name": smollm2_small.name,
        "corpus_hash": "-",
        "palette": list(CANDIDATES),
        "calibration": dataclasses.asdict(CALIBRATION),
        "unquantized_bytes": unquantized_bytes(smollm2_small.model, units),
    }
    plan = make_plan(SensitivityProfile(table=table, meta=meta), Budget(target_bpw=8.0), solver="milp")
    assert {c.candidate for c in plan.assignment} == set(CANDIDATES)  # both kinds in use
    return plan


@pytest.fixture(scope="module")
def built(smollm2_small: LoadedModel, mixed_plan):
    """(the worker cache after one build, the trial's model, the main job's packed model) of mixed_plan."""
    cache = UnitCache()
    model = cache.build(smollm2_small, mixed_plan)
    return cache, model, quantize_model(smollm2_small, mixed_plan)


def test_cached_model_equals_apply_plan(smollm2_small: LoadedModel, mixed_plan, built) -> None:
    cache, model, packed = built
    assert cache.quantized == len(mixed_plan.assignment) and cache.reused == 0
    ids = torch.arange(100, 164)[None, :]  # (1, 64)
    with torch.inference_mode():
        a = model(input_ids=ids, use_cache=False).logits  # (1, 64, vocab)
        b = packed(input_ids=ids, use_cache=False).logits
        c = smollm2_small.model(input_ids=ids, use_cache=False).logits
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    assert (a - c).abs().max() > 1e-2  # it really is quantized, and the float model was left alone
    cache.build(smollm2_small, mixed_plan)  # a second trial with the same choices quantizes nothing
    assert cache.quantized == len(mixed_plan.assignment) and cache.reused == len(mixed_plan.assignment)


def test_trial_measure_equals_main_job_eval(
    tiny_definition: Path, smollm2_small: LoadedModel, mixed_plan, built
) -> None:
    """The guard on the study's numbers: a trial measures a plan exactly as the main job does."""
    cache, _, packed = built
    d = load_definition(tiny_definition)
    measured = Objective(d, smollm2_small, cache).measure(mixed_plan)
    settings = EvalSettings(max_tokens=d.max_tokens, context=d.context, stride=d.stride)
    main = run_eval(smollm2_small, {"plan": packed}, d.corpus, settings)
    assert measured["perplexity"] == pytest.approx(main["plan"].perplexity, rel=1e-5)
    assert measured["kl"] == pytest.approx(main["plan"].kl, rel=1e-4, abs=1e-6)
    assert measured["reference_perplexity"] == pytest.approx(main["reference"].perplexity, rel=1e-9)
    assert measured["bytes"] == mixed_plan.model_bytes and measured["tokens"] == d.max_tokens - 1


def test_wrong_bytes_are_refused(smollm2_small: LoadedModel, mixed_plan) -> None:
    first = mixed_plan.assignment[0]
    bad = dataclasses.replace(
        mixed_plan,
        assignment=(dataclasses.replace(first, nbytes=first.nbytes + 1), *mixed_plan.assignment[1:]),
    )
    with pytest.raises(BitallocError, match="plan says"):
        UnitCache().build(smollm2_small, bad)


def test_cache_drops_oldest_beyond_its_limit(smollm2_small: LoadedModel, mixed_plan) -> None:
    cache = UnitCache(max_bytes=1)
    rtn = Candidate.parse("rtn-w8g64-sym")
    units = [c.unit for c in mixed_plan.assignment[:3]]
    for unit in units:
        cache.weight(smollm2_small, mixed_plan, unit, rtn)
    assert list(cache.weights) == [((), units[-1], rtn.name)] and cache.quantized == 3


def test_prefilled_gptq_builds_the_same_model(smollm2_small: LoadedModel, mixed_plan, built) -> None:
    _, model, _ = built
    cache = UnitCache()
    cache.prefill_gptq(smollm2_small, [mixed_plan, mixed_plan])
    n_gptq = sum(c.candidate.startswith("gptq") for c in mixed_plan.assignment)
    assert cache.quantized == n_gptq > 0  # one batched pass per GPTQ unit, the second plan adds nothing
    again = cache.build(smollm2_small, mixed_plan)  # only the RTN units are quantized now
    assert cache.reused == n_gptq and cache.quantized == len(mixed_plan.assignment)
    for name, p in model.named_parameters():
        torch.testing.assert_close(dict(again.named_parameters())[name], p, rtol=0, atol=1e-6)
