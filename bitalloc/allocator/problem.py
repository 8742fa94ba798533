"""The allocation problem as plain numpy arrays: no torch, no I/O."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np

from bitalloc.errors import InvalidInput


@dataclass(frozen=True, eq=False)
class AllocationProblem:
    """Choose one candidate per unit; tied units must choose the same candidate.

    loss:     (units, candidates) float64, predicted error of each choice (ignored where infeasible)
    nbytes:   (units, candidates) int64, exact storage of each choice (ignored where infeasible)
    feasible: (units, candidates) bool
    numel:    (units,) int64, parameters per unit, for bits per weight
    tie:      (units,) int64, units sharing a value must take the same candidate
    latency:  (units, candidates) float64 or None, time of each choice in microseconds (see latency.py)
    active:   (units,) float64 or None, how often each unit runs per token (MoE routing frequency;
              1.0 for dense units): "active bytes" weigh each unit's bytes by it
    """

    units: tuple[str, ...]
    candidates: tuple[str, ...]
    loss: np.ndarray
    nbytes: np.ndarray
    feasible: np.ndarray
    numel: np.ndarray
    tie: np.ndarray
    latency: np.ndarray | None = None
    active: np.ndarray | None = None

    def __post_init__(self) -> None:
        shape = (len(self.units), len(self.candidates))
        for name in ("loss", "nbytes", "feasible"):
            if getattr(self, name).shape != shape:
                raise InvalidInput(f"{name} has shape {getattr(self, name).shape}, expected {shape}")
        for name in ("numel", "tie"):
            if getattr(self, name).shape != shape[:1]:
                raise InvalidInput(f"{name} has shape {getattr(self, name).shape}, expected {shape[:1]}")
        if not self.candidates:
            raise InvalidInput("the palette is empty: give at least one candidate")
        loss = np.where(self.feasible, self.loss, 0.0)
        bad = ~np.isfinite(loss) | (loss < 0)
        if bad.any():
            u, c = np.argwhere(bad)[0]
            raise InvalidInput(
                f"unit {self.units[u]!r}, candidate {self.candidates[c]!r}: error {self.loss[u, c]} is not "
                "a finite non-negative number; re-profile or mark the candidate infeasible"
            )
        if (np.where(self.feasible, self.nbytes, 0) < 0).any():
            raise InvalidInput("negative byte costs in the problem")
        empty = ~self.feasible.any(axis=1)
        if empty.any():
            raise InvalidInput(f"unit {self.units[int(np.argmax(empty))]!r} has no feasible candidate")
        if self.latency is not None:
            if self.latency.shape != shape:
                raise InvalidInput(f"latency has shape {self.latency.shape}, expected {shape}")
            lat = np.where(self.feasible, self.latency, 0.0)
            bad = ~np.isfinite(lat) | (lat < 0)
            if bad.any():
                u, c = np.argwhere(bad)[0]
                raise InvalidInput(
                    f"unit {self.units[u]!r}, candidate {self.candidates[c]!r}: latency {self.latency[u, c]} "
                    "is not a finite non-negative number; fix the latency table"
                )
        if self.active is not None:
            if self.active.shape != shape[:1]:
                raise InvalidInput(f"active has shape {self.active.shape}, expected {shape[:1]}")
            bad = ~np.isfinite(self.active) | (self.active < 0)
            if bad.any():
                u = int(np.argmax(bad))
                raise InvalidInput(
                    f"unit {self.units[u]!r}: routing frequency {self.active[u]} is not a finite "
                    "non-negative number"
                )

    def group_sum(self, matrix: np.ndarray) -> np.ndarray:
        """(groups, candidates) sums of a (units, candidates) matrix over each tie group (merged order);
        entries where a unit's candidate is infeasible count as 0."""
        order, starts = self._group_order()
        return np.add.reduceat(np.where(self.feasible, matrix, 0)[order], starts, axis=0)

    @property
    def total_numel(self) -> int:
        """Parameters over all units."""
        return int(self.numel.sum())

    def bytes_for_bpw(self, bpw: float) -> int:
        """The byte budget that an average of ``bpw`` bits per weight over all units allows."""
        return int(np.floor(bpw * self.total_numel / 8 + 1e-9))

    def bpw_of_bytes(self, nbytes: int) -> float:
        """Average bits per weight of ``nbytes`` spread over all units."""
        return 8.0 * nbytes / self.total_numel

    def group_index(self) -> np.ndarray:
        """(units,) index of each unit's tie group, groups numbered in order of first appearance."""
        if len(self.tie) < 2 or bool((np.diff(self.tie) > 0).all()):
            return np.arange(len(self.tie), dtype=np.int64)
        _, first, inverse = np.unique(self.tie, return_index=True, return_inverse=True)
        rank = np.empty(len(first), dtype=np.int64)
        rank[np.argsort(first, kind="stable")] = np.arange(len(first))
        return rank[inverse.reshape(-1)]

    def _group_order(self) -> tuple[np.ndarray, np.ndarray]:
        """Units sorted by tie group (stable), and where each group starts in that order."""
        gid = self.group_index()
        if len(gid) < 2 or bool((np.diff(gid) > 0).all()):
            return gid, gid
        order = np.argsort(gid, kind="stable")
        starts = np.flatnonzero(np.diff(gid[order], prepend=-1))
        return order, starts

    def tie_groups(self) -> list[np.ndarray]:
        """Unit indices of each tie group, in order of first appearance (singletons included)."""
        order, starts = self._group_order()
        return np.split(order, starts[1:])

    def merged(self) -> AllocationProblem:
        """One row per tie group: losses and bytes summed, feasible only where every member is."""
        if len(self.tie) < 2 or bool((np.diff(self.tie) > 0).all()):  # no ties: every unit is its own group
            n = len(self.units)
            return AllocationProblem(
                units=self.units,
                candidates=self.candidates,
                loss=np.where(self.feasible, self.loss, 0.0),
                nbytes=np.where(self.feasible, self.nbytes, 0).astype(np.int64),
                feasible=self.feasible,
                numel=self.numel.astype(np.int64),
                tie=np.arange(n, dtype=np.int64),
                latency=None if self.latency is None else np.where(self.feasible, self.latency, 0.0),
            )
        order, starts = self._group_order()
        feasible = np.logical_and.reduceat(self.feasible[order], starts, axis=0)
        empty = ~feasible.any(axis=1)
        if empty.any():
            members = [self.units[i] for i in np.split(order, starts[1:])[int(np.argmax(empty))]]
            raise InvalidInput(f"tie group {members} has no candidate that every member supports")
        loss = np.where(self.feasible, self.loss, 0.0)[order]
        nbytes = np.where(self.feasible, self.nbytes, 0)[order]
        latency = (
            None
            if self.latency is None
            else np.add.reduceat(np.where(self.feasible, self.latency, 0.0)[order], starts, axis=0)
        )
        names = [self.units[i] for i in order]
        ends = [*starts[1:].tolist(), len(order)]
        return AllocationProblem(
            units=tuple("+".join(names[a:b]) for a, b in zip(starts.tolist(), ends, strict=True)),
            candidates=self.candidates,
            loss=np.add.reduceat(loss, starts, axis=0),
            nbytes=np.add.reduceat(nbytes, starts, axis=0).astype(np.int64),
            feasible=feasible,
            numel=np.add.reduceat(self.numel[order], starts).astype(np.int64),
            tie=np.arange(len(starts), dtype=np.int64),
            latency=latency,
        )

    def byte_range(self) -> tuple[int, int]:
        """Smallest and largest total bytes any tie-consistent assignment can have."""
        m = self.merged()
        lo = np.where(m.feasible, m.nbytes, np.iinfo(np.int64).max).min(axis=1).sum()
        hi = np.where(m.feasible, m.nbytes, -1).max(axis=1).sum()
        return int(lo), int(hi)


