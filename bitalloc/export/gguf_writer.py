"""Write a plan as llama.cpp files: a quantized GGUF, a ``--tensor-type-file`` and the plan's type map.

The GGUF copies its metadata (architecture, tokenizer, chat template) from a template GGUF of the same
model (the bundled SmolLM2 file is one), takes its tensors from the model being exported, and stores
each planned unit in its planned type. Units whose candidate *is* a legacy type (group-32 w4/w5/w8) are
written from bitalloc's own codes bit for bit; GGUF-palette plans are encoded per type
(``GgufType.encode``). The tied LM head is not stored (llama.cpp reads ``token_embd`` for it).
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import torch
from torch import nn

from bitalloc.allocator.plan import Plan
from bitalloc.export.common import ExportError, check_output_dir, staged_dir
from bitalloc.export.gguf_names import gguf_name, to_gguf_rows, unit_gguf_name
from bitalloc.export.gguf_types import GGUF_PALETTE, GgufType, candidate_type, pack_candidate
from bitalloc.quantizers.candidate import Candidate
from bitalloc.quantizers.quant_linear import QuantLinear

_SKIP_KEYS = ("GGUF.", "general.architecture", "general.file_type")


def unit_types(plan: Plan) -> dict[str, GgufType]:
    """unit -> GGUF type: palette names as they are, bitalloc candidates by their exact legacy type."""
    types = {}
    for choice in plan.assignment:
        if choice.candidate in GGUF_PALETTE:
            types[choice.unit] = GgufType.of(choice.candidate)
        else:
            types[choice.unit] = candidate_type(Candidate.parse(choice.candidate))
    return types


def tensor_type_lines(types: dict[str, GgufType]) -> list[str]:
    """``--tensor-type-file`` lines: an anchored, escaped regex of each GGUF tensor name ``=`` its type.

    llama-quantize splits the file on whitespace, has no comment syntax, lower-cases the pattern and
    takes the first pattern that ``regex_search`` finds; anchors keep ``blk.1.`` from matching ``blk.11.``.
    """
    return [f"^{re.escape(name)}$={t.name}" for name, t in types.items()]


def model_tensors(model: nn.Module) -> dict[str, torch.Tensor]:
    """The model's tensors by Hugging Face name, tied duplicates (the LM head) dropped."""
    seen: set[int] = set()
    out = {}
    for name, tensor in model.state_dict().items():
        if tensor.data_ptr() in seen:
            continue
        seen.add(tensor.data_ptr())
        out[name] = tensor
    return out


def write_gguf(
    path: Path,
    model: nn.Module,
    types: dict[str, GgufType],
    *,
    template: Path | None,
    packed: dict[str, np.ndarray] | None = None,
    default_type: str = "Q8_0",
) -> int:
    """Write ``model`` to ``path``; ``types`` maps HF tensor names to types (1-D: F32, others: default).

    Metadata comes from ``template`` (a GGUF of the same model: tokenizer, chat template) or, when it is
    None, from the model's config alone (a file llama.cpp cannot tokenize with, but transformers loads).

    ``packed`` holds ready ggml blocks ``(out, bytes per row)`` for some tensors. Returns tensor data bytes.
    """
    import gguf

    config = model.config
    if template is None:
        writer = gguf.GGUFWriter(str(path), "llama")
        for key, value, vtype in config_metadata(config):
            writer.add_key_value(key, value, vtype)
    else:
        reader = gguf.GGUFReader(str(template))  # parsing the tokenizer arrays takes ~20 s for SmolLM2
        arch = str(reader.fields["general.architecture"].contents())
        if arch != "llama":
            raise ExportError(
                f"template {template} is a {arch!r} model; the GGUF exporter writes Llama models"
            )
        writer = gguf.GGUFWriter(str(path), arch)
        for key, field in reader.fields.items():
            if key.startswith(_SKIP_KEYS) or key == f"{arch}.block_count":
                continue
            sub = field.types[1] if len(field.types) > 1 else None
            writer.add_key_value(key, field.contents(), field.types[0], sub_type=sub)
        writer.add_uint32(f"{arch}.block_count", config.num_hidden_layers)
    n_head, n_kv = config.num_attention_heads, config.num_key_value_heads
    packed = packed or {}
    total = 0
    for name, tensor in model_tensors(model).items():
        gname = gguf_name(name)
        if name in packed:
            gtype, data = types[name], packed[name]
        else:
            weight = tensor.detach().float().cpu().numpy()
            gtype = GgufType.of("F32") if weight.ndim < 2 else types.get(name, GgufType.of(default_type))
            data = gtype.encode(weight.reshape(-1, weight.shape[-1])) if weight.ndim >= 2 else weight
        data = to_gguf_rows(name, data, n_head, n_kv)
        shape = tuple(tensor.shape)
        if gtype.name == "F32":
            writer.add_tensor(gname, np.ascontiguousarray(data, dtype=np.float32).reshape(shape))
        else:
            writer.add_tensor(gname, np.ascontiguousarray(data), raw_dtype=gtype.ggml_type)
        total += int(data.nbytes)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return total


