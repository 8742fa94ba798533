"""The flow as library functions: calibrate (cached), profile, plan, apply, evaluate.

The CLI and the benchmarks call these; each step is a function of its inputs.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from bitalloc.allocator.plan import Plan, plan_from_solution
from bitalloc.allocator.problem import Budget
from bitalloc.allocator.solve import solve
from bitalloc.data.corpora import Split, load_corpus
from bitalloc.data.windows import calibration_windows, token_stream
from bitalloc.errors import InvalidInput
from bitalloc.evaluate.perplexity import EvalResult, evaluate_models
from bitalloc.models.loading import LoadedModel, cache_dir
from bitalloc.models.units import Unit, discover_units, unquantized_bytes
from bitalloc.quantizers.apply import apply_plan, needs_hessians
from bitalloc.quantizers.candidate import Candidate, QuantKind, default_palette
from bitalloc.sensitivity.calibrate import CalibrationStats, calibrate
from bitalloc.sensitivity.metrics import DEFAULT_METRIC
from bitalloc.sensitivity.profile import SensitivityProfile
from bitalloc.sensitivity.profiler import profile_model

Progress = Callable[[str, int, int], None]  # (step, done, total)


@dataclass(frozen=True)
class CalibrationSettings:
    """Which text calibrates, and how much of it."""

    corpus: str = "wiki"
    n_windows: int = 32
    seq_len: int = 512
    seed: int = 0


@dataclass(frozen=True)
class EvalSettings:
    """Held-out text and the strided-window protocol."""

    max_tokens: int = 16384
    context: int = 512
    stride: int = 256


def _quiet(step: str, done: int, total: int) -> None:
    pass


def get_calibration(
    loaded: LoadedModel,
    units: tuple[Unit, ...],
    settings: CalibrationSettings,
    progress: Progress = _quiet,
    *,
    streaming: bool = False,
) -> CalibrationStats:
    """Calibration statistics for ``loaded``; cached on disk by model hash and settings.

    ``streaming`` computes them one decoder layer at a time (the same sums, less activation memory).
    """
    corpus = load_corpus(settings.corpus, Split.CALIBRATION)
    key = hashlib.sha256(
        json.dumps(
            [loaded.model_hash, corpus.content_hash, asdict(settings), [u.name for u in units]]
        ).encode()
    ).hexdigest()[:24]
    path = cache_dir() / "calibration" / f"{key}.safetensors"
    if path.exists():
        return CalibrationStats.load(path, model_hash=loaded.model_hash)
    windows = calibration_windows(
        loaded.tokenizer, corpus, n_windows=settings.n_windows, seq_len=settings.seq_len, seed=settings.seed
    )
    if streaming:
        from bitalloc.sensitivity.streaming import calibrate_streaming

        stats = calibrate_streaming(
            loaded.model,
            units,
            windows,
            model_hash=loaded.model_hash,
            corpus_hash=corpus.content_hash,
            settings=asdict(settings),
            on_layer=lambda d, t: progress("calibrate", d, t),
        )
    else:
        stats = calibrate(
            loaded.model,
            units,
            windows,
            model_hash=loaded.model_hash,
            corpus_hash=corpus.content_hash,
            settings=asdict(settings),
            on_batch=lambda d, t: progress("calibrate", d, t),
        )
    stats.save(path)
    return stats


PIPELINE_METRICS = ("hessian", "fisher", "fisher_scaled", "awq", "slim", "weight_mse", "higgs")
SCORINGS = ("exact", "estimate")
ESTIMATED_METRICS = ("hessian", "fisher_scaled")


def run_profile(
    loaded: LoadedModel,
    settings: CalibrationSettings,
    *,
    palette: Sequence[Candidate] | None = None,
    progress: Progress = _quiet,
    streaming: bool = False,
    metric: str = DEFAULT_METRIC,
    scoring: str = "exact",
) -> SensitivityProfile:
    """Calibrate ``loaded`` and score every unit against ``palette`` (default: the foundation palette)
    with ``metric`` (one of PIPELINE_METRICS; the MoE routing metrics need bitalloc.sensitivity.experts).

    ``scoring="estimate"`` (metrics hessian and fisher_scaled) prices the RTN and GPTQ candidates in
    closed form (``sensitivity/estimate.py``) instead of quantizing each: no GPTQ run at all."""
    if metric not in PIPELINE_METRICS:
        raise InvalidInput(
            f"unknown or unsupported profile metric {metric!r}; choose one of {', '.join(PIPELINE_METRICS)}"
        )
    if scoring not in SCORINGS:
        raise InvalidInput(f"unknown scoring {scoring!r}; choose one of {', '.join(SCORINGS)}")
    if scoring == "estimate" and metric not in ESTIMATED_METRICS:
        raise InvalidInput(
            f"closed-form scoring covers the metrics {', '.join(ESTIMATED_METRICS)}, not {metric!r}; "
            "use scoring 'exact' for it"
        )
    palette = tuple(palette or default_palette())
    units = discover_units(loaded.model)
    stats = get_calibration(loaded, units, settings, progress, streaming=streaming)
    meta = {"model_name": loaded.name, "unquantized_bytes": unquantized_bytes(loaded.model, units)}
    on_unit = lambda d, t: progress("profile", d, t)  # noqa: E731
    if scoring == "estimate":
        from bitalloc.sensitivity.estimate import profile_estimate

        proxy = profile_estimate(
            loaded.model, units, stats, palette, meta=dict(meta, metric="hessian"), on_unit=on_unit
        )
        if metric == "hessian":
            return proxy
    elif metric == "hessian":
        return profile_model(
            loaded.model, units, stats, palette, meta=dict(meta, metric="hessian"), on_unit=on_unit
        )
    from bitalloc.sensitivity.scoring import MetricInputs, profile_metrics

    if metric == "fisher_scaled":  # one pass: the proxy of every candidate, the Fisher of the RTN ones
        from bitalloc.sensitivity.fisher_scaled import fisher_scaled

        inputs = MetricInputs(
            calibration=stats, **_metric_statistics(loaded, units, settings, "fisher", progress)
        )
        rtn = tuple(c for c in palette if c.kind is QuantKind.RTN) or default_palette(kinds=(QuantKind.RTN,))
        if scoring == "estimate":
            hessian = proxy
        else:
            hessian = profile_metrics(
                loaded.model, units, palette, metrics=["hessian"], inputs=inputs, meta=meta, on_unit=on_unit
            )["hessian"]
        fisher = profile_metrics(loaded.model, units, rtn, metrics=["fisher"], inputs=inputs, meta=meta)[
            "fisher"
        ]
        return fisher_scaled(hessian, fisher)
    inputs = MetricInputs(calibration=stats, **_metric_statistics(loaded, units, settings, metric, progress))
    return profile_metrics(
        loaded.model, units, palette, metrics=[metric], inputs=inputs, meta=meta, on_unit=on_unit
    )[metric]


def _metric_statistics(
    loaded: LoadedModel,
    units: tuple[Unit, ...],
    settings: CalibrationSettings,
    metric: str,
    progress: Progress,
) -> dict:
    """What ``metric`` needs beyond the calibration Hessians: Fisher diagonals or noise coefficients,
    computed on the same calibration windows."""
    if metric not in ("fisher", "higgs"):
        return {}
    corpus = load_corpus(settings.corpus, Split.CALIBRATION)
    windows = calibration_windows(
        loaded.tokenizer, corpus, n_windows=settings.n_windows, seq_len=settings.seq_len, seed=settings.seed
    )  # (n, seq_len)
    if metric == "fisher":
        from bitalloc.sensitivity.fisher import accumulate_fisher

        fisher = accumulate_fisher(
            loaded.model, units, windows, batch_size=2, on_batch=lambda d, t: progress("fisher", d, t)
        )
        return {"fisher": fisher}
    from bitalloc.sensitivity.higgs import fit_noise_coefficients

    return {"coefficients": fit_noise_coefficients(loaded.model, units, windows[:2, :128])}


def make_plan(profile: SensitivityProfile, budget: Budget, *, solver: str = "auto") -> Plan:
    """Solve the profile's allocation problem under ``budget``."""
    return plan_from_solution(profile, solve(profile.to_problem(), budget, solver=solver), budget)


