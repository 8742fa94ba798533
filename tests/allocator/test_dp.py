"""The exact knapsack DP used by the MILP solver, against enumeration."""

from __future__ import annotations

import itertools

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from bitalloc.allocator import dp
from bitalloc.allocator.dp import knapsack_dp


@st.composite
def pair_sets(draw):
    """Kept pairs of a few groups: every group has at least one pair; bytes share a random factor."""
    groups = draw(st.integers(1, 5))
    unit = draw(st.sampled_from([1, 3, 4096]))
    g, c, excess, extra = [], [], [], []
    for grp in range(groups):
        n = draw(st.integers(1, 4))
        cands = draw(st.lists(st.integers(0, 7), min_size=n, max_size=n, unique=True))
        for cand in cands:
            g.append(grp)
            c.append(cand)
            excess.append(draw(st.sampled_from([0.0, 0.5, 1.0, 2.0, 3.25, 7.0])))
            extra.append(unit * draw(st.integers(0, 9)))
    shuffle = draw(st.permutations(range(len(g))))
    arrays = (np.array(a)[list(shuffle)] for a in (g, c, excess, extra))
    g, c, excess, extra = arrays
    cap = unit * draw(st.integers(-1, 30)) + draw(st.integers(0, unit - 1))
    return g.astype(np.int64), c.astype(np.int64), excess.astype(float), extra.astype(np.int64), cap, groups


def enumerate_best(g, c, excess, extra, cap, groups) -> float | None:
    """Least total excess with total extra <= cap, by trying every combination."""
    options = [np.flatnonzero(g == k) for k in range(groups)]
    fits = [
        float(excess[list(pick)].sum())
        for pick in itertools.product(*options)
        if int(extra[list(pick)].sum()) <= cap
    ]
    return min(fits) if fits else None


@settings(max_examples=300, deadline=None)
@given(pair_sets())
def test_dp_matches_enumeration(case):
    g, c, excess, extra, cap, groups = case
    best = enumerate_best(*case)
    choice = knapsack_dp(g, c, excess, extra, cap, groups)
    if best is None:
        assert choice is None
        return
    assert choice is not None and choice.shape == (groups,)
    picked = [int(np.flatnonzero((g == k) & (c == choice[k]))[0]) for k in range(groups)]
    # a candidate may appear once per group, so (group, candidate) names one pair
    assert int(extra[picked].sum()) <= cap
    assert float(excess[picked].sum()) == best


def test_table_spans_only_the_reachable_totals(monkeypatch):
    # 300 groups, each choosing between neighbours 1 unit apart somewhere high in a huge budget: the old
    # table (groups x whole budget) would be 300 x 10^7 cells; the reachable span is 300 states.
    rng = np.random.default_rng(0)
    groups = 300
    g = np.repeat(np.arange(groups), 2)
    c = np.tile([0, 1], groups)
    base = rng.integers(1000, 2000, groups) * 4096
    extra = np.stack([base, base + 4096], axis=1).ravel()
    excess = np.stack([rng.random(groups) + 1, np.zeros(groups)], axis=1).ravel()
    cap = int(base.sum()) + 150 * 4096
    monkeypatch.setattr(dp, "MAX_CELLS", 100_000)
    choice = knapsack_dp(g, c, excess, extra, cap, groups)
    assert choice is not None
    gain = excess[0::2]  # moving a group up one unit saves its whole excess: the 150 largest move up
    assert set(np.flatnonzero(choice == 1).tolist()) == set(np.argsort(-gain)[:150].tolist())


def test_too_wide_a_table_declines():
    g = np.array([0, 0, 1, 1])
    c = np.array([0, 1, 0, 1])
    assert knapsack_dp(g, c, np.array([1.0, 0, 1, 0]), np.array([0, 1, 0, 10**9 + 7]), 10**10, 2) is None
