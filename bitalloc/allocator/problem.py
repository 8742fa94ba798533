"""The allocation problem as plain numpy arrays: no torch, no I/O."""

from __future__ import annotations

from dataclasses import dataclass

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
    """

    units: tuple[str, ...]
    candidates: tuple[str, ...]
    loss: np.ndarray
    nbytes: np.ndarray
    feasible: np.ndarray
    numel: np.ndarray
    tie: np.ndarray

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
        _, first, inverse = np.unique(self.tie, return_index=True, return_inverse=True)
        rank = np.empty(len(first), dtype=np.int64)
        rank[np.argsort(first, kind="stable")] = np.arange(len(first))
        return rank[inverse.reshape(-1)]

    def _group_order(self) -> tuple[np.ndarray, np.ndarray]:
        """Units sorted by tie group (stable), and where each group starts in that order."""
        gid = self.group_index()
        order = np.argsort(gid, kind="stable")
        starts = np.flatnonzero(np.diff(gid[order], prepend=-1))
        return order, starts

    def tie_groups(self) -> list[np.ndarray]:
        """Unit indices of each tie group, in order of first appearance (singletons included)."""
        order, starts = self._group_order()
        return np.split(order, starts[1:])

    def merged(self) -> AllocationProblem:
        """One row per tie group: losses and bytes summed, feasible only where every member is."""
        order, starts = self._group_order()
        feasible = np.logical_and.reduceat(self.feasible[order], starts, axis=0)
        empty = ~feasible.any(axis=1)
        if empty.any():
            members = [self.units[i] for i in np.split(order, starts[1:])[int(np.argmax(empty))]]
            raise InvalidInput(f"tie group {members} has no candidate that every member supports")
        loss = np.where(self.feasible, self.loss, 0.0)[order]
        nbytes = np.where(self.feasible, self.nbytes, 0)[order]
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
        )

    def byte_range(self) -> tuple[int, int]:
        """Smallest and largest total bytes any tie-consistent assignment can have."""
        m = self.merged()
        lo = np.where(m.feasible, m.nbytes, np.iinfo(np.int64).max).min(axis=1).sum()
        hi = np.where(m.feasible, m.nbytes, -1).max(axis=1).sum()
        return int(lo), int(hi)


@dataclass(frozen=True)
class Budget:
    """A limit on the quantized units: total bytes or average bits per weight (exactly one)."""

    max_bytes: int | None = None
    target_bpw: float | None = None

    def __post_init__(self) -> None:
        if (self.max_bytes is None) == (self.target_bpw is None):
            raise InvalidInput("give exactly one budget: max_bytes or target_bpw")
        if self.max_bytes is not None and self.max_bytes <= 0:
            raise InvalidInput(f"max_bytes must be positive, got {self.max_bytes}")
        if self.target_bpw is not None and not (np.isfinite(self.target_bpw) and self.target_bpw > 0):
            raise InvalidInput(f"target_bpw must be a positive number, got {self.target_bpw}")

    def to_bytes(self, problem: AllocationProblem) -> int:
        """The byte limit this budget puts on ``problem``."""
        if self.max_bytes is not None:
            return int(self.max_bytes)
        return problem.bytes_for_bpw(float(self.target_bpw))

    def describe(self) -> str:
        """Human-readable form, e.g. '3.5 bpw'."""
        return f"{self.max_bytes} bytes" if self.max_bytes is not None else f"{self.target_bpw:g} bpw"


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
