"""Real test data for the palette tests: a slice of SmolLM2's first q_proj and the Hessian of its inputs."""

from __future__ import annotations

import torch

from bitalloc.data.corpora import Split, load_corpus
from bitalloc.data.windows import token_stream


def real_weight_and_hessian(loaded, rows: int = 32, tokens: int = 512) -> tuple[torch.Tensor, torch.Tensor]:
    """``(rows, 576)`` weight of layer 0's q_proj and ``H = XᵀX / n`` of its real inputs on wiki text."""
    model = loaded.model
    ids = token_stream(loaded.tokenizer, load_corpus("wiki", Split.CALIBRATION), max_tokens=tokens)
    with torch.no_grad():
        hidden = model.model.embed_tokens(ids.reshape(1, -1))  # (1, n, 576)
        x = model.model.layers[0].input_layernorm(hidden).reshape(-1, hidden.shape[-1]).float()  # (n, 576)
    weight = model.model.layers[0].self_attn.q_proj.weight.detach().float()[:rows].clone()  # (rows, 576)
    return weight, x.T @ x / x.shape[0]
