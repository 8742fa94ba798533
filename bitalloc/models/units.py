"""Quantizable units of a model and the tie groups that runtimes fuse."""

from __future__ import annotations

import re
from dataclasses import dataclass

from torch import nn

# Projections that runtimes fuse into one matrix: members must share one format.
FUSED_PROJECTIONS = (
    ("q_proj", "k_proj", "v_proj"),
    ("gate_proj", "up_proj"),
    ("w1", "w3"),
)
DEFAULT_EXCLUDE = re.compile(r"(^|\.)(lm_head|embed_tokens|wte|wpe|embed_out|output)$")
UNQUANTIZED_BYTES_PER_ELEMENT = 2  # tensors left unquantized are stored as float16


@dataclass(frozen=True)
class Unit:
    """One allocation decision: a Linear weight (out, in) and the tie group it belongs to."""

    name: str
    shape: tuple[int, int]
    tie: str

    @property
    def numel(self) -> int:
        """Parameters of the weight."""
        return self.shape[0] * self.shape[1]


def discover_units(model: nn.Module, *, exclude: re.Pattern[str] = DEFAULT_EXCLUDE) -> tuple[Unit, ...]:
    """Every nn.Linear outside embeddings and the LM head, in module order, with fused tie groups."""
    units = []
    for name, module in model.named_modules():
        if not isinstance(module, nn.Linear) or exclude.search(name):
            continue
        parent, _, leaf = name.rpartition(".")
        tie = name
        for fused in FUSED_PROJECTIONS:
            if leaf in fused:
                tie = f"{parent}.{'+'.join(fused)}" if parent else "+".join(fused)
        units.append(Unit(name=name, shape=tuple(module.weight.shape), tie=tie))
    return tuple(units)


def unquantized_bytes(model: nn.Module, units: tuple[Unit, ...]) -> int:
    """Bytes of every parameter and persistent buffer outside the units, tied tensors counted once."""
    quantized = {f"{u.name}.weight" for u in units}
    seen: set[int] = set()
    total = 0
    for name, tensor in model.state_dict().items():
        if name in quantized or tensor.data_ptr() in seen:
            continue
        seen.add(tensor.data_ptr())
        per_element = UNQUANTIZED_BYTES_PER_ELEMENT if tensor.is_floating_point() else tensor.element_size()
        total += tensor.numel() * per_element
    return total


def get_submodule_parent(model: nn.Module, name: str) -> tuple[nn.Module, str]:
    """The module holding ``name`` and the attribute name under it."""
    parent, _, leaf = name.rpartition(".")
    return (model.get_submodule(parent) if parent else model), leaf
