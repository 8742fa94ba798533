"""Requests to allocator calls: profiles kept solve-ready in memory, constraints as feasibility masks,
plans, frontiers and plan comparison. Everything goes through the allocator's public functions."""

from __future__ import annotations

import re
import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from functools import cached_property

import numpy as np
import pandas as pd

from bitalloc.allocator.frontier import frontier
from bitalloc.allocator.plan import Plan, plan_from_solution
from bitalloc.allocator.problem import AllocationProblem, Budget
from bitalloc.allocator.solve import solve
from bitalloc.errors import InvalidInput
from bitalloc.quantizers.candidate import Candidate
from bitalloc.sensitivity.profile import COLUMNS, SensitivityProfile
from bitalloc.service.schemas import BitsConstraint, CandidatesConstraint, ProfileUpload


@dataclass(frozen=True, eq=False)
class StoredProfile(SensitivityProfile):
    """A profile read back from the store: its hash was checked on the way in, its problem is built once."""

    digest: str = field(default="")

    @cached_property
    def content_hash(self) -> str:  # type: ignore[override]
        """The hash recorded (and verified) when the profile was stored."""
        return self.digest

    @cached_property
    def problem(self) -> AllocationProblem:
        """``to_problem()``, built once."""
        return SensitivityProfile.to_problem(self)

    def to_problem(self) -> AllocationProblem:
        """The cached allocation problem."""
        return self.problem


class ProfileCache:
    """The last ``size`` profiles used, solve-ready; safe to share between request threads."""

    def __init__(self, size: int) -> None:
        self._size = size
        self._items: OrderedDict[str, StoredProfile] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, digest: str, load: Callable[[], SensitivityProfile]) -> StoredProfile:
        """The cached profile ``digest``, loading it with ``load`` on a miss."""
        with self._lock:
            if digest in self._items:
                self._items.move_to_end(digest)
                return self._items[digest]
        loaded = load()
        stored = StoredProfile(table=loaded.table, meta=loaded.meta, digest=digest)
        stored.problem  # noqa: B018 - build outside the lock, once
        with self._lock:
            self._items[digest] = stored
            while len(self._items) > self._size:
                self._items.popitem(last=False)
        return stored


def profile_from_upload(upload: ProfileUpload) -> SensitivityProfile:
    """The uploaded profile, checked against its declared hash (InvalidInput naming the mismatch)."""
    lengths = {name: len(values) for name, values in upload.table.items()}
    missing = sorted(set(COLUMNS) - set(lengths))
    if missing:
        raise InvalidInput(f"profile table lacks columns {missing}; send all of {list(COLUMNS)}")
    if len(set(lengths.values())) != 1:
        raise InvalidInput(f"profile table columns differ in length: {lengths}; send one entry per row")
    try:
        table = pd.DataFrame({c: upload.table[c] for c in COLUMNS}).astype(COLUMNS)
    except (TypeError, ValueError) as exc:
        raise InvalidInput(f"profile table has a value of the wrong type: {exc}") from None
    if table.empty:
        raise InvalidInput("profile table has no rows")
    meta = {k: v for k, v in upload.meta.items() if k not in ("profile_hash", "schema")}
    profile = SensitivityProfile(table=table, meta=meta)
    actual = profile.content_hash
    if actual != upload.profile_hash:
        raise InvalidInput(
            f"profile_hash {upload.profile_hash} does not match the content (its hash is {actual}); "
            "send the profile unchanged with the hash `bitalloc profile` wrote into its .json"
        )
    profile.to_problem()  # refuse profiles the allocator cannot use (NaN errors, empty units)
    return profile


