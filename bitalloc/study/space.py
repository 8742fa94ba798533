"""The search space: sample one trial's configuration, build its palette and its pinned feasibility."""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

from bitalloc.allocator.problem import AllocationProblem
from bitalloc.pipeline import CalibrationSettings
from bitalloc.quantizers.candidate import Candidate, QuantKind
from bitalloc.study.definition import Dimension, PinRule, StudyDefinition, StudyDefinitionError

SET_PARAMETERS = ("kinds", "bits", "group_sizes")
SYMMETRY = {"sym": (True,), "asym": (False,), "both": (True, False)}
PROFILED_KINDS = ("rtn", "gptq")  # what bitalloc.sensitivity.profiler scores
_LAYER = re.compile(r"\.layers\.(\d+)\.")


@dataclass(frozen=True)
class TrialConfig:
    """Everything one trial decides."""

    kinds: tuple[str, ...]
    bits: tuple[int, ...]
    group_sizes: tuple[int, ...]
    symmetry: str
    metric: str
    calibration: CalibrationSettings
    pins: str
    budget_bpw: float


def label(value) -> object:
    """A choice as Optuna stores it: sets as 'a,b,c' strings, scalars unchanged."""
    return ",".join(str(v) for v in value) if isinstance(value, tuple | list) else value


def _unlabel(name: str, value) -> object:
    if name in SET_PARAMETERS:
        parts = value.split(",") if isinstance(value, str) else list(value)
        return tuple(p if name == "kinds" else int(p) for p in parts)
    return value


def suggest(trial, dim: Dimension) -> object:
    """Ask ``trial`` (an optuna Trial) for ``dim``'s value."""
    if dim.choices is not None:
        return _unlabel(dim.name, trial.suggest_categorical(dim.name, [label(c) for c in dim.choices]))
    return trial.suggest_float(dim.name, dim.low, dim.high, step=dim.step)


def config_of(definition: StudyDefinition, values: dict) -> TrialConfig:
    """The trial configuration from sampled ``values`` plus the definition's fixed parameters."""
    v = {k: _unlabel(k, x) for k, x in definition.fixed.items()} | values
    for kind in v["kinds"]:
        if kind not in PROFILED_KINDS:
            raise StudyDefinitionError(
                f"space.kinds: {kind!r} is not profiled; known: {', '.join(PROFILED_KINDS)}"
            )
    if v["symmetry"] not in SYMMETRY:
        raise StudyDefinitionError(f"space.symmetry: {v['symmetry']!r}; known: {', '.join(SYMMETRY)}")
    calibration = CalibrationSettings(
        corpus=definition.corpus,
        n_windows=int(v["calibration_windows"]),
        seq_len=int(v["calibration_seq_len"]),
    )
    return TrialConfig(
        tuple(v["kinds"]),
        tuple(v["bits"]),
        tuple(v["group_sizes"]),
        v["symmetry"],
        v["metric"],
        calibration,
        v["pins"],
        float(v["budget_bpw"]),
    )


def sample(trial, definition: StudyDefinition) -> TrialConfig:
    """Sample every searched dimension of ``definition`` on ``trial``."""
    return config_of(definition, {d.name: suggest(trial, d) for d in definition.space})


def palette_of(config: TrialConfig) -> tuple[Candidate, ...]:
    """The candidates the trial's kinds x bits x group sizes x symmetry allow (may be empty)."""
    return tuple(
        Candidate(QuantKind(k), b, g, s)
        for k in config.kinds
        for b in sorted(config.bits)
        for g in sorted(config.group_sizes)
        for s in SYMMETRY[config.symmetry]
    )


def universe_palette(definition: StudyDefinition) -> tuple[Candidate, ...]:
    """Every candidate any trial can use: one profile per calibration setting covers all trials."""

    def values(name: str) -> set:
        dim = next((d for d in definition.space if d.name == name), None)
        choices = dim.choices if dim is not None else (definition.fixed[name],)
        out: set = set()
        for c in choices:
            out |= set(_unlabel(name, label(c))) if name in SET_PARAMETERS else {c}
        return out

    sym = {s for c in values("symmetry") for s in SYMMETRY[c]}
    return tuple(
        Candidate(QuantKind(k), b, g, s)
        for k in sorted(values("kinds"))
        for b in sorted(values("bits"))
        for g in sorted(values("group_sizes"))
        for s in sorted(sym, reverse=True)
    )


def pinned_units(units: tuple[str, ...], rule: PinRule) -> np.ndarray:
    """(units,) bool: the units ``rule`` pins (by layer index, negative from the end, or regex)."""
    layer = np.array([int(m.group(1)) if (m := _LAYER.search(u)) else -1 for u in units])
    n_layers = int(layer.max()) + 1
    wanted = {i % n_layers for i in rule.layers}
    mask = np.isin(layer, list(wanted))
    for pattern in rule.units:
        mask |= np.array([re.search(pattern, u) is not None for u in units])
    return mask


def pin(problem: AllocationProblem, rule: PinRule | None) -> AllocationProblem:
    """``problem`` with pinned units restricted to candidates of at least ``rule.min_bits`` bits."""
    if rule is None:
        return problem
    bits = np.array([Candidate.parse(c).bits for c in problem.candidates])
    allowed = bits[None, :] >= rule.min_bits  # (1, candidates)
    mask = pinned_units(problem.units, rule)[:, None]  # (units, 1)
    feasible = problem.feasible & (~mask | allowed)
    return AllocationProblem(
        problem.units, problem.candidates, problem.loss, problem.nbytes, feasible, problem.numel, problem.tie
    )