def _rule(value: float | Mapping[str, float] | None, name: str) -> tuple[tuple[str, float], ...]:
    """A bits rule as sorted (unit pattern, bits) pairs; a plain number applies to every unit ('*')."""
    if value is None:
        return ()
    pairs = [("*", value)] if not isinstance(value, Mapping) else list(value.items())
    for key, bits in pairs:
        if not (isinstance(bits, (int, float)) and np.isfinite(bits) and bits > 0):
            raise InvalidInput(f"{name} for {key!r} must be a positive number of bits, got {bits!r}")
    return tuple(sorted((str(k), float(b)) for k, b in pairs))


@dataclass(frozen=True)
class Budget:
    """Limits that hold at once on the quantized units, and per-unit rules.

    Limits (give at least one): ``max_bytes`` (total bytes), ``target_bpw`` (average bits per weight;
    with max_bytes too, the smaller byte limit counts), ``max_latency`` (summed latency table entries,
    microseconds; needs ``problem.latency``), ``max_active_bytes`` (bytes weighted by each unit's
    routing frequency; needs ``problem.active``).
    Rules: ``min_bits`` / ``max_bits`` (a number for every unit, or {unit or fnmatch pattern: bits}) on
    each candidate's code bits (see rules.py), ``pinned`` ({unit or pattern: candidate name}).
    """

    max_bytes: int | None = None
    target_bpw: float | None = None
    max_latency: float | None = None
    max_active_bytes: float | None = None
    min_bits: tuple[tuple[str, float], ...] | float | Mapping[str, float] | None = ()
    max_bits: tuple[tuple[str, float], ...] | float | Mapping[str, float] | None = ()
    pinned: tuple[tuple[str, str], ...] | Mapping[str, str] | None = field(default=())

    def __post_init__(self) -> None:
        limits = (self.max_bytes, self.target_bpw, self.max_latency, self.max_active_bytes)
        if all(v is None for v in limits):
            raise InvalidInput("give a budget: max_bytes, target_bpw, max_latency or max_active_bytes")
        if self.max_bytes is not None and self.max_bytes <= 0:
            raise InvalidInput(f"max_bytes must be positive, got {self.max_bytes}")
        if self.target_bpw is not None and not (np.isfinite(self.target_bpw) and self.target_bpw > 0):
            raise InvalidInput(f"target_bpw must be a positive number, got {self.target_bpw}")
        for name in ("max_latency", "max_active_bytes"):
            v = getattr(self, name)
            if v is not None and not (np.isfinite(v) and v > 0):
                raise InvalidInput(f"{name} must be a positive number, got {v}")
        for name in ("min_bits", "max_bits"):
            v = getattr(self, name)
            if not (isinstance(v, tuple) and all(isinstance(p, tuple) for p in v)):
                object.__setattr__(self, name, _rule(v, name))
        pinned = self.pinned
        if not isinstance(pinned, tuple):
            pinned = tuple(sorted((str(k), str(c)) for k, c in (pinned or {}).items()))
            object.__setattr__(self, "pinned", pinned)

    @property
    def has_rules(self) -> bool:
        """Whether the budget carries per-unit rules (bits ranges or pins)."""
        return bool(self.min_bits or self.max_bits or self.pinned)

    def to_bytes(self, problem: AllocationProblem) -> int:
        """The byte limit this budget puts on ``problem`` (the largest possible total when it has none)."""
        found = []
        if self.max_bytes is not None:
            found.append(int(self.max_bytes))
        if self.target_bpw is not None:
            found.append(problem.bytes_for_bpw(float(self.target_bpw)))
        if not found:
            return int(np.where(problem.feasible, problem.nbytes, 0).max(axis=1).sum())
        return min(found)

    def describe(self) -> str:
        """Human-readable form, e.g. '3.5 bpw' or '3.5 bpw, 120 us'."""
        parts = []
        if self.max_bytes is not None:
            parts.append(f"{self.max_bytes} bytes")
        if self.target_bpw is not None:
            parts.append(f"{self.target_bpw:g} bpw")
        if self.max_latency is not None:
            parts.append(f"{self.max_latency:g} us latency")
        if self.max_active_bytes is not None:
            parts.append(f"{self.max_active_bytes:g} active bytes")
        return ", ".join(parts)

    def to_json(self) -> dict:
        """The budget as a plain dict (for a Plan); rules only when set."""
        doc: dict = {"max_bytes": self.max_bytes, "target_bpw": self.target_bpw}
        if self.max_latency is not None:
            doc["max_latency"] = self.max_latency
        if self.max_active_bytes is not None:
            doc["max_active_bytes"] = self.max_active_bytes
        for name in ("min_bits", "max_bits", "pinned"):
            if getattr(self, name):
                doc[name] = dict(getattr(self, name))
        return doc


@dataclass(frozen=True, eq=False)
class Solution:
    """A solver's answer: the candidate index of each unit, and how good it provably is.

    choice: (units,) int64 candidate index per unit of the (unmerged) problem.
    bound:  a proven lower bound on the optimal loss (the LP bound, or the MILP dual bound).
    gap:    (objective - bound) / max(objective, tiny): 0 means certified optimal.
    """

    choice: np.ndarray
    objective: float
    nbytes: int
    bound: float
    gap: float
    status: str
    solver: str
    seconds: float
    usage: dict = field(default_factory=dict)  # resource name -> amount the plan uses
    prices: dict = field(default_factory=dict)  # resource name -> dual price (loss per unit of it)