def constrain(
    problem: AllocationProblem, constraints: Sequence[BitsConstraint | CandidatesConstraint]
) -> AllocationProblem:
    """``problem`` with the candidates each constraint forbids marked infeasible."""
    if not constraints:
        return problem
    feasible = problem.feasible.copy()
    for rule in constraints:
        try:
            pattern = re.compile(rule.units)
        except re.error as exc:
            raise InvalidInput(
                f"constraint units {rule.units!r} is not a regular expression: {exc}"
            ) from None
        rows = np.array([pattern.search(u) is not None for u in problem.units])
        if not rows.any():
            raise InvalidInput(
                f"constraint units {rule.units!r} matches no unit; units look like {problem.units[0]!r}"
            )
        feasible[rows] &= _allowed(problem.candidates, rule)[None, :]
    return replace(problem, feasible=feasible)


def _allowed(candidates: tuple[str, ...], rule: BitsConstraint | CandidatesConstraint) -> np.ndarray:
    if isinstance(rule, CandidatesConstraint):
        unknown = sorted(set(rule.allow) - set(candidates))
        if unknown:
            raise InvalidInput(f"candidates {unknown} are not in the profile's palette {list(candidates)}")
        return np.array([c in rule.allow for c in candidates])
    if rule.min_bits is None and rule.max_bits is None:
        raise InvalidInput("a bits constraint needs min_bits, max_bits or both")
    bits = np.array([Candidate.parse(c).bits for c in candidates])
    low = rule.min_bits if rule.min_bits is not None else 0
    high = rule.max_bits if rule.max_bits is not None else 64
    if low > high:
        raise InvalidInput(f"min_bits {low} is above max_bits {high}")
    return (bits >= low) & (bits <= high)


def make_plan(
    profile: StoredProfile,
    budget: Budget,
    constraints: Sequence[BitsConstraint | CandidatesConstraint],
    *,
    solver: str,
    time_limit: float | None,
) -> Plan:
    """Solve the (constrained) problem of ``profile`` under ``budget`` and build the Plan."""
    problem = constrain(profile.to_problem(), constraints)
    solution = solve(problem, budget, solver=solver, time_limit=time_limit)
    return plan_from_solution(profile, solution, budget)


def make_frontier(
    profile: StoredProfile,
    budgets: Sequence[Budget],
    constraints: Sequence[BitsConstraint | CandidatesConstraint],
    *,
    solver: str,
) -> list[dict]:
    """One JSON-ready row per budget, in the given order."""
    problem = constrain(profile.to_problem(), constraints)
    df = frontier(problem, budgets, solver=solver)
    return [
        {k: (v.item() if isinstance(v, np.generic) else v) for k, v in row.items()}
        for row in df.to_dict(orient="records")
    ]


def compare_plans(a: dict, b: dict) -> dict:
    """Two bitalloc.plan/v1 documents side by side: totals and every unit whose candidate differs."""
    units_a = {c["unit"]: c for c in a["assignment"]}
    units_b = {c["unit"]: c for c in b["assignment"]}
    empty = {"candidate": None, "nbytes": 0, "error": 0.0}
    differences = []
    for unit in list(units_a) + [u for u in units_b if u not in units_a]:
        ca, cb = units_a.get(unit, empty), units_b.get(unit, empty)
        if ca["candidate"] != cb["candidate"]:
            differences.append(
                {
                    "unit": unit,
                    "a": ca["candidate"],
                    "b": cb["candidate"],
                    "bytes_a": ca["nbytes"],
                    "bytes_b": cb["nbytes"],
                    "error_a": ca["error"],
                    "error_b": cb["error"],
                }
            )
    ta, tb = a["totals"], b["totals"]
    return {
        "same_profile": a["profile_hash"] == b["profile_hash"],
        "bytes_a": ta["bytes"],
        "bytes_b": tb["bytes"],
        "bytes_diff": tb["bytes"] - ta["bytes"],
        "bpw_a": ta["bpw"],
        "bpw_b": tb["bpw"],
        "predicted_error_a": ta["predicted_error"],
        "predicted_error_b": tb["predicted_error"],
        "predicted_error_diff": tb["predicted_error"] - ta["predicted_error"],
        "units_differing": len(differences),
        "differences": differences,
    }
