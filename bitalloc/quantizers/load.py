"""Read back a folder written by ``save_quantized``: the model with its packed units, and the plan.

The architecture comes from ``config.json`` (transformers builds it; its random weights are then replaced),
each planned unit becomes a ``QuantLinear`` (foundation formats) or ``PackedLinear`` (other kinds) over the
stored tensors, and every other tensor is loaded in float16; tied weights are re-tied. The bytes held by the
packed units must equal the plan's count, so a folder and a plan that do not belong together are refused.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file
from torch import nn

from bitalloc.allocator.plan import Plan
from bitalloc.errors import BitallocError, InvalidInput
from bitalloc.models.units import get_submodule_parent
from bitalloc.quantizers.apply import quantized_bytes
from bitalloc.quantizers.candidate import Candidate
from bitalloc.quantizers.packed import PackedWeight
from bitalloc.quantizers.packed_linear import PackedLinear, stored_name
from bitalloc.quantizers.quant_linear import QuantLinear
from bitalloc.quantizers.quantized_weight import QuantizedWeight

FILES = ("model.safetensors", "plan.json", "config.json")


def _architecture(config_path: Path) -> nn.Module:
    """A float16 causal LM of the saved configuration (random weights, replaced by the caller)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    doc = json.loads(config_path.read_text())
    kind = doc.pop("model_type", None)
    if kind is None:
        raise InvalidInput(f"{config_path} names no model_type; it was not written by bitalloc apply")
    config = AutoConfig.for_model(kind, **doc)
    return AutoModelForCausalLM.from_config(config, dtype=torch.float16).eval()


def _unit_module(
    unit: str, candidate: Candidate, linear: nn.Module, tensors: dict[str, torch.Tensor]
) -> nn.Module:
    """The packed module of one unit from its stored tensors (``<unit>.<buffer>``)."""
    prefix = f"{unit}."
    own = {k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)}
    bias = own.pop("bias", None)
    shape = (linear.out_features, linear.in_features)
    if candidate.foundation_format:
        weight = QuantizedWeight.from_tensors(candidate, shape, own)
        return QuantLinear(weight, bias)
    stored = {stored_name(k): v for k, v in own.items()}
    return PackedLinear(PackedWeight(candidate, shape, stored), bias)


def load_quantized(folder: Path | str, *, device: str | torch.device = "cpu") -> tuple[nn.Module, Plan]:
    """The quantized model saved in ``folder`` (float16, eval mode, on ``device``) and its plan."""
    folder = Path(folder)
    missing = [f for f in FILES if not (folder / f).exists()]
    if missing:
        raise InvalidInput(
            f"{folder} is not a folder written by `bitalloc apply` (missing {', '.join(missing)})"
        )
    plan = Plan.load(folder / "plan.json")
    if any("@cols" in c.unit for c in plan.assignment):
        raise InvalidInput(
            "column-group plans cannot be loaded back yet; re-apply the plan to the source model"
        )
    tensors = load_file(str(folder / "model.safetensors"))
    model = _architecture(folder / "config.json")
    for choice in plan.assignment:
        try:
            parent, leaf = get_submodule_parent(model, choice.unit)
        except AttributeError:
            parent, leaf = None, ""
        linear = getattr(parent, leaf, None)
        if not isinstance(linear, nn.Linear):
            raise InvalidInput(f"plan unit {choice.unit!r} is not a Linear of the saved architecture")
        setattr(parent, leaf, _unit_module(choice.unit, Candidate.parse(choice.candidate), linear, tensors))
    planned = tuple(f"{c.unit}." for c in plan.assignment)
    rest = {k: v for k, v in tensors.items() if not k.startswith(planned)}
    result = model.load_state_dict(rest, strict=False)
    if result.unexpected_keys:
        raise InvalidInput(f"{folder}: tensors the architecture does not have: {result.unexpected_keys[:5]}")
    model.tie_weights()
    tied = _tied_names(model)
    untied = [k for k in result.missing_keys if not k.startswith(planned) and k not in tied]
    if untied:
        raise InvalidInput(f"{folder}: tensors missing from the file: {untied[:5]}")
    stored = quantized_bytes(model)
    if stored != plan.nbytes:
        raise BitallocError(f"{folder}: the packed units hold {stored} bytes, the plan counts {plan.nbytes}")
    return model.to(device), plan


def _tied_names(model: nn.Module) -> set[str]:
    """Parameters that share their storage with another parameter (tied embeddings)."""
    by_storage: dict[int, list[str]] = {}
    for name, param in model.named_parameters(remove_duplicate=False):
        by_storage.setdefault(param.data_ptr(), []).append(name)
    return {name for names in by_storage.values() if len(names) > 1 for name in names}
