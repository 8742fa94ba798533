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
from bitalloc.quantizers.quantized_weight import QuantizedWeight
from bitalloc.quantizers.rtn import quantize_rtn
from bitalloc.sensitivity.calibrate import CalibrationStats
from bitalloc.sensitivity.experts import RoutingStats
from bitalloc.sensitivity.metrics import Metric, UnitStats, get_metric
from bitalloc.sensitivity.profile import SensitivityProfile
from bitalloc.sensitivity.stacking import gptq_for_stack, plain_gptq, shape_stacks, stack_bytes

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
    gptq_done: Mapping[Candidate, QuantizedWeight] | None = None,
) -> list[tuple[Candidate, torch.Tensor, int]]:
    """(candidate, dequantized (out, in), exact bytes) for every candidate that fits ``weight``;
    ``n_tokens`` (behind ``hessian``) lets AWQ and k-means refuse too few calibration tokens;
    ``gptq_done`` holds plain GPTQ results already computed (by a stack)."""
    fitting = [c for c in palette if c.supports(tuple(weight.shape))]
    out = []
    gptq = [c for c in fitting if c.kind is QuantKind.GPTQ and c.name == _plain_name(c)]
    if gptq and hessian is None:
        raise InvalidInput(
            f"{gptq[0].name} for unit {unit!r} needs calibration Hessians; calibrate or use RTN"
        )
    if gptq_done is not None and all(c in gptq_done for c in gptq):
        done = dict(gptq_done)
    else:
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
    """One SensitivityProfile per metric name; quantization runs once per (unit, candidate), the GPTQ
    candidates of same-shape units in one stacked loop; tables keep the order of ``units``."""
    if not units:
        raise InvalidInput("the model has no quantizable units: nothing to profile")
    if not palette:
        raise InvalidInput("the palette is empty: give at least one candidate")
    if not metrics:
        raise InvalidInput("give at least one metric name")
    chosen: list[Metric] = [get_metric(m) for m in dict.fromkeys(metrics)]
    per_unit: dict[str, list[list]] = {m.name: [[] for _ in units] for m in chosen}
    all_stats = [inputs.unit_stats(unit.name) for unit in units]
    for unit, stats in zip(units, all_stats, strict=True):
        for metric in chosen:
            metric.check(stats, unit.name)
    n_tokens = None if inputs.calibration is None else inputs.calibration.n_tokens
    first = unit_weight(model, units[0])
    copies = [len(plain_gptq(palette, u.shape)) for u in units]
    done = 0
    for stack in shape_stacks([u.shape for u in units], copies, stack_bytes(first.device)):
        weights = [unit_weight(model, units[i]).detach().float() for i in stack]  # (out, in) each
        hessians = [
            None if all_stats[i].hessian is None else all_stats[i].hessian.to(w.device)  # type: ignore[union-attr]
            for i, w in zip(stack, weights, strict=True)
        ]
        gptq = gptq_for_stack(weights, hessians, palette, [units[i].name for i in stack])
        for i, weight, hessian, gptq_done in zip(stack, weights, hessians, gptq, strict=True):
            unit, stats = units[i], all_stats[i]
            scored = quantize_palette(
                weight, hessian, palette, unit=unit.name, n_tokens=n_tokens, gptq_done=gptq_done
            )
            if not scored:
                raise InvalidInput(
                    f"no candidate of the palette fits unit {unit.name!r} of shape {unit.shape}"
                )
            dequantized = [dq for _, dq, _ in scored]
            for metric in chosen:
                errors = metric.score(weight, dequantized, stats)
                for (candidate, _, nbytes), error in zip(scored, errors, strict=True):
                    if not (error == error and error >= 0):  # NaN or negative
                        raise InvalidInput(
                            f"metric {metric.name!r} gave error {error} for {unit.name}; check its statistics"
                        )
                    per_unit[metric.name][i].append(
                        (unit.name, unit.tie, *unit.shape, candidate.name, float(error), nbytes)
                    )
            done += 1
            if on_unit is not None:
                on_unit(done, len(units))
    rows = {name: [row for unit_rows in lists for row in unit_rows] for name, lists in per_unit.items()}
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
