"""Study definitions: a TOML file, parsed into frozen dataclasses and refused by name when wrong.

TOML, not a Python file: a definition is data that every worker (on any machine) reads the same way,
it can be validated completely before a trial runs (unknown keys and empty choices are named), and
running a study never executes code from the definition file.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from bitalloc.errors import InvalidInput

PARAMETERS = {
    "kinds": "quantizer families of the palette, e.g. [['gptq'], ['rtn', 'gptq']]",
    "bits": "bit widths of the palette, e.g. [[2, 3, 4, 8], [3, 4, 5, 6, 8]]",
    "group_sizes": "group sizes of the palette, e.g. [[32], [32, 64]]",
    "symmetry": "'sym', 'asym' or 'both'",
    "metric": "sensitivity metric (see bitalloc.study.metrics)",
    "calibration_windows": "number of calibration windows",
    "calibration_seq_len": "tokens per calibration window",
    "pins": "name of a [pins.NAME] rule or 'none'",
    "budget_bpw": "average bits per weight of the quantized units",
}
DEFAULTS = {
    "kinds": ("rtn", "gptq"),
    "bits": (2, 3, 4, 5, 6, 8),
    "group_sizes": (32, 64, 128),
    "symmetry": "both",
    "metric": "fisher",  # the project default (bitalloc.sensitivity.metrics.DEFAULT_METRIC)
    "calibration_windows": 32,
    "calibration_seq_len": 512,
    "pins": "none",
    "budget_bpw": 3.5,
}
OBJECTIVES = ("perplexity", "kl", "bytes", "bpw", "latency")
SAMPLERS = ("tpe", "nsga2", "random")
STUDY_KEYS = {
    "name",
    "model",
    "layers",
    "corpus",
    "objectives",
    "n_trials",
    "seed",
    "sampler",
    "storage",
    "grace_s",
}
EVAL_KEYS = {"max_tokens", "context", "stride"}
PIN_KEYS = {"layers", "units", "min_bits"}


class StudyDefinitionError(InvalidInput):
    """A study definition with an unknown key, an empty choice list or a malformed value."""


@dataclass(frozen=True)
class Dimension:
    """One searched parameter: categorical ``choices`` or a float range ``low..high`` by ``step``."""

    name: str
    choices: tuple | None = None
    low: float | None = None
    high: float | None = None
    step: float | None = None


@dataclass(frozen=True)
class PinRule:
    """Units of the listed layers (negative counts from the end) or matching regexes keep >= min_bits."""

    name: str
    layers: tuple[int, ...] = ()
    units: tuple[str, ...] = ()
    min_bits: int = 8


@dataclass(frozen=True)
class StudyDefinition:
    """A parsed study: what to search, how to measure it and where trials are stored."""

    name: str
    path: Path
    model: str = "smollm2-135m"
    layers: int = 0  # 0: the whole model; N: only the first N decoder layers (smoke studies)
    corpus: str = "wiki"
    objectives: tuple[str, ...] = ("perplexity", "bytes")
    n_trials: int = 20
    seed: int = 0
    sampler: str = "tpe"
    storage: str = ""
    grace_s: int = 90  # a worker silent this long is dead: its running trial is failed and retried once
    max_tokens: int = 2048
    context: int = 512
    stride: int = 256
    space: tuple[Dimension, ...] = ()
    fixed: dict = field(default_factory=dict)
    pins: dict[str, PinRule] = field(default_factory=dict)
    baselines: tuple[dict, ...] = ()

    @property
    def folder(self) -> Path:
        """Where this study's results live: ``studies/NAME/`` beside the definition."""
        return self.path.parent / self.name

    @property
    def storage_url(self) -> str:
        """The Optuna RDB URL: the definition's, else SQLite in the study folder."""
        return self.storage or f"sqlite:///{self.folder / 'study.db'}"


def _fail(where: str, message: str) -> StudyDefinitionError:
    return StudyDefinitionError(f"{where}: {message}")


def _check_keys(table: dict, known: set[str], where: str) -> None:
    for key in table:
        if key not in known:
            raise _fail(f"{where}.{key}", f"unknown key; known keys: {', '.join(sorted(known))}")


def _choice(value, name: str):
    """A choice as Optuna stores it: scalars as they are, lists as tuples (labelled later)."""
    if isinstance(value, list):
        if not value:
            raise _fail(f"space.{name}", "a choice is an empty list; remove it or give values")
        return tuple(value)
    return value


