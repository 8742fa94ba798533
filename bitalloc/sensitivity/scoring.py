"""Profiles under any registered metric: quantize each unit once, score it with every metric asked for.

``profile_metrics`` returns one SensitivityProfile per metric; each records ``metric`` (and
``estimator``) in its metadata. Units may be Linears or 3-D expert slices (``bitalloc.models.moe``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import pandas as pd
import torch
from torch import nn

from bitalloc.errors import InvalidInput
from bitalloc.models.moe import unit_weight
from bitalloc.models.units import Unit
from bitalloc.quantizers.candidate import Candidate, QuantKind
from bitalloc.quantizers.gptq import quantize_gptq_many
from bitalloc.quantizers.quantize import quantize
from bitalloc.quantizers.rtn import quantize_rtn
from bitalloc.sensitivity.calibrate import CalibrationStats
from bitalloc.sensitivity.experts import RoutingStats
from bitalloc.sensitivity.metrics import Metric, UnitStats, get_metric
from bitalloc.sensitivity.profile import SensitivityProfile

METRIC_META_VERSION = 1


@dataclass(frozen=True, eq=False)
class MetricInputs:
    """Everything the metrics may need; each field is optional and checked against the metrics asked for."""

    calibration: CalibrationStats | None = None
    fisher: Mapping[str, torch.Tensor] = field(default_factory=dict)
    coefficients: Mapping[str, float] = field(default_factory=dict)
    routing: RoutingStats | None = None

    def unit_stats(self, unit: str) -> UnitStats:
        """The UnitStats of ``unit``."""
        cal = self.calibration
        freq, wsq = self.routing.unit_routing(unit) if self.routing is not None else (None, None)
        return UnitStats(
            hessian=None if cal is None else cal.hessians.get(unit),
            abs_mean=None if cal is None else cal.abs_means.get(unit),
            fisher=self.fisher.get(unit),
            coefficient=self.coefficients.get(unit),
            frequency=freq,
            weight_sq=wsq,
        )


def quantize_palette(
    weight: torch.Tensor,
    hessian: torch.Tensor | None,
    palette: Sequence[Candidate],
    *,
    unit: str = "",
    n_tokens: int | None = None,
) -> list[tuple[Candidate, torch.Tensor, int]]:
    """(candidate, dequantized (out, in), exact bytes) for every candidate that fits ``weight``;
    ``n_tokens`` (behind ``hessian``) lets AWQ and k-means refuse too few calibration tokens."""
    fitting = [c for c in palette if c.supports(tuple(weight.shape))]
    out = []
    gptq = [c for c in fitting if c.kind is QuantKind.GPTQ and c.name == _plain_name(c)]
    if gptq and hessian is None:
        raise InvalidInput(
            f"{gptq[0].name} for unit {unit!r} needs calibration Hessians; calibrate or use RTN"
        )
    done = dict(zip(gptq, quantize_gptq_many(weight, hessian, gptq), strict=True)) if gptq else {}
    for c in fitting:
        if c in done:
            q = done[c]
        elif c.kind is QuantKind.RTN and c.name == _plain_name(c):
            q = quantize_rtn(weight, c, unit=unit)
        else:
            q = quantize(weight, c, hessian=hessian, unit=unit, n_tokens=n_tokens)
        out.append((c, q.dequantize(), int(q.nbytes)))
    return out


def _plain_name(c: Candidate) -> str:
    return f"{c.kind.value}-w{c.bits}g{c.group_size}-{'sym' if c.symmetric else 'asym'}"


def profile_metrics(
    model: nn.Module,
    units: tuple[Unit, ...],
    palette: Sequence[Candidate],
    *,
    metrics: Sequence[str],
    inputs: MetricInputs,
    meta: dict,
    on_unit: Callable[[int, int], None] | None = None,
) -> dict[str, SensitivityProfile]:
    """One SensitivityProfile per metric name; quantization runs once per (unit, candidate)."""
    if not units:
        raise InvalidInput("the model has no quantizable units: nothing to profile")
    if not palette:
        raise InvalidInput("the palette is empty: give at least one candidate")
    if not metrics:
        raise InvalidInput("give at least one metric name")
    chosen: list[Metric] = [get_metric(m) for m in dict.fromkeys(metrics)]
    rows: dict[str, list] = {m.name: [] for m in chosen}
    for i, unit in enumerate(units):
        stats = inputs.unit_stats(unit.name)
        for metric in chosen:
            metric.check(stats, unit.name)
        weight = unit_weight(model, unit).detach().float()  # (out, in)
        hessian = None if stats.hessian is None else stats.hessian.to(weight.device)
        n_tokens = None if inputs.calibration is None else inputs.calibration.n_tokens
        scored = quantize_palette(weight, hessian, palette, unit=unit.name, n_tokens=n_tokens)
        if not scored:
            raise InvalidInput(f"no candidate of the palette fits unit {unit.name!r} of shape {unit.shape}")
        dequantized = [dq for _, dq, _ in scored]
        for metric in chosen:
            errors = metric.score(weight, dequantized, stats)
            for (candidate, _, nbytes), error in zip(scored, errors, strict=True):
                if not (error == error and error >= 0):  # NaN or negative
                    raise InvalidInput(
                        f"metric {metric.name!r} gave error {error} for {unit.name}; check its statistics"
                    )
                rows[metric.name].append(
                    (unit.name, unit.tie, *unit.shape, candidate.name, float(error), nbytes)
                )
        if on_unit is not None:
            on_unit(i + 1, len(units))
    cal = inputs.calibration
    base = dict(meta, palette=[c.name for c in palette], metric_version=METRIC_META_VERSION)
    if cal is not None:
        base.update(
            model_hash=cal.model_hash,
            corpus_hash=cal.corpus_hash,
            n_tokens=cal.n_tokens,
            calibration=cal.settings,
        )
    base.setdefault("corpus_hash", "none")
    out = {}
    for metric in chosen:
        table = pd.DataFrame(
            rows[metric.name], columns=["unit", "tie", "rows", "cols", "candidate", "error", "nbytes"]
        )
        full = dict(base, estimator=metric.name, metric=metric.name, metric_description=metric.description)
        out[metric.name] = SensitivityProfile(table=table, meta=full)
    return out
