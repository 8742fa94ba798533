"""The decoder on the real bundled model (SmolLM2-135M, first two layers; tied embeddings, 9 / 3 heads)."""

from __future__ import annotations

import copy

import torch

from bitalloc.runtime.llama_decoder import LlamaDecoder
from tests.kernels.helpers import device
from tests.runtime.helpers import quantize_linears

PLAN = {  # SmolLM2's widths (576, 1536) take groups of 64
    "q_proj": "rtn-w4g64-asym",
    "k_proj": "rtn-w4g64-asym",
    "v_proj": "rtn-w8g64-asym",
    "o_proj": "rtn-w4g64-sym",
    "gate_proj": "rtn-w3g64-asym",
    "up_proj": "rtn-w3g64-asym",
    "down_proj": "rtn-w4g64-asym",
}


def test_mixed_plan_on_smollm2_matches_the_reference_path(smollm2_small):
    model = copy.deepcopy(smollm2_small.model).half().to(device()).eval()
    quantize_linears(model, PLAN)
    ids = (
        smollm2_small.tokenizer("The capital of France is", return_tensors="pt").input_ids[:, :3].to(device())
    )
    with torch.no_grad():
        ref = model(ids).logits[0].float()  # (steps, vocab) on the torch reference path
    decoder = LlamaDecoder(model, max_len=ids.shape[1])
    # q and k fuse (one format), v (8-bit) runs alone: 5 weight launches per layer, plus the tied LM head
    assert decoder.launches_per_step == 2 * 5 + 1 and decoder.dims.heads == 9 and decoder.dims.kv_heads == 3
    ours = torch.stack([decoder.step(int(t))[0].float() for t in ids[0]])
    err = ((ours - ref).norm(dim=-1) / ref.norm(dim=-1)).max().item()
    assert err < 1e-2, f"relative logit error {err:.2e}"
    assert torch.equal(ours.argmax(-1), ref.argmax(-1))