def config_metadata(config) -> list[tuple[str, object, object]]:
    """The ``llama.*`` hyperparameters of a Hugging Face Llama config as (key, value, GGUF value type)."""
    import gguf

    u32, f32 = gguf.GGUFValueType.UINT32, gguf.GGUFValueType.FLOAT32
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    rope = getattr(config, "rope_parameters", None) or {}
    theta = rope.get("rope_theta", getattr(config, "rope_theta", 10000.0))
    return [
        (
            "general.name",
            str(getattr(config, "_name_or_path", "") or "bitalloc export"),
            gguf.GGUFValueType.STRING,
        ),
        ("llama.block_count", config.num_hidden_layers, u32),
        ("llama.context_length", config.max_position_embeddings, u32),
        ("llama.embedding_length", config.hidden_size, u32),
        ("llama.feed_forward_length", config.intermediate_size, u32),
        ("llama.attention.head_count", config.num_attention_heads, u32),
        ("llama.attention.head_count_kv", config.num_key_value_heads, u32),
        ("llama.rope.freq_base", float(theta), f32),
        ("llama.attention.layer_norm_rms_epsilon", float(config.rms_norm_eps), f32),
        ("llama.vocab_size", config.vocab_size, u32),
        ("llama.rope.dimension_count", head_dim, u32),
    ]


def export_gguf(
    model: nn.Module,
    plan: Plan,
    out_dir: Path | str,
    *,
    model_hash: str,
    template: Path | str | None,
    quantized: nn.Module | None = None,
    imatrix: bytes | None = None,
    embedding_type: str = "Q8_0",
) -> dict[str, int]:
    """Write ``model.gguf``, ``tensor-types.txt``, ``plan.json`` (and ``imatrix.dat``) into ``out_dir``.

    Candidate plans need ``quantized`` (apply_plan's model) so their own codes are written. Returns
    ``{"tensor_bytes": ..., "file_bytes": ...}``.
    """
    out_dir = Path(out_dir)
    plan.check_model(model_hash)
    check_output_dir(out_dir)
    if template is not None and not Path(template).is_file():
        raise ExportError(f"template GGUF {template} does not exist; give the model's own .gguf file")
    types = unit_types(plan)
    packed = {}
    for choice in plan.assignment:
        if choice.candidate in GGUF_PALETTE:
            continue
        module = None if quantized is None else quantized.get_submodule(choice.unit)
        if not isinstance(module, QuantLinear) or module.candidate.name != choice.candidate:
            raise ExportError(
                f"{choice.unit!r} is planned as {choice.candidate}: pass quantized=apply_plan(model, plan)"
            )
        packed[f"{choice.unit}.weight"] = pack_candidate(module.qweight)[1]
    hf_types = {f"{unit}.weight": t for unit, t in types.items()}
    embed = GgufType.of(embedding_type)
    for name, tensor in model_tensors(model).items():
        if tensor.dim() >= 2 and name not in hf_types:
            if not embed.supports(tuple(tensor.shape)):
                raise ExportError(f"{name} of shape {tuple(tensor.shape)} cannot be stored as {embed.name}")
            hf_types[name] = embed
    lines = tensor_type_lines({gguf_name(n): t for n, t in hf_types.items()})
    with staged_dir(out_dir) as tmp:
        tensor_bytes = write_gguf(
            tmp / "model.gguf", model, hf_types, template=template and Path(template), packed=packed
        )
        (tmp / "tensor-types.txt").write_text("\n".join(lines) + "\n")
        plan.save(tmp / "plan.json")
        if imatrix is not None:
            (tmp / "imatrix.dat").write_bytes(imatrix)
    return {"tensor_bytes": tensor_bytes, "file_bytes": (out_dir / "model.gguf").stat().st_size}


def unit_names_in_gguf(plan: Plan) -> list[str]:
    """GGUF tensor names of the plan's units, in plan order."""
    return [unit_gguf_name(c.unit) for c in plan.assignment]
