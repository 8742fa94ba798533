"""Mixture-of-experts models: expert units on 3-D expert tensors, and per-expert Linears.

transformers 5 stores the experts of a Mixtral / Qwen-MoE block as two 3-D parameters of one
``...Experts`` module: ``gate_up_proj`` (experts, 2·intermediate, hidden) and ``down_proj``
(experts, hidden, intermediate), called as ``experts(hidden (tokens, hidden), top_k_index (tokens, k),
top_k_weights (tokens, k))``. An expert unit of such a tensor is named ``<module>.<param>[<expert>]``
and is the (out, in) slice of one expert. ``unfuse_experts`` turns those modules into per-expert
``nn.Linear`` modules (``<module>.<expert>.{gate,up,down}_proj``) that compute the same function, so
the standard calibration, quantizers and ``apply_plan`` work on experts unchanged.
"""

from __future__ import annotations

import copy
import re

import torch
from torch import nn

from bitalloc.models.units import DEFAULT_EXCLUDE, Unit, discover_units

FUSED_PARAMS = ("gate_up_proj", "down_proj")
_EXPERT_UNIT = re.compile(r"^(?P<module>.+)\.(?P<param>[A-Za-z_]+)\[(?P<expert>\d+)\]$")
_LINEAR_EXPERT = re.compile(r"^(?P<module>.+)\.(?P<expert>\d+)\.(?:gate_proj|up_proj|down_proj)$")


def expert_unit_name(module: str, param: str, expert: int) -> str:
    """The unit name of one expert's slice of a 3-D expert tensor."""
    return f"{module}.{param}[{expert}]"


def parse_expert_unit(name: str) -> tuple[str, str, int] | None:
    """(experts module, parameter, expert index) of a 3-D expert unit name, else None."""
    match = _EXPERT_UNIT.match(name)
    return None if match is None else (match["module"], match["param"], int(match["expert"]))


def is_fused_experts(module: nn.Module) -> bool:
    """Whether ``module`` holds experts as 3-D ``gate_up_proj`` / ``down_proj`` tensors."""
    return all(
        isinstance(getattr(module, p, None), nn.Parameter) and getattr(module, p).dim() == 3
        for p in FUSED_PARAMS
    )


def is_experts_module(module: nn.Module) -> bool:
    """A fused experts module or an ``ExpertLinears`` made by ``unfuse_experts``."""
    return is_fused_experts(module) or isinstance(module, ExpertLinears)


def expert_of_unit(name: str) -> tuple[str, int] | None:
    """(experts module, expert index) of any expert unit (3-D slice or per-expert Linear), else None."""
    parsed = parse_expert_unit(name)
    if parsed is not None:
        return parsed[0], parsed[2]
    match = _LINEAR_EXPERT.match(name)
    return None if match is None else (match["module"], int(match["expert"]))


def discover_moe_units(model: nn.Module, *, exclude: re.Pattern[str] = DEFAULT_EXCLUDE) -> tuple[Unit, ...]:
    """Every Linear unit (as ``discover_units``) plus one unit per expert of each 3-D expert tensor."""
    linear = {u.name: u for u in discover_units(model, exclude=exclude)}
    units: list[Unit] = []
    for name, module in model.named_modules():
        if name in linear:
            units.append(linear[name])
        elif is_fused_experts(module):
            for param in FUSED_PARAMS:
                tensor = getattr(module, param)  # (experts, out, in)
                for e in range(tensor.shape[0]):
                    unit = expert_unit_name(name, param, e)
                    units.append(Unit(name=unit, shape=tuple(tensor.shape[1:]), tie=unit))
    return tuple(units)


def unit_weight(model: nn.Module, unit: Unit | str) -> torch.Tensor:
    """The (out, in) weight of a unit: a Linear's weight or one expert's slice of a 3-D tensor (a view)."""
    name = unit if isinstance(unit, str) else unit.name
    parsed = parse_expert_unit(name)
    if parsed is None:
        return model.get_submodule(name).weight
    module, param, expert = parsed
    return getattr(model.get_submodule(module), param)[expert]


class ExpertMLP(nn.Module):
    """One expert as three Linears: down(act(gate(x)) * up(x))."""

    def __init__(self, hidden: int, intermediate: int, act: nn.Module) -> None:
        super().__init__()
        self.gate_proj = nn.Linear(hidden, intermediate, bias=False)
        self.up_proj = nn.Linear(hidden, intermediate, bias=False)
        self.down_proj = nn.Linear(intermediate, hidden, bias=False)
        self.act_fn = act

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (tokens, hidden) -> (tokens, hidden)
        return self.down_proj(self.act_fn(self.gate_proj(x)) * self.up_proj(x))


class ExpertLinears(nn.ModuleList):
    """Per-expert Linears with the call signature of transformers' fused experts modules."""

    def forward(
        self, hidden_states: torch.Tensor, top_k_index: torch.Tensor, top_k_weights: torch.Tensor
    ) -> torch.Tensor:
        """hidden (tokens, hidden), top_k_index / top_k_weights (tokens, k) -> (tokens, hidden)."""
        out = torch.zeros_like(hidden_states)
        for e, expert in enumerate(self):
            token_idx, slot = torch.where(top_k_index == e)
            if token_idx.numel() == 0:
                continue
            y = expert(hidden_states[token_idx]) * top_k_weights[token_idx, slot, None]
            out.index_add_(0, token_idx, y.to(out.dtype))
        return out


def unfuse_experts(model: nn.Module) -> nn.Module:
    """A copy of ``model`` whose fused experts modules are ``ExpertLinears`` holding the same weights."""
    model = copy.deepcopy(model)
    fused = [(n, m) for n, m in model.named_modules() if is_fused_experts(m)]
    for name, module in fused:
        gate_up, down = module.gate_up_proj.data, module.down_proj.data  # (E, 2I, H), (E, H, I)
        n_experts, two_i, hidden = gate_up.shape
        act = getattr(module, "act_fn", nn.SiLU())
        experts = ExpertLinears()
        for e in range(n_experts):
            mlp = ExpertMLP(hidden, two_i // 2, act).to(gate_up)
            mlp.gate_proj.weight.data.copy_(gate_up[e, : two_i // 2])
            mlp.up_proj.weight.data.copy_(gate_up[e, two_i // 2 :])
            mlp.down_proj.weight.data.copy_(down[e])
            experts.append(mlp)
        experts.requires_grad_(module.gate_up_proj.requires_grad)
        parent, _, leaf = name.rpartition(".")
        setattr(model.get_submodule(parent) if parent else model, leaf, experts)
    return model
