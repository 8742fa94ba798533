"""Data-free weight-only errors: relative weight MSE, optionally scaled by per-unit coefficients.

HIGGS observes that, for small errors, the loss grows linearly in each layer's relative weight MSE
t_l = ||ΔW_l||² / ||W_l||² with a layer-specific slope α_l. ``weight_mse`` uses t_l alone (no data at
all); ``higgs`` fits α_l once per model by injecting Gaussian noise of known relative MSE into one
unit at a time and measuring the KL divergence of the next-token distribution against the clean model.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from bitalloc.errors import InvalidInput
from bitalloc.models.units import Unit
from bitalloc.sensitivity.metrics import Metric, UnitStats

NOISE_REL_MSE = 0.01  # about the relative MSE of 4-bit round-to-nearest


def relative_mse(weight: torch.Tensor, dequantized: Sequence[torch.Tensor]) -> list[float]:
    """||ΔW||² / ||W||² for each dequantized copy of ``weight`` (out, in)."""
    norm = float(weight.double().square().sum())
    if norm == 0.0:
        return [0.0 for _ in dequantized]
    return [float((dq.double() - weight.double()).square().sum()) / norm for dq in dequantized]


def _kl(ref_logp: torch.Tensor, logits: torch.Tensor) -> float:
    logp = F.log_softmax(logits.float(), dim=-1)  # (b, t, vocab)
    return float((ref_logp.exp() * (ref_logp - logp)).sum(-1).mean(dtype=torch.float64))


def fit_noise_coefficients(
    model: nn.Module,
    units: Sequence[Unit],
    windows: torch.Tensor,
    *,
    rel_mse: float = NOISE_REL_MSE,
    seed: int = 0,
    on_unit: Callable[[int, int], None] | None = None,
) -> dict[str, float]:
    """α per unit: KL(clean || noisy) / rel_mse with Gaussian noise of relative MSE ``rel_mse`` in that unit.

    ``windows`` (n, seq_len) is a small batch (a few windows suffice); the weights are restored after
    each unit, also on error.
    """
    from bitalloc.sensitivity.fisher import unit_parameter

    if not units:
        raise InvalidInput("the model has no quantizable units to fit coefficients for")
    if not rel_mse > 0:
        raise InvalidInput(f"rel_mse must be positive, got {rel_mse}")
    generator = torch.Generator().manual_seed(seed)
    out: dict[str, float] = {}
    with torch.no_grad():
        ids = windows.to(next(model.parameters()).device)  # (n, seq_len)
        ref_logp = F.log_softmax(model(input_ids=ids, use_cache=False).logits.float(), dim=-1)
        for i, unit in enumerate(units):
            param, expert = unit_parameter(model, unit)
            view = param.data if expert is None else param.data[expert]  # (out, in)
            saved = view.clone()
            rms = float(saved.double().square().mean().sqrt())
            noise = torch.randn(saved.shape, generator=generator).to(view) * rms * rel_mse**0.5
            try:
                view.add_(noise)
                t = float((view.double() - saved.double()).square().sum() / saved.double().square().sum())
                out[unit.name] = _kl(ref_logp, model(input_ids=ids, use_cache=False).logits) / t
            finally:
                view.copy_(saved)
            if on_unit is not None:
                on_unit(i + 1, len(units))
    return out


def _weight_mse(weight: torch.Tensor, dequantized: Sequence[torch.Tensor], stats: UnitStats) -> list[float]:
    return relative_mse(weight, dequantized)


def _higgs(weight: torch.Tensor, dequantized: Sequence[torch.Tensor], stats: UnitStats) -> list[float]:
    alpha = max(float(stats.coefficient), 0.0)  # type: ignore[arg-type]
    return [alpha * t for t in relative_mse(weight, dequantized)]


WEIGHT_MSE = Metric(
    name="weight_mse",
    needs=frozenset(),
    description="||ΔW||²/||W||²: data-free relative weight MSE, every unit weighted alike",
    score=_weight_mse,
)
METRIC = Metric(
    name="higgs",
    needs=frozenset({"coefficient"}),
    description="α_l ||ΔW||²/||W||², α_l fitted by noise injection (HIGGS linearity)",
    score=_higgs,
)
