"""Hypothesis strategies for small allocation problems, and brute force to check solvers against."""

from __future__ import annotations

import itertools

import numpy as np
from hypothesis import strategies as st

from bitalloc.allocator.problem import AllocationProblem


@st.composite
def problems(draw, max_units: int = 5, max_candidates: int = 5) -> AllocationProblem:
    """Random units x candidates with random feasibility, bytes, losses and tie groups."""
    n_units = draw(st.integers(1, max_units))
    n_cands = draw(st.integers(1, max_candidates))
    tie = np.array(draw(st.lists(st.integers(0, n_units - 1), min_size=n_units, max_size=n_units)))
    masks = {}
    for t in np.unique(tie):  # tied units share their feasibility mask, as in real palettes
        mask = draw(st.lists(st.booleans(), min_size=n_cands, max_size=n_cands))
        mask[draw(st.integers(0, n_cands - 1))] = True
        masks[t] = mask
    feasible = np.array([masks[t] for t in tie], dtype=bool)
    nbytes = np.array(draw(st.lists(st.integers(1, 100), min_size=n_units * n_cands, max_size=n_units * n_cands)))
    losses = draw(st.lists(st.floats(0, 1000, allow_nan=False), min_size=n_units * n_cands,
                           max_size=n_units * n_cands))
    return AllocationProblem(
        units=tuple(f"u{i}" for i in range(n_units)),
        candidates=tuple(f"c{j}" for j in range(n_cands)),
        loss=np.array(losses).reshape(n_units, n_cands),
        nbytes=nbytes.reshape(n_units, n_cands).astype(np.int64),
        feasible=feasible,
        numel=np.full(n_units, 64, dtype=np.int64),
        tie=tie.astype(np.int64),
    )


def brute_force(problem: AllocationProblem, max_bytes: int) -> float | None:
    """The optimal loss by enumeration (None when nothing fits)."""
    merged = problem.merged()
    options = [np.flatnonzero(row) for row in merged.feasible]
    best = None
    for combo in itertools.product(*options):
        rows = np.arange(len(combo))
        if merged.nbytes[rows, combo].sum() <= max_bytes:
            loss = float(merged.loss[rows, combo].sum())
            best = loss if best is None else min(best, loss)
    return best
