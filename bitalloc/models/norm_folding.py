"""Fold each RMSNorm's weight into the linears that read its output, leaving the norm weightless.

``W (g * x / rms(x)) = (W diag(g)) (x / rms(x))``: the weight ``g`` moves into the columns of every linear
that reads the norm (q/k/v after the input norm, gate/up after the post-attention norm, the LM head after the
final norm), and the norm's weight becomes ones. The model computes the same function (up to float rounding),
as in QuaRot and SpinQuant. Folded before calibration and quantization, the quantized model's norms need no
per-input work: the decoder's GEMVs then run them inside (``kernels/row_norm.py``) instead of as their own
launches. A tied LM head shares the embedding, so the final norm keeps its weight there.
"""

from __future__ import annotations

import torch
from torch import nn

from bitalloc.errors import InvalidInput
from bitalloc.models.loading import FOLD_NORMS

FOLDABLE = {"llama", "mistral", "qwen2", "qwen3"}  # y = weight * x / rms(x), read by plain linears


def _readers(model: nn.Module) -> list[tuple[nn.Module, list[nn.Module], str]]:
    """Each norm with the linears that read its output, and where it sits."""
    pairs = []
    for i, block in enumerate(model.model.layers):
        attn, mlp = block.self_attn, block.mlp
        pairs.append(
            (block.input_layernorm, [attn.q_proj, attn.k_proj, attn.v_proj], f"layer {i}'s input norm")
        )
        pairs.append((block.post_attention_layernorm, [mlp.gate_proj, mlp.up_proj], f"layer {i}'s post norm"))
    if model.lm_head.weight.data_ptr() != model.model.embed_tokens.weight.data_ptr():
        pairs.append((model.model.norm, [model.lm_head], "the final norm"))
    return pairs


def fold_norm_weights(model: nn.Module) -> int:
    """Fold every RMSNorm weight of a Llama-family causal LM into its readers, in place; returns how many
    norms were folded (all but a tied model's final norm). Raise InvalidInput, changing nothing, for other
    architectures or a reader that is already quantized."""
    kind = getattr(getattr(model, "config", None), "model_type", None)
    if kind not in FOLDABLE:
        raise InvalidInput(
            f"norm folding knows model types {sorted(FOLDABLE)}; got {kind!r}: load it without the "
            f"{FOLD_NORMS} suffix"
        )
    pairs = _readers(model)
    for _, readers, where in pairs:
        bad = [type(r).__name__ for r in readers if type(r) is not nn.Linear]
        if bad:
            raise InvalidInput(
                f"{where} is read by a {bad[0]}; fold the norms before quantizing (the float model's "
                "nn.Linear weights take the norm's weight)"
            )
    with torch.no_grad():
        for norm, readers, _ in pairs:
            gain = norm.weight.float()  # (in,)
            for reader in readers:  # W (out, in) * gain: column j times the norm's weight j
                reader.weight.copy_((reader.weight.float() * gain[None, :]).to(reader.weight.dtype))
            norm.weight.fill_(1.0)
    return len(pairs)
