"""AWQ activation salience: weight error scaled by the mean magnitude of the channel it multiplies.

AWQ observes that the input channels with large mean |x| carry the salient weights. As an error
estimate this is Σ_ij ΔW_ij² · (E|x_j|)², a diagonal proxy that ignores input correlations.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from bitalloc.sensitivity.metrics import Metric, UnitStats, weighted_sq_errors


def _score(weight: torch.Tensor, dequantized: Sequence[torch.Tensor], stats: UnitStats) -> list[float]:
    salience = stats.abs_mean.float().square()  # type: ignore[union-attr]  # (in,)
    return weighted_sq_errors(weight, dequantized, salience[None, :])


METRIC = Metric(
    name="awq",
    needs=frozenset({"abs_mean"}),
    description="Σ ΔW_ij² (E|x_j|)²: AWQ activation salience",
    score=_score,
)
