"""Closed loop: known scales are recovered, probes move one label, the result never measures worse."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bitalloc.allocator.closed_loop import (
    closed_loop,
    fit_scales,
    label_errors,
    probe_choices,
    rescale,
    unit_labels,
)
from bitalloc.allocator.problem import AllocationProblem, Budget
from bitalloc.allocator.solve import solve
from bitalloc.errors import InvalidInput
from tests.allocator.test_problem import problems

TYPES = ("q_proj", "k_proj", "down_proj")


def layered(seed: int = 0, layers: int = 4) -> AllocationProblem:
    """Units named like a decoder (layers x TYPES), 6 candidates of rising bytes and convex falling loss."""
    rng = np.random.default_rng(seed)
    units = tuple(f"model.layers.{i}.mlp.{t}" for i in range(layers) for t in TYPES)
    n = len(units)
    bits = np.array([2, 3, 4, 5, 6, 8])
    numel = rng.integers(64, 256, n) * 8
    nbytes = (numel[:, None] * bits[None, :] // 8 + 16).astype(np.int64)
    loss = rng.lognormal(0, 1, n)[:, None] * numel[:, None] * 4.0 ** (-bits[None, :])
    return AllocationProblem(
        units=units,
        candidates=tuple(f"rtn-w{b}g32-sym" for b in bits),
        loss=loss,
        nbytes=nbytes,
        feasible=np.ones((n, len(bits)), dtype=bool),
        numel=numel.astype(np.int64),
        tie=np.arange(n, dtype=np.int64),
    )


def test_unit_labels_by_type_depth_unit_and_all():
    units = [f"model.layers.{i}.self_attn.{t}" for i in range(6) for t in ("q_proj", "o_proj")] + ["lm_head"]
    assert unit_labels(units, "type").tolist()[:3] == ["q_proj", "o_proj", "q_proj"]
    depth = unit_labels(units, "type-depth:3").tolist()
    assert depth[0] == "q_proj@0" and depth[4] == "q_proj@1" and depth[11] == "o_proj@2"
    assert depth[-1] == "lm_head"  # no layer index: its type alone
    assert unit_labels(units, "unit").tolist() == units
    assert set(unit_labels(units, "all")) == {"all"}
    for bad in ("layer", "type-depth:0", "type-depth:x"):
        with pytest.raises(InvalidInput, match="unknown grouping"):
            unit_labels(units, bad)


def test_known_scales_are_recovered_and_the_refit_plan_is_the_true_optimum():
    problem = layered()
    labels = unit_labels(problem.units, "type")
    truth = np.array([0.5, 3.0, 1.2])

    def measure(choices):
        return label_errors(problem, np.stack(choices), labels) @ truth

    budget = Budget(target_bpw=3.5)
    loop = closed_loop(problem, budget, measure, labels=labels, rounds=2, ridge=0.0, solver="milp")
    assert loop.labels == TYPES
    np.testing.assert_allclose(loop.rounds[1].scales, truth, rtol=1e-8)
    best_true = solve(rescale(problem, labels, truth), budget, solver="milp")
    assert loop.rounds[1].measured == pytest.approx(best_true.objective, rel=1e-12)
    assert loop.rounds[1].measured < loop.rounds[0].measured  # the profile alone was wrong by 6x
    assert loop.best == 1 and loop.solution is loop.rounds[1].solution
    # 1 first plan + 3 probes + the refit plan, every one measured once
    assert loop.choices.shape == (5, len(problem.units)) and loop.measured.shape == (5,)


def test_the_default_ridge_stays_close_and_a_uniform_truth_keeps_the_first_plan():
    problem = layered(seed=1)
    labels = unit_labels(problem.units, "type-depth:2")
    rng = np.random.default_rng(3)
    truth = rng.uniform(0.2, 4.0, 6)
    choices = [solve(problem, Budget(target_bpw=b)).choice for b in (3.0, 3.5, 4.0)]
    choices += probe_choices(problem, choices[1], labels, direction="both")
    errors = label_errors(problem, np.stack(choices), labels)
    np.testing.assert_allclose(fit_scales(errors, errors @ truth), truth, rtol=0.05)
    # every label equally scaled: the refit solves the same problem, so the first plan comes back
    same = closed_loop(
        problem,
        Budget(target_bpw=3.0),
        lambda c: 2.0 * label_errors(problem, np.stack(c), labels).sum(1),
        labels=labels,
    )
    assert np.array_equal(same.rounds[1].solution.choice, same.rounds[0].solution.choice)
    assert same.best == 0 and len(same.measured) == 1 + len(same.choices) - 1


def test_the_intercept_makes_scales_local_rates():
    problem = layered(seed=5)
    labels = unit_labels(problem.units, "type")
    truth = np.array([2.0, 0.5, 1.0])
    base = solve(problem, Budget(target_bpw=3.5)).choice
    choices = [base, *probe_choices(problem, base, labels, direction="both")]
    errors = label_errors(problem, np.stack(choices), labels)
    offset = 0.3 * float(errors[0] @ truth)  # a loss floor the errors do not explain
    np.testing.assert_allclose(fit_scales(errors, offset + errors @ truth, ridge=0.0), truth, rtol=1e-6)
    through_zero = fit_scales(errors, offset + errors @ truth, ridge=0.0, intercept=False)
    assert np.abs(through_zero / truth - 1).max() > 0.05
    # a loss that grows faster than the errors (here over 4x error steps): with the intercept every
    # label keeps a positive scale in the true order; through zero, one label's scale collapses to 0
    squared = (errors @ truth) ** 2
    fitted = fit_scales(errors, squared)
    assert (fitted > 0).all() and fitted[0] > fitted[2] > fitted[1]
    assert (fit_scales(errors, squared, intercept=False) == 0).any()


def test_probes_move_exactly_one_label_one_step():
    problem = layered(seed=2, layers=3)
    labels = unit_labels(problem.units, "type")
    base = solve(problem, Budget(target_bpw=4.0)).choice
    rows = np.arange(len(base))
    for direction, sign in (("down", -1), ("up", 1)):
        probes = probe_choices(problem, base, labels, direction=direction)
        assert len(probes) == 3
        for probe, label in zip(probes, TYPES, strict=True):
            moved = probe != base
            assert moved.any() and set(labels[moved]) == {label}
            delta = problem.nbytes[rows, probe] - problem.nbytes[rows, base]
            assert (np.sign(delta[moved]) == sign).all()
    top = np.full(len(base), len(problem.candidates) - 1)
    assert probe_choices(problem, top, labels, direction="up") == []  # nothing above the top
    with pytest.raises(InvalidInput, match="direction"):
        probe_choices(problem, base, labels, direction="sideways")


def test_ties_move_together_in_probes():
    problem = layered(seed=4, layers=2)
    tie = np.arange(len(problem.units))
    tie[1] = 0  # k_proj of layer 0 tied to q_proj of layer 0
    from dataclasses import replace

    tied = replace(problem, tie=tie)
    base = solve(tied, Budget(target_bpw=4.0)).choice
    for probe in probe_choices(tied, base, unit_labels(tied.units, "type"), direction="both"):
        assert probe[0] == probe[1]


@settings(max_examples=40, deadline=None)
@given(problems(max_units=5, max_candidates=4), st.floats(0, 1), st.integers(0, 2**31), st.integers(2, 3))
def test_never_worse_on_the_measured_data(problem, fraction, seed, rounds):
    lo, hi = problem.byte_range()
    budget = Budget(max_bytes=max(lo + int(fraction * (hi - lo)), 1))
    labels = np.array([f"g{i % 2}" for i in range(len(problem.units))], dtype=object)
    rng = np.random.default_rng(seed)
    weight = rng.uniform(0, 3, problem.loss.shape)  # loss the profile gets wrong, per unit and candidate

    def measure(choices):
        rows = np.arange(len(problem.units))
        return np.array([np.sum(weight[rows, c] * problem.loss[rows, c]) ** 1.3 for c in choices])

    loop = closed_loop(problem, budget, measure, labels=labels, rounds=rounds, direction="both")
    assert len(loop.rounds) == rounds
    assert loop.rounds[loop.best].measured <= loop.rounds[0].measured
    assert loop.rounds[loop.best].measured == min(r.measured for r in loop.rounds)
    limit = budget.to_bytes(problem)
    rows = np.arange(len(problem.units))
    for r in loop.rounds:
        assert int(problem.nbytes[rows, r.solution.choice].sum()) <= limit
        assert r.measured == pytest.approx(measure([r.solution.choice])[0])
        assert r.scales is None or (r.scales >= 0).all()


def test_bad_input_names_the_fix():
    problem = layered()
    labels = unit_labels(problem.units, "type")
    budget = Budget(target_bpw=3.0)
    with pytest.raises(InvalidInput, match="one finite non-negative loss per plan"):
        closed_loop(problem, budget, lambda c: np.zeros(len(c) + 1), labels=labels)
    with pytest.raises(InvalidInput, match="one finite non-negative loss per plan"):
        closed_loop(problem, budget, lambda c: np.full(len(c), np.nan), labels=labels)
    with pytest.raises(InvalidInput, match="labels has shape"):
        closed_loop(problem, budget, lambda c: np.ones(len(c)), labels=labels[:-1])
    with pytest.raises(InvalidInput, match="rounds"):
        closed_loop(problem, budget, lambda c: np.ones(len(c)), labels=labels, rounds=0)
    with pytest.raises(InvalidInput, match="do not match"):
        fit_scales(np.ones((3, 2)), np.ones(2))
    with pytest.raises(InvalidInput, match="non-negative"):
        fit_scales(np.ones((3, 2)), -np.ones(3))
