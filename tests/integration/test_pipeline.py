"""The whole flow on the real bundled model (first two layers): profile, plan, apply, save, evaluate."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
from safetensors import safe_open

from bitalloc.allocator.plan import plan_from_solution, uniform_plan
from bitalloc.allocator.problem import Budget
from bitalloc.allocator.solve import solve
from bitalloc.data.corpora import Split, load_corpus
from bitalloc.data.windows import calibration_windows, token_stream
from bitalloc.errors import InfeasibleBudget, ProfileMismatch
from bitalloc.evaluate.perplexity import evaluate_models
from bitalloc.models.units import discover_units, unquantized_bytes
from bitalloc.quantizers.apply import apply_plan, save_quantized
from bitalloc.quantizers.candidate import Candidate, QuantKind, default_palette
from bitalloc.sensitivity.calibrate import calibrate
from bitalloc.sensitivity.profile import SensitivityProfile
from bitalloc.sensitivity.profiler import profile_model

PALETTE = default_palette(bits=(2, 3, 4, 8), group_sizes=(32, 64))


@pytest.fixture(scope="module")
def stats(smollm2_small):
    corpus = load_corpus("wiki", Split.CALIBRATION)
    # 4096 tokens: more than the widest input (1536), so every H = X^T X has full rank
    windows = calibration_windows(smollm2_small.tokenizer, corpus, n_windows=16, seq_len=256, seed=0)
    units = discover_units(smollm2_small.model)
    return calibrate(
        smollm2_small.model,
        units,
        windows,
        model_hash=smollm2_small.model_hash,
        corpus_hash=corpus.content_hash,
        settings={"corpus": "wiki", "n_windows": 16, "seq_len": 256, "seed": 0},
    )


@pytest.fixture(scope="module")
def profile(smollm2_small, stats):
    units = discover_units(smollm2_small.model)
    meta = {
        "model_name": "smollm2-135m[:2]",
        "unquantized_bytes": unquantized_bytes(smollm2_small.model, units),
    }
    return profile_model(smollm2_small.model, units, stats, PALETTE, meta=meta)


def test_profile_scores_every_fitting_candidate(profile):
    per_unit = profile.table.groupby("unit").size()
    assert len(per_unit) == 14 and (per_unit == len(PALETTE)).all()  # 576 and 1536 take groups 32 and 64
    assert (profile.table["error"] >= 0).all()
    # the bundled weights lie on a 4-bit asymmetric group-32 grid: that candidate is lossless
    assert (profile.table.query("candidate == 'rtn-w4g32-asym'")["error"] == 0).all()
    # more bits never hurt RTN much: 8-bit error is far below 2-bit error on every unit
    e = profile.table.pivot(index="unit", columns="candidate", values="error")
    assert (e["rtn-w8g32-sym"] < 1e-2 * e["rtn-w2g32-sym"]).all()
    # GPTQ uses H and beats RTN in total at 3 bits
    assert e["gptq-w3g64-sym"].sum() < e["rtn-w3g64-sym"].sum()


@pytest.mark.parametrize("solver", ["milp", "lagrange"])
def test_plan_apply_save_bytes_are_exact(tmp_path, smollm2_small, stats, profile, solver):
    problem = profile.to_problem()
    budget = Budget(target_bpw=3.25)
    solution = solve(problem, budget, solver=solver)
    plan = plan_from_solution(profile, solution, budget)
    assert plan.nbytes <= budget.to_bytes(problem) and plan.bpw <= 3.25
    ties = {}
    for choice, unit in zip(plan.assignment, discover_units(smollm2_small.model), strict=True):
        assert ties.setdefault(unit.tie, choice.candidate) == choice.candidate
    quantized = apply_plan(
        smollm2_small.model, plan, model_hash=smollm2_small.model_hash, hessians=stats.hessians
    )
    written = save_quantized(quantized, plan, tmp_path / "q")
    assert written == plan.model_bytes
    with safe_open(str(tmp_path / "q" / "model.safetensors"), framework="pt") as f:
        on_disk = sum(f.get_tensor(k).numel() * f.get_tensor(k).element_size() for k in f.keys())  # noqa: SIM118
    assert on_disk == plan.model_bytes
    assert json.loads((tmp_path / "q" / "plan.json").read_text())["totals"]["bytes"] == plan.nbytes
    with pytest.raises(Exception, match="already holds a model"):
        save_quantized(quantized, plan, tmp_path / "q")


def test_mixed_plan_beats_uniform_of_equal_size_in_kl(smollm2_small, stats, profile):
    uniform = uniform_plan(profile, "gptq-w3g64-sym")
    budget = Budget(max_bytes=uniform.nbytes)
    mixed = plan_from_solution(profile, solve(profile.to_problem(), budget, solver="milp"), budget)
    assert mixed.predicted_error <= uniform.predicted_error
    models = {
        name: apply_plan(smollm2_small.model, p, model_hash=smollm2_small.model_hash, hessians=stats.hessians)
        for name, p in {"uniform": uniform, "mixed": mixed}.items()
    }
    held_out = load_corpus("wiki", Split.EVALUATION)
    tokens = token_stream(smollm2_small.tokenizer, held_out, max_tokens=1024)
    results = evaluate_models(models, smollm2_small.model, tokens, context=256, stride=128)
    assert results["mixed"].kl < results["uniform"].kl


def test_plan_for_another_model_is_refused(smollm2_small, profile):
    plan = uniform_plan(profile, "rtn-w4g32-asym")
    with pytest.raises(ProfileMismatch):
        apply_plan(smollm2_small.model, plan, model_hash="f" * 64)


def test_gptq_plan_without_calibration_is_refused(smollm2_small, profile):
    plan = uniform_plan(profile, "gptq-w4g32-sym")
    assert Candidate.parse(plan.assignment[0].candidate).kind is QuantKind.GPTQ
    with pytest.raises(Exception, match="calibration"):
        apply_plan(smollm2_small.model, plan, model_hash=smollm2_small.model_hash, hessians=None)


def test_infeasible_budget_names_the_feasible_range(profile):
    problem = profile.to_problem()
    lo, hi = problem.byte_range()
    with pytest.raises(InfeasibleBudget) as info:
        solve(problem, Budget(target_bpw=1.0))
    assert str(lo) in str(info.value) and str(hi) in str(info.value)


def test_cli_plan_and_frontier_on_a_saved_profile(tmp_path, profile):
    path = profile.save(tmp_path / "profile.parquet")
    cli = [sys.executable, "-c", "from bitalloc.cli import main; main()"]
    ok = subprocess.run(
        [*cli, "plan", str(path), "--target-bpw", "3.5", "-o", str(tmp_path / "plan.json")],
        capture_output=True,
        text=True,
    )
    assert ok.returncode == 0, ok.stderr
    doc = json.loads((tmp_path / "plan.json").read_text())
    assert doc["totals"]["bpw"] <= 3.5 and doc["solver"]["status"] and "gap" in doc["solver"]
    assert doc["profile_hash"] == SensitivityProfile.load(path).content_hash
    bad = subprocess.run([*cli, "plan", str(path), "--target-bpw", "1.0"], capture_output=True, text=True)
    assert bad.returncode == 2 and "smallest feasible" in bad.stderr
    fr = subprocess.run(
        [
            *cli,
            "frontier",
            str(path),
            "--bpw",
            "2.5:4.5:0.5",
            "-o",
            str(tmp_path / "f.csv"),
            "--plot",
            str(tmp_path / "f.png"),
        ],
        capture_output=True,
        text=True,
    )
    assert fr.returncode == 0, fr.stderr
    frame = pd.read_csv(tmp_path / "f.csv")
    assert len(frame) == 5 and np.all(np.diff(frame["loss"]) <= 1e-9 * frame["loss"].max())
    assert (tmp_path / "f.png").read_bytes()[:4] == b"\x89PNG"
