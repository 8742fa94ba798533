from __future__ import annotations

import copy

import pytest
import torch

from bitalloc.data.corpora import Split, load_corpus
from bitalloc.data.windows import calibration_windows
from bitalloc.errors import CorpusTooShort, InvalidInput
from bitalloc.models.units import Unit, discover_units
from bitalloc.pipeline import CalibrationSettings, get_calibration
from bitalloc.sensitivity.calibrate import NonFiniteActivations, NoQuantizableUnits, calibrate
from bitalloc.sensitivity.streaming import calibrate_streaming, stream_layers


@pytest.fixture(scope="module")
def windows(smollm2_small):
    corpus = load_corpus("wiki", Split.CALIBRATION)
    return calibration_windows(smollm2_small.tokenizer, corpus, n_windows=3, seq_len=32, seed=0)


@pytest.fixture(scope="module")
def both(smollm2_small, windows):
    model, units = smollm2_small.model, discover_units(smollm2_small.model)
    kw = dict(model_hash="m", corpus_hash="c", batch_size=2)
    return units, calibrate(model, units, windows, **kw), calibrate_streaming(model, units, windows, **kw)


def test_streaming_gives_the_whole_model_hessians(both, windows):
    units, hooks, streamed = both
    assert streamed.n_tokens == hooks.n_tokens == windows.numel()
    assert list(streamed.hessians) == [u.name for u in units]
    for u in units:
        torch.testing.assert_close(streamed.hessians[u.name], hooks.hessians[u.name], rtol=1e-6, atol=1e-7)
        torch.testing.assert_close(streamed.abs_means[u.name], hooks.abs_means[u.name], rtol=1e-6, atol=1e-7)
    h = streamed.hessians
    assert h["model.layers.1.self_attn.q_proj"] is h["model.layers.1.self_attn.v_proj"]
    assert h["model.layers.1.mlp.gate_proj"] is not h["model.layers.1.mlp.down_proj"]


def test_layers_come_one_at_a_time_in_order(smollm2_small, windows):
    units = discover_units(smollm2_small.model)
    seen = [
        (d.index, d.n_layers, {u.name.split(".")[2] for u in d.units})
        for d in stream_layers(smollm2_small.model, units, windows[:1], batch_size=1)
    ]
    assert seen == [(0, 2, {"0"}), (1, 2, {"1"})]


def test_units_outside_the_layers_are_refused(smollm2_small, windows):
    units = (*discover_units(smollm2_small.model), Unit("lm_head", (49152, 576), "lm_head"))
    with pytest.raises(InvalidInput, match="outside the decoder layers"):
        calibrate_streaming(smollm2_small.model, units, windows, model_hash="m", corpus_hash="c")


def test_a_model_with_no_quantizable_units_names_the_fix(smollm2_small, windows):
    import re

    none = discover_units(smollm2_small.model, exclude=re.compile(".*"))
    assert none == ()
    for fn in (calibrate, calibrate_streaming):
        with pytest.raises(NoQuantizableUnits, match=r"nn\.Linear layers outside the embeddings"):
            fn(smollm2_small.model, none, windows, model_hash="m", corpus_hash="c")


def test_nan_activations_name_the_layer(smollm2_small, windows):
    poisoned = copy.deepcopy(smollm2_small.model)
    poisoned.model.layers[1].post_attention_layernorm.weight.data[3] = float("nan")
    units = discover_units(poisoned)
    for fn in (calibrate, calibrate_streaming):
        with pytest.raises(
            NonFiniteActivations, match=r"model\.layers\.1\.mlp\.gate_proj.*load it in float32"
        ):
            fn(poisoned, units, windows, model_hash="m", corpus_hash="c")


def test_corpus_too_short_leaves_no_cache_file(smollm2_small, tmp_path, monkeypatch):
    monkeypatch.setenv("BITALLOC_CACHE", str(tmp_path / "cache"))
    text = tmp_path / "tiny.txt"
    text.write_text("A short paragraph of text.\n\nAnother one.\n\nAnd a third paragraph here.\n")
    settings = CalibrationSettings(corpus=str(text), n_windows=4, seq_len=64)
    units = discover_units(smollm2_small.model)
    with pytest.raises(CorpusTooShort, match="ask for at most 0 windows of 64"):
        get_calibration(smollm2_small, units, settings, streaming=True)
    assert not any(tmp_path.rglob("*.safetensors"))


def test_pipeline_streaming_matches_and_caches(smollm2_small, both, tmp_path, monkeypatch):
    monkeypatch.setenv("BITALLOC_CACHE", str(tmp_path))
    units, hooks, _ = both
    settings = CalibrationSettings(n_windows=3, seq_len=32, seed=0)  # the windows of the fixture
    streamed = get_calibration(smollm2_small, units, settings, streaming=True)
    assert len(list((tmp_path / "calibration").glob("*.safetensors"))) == 1
    for u in units:
        torch.testing.assert_close(streamed.hessians[u.name], hooks.hessians[u.name], rtol=1e-6, atol=1e-7)


def test_mixed_attention_types_are_refused(smollm2_small, windows):
    config = smollm2_small.model.config
    before = getattr(config, "layer_types", None)
    config.layer_types = ["full_attention", "sliding_attention"]
    try:
        with pytest.raises(InvalidInput, match="mixes attention types"):
            calibrate_streaming(
                smollm2_small.model,
                discover_units(smollm2_small.model),
                windows,
                model_hash="m",
                corpus_hash="c",
            )
    finally:
        config.layer_types = before
