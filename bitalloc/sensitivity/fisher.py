"""Diagonal Fisher from gradients of the loss: Σ F_ij ΔW_ij², as ModelOpt's AutoQuantize scores formats.

F_ij = E_batches[(∂L/∂W_ij)²] with L the mean next-token cross-entropy of a calibration batch. One
backward pass per batch serves every unit and every candidate (the candidates only change ΔW).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from bitalloc.errors import InvalidInput
from bitalloc.models.units import Unit
from bitalloc.sensitivity.metrics import Metric, UnitStats, weighted_sq_errors


class GradientsUnavailable(InvalidInput):
    """A gradient metric was asked of a model whose units cannot carry gradients."""


def unit_parameter(model: nn.Module, unit: Unit) -> tuple[nn.Parameter, int | None]:
    """The parameter holding ``unit``'s weight and, for a 3-D expert tensor, the expert index."""
    from bitalloc.models.moe import parse_expert_unit

    parsed = parse_expert_unit(unit.name)
    if parsed is not None:
        module_name, param_name, expert = parsed
        param = getattr(model.get_submodule(module_name), param_name)
    else:
        param, expert = getattr(model.get_submodule(unit.name), "weight", None), None
    if not isinstance(param, nn.Parameter) or not param.is_floating_point():
        raise GradientsUnavailable(
            f"unit {unit.name!r} holds no float weight parameter (is the model quantized?): compute the "
            "Fisher metric on the unquantized model or pick a metric without gradients "
            "('hessian', 'weight_mse')"
        )
    return param, expert


def accumulate_fisher(
    model: nn.Module,
    units: Sequence[Unit],
    windows: torch.Tensor,
    *,
    batch_size: int = 4,
    on_batch: Callable[[int, int], None] | None = None,
) -> dict[str, torch.Tensor]:
    """Per-unit diagonal empirical Fisher E[(∂L/∂W)²] over batches of ``windows`` (n, seq_len): (out, in)."""
    if not units:
        raise InvalidInput("the model has no quantizable units to compute a Fisher metric for")
    if not torch.is_grad_enabled() or torch.is_inference_mode_enabled():
        raise GradientsUnavailable(
            "the Fisher metric needs gradients but autograd is off (called inside torch.no_grad() or "
            "torch.inference_mode()): call it outside those blocks, or pick 'hessian' or 'weight_mse'"
        )
    params = {u.name: unit_parameter(model, u) for u in units}
    frozen = [name for name, (p, _) in params.items() if p.is_inference()]
    if frozen:
        raise GradientsUnavailable(
            f"the weight of unit {frozen[0]!r} is an inference tensor (the model was loaded or copied under "
            "torch.inference_mode()) and cannot carry gradients: load the model outside inference mode, "
            "or pick a metric without gradients ('hessian', 'weight_mse')"
        )
    distinct = {id(p): p for p, _ in params.values()}
    flags = {k: p.requires_grad for k, p in distinct.items()}
    sums = {k: torch.zeros_like(p, dtype=torch.float32) for k, p in distinct.items()}
    n_batches = 0
    try:
        for p in distinct.values():
            p.requires_grad_(True)
            p.grad = None
        for start in range(0, windows.shape[0], batch_size):
            batch = windows[start : start + batch_size].to(distinct[next(iter(distinct))].device)  # (b, t)
            logits = model(input_ids=batch, use_cache=False).logits  # (b, t, vocab)
            loss = F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), batch[:, 1:].flatten())
            if not torch.isfinite(loss):
                raise InvalidInput("the loss is not finite on calibration data; check the model's weights")
            loss.backward()
            for k, p in distinct.items():
                if p.grad is None:
                    raise GradientsUnavailable(
                        "the loss does not reach every unit's weight (no gradient); is the forward detached?"
                    )
                sums[k].add_(p.grad.float().square())
                p.grad = None
            n_batches += 1
            if on_batch is not None:
                on_batch(min(start + batch_size, windows.shape[0]), windows.shape[0])
    finally:
        for k, p in distinct.items():
            p.requires_grad_(flags[k])
            p.grad = None
    out = {}
    for name, (p, expert) in params.items():
        f = sums[id(p)] / n_batches
        out[name] = f if expert is None else f[expert]
    return out


def _score(weight: torch.Tensor, dequantized: Sequence[torch.Tensor], stats: UnitStats) -> list[float]:
    return weighted_sq_errors(weight, dequantized, stats.fisher)  # type: ignore[arg-type]


METRIC = Metric(
    name="fisher",
    needs=frozenset({"fisher"}),
    description="Σ F_ij ΔW_ij², F = E[(∂L/∂W)²]: diagonal empirical Fisher (AutoQuantize)",
    score=_score,
)
