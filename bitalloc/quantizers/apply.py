"""Materialize a plan: replace each unit's Linear by packed storage with a dequantize-matmul forward."""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from pathlib import Path

import torch
from safetensors.torch import save_file
from torch import nn

from bitalloc.allocator.plan import Plan
from bitalloc.errors import BitallocError, InvalidInput
from bitalloc.models.units import get_submodule_parent
from bitalloc.quantizers.candidate import Candidate
from bitalloc.quantizers.packed_linear import PackedLinear
from bitalloc.quantizers.quant_linear import QuantLinear
from bitalloc.quantizers.quantize import quantize
from bitalloc.quantizers.quantized_weight import QuantizedWeight
from bitalloc.quantizers.registry import InsufficientCalibration, check_tokens, needs_hessian


def needs_hessians(plan: Plan) -> bool:
    """Whether any unit of the plan uses a quantizer that needs calibration statistics."""
    return any(needs_hessian(Candidate.parse(c.candidate)) for c in plan.assignment)


def apply_plan(
    model: nn.Module,
    plan: Plan,
    *,
    model_hash: str,
    hessians: dict[str, torch.Tensor] | None = None,
    n_tokens: int | None = None,
    on_unit: Callable[[int, int], None] | None = None,
) -> nn.Module:
    """A copy of ``model`` with every planned unit quantized; unplanned tensors are shared, not copied.

    Every unit is checked (a Linear, a shape its scheme handles, the calibration it needs: Hessian and,
    when ``n_tokens`` is given, enough tokens) before any is quantized.
    """
    plan.check_model(model_hash)
    if any("@cols" in c.unit for c in plan.assignment):  # column-group units: sensitivity/column_groups.py
        from bitalloc.sensitivity.column_groups import apply_group_plan

        return apply_group_plan(model, plan, model_hash=model_hash, hessians=hessians, n_tokens=n_tokens)
    _check_units(model, plan, hessians, n_tokens)
    shared = {id(t): t for t in [*model.parameters(), *model.buffers()]}
    quantized = copy.deepcopy(model, memo=shared)
    for i, choice in enumerate(plan.assignment):
        parent, leaf = get_submodule_parent(quantized, choice.unit)
        linear = getattr(parent, leaf)
        if not isinstance(linear, nn.Linear):
            raise InvalidInput(f"plan unit {choice.unit!r} is not a Linear of this model")
        candidate = Candidate.parse(choice.candidate)
        hessian = None if hessians is None else hessians.get(choice.unit)
        weight = linear.weight.detach().float()
        qweight = quantize(weight, candidate, hessian=hessian, unit=choice.unit, n_tokens=n_tokens)
        if qweight.nbytes != choice.nbytes:
            raise BitallocError(f"{choice.unit}: packed {qweight.nbytes} bytes, plan says {choice.nbytes}")
        if isinstance(qweight, QuantizedWeight):
            setattr(parent, leaf, QuantLinear.from_linear(linear, qweight))
        else:  # every non-foundation kind: named tensors of its layout
            setattr(parent, leaf, PackedLinear.from_linear(linear, qweight))
        if on_unit is not None:
            on_unit(i + 1, len(plan.assignment))
    stored = quantized_bytes(quantized)
    if stored != plan.nbytes:
        raise BitallocError(f"quantized model stores {stored} bytes but the plan counts {plan.nbytes}")
    return quantized


def _check_units(
    model: nn.Module, plan: Plan, hessians: dict[str, torch.Tensor] | None, n_tokens: int | None
) -> None:
    for choice in plan.assignment:
        weight = getattr(model.get_submodule(choice.unit), "weight", None)
        if not isinstance(weight, torch.Tensor) or weight.dim() != 2:
            continue  # not a 2-D weight: the quantizing loop says what is wrong
        candidate = Candidate.parse(choice.candidate)
        shape = (int(weight.shape[0]), int(weight.shape[1]))
        candidate.check(shape, choice.unit)
        if needs_hessian(candidate) and (hessians is None or choice.unit not in hessians):
            raise InsufficientCalibration(
                f"{candidate.name} for unit {choice.unit!r} needs calibration statistics (the Hessian of "
                "its inputs): pass hessians= from a calibration of this model"
            )
        check_tokens(candidate, shape, n_tokens, choice.unit)


def quantized_bytes(model: nn.Module) -> int:
    """Bytes held by the QuantLinear and PackedLinear modules of ``model``."""
    return sum(m.storage_bytes() for m in model.modules() if isinstance(m, QuantLinear | PackedLinear))


def save_quantized(model: nn.Module, plan: Plan, out_dir: Path, *, tokenizer=None) -> int:
    """Write packed units + float16 unquantized tensors (safetensors), plan.json and config.

    Returns the bytes of tensor data written, which equals ``plan.model_bytes``. Refuses a folder
    that already holds a model.
    """
    out_dir = Path(out_dir)
    if (out_dir / "model.safetensors").exists():
        raise InvalidInput(f"{out_dir} already holds a model; choose an empty folder")
    tensors: dict[str, torch.Tensor] = {}
    seen: set[int] = set()
    quantized_prefixes = tuple(f"{c.unit}." for c in plan.assignment)
    for name, tensor in model.state_dict().items():
        if name.startswith(quantized_prefixes):
            tensors[name] = tensor.contiguous().cpu()  # packed codes, scales, mins
        elif tensor.data_ptr() not in seen:
            seen.add(tensor.data_ptr())
            stored = tensor.to(torch.float16) if tensor.is_floating_point() else tensor
            tensors[name] = stored.contiguous().cpu()
    data_bytes = sum(t.numel() * t.element_size() for t in tensors.values())
    if data_bytes != plan.model_bytes:
        raise BitallocError(f"writing {data_bytes} bytes of tensors but the plan counts {plan.model_bytes}")
    out_dir.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(out_dir / "model.safetensors"), metadata={"format": "bitalloc/v1"})
    plan.save(out_dir / "plan.json")
    config = getattr(model, "config", None)
    if config is not None:
        (out_dir / "config.json").write_text(json.dumps(config.to_dict(), indent=2, default=str))
    if tokenizer is not None:
        tokenizer.save_pretrained(out_dir)
    return data_bytes
