from __future__ import annotations

import pytest
import torch

from bitalloc.data.corpora import Split, load_corpus
from bitalloc.data.windows import calibration_windows
from bitalloc.errors import InvalidInput
from bitalloc.models.units import discover_units, unquantized_bytes
from bitalloc.quantizers.candidate import Candidate, QuantKind
from bitalloc.sensitivity.calibrate import calibrate
from bitalloc.sensitivity.offload import model_folder, offloaded_model, profile_offloaded
from bitalloc.sensitivity.profiler import profile_model

PALETTE = (Candidate(QuantKind.RTN, 3, 64, False), Candidate(QuantKind.RTN, 5, 64, False))


@pytest.fixture(scope="module")
def windows(smollm2_small):
    corpus = load_corpus("wiki", Split.CALIBRATION)
    return calibration_windows(smollm2_small.tokenizer, corpus, n_windows=3, seq_len=32, seed=0)


@pytest.fixture(scope="module")
def offloaded(smollm2_small):
    return offloaded_model(model_folder("smollm2-135m"), num_layers=2)


def test_layers_stay_on_meta_until_their_pass(offloaded):
    layers = offloaded.model.model.layers
    assert len(layers) == 2
    assert all(p.is_meta for p in layers.parameters())
    assert not offloaded.model.model.embed_tokens.weight.is_meta


def test_offloaded_profile_equals_the_in_memory_profile(smollm2_small, offloaded, windows):
    model = smollm2_small.model
    units = discover_units(model)
    stats = calibrate(model, units, windows, model_hash="m", corpus_hash="c", batch_size=2)
    ref = profile_model(
        model, units, stats, PALETTE, meta={"unquantized_bytes": unquantized_bytes(model, units)}
    )
    prof, off_stats = profile_offloaded(
        offloaded, windows, PALETTE, corpus_hash="c", batch_size=2, keep_hessians=True
    )
    assert prof.table.equals(ref.table)
    assert prof.meta["unquantized_bytes"] == ref.meta["unquantized_bytes"]
    for u in units:
        torch.testing.assert_close(off_stats.hessians[u.name], stats.hessians[u.name], rtol=1e-6, atol=1e-7)
    assert all(p.is_meta for p in offloaded.model.model.layers.parameters())  # freed again
    dropped, none = profile_offloaded(offloaded, windows[:1], PALETTE[:1], corpus_hash="c")
    assert none is None and len(dropped.table) == len(units)


def test_offload_needs_a_local_safetensors_checkpoint(tmp_path):
    with pytest.raises(InvalidInput, match="huggingface-cli download"):
        model_folder("someone/some-model")
    with pytest.raises(InvalidInput, match=r"cannot fold the norms.*\+fold-norms suffix"):
        model_folder("someone/some-model+fold-norms")
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(InvalidInput, match="safe_serialization"):
        from bitalloc.sensitivity.offload import checkpoint_tensors

        checkpoint_tensors(tmp_path)


def test_an_untied_head_is_never_loaded_and_profiles_match(tmp_path):
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=512,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        tie_word_embeddings=False,
    )
    torch.manual_seed(0)
    model = LlamaForCausalLM(config).eval().requires_grad_(False)
    model.save_pretrained(tmp_path / "tiny")
    windows = torch.randint(0, 512, (3, 16))
    units = discover_units(model)
    stats = calibrate(model, units, windows, model_hash="m", corpus_hash="c", batch_size=2)
    ref = profile_model(
        model, units, stats, PALETTE, meta={"unquantized_bytes": unquantized_bytes(model, units)}
    )

    off = offloaded_model(tmp_path / "tiny")
    assert off.model.lm_head.weight.is_meta and not off.model.model.embed_tokens.weight.is_meta
    prof, _ = profile_offloaded(off, windows, PALETTE, corpus_hash="c", batch_size=2)
    assert prof.table.equals(ref.table)
    assert prof.meta["unquantized_bytes"] == ref.meta["unquantized_bytes"]
