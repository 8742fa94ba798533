"""PlanKL: the KL of swapped-in dequantized weights equals that of the model apply_plan builds."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from bitalloc.allocator.measure import PlanKL
from bitalloc.allocator.plan import plan_from_solution
from bitalloc.allocator.problem import Budget
from bitalloc.allocator.solve import solve
from bitalloc.errors import InvalidInput
from bitalloc.quantizers.apply import apply_plan
from tests.allocator.smol_profile import small_profile


def _kl(reference, model, ids) -> float:
    with torch.inference_mode():
        ref = F.log_softmax(reference(input_ids=ids).logits[:, :-1].float(), -1)
        got = F.log_softmax(model(input_ids=ids).logits[:, :-1].float(), -1)
    return float((ref.exp() * (ref - got)).sum() / (ref.shape[0] * ref.shape[1]))


def test_plan_kl_matches_the_applied_plan_and_orders_plans(smollm2_small):
    profile = small_profile(smollm2_small, prefix="model.layers.1.")
    problem = profile.to_problem()
    windows = torch.randint(0, 1000, (2, 32), generator=torch.Generator().manual_seed(0))
    measure = PlanKL(smollm2_small.model, problem.units, problem.candidates, windows, batch_size=2)
    sol = solve(problem, Budget(target_bpw=3.0))
    low = np.zeros(len(problem.units), dtype=np.int64)  # 2 bits everywhere
    got = measure([sol.choice, low])
    applied = apply_plan(
        smollm2_small.model,
        plan_from_solution(profile, sol, None),
        model_hash=smollm2_small.model_hash,
    )
    assert got[0] == pytest.approx(_kl(smollm2_small.model, applied, windows), rel=1e-4)
    assert 0 < got[0] < got[1]
    assert _kl(smollm2_small.model, measure.quantized_copy(low), windows) == pytest.approx(got[1], rel=1e-4)
    # the reference model is untouched, and a second call gives the same numbers from the cache
    assert measure([sol.choice])[0] == pytest.approx(got[0], rel=1e-9)


def test_plan_kl_rejects_bad_input(smollm2_small):
    profile = small_profile(smollm2_small)
    problem = profile.to_problem()
    windows = torch.zeros((1, 8), dtype=torch.int64)
    measure = PlanKL(smollm2_small.model, problem.units, problem.candidates, windows)
    with pytest.raises(InvalidInput, match="candidate indices"):
        measure([np.zeros(3, dtype=np.int64)])
    with pytest.raises(InvalidInput, match="not a Linear"):
        PlanKL(smollm2_small.model, ("model.norm",), problem.candidates, windows)
    with pytest.raises(InvalidInput, match="windows"):
        PlanKL(smollm2_small.model, problem.units, problem.candidates, torch.zeros(5, dtype=torch.int64))
