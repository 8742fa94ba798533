"""Hand-made plans for tests: a given candidate per unit over a profile with exact bytes."""

from __future__ import annotations

import numpy as np
import pandas as pd

from bitalloc.allocator.plan import Plan, plan_from_solution
from bitalloc.allocator.problem import Solution
from bitalloc.models.units import unquantized_bytes
from bitalloc.quantizers.candidate import Candidate
from bitalloc.sensitivity.profile import SensitivityProfile


def manual_plan(loaded, units, names: list[str]) -> Plan:
    """A plan giving ``names[i]`` to ``units[i]`` over a hand-built profile with exact bytes."""
    palette = sorted(set(names))
    rows = []
    for u in units:
        for c in palette:
            rows.append((u.name, u.tie, *u.shape, c, 1.0, Candidate.parse(c).nbytes(u.shape)))
    table = pd.DataFrame(rows, columns=["unit", "tie", "rows", "cols", "candidate", "error", "nbytes"])
    meta = {
        "model_hash": loaded.model_hash,
        "corpus_hash": "-",
        "palette": palette,
        "unquantized_bytes": unquantized_bytes(loaded.model, units),
    }
    profile = SensitivityProfile(table=table, meta=meta)
    choice = np.array([palette.index(n) for n in names], dtype=np.int64)
    nbytes = sum(Candidate.parse(n).nbytes(u.shape) for n, u in zip(names, units, strict=True))
    return plan_from_solution(profile, Solution(choice, 1.0, nbytes, 1.0, 0.0, "manual", "manual", 0.0), None)
