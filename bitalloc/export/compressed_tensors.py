"""Write a quantized model as a compressed-tensors ``pack-quantized`` checkpoint (transformers, vLLM).

The codes are bitalloc's own (no re-quantization): a symmetric unit's ``w = scale * (q - 2**(b-1))`` is
compressed-tensors' ``w = scale * q'`` with the signed code ``q' = q - 2**(b-1)``, packed by the
library's own ``pack_to_int32``. The config is built from the library's ``QuantizationConfig``: one
config group per distinct (bits, group size) with the exact module names as targets (no regexes,
whose precedence differs between readers), fused q/k/v and gate/up checked to share one scheme, and
every other Linear (the tied LM head) listed in ``ignore``.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import save_file
from torch import nn

from bitalloc.allocator.plan import Plan
from bitalloc.export.common import ExportError, check_fused, check_output_dir, staged_dir
from bitalloc.export.palettes import check_plan
from bitalloc.quantizers.candidate import Candidate
from bitalloc.quantizers.quant_linear import QuantLinear
from bitalloc.quantizers.quantized_weight import QuantizedWeight


def quantization_config(plan: Plan, model: nn.Module, *, fmt: str = "compressed-tensors") -> dict:
    """The ``quantization_config`` dict: one group per (bits, group size), exact targets, ``ignore``."""
    from compressed_tensors.quantization import QuantizationArgs, QuantizationConfig, QuantizationScheme

    check_plan(plan, fmt)
    scheme_of = {}
    for choice in plan.assignment:
        cand = Candidate.parse(choice.candidate)
        scheme_of[choice.unit] = (cand.bits, cand.group_size)
    check_fused(plan, scheme_of, fmt)
    groups: dict[tuple[int, int], list[str]] = {}
    for unit, scheme in scheme_of.items():
        groups.setdefault(scheme, []).append(unit)
    config_groups = {
        f"group_{i}": QuantizationScheme(
            targets=targets,
            weights=QuantizationArgs(
                num_bits=bits, type="int", symmetric=True, strategy="group", group_size=group_size
            ),
            format="pack-quantized",
        )
        for i, ((bits, group_size), targets) in enumerate(sorted(groups.items()))
    }
    ignore = [n for n, m in model.named_modules() if isinstance(m, nn.Linear) and n not in scheme_of]
    config = QuantizationConfig(
        config_groups=config_groups, format="pack-quantized", quantization_status="compressed", ignore=ignore
    )
    return config.to_dict()


def pack_weight(qweight: QuantizedWeight) -> dict[str, torch.Tensor]:
    """``weight_packed`` (out, ceil(in*b/32)) int32, ``weight_scale`` (out, in/g) fp16, ``weight_shape``."""
    from compressed_tensors.compressors.pack_quantized.helpers import pack_to_int32

    from bitalloc.quantizers.packing import unpack_codes

    cand = qweight.candidate
    if not cand.symmetric:
        raise ExportError(f"{cand.name} is asymmetric; compressed-tensors stores symmetric grids only")
    out_features, in_features = qweight.shape
    q = unpack_codes(qweight.codes, cand.bits, out_features * in_features).view(out_features, in_features)
    signed = (q.to(torch.int16) - 2 ** (cand.bits - 1)).to(torch.int8)  # (out, in) in [-2^(b-1), 2^(b-1))
    return {
        "weight_packed": pack_to_int32(signed, cand.bits),
        "weight_scale": qweight.scales.clone(),
        "weight_shape": torch.tensor([out_features, in_features], dtype=torch.int64),
    }


def export_compressed_tensors(
    quantized: nn.Module,
    plan: Plan,
    out_dir: Path | str,
    *,
    model_hash: str,
    tokenizer=None,
    fmt: str = "compressed-tensors",
) -> Path:
    """Write ``quantized`` (the output of ``apply_plan(model, plan)``) to ``out_dir``; returns the folder.

    ``fmt`` is ``compressed-tensors`` (transformers: 1..8 bits) or ``compressed-tensors-vllm`` (4/8 bits).
    Unquantized tensors are stored as float16. Nothing is written unless every check passes.
    """
    out_dir = Path(out_dir)
    plan.check_model(model_hash)
    check_output_dir(out_dir)
    qconfig = quantization_config(plan, quantized, fmt=fmt)
    tensors: dict[str, torch.Tensor] = {}
    planned = plan.candidate_of()
    for unit, cand_name in planned.items():
        module = quantized.get_submodule(unit)
        if not isinstance(module, QuantLinear) or module.candidate.name != cand_name:
            raise ExportError(
                f"{unit!r} is not quantized as the plan says ({cand_name}); pass apply_plan's model"
            )
        for key, tensor in pack_weight(module.qweight).items():
            tensors[f"{unit}.{key}"] = tensor.contiguous()
        if module.bias is not None:
            tensors[f"{unit}.bias"] = module.bias.to(torch.float16).contiguous()
    prefixes = tuple(f"{u}." for u in planned)
    seen: set[int] = set()
    for name, tensor in quantized.state_dict().items():
        if name.startswith(prefixes) or tensor.data_ptr() in seen:
            continue
        seen.add(tensor.data_ptr())
        stored = tensor.to(torch.float16) if tensor.is_floating_point() else tensor
        tensors[name] = stored.contiguous().cpu()
    config = quantized.config.to_dict()
    config["quantization_config"] = qconfig
    config["dtype"] = "float16"
    config.pop("torch_dtype", None)
    with staged_dir(out_dir) as tmp:
        save_file(tensors, str(tmp / "model.safetensors"), metadata={"format": "pt"})
        (tmp / "config.json").write_text(json.dumps(config, indent=2, default=str) + "\n")
        plan.save(tmp / "plan.json")
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
    return out_dir
