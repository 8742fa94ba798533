"""llama.cpp's preset mixes (Q2_K, Q3_K_M, Q4_K_M, ...) as per-tensor rules, written from its documented
behaviour (``llama_tensor_get_type`` in ``src/llama-quant.cpp``) for dense Llama models without an imatrix.

Each preset has a default type; some tensors get more bits:

- ``output`` (or ``token_embd`` when the LM head is tied to it): Q6_K, or Q8_0 when its rows do not
  split into 256-weight super-blocks (and Q8_0 stays Q8_0).
- ``attn_v``: Q2_K -> Q3_K (Q4_K when n_head / n_head_kv >= 4); Q3_K_M -> Q5_K on the first two layers,
  else Q4_K; Q3_K_L -> Q5_K; Q4_K_M and Q5_K_M -> Q6_K on ``use_more_bits`` layers; Q4_K_S -> Q5_K on the
  first four layers.
- ``attn_output``: Q2_K -> Q3_K, Q3_K_M -> Q4_K, Q3_K_L -> Q5_K.
- ``ffn_down``: Q2_K -> Q3_K; Q3_K_M -> Q5_K on the first n/16 layers, else Q4_K; Q3_K_L -> Q5_K;
  Q4_K_M and Q5_K_M -> Q6_K on ``use_more_bits`` layers; Q4_K_S -> Q5_K on the first n/8 layers.

``use_more_bits(i, n)``: the first and last eighth of the layers and every third layer between. A k-quant
on a tensor whose rows are not a multiple of 256 falls back: Q2_K/Q3_K -> IQ4_NL, Q4_K -> Q5_0,
Q5_K -> Q5_1, Q6_K -> Q8_0 (SmolLM2's hidden size 576 makes every tensor but ``ffn_down`` fall back).
1-D tensors (norms) stay F32.
"""

from __future__ import annotations

import re

from bitalloc.export.common import ExportError
from bitalloc.export.gguf_types import K_QUANTS, GgufType

PRESETS = {
    "Q2_K": "Q2_K",
    "Q3_K_S": "Q3_K",
    "Q3_K_M": "Q3_K",
    "Q3_K_L": "Q3_K",
    "Q4_K_S": "Q4_K",
    "Q4_K_M": "Q4_K",
    "Q5_K_S": "Q5_K",
    "Q5_K_M": "Q5_K",
    "Q6_K": "Q6_K",
    "Q4_0": "Q4_0",
    "Q4_1": "Q4_1",
    "Q5_0": "Q5_0",
    "Q5_1": "Q5_1",
    "Q8_0": "Q8_0",
}
_FALLBACK = {"Q2_K": "IQ4_NL", "Q3_K": "IQ4_NL", "Q4_K": "Q5_0", "Q5_K": "Q5_1", "Q6_K": "Q8_0"}
_BLOCK = re.compile(r"^blk\.(\d+)\.(\w+)\.weight$")


def use_more_bits(i_layer: int, n_layers: int) -> bool:
    """llama.cpp's layer pattern for extra bits: first and last eighth, then every third layer."""
    return i_layer < n_layers // 8 or i_layer >= 7 * n_layers // 8 or (i_layer - n_layers // 8) % 3 == 2


def preset_type(
    preset: str, name: str, shape: tuple[int, ...], *, n_layers: int, n_gqa: int, tied_output: bool
) -> str:
    """The type preset ``preset`` gives the GGUF tensor ``name`` of numpy ``shape`` (rows last)."""
    if preset not in PRESETS:
        raise ExportError(f"unknown llama.cpp preset {preset!r}; known: {', '.join(PRESETS)}")
    if len(shape) < 2:
        return "F32"
    ftype, kind = preset, _kind(name)
    new = PRESETS[preset]
    row = shape[-1]
    if kind == "output" or (kind == "token_embd" and tied_output):
        return "Q8_0" if row % 256 != 0 else ("Q8_0" if new == "Q8_0" else "Q6_K")
    layer = int(_BLOCK.match(name)[1]) if _BLOCK.match(name) else 0
    if kind == "attn_v":
        if ftype == "Q2_K":
            new = "Q4_K" if n_gqa >= 4 else "Q3_K"
        elif ftype == "Q3_K_M":
            new = "Q5_K" if layer < 2 else "Q4_K"
        elif ftype == "Q3_K_L":
            new = "Q5_K"
        elif ftype in ("Q4_K_M", "Q5_K_M") and use_more_bits(layer, n_layers):
            new = "Q6_K"
        elif ftype == "Q4_K_S" and layer < 4:
            new = "Q5_K"
    elif kind == "attn_output":
        new = {"Q2_K": "Q3_K", "Q3_K_M": "Q4_K", "Q3_K_L": "Q5_K"}.get(ftype, new)
    elif kind == "ffn_down":
        if ftype == "Q2_K":
            new = "Q3_K"
        elif ftype == "Q3_K_M":
            new = "Q5_K" if layer < n_layers // 16 else "Q4_K"
        elif ftype == "Q3_K_L":
            new = "Q5_K"
        elif ftype in ("Q4_K_M", "Q5_K_M") and use_more_bits(layer, n_layers):
            new = "Q6_K"
        elif ftype == "Q4_K_S" and layer < n_layers // 8:
            new = "Q5_K"
    if new in K_QUANTS and row % 256 != 0:
        new = _FALLBACK[new]
    return new


def preset_types(
    preset: str, shapes: dict[str, tuple[int, ...]], *, n_layers: int, n_gqa: int
) -> dict[str, GgufType]:
    """GGUF tensor name -> type for every tensor of ``shapes`` (GGUF names, numpy shapes)."""
    tied = "output.weight" not in shapes
    return {
        name: GgufType.of(preset_type(preset, name, shape, n_layers=n_layers, n_gqa=n_gqa, tied_output=tied))
        for name, shape in shapes.items()
    }


def _kind(name: str) -> str:
    match = _BLOCK.match(name)
    return match[2] if match else name.removesuffix(".weight")