def quantize_model(loaded: LoadedModel, plan: Plan, progress: Progress = _quiet) -> torch.nn.Module:
    """Apply ``plan`` to ``loaded``, calibrating first (with the plan's settings) if GPTQ needs it."""
    plan.check_model(loaded.model_hash)
    hessians, n_tokens = None, None
    if needs_hessians(plan):
        units = discover_units(loaded.model)
        settings = CalibrationSettings(**{k: plan.calibration[k] for k in asdict(CalibrationSettings())})
        stats = get_calibration(loaded, units, settings, progress)
        hessians, n_tokens = stats.hessians, stats.n_tokens  # AWQ and k-means refuse too few tokens
    return apply_plan(
        loaded.model,
        plan,
        model_hash=loaded.model_hash,
        hessians=hessians,
        n_tokens=n_tokens,
        on_unit=lambda d, t: progress("quantize", d, t),
    )


def evaluation_tokens(loaded: LoadedModel, corpus: str, settings: EvalSettings) -> torch.Tensor:
    """The first ``max_tokens`` tokens of the corpus's evaluation split, documents in order."""
    return token_stream(
        loaded.tokenizer, load_corpus(corpus, Split.EVALUATION), max_tokens=settings.max_tokens
    )


def run_eval(
    loaded: LoadedModel,
    models: dict[str, torch.nn.Module],
    corpus: str,
    settings: EvalSettings,
    progress: Progress = _quiet,
) -> dict[str, EvalResult]:
    """Perplexity and KL of each model (and the reference) on ``corpus``'s evaluation split."""
    return evaluate_models(
        models,
        loaded.model,
        evaluation_tokens(loaded, corpus, settings),
        context=settings.context,
        stride=settings.stride,
        on_window=lambda d, t: progress(f"eval {corpus}", d, t),
    )


def save_json(path: Path, doc: dict) -> None:
    """Write ``doc`` as indented JSON."""
    path.write_text(json.dumps(doc, indent=2) + "\n")
