"""Random-initialised Llama-architecture models (transformers' own class) for kernel and decoder work."""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn


def random_llama(
    *,
    hidden: int,
    intermediate: int,
    layers: int,
    heads: int,
    kv_heads: int,
    vocab: int,
    tied: bool = False,
    initializer_range: float = 0.02,
    max_positions: int = 4096,
    seed: int = 0,
    device: str | torch.device = "cpu",
    family: str = "Llama",
    config_extra: Mapping[str, object] | None = None,
) -> nn.Module:
    """A ``<family>ForCausalLM`` (``Llama``, ``Qwen2``, ``Mistral``: the same block) with seeded random
    weights, in float16, in eval mode, on ``device``; ``config_extra`` adds config fields (biases, ...)."""
    import transformers

    config = getattr(transformers, f"{family}Config")(
        hidden_size=hidden,
        intermediate_size=intermediate,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        vocab_size=vocab,
        max_position_embeddings=max_positions,
        tie_word_embeddings=tied,
        initializer_range=initializer_range,
        **(config_extra or {}),
    )
    torch.manual_seed(seed)
    with torch.device(device):
        return getattr(transformers, f"{family}ForCausalLM")(config).half().eval()
