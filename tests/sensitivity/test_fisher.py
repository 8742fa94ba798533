from __future__ import annotations

import pytest
import torch

from bitalloc.models.units import discover_units
from bitalloc.sensitivity.fisher import GradientsUnavailable, accumulate_fisher


@pytest.fixture(scope="module")
def inputs(smollm2_small):
    model = smollm2_small.model
    return model, discover_units(model)[:2], torch.randint(0, 1000, (1, 8))


def test_fisher_under_no_grad_or_inference_mode_names_the_fix(inputs):
    model, units, windows = inputs
    for context in (torch.no_grad, torch.inference_mode):
        with context(), pytest.raises(GradientsUnavailable, match="outside those blocks"):
            accumulate_fisher(model, units, windows)


def test_fisher_on_inference_tensors_names_the_fix(inputs):
    model, units, windows = inputs
    layer = model.model.layers[0].self_attn.q_proj
    original = layer.weight
    with torch.inference_mode():
        frozen = torch.nn.Parameter(original.detach().clone(), requires_grad=False)  # an inference tensor
    try:
        layer.weight = frozen
        with pytest.raises(GradientsUnavailable, match="load the model outside inference mode"):
            accumulate_fisher(model, units, windows)
    finally:
        layer.weight = original
    assert not original.requires_grad  # the model is left as it was


def test_fisher_on_a_frozen_model_still_works(inputs):
    model, units, windows = inputs
    assert not any(p.requires_grad for p in model.parameters())  # load_model freezes everything
    fisher = accumulate_fisher(model, units, windows)
    assert fisher[units[0].name].shape == units[0].shape and fisher[units[0].name].sum() > 0
    assert not any(p.requires_grad for p in model.parameters())