def _dimension(name: str, value) -> tuple[Dimension | None, object]:
    """(the searched dimension, None) or (None, the fixed value) when ``value`` has one choice."""
    if name not in PARAMETERS:
        known = ", ".join(PARAMETERS)
        raise _fail(f"space.{name}", f"unknown parameter; known parameters: {known}")
    if isinstance(value, dict):
        _check_keys(value, {"low", "high", "step"}, f"space.{name}")
        try:
            low, high, step = float(value["low"]), float(value["high"]), float(value.get("step", 0.25))
        except KeyError as exc:
            raise _fail(f"space.{name}", f"a range needs {exc.args[0]!r}") from None
        if not (low <= high and step > 0):
            raise _fail(f"space.{name}", f"empty range low={low} high={high} step={step}")
        return (Dimension(name, low=low, high=high, step=step), None) if low < high else (None, low)
    if isinstance(value, list):
        if not value:
            raise _fail(f"space.{name}", "empty list of choices; give at least one value")
        choices = tuple(_choice(v, name) for v in value)
        if name in ("kinds", "bits", "group_sizes") and not all(isinstance(c, tuple) for c in choices):
            choices = (tuple(value),)  # a plain list fixes the set: [2, 3, 4] means one palette
        return (Dimension(name, choices=choices), None) if len(choices) > 1 else (None, choices[0])
    return None, value


def _positive_int(value, where: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise _fail(where, f"must be a positive whole number, got {value!r}")
    return value


def parse_definition(doc: dict, path: Path) -> StudyDefinition:
    """Validate a TOML document; every refusal names the key at fault."""
    _check_keys(doc, {"study", "evaluation", "space", "pins", "baseline"}, "definition")
    study = doc.get("study", {})
    _check_keys(study, STUDY_KEYS, "study")
    evaluation = doc.get("evaluation", {})
    _check_keys(evaluation, EVAL_KEYS, "evaluation")
    pins = {}
    for name, rule in doc.get("pins", {}).items():
        _check_keys(rule, PIN_KEYS, f"pins.{name}")
        pins[name] = PinRule(
            name, tuple(rule.get("layers", ())), tuple(rule.get("units", ())), rule.get("min_bits", 8)
        )
    space_doc = doc.get("space", {})
    dims, fixed = [], dict(DEFAULTS)
    for key, value in space_doc.items():
        dim, value = _dimension(key, value)
        if dim is None:
            fixed[key] = value
        else:
            dims.append(dim)
            fixed.pop(key)
    if not dims:
        raise _fail(
            "space", f"empty search space: give at least one of {', '.join(PARAMETERS)} two or more choices"
        )
    for pin in [fixed.get("pins")] + [c for d in dims if d.name == "pins" for c in d.choices or ()]:
        if pin is not None and pin != "none" and pin not in pins:
            raise _fail("space.pins", f"no rule [pins.{pin}]; define it or use 'none'")
    objectives = tuple(study.get("objectives", ("perplexity", "bytes")))
    for obj in objectives:
        if obj not in OBJECTIVES:
            raise _fail("study.objectives", f"unknown objective {obj!r}; known: {', '.join(OBJECTIVES)}")
    if len(objectives) < 2:
        raise _fail("study.objectives", "a multi-objective study needs at least two objectives")
    sampler = study.get("sampler", "tpe")
    if sampler not in SAMPLERS:
        raise _fail("study.sampler", f"unknown sampler {sampler!r}; known: {', '.join(SAMPLERS)}")
    baselines = tuple(doc.get("baseline", ()))
    for i, base in enumerate(baselines):
        _check_keys(base, set(PARAMETERS), f"baseline[{i}]")
    name = study.get("name", path.stem)
    return StudyDefinition(
        name=name,
        path=path,
        model=study.get("model", "smollm2-135m"),
        layers=int(study.get("layers", 0)),
        corpus=study.get("corpus", "wiki"),
        objectives=objectives,
        n_trials=_positive_int(study.get("n_trials", 20), "study.n_trials"),
        seed=int(study.get("seed", 0)),
        sampler=sampler,
        storage=study.get("storage", ""),
        grace_s=_positive_int(study.get("grace_s", 90), "study.grace_s"),
        max_tokens=_positive_int(evaluation.get("max_tokens", 2048), "evaluation.max_tokens"),
        context=_positive_int(evaluation.get("context", 512), "evaluation.context"),
        stride=_positive_int(evaluation.get("stride", 256), "evaluation.stride"),
        space=tuple(dims),
        fixed=fixed,
        pins=pins,
        baselines=baselines,
    )


def load_definition(path: Path | str) -> StudyDefinition:
    """Read and validate ``studies/NAME.toml``."""
    path = Path(path).resolve()
    if not path.exists():
        raise StudyDefinitionError(f"no study definition at {path}; write studies/NAME.toml")
    try:
        doc = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise StudyDefinitionError(f"{path} is not valid TOML: {exc}") from None
    return parse_definition(doc, path)
