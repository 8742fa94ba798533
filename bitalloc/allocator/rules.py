"""Per-unit rules of a Budget (min/max bits, pinned candidates) as a narrowed feasibility mask.

A candidate's bits are its code bits, read from its name (``-w<bits>`` as in ``gptq-w4g32-asym``);
for a name without them, the storage bits per weight ``8 * nbytes / numel``. Unit keys are exact
unit names or fnmatch patterns (``model.layers.0.*``); a key that matches no unit is an error.
"""

from __future__ import annotations

import fnmatch
import re
from dataclasses import replace

import numpy as np

from bitalloc.allocator.problem import AllocationProblem, Budget
from bitalloc.errors import InvalidInput

_BITS = re.compile(r"-w(\d+)")


def candidate_bits(problem: AllocationProblem) -> np.ndarray:
    """(units, candidates) float64 bits of each choice: code bits from the name, else storage bpw."""
    storage = 8.0 * problem.nbytes / np.maximum(problem.numel, 1)[:, None]
    named = np.array([float(m[1]) if (m := _BITS.search(c)) else np.nan for c in problem.candidates])
    return np.where(np.isnan(named)[None, :], storage, named[None, :])


def _matches(problem: AllocationProblem, key: str, rule: str) -> np.ndarray:
    hit = np.array([u == key or fnmatch.fnmatchcase(u, key) for u in problem.units], dtype=bool)
    if not hit.any():
        raise InvalidInput(f"{rule} names {key!r}, which matches no unit of the problem")
    return hit


def apply_rules(problem: AllocationProblem, budget: Budget) -> AllocationProblem:
    """``problem`` with only the candidates the budget's rules allow; InvalidInput naming the unit and
    rule when a unit (or tie group) is left with nothing."""
    if not budget.has_rules:
        return problem
    n = len(problem.units)
    lo, hi = np.zeros(n), np.full(n, np.inf)
    for key, bits in budget.min_bits:
        lo[_matches(problem, key, "min_bits")] = bits
    for key, bits in budget.max_bits:
        hi[_matches(problem, key, "max_bits")] = bits
    clash = lo > hi
    if clash.any():
        u = int(np.argmax(clash))
        raise InvalidInput(
            f"unit {problem.units[u]!r}: min_bits {lo[u]:g} is above max_bits {hi[u]:g}; "
            "the rules contradict each other"
        )
    bits = candidate_bits(problem)
    allowed = problem.feasible & (bits >= lo[:, None] - 1e-9) & (bits <= hi[:, None] + 1e-9)
    for key, name in budget.pinned:
        if name not in problem.candidates:
            raise InvalidInput(f"pinned {key!r} to {name!r}, which is not in the palette")
        hit = _matches(problem, key, "pinned")
        c = problem.candidates.index(name)
        keep = np.zeros(len(problem.candidates), dtype=bool)
        keep[c] = True
        bad = hit & ~allowed[:, c]
        if bad.any():
            u = int(np.argmax(bad))
            raise InvalidInput(
                f"unit {problem.units[u]!r} is pinned to {name!r}, which it cannot take "
                f"(unsupported shape or outside its bits range {lo[u]:g}..{hi[u]:g})"
            )
        allowed[hit] &= keep
    empty = ~allowed.any(axis=1)
    if empty.any():
        u = int(np.argmax(empty))
        own = bits[u, problem.feasible[u]]
        raise InvalidInput(
            f"unit {problem.units[u]!r} has no candidate within bits {lo[u]:g}..{hi[u]:g}; "
            f"its palette spans {own.min():g}..{own.max():g} bits"
        )
    return replace(problem, feasible=allowed)
