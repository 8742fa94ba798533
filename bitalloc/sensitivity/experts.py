"""MoE statistics: routing frequency and weights per expert, expert-input Hessians, and MoE metrics.

``RoutingRecorder`` hooks every experts module (fused 3-D or per-expert Linears) and counts, per
expert, the tokens routed to it and the sum of their routing weights and squared weights. With
``hessians=True`` it also accumulates the Hessians of the 3-D expert units (each expert's routed
inputs to ``gate_up_proj`` and to ``down_proj``), normalised like ``calibrate``: Σ_routed x xᵀ / all tokens,
so an expert's Hessian already carries its routing frequency.

MoE metrics (every dense unit has frequency 1 and mean squared weight 1, so they agree with ``hessian``):
``moe_uniform`` = tr(ΔW H ΔWᵀ) / f_e, the error per routed token, every expert weighted alike;
``moe_freq_weight`` = tr(ΔW H ΔWᵀ) · E[g² | routed], frequency and routing weight combined (as MC-MoE).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from bitalloc.errors import InvalidInput
from bitalloc.models.moe import (
    FUSED_PARAMS,
    expert_of_unit,
    expert_unit_name,
    is_experts_module,
    is_fused_experts,
)
from bitalloc.sensitivity.metrics import Metric, UnitStats
from bitalloc.sensitivity.proxy import proxy_errors


@dataclass(frozen=True, eq=False)
class RoutingStats:
    """Per experts module: tokens routed to each expert, Σ weights, Σ weights² (each (experts,) float64)."""

    counts: dict[str, torch.Tensor]
    weight_sums: dict[str, torch.Tensor]
    weight_sq_sums: dict[str, torch.Tensor]
    n_tokens: int

    def frequency(self, module: str) -> torch.Tensor:
        """Fraction of all tokens routed to each expert (sums to top-k), (experts,)."""
        return self.counts[module] / self.n_tokens

    def mean_weight(self, module: str) -> torch.Tensor:
        """Mean routing weight of each expert over the tokens routed to it (0 if none), (experts,)."""
        return self.weight_sums[module] / self.counts[module].clamp_min(1)

    def mean_weight_sq(self, module: str) -> torch.Tensor:
        """Mean squared routing weight over the tokens routed to each expert, (experts,)."""
        return self.weight_sq_sums[module] / self.counts[module].clamp_min(1)

    def unit_routing(self, unit: str) -> tuple[float, float]:
        """(frequency, mean squared weight) of an expert unit; (1, 1) for a dense unit."""
        found = expert_of_unit(unit)
        if found is None:
            return 1.0, 1.0
        module, e = found
        if module not in self.counts:
            raise InvalidInput(f"no routing statistics for {module!r}: record routing on the same model")
        return float(self.frequency(module)[e]), float(self.mean_weight_sq(module)[e])

    def table(self) -> list[dict]:
        """One row per (module, expert): tokens, frequency, mean weight."""
        rows = []
        for module, counts in self.counts.items():
            freq, mean_w = self.frequency(module), self.mean_weight(module)
            for e in range(counts.numel()):
                rows.append(
                    {
                        "module": module,
                        "expert": e,
                        "tokens": int(counts[e]),
                        "frequency": float(freq[e]),
                        "mean_weight": float(mean_w[e]),
                    }
                )
        return rows


class RoutingRecorder:
    """Context manager: while open, every forward through ``model`` adds to the routing statistics."""

    def __init__(self, model: nn.Module, *, hessians: bool = False) -> None:
        self.model = model
        self.want_hessians = hessians
        self.modules = {n: m for n, m in model.named_modules() if is_experts_module(m)}
        if not self.modules:
            raise InvalidInput("the model has no experts module (Mixtral / Qwen-MoE style); is it an MoE?")
        self.counts = {n: torch.zeros(_n_experts(m), dtype=torch.float64) for n, m in self.modules.items()}
        self.w_sums = {n: torch.zeros_like(c) for n, c in self.counts.items()}
        self.w_sq = {n: torch.zeros_like(c) for n, c in self.counts.items()}
        self.h_sums: dict[str, torch.Tensor] = {}
        self.tokens_seen: dict[str, int] = dict.fromkeys(self.modules, 0)
        self._handles: list = []

    def __enter__(self) -> RoutingRecorder:
        for name, module in self.modules.items():
            self._handles.append(module.register_forward_pre_hook(self._hook(name)))
        return self

    def __exit__(self, *exc) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    def _hook(self, name: str):
        def hook(module: nn.Module, args: tuple) -> None:
            hidden, index, weights = args[0], args[1], args[2]  # (t, h), (t, k), (t, k)
            n = self.counts[name].numel()
            # routing counts live on the CPU, whatever device the model runs on
            flat_i, flat_w = index.reshape(-1).cpu(), weights.detach().reshape(-1).double().cpu()
            valid = flat_i < n
            idx = flat_i[valid]
            self.counts[name].index_add_(0, idx, torch.ones_like(flat_w[valid]))
            self.w_sums[name].index_add_(0, idx, flat_w[valid])
            self.w_sq[name].index_add_(0, idx, flat_w[valid].square())
            self.tokens_seen[name] += hidden.shape[0]
            if self.want_hessians and is_fused_experts(module):
                self._add_hessians(name, module, hidden.detach(), index)

        return hook

    def _add_hessians(self, name: str, module: nn.Module, hidden: torch.Tensor, index: torch.Tensor) -> None:
        with torch.no_grad():
            for e in range(module.gate_up_proj.shape[0]):
                token_idx = (index == e).any(dim=-1).nonzero().squeeze(-1)
                x = hidden[token_idx].float()  # (routed, hidden)
                gate, up = (x @ module.gate_up_proj[e].float().T).chunk(2, dim=-1)  # (routed, I) each
                inner = module.act_fn(gate) * up  # (routed, I)
                if not (torch.isfinite(x).all() and torch.isfinite(inner).all()):
                    raise InvalidInput(f"non-finite activations reach {name!r}; check the model's weights")
                for param, inp in zip(FUSED_PARAMS, (x, inner), strict=True):
                    key = expert_unit_name(name, param, e)
                    h = self.h_sums.get(key)
                    if h is None:
                        h = self.h_sums[key] = torch.zeros(inp.shape[1], inp.shape[1], device=inp.device)
                    h.addmm_(inp.T, inp)

    def stats(self) -> RoutingStats:
        """The routing statistics gathered so far."""
        n_tokens = max(self.tokens_seen.values())
        if n_tokens == 0:
            raise InvalidInput(
                "no tokens passed the experts while recording; run the model inside the context"
            )
        return RoutingStats(
            counts=self.counts, weight_sums=self.w_sums, weight_sq_sums=self.w_sq, n_tokens=n_tokens
        )

    def expert_hessians(self) -> dict[str, torch.Tensor]:
        """Hessians of the 3-D expert units: Σ_routed x xᵀ / all tokens, (in, in) float32."""
        n_tokens = max(self.tokens_seen.values())
        return {k: h / n_tokens for k, h in self.h_sums.items()}


def _n_experts(module: nn.Module) -> int:
    return module.gate_up_proj.shape[0] if is_fused_experts(module) else len(module)


def record_routing(model: nn.Module, windows: torch.Tensor, *, batch_size: int = 4) -> RoutingStats:
    """Run ``windows`` (n, seq_len) through ``model`` and return its routing statistics."""
    with RoutingRecorder(model) as rec, torch.no_grad():
        for start in range(0, windows.shape[0], batch_size):
            model(
                input_ids=windows[start : start + batch_size].to(next(model.parameters()).device),
                use_cache=False,
            )
    return rec.stats()


def _uniform(weight: torch.Tensor, dequantized: Sequence[torch.Tensor], stats: UnitStats) -> list[float]:
    freq = max(float(stats.frequency), 1e-12)  # type: ignore[arg-type]
    return [e / freq for e in proxy_errors(weight, dequantized, stats.hessian)]  # type: ignore[arg-type]


def _freq_weight(weight: torch.Tensor, dequantized: Sequence[torch.Tensor], stats: UnitStats) -> list[float]:
    scale = float(stats.weight_sq)  # type: ignore[arg-type]
    return [e * scale for e in proxy_errors(weight, dequantized, stats.hessian)]  # type: ignore[arg-type]


METRICS = (
    Metric(
        name="moe_uniform",
        needs=frozenset({"hessian", "routing"}),
        description="tr(ΔW H ΔWᵀ)/f_e: error per routed token, experts weighted alike (no frequency)",
        score=_uniform,
    ),
    Metric(
        name="moe_freq_weight",
        needs=frozenset({"hessian", "routing"}),
        description="tr(ΔW H ΔWᵀ)·E[g²|routed]: routing frequency (in H) times routing weight (MC-MoE style)",
        score=_freq_weight,
    ),
)
