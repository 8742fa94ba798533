"""What ``bitalloc plan`` and ``bitalloc frontier`` need besides the solvers: option parsing, a problem with
latency and routing frequencies from a profile, and the plan itself with its explanation.

Budgets: ``--target-bpw`` and ``--max-bytes`` may be given together; both hold, so the smaller byte
limit wins. ``--max-latency`` sums a latency table over the units (the measured H100 table at batch 1
by default, or the analytic one of latency.py); ``--max-active-bytes`` weighs each unit's bytes by its
routing frequency from a CSV (``unit,frequency``; units not listed are dense, frequency 1).
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pandas as pd

from bitalloc.allocator.latency import analytic_latency
from bitalloc.allocator.plan import Plan, plan_from_solution
from bitalloc.allocator.problem import AllocationProblem, Budget
from bitalloc.allocator.solve import check_solver, solve
from bitalloc.errors import InvalidInput
from bitalloc.sensitivity.profile import SensitivityProfile

ANALYTIC = "analytic"


def parse_pairs(values: Sequence[str] | None, option: str, *, numeric: bool) -> dict[str, float | str]:
    """``["UNIT=VALUE", ...]`` -> {unit pattern: value}; a bare number (numeric options) means every unit."""
    out: dict[str, float | str] = {}
    for text in values or ():
        key, sep, value = text.partition("=")
        if not sep:
            key, value = "*", text
        key, value = key.strip(), value.strip()
        if not key or not value or (not numeric and not sep):
            raise InvalidInput(
                f"{option} {text!r}: write UNIT=VALUE (UNIT may be a glob such as 'model.layers.*')"
            )
        if numeric:
            try:
                bits = float(value)
            except ValueError:
                raise InvalidInput(f"{option} {text!r}: {value!r} is not a number of bits") from None
            if not (np.isfinite(bits) and bits > 0):
                raise InvalidInput(f"{option} {text!r}: bits must be a positive number")
            out[key] = bits
        else:
            out[key] = value
    return out


def make_budget(
    *,
    target_bpw: float | None = None,
    max_bytes: int | None = None,
    max_latency: float | None = None,
    max_active_bytes: float | None = None,
    min_bits: Sequence[str] | None = None,
    max_bits: Sequence[str] | None = None,
    pin: Sequence[str] | None = None,
) -> Budget:
    """A Budget from command-line values; InvalidInput naming the option at fault."""
    if all(v is None for v in (target_bpw, max_bytes, max_latency, max_active_bytes)):
        raise InvalidInput("give a budget: --target-bpw, --max-bytes, --max-latency or --max-active-bytes")
    return Budget(
        max_bytes=max_bytes,
        target_bpw=target_bpw,
        max_latency=max_latency,
        max_active_bytes=max_active_bytes,
        min_bits=parse_pairs(min_bits, "--min-bits", numeric=True),
        max_bits=parse_pairs(max_bits, "--max-bits", numeric=True),
        pinned=parse_pairs(pin, "--pin", numeric=False),
    )


def profile_latency(
    profile: SensitivityProfile, problem: AllocationProblem, table: str, batch: int
) -> np.ndarray:
    """(units, candidates) microseconds: ``table`` is 'analytic', 'measured' (the shipped H100 table),
    'measured-<device>' (another shipped table, e.g. 'measured-h200') or the path of a latency CSV written by
    ``benchmarks/kernels_speed.py --latency``."""
    if table == ANALYTIC:
        return analytic_latency(problem.candidates, problem.nbytes)
    from bitalloc.kernels.latency import LatencyTable, shipped_table
    from bitalloc.quantizers.candidate import Candidate

    lat = LatencyTable.load(shipped_table(table) if table.startswith("measured") else Path(table))
    first = profile.table.drop_duplicates("unit").set_index("unit")
    out = np.zeros(problem.loss.shape)
    for c, name in enumerate(problem.candidates):
        cand = Candidate.parse(name)
        for u, unit in enumerate(problem.units):
            if problem.feasible[u, c]:
                shape = (int(first.at[unit, "rows"]), int(first.at[unit, "cols"]))
                out[u, c] = lat.predict(cand, shape, batch)
    return out


def read_routing(path: Path, units: Sequence[str]) -> np.ndarray:
    """(units,) routing frequency of each unit from a ``unit,frequency`` CSV; units not listed get 1."""
    freq = dict.fromkeys(units, 1.0)
    try:
        with open(path, newline="") as f:
            for row in csv.DictReader(f):
                if row["unit"] not in freq:
                    raise InvalidInput(f"{path}: unit {row['unit']!r} is not in the profile")
                freq[row["unit"]] = float(row["frequency"])
    except FileNotFoundError:
        raise InvalidInput(f"no routing file at {path}; write a CSV with columns unit,frequency") from None
    except (KeyError, ValueError, TypeError) as exc:
        raise InvalidInput(f"{path} is not a unit,frequency CSV ({exc})") from None
    return np.array([freq[u] for u in units])


@dataclass(frozen=True)
class PlanRequest:
    """Everything ``bitalloc plan`` asks for besides the profile."""

    budget: Budget
    solver: str = "auto"
    latency_table: str = "measured"
    latency_batch: int = 1
    routing: Path | None = None


def plan_problem(profile: SensitivityProfile, request: PlanRequest) -> AllocationProblem:
    """The profile's problem with a latency table when the budget limits latency, and routing
    frequencies when it limits active bytes."""
    check_solver(request.solver)
    problem = profile.to_problem()
    if request.budget.max_latency is not None:
        if request.latency_batch < 1:
            raise InvalidInput(f"--latency-batch must be at least 1, got {request.latency_batch}")
        problem = replace(
            problem, latency=profile_latency(profile, problem, request.latency_table, request.latency_batch)
        )
    if request.budget.max_active_bytes is not None:
        active = (
            np.ones(len(problem.units))
            if request.routing is None
            else read_routing(request.routing, problem.units)
        )
        problem = replace(problem, active=active)
    return problem


def make_plan_with(
    profile: SensitivityProfile, request: PlanRequest, *, explain: bool = False
) -> tuple[Plan, pd.DataFrame | None]:
    """Solve the request's budget on ``profile``; with ``explain``, also the per-unit explanation table."""
    problem = plan_problem(profile, request)
    solution = solve(problem, request.budget, solver=request.solver)
    table = None
    if explain:
        from bitalloc.allocator.explain import explain as explain_plan

        table = explain_plan(problem, solution, request.budget)
    return plan_from_solution(profile, solution, request.budget), table
