"""Sensitivity metrics by name: what each needs, and how it turns a weight's quantization error into a number.

A metric scores every quantization of one unit at once: ``score(weight, dequantized, stats)`` with
``weight`` (out, in), each dequantized copy (out, in) and the unit's statistics. The registry is an
explicit read-only mapping built from one module per metric; ``get_metric`` names the known ones.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType

import torch

from bitalloc.errors import InvalidInput
from bitalloc.sensitivity.proxy import proxy_errors

# Statistics a metric can need; each names where it comes from (for error messages).
NEEDS = {
    "hessian": "calibration (bitalloc.sensitivity.calibrate)",
    "abs_mean": "calibration with activation means (recalibrate: older cache files lack them)",
    "fisher": "gradients of the loss (bitalloc.sensitivity.fisher.accumulate_fisher)",
    "coefficient": "noise-injection coefficients (bitalloc.sensitivity.higgs.fit_noise_coefficients)",
    "routing": "MoE routing statistics (bitalloc.sensitivity.experts.record_routing)",
}


class UnknownMetric(InvalidInput):
    """A metric name that the registry does not hold."""


class MissingStatistic(InvalidInput):
    """A metric needs a statistic (gradients, activation means, ...) that was not collected."""


@dataclass(frozen=True, eq=False)
class UnitStats:
    """What is known about one unit's inputs and loss: any field may be None when not collected.

    hessian (in, in) = E[x xᵀ]; abs_mean (in,) = E|x|; fisher (out, in) = E[g²] of the loss gradient;
    coefficient: KL per unit relative weight MSE (HIGGS); frequency: fraction of tokens the unit
    sees (1 for dense units); weight_sq: mean squared routing weight over the tokens it sees (1 if dense).
    """

    hessian: torch.Tensor | None = None
    abs_mean: torch.Tensor | None = None
    fisher: torch.Tensor | None = None
    coefficient: float | None = None
    frequency: float | None = None
    weight_sq: float | None = None


Score = Callable[[torch.Tensor, Sequence[torch.Tensor], UnitStats], list[float]]


@dataclass(frozen=True)
class Metric:
    """A named error estimator and the statistics it needs (keys of NEEDS)."""

    name: str
    needs: frozenset[str]
    description: str
    score: Score

    def check(self, stats: UnitStats, unit: str) -> None:
        """Raise MissingStatistic naming how to collect what ``stats`` lacks."""
        have = {
            "hessian": stats.hessian is not None,
            "abs_mean": stats.abs_mean is not None,
            "fisher": stats.fisher is not None,
            "coefficient": stats.coefficient is not None,
            "routing": stats.frequency is not None and stats.weight_sq is not None,
        }
        for need in sorted(self.needs):
            if not have[need]:
                raise MissingStatistic(
                    f"metric {self.name!r} needs {need} for unit {unit!r}: run {NEEDS[need]}"
                )


def _hessian(weight: torch.Tensor, dequantized: Sequence[torch.Tensor], stats: UnitStats) -> list[float]:
    return proxy_errors(weight, dequantized, stats.hessian)  # type: ignore[arg-type]


HESSIAN = Metric(
    name="hessian",
    needs=frozenset({"hessian"}),
    description="tr(ΔW·H·ΔWᵀ), H = E[x xᵀ]: squared output error per token (GPTQ/OBQ proxy)",
    score=_hessian,
)


def weighted_sq_errors(
    weight: torch.Tensor, dequantized: Sequence[torch.Tensor], scale: torch.Tensor
) -> list[float]:
    """Σ scale ⊙ ΔW² for each dequantized copy; ``scale`` broadcasts against (out, in)."""
    s = scale.float()
    errors = [((dq.float() - weight.float()).square() * s).sum(dtype=torch.float64) for dq in dequantized]
    return torch.stack(errors).tolist() if errors else []  # one device sync for all candidates


def registry() -> Mapping[str, Metric]:
    """Every metric by name (read-only), built from the metric modules."""
    from bitalloc.sensitivity import awq, experts, fisher, higgs, slim

    metrics = (
        HESSIAN,
        fisher.METRIC,
        awq.METRIC,
        slim.METRIC,
        higgs.WEIGHT_MSE,
        higgs.METRIC,
        *experts.METRICS,
    )
    return MappingProxyType({m.name: m for m in metrics})


def get_metric(name: str) -> Metric:
    """The metric called ``name``; UnknownMetric lists the known names."""
    metrics = registry()
    if name not in metrics:
        raise UnknownMetric(f"unknown sensitivity metric {name!r}; known: {', '.join(metrics)}")
    return metrics[name]


DEFAULT_METRIC = "fisher"  # best rank correlation with measured KL/ppl (benchmarks/sensitivity_metrics.py)
