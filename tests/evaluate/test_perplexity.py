from __future__ import annotations

import copy
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from bitalloc.errors import InvalidInput
from bitalloc.evaluate.perplexity import evaluate_models, strided_windows


@settings(max_examples=200, deadline=None)
@given(st.integers(2, 3000), st.integers(2, 600), st.data())
def test_every_token_is_scored_once_with_enough_context(n_tokens, context, data):
    stride = data.draw(st.integers(1, context))
    scored = []
    for start, end, first in strided_windows(n_tokens, context=context, stride=stride):
        assert 0 < end - start <= context and first >= 1
        positions = list(range(start + first, end))
        scored += positions
        if start > 0:
            assert first >= context - stride or end == n_tokens
    assert scored == list(range(1, n_tokens))


def test_bad_stride_is_refused():
    with pytest.raises(InvalidInput, match="stride"):
        strided_windows(100, context=10, stride=20)


def test_perplexity_matches_the_model_loss_and_kl_is_zero_for_itself(smollm2_small):
    model = smollm2_small.model
    tokens = torch.randint(0, 1000, (40,), generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        loss = model(input_ids=tokens[None], labels=tokens[None]).loss
    results = evaluate_models({"same": model}, model, tokens, context=64, stride=32)
    assert results["reference"].tokens == 39
    assert results["reference"].perplexity == pytest.approx(math.exp(float(loss)), rel=1e-4)
    assert results["same"].kl == pytest.approx(0.0, abs=1e-6)


def test_kl_and_perplexity_see_a_damaged_model(smollm2_small):
    model = smollm2_small.model
    damaged = copy.deepcopy(model)
    with torch.no_grad():
        damaged.model.layers[0].mlp.down_proj.weight.mul_(-3.0)
    tokens = torch.randint(0, 1000, (100,), generator=torch.Generator().manual_seed(1))
    results = evaluate_models({"damaged": damaged}, model, tokens, context=32, stride=16, batch_size=3)
    assert results["damaged"].kl > 0.01
    assert results["damaged"].perplexity != pytest.approx(results["reference"].perplexity, rel=1e-3)
