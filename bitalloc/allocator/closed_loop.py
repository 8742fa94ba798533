"""Closed loop: refit the profile's errors to measured loss, re-solve, keep the best measured plan.

Model: the measured loss of a plan (e.g. KL to the float model on calibration text) is
``sum_g s_g * E_g(plan)``, where ``E_g`` sums the profile's predicted errors of the units labelled g
(a layer type, a type within a depth band, or one unit) and ``s_g >= 0`` is that label's scale.

1. Solve the profile as it is (round 1) and measure that plan.
2. Probes: for each label, the round-1 plan with every tie group carrying that label moved one step
   (``down``: the cheaper candidate that adds the least loss per byte freed; ``up``: the dearer one that
   saves the most per byte; ``both``). Their measured differences identify each label's scale.
3. Fit the scales by non-negative least squares over every measurement, with a ridge pull toward the
   single common scale (weighted by how much each label's errors vary across the measurements, so a
   label the data pins down is hardly pulled), rescale the errors, solve again and measure (round 2).
   Each further round refits with every measurement so far.
4. Return the round whose plan measured least. Every round solves the same budget, so the result is
   never worse on the measured data than the first plan.

Numpy only: the caller supplies ``measure`` (see ``bitalloc.allocator.measure`` for KL on a model).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

import numpy as np
from scipy.optimize import nnls

from bitalloc.allocator.explain import step
from bitalloc.allocator.problem import AllocationProblem, Budget, Solution
from bitalloc.allocator.solve import solve
from bitalloc.errors import InvalidInput

Measure = Callable[[Sequence[np.ndarray]], np.ndarray]  # per-unit choices -> (plans,) measured loss
DIRECTIONS = ("down", "up", "both")
_LAYER = re.compile(r"(?:^|\.)(?:layers|h|blocks)\.(\d+)\.")


def unit_labels(units: Sequence[str], by: str) -> np.ndarray:
    """(units,) label of each unit: ``unit`` (its name), ``type`` (last name part, e.g. q_proj),
    ``type-depth:N`` (type and which of N equal depth bands its layer index falls in) or ``all``."""
    if by == "unit":
        return np.array(units, dtype=object)
    if by == "all":
        return np.array(["all"] * len(units), dtype=object)
    kinds = [u.rsplit(".", 1)[-1] for u in units]
    if by == "type":
        return np.array(kinds, dtype=object)
    if by.startswith("type-depth:") and by.split(":", 1)[1].isdigit() and int(by.split(":", 1)[1]) > 0:
        bands = int(by.split(":", 1)[1])
        depth = [int(m[1]) if (m := _LAYER.search(u)) else -1 for u in units]
        layers = max(depth) + 1
        return np.array(
            [k if d < 0 else f"{k}@{d * bands // max(layers, 1)}" for k, d in zip(kinds, depth, strict=True)],
            dtype=object,
        )
    raise InvalidInput(f"unknown grouping {by!r}; use unit, type, type-depth:N (e.g. type-depth:3) or all")


def label_errors(problem: AllocationProblem, choices: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """(plans, labels) summed predicted error per label of each (plans, units) choice; labels in
    order of first appearance."""
    names, index = _label_index(labels)
    choices = np.atleast_2d(choices)
    per_unit = problem.loss[np.arange(problem.loss.shape[0])[None, :], choices]  # (plans, units)
    out = np.zeros((choices.shape[0], len(names)))
    np.add.at(out.T, index, per_unit.T)
    return out


def _label_index(labels: np.ndarray) -> tuple[list[str], np.ndarray]:
    names = list(dict.fromkeys(labels.tolist()))
    where = {n: i for i, n in enumerate(names)}
    return names, np.array([where[x] for x in labels.tolist()], dtype=np.int64)


def fit_scales(
    errors: np.ndarray, measured: np.ndarray, *, ridge: float = 0.01, intercept: bool = True
) -> np.ndarray:
    """(labels,) non-negative scales s minimizing ``|c + errors @ s - measured|^2 + ridge * sum_g v_g^2
    (s_g - s0)^2``, where s0 is the best single common scale and v_g how much label g's errors vary
    across the measurements (its centred column norm; a tiny floor keeps an unvaried label at s0).

    ``intercept``: fit a free constant c too, so that the scales are the local rates of change of the
    measured loss (what the allocation depends on) even when the loss grows faster than linearly in the
    errors; without it the line goes through zero loss at zero error.
    """
    errors = np.asarray(errors, dtype=np.float64)
    measured = np.asarray(measured, dtype=np.float64)
    if errors.ndim != 2 or measured.shape != errors.shape[:1]:
        raise InvalidInput(f"errors {errors.shape} and measured {measured.shape} do not match")
    if not (np.isfinite(errors).all() and np.isfinite(measured).all()) or (measured < 0).any():
        raise InvalidInput("measured losses and errors must be finite, and losses non-negative")
    if ridge < 0:
        raise InvalidInput(f"ridge must be non-negative, got {ridge}")
    n, g = errors.shape
    total = errors.sum(axis=1)
    s0 = float(total @ measured / (total @ total)) if total @ total > 0 else 0.0
    centred = total - total.mean()
    if intercept and centred @ centred > 1e-24 * max(total @ total, 1e-300):
        s0 = max(float(centred @ (measured - measured.mean()) / (centred @ centred)), 0.0)
    spread = np.linalg.norm(errors - errors.mean(axis=0), axis=0)
    spread = np.maximum(spread, 1e-6 * max(float(spread.max()), float(np.abs(errors).max()), 1e-300))
    weight = np.sqrt(ridge) * spread
    a = np.vstack([errors, np.diag(weight)])
    b = np.concatenate([measured, weight * s0])
    if intercept:  # c = c_plus - c_minus, both non-negative columns, unpenalized
        ones = np.concatenate([np.ones(n), np.zeros(g)])[:, None]
        a = np.hstack([a, ones, -ones])
    norm = np.maximum(np.linalg.norm(a, axis=0), 1e-300)  # column scaling for a well-posed NNLS
    scaled, _ = nnls(a / norm, b, maxiter=50 * a.shape[1])
    return (scaled / norm)[:g]


def rescale(problem: AllocationProblem, labels: np.ndarray, scales: np.ndarray) -> AllocationProblem:
    """``problem`` with every unit's errors multiplied by its label's scale."""
    _, index = _label_index(labels)
    return replace(problem, loss=problem.loss * np.asarray(scales, dtype=np.float64)[index][:, None])


def probe_choices(
    problem: AllocationProblem, choice: np.ndarray, labels: np.ndarray, *, direction: str = "down"
) -> list[np.ndarray]:
    """Per label (and direction), ``choice`` with every tie group holding that label moved one step;
    labels whose groups cannot move that way give no probe, and equal probes are given once."""
    if direction not in DIRECTIONS:
        raise InvalidInput(f"unknown probe direction {direction!r}; use one of {', '.join(DIRECTIONS)}")
    m = problem.merged()
    gid = problem.group_index()
    first = np.zeros(len(m.units), dtype=np.int64)
    first[gid[::-1]] = np.arange(len(gid))[::-1]
    gchoice = choice[first]
    names, index = _label_index(labels)
    out = []
    for up in {"down": (False,), "up": (True,), "both": (False, True)}[direction]:
        target, _, _ = step(m, gchoice, up=up)
        for g in range(len(names)):
            hit = np.zeros(len(m.units), dtype=bool)
            hit[gid[index == g]] = True
            move = hit & (target >= 0)
            probe = np.where(move, target, gchoice)[gid].astype(np.int64)
            if move.any() and not any(np.array_equal(probe, o) for o in out):
                out.append(probe)  # tied labels (q/k/v of one fused group) give one probe
    return out


@dataclass(frozen=True, eq=False)
class LoopRound:
    """One solve: its solution (objective in that round's rescaled errors), the measured loss of its
    plan, and the label scales it was solved with (None for round 1: the profile as it is)."""

    solution: Solution
    measured: float
    scales: np.ndarray | None


@dataclass(frozen=True, eq=False)
class ClosedLoop:
    """Every round, the index of the best measured one, the labels, and every measurement taken.

    choices: (measurements, units) int64; measured: (measurements,) float64.
    """

    rounds: tuple[LoopRound, ...]
    best: int
    labels: tuple[str, ...]
    choices: np.ndarray
    measured: np.ndarray

    @property
    def solution(self) -> Solution:
        """The best measured round's solution."""
        return self.rounds[self.best].solution


def _measure(measure: Measure, choices: list[np.ndarray]) -> np.ndarray:
    got = np.asarray(measure(choices), dtype=np.float64).reshape(-1)
    if got.shape != (len(choices),) or not np.isfinite(got).all() or (got < 0).any():
        raise InvalidInput(
            f"measure returned {got!r} for {len(choices)} plans; it must give one finite non-negative "
            "loss per plan"
        )
    return got


def closed_loop(
    problem: AllocationProblem,
    budget: Budget,
    measure: Measure,
    *,
    labels: np.ndarray | Sequence[str],
    rounds: int = 2,
    direction: str = "down",
    ridge: float = 0.01,
    intercept: bool = True,
    solver: str = "auto",
) -> ClosedLoop:
    """Solve, measure, probe, refit the label scales and re-solve for ``rounds`` rounds in all (see the
    module docstring); ``labels`` gives each unit's label (``unit_labels``)."""
    labels = np.asarray(labels, dtype=object)
    if labels.shape != (len(problem.units),):
        raise InvalidInput(f"labels has shape {labels.shape}, expected ({len(problem.units)},)")
    if rounds < 1:
        raise InvalidInput(f"rounds must be at least 1, got {rounds}")
    first = solve(problem, budget, solver=solver)
    probes = probe_choices(problem, first.choice, labels, direction=direction) if rounds > 1 else []
    choices = [first.choice, *probes]
    measured = list(_measure(measure, choices))
    done = [LoopRound(first, measured[0], None)]
    for _ in range(rounds - 1):
        errors = label_errors(problem, np.stack(choices), labels)
        scales = fit_scales(errors, np.array(measured), ridge=ridge, intercept=intercept)
        sol = solve(rescale(problem, labels, scales), budget, solver=solver)
        seen = [i for i, c in enumerate(choices) if np.array_equal(c, sol.choice)]
        if seen:
            value = measured[seen[0]]
        else:
            value = float(_measure(measure, [sol.choice])[0])
            choices.append(sol.choice)
            measured.append(value)
        done.append(LoopRound(sol, value, scales))
    best = min(range(len(done)), key=lambda i: (done[i].measured, i))
    return ClosedLoop(
        rounds=tuple(done),
        best=best,
        labels=tuple(_label_index(labels)[0]),
        choices=np.stack(choices),
        measured=np.array(measured),
    )
