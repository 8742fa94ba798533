"""Hugging Face Llama tensor names -> llama.cpp GGUF names, and the row order llama.cpp expects."""

from __future__ import annotations

import re

import numpy as np

from bitalloc.export.common import ExportError

_LAYER = re.compile(r"^model\.layers\.(\d+)\.(.+)$")
_IN_LAYER = {
    "input_layernorm.weight": "attn_norm.weight",
    "post_attention_layernorm.weight": "ffn_norm.weight",
    "self_attn.q_proj.weight": "attn_q.weight",
    "self_attn.k_proj.weight": "attn_k.weight",
    "self_attn.v_proj.weight": "attn_v.weight",
    "self_attn.o_proj.weight": "attn_output.weight",
    "mlp.gate_proj.weight": "ffn_gate.weight",
    "mlp.up_proj.weight": "ffn_up.weight",
    "mlp.down_proj.weight": "ffn_down.weight",
}
_TOP = {"model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight"}
_TOP["lm_head.weight"] = "output.weight"


def gguf_name(hf_name: str) -> str:
    """``model.layers.3.self_attn.q_proj.weight`` -> ``blk.3.attn_q.weight``; ExportError when unknown."""
    if hf_name in _TOP:
        return _TOP[hf_name]
    match = _LAYER.match(hf_name)
    if match and match[2] in _IN_LAYER:
        return f"blk.{match[1]}.{_IN_LAYER[match[2]]}"
    raise ExportError(f"no llama.cpp tensor name for {hf_name!r}: the GGUF exporter handles Llama models")


def unit_gguf_name(unit: str) -> str:
    """GGUF name of a unit (a Linear module name)."""
    return gguf_name(f"{unit}.weight")


def to_gguf_rows(hf_name: str, weight: np.ndarray, n_head: int, n_head_kv: int) -> np.ndarray:
    """Reorder q/k rows from Hugging Face's rotary layout (halves) to llama.cpp's (interleaved pairs)."""
    if hf_name.endswith("q_proj.weight"):
        heads = n_head
    elif hf_name.endswith("k_proj.weight"):
        heads = n_head_kv
    else:
        return weight
    rows = weight.shape[0]
    # (heads, 2, head_dim/2, in) -> (heads, head_dim/2, 2, in): rows of one head interleave their halves
    return (
        weight.reshape(heads, 2, rows // heads // 2, *weight.shape[1:]).swapaxes(1, 2).reshape(weight.shape)
    )
